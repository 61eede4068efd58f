//! One connection fed an arbitrary byte stream (`server_session`,
//! `client_session`).
//!
//! Input layout: a 3-byte header, then the bytes "received" from the peer.
//!
//! | byte | meaning |
//! | ---- | ------- |
//! | 0 | chunking: 0 = the whole stream in one `handle_input` slice; `n` = slices of 1..=`n` bytes (sizes from a generator seeded by the header) |
//! | 1 | bit 0: use the microcontroller-sized [`SmallConn`]; bits 1..=7: clock step per slice in units of 50 ms |
//! | 2 | the driver's decisions (0 = the canonical [`Policy`] the seed generator also uses) |
//!
//! Inputs shorter than the header are padded with zeros. After the stream
//! the driver lets the handshake and idle timers expire, so every run must
//! end in exactly one `Closed`, after which the connection must stay closed
//! and silent.

use hytun_core::{CloseCode, Connection, Destination, Host, Instant, StreamErrorCode, StreamId};

#[allow(unused_imports)] // referenced by the docs
use crate::{Conn, SmallConn};
use crate::{
    Decide, Ev, T0, TestRng, Watch, client_config, collect, drain, feed, server_config, tick,
};

/// Bytes in front of the stream.
pub const HEADER_LEN: usize = 3;

/// The decoded header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// 0 = one slice, else the largest slice.
    pub chunk_max: u8,
    /// [`SmallConn`] instead of [`Conn`].
    pub small: bool,
    /// Clock step per slice, in 50 ms units.
    pub time_step: u8,
    /// Seed of the driver's decisions.
    pub decisions: u8,
}

impl Header {
    /// Splits an input into its header and stream.
    pub fn split(data: &[u8]) -> (Header, &[u8]) {
        let mut h = [0u8; HEADER_LEN];
        let n = data.len().min(HEADER_LEN);
        h[..n].copy_from_slice(&data[..n]);
        let hdr = Header {
            chunk_max: h[0],
            small: h[1] & 1 == 1,
            time_step: h[1] >> 1,
            decisions: h[2],
        };
        (hdr, &data[n..])
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        [
            self.chunk_max,
            (self.time_step << 1) | u8::from(self.small),
            self.decisions,
        ]
    }
}

/// The request the canonical client sends on its first stream.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n";
/// The reply the canonical server sends on an accepted stream.
pub const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi";

/// How a driver reacts to events. With decisions 0 it is canonical:
/// deterministic and the same in the fuzz targets and in the seed
/// generator, so recorded peer traffic stays valid for the fuzzed side.
///
/// * client: on `Connected` opens `origin.test:80` (sends [`REQUEST`]) and
///   `127.0.0.1:8080` (sends 100 bytes and finishes); consumes all data;
///   finishes a stream when the server does.
/// * server: accepts every stream and sends [`REPLY`]; consumes all data;
///   finishes a stream when the client does.
///
/// Other decision seeds vary every choice (refuse, reset, leave pending,
/// hold back credit, send more, key update, GOAWAY, close).
pub struct Policy {
    server: bool,
    canonical: bool,
    d: Decide,
    /// Streams seen (opened or requested).
    pub streams: Vec<StreamId>,
}

impl Policy {
    /// A policy for one side.
    pub fn new(server: bool, decisions: u8) -> Self {
        Policy {
            server,
            canonical: decisions == 0,
            d: Decide::new(u64::from(decisions)),
            streams: Vec::new(),
        }
    }

    fn pick(&mut self) -> Option<StreamId> {
        if self.streams.is_empty() {
            None
        } else {
            Some(self.streams[self.d.below(self.streams.len() as u64) as usize])
        }
    }

