//! [`Connection`]: one hytun session as a sans-IO state machine.
//!
//! The connection owns no socket and reads no clock. The driver:
//!
//! 1. feeds received bytes with [`Connection::handle_input`] (it consumes at
//!    most one record per call; call again with the rest),
//! 2. drains [`Connection::poll_event`] until `None` after every input call
//!    (events borrow the record being read, so input waits for them),
//! 3. writes [`Connection::transmit_pending`] to the transport and reports
//!    what was written with [`Connection::transmit_done`],
//! 4. calls [`Connection::handle_timeout`] at [`Connection::poll_timeout`],
//! 5. reports transport EOF with [`Connection::handle_eof`].
//!
//! By default each side's RSA private-key operation runs inside
//! `handle_input` (with its RNG for blinding). A driver that wants it off
//! its event loop calls [`Connection::defer_private_key_ops`]; then, when a
//! handshake message needs the operation, `handle_input` stops right after
//! that message and hands the driver a job to run on any thread:
//!
//! * the client: [`Connection::take_private_key_op`] returns the
//!   [`PrivateKeyOp`] (the decryption of the server's secret); its result
//!   goes to [`Connection::complete_private_key_op`];
//! * the server: [`Connection::take_server_hello_job`] returns the whole
//!   reply to the ClientHello as a [`ServerHelloJob`] (X25519, the RSA-OAEP
//!   encryption to the client key, the private-key operation, the key
//!   schedule, its Finished), so none of the server's handshake crypto runs
//!   on the driver's loop; its result goes to
//!   [`Connection::complete_server_hello_job`].
//!
//! The driver then resumes feeding the bytes not consumed yet. In between,
//! the connection consumes no input and has nothing to transmit; only
//! timers run.
//!
//! Every fatal condition — bad input, a timeout, the peer's CLOSE, a local
//! `close` — ends in exactly one [`Event::Closed`]; after it the driver
//! flushes what is pending (a CLOSE or an alert) and drops the transport.
//!
//! The three const parameters size the fixed buffers: `TX` bytes of
//! outgoing data, `RX` bytes for one incoming record (at least
//! [`MIN_RX_BUFFER`]) and `S` stream slots. The fourth, a
//! [`Memory`](crate::memory::Memory), says where they live: inline arrays
//! (the default, no heap) or heap storage released when idle.
//!
//! Receive windows are adaptive. Each stream starts at
//! `SessionConfig::stream_window`; once it is open in both senses (server:
//! accepted; client: OPEN_OK received) the window tuner may grow it toward
//! the path's bandwidth-delay product, up to
//! `SessionConfig::max_stream_window`. The tuner samples the round trip
//! with a PING sent when DATA arrives and no sample is running, and counts
//! the bytes the driver consumed on each stream until the PONG: a stream
//! that consumed at least 2/3 of its window in one round trip is limited
//! by it, and its window becomes twice what it consumed. Growth never takes
//! the connection past [`Connection::set_receive_budget`]; over budget, the
//! connection withholds returned credit until it fits again.

use alloc::sync::Arc;

use rand_core::CryptoRng;

use crate::buffer::{RxBuffer, TxBuffer};
use crate::config::{ClientConfig, ServerConfig, SessionConfig};
use crate::crypto::{
    CryptoError, DecryptedSecret, KeyId, PrivateKeyOp, RecordOpener, RecordSealer,
};
use crate::error::{ConnectionError, HandshakeError, ProtocolViolation, StreamError, TimeoutKind};
use crate::handshake::{
    self, ClientAwaitPrivateKey, ClientExpectServerFinished, ClientExpectServerHello, Established,
    Rejection, ServerExpectClientFinished, ServerHelloJob, ServerHelloReply,
};
use crate::memory::{ByteStore, Heap, Inline, Memory, VecStore};
use crate::stream::{EndState, OpenState, Stream};
use crate::time::Instant;
use crate::wire::frame::{
    CloseCode, Destination, Frame, ListenErrorCode, ListenId, MAX_CONTROL_FRAME_LEN,
    StreamErrorCode, StreamId,
};
use crate::wire::handshake::{
    HEADER_LEN as HS_HEADER, HandshakeHeader, MAX_BODY_LEN, MAX_RECORD_LIMIT, MIN_RECORD_LIMIT,
    Suite,
};
use crate::wire::record::{self, HEADER_LEN as RECORD_HEADER, OVERHEAD, TAG_LEN};
use core::time::Duration;

/// Smallest receive buffer: one 1 KiB record plus its framing.
pub const MIN_RX_BUFFER: usize = MIN_RECORD_LIMIT as usize + OVERHEAD;
/// Smallest transmit buffer (a handshake flight plus control reserve).
pub const MIN_TX_BUFFER: usize = 2048;
/// The longest pause between round-trip samples of the window tuner once
/// windows stopped growing.
const MAX_SAMPLE_BACKOFF: Duration = Duration::from_secs(1);

/// Most LISTEN requests one session may make (PROTOCOL.md §7.15): each
/// side keeps a fixed table of this many listeners.
pub const MAX_LISTENERS: usize = 16;

/// Transmit space kept free for control frames, so WINDOW, PONG, FIN and
/// CLOSE can always be queued even when stream data fills the buffer.
const CONTROL_RESERVE: usize = 2 * (MAX_CONTROL_FRAME_LEN + OVERHEAD);

/// Something the driver must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Event<'a> {
    /// The handshake completed; streams may be opened (client) or will
    /// arrive (server).
    Connected,
    /// (server) The client asks for a stream to `dest`; answer with
    /// [`Connection::accept_stream`] or [`Connection::refuse_stream`]. Data
    /// for the stream may arrive before the answer.
    OpenRequest {
        /// The new stream.
        id: StreamId,
        /// Where the client wants it connected.
        dest: Destination<'a>,
    },
    /// (server) The client asks the server to listen on `bind` for it;
    /// answer with [`Connection::grant_listen`] or
    /// [`Connection::refuse_listen`].
    ListenRequest {
        /// The listener the client named.
        id: ListenId,
        /// Where to listen, on the server's side.
        bind: Destination<'a>,
    },
    /// (client) The server listens as asked; connections accepted there
    /// arrive as [`Event::IncomingStream`].
    ListenGranted {
        /// The listener.
        id: ListenId,
    },
    /// (client) The server refused the listener; it is gone.
    ListenRefused {
        /// The listener.
        id: ListenId,
        /// Why.
        code: ListenErrorCode,
    },
    /// (client) The server opened a stream for a connection it accepted on
    /// a granted listener; answer with [`Connection::accept_stream`] or
    /// [`Connection::refuse_stream`].
    IncomingStream {
        /// The new stream (an even id).
        id: StreamId,
        /// The listener that accepted the connection.
        listen: ListenId,
        /// Address of the accepted connection's peer, for logs.
        origin: Destination<'a>,
    },
    /// The peer connected a stream this side opened (client: OPEN; server:
    /// INCOMING).
    Opened {
        /// The stream.
        id: StreamId,
    },
    /// The peer could not connect a stream this side opened; it is gone.
    OpenFailed {
        /// The stream.
        id: StreamId,
        /// Why.
        code: StreamErrorCode,
    },
    /// Payload for a stream. Deliver it, then report it with
    /// [`Connection::stream_consumed`] to return credit to the peer.
    Data {
        /// The stream.
        id: StreamId,
        /// The bytes (borrowed from the record being read).
        data: &'a [u8],
    },
    /// The peer half-closed the stream: no more data will arrive.
    Finished {
        /// The stream.
        id: StreamId,
    },
    /// The peer aborted the stream; it is gone.
    Reset {
        /// The stream.
        id: StreamId,
        /// Why.
        code: StreamErrorCode,
    },
    /// Credit arrived for a stream whose send was refused for lack of it.
    Writable {
        /// The stream.
        id: StreamId,
    },
    /// The peer accepts no new streams on this session.
    GoAway {
        /// Why.
        code: CloseCode,
    },
    /// The session is over. Flush [`Connection::transmit_pending`] and drop
    /// the transport.
    Closed {
        /// Why.
        error: ConnectionError,
    },
}

/// Counters for logs, tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records sealed.
    pub records_sent: u64,
    /// Records opened.
    pub records_received: u64,
    /// Stream payload bytes sent.
    pub payload_sent: u64,
    /// Stream payload bytes received.
    pub payload_received: u64,
    /// Key updates of the sending direction.
    pub key_updates_sent: u32,
    /// Key updates of the receiving direction.
    pub key_updates_received: u32,
}

impl Stats {
    /// All counters zero.
    pub const ZERO: Stats = Stats {
        records_sent: 0,
        records_received: 0,
        payload_sent: 0,
        payload_received: 0,
        key_updates_sent: 0,
        key_updates_received: 0,
    };
}

enum Role {
    Client(Arc<ClientConfig>),
    Server(Arc<ServerConfig>),
}

// `Unstarted` comes first so an unstarted connection is all zero bytes
// and a `static` of it lands in `.bss` rather than in flash (`.data`).
#[repr(u8)]
enum State {
    Unstarted,
    ClientExpectServerHello(ClientExpectServerHello),
    ClientAwaitPrivateKey(ClientAwaitPrivateKey),
    ClientExpectServerFinished(ClientExpectServerFinished),
    ServerExpectClientHello,
    /// The reply to the ClientHello is a job the driver runs.
    ServerAwaitHelloJob,
    ServerExpectClientFinished(ServerExpectClientFinished),
    Established,
    Failed,
}

