//! Shared support for the hytun-core fuzz targets and the seed-corpus
//! generator (`examples/gen_corpus.rs`):
//!
//! * [`TestRng`] — SHA-256 in counter mode, so every run is reproducible;
//! * the committed test keys (`core/tests/vectors/*.der`, compiled in) and
//!   configurations built once per process ([`server_config`],
//!   [`client_config`]);
//! * [`Watch`] and [`drain`]/[`feed`] — a driver that checks the
//!   connection contract on every call (one `Closed`, nothing after it, no
//!   stalled input, bounded event bursts);
//! * [`single`] — the byte-stream driver of `server_session` and
//!   `client_session`;
//! * [`Duo`] — a client and a server joined by in-memory pipes with
//!   separate RNGs, used by `established_session` and the corpus generator.
//!
//! Everything here panics on a broken property: a panic is the fuzzer's
//! signal.

#![forbid(unsafe_code)]

pub mod established;
pub mod single;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hytun_core::{
    ClientConfig, Connection, ConnectionError, Event, Instant, PrivateIdentity, PublicIdentity,
    ServerConfig, SessionConfig, StreamErrorCode, StreamId,
};

#[path = "../../tests/common/rng.rs"]
mod test_rng;
pub use test_rng::TestRng;

/// A tiny non-cryptographic generator for driver decisions (chunk sizes,
/// accept or refuse, ...), seeded from the fuzz input.
#[derive(Debug, Clone)]
pub struct Decide(u64);