    /// Reacts to one event.
    pub fn on_event<const TX: usize, const RX: usize, const S: usize>(
        &mut self,
        conn: &mut Connection<TX, RX, S>,
        ev: &Ev,
    ) {
        // API errors are fine here (the state may not allow the call); only
        // panics and broken invariants count.
        match (ev, self.server) {
            (Ev::Connected, false) => {
                let dest = Destination {
                    host: Host::Domain("origin.test"),
                    port: 80,
                };
                if let Ok(id) = conn.open_stream(dest) {
                    self.streams.push(id);
                    let _ = conn.stream_send(id, REQUEST);
                }
                let dest = Destination {
                    host: Host::Ipv4([127, 0, 0, 1]),
                    port: 8080,
                };
                if let Ok(id) = conn.open_stream(dest) {
                    self.streams.push(id);
                    let _ = conn.stream_send(id, &[0x5a; 100]);
                    let _ = conn.stream_finish(id);
                }
            }
            (Ev::OpenRequest(id, _), true) => {
                self.streams.push(*id);
                let choice = if self.canonical { 0 } else { self.d.below(5) };
                match choice {
                    0 | 1 => {
                        let _ = conn.accept_stream(*id);
                        let _ = conn.stream_send(*id, REPLY);
                        if choice == 1 {
                            let _ = conn.stream_finish(*id);
                        }
                    }
                    2 => {
                        let _ = conn.refuse_stream(
                            *id,
                            StreamErrorCode::from_code(self.d.next_u64() as u8),
                        );
                    }
                    3 => {
                        let _ = conn.stream_reset(*id, StreamErrorCode::Cancelled);
                    }
                    _ => {} // leave it pending
                }
            }
            (Ev::Data(id, data), _) => {
                if self.canonical || self.d.below(4) != 0 {
                    conn.stream_consumed(*id, data.len());
                }
            }
            (Ev::Finished(id), _) => {
                if self.canonical || self.d.below(2) == 0 {
                    let _ = conn.stream_finish(*id);
                } else {
                    let _ = conn.stream_reset(*id, StreamErrorCode::Other);
                }
            }
            (Ev::Writable(id), _) if !self.canonical => {
                let _ = conn.stream_send(*id, &[0xa5; 3000]);
            }
            _ => {}
        }
    }

    /// Something to do between input slices (nothing when canonical).
    pub fn between<const TX: usize, const RX: usize, const S: usize>(
        &mut self,
        conn: &mut Connection<TX, RX, S>,
    ) {
        if self.canonical {
            return;
        }
        match self.d.below(16) {
            0 => conn.request_key_update(),
            1 => conn.go_away(CloseCode::ShuttingDown),
            2 => {
                if let Some(id) = self.pick() {
                    let n = 1 + self.d.below(20_000) as usize;
                    let _ = conn.stream_send(id, &vec![0x33; n]);
                }
            }
            3 => {
                if let Some(id) = self.pick() {
                    let _ = conn.stream_finish(id);
                }
            }
            4 => {
                if let Some(id) = self.pick() {
                    conn.stream_consumed(id, self.d.below(70_000) as usize);
                }
            }
            5 if !self.server => {
                let dest = Destination {
                    host: Host::Ipv6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
                    port: 443,
                };
                if let Ok(id) = conn.open_stream(dest) {
                    self.streams.push(id);
                }
            }
            6 if self.d.below(8) == 0 => conn.close(CloseCode::Normal),
            _ => {}
        }
    }
}

/// What a run saw (for the seed generator's self-check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The handshake completed.
    pub connected: bool,
    /// Events seen.
    pub events: u64,
    /// Why the session ended (it always does).
    pub error: Option<hytun_core::ConnectionError>,
}

/// Runs one input against a fresh server (`server == true`) or client.
pub fn run(data: &[u8], server: bool) -> Outcome {
    let (hdr, stream) = Header::split(data);
    // The sizes of [`SmallConn`] and [`Conn`].
    if hdr.small {
        go::<2048, { 1024 + 18 }, 4>(hdr, stream, server)
    } else {
        go::<{ 64 * 1024 }, { 16384 + 18 }, 64>(hdr, stream, server)
    }
}

/// The connection under test, as the targets build it.
pub fn new_conn<const TX: usize, const RX: usize, const S: usize>(
    server: bool,
    rng: &mut TestRng,
) -> Connection<TX, RX, S> {
    if server {
        Connection::server(server_config(false), T0)
    } else {
        Connection::client(client_config(false), T0, rng)
    }
}