/// Where a listener is in its LISTEN exchange.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListenState {
    /// Client: LISTEN sent, no answer yet. Server: received, the driver has
    /// not answered yet.
    Requested,
    /// LISTEN_OK sent (server) or received (client).
    Granted,
}

#[derive(Clone, Copy)]
struct Listener {
    id: ListenId,
    state: ListenState,
}

/// The window tuner's round-trip sample.
#[derive(Clone, Copy)]
enum RttSample {
    /// No sample running.
    Idle,
    /// Started at this time; its PING is waiting to be written.
    Queued(Instant),
    /// Its PING carries `opaque`; started at `start`.
    InFlight { opaque: u64, start: Instant },
}

struct Keys {
    sealer: RecordSealer,
    opener: RecordOpener,
    suite: Suite,
    peer_max_record: usize,
    peer_stream_window: u32,
    max_streams: usize,
    peer_key: KeyId,
}

/// All of the connection except the receive buffer, so frame handling can
/// borrow the record being read and mutate this at the same time.
struct Inner<const TX: usize, const S: usize, M: Memory> {
    /// `None` until started.
    role: Option<Role>,
    state: State,
    /// Hand private-key operations to the driver instead of running them
    /// in `handle_input` (a driver property: kept across restarts).
    defer_private_key: bool,
    /// The operation `ClientAwaitPrivateKey` waits for, until the driver
    /// takes it.
    private_key_op: Option<PrivateKeyOp>,
    /// The job `ServerAwaitHelloJob` waits for, until the driver takes it.
    server_hello_job: Option<ServerHelloJob>,
    session: SessionConfig,
    local_max_record: usize,
    keys: Option<Keys>,
    tx: TxBuffer<M::Bytes<TX>>,
    streams: M::Vec<Stream, S>,
    dirty: heapless::Deque<StreamId, S>,
    /// Next id this side assigns to a stream it opens (client odd, server
    /// even).
    next_stream_id: u32,
    highest_peer_stream: u32,
    /// Listeners requested (client) or received (server) and not refused.
    listeners: heapless::Vec<Listener, MAX_LISTENERS>,
    /// LISTEN requests made (client) or received (server) this session.
    listen_requests: u8,
    /// Client: the last listener id assigned. Server: the highest seen.
    last_listen_id: u32,
    created: Instant,
    last_rx: Instant,
    ping_outstanding: bool,
    ping_counter: u64,
    pending_pong: Option<u64>,
    pending_ping: bool,
    pending_goaway: Option<CloseCode>,
    pending_close: Option<CloseCode>,
    /// A key update to do at the next seal: `Some(request_peer)`.
    key_update_requested: Option<bool>,
    /// Most receive credit outstanding over all streams (flow control).
    receive_budget: usize,
    rtt_sample: RttSample,
    /// Smoothed round-trip time from the tuner's samples.
    srtt: Option<Duration>,
    /// No new round-trip sample before this time: after a sample that grew
    /// no window the tuner backs off (doubling up to
    /// [`MAX_SAMPLE_BACKOFF`]), so a stable stream costs about one PING a
    /// second, not one per round trip.
    next_sample_at: Instant,
    sample_backoff: Duration,
    sent_goaway: bool,
    peer_going_away: bool,
    connected_event: bool,
    error: Option<ConnectionError>,
    closed_event: bool,
    stats: Stats,
}

/// One hytun session (client or server side). See the module docs for the
/// driving contract.
pub struct Connection<const TX: usize, const RX: usize, const S: usize, M: Memory = Inline> {
    rx: RxBuffer<M::Bytes<RX>>,
    inner: Inner<TX, S, M>,
}

/// Sizes for desktop hosts: 16 KiB records, 1024 streams, buffers and
/// stream table on the heap so an idle session can give them back
/// ([`Connection::release_idle_buffers`]).
pub type HostConnection =
    Connection<{ 64 * 1024 }, { MAX_RECORD_LIMIT as usize + OVERHEAD }, 1024, Heap>;

impl<const TX: usize, const RX: usize, const S: usize, M: Memory> Connection<TX, RX, S, M> {
    const SIZES_OK: () = {
        assert!(RX >= MIN_RX_BUFFER, "RX must hold a 1 KiB record");
        assert!(
            RX >= HS_HEADER + MAX_BODY_LEN,
            "RX must hold a handshake message"
        );
        assert!(TX >= MIN_TX_BUFFER, "TX must hold a handshake flight");
        assert!(S >= 1, "at least one stream slot");
    };

    /// A connection that has not been started; it does nothing until
    /// [`Self::start_client`] or [`Self::start_server`]. Being `const`, it
    /// can initialize a `static` directly, so a microcontroller never holds
    /// a temporary copy of the buffers on its stack.
    pub const fn unstarted() -> Self {
        Connection {
            rx: RxBuffer::new(),
            inner: Inner {
                role: None,
                state: State::Unstarted,
                defer_private_key: false,
                private_key_op: None,
                server_hello_job: None,
                session: SessionConfig::UNSET,
                local_max_record: 0,
                keys: None,
                tx: TxBuffer::new(),
                streams: <M::Vec<Stream, S> as VecStore<Stream>>::EMPTY,
                dirty: heapless::Deque::new(),
                next_stream_id: 0,
                highest_peer_stream: 0,
                listeners: heapless::Vec::new(),
                listen_requests: 0,
                last_listen_id: 0,
                created: Instant::from_millis(0),
                last_rx: Instant::from_millis(0),
                ping_outstanding: false,
                ping_counter: 0,
                pending_pong: None,
                pending_ping: false,
                pending_goaway: None,
                pending_close: None,
                key_update_requested: None,
                receive_budget: usize::MAX,
                rtt_sample: RttSample::Idle,
                srtt: None,
                next_sample_at: Instant::from_millis(0),
                sample_backoff: Duration::ZERO,
                sent_goaway: false,
                peer_going_away: false,
                connected_event: false,
                error: None,
                closed_event: false,
                stats: Stats::ZERO,
            },
        }
    }

    /// Resets every field in place for a new session (the buffers are
    /// emptied, not rebuilt).
    fn reset(&mut self, role: Role, mut session: SessionConfig, now: Instant, state: State) {
        let () = Self::SIZES_OK;
        // Zero would deadlock every stream (or be rejected by the peer).
        session.stream_window = session.stream_window.max(1);
        session.max_stream_window = session.max_stream_window.max(session.stream_window);
        session.max_streams = session.max_streams.max(1);
        let i = &mut self.inner;
        i.local_max_record = usize::from(session.max_record)
            .min(RX - OVERHEAD)
            .clamp(usize::from(MIN_RECORD_LIMIT), usize::from(MAX_RECORD_LIMIT));
        i.next_stream_id = if matches!(role, Role::Client(_)) {
            1
        } else {
            2
        };
        i.role = Some(role);
        i.state = state;
        i.private_key_op = None;
        i.server_hello_job = None;
        i.session = session;
        i.keys = None;
        i.tx.clear();
        i.streams.clear();
        i.dirty.clear();
        i.highest_peer_stream = 0;
        i.listeners.clear();
        i.listen_requests = 0;
        i.last_listen_id = 0;
        i.created = now;
        i.last_rx = now;
        i.ping_outstanding = false;
        i.ping_counter = 0;
        i.pending_pong = None;
        i.pending_ping = false;
        i.pending_goaway = None;
        i.pending_close = None;
        i.key_update_requested = None;
        i.rtt_sample = RttSample::Idle;
        i.srtt = None;
        i.next_sample_at = Instant::from_millis(0);
        i.sample_backoff = Duration::ZERO;
        i.sent_goaway = false;
        i.peer_going_away = false;
        i.connected_event = false;
        i.error = None;
        i.closed_event = false;
        i.stats = Stats::ZERO;
        self.rx.clear();
    }

    /// Starts a client session: the `ClientHello` is queued at once.
    pub fn client<R: CryptoRng + ?Sized>(
        config: Arc<ClientConfig>,
        now: Instant,
        rng: &mut R,
    ) -> Self {
        let mut conn = Self::unstarted();
        conn.start_client(config, now, rng);
        conn
    }

    /// Starts (or restarts) this connection in place as a client session:
    /// the `ClientHello` is queued at once.
    pub fn start_client<R: CryptoRng + ?Sized>(
        &mut self,
        config: Arc<ClientConfig>,
        now: Instant,
        rng: &mut R,
    ) {
        let session = config.session;
        self.reset(Role::Client(config.clone()), session, now, State::Failed);
        let max_record = self.inner.local_max_record as u16;
        match handshake::client_hello(&config, max_record, rng, self.inner.tx.raw_tail()) {
            Ok((n, next)) => {
                self.inner.tx.commit_raw(n);
                self.inner.state = State::ClientExpectServerHello(next);
            }
            Err(e) => self.inner.fail(e.into()),
        }
    }

    /// Starts a server session that waits for a `ClientHello`.
    pub fn server(config: Arc<ServerConfig>, now: Instant) -> Self {
        let mut conn = Self::unstarted();
        conn.start_server(config, now);
        conn
    }

    /// Starts (or restarts) this connection in place as a server session.
    pub fn start_server(&mut self, config: Arc<ServerConfig>, now: Instant) {
        let session = config.session;
        self.reset(
            Role::Server(config),
            session,
            now,
            State::ServerExpectClientHello,
        );
    }