impl Decide {
    /// Seeds the generator; every seed (0 included) is valid.
    pub fn new(seed: u64) -> Self {
        Decide(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// Next 64 bits (splitmix64).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

// ------------------------------------------------------------------ keys --

/// The committed test keys (see `core/tests/vectors/`).
pub const CLIENT_KEY: &[u8] = include_bytes!("../../tests/vectors/client.key.der");
/// Public half of [`CLIENT_KEY`].
pub const CLIENT_PUB: &[u8] = include_bytes!("../../tests/vectors/client.pub.der");
/// The server's private key.
pub const SERVER_KEY: &[u8] = include_bytes!("../../tests/vectors/server.key.der");
/// Public half of [`SERVER_KEY`].
pub const SERVER_PUB: &[u8] = include_bytes!("../../tests/vectors/server.pub.der");

/// RNG label of the client connection (its ClientHello depends on it).
pub const CLIENT_RNG: &str = "fuzz client";
/// RNG label of the server connection.
pub const SERVER_RNG: &str = "fuzz server";
/// The clock's start for every connection.
pub const T0: Instant = Instant::from_millis(1_000);

/// Desktop-sized connection (the sizes of `core/tests/common`).
pub type Conn = Connection<{ 64 * 1024 }, { 16384 + 18 }, 64>;
/// Microcontroller-sized connection.
pub type SmallConn = Connection<2048, { 1024 + 18 }, 4>;

/// A session configuration that reaches the edge cases quickly: 1 KiB
/// records, small windows (credit stalls), 4 streams and a key update every
/// 5 records.
pub const TIGHT: SessionConfig = SessionConfig {
    max_record: 1024,
    stream_window: 3000,
    max_stream_window: 3000,
    max_streams: 4,
    keepalive_interval: Duration::from_secs(15),
    idle_timeout: Duration::from_secs(45),
    handshake_timeout: Duration::from_secs(10),
    key_update_after: 5,
};

/// The server configuration (server key, client key authorized), parsed once
/// per process: RSA key parsing is slow.
pub fn server_config(tight: bool) -> Arc<ServerConfig> {
    static HOST: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    static SMALL: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    let (cell, session, label) = if tight {
        (&SMALL, TIGHT, "fuzz keys tight server")
    } else {
        (&HOST, SessionConfig::HOST, "fuzz keys server")
    };
    cell.get_or_init(|| {
        let mut rng = TestRng::new(label);
        let identity = PrivateIdentity::from_pkcs8_der(SERVER_KEY, &mut rng).expect("server key");
        let client = PublicIdentity::from_spki_der(CLIENT_PUB).expect("client pub");
        Arc::new(ServerConfig::new(identity, vec![client], session))
    })
    .clone()
}

/// The client configuration (client key, server key pinned), parsed once.
pub fn client_config(tight: bool) -> Arc<ClientConfig> {
    static HOST: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    static SMALL: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let (cell, session, label) = if tight {
        (&SMALL, TIGHT, "fuzz keys tight client")
    } else {
        (&HOST, SessionConfig::HOST, "fuzz keys client")
    };
    cell.get_or_init(|| {
        let mut rng = TestRng::new(label);
        let identity = PrivateIdentity::from_pkcs8_der(CLIENT_KEY, &mut rng).expect("client key");
        let server = PublicIdentity::from_spki_der(SERVER_PUB).expect("server pub");
        Arc::new(ClientConfig::new(identity, server, session))
    })
    .clone()
}

// ---------------------------------------------------------------- events --

/// An event with its data copied out of the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// [`Event::Connected`].
    Connected,
    /// [`Event::OpenRequest`] (destination rendered as text).
    OpenRequest(StreamId, String),
    /// [`Event::Opened`].
    Opened(StreamId),
    /// [`Event::OpenFailed`].
    OpenFailed(StreamId, StreamErrorCode),
    /// [`Event::Data`].
    Data(StreamId, Vec<u8>),
    /// [`Event::Finished`].
    Finished(StreamId),
    /// [`Event::Reset`].
    Reset(StreamId, StreamErrorCode),
    /// [`Event::Writable`].
    Writable(StreamId),
    /// [`Event::GoAway`].
    GoAway(hytun_core::CloseCode),
    /// [`Event::Closed`].
    Closed(ConnectionError),
    /// [`Event::ListenRequest`] (bind address rendered as text).
    ListenRequest(hytun_core::ListenId, String),
    /// [`Event::ListenGranted`].
    ListenGranted(hytun_core::ListenId),
    /// [`Event::ListenRefused`].
    ListenRefused(hytun_core::ListenId, hytun_core::ListenErrorCode),
    /// [`Event::IncomingStream`] (origin rendered as text).
    Incoming(StreamId, hytun_core::ListenId, String),
}

/// Copies an event out of the connection's borrow.
pub fn own(ev: Event<'_>) -> Ev {
    match ev {
        Event::Connected => Ev::Connected,
        Event::OpenRequest { id, dest } => {
            // Whatever the parser let through must be a valid destination.
            assert!(
                dest.validate().is_ok(),
                "OpenRequest with invalid destination {dest:?}"
            );
            Ev::OpenRequest(id, dest.to_string())
        }
        Event::Opened { id } => Ev::Opened(id),
        Event::OpenFailed { id, code } => Ev::OpenFailed(id, code),
        Event::Data { id, data } => {
            assert!(!data.is_empty(), "empty Data event on {id}");
            Ev::Data(id, data.to_vec())
        }
        Event::Finished { id } => Ev::Finished(id),
        Event::Reset { id, code } => Ev::Reset(id, code),
        Event::Writable { id } => Ev::Writable(id),
        Event::GoAway { code } => Ev::GoAway(code),
        Event::Closed { error } => Ev::Closed(error),
        Event::ListenRequest { id, bind } => {
            assert!(
                bind.validate().is_ok(),
                "ListenRequest with invalid bind {bind:?}"
            );
            Ev::ListenRequest(id, bind.to_string())
        }
        Event::ListenGranted { id } => Ev::ListenGranted(id),
        Event::ListenRefused { id, code } => Ev::ListenRefused(id, code),
        Event::IncomingStream { id, listen, origin } => {
            assert!(
                !matches!(origin.host, hytun_core::Host::Domain(_)),
                "IncomingStream with a domain origin"
            );
            Ev::Incoming(id, listen, origin.to_string())
        }
    }
}

/// Most events one record can produce (a 16 KiB record of 5-byte frames is
/// ~3300); more means the event loop does not terminate.
pub const MAX_EVENTS_PER_DRAIN: usize = 20_000;

/// What the driver has seen of one connection; checks the closing contract.
#[derive(Debug, Default, Clone)]
pub struct Watch {
    /// The error of the `Closed` event, once seen.
    pub closed: Option<ConnectionError>,
    /// True once `Connected` was seen.
    pub connected: bool,
    /// Events seen so far.
    pub events: u64,
}

impl Watch {
    /// Records one event; panics on an event after `Closed` or a second
    /// `Connected`.
    pub fn observe(&mut self, ev: &Ev) {
        assert!(
            self.closed.is_none(),
            "event {ev:?} after Closed({:?})",
            self.closed
        );
        self.events += 1;
        match ev {
            Ev::Connected => {
                assert!(!self.connected, "second Connected event");
                self.connected = true;
            }
            Ev::Closed(e) => self.closed = Some(*e),
            _ => {}
        }
    }

    /// Checks the connection against what was observed, after a full drain.
    pub fn check<const TX: usize, const RX: usize, const S: usize>(
        &self,
        conn: &Connection<TX, RX, S>,
    ) {
        assert!(
            conn.stream_count() <= S,
            "stream_count {} > {S}",
            conn.stream_count()
        );
        match self.closed {
            Some(e) => {
                assert!(
                    conn.is_closed(),
                    "Closed event seen but is_closed() is false"
                );
                assert_eq!(
                    conn.error(),
                    Some(e),
                    "error() differs from the Closed event"
                );
                assert!(!conn.is_established(), "established after Closed");
                assert!(!conn.can_open_stream(), "can_open_stream after Closed");
                assert_eq!(conn.poll_timeout(), None, "timer armed after Closed");
            }
            None => {
                assert!(
                    !conn.is_closed(),
                    "connection closed ({:?}) without a Closed event",
                    conn.error()
                );
                if conn.is_established() {
                    assert!(self.connected, "established without a Connected event");
                }
            }
        }
    }
}

/// Drains every event, hands each to `on_event` (which may call back into
/// the connection), and checks the contract. Returns the number drained.
pub fn drain<const TX: usize, const RX: usize, const S: usize>(
    conn: &mut Connection<TX, RX, S>,
    watch: &mut Watch,
    on_event: &mut dyn FnMut(&mut Connection<TX, RX, S>, &Ev),
) -> usize {
    let mut n = 0;
    while let Some(ev) = conn.poll_event() {
        let ev = own(ev);
        watch.observe(&ev);
        n += 1;
        assert!(
            n <= MAX_EVENTS_PER_DRAIN,
            "poll_event does not stop (last {ev:?})"
        );
        on_event(conn, &ev);
    }
    watch.check(conn);
    n
}

/// Feeds `input` completely (draining events between calls, as the
/// connection requires). Panics if the connection stops taking bytes.
pub fn feed<const TX: usize, const RX: usize, const S: usize>(
    conn: &mut Connection<TX, RX, S>,
    input: &[u8],
    now: Instant,
    rng: &mut TestRng,
    watch: &mut Watch,
    on_event: &mut dyn FnMut(&mut Connection<TX, RX, S>, &Ev),
) {
    let was_closed = watch.closed.is_some();
    let mut used = 0;
    loop {
        let n = conn.handle_input(&input[used..], now, rng);
        assert!(
            n <= input.len() - used,
            "handle_input used {n} of {} bytes",
            input.len() - used
        );
        if was_closed {
            assert_eq!(
                n,
                input.len() - used,
                "closed connection must swallow input"
            );
        }
        used += n;
        let events = drain(conn, watch, on_event);
        if was_closed {
            assert_eq!(events, 0, "events after Closed");
        }
        if used == input.len() {
            break;
        }
        assert!(
            n > 0 || events > 0,
            "handle_input stalled: 0 bytes taken, no events, {} left",
            input.len() - used
        );
    }
}

/// Drives the timers to `now` and drains.
pub fn tick<const TX: usize, const RX: usize, const S: usize>(
    conn: &mut Connection<TX, RX, S>,
    now: Instant,
    watch: &mut Watch,
    on_event: &mut dyn FnMut(&mut Connection<TX, RX, S>, &Ev),
) {
    conn.handle_timeout(now);
    drain(conn, watch, on_event);
}

/// Takes up to `max` pending bytes out of the connection (all if `max` is
/// `None`) into `out`; returns how many.
pub fn collect<const TX: usize, const RX: usize, const S: usize>(
    conn: &mut Connection<TX, RX, S>,
    max: Option<usize>,
    out: &mut Vec<u8>,
) -> usize {
    let pending = conn.transmit_pending();
    assert!(pending.len() <= TX, "pending {} > TX {TX}", pending.len());
    let n = max.map_or(pending.len(), |m| m.min(pending.len()));
    out.extend_from_slice(&pending[..n]);
    conn.transmit_done(n);
    n
}

/// The deterministic payload byte at `offset` of a stream direction, so
/// the harness can check delivered data without storing what was sent.
pub fn pattern(id: StreamId, server_to_client: bool, offset: u64) -> u8 {
    let dir = u64::from(server_to_client);
    let k = (u64::from(id.0) << 1 | dir).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let x = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k;
    (x ^ (x >> 29) ^ (x >> 47)) as u8
}

/// Fills `buf` with the pattern starting at `offset`.
pub fn fill_pattern(id: StreamId, server_to_client: bool, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern(id, server_to_client, offset + i as u64);
    }
}

/// Parses the handshake header at the front of `data` (if 3 bytes are
/// there) and checks the rule: known type and a body of at most
/// `MAX_BODY_LEN` bytes. Returns the header if it parsed.
pub fn check_header(data: &[u8]) -> Option<hytun_core::wire::handshake::HandshakeHeader> {
    use hytun_core::wire::handshake::*;
    let h: [u8; HEADER_LEN] = data.get(..HEADER_LEN)?.try_into().ok()?;
    let len = usize::from(u16::from_be_bytes([h[1], h[2]]));
    let known = matches!(
        h[0],
        TYPE_CLIENT_HELLO | TYPE_SERVER_HELLO | TYPE_FINISHED | TYPE_ALERT
    );
    let res = HandshakeHeader::parse(&h);
    assert_eq!(
        res.is_ok(),
        known && len <= MAX_BODY_LEN,
        "header {h:02x?} -> {res:?}"
    );
    let hdr = res.ok()?;
    assert_eq!((hdr.msg_type, hdr.body_len), (h[0], len));
    Some(hdr)
}

/// The bytes a parsed frame re-emits to: the input with an unknown
/// stream-error, close or listen-error code replaced by `Other` (255), which is how the
/// protocol maps codes it does not know.
pub fn canonical_frame_bytes(input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    match out.first() {
        // OPEN_FAIL, RESET: type, id (4), code.
        Some(0x03 | 0x07) if out.len() >= 6 => out[5] = StreamErrorCode::from_code(out[5]).code(),
        // GOAWAY, CLOSE: type, code.
        Some(0x0a | 0x0c) if out.len() >= 2 => {
            out[1] = hytun_core::CloseCode::from_code(out[1]).code()
        }
        // LISTEN_FAIL: type, listen id (4), code.
        Some(0x0f) if out.len() >= 6 => {
            out[5] = hytun_core::ListenErrorCode::from_code(out[5]).code()
        }
        _ => {}
    }
    out
}

pub use established::Duo;