/// The connection under test with its driver state.
struct Side<const TX: usize, const RX: usize, const S: usize> {
    conn: Connection<TX, RX, S>,
    watch: Watch,
    policy: Policy,
    rng: TestRng,
}

impl<const TX: usize, const RX: usize, const S: usize> Side<TX, RX, S> {
    fn drain(&mut self) {
        let Side {
            conn,
            watch,
            policy,
            ..
        } = self;
        drain(conn, watch, &mut |c, e| policy.on_event(c, e));
    }

    fn feed(&mut self, bytes: &[u8], now: Instant) {
        let Side {
            conn,
            watch,
            policy,
            rng,
        } = self;
        feed(conn, bytes, now, rng, watch, &mut |c, e| {
            policy.on_event(c, e)
        });
    }

    fn tick(&mut self, now: Instant) {
        let Side {
            conn,
            watch,
            policy,
            ..
        } = self;
        tick(conn, now, watch, &mut |c, e| policy.on_event(c, e));
    }

    fn collect(&mut self, max: Option<usize>, sink: &mut Vec<u8>) {
        collect(&mut self.conn, max, sink);
        self.drain();
    }
}

fn go<const TX: usize, const RX: usize, const S: usize>(
    hdr: Header,
    stream: &[u8],
    server: bool,
) -> Outcome {
    let mut rng = TestRng::new(if server {
        crate::SERVER_RNG
    } else {
        crate::CLIENT_RNG
    });
    let conn: Connection<TX, RX, S> = new_conn(server, &mut rng);
    let mut side = Side {
        conn,
        watch: Watch::default(),
        policy: Policy::new(server, hdr.decisions),
        rng,
    };
    let mut chunks = Decide::new(u64::from_le_bytes([
        hdr.chunk_max,
        hdr.time_step,
        hdr.decisions,
        0,
        0,
        0,
        0,
        0,
    ]));
    let mut sink = Vec::new();
    let mut now = T0;

    // The client's ClientHello (the server has nothing yet).
    side.drain();
    side.collect(None, &mut sink);

    let mut off = 0;
    while off < stream.len() {
        let n = if hdr.chunk_max == 0 {
            stream.len()
        } else {
            1 + chunks.below(u64::from(hdr.chunk_max)) as usize
        };
        let end = (off + n).min(stream.len());
        side.feed(&stream[off..end], now);
        off = end;
        // Output: all of it, or a part (the transport may be slow).
        let max = if hdr.chunk_max == 0 {
            None
        } else {
            Some(chunks.below(4096) as usize)
        };
        side.collect(max, &mut sink);
        sink.clear();
        if hdr.time_step > 0 {
            now = Instant::from_millis(now.as_millis() + 50 * u64::from(hdr.time_step));
            side.tick(now);
        }
        side.policy.between(&mut side.conn);
        side.drain();
    }

    // Let every timer expire: the handshake deadline (10 s), the keepalive
    // PING (15 s) and the idle timeout (45 s). The session must end.
    for step in [11_000, 5_000, 50_000, 100_000] {
        side.collect(None, &mut sink);
        now = Instant::from_millis(now.as_millis() + step);
        side.tick(now);
    }
    assert!(
        side.watch.closed.is_some(),
        "session still open after every timer expired: {:?}",
        side.conn.error()
    );
    side.collect(None, &mut sink);

    // Closed is final: input is swallowed, no events, no timers, no output
    // beyond what was flushed at the close.
    let events_before = side.watch.events;
    side.feed(stream, now);
    side.conn.handle_eof();
    side.conn.handle_timeout(Instant::from_millis(u64::MAX));
    side.drain();
    assert_eq!(side.watch.events, events_before, "events after Closed");
    assert!(side.conn.is_closed() && !side.conn.is_established());
    assert!(
        side.conn
            .open_stream(Destination {
                host: Host::Domain("a"),
                port: 1
            })
            .is_err()
    );
    let mut late = Vec::new();
    collect(&mut side.conn, None, &mut late);
    assert!(
        late.is_empty(),
        "{} bytes queued after Closed was flushed",
        late.len()
    );
    Outcome {
        connected: side.watch.connected,
        events: side.watch.events,
        error: side.watch.closed,
    }
}