    /// Makes the handshake hand the step with its RSA private-key operation
    /// to the driver instead of running it inside `handle_input` (see the
    /// module docs): on the client the operation alone, on the server the
    /// whole reply to the ClientHello. Call before the handshake reaches
    /// that step; the setting survives `start_client`/`start_server`.
    pub fn defer_private_key_ops(&mut self, defer: bool) {
        self.inner.defer_private_key = defer;
    }

    /// True while the handshake waits for the result of a job it handed
    /// out ([`Self::complete_private_key_op`],
    /// [`Self::complete_server_hello_job`]).
    pub fn awaits_private_key_op(&self) -> bool {
        self.inner.error.is_none()
            && matches!(
                self.inner.state,
                State::ClientAwaitPrivateKey(_) | State::ServerAwaitHelloJob
            )
    }

    /// (Client) The private-key operation to run, once, after
    /// `handle_input` stopped at the ServerHello (deferred mode only).
    pub fn take_private_key_op(&mut self) -> Option<PrivateKeyOp> {
        if self.inner.error.is_some() {
            return None;
        }
        self.inner.private_key_op.take()
    }

    /// (Client) Continues the handshake with the result of the operation
    /// from [`Self::take_private_key_op`]: the client becomes ready for the
    /// server's Finished. Then feed the input not consumed yet. Ignored if
    /// the connection is not waiting for it (e.g. it timed out or was
    /// closed meanwhile).
    pub fn complete_private_key_op(&mut self, result: DecryptedSecret) {
        let i = &mut self.inner;
        if i.error.is_some() {
            return;
        }
        let state = core::mem::replace(&mut i.state, State::Failed);
        match state {
            State::ClientAwaitPrivateKey(st) => {
                i.state = State::ClientExpectServerFinished(st.finish(result));
            }
            other => i.state = other,
        }
    }

    /// (Server) The reply to the ClientHello to run, once, after
    /// `handle_input` stopped at it (deferred mode only).
    pub fn take_server_hello_job(&mut self) -> Option<ServerHelloJob> {
        if self.inner.error.is_some() {
            return None;
        }
        self.inner.server_hello_job.take()
    }

    /// (Server) Continues the handshake with the result of the job from
    /// [`Self::take_server_hello_job`]: queues the `ServerHello` and
    /// Finished, or the alert and the failure of a rejected ClientHello.
    /// Then feed the input not consumed yet. Ignored if the connection is
    /// not waiting for it (e.g. it timed out or was closed meanwhile).
    pub fn complete_server_hello_job(&mut self, reply: ServerHelloReply) {
        let i = &mut self.inner;
        if i.error.is_some() || !matches!(i.state, State::ServerAwaitHelloJob) {
            return;
        }
        i.state = State::Failed;
        match reply.0 {
            Ok((flight, next)) => {
                let out = i.tx.raw_tail();
                if flight.len() > out.len() {
                    i.fail(HandshakeError::Crypto(CryptoError::BadKey).into());
                    return;
                }
                out[..flight.len()].copy_from_slice(&flight);
                i.tx.commit_raw(flight.len());
                i.state = State::ServerExpectClientFinished(next);
            }
            Err(rej) => i.reject_client_hello(rej),
        }
    }

    /// True once both Finished messages verified (and until closed).
    pub fn is_established(&self) -> bool {
        matches!(self.inner.state, State::Established) && self.inner.error.is_none()
    }

    /// True once the session is over (see [`Connection::error`]).
    pub fn is_closed(&self) -> bool {
        self.inner.error.is_some()
    }

    /// Why the session ended, once it has.
    pub fn error(&self) -> Option<ConnectionError> {
        self.inner.error
    }

    /// The peer's key id, once the handshake has completed.
    pub fn peer_key(&self) -> Option<KeyId> {
        self.inner.keys.as_ref().map(|k| k.peer_key)
    }

    /// The negotiated suite, once the handshake has completed.
    pub fn suite(&self) -> Option<Suite> {
        self.inner.keys.as_ref().map(|k| k.suite)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats
    }

    /// Number of live streams (opened by either side).
    pub fn stream_count(&self) -> usize {
        self.inner.streams.len()
    }

    /// Number of live streams this side opened (the count the stream limit
    /// applies to, PROTOCOL.md §7.5).
    pub fn local_stream_count(&self) -> usize {
        self.inner.count_streams(true)
    }

    /// True if a new stream can be opened now (client: `open_stream`;
    /// server: `open_incoming`).
    pub fn can_open_stream(&self) -> bool {
        self.is_established()
            && !self.inner.peer_going_away
            && !self.inner.sent_goaway
            && self.inner.streams.len() < S
            && self.inner.keys.as_ref().is_some()
            && self.inner.count_streams(true) < self.inner.own_stream_limit()
    }

    // ------------------------------------------------------------ input --

    /// Feeds bytes received from the transport; returns how many were
    /// consumed. Stops after one record so its events can be drained; call
    /// again with the remaining bytes after draining [`Self::poll_event`].
    pub fn handle_input<R: CryptoRng + ?Sized>(
        &mut self,
        input: &[u8],
        now: Instant,
        rng: &mut R,
    ) -> usize {
        if self.inner.error.is_some() {
            return input.len();
        }
        if self.rx.frames.is_some() || self.awaits_private_key_op() {
            return 0;
        }
        if !input.is_empty() {
            self.inner.last_rx = now;
        }
        let mut used = 0;
        loop {
            if self.awaits_private_key_op() {
                return used;
            }
            let handshaking = !matches!(self.inner.state, State::Established);
            let header_len = if handshaking {
                HS_HEADER
            } else {
                RECORD_HEADER
            };
            used += self.rx.fill_to(header_len, &input[used..]);
            if self.rx.len < header_len {
                return used;
            }
            let total = if handshaking {
                let mut h = [0u8; HS_HEADER];
                h.copy_from_slice(&self.rx.buf[..HS_HEADER]);
                match HandshakeHeader::parse(&h) {
                    Ok(hdr) => HS_HEADER + hdr.body_len,
                    Err(e) => {
                        self.inner.fail_handshake_input(e.into());
                        return input.len();
                    }
                }
            } else {
                let h = [self.rx.buf[0], self.rx.buf[1]];
                match record::parse_header(&h, self.inner.local_max_record) {
                    Ok(len) => RECORD_HEADER + len,
                    Err(e) => {
                        self.inner.fail(e.into());
                        return input.len();
                    }
                }
            };
            used += self.rx.fill_to(total, &input[used..]);
            if self.rx.len < total {
                return used;
            }
            if handshaking {
                self.inner
                    .handle_handshake_message(&self.rx.buf[..total], rng);
                self.rx.len = 0;
                if self.inner.error.is_some() {
                    return input.len();
                }
            } else {
                match self.inner.open_record(&mut self.rx.buf[..total]) {
                    Ok(()) => {
                        self.rx.frames = Some((RECORD_HEADER, total - TAG_LEN));
                    }
                    Err(e) => {
                        self.inner.fail(ConnectionError::Record(e));
                        return input.len();
                    }
                }
                return used;
            }
        }
    }

    /// Reports that the transport reached EOF. Without a prior CLOSE from
    /// the peer this is a truncation and fails the session.
    pub fn handle_eof(&mut self) {
        self.inner.fail(ConnectionError::Truncated);
    }

    /// The next event, if any. Drain until `None` after each input call.
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        let inner = &mut self.inner;
        if inner.connected_event {
            inner.connected_event = false;
            return Some(Event::Connected);
        }
        while let Some((pos, end)) = self.rx.frames {
            if inner.error.is_some() {
                self.rx.frames = None;
                self.rx.len = 0;
                break;
            }
            if pos >= end {
                self.rx.frames = None;
                self.rx.len = 0;
                break;
            }
            let plain = &self.rx.buf[pos..end];
            let (frame, n) = match Frame::parse(plain) {
                Ok(v) => v,
                Err(e) => {
                    inner.fail(e.into());
                    break;
                }
            };
            let last = pos + n == end;
            self.rx.frames = Some((pos + n, end));
            match inner.apply_frame(frame, last) {
                Ok(Some(event)) => return Some(event),
                Ok(None) => {}
                Err(e) => {
                    inner.fail(e);
                    break;
                }
            }
        }
        if inner.error.is_some() && inner.closed_event {
            inner.closed_event = false;
            if let Some(error) = inner.error {
                return Some(Event::Closed { error });
            }
        }
        None
    }

    // ----------------------------------------------------------- output --

    /// Bytes to write to the transport now (seals the record being built).
    pub fn transmit_pending(&mut self) -> &[u8] {
        // A server's ServerHello waits for its Finished (one flight).
        if self.awaits_private_key_op() {
            return &[];
        }
        self.inner.flush();
        self.inner.tx.sealed()
    }

    /// Reports that the first `n` bytes of [`Self::transmit_pending`] were
    /// written.
    pub fn transmit_done(&mut self, n: usize) {
        self.inner.tx.consume(n);
    }

    /// True if bytes are waiting (or would be produced by a flush).
    pub fn wants_transmit(&self) -> bool {
        if self.awaits_private_key_op() {
            return false;
        }
        !self.inner.tx.is_empty()
            || !self.inner.dirty.is_empty()
            || self.inner.pending_pong.is_some()
            || self.inner.pending_ping
            || self.inner.pending_close.is_some()
            || (self.inner.key_update_requested.is_some()
                && self.inner.keys.is_some()
                && self.inner.error.is_none())
    }

    // ----------------------------------------------------------- timers --

    /// When [`Self::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let i = &self.inner;
        if i.error.is_some() || matches!(i.state, State::Unstarted) {
            return None;
        }
        if !matches!(i.state, State::Established) {
            return Some(i.created + i.session.handshake_timeout);
        }
        let idle = i.last_rx + i.session.idle_timeout;
        if i.ping_outstanding {
            Some(idle)
        } else {
            Some(idle.min(i.last_rx + i.session.keepalive_interval))
        }
    }

    /// Runs the timers: handshake deadline, keepalive PING, idle timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let i = &mut self.inner;
        if i.error.is_some() || matches!(i.state, State::Unstarted) {
            return;
        }
        if !matches!(i.state, State::Established) {
            if now >= i.created + i.session.handshake_timeout {
                i.fail(ConnectionError::Timeout(TimeoutKind::Handshake));
            }
            return;
        }
        if now >= i.last_rx + i.session.idle_timeout {
            i.fail(ConnectionError::Timeout(TimeoutKind::Idle));
        } else if now >= i.last_rx + i.session.keepalive_interval && !i.ping_outstanding {
            i.ping_outstanding = true;
            i.pending_ping = true;
        }
    }

    // ---------------------------------------------------- session calls --

    /// Closes the session with an authenticated CLOSE. Produces
    /// [`Event::Closed`] with [`ConnectionError::LocallyClosed`].
    pub fn close(&mut self, code: CloseCode) {
        self.inner.fail(ConnectionError::LocallyClosed(code));
    }

    /// Tells the peer no new streams will be accepted (server) or opened.
    pub fn go_away(&mut self, code: CloseCode) {
        if !self.inner.sent_goaway {
            self.inner.sent_goaway = true;
            self.inner.pending_goaway = Some(code);
        }
    }

    /// Updates the sending key now and asks the peer to update its own.
    pub fn request_key_update(&mut self) {
        self.inner.key_update_requested = Some(true);
    }

    // ----------------------------------------------------- stream calls --

    /// (client) Opens a stream to `dest`. Data may be sent on it at once.
    pub fn open_stream(&mut self, dest: Destination<'_>) -> Result<StreamId, StreamError> {
        self.inner.open_stream(dest)
    }

    /// (client) Asks the server to listen on `bind`; the answer arrives as
    /// [`Event::ListenGranted`] or [`Event::ListenRefused`].
    pub fn request_listen(&mut self, bind: Destination<'_>) -> Result<ListenId, StreamError> {
        self.inner.request_listen(bind)
    }

    /// (server) Grants a listener the client asked for: the server listens
    /// now. Streams for it are opened with [`Self::open_incoming`].
    pub fn grant_listen(&mut self, id: ListenId) -> Result<(), StreamError> {
        self.inner.answer_listen(id, Ok(()))
    }

    /// (server) Refuses a listener with a reason; it is gone.
    pub fn refuse_listen(
        &mut self,
        id: ListenId,
        code: ListenErrorCode,
    ) -> Result<(), StreamError> {
        self.inner.answer_listen(id, Err(code))
    }

    /// (server) Opens a stream toward the client for a connection accepted
    /// on granted listener `listen`; `origin` is that connection's peer
    /// (IPv4 or IPv6). The client answers with [`Event::Opened`] or
    /// [`Event::OpenFailed`]; the stream has no send credit until the
    /// client grants some (with its OPEN_OK).
    pub fn open_incoming(
        &mut self,
        listen: ListenId,
        origin: Destination<'_>,
    ) -> Result<StreamId, StreamError> {
        self.inner.open_incoming(listen, origin)
    }

    /// Confirms a stream the peer opened (server: OPEN, the destination is
    /// connected; client: INCOMING, the target is connected).
    pub fn accept_stream(&mut self, id: StreamId) -> Result<(), StreamError> {
        let i = &mut self.inner;
        let idx = i.find(id).ok_or(StreamError::UnknownStream)?;
        let s = &mut i.streams[idx];
        // Only once, and never after a refusal or reset (found by fuzzing:
        // an accept used to overwrite a pending refusal).
        if s.open != OpenState::AwaitingAccept
            || s.reply_to_send.is_some()
            || s.local == EndState::Done
        {
            return Err(StreamError::InvalidState);
        }
        s.open = OpenState::Open;
        s.reply_to_send = Some(Ok(()));
        i.mark_dirty(idx);
        Ok(())
    }

    /// Refuses a stream the peer opened with a reason; it is gone.
    pub fn refuse_stream(
        &mut self,
        id: StreamId,
        code: StreamErrorCode,
    ) -> Result<(), StreamError> {
        let i = &mut self.inner;
        let idx = i.find(id).ok_or(StreamError::UnknownStream)?;
        let s = &mut i.streams[idx];
        if s.open != OpenState::AwaitingAccept
            || s.reply_to_send.is_some()
            || s.local == EndState::Done
        {
            return Err(StreamError::InvalidState);
        }
        s.reply_to_send = Some(Err(code));
        s.local = EndState::Done;
        s.remote = EndState::Done;
        i.mark_dirty(idx);
        Ok(())
    }

    /// Bytes [`Self::stream_send`] would accept now for this stream.
    pub fn stream_send_capacity(&self, id: StreamId) -> usize {
        let i = &self.inner;
        let (Some(idx), Some(keys)) = (i.find(id), i.keys.as_ref()) else {
            return 0;
        };
        let s = &i.streams[idx];
        if !s.can_send() {
            return 0;
        }
        // All the records the transmit buffer can still take, so one call
        // of `stream_send_with` can fill several before the next write.
        let room = i.tx.data_room(keys.peer_max_record, CONTROL_RESERVE);
        usize::try_from(s.send_credit).map_or(room, |c| c.min(room))
    }

    /// Sends stream data; returns how much was taken (0 when out of credit
    /// or transmit space — [`Event::Writable`] or a flush tells when to
    /// retry).
    pub fn stream_send(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let mut off = 0;
        let total = self.stream_send_with(id, data.len(), |buf| {
            let n = buf.len().min(data.len() - off);
            buf[..n].copy_from_slice(&data[off..off + n]);
            off += n;
            n
        })?;
        Ok(total)
    }

    /// Sends up to `max` bytes of stream data that `fill` writes straight
    /// into the record being built (e.g. a socket read). `fill` may be
    /// called several times and returns how many bytes it wrote; returning
    /// 0 stops. Returns the total taken.
    pub fn stream_send_with(
        &mut self,
        id: StreamId,
        max: usize,
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> Result<usize, StreamError> {
        self.inner.stream_send_with(id, max, &mut fill)
    }

    /// Half-closes the stream: no more data will be sent on it.
    pub fn stream_finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let i = &mut self.inner;
        let idx = i.find(id).ok_or(StreamError::UnknownStream)?;
        let s = &mut i.streams[idx];
        if s.open == OpenState::AwaitingAccept {
            // FIN must not overtake OPEN_OK.
            return Err(StreamError::InvalidState);
        }
        if s.local != EndState::Open || s.reset_to_send.is_some() {
            return Err(StreamError::NotWritable);
        }
        s.local = EndState::Pending;
        i.mark_dirty(idx);
        Ok(())
    }

    /// Aborts the stream in both directions; it is gone.
    pub fn stream_reset(&mut self, id: StreamId, code: StreamErrorCode) -> Result<(), StreamError> {
        let i = &mut self.inner;
        let Some(idx) = i.find(id) else { return Ok(()) };
        let s = &mut i.streams[idx];
        if s.local == EndState::Done && s.remote == EndState::Done {
            return Ok(());
        }
        if s.open == OpenState::AwaitingAccept {
            s.reply_to_send = Some(Err(code));
        } else {
            s.reset_to_send = Some(code);
        }
        s.local = EndState::Done;
        s.remote = EndState::Done;
        i.mark_dirty(idx);
        Ok(())
    }

    /// Reports that `n` bytes of received data were delivered; returns
    /// credit to the peer. Unknown (finished) streams are ignored, and `n`
    /// is capped at what [`Event::Data`] handed out and was not yet
    /// reported.
    pub fn stream_consumed(&mut self, id: StreamId, n: usize) {
        let i = &mut self.inner;
        let Some(idx) = i.find(id) else { return };
        let s = &mut i.streams[idx];
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(s.unconsumed);
        s.unconsumed -= n;
        s.sample_consumed = s.sample_consumed.saturating_add(n);
        if s.remote != EndState::Open {
            return;
        }
        s.credit_to_return = s.credit_to_return.saturating_add(n);
        i.trim_to_budget(idx);
        let s = &i.streams[idx];
        if s.credit_to_return >= s.credit_threshold() {
            i.mark_dirty(idx);
        }
    }

    // ------------------------------------------------------ flow control --

    /// Caps the receive credit this connection may have outstanding,
    /// summed over its streams (see [`Self::receive_outstanding`]). The
    /// window tuner never grows past it. When lowered below what is
    /// committed, the connection withholds returned credit until it fits,
    /// cutting each stream no lower than its initial window
    /// (`SessionConfig::stream_window`) — new streams always get that,
    /// so the driver bounds the floor with `max_streams`. Default:
    /// unlimited. Kept across [`Self::start_server`] / [`Self::start_client`].
    pub fn set_receive_budget(&mut self, bytes: usize) {
        let i = &mut self.inner;
        i.receive_budget = bytes;
        for idx in 0..i.streams.len() {
            i.trim_to_budget(idx);
        }
    }

    /// The budget set by [`Self::set_receive_budget`].
    pub fn receive_budget(&self) -> usize {
        self.inner.receive_budget
    }

    /// Receive credit outstanding over all streams: granted to the peer
    /// and not yet reported consumed with [`Self::stream_consumed`] (bytes
    /// in flight plus bytes delivered but not yet consumed). This is the
    /// most stream payload the peer can make the driver hold.
    pub fn receive_outstanding(&self) -> usize {
        let sum: u64 = self
            .inner
            .streams
            .iter()
            .map(Stream::recv_outstanding)
            .sum();
        usize::try_from(sum).unwrap_or(usize::MAX)
    }

    /// A stream's current receive window (for logs and tests).
    pub fn stream_receive_window(&self, id: StreamId) -> Option<u32> {
        let i = &self.inner;
        i.find(id).map(|idx| i.streams[idx].recv_window)
    }

    /// The smoothed round-trip time measured by the window tuner, once it
    /// has a sample.
    pub fn rtt(&self) -> Option<Duration> {
        self.inner.srtt
    }

    // ------------------------------------------------------------ memory --

    /// Gives back the storage of every buffer that holds nothing now: the
    /// transmit buffer once written out, the receive buffer between
    /// records, the stream table once no stream is live. With
    /// [`Heap`](crate::memory::Heap) memory this frees it (it is taken
    /// again on next use); with [`Inline`] it does nothing. Call it when
    /// the session goes quiet, e.g. after a poll round in which
    /// [`Self::transmit_pending`] was fully written.
    pub fn release_idle_buffers(&mut self) {
        self.inner.tx.release_if_empty();
        self.rx.release_if_empty();
        if self.inner.streams.is_empty() {
            self.inner.streams.release();
        }
    }

    /// Heap bytes held now by the buffers and the stream table (always 0
    /// with [`Inline`] memory).
    pub fn heap_bytes(&self) -> usize {
        self.inner.tx.heap_bytes() + self.rx.heap_bytes() + self.inner.streams.heap_bytes()
    }
}

impl<const TX: usize, const S: usize, M: Memory> Inner<TX, S, M> {
    fn find(&self, id: StreamId) -> Option<usize> {
        self.streams.binary_search_by_key(&id, |s| s.id).ok()
    }

    fn is_client(&self) -> bool {
        matches!(self.role, Some(Role::Client(_)))
    }

    /// True for ids in this side's own space (client odd, server even).
    fn is_own_id(&self, id: StreamId) -> bool {
        id.is_client_initiated() == self.is_client()
    }

    /// Live streams opened by this side (`own`) or by the peer.
    fn count_streams(&self, own: bool) -> usize {
        self.streams
            .iter()
            .filter(|s| self.is_own_id(s.id) == own)
            .count()
    }

    /// Inserts a stream keeping the table sorted by id (ids of the two
    /// spaces interleave). `Err` when every slot is taken.
    fn insert_stream(&mut self, stream: Stream) -> Result<usize, Stream> {
        let at = match self.streams.binary_search_by_key(&stream.id, |s| s.id) {
            Ok(at) | Err(at) => at,
        };
        self.streams.insert(at, stream).map(|()| at)
    }

    /// Refuses a peer-opened stream for which no slot is free, without
    /// taking one: the OPEN_FAIL goes straight into the transmit buffer.
    fn refuse_without_slot(&mut self, id: StreamId) -> Result<(), ConnectionError> {
        let frame = Frame::OpenFail {
            id,
            code: StreamErrorCode::ResourceExhausted,
        };
        match self.push_control(&frame) {
            Ok(true) => Ok(()),
            // The peer does not read what we send: nothing bounded is left.
            Ok(false) => Err(ConnectionError::LocallyClosed(CloseCode::Internal)),
            Err(e) => Err(ConnectionError::Record(e)),
        }
    }

    /// How many streams of our own id space may be live: the announced
    /// limit, or our own smaller one (PROTOCOL.md §7.5). The peer's opens
    /// are checked against the announced limit alone; a full stream table
    /// refuses them with OPEN_FAIL 9 instead.
    fn own_stream_limit(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| {
            k.max_streams.min(usize::from(self.session.max_streams))
        })
    }

    /// A peer-opened stream (OPEN at the server, INCOMING at the client):
    /// checks the id space, order and limit, then takes a slot.
    fn admit_peer_stream(
        &mut self,
        id: StreamId,
        window: u32,
    ) -> Result<Option<usize>, ConnectionError> {
        if self.is_own_id(id) || id.0 <= self.highest_peer_stream {
            return Err(ProtocolViolation::BadStreamId.into());
        }
        self.highest_peer_stream = id.0;
        let limit = self.keys.as_ref().map_or(0, |k| k.max_streams);
        if self.count_streams(false) >= limit {
            return Err(ProtocolViolation::TooManyStreams.into());
        }
        let mut stream = Stream::new(
            id,
            OpenState::AwaitingAccept,
            window,
            self.session.stream_window,
        );
        if self.is_client() {
            // The server opened it with no credit toward the client; the
            // client grants its window with the OPEN_OK (§7.7).
            stream.recv_credit = 0;
            stream.credit_to_return = self.session.stream_window;
        }
        let refused = self.sent_goaway;
        if refused {
            stream.reply_to_send = Some(Err(StreamErrorCode::SessionClosing));
            stream.local = EndState::Done;
            stream.remote = EndState::Done;
            stream.credit_to_return = 0;
        }
        let Ok(idx) = self.insert_stream(stream) else {
            self.refuse_without_slot(id)?;
            return Ok(None);
        };
        if refused {
            self.mark_dirty(idx);
            return Ok(None);
        }
        Ok(Some(idx))
    }

    fn find_listener(&self, id: ListenId) -> Option<usize> {
        self.listeners.iter().position(|l| l.id == id)
    }

    fn request_listen(&mut self, bind: Destination<'_>) -> Result<ListenId, StreamError> {
        if !self.is_client() {
            return Err(StreamError::InvalidState);
        }
        if self.error.is_some() || !matches!(self.state, State::Established) {
            return Err(StreamError::NotEstablished);
        }
        if self.peer_going_away || self.sent_goaway {
            return Err(StreamError::GoingAway);
        }
        bind.validate().map_err(|_| StreamError::BadDestination)?;
        if usize::from(self.listen_requests) >= MAX_LISTENERS {
            return Err(StreamError::TooManyListeners);
        }
        let id = ListenId(self.last_listen_id + 1);
        if !self
            .push_control(&Frame::Listen { id, bind })
            .map_err(|_| StreamError::NotEstablished)?
        {
            return Err(StreamError::Blocked);
        }
        self.last_listen_id = id.0;
        self.listen_requests += 1;
        // At most MAX_LISTENERS requests, so the table has room.
        let _ = self.listeners.push(Listener {
            id,
            state: ListenState::Requested,
        });
        Ok(id)
    }

    fn answer_listen(
        &mut self,
        id: ListenId,
        answer: Result<(), ListenErrorCode>,
    ) -> Result<(), StreamError> {
        if self.is_client() {
            return Err(StreamError::InvalidState);
        }
        if self.error.is_some() || self.keys.is_none() {
            return Err(StreamError::NotEstablished);
        }
        let idx = self.find_listener(id).ok_or(StreamError::UnknownListener)?;
        if self.listeners[idx].state != ListenState::Requested {
            return Err(StreamError::InvalidState);
        }
        let frame = match answer {
            Ok(()) => Frame::ListenOk { id },
            Err(code) => Frame::ListenFail { id, code },
        };
        if !self
            .push_control(&frame)
            .map_err(|_| StreamError::NotEstablished)?
        {
            return Err(StreamError::Blocked);
        }
        if answer.is_ok() {
            self.listeners[idx].state = ListenState::Granted;
        } else {
            self.listeners.remove(idx);
        }
        Ok(())
    }

    fn open_incoming(
        &mut self,
        listen: ListenId,
        origin: Destination<'_>,
    ) -> Result<StreamId, StreamError> {
        if self.is_client() {
            return Err(StreamError::InvalidState);
        }
        if self.error.is_some() || !matches!(self.state, State::Established) {
            return Err(StreamError::NotEstablished);
        }
        if self.peer_going_away || self.sent_goaway {
            return Err(StreamError::GoingAway);
        }
        if matches!(origin.host, crate::wire::frame::Host::Domain(_)) {
            return Err(StreamError::BadDestination);
        }
        origin.validate().map_err(|_| StreamError::BadDestination)?;
        match self.find_listener(listen) {
            Some(idx) if self.listeners[idx].state == ListenState::Granted => {}
            _ => return Err(StreamError::UnknownListener),
        }
        let window = self.session.stream_window;
        // No credit toward the client until its OPEN_OK's WINDOW.
        self.start_own_stream(0, |id| Frame::Incoming {
            id,
            window,
            listen,
            origin,
        })
    }

    /// Receive memory committed over all streams (windows of streams the
    /// peer still sends on, unconsumed bytes of the others).
    fn recv_committed(&self) -> u64 {
        self.streams.iter().map(Stream::recv_committed).sum()
    }

    /// Over budget: withholds credit this stream was about to return,
    /// shrinking its window (not below the initial window) until the
    /// connection fits again.
    fn trim_to_budget(&mut self, idx: usize) {
        if self.receive_budget == usize::MAX {
            return;
        }
        let committed = self.recv_committed();
        let budget = self.receive_budget as u64;
        if committed <= budget {
            return;
        }
        let floor = self.session.stream_window;
        let s = &mut self.streams[idx];
        if s.remote != EndState::Open {
            return;
        }
        let excess = u32::try_from(committed - budget).unwrap_or(u32::MAX);
        let cut = excess
            .min(s.recv_window.saturating_sub(floor))
            .min(s.credit_to_return);
        s.recv_window -= cut;
        s.credit_to_return -= cut;
    }

    /// Starts a round-trip sample when DATA arrives on a stream whose
    /// window may still grow: queues a PING and zeroes every stream's
    /// consumed-bytes count. The time is that of the input being read.
    fn maybe_start_rtt_sample(&mut self, idx: usize) {
        let max = self.session.max_stream_window;
        let s = &self.streams[idx];
        if !matches!(self.rtt_sample, RttSample::Idle)
            || self.last_rx < self.next_sample_at
            || max <= self.session.stream_window
            || !s.can_grow()
            || s.recv_window >= max
        {
            return;
        }
        for st in self.streams.iter_mut() {
            st.sample_consumed = 0;
        }
        self.rtt_sample = RttSample::Queued(self.last_rx);
        self.pending_ping = true;
    }

    /// A sample whose PING is still unwritten is dropped (with the PING,
    /// unless the keepalive wants it too) once no stream can grow any more,
    /// e.g. when the DATA that started it was followed by FIN.
    fn drop_stale_rtt_sample(&mut self) {
        if matches!(self.rtt_sample, RttSample::Queued(_))
            && !self.streams.iter().any(Stream::can_grow)
        {
            self.rtt_sample = RttSample::Idle;
            if !self.ping_outstanding {
                self.pending_ping = false;
            }
        }
    }

    /// A PONG arrived: completes the running sample if it echoes its PING
    /// or a later one (PONGs may be coalesced), then grows windows.
    fn complete_rtt_sample(&mut self, opaque: u64) {
        let RttSample::InFlight {
            opaque: sent,
            start,
        } = self.rtt_sample
        else {
            return;
        };
        if opaque < sent || opaque > self.ping_counter {
            return;
        }
        self.rtt_sample = RttSample::Idle;
        let rtt = self.last_rx.saturating_since(start);
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
        if self.grow_windows() {
            self.sample_backoff = Duration::ZERO;
        } else {
            self.sample_backoff = (self.sample_backoff * 2)
                .max(Duration::from_millis(1))
                .min(MAX_SAMPLE_BACKOFF);
        }
        self.next_sample_at = self.last_rx + self.sample_backoff;
    }

    /// The BDP rule: a stream that consumed at least 2/3 of its window in
    /// the sampled round trip is window-limited; its window becomes twice
    /// what it consumed, capped by `max_stream_window` and the budget.
    /// Returns whether any window grew.
    fn grow_windows(&mut self) -> bool {
        let mut grew = false;
        let max = u64::from(self.session.max_stream_window);
        let mut headroom = (self.receive_budget as u64).saturating_sub(self.recv_committed());
        for idx in 0..self.streams.len() {
            let s = &mut self.streams[idx];
            let consumed = u64::from(core::mem::take(&mut s.sample_consumed));
            let window = u64::from(s.recv_window);
            if !s.can_grow() || consumed * 3 < window * 2 {
                continue;
            }
            let grow = (consumed * 2).min(max).saturating_sub(window).min(headroom);
            if grow == 0 {
                continue;
            }
            headroom -= grow;
            // `window + grow` ≤ max_stream_window, a u32.
            s.recv_window += grow as u32;
            s.credit_to_return = s.credit_to_return.saturating_add(grow as u32);
            self.mark_dirty(idx);
            grew = true;
        }
        grew
    }

    fn mark_dirty(&mut self, idx: usize) {
        let s = &mut self.streams[idx];
        if !s.queued {
            // The deque has one slot per stream slot, so it cannot be full
            // while this stream is not in it.
            if self.dirty.push_back(s.id).is_ok() {
                s.queued = true;
            }
        }
    }

    /// Forgets a stream once nothing more will be sent or received on it,
    /// dropping its id from the dirty queue too, so finished streams never
    /// count against the stream limit.
    fn gc(&mut self, idx: usize) {
        if !self.streams[idx].is_finished() {
            return;
        }
        let removed = self.streams.remove(idx);
        if removed.queued {
            let n = self.dirty.len();
            for _ in 0..n {
                if let Some(id) = self.dirty.pop_front()
                    && id != removed.id
                {
                    // Re-queue in order; capacity is unchanged.
                    let _ = self.dirty.push_back(id);
                }
            }
        }
    }

    fn fail(&mut self, error: ConnectionError) {
        if self.error.is_some() {
            return;
        }
        self.error = Some(error);
        self.closed_event = true;
        self.private_key_op = None;
        self.server_hello_job = None;
        self.dirty.clear();
        self.pending_ping = false;
        let send_close = self.keys.is_some()
            && !matches!(
                error,
                ConnectionError::PeerClosed(_) | ConnectionError::Truncated
            );
        if send_close {
            self.pending_close = Some(error.close_code());
        } else {
            self.pending_pong = None;
        }
    }

    /// A handshake-phase failure; the server tells the client why when it
    /// can do so without helping an attacker.
    fn fail_handshake_input(&mut self, error: ConnectionError) {
        if matches!(self.role, Some(Role::Server(_)))
            && matches!(self.state, State::ServerExpectClientHello)
        {
            let n = handshake::emit_alert(
                crate::wire::handshake::AlertReason::Malformed,
                None,
                self.tx.raw_tail(),
            );
            self.tx.commit_raw(n);
        }
        self.fail(error);
    }

    fn handle_handshake_message<R: CryptoRng + ?Sized>(&mut self, whole: &[u8], rng: &mut R) {
        let state = core::mem::replace(&mut self.state, State::Failed);
        let result: Result<State, ConnectionError> = match (state, self.role.as_ref()) {
            (State::ClientExpectServerHello(st), Some(Role::Client(cfg))) => {
                if self.defer_private_key {
                    st.begin(cfg, whole).map(|(next, op)| {
                        self.private_key_op = Some(op);
                        State::ClientAwaitPrivateKey(next)
                    })
                } else {
                    st.handle(cfg, whole, rng)
                        .map(State::ClientExpectServerFinished)
                }
            }
            (State::ClientExpectServerFinished(st), Some(Role::Client(_))) => {
                match st.handle(whole, self.tx.raw_tail()) {
                    Ok((n, est)) => {
                        self.tx.commit_raw(n);
                        self.establish(est);
                        Ok(State::Established)
                    }
                    Err(e) => Err(e),
                }
            }
            (State::ServerExpectClientHello, Some(Role::Server(cfg))) => {
                let cfg = cfg.clone();
                let max_streams = usize::from(self.session.max_streams).min(S) as u16;
                let max_record = self.local_max_record as u16;
                if self.defer_private_key {
                    self.server_hello_job =
                        Some(ServerHelloJob::new(cfg, max_record, max_streams, whole));
                    Ok(State::ServerAwaitHelloJob)
                } else {
                    match handshake::handle_client_hello(
                        &cfg,
                        max_record,
                        max_streams,
                        whole,
                        rng,
                        self.tx.raw_tail(),
                    ) {
                        Ok((n, next)) => {
                            self.tx.commit_raw(n);
                            Ok(State::ServerExpectClientFinished(next))
                        }
                        Err(rej) => {
                            self.reject_client_hello(rej);
                            return;
                        }
                    }
                }
            }
            (State::ServerExpectClientFinished(st), Some(Role::Server(_))) => {
                st.handle(whole).map(|est| {
                    self.establish(est);
                    State::Established
                })
            }
            _ => Err(HandshakeError::UnexpectedMessage.into()),
        };
        match result {
            Ok(next) => self.state = next,
            Err(e) => self.fail(e),
        }
    }

    /// A ClientHello the server refuses: the alert (if the rejection has
    /// one) goes out, then the session fails.
    fn reject_client_hello(&mut self, rej: Rejection) {
        if let Some((reason, key)) = rej.alert {
            let n = handshake::emit_alert(reason, key, self.tx.raw_tail());
            self.tx.commit_raw(n);
        }
        self.fail(rej.error.into());
    }

    fn establish(&mut self, est: Established) {
        let max_streams = usize::from(est.max_streams);
        self.keys = Some(Keys {
            sealer: est.sealer,
            opener: est.opener,
            suite: est.suite,
            peer_max_record: usize::from(est.peer_max_record),
            peer_stream_window: est.stream_window,
            max_streams,
            peer_key: est.peer_key,
        });
        self.connected_event = true;
    }

    fn open_record(&mut self, whole: &mut [u8]) -> Result<(), CryptoError> {
        let Some(keys) = self.keys.as_mut() else {
            return Err(CryptoError::Decrypt);
        };
        let hdr = [whole[0], whole[1]];
        let tag_at = whole.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&whole[tag_at..]);
        keys.opener
            .open(&hdr, &mut whole[RECORD_HEADER..tag_at], &tag)?;
        self.stats.records_received += 1;
        Ok(())
    }

    fn apply_frame<'a>(
        &mut self,
        frame: Frame<'a>,
        last_in_record: bool,
    ) -> Result<Option<Event<'a>>, ConnectionError> {
        let is_server = matches!(self.role, Some(Role::Server(_)));
        match frame {
            Frame::Open { id, window, dest } => {
                // A client that announced GOAWAY opens nothing more.
                if !is_server || self.peer_going_away {
                    return Err(ProtocolViolation::UnexpectedFrame.into());
                }
                match self.admit_peer_stream(id, window)? {
                    Some(_) => Ok(Some(Event::OpenRequest { id, dest })),
                    None => Ok(None),
                }
            }
            Frame::Incoming {
                id,
                window,
                listen,
                origin,
            } => {
                // A server that announced GOAWAY opens nothing more.
                if is_server || self.peer_going_away {
                    return Err(ProtocolViolation::UnexpectedFrame.into());
                }
                match self.find_listener(listen) {
                    Some(idx) if self.listeners[idx].state == ListenState::Granted => {}
                    _ => return Err(ProtocolViolation::BadListenId.into()),
                }
                match self.admit_peer_stream(id, window)? {
                    Some(_) => Ok(Some(Event::IncomingStream { id, listen, origin })),
                    None => Ok(None),
                }
            }
            Frame::Listen { id, bind } => {
                if !is_server || self.peer_going_away {
                    return Err(ProtocolViolation::UnexpectedFrame.into());
                }
                if id.0 <= self.last_listen_id {
                    return Err(ProtocolViolation::BadListenId.into());
                }
                if usize::from(self.listen_requests) >= MAX_LISTENERS {
                    return Err(ProtocolViolation::TooManyListeners.into());
                }
                self.last_listen_id = id.0;
                self.listen_requests += 1;
                // At most MAX_LISTENERS requests, so the table has room.
                let _ = self.listeners.push(Listener {
                    id,
                    state: ListenState::Requested,
                });
                Ok(Some(Event::ListenRequest { id, bind }))
            }
            Frame::ListenOk { id } | Frame::ListenFail { id, .. } => {
                if is_server {
                    return Err(ProtocolViolation::UnexpectedFrame.into());
                }
                let Some(idx) = self.find_listener(id) else {
                    return Err(ProtocolViolation::BadListenId.into());
                };
                if self.listeners[idx].state != ListenState::Requested {
                    return Err(ProtocolViolation::UnexpectedFrame.into());
                }
                if let Frame::ListenFail { code, .. } = frame {
                    self.listeners.remove(idx);
                    Ok(Some(Event::ListenRefused { id, code }))
                } else {
                    self.listeners[idx].state = ListenState::Granted;
                    Ok(Some(Event::ListenGranted { id }))
                }
            }
            Frame::OpenOk { id } | Frame::OpenFail { id, .. } => {
                // Only the side that opened a stream is answered.
                if !self.is_own_id(id) {
                    return Err(ProtocolViolation::UnexpectedFrame.into());
                }
                let Some(idx) = self.find_or_forgotten(id)? else {
                    return Ok(None);
                };
                let s = &mut self.streams[idx];
                if s.open != OpenState::AwaitingReply {
                    return Err(ProtocolViolation::UnexpectedFrame.into());
                }
                if let Frame::OpenFail { code, .. } = frame {
                    s.local = EndState::Done;
                    s.remote = EndState::Done;
                    s.reset_to_send = None;
                    s.credit_to_return = 0;
                    self.gc(idx);
                    Ok(Some(Event::OpenFailed { id, code }))
                } else {
                    s.open = OpenState::Open;
                    Ok(Some(Event::Opened { id }))
                }
            }
            Frame::Data { id, data } => {
                let Some(idx) = self.find_or_forgotten(id)? else {
                    return Ok(None);
                };
                let s = &mut self.streams[idx];
                // No DATA or FIN before the peer answered our open.
                if s.open == OpenState::AwaitingReply {
                    return Err(ProtocolViolation::UnexpectedFrame.into());
                }
                match s.remote {
                    EndState::Open => {}
                    // Data racing our RESET: drop it.
                    _ if s.local == EndState::Done && s.reset_to_send.is_some() => return Ok(None),
                    _ if s.remote == EndState::Done && s.local == EndState::Done => {
                        return Ok(None);
                    }
                    _ => return Err(ProtocolViolation::DataAfterFin.into()),
                }
                // A DATA payload is at most 65535 bytes.
                let len = data.len() as u32;
                if len > s.recv_credit {
                    return Err(ProtocolViolation::FlowControl.into());
                }
                s.recv_credit -= len;
                // len ≤ recv_credit, and their sum with `unconsumed` is the
                // window, a u32.
                s.unconsumed += len;
                self.stats.payload_received += u64::from(len);
                self.maybe_start_rtt_sample(idx);
                Ok(Some(Event::Data { id, data }))
            }
            Frame::Window { id, increment } => {
                let Some(idx) = self.find_or_forgotten(id)? else {
                    return Ok(None);
                };
                let s = &mut self.streams[idx];
                s.send_credit = s
                    .send_credit
                    .checked_add(increment)
                    .ok_or(ProtocolViolation::WindowOverflow)?;
                if s.blocked_on_credit && s.can_send() {
                    s.blocked_on_credit = false;
                    return Ok(Some(Event::Writable { id }));
                }
                Ok(None)
            }
            Frame::Fin { id } => {
                let Some(idx) = self.find_or_forgotten(id)? else {
                    return Ok(None);
                };
                let s = &mut self.streams[idx];
                // No DATA or FIN before the peer answered our open.
                if s.open == OpenState::AwaitingReply {
                    return Err(ProtocolViolation::UnexpectedFrame.into());
                }
                match s.remote {
                    EndState::Open => {
                        s.remote = EndState::Done;
                        s.credit_to_return = 0;
                        self.gc(idx);
                        Ok(Some(Event::Finished { id }))
                    }
                    _ if s.local == EndState::Done => Ok(None),
                    _ => Err(ProtocolViolation::DataAfterFin.into()),
                }
            }
            Frame::Reset { id, code } => {
                let Some(idx) = self.find_or_forgotten(id)? else {
                    return Ok(None);
                };
                let s = &mut self.streams[idx];
                let already_gone = s.local == EndState::Done && s.remote == EndState::Done;
                s.local = EndState::Done;
                s.remote = EndState::Done;
                s.reset_to_send = None;
                s.reply_to_send = None;
                s.credit_to_return = 0;
                self.gc(idx);
                if already_gone {
                    Ok(None)
                } else {
                    Ok(Some(Event::Reset { id, code }))
                }
            }
            Frame::Ping { opaque } => {
                self.pending_pong = Some(opaque);
                Ok(None)
            }
            Frame::Pong { opaque } => {
                self.ping_outstanding = false;
                self.complete_rtt_sample(opaque);
                Ok(None)
            }
            Frame::GoAway { code } => {
                if self.peer_going_away {
                    // A repeated GOAWAY changes nothing.
                    return Ok(None);
                }
                self.peer_going_away = true;
                Ok(Some(Event::GoAway { code }))
            }
            Frame::KeyUpdate { request_peer } => {
                if !last_in_record {
                    return Err(ProtocolViolation::FrameAfterEnd.into());
                }
                if let Some(keys) = self.keys.as_mut() {
                    keys.opener.update();
                }
                self.stats.key_updates_received += 1;
                if request_peer && self.key_update_requested.is_none() {
                    // Answer without asking back, so updates never ping-pong.
                    self.key_update_requested = Some(false);
                }
                Ok(None)
            }
            Frame::Close { code } => {
                if !last_in_record {
                    return Err(ProtocolViolation::FrameAfterEnd.into());
                }
                self.fail(ConnectionError::PeerClosed(code));
                Ok(None)
            }
        }
    }

    /// Finds a stream named by a peer frame. `Ok(None)` for a stream that
    /// existed and is finished (late frames are dropped); an error for an id
    /// that was never opened.
    fn find_or_forgotten(&self, id: StreamId) -> Result<Option<usize>, ConnectionError> {
        if let Some(idx) = self.find(id) {
            return Ok(Some(idx));
        }
        let known = if self.role.is_none() {
            false
        } else if self.is_own_id(id) {
            id.0 < self.next_stream_id
        } else {
            id.0 <= self.highest_peer_stream
        };
        if known {
            Ok(None)
        } else {
            Err(ProtocolViolation::BadStreamId.into())
        }
    }

    fn open_stream(&mut self, dest: Destination<'_>) -> Result<StreamId, StreamError> {
        if !matches!(self.role, Some(Role::Client(_))) {
            return Err(StreamError::InvalidState);
        }
        if self.error.is_some() || !matches!(self.state, State::Established) {
            return Err(StreamError::NotEstablished);
        }
        if self.peer_going_away || self.sent_goaway {
            return Err(StreamError::GoingAway);
        }
        dest.validate().map_err(|_| StreamError::BadDestination)?;
        if self.keys.is_none() {
            return Err(StreamError::NotEstablished);
        }
        let window = self.session.stream_window;
        let send_credit = self.keys.as_ref().map_or(0, |k| k.peer_stream_window);
        self.start_own_stream(send_credit, |id| Frame::Open { id, window, dest })
    }

    /// Takes this side's next stream id, announces it with the frame
    /// `announce` builds (OPEN or INCOMING) and registers the stream,
    /// awaiting the peer's reply, with `send_credit` toward the peer.
    fn start_own_stream<'f>(
        &mut self,
        send_credit: u32,
        announce: impl FnOnce(StreamId) -> Frame<'f>,
    ) -> Result<StreamId, StreamError> {
        if self.count_streams(true) >= self.own_stream_limit()
            || self.streams.len() >= S
            || self.next_stream_id >= u32::MAX - 1
        {
            return Err(StreamError::TooManyStreams);
        }
        let id = StreamId(self.next_stream_id);
        if !self
            .push_control(&announce(id))
            .map_err(|_| StreamError::NotEstablished)?
        {
            return Err(StreamError::Blocked);
        }
        self.next_stream_id += 2;
        let stream = Stream::new(
            id,
            OpenState::AwaitingReply,
            send_credit,
            self.session.stream_window,
        );
        // A free slot was checked above.
        self.insert_stream(stream)
            .map_err(|_| StreamError::TooManyStreams)?;
        Ok(id)
    }

    fn stream_send_with(
        &mut self,
        id: StreamId,
        max: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Result<usize, StreamError> {
        if self.error.is_some() || self.keys.is_none() {
            return Err(StreamError::NotEstablished);
        }
        let idx = self.find(id).ok_or(StreamError::UnknownStream)?;
        if !self.streams[idx].can_send() {
            return Err(StreamError::NotWritable);
        }
        // Frames owed on this stream (OPEN_OK) must precede its data.
        if self.streams[idx].queued {
            self.flush_stream(idx)
                .map_err(|_| StreamError::NotEstablished)?;
            if self.streams[idx].reply_to_send.is_some() {
                return Ok(0);
            }
        }
        let mut total = 0usize;
        let mut fill_done = false;
        while total < max && !fill_done {
            let credit = self.streams[idx].send_credit;
            if credit == 0 {
                self.streams[idx].blocked_on_credit = true;
                break;
            }
            let want = usize::try_from(credit).map_or(max - total, |c| c.min(max - total));
            let Some(keys) = self.keys.as_mut() else {
                break;
            };
            let max_plain = keys.peer_max_record;
            let mut seal = seal_with(
                &mut keys.sealer,
                &mut self.stats,
                &mut self.key_update_requested,
                self.session.key_update_after,
            );
            let n = self
                .tx
                .push_data_with(
                    id,
                    want,
                    max_plain,
                    CONTROL_RESERVE,
                    &mut seal,
                    &mut |buf| {
                        let n = fill(buf);
                        if n < buf.len() {
                            fill_done = true;
                        }
                        n
                    },
                )
                .map_err(|_| StreamError::NotEstablished)?;
            if n == 0 {
                break;
            }
            total += n;
            // n ≤ want ≤ credit, a u32.
            self.streams[idx].send_credit -= n as u32;
        }
        self.stats.payload_sent += total as u64;
        Ok(total)
    }

    /// Appends a control frame; `Ok(false)` when there is no room.
    fn push_control(&mut self, frame: &Frame<'_>) -> Result<bool, CryptoError> {
        let Some(keys) = self.keys.as_mut() else {
            return Ok(false);
        };
        let max_plain = keys.peer_max_record;
        let mut seal = seal_with(
            &mut keys.sealer,
            &mut self.stats,
            &mut self.key_update_requested,
            self.session.key_update_after,
        );
        self.tx.push_frame(frame, max_plain, 0, &mut seal)
    }

    /// Writes the frames a stream owes; `Ok(false)` if out of room.
    fn flush_stream(&mut self, idx: usize) -> Result<bool, CryptoError> {
        let s = self.streams[idx].clone();
        let threshold = s.credit_threshold();
        let id = s.id;
        if let Some(reply) = s.reply_to_send {
            let frame = match reply {
                Ok(()) => Frame::OpenOk { id },
                Err(code) => Frame::OpenFail { id, code },
            };
            if !self.push_control(&frame)? {
                return Ok(false);
            }
            self.streams[idx].reply_to_send = None;
        }
        if s.credit_to_return > 0
            && s.remote == EndState::Open
            && (s.credit_to_return >= threshold || s.local == EndState::Pending)
        {
            let inc = s.credit_to_return;
            if !self.push_control(&Frame::Window { id, increment: inc })? {
                return Ok(false);
            }
            let st = &mut self.streams[idx];
            st.credit_to_return -= inc;
            // recv_credit + inc ≤ recv_window, a u32.
            st.recv_credit = st.recv_credit.saturating_add(inc);
        }
        if let Some(code) = s.reset_to_send {
            if !self.push_control(&Frame::Reset { id, code })? {
                return Ok(false);
            }
            self.streams[idx].reset_to_send = None;
        } else if s.local == EndState::Pending {
            if !self.push_control(&Frame::Fin { id })? {
                return Ok(false);
            }
            self.streams[idx].local = EndState::Done;
        }
        self.streams[idx].queued = false;
        Ok(true)
    }

    /// Writes owed control frames and seals the open record.
    fn flush(&mut self) {
        if self.keys.is_none() {
            return;
        }
        if let Err(e) = self.flush_control() {
            self.fail(ConnectionError::Record(e));
            // Best effort: the sealer failed, nothing more can be sent.
            return;
        }
        if let Some(keys) = self.keys.as_mut() {
            let mut seal = seal_with(
                &mut keys.sealer,
                &mut self.stats,
                &mut self.key_update_requested,
                self.session.key_update_after,
            );
            if let Err(e) = seal(&mut self.tx) {
                self.error.get_or_insert(ConnectionError::Record(e));
            }
        }
        if let Err(e) = self.flush_key_update() {
            self.error.get_or_insert(ConnectionError::Record(e));
        }
    }

    /// A key update still owed after sealing (nothing else was sent) goes
    /// out at once in a record of its own, so a requested update is
    /// answered without waiting for other traffic (PROTOCOL.md §7.11).
    fn flush_key_update(&mut self) -> Result<(), CryptoError> {
        let Some(request_peer) = self.key_update_requested else {
            return Ok(());
        };
        let Some(keys) = self.keys.as_mut() else {
            return Ok(());
        };
        if self.error.is_some() || self.tx.has_open_record() {
            return Ok(());
        }
        let mut no_seal = |_: &mut TxBuffer<M::Bytes<TX>>| Ok(());
        let frame = Frame::KeyUpdate { request_peer };
        if !self
            .tx
            .push_frame(&frame, keys.peer_max_record, 0, &mut no_seal)?
        {
            return Ok(());
        }
        if self.tx.seal(&mut keys.sealer)? {
            self.stats.records_sent += 1;
        }
        keys.sealer.update();
        self.key_update_requested = None;
        self.stats.key_updates_sent += 1;
        Ok(())
    }

    fn flush_control(&mut self) -> Result<(), CryptoError> {
        if self.error.is_none() {
            if let Some(opaque) = self.pending_pong {
                if !self.push_control(&Frame::Pong { opaque })? {
                    return Ok(());
                }
                self.pending_pong = None;
            }
            self.drop_stale_rtt_sample();
            if self.pending_ping {
                self.ping_counter += 1;
                if !self.push_control(&Frame::Ping {
                    opaque: self.ping_counter,
                })? {
                    return Ok(());
                }
                self.pending_ping = false;
                if let RttSample::Queued(start) = self.rtt_sample {
                    self.rtt_sample = RttSample::InFlight {
                        opaque: self.ping_counter,
                        start,
                    };
                }
            }
            if let Some(code) = self.pending_goaway {
                if !self.push_control(&Frame::GoAway { code })? {
                    return Ok(());
                }
                self.pending_goaway = None;
            }
            while let Some(id) = self.dirty.front().copied() {
                let Some(idx) = self.find(id) else {
                    self.dirty.pop_front();
                    continue;
                };
                if !self.flush_stream(idx)? {
                    return Ok(());
                }
                self.dirty.pop_front();
                self.gc(idx);
            }
        }
        if let Some(code) = self.pending_close {
            // The PONG owed for a PING that was authenticated before the
            // failure still goes out, ahead of the CLOSE (best effort).
            if let Some(opaque) = self.pending_pong.take() {
                self.push_control(&Frame::Pong { opaque })?;
            }
            // CLOSE must be the last frame of its record: seal what is open
            // (it may end with a KEY_UPDATE), then put CLOSE in a record of
            // its own that is sealed without one.
            let Some(keys) = self.keys.as_mut() else {
                return Ok(());
            };
            let max_plain = keys.peer_max_record;
            {
                let mut seal = seal_with(
                    &mut keys.sealer,
                    &mut self.stats,
                    &mut self.key_update_requested,
                    self.session.key_update_after,
                );
                seal(&mut self.tx)?;
            }
            let mut no_seal = |_: &mut TxBuffer<M::Bytes<TX>>| Ok(());
            if !self
                .tx
                .push_frame(&Frame::Close { code }, max_plain, 0, &mut no_seal)?
            {
                return Ok(());
            }
            if self.tx.seal(&mut keys.sealer)? {
                self.stats.records_sent += 1;
            }
            self.pending_close = None;
        }
        Ok(())
    }
}

/// The sealing step shared by every append: adds KEY_UPDATE as the last
/// frame when the key is due (or an update was requested), seals, and
/// switches the key after the record.
fn seal_with<'a, B: ByteStore>(
    sealer: &'a mut RecordSealer,
    stats: &'a mut Stats,
    requested: &'a mut Option<bool>,
    update_after: u64,
) -> impl FnMut(&mut TxBuffer<B>) -> Result<(), CryptoError> + 'a {
    move |tx: &mut TxBuffer<B>| {
        if !tx.has_open_record() {
            return Ok(());
        }
        let due = requested.is_some() || sealer.sequence().saturating_add(1) >= update_after;
        let request_peer = requested.unwrap_or(false);
        let mut updating = false;
        if due && tx.push_final_frame(&Frame::KeyUpdate { request_peer }) {
            updating = true;
        }
        if tx.seal(sealer)? {
            stats.records_sent += 1;
        }
        if updating {
            sealer.update();
            *requested = None;
            stats.key_updates_sent += 1;
        }
        Ok(())
    }
}
