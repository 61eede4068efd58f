//! Prometheus metrics of the server and the client: what they count, under
//! which names, and how a session's end or a handshake's failure is sorted
//! into a label. The exposition endpoint itself is [`exporter`].
//!
//! Cost on the hot path: every counter and gauge is one relaxed atomic
//! (`prometheus-client`'s types), and every labelled child is looked up
//! once, when the metrics are built, so the loops never take the label
//! families' locks. Bytes are counted per socket read or write call, not
//! per byte. Values that already live in an atomic elsewhere (established
//! sessions, the memory and descriptor pools) are read at scrape time.
//!
//! Every metric is listed in the README ("Metrics").

pub mod exporter;

use std::time::Duration;

use hytun_core::{AlertReason, CloseCode, ConnectionError, HandshakeError, StreamErrorCode};
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

pub use exporter::{Exporter, ExporterError, Format};

/// How a handshake ended, as the `outcome` label of
/// `hytun_{server,client}_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// The session is up.
    Ok,
    /// The server does not list the client's key.
    Unauthorized,
    /// The client named (pinned) a server key the server does not hold.
    UnknownServerKey,
    /// Refused with the Busy alert (session limit, key-operation rate or
    /// queue, memory budget, pending handshakes per source).
    Busy,
    /// Refused by the per-source handshake rate limit (the client sees
    /// Busy, so only the server counts this outcome).
    RateLimited,
    /// Anything else: malformed or timed-out handshake, the peer went away,
    /// a pending connection evicted for a newcomer.
    Failed,
}

impl HandshakeOutcome {
    /// Every outcome, in label order.
    pub const ALL: [HandshakeOutcome; 6] = [
        HandshakeOutcome::Ok,
        HandshakeOutcome::Unauthorized,
        HandshakeOutcome::UnknownServerKey,
        HandshakeOutcome::Busy,
        HandshakeOutcome::RateLimited,
        HandshakeOutcome::Failed,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeOutcome::Ok => "ok",
            HandshakeOutcome::Unauthorized => "unauthorized",
            HandshakeOutcome::UnknownServerKey => "unknown_server_key",
            HandshakeOutcome::Busy => "busy",
            HandshakeOutcome::RateLimited => "rate_limited",
            HandshakeOutcome::Failed => "failed",
        }
    }

    /// The outcome of a server-side connection that closed before its
    /// session was up, from the core's error (none: it never got a core or
    /// the peer went away first).
    pub fn of_server_failure(error: Option<&ConnectionError>) -> Self {
        match error {
            Some(ConnectionError::Handshake(HandshakeError::UnauthorizedClient(_))) => {
                HandshakeOutcome::Unauthorized
            }
            Some(ConnectionError::Handshake(HandshakeError::UnknownServerKey(_))) => {
                HandshakeOutcome::UnknownServerKey
            }
            _ => HandshakeOutcome::Failed,
        }
    }

    /// The outcome of a client handshake that failed with `error`.
    pub fn of_client_failure(error: &ConnectionError) -> Self {
        match error {
            ConnectionError::Handshake(HandshakeError::PeerAlert(AlertReason::Unauthorized, _)) => {
                HandshakeOutcome::Unauthorized
            }
            ConnectionError::Handshake(
                HandshakeError::PeerAlert(AlertReason::UnknownServerKey, _)
                | HandshakeError::UnknownServerKey(_)
                | HandshakeError::ServerAuthenticationFailed,
            ) => HandshakeOutcome::UnknownServerKey,
            ConnectionError::Handshake(HandshakeError::PeerAlert(AlertReason::Busy, _)) => {
                HandshakeOutcome::Busy
            }
            _ => HandshakeOutcome::Failed,
        }
    }
}

/// Why an established session ended, as the `reason` label of
/// `hytun_{server,client}_sessions_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer sent an authenticated CLOSE.
    PeerClosed,
    /// This side closed it while shutting down (SIGTERM, SIGINT).
    Shutdown,
    /// This side closed it for another reason (e.g. a retired session).
    LocallyClosed,
    /// No traffic within the idle timeout.
    IdleTimeout,
    /// The transport ended without an authenticated CLOSE.
    Truncated,
    /// Malformed input, a protocol violation or a record that failed
    /// authentication.
    ProtocolError,
    /// Anything else.
    Other,
    /// (Server) Ended by a reload that removed the client's key.
    Revoked,
}

impl SessionEnd {
    /// Every reason, in label order.
    pub const ALL: [SessionEnd; 8] = [
        SessionEnd::PeerClosed,
        SessionEnd::Shutdown,
        SessionEnd::LocallyClosed,
        SessionEnd::IdleTimeout,
        SessionEnd::Truncated,
        SessionEnd::ProtocolError,
        SessionEnd::Other,
        SessionEnd::Revoked,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            SessionEnd::PeerClosed => "peer_closed",
            SessionEnd::Shutdown => "shutdown",
            SessionEnd::Revoked => "revoked",
            SessionEnd::LocallyClosed => "locally_closed",
            SessionEnd::IdleTimeout => "idle_timeout",
            SessionEnd::Truncated => "truncated",
            SessionEnd::ProtocolError => "protocol_error",
            SessionEnd::Other => "other",
        }
    }

    /// Sorts the core's end of a session.
    pub fn of(error: Option<&ConnectionError>) -> Self {
        match error {
            Some(ConnectionError::PeerClosed(_)) => SessionEnd::PeerClosed,
            Some(ConnectionError::LocallyClosed(CloseCode::ShuttingDown)) => SessionEnd::Shutdown,
            Some(ConnectionError::LocallyClosed(CloseCode::KeyRevoked)) => SessionEnd::Revoked,
            Some(ConnectionError::LocallyClosed(_)) => SessionEnd::LocallyClosed,
            Some(ConnectionError::Timeout(_)) => SessionEnd::IdleTimeout,
            Some(ConnectionError::Truncated) => SessionEnd::Truncated,
            Some(
                ConnectionError::Malformed(_)
                | ConnectionError::Protocol(_)
                | ConnectionError::Record(_),
            ) => SessionEnd::ProtocolError,
            Some(ConnectionError::Handshake(_)) | None => SessionEnd::Other,
        }
    }
}

/// Every stream error code, in label order.
const CODES: [StreamErrorCode; 10] = [
    StreamErrorCode::NotAllowed,
    StreamErrorCode::ConnectionRefused,
    StreamErrorCode::HostUnreachable,
    StreamErrorCode::NetworkUnreachable,
    StreamErrorCode::TimedOut,
    StreamErrorCode::TooManyStreams,
    StreamErrorCode::Cancelled,
    StreamErrorCode::SessionClosing,
    StreamErrorCode::ResourceExhausted,
    StreamErrorCode::Other,
];

/// The `code` label of a refused stream.
pub fn code_label(code: StreamErrorCode) -> &'static str {
    match code {
        StreamErrorCode::NotAllowed => "not_allowed",
        StreamErrorCode::ConnectionRefused => "connection_refused",
        StreamErrorCode::HostUnreachable => "host_unreachable",
        StreamErrorCode::NetworkUnreachable => "network_unreachable",
        StreamErrorCode::TimedOut => "timed_out",
        StreamErrorCode::TooManyStreams => "too_many_streams",
        StreamErrorCode::Cancelled => "cancelled",
        StreamErrorCode::SessionClosing => "session_closing",
        StreamErrorCode::ResourceExhausted => "resource_exhausted",
        StreamErrorCode::Other => "other",
    }
}

fn code_index(code: StreamErrorCode) -> usize {
    CODES
        .iter()
        .position(|c| *c == code)
        .unwrap_or(CODES.len() - 1)
}

type Labels = [(&'static str, &'static str); 1];

/// A counter family whose children (one per label value, all known in
/// advance) are created up front and kept, so counting never touches the
/// family's lock and every value is exported from zero.
struct LabelledCounters {
    children: Vec<Counter>,
}

impl LabelledCounters {
    fn register(
        registry: &mut Registry,
        name: &str,
        help: &str,
        key: &'static str,
        values: impl IntoIterator<Item = &'static str>,
    ) -> Self {
        let family = Family::<Labels, Counter>::default();
        let children = values
            .into_iter()
            .map(|v| family.get_or_create(&[(key, v)]).clone())
            .collect();
        registry.register(name, help, family);
        LabelledCounters { children }
    }

    fn inc(&self, index: usize) {
        if let Some(c) = self.children.get(index) {
            c.inc();
        }
    }

    fn inc_by(&self, index: usize, n: u64) {
        if let Some(c) = self.children.get(index) {
            c.inc_by(n);
        }
    }

    #[cfg(test)]
    fn get(&self, index: usize) -> u64 {
        self.children.get(index).map_or(0, Counter::get)
    }
}

/// Handshake durations: from 1 ms (a resumed loopback handshake) to 10 s
/// (the default handshake timeout).
fn handshake_buckets() -> [f64; 13] {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

/// The parts both sides count the same way.
struct Common {
    sessions_established: Counter,
    sessions_ended: LabelledCounters,
    handshakes: LabelledCounters,
    handshake_seconds: Histogram,
    streams: Gauge,
    streams_opened: Counter,
    streams_refused: LabelledCounters,
    tunnel_bytes: LabelledCounters,
}

const RECEIVED: usize = 0;
const SENT: usize = 1;

impl Common {
    fn register(registry: &mut Registry, streams_help: &str, opened_help: &str) -> Common {
        let sessions_established = Counter::default();
        registry.register(
            "sessions_established",
            "Sessions whose handshake completed",
            sessions_established.clone(),
        );
        let sessions_ended = LabelledCounters::register(
            registry,
            "sessions_ended",
            "Established sessions that ended, by reason",
            "reason",
            SessionEnd::ALL.map(SessionEnd::label),
        );
        let handshakes = LabelledCounters::register(
            registry,
            "handshakes",
            "Handshakes, by outcome",
            "outcome",
            HandshakeOutcome::ALL.map(HandshakeOutcome::label),
        );
        let handshake_seconds = Histogram::new(handshake_buckets());
        registry.register_with_unit(
            "handshake_duration",
            "Time from the TCP connection to the session being up",
            Unit::Seconds,
            handshake_seconds.clone(),
        );
        let streams = Gauge::default();
        registry.register("streams", streams_help, streams.clone());
        let streams_opened = Counter::default();
        registry.register("streams_opened", opened_help, streams_opened.clone());
        let streams_refused = LabelledCounters::register(
            registry,
            "streams_refused",
            "Stream opens refused (OPEN_FAIL), by code",
            "code",
            CODES.map(code_label),
        );
        let tunnel_bytes = LabelledCounters::register(
            registry,
            "tunnel_bytes",
            "Bytes on the tunnel connection (records, encrypted), by direction",
            "direction",
            ["received", "sent"],
        );
        Common {
            sessions_established,
            sessions_ended,
            handshakes,
            handshake_seconds,
            streams,
            streams_opened,
            streams_refused,
            tunnel_bytes,
        }
    }

    fn handshake_ok(&self, took: Duration) {
        self.handshakes.inc(0);
        self.handshake_seconds.observe(took.as_secs_f64());
        self.sessions_established.inc();
    }

    fn handshake(&self, outcome: HandshakeOutcome) {
        let i = HandshakeOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.handshakes.inc(i);
    }

    fn session_ended(&self, end: SessionEnd) {
        let i = SessionEnd::ALL.iter().position(|e| *e == end).unwrap_or(0);
        self.sessions_ended.inc(i);
    }
}

/// Registers `hytun_build_info{version}`.
fn register_build_info(registry: &mut Registry) {
    registry.register(
        "build",
        "The hytun version running (value is always 1)",
        Info::new([("version", env!("CARGO_PKG_VERSION"))]),
    );
}

/// Encodes `registry` in `format`.
fn encode(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would only drop
    // the rest of this scrape.
    let _ = match format {
        Format::OpenMetrics => text::encode(&mut out, registry),
        Format::PrometheusText => prometheus_text::encode(&mut out, registry),
    };
    out
}

/// The server's metrics (`hytun_server_*` and `hytun_build_info`).
pub struct ServerMetrics {
    registry: Registry,
    common: Common,
    sessions: Gauge,
    pending: Gauge,
    memory_used: Gauge,
    memory_limit: Gauge,
    fds_used: Gauge,
    fds_limit: Gauge,
}

/// What the server reads at scrape time from the atomics it keeps anyway.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerGauges {
    /// Established sessions now.
    pub sessions: usize,
    /// Bytes taken from the memory budget.
    pub memory_used: usize,
    /// The memory budget.
    pub memory_limit: usize,
    /// Upstream descriptors in use.
    pub fds_used: usize,
    /// The upstream descriptor budget.
    pub fds_limit: usize,
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register(name, help, g.clone());
    g
}

fn gauge_bytes(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    registry.register_with_unit(name, help, Unit::Bytes, g.clone());
    g
}

fn as_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMetrics {
    /// Every server metric, at zero.
    pub fn new() -> Self {
        let mut root = Registry::with_prefix("hytun");
        register_build_info(&mut root);
        let r = root.sub_registry_with_prefix("server");
        let common = Common::register(
            r,
            "Streams connected to their destination now",
            "Streams connected to their destination (OPENED sent)",
        );
        let sessions = gauge(r, "sessions", "Established sessions now");
        let pending = gauge(
            r,
            "pending_handshakes",
            "Connections accepted whose handshake is not finished",
        );
        let memory_used = gauge_bytes(
            r,
            "memory_budget_used",
            "Receive credit and session state taken from the memory budget",
        );
        let memory_limit = gauge_bytes(r, "memory_budget_limit", "The memory budget");
        let fds_used = gauge(
            r,
            "descriptor_budget_used",
            "Upstream socket descriptors taken from the descriptor budget",
        );
        let fds_limit = gauge(
            r,
            "descriptor_budget_limit",
            "The upstream descriptor budget",
        );
        ServerMetrics {
            registry: root,
            common,
            sessions,
            pending,
            memory_used,
            memory_limit,
            fds_used,
            fds_limit,
        }
    }

    /// A handshake completed after `took` (since the TCP accept).
    pub fn handshake_ok(&self, took: Duration) {
        self.common.handshake_ok(took);
    }

    /// A connection was refused or failed before its session was up.
    pub fn handshake(&self, outcome: HandshakeOutcome) {
        self.common.handshake(outcome);
    }

    /// A connection closed: an established session ends with a reason, any
    /// other counts as a failed handshake.
    pub fn connection_closed(&self, established: bool, error: Option<ConnectionError>) {
        if established {
            self.common.session_ended(SessionEnd::of(error.as_ref()));
        } else {
            self.handshake(HandshakeOutcome::of_server_failure(error.as_ref()));
        }
    }

    /// The event loop's pending table went from `before` to `now` entries;
    /// returns `now` (the loop keeps it for the next call).
    pub fn pending_moved(&self, before: usize, now: usize) -> usize {
        if now != before {
            self.pending.inc_by(as_i64(now) - as_i64(before));
        }
        now
    }

    /// A stream connected to its destination.
    pub fn stream_opened(&self) {
        self.common.streams_opened.inc();
        self.common.streams.inc();
    }

    /// A connected stream ended.
    pub fn stream_closed(&self) {
        self.common.streams.dec();
    }

    /// A stream open was refused with `code`.
    pub fn stream_refused(&self, code: StreamErrorCode) {
        self.common.streams_refused.inc(code_index(code));
    }

    /// `n` bytes were read from a tunnel socket.
    pub fn tunnel_received(&self, n: usize) {
        self.common.tunnel_bytes.inc_by(RECEIVED, n as u64);
    }

    /// `n` bytes were written to a tunnel socket.
    pub fn tunnel_sent(&self, n: usize) {
        if n > 0 {
            self.common.tunnel_bytes.inc_by(SENT, n as u64);
        }
    }

    /// The exposition, with the scrape-time gauges set from `now`.
    pub fn encode(&self, now: ServerGauges, format: Format) -> String {
        self.sessions.set(as_i64(now.sessions));
        self.memory_used.set(as_i64(now.memory_used));
        self.memory_limit.set(as_i64(now.memory_limit));
        self.fds_used.set(as_i64(now.fds_used));
        self.fds_limit.set(as_i64(now.fds_limit));
        encode(&self.registry, format)
    }
}

/// The client's metrics (`hytun_client_*` and `hytun_build_info`).
pub struct ClientMetrics {
    registry: Registry,
    common: Common,
    up: Gauge,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientMetrics {
    /// Every client metric, at zero.
    pub fn new() -> Self {
        let mut root = Registry::with_prefix("hytun");
        register_build_info(&mut root);
        let r = root.sub_registry_with_prefix("client");
        let common = Common::register(
            r,
            "Streams open or opening on the tunnel now",
            "Streams the server opened (OPENED received)",
        );
        let up = gauge(
            r,
            "tunnel_up",
            "1 while a session to the server is established, else 0",
        );
        ClientMetrics {
            registry: root,
            common,
            up,
        }
    }

    /// The session came up after `took` (since the TCP connect finished).
    pub fn handshake_ok(&self, took: Duration) {
        self.common.handshake_ok(took);
        self.up.set(1);
    }

    /// The session (or its handshake) ended with `error`.
    pub fn session_closed(&self, error: &ConnectionError) {
        if self.up.set(0) == 1 {
            self.common.session_ended(SessionEnd::of(Some(error)));
        } else {
            self.common
                .handshake(HandshakeOutcome::of_client_failure(error));
        }
    }

    /// The server opened a stream.
    pub fn stream_opened(&self) {
        self.common.streams_opened.inc();
    }

    /// The server refused a stream with `code`.
    pub fn stream_refused(&self, code: StreamErrorCode) {
        self.common.streams_refused.inc(code_index(code));
    }

    /// Streams open or opening now (set once per loop turn).
    pub fn set_streams(&self, n: usize) {
        self.common.streams.set(as_i64(n));
    }

    /// `n` bytes were read from the tunnel socket.
    pub fn tunnel_received(&self, n: usize) {
        self.common.tunnel_bytes.inc_by(RECEIVED, n as u64);
    }

    /// `n` bytes were written to the tunnel socket.
    pub fn tunnel_sent(&self, n: usize) {
        self.common.tunnel_bytes.inc_by(SENT, n as u64);
    }

    /// The exposition.
    pub fn encode(&self, format: Format) -> String {
        encode(&self.registry, format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hytun_core::{KeyId, TimeoutKind};

    fn key() -> KeyId {
        KeyId([7; 32])
    }

    #[test]
    fn handshake_failures_are_sorted_by_side() {
        let unauthorized = ConnectionError::Handshake(HandshakeError::UnauthorizedClient(key()));
        assert_eq!(
            HandshakeOutcome::of_server_failure(Some(&unauthorized)),
            HandshakeOutcome::Unauthorized
        );
        let unknown = ConnectionError::Handshake(HandshakeError::UnknownServerKey(key()));
        assert_eq!(
            HandshakeOutcome::of_server_failure(Some(&unknown)),
            HandshakeOutcome::UnknownServerKey
        );
        assert_eq!(
            HandshakeOutcome::of_server_failure(None),
            HandshakeOutcome::Failed
        );
        let busy = ConnectionError::Handshake(HandshakeError::PeerAlert(AlertReason::Busy, None));
        assert_eq!(
            HandshakeOutcome::of_client_failure(&busy),
            HandshakeOutcome::Busy
        );
        let denied =
            ConnectionError::Handshake(HandshakeError::PeerAlert(AlertReason::Unauthorized, None));
        assert_eq!(
            HandshakeOutcome::of_client_failure(&denied),
            HandshakeOutcome::Unauthorized
        );
        assert_eq!(
            HandshakeOutcome::of_client_failure(&ConnectionError::Handshake(
                HandshakeError::ServerAuthenticationFailed
            )),
            HandshakeOutcome::UnknownServerKey
        );
        assert_eq!(
            HandshakeOutcome::of_client_failure(&ConnectionError::Truncated),
            HandshakeOutcome::Failed
        );
    }

    #[test]
    fn session_ends_are_sorted() {
        let cases = [
            (
                ConnectionError::PeerClosed(CloseCode::Normal),
                SessionEnd::PeerClosed,
            ),
            (
                ConnectionError::LocallyClosed(CloseCode::ShuttingDown),
                SessionEnd::Shutdown,
            ),
            (
                ConnectionError::LocallyClosed(CloseCode::KeyRevoked),
                SessionEnd::Revoked,
            ),
            (
                ConnectionError::LocallyClosed(CloseCode::Normal),
                SessionEnd::LocallyClosed,
            ),
            (
                ConnectionError::Timeout(TimeoutKind::Idle),
                SessionEnd::IdleTimeout,
            ),
            (ConnectionError::Truncated, SessionEnd::Truncated),
        ];
        for (error, end) in cases {
            assert_eq!(SessionEnd::of(Some(&error)), end, "{error}");
        }
        assert_eq!(SessionEnd::of(None), SessionEnd::Other);
    }

    #[test]
    fn every_label_is_exported_from_zero() {
        let m = ServerMetrics::new();
        let text = m.encode(ServerGauges::default(), Format::PrometheusText);
        for o in HandshakeOutcome::ALL {
            let line = format!(
                "hytun_server_handshakes_total{{outcome=\"{}\"}} 0",
                o.label()
            );
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        for c in CODES {
            let line = format!(
                "hytun_server_streams_refused_total{{code=\"{}\"}} 0",
                code_label(c)
            );
            assert!(text.contains(&line), "missing {line}");
        }
        assert!(text.contains("hytun_build_info{version=\""));
        assert!(!text.contains("# EOF"), "0.0.4 text has no EOF marker");
        let om = m.encode(ServerGauges::default(), Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn counters_and_gauges_move() {
        let m = ServerMetrics::new();
        m.handshake_ok(Duration::from_millis(3));
        m.handshake(HandshakeOutcome::RateLimited);
        m.connection_closed(true, Some(ConnectionError::PeerClosed(CloseCode::Normal)));
        m.connection_closed(false, None);
        m.stream_opened();
        m.stream_refused(StreamErrorCode::NotAllowed);
        m.tunnel_received(100);
        m.tunnel_sent(40);
        let pending = m.pending_moved(0, 3);
        m.pending_moved(pending, 1);
        assert_eq!(m.common.handshakes.get(0), 1);
        assert_eq!(m.common.handshakes.get(4), 1);
        assert_eq!(m.common.handshakes.get(5), 1);
        assert_eq!(m.common.sessions_ended.get(0), 1);
        assert_eq!(m.common.streams_refused.get(0), 1);
        assert_eq!(m.common.tunnel_bytes.get(RECEIVED), 100);
        assert_eq!(m.common.tunnel_bytes.get(SENT), 40);
        assert_eq!(m.pending.get(), 1);
        assert_eq!(m.common.streams.get(), 1);
        m.stream_closed();
        assert_eq!(m.common.streams.get(), 0);
        let text = m.encode(
            ServerGauges {
                sessions: 2,
                memory_used: 4096,
                memory_limit: 1 << 20,
                fds_used: 1,
                fds_limit: 10,
            },
            Format::PrometheusText,
        );
        assert!(text.contains("hytun_server_sessions 2\n"), "{text}");
        assert!(text.contains("hytun_server_memory_budget_used_bytes 4096\n"));
        assert!(text.contains("hytun_server_handshake_duration_seconds_count 1\n"));
    }

    #[test]
    fn the_client_sorts_by_whether_the_session_was_up() {
        let m = ClientMetrics::new();
        let busy = ConnectionError::Handshake(HandshakeError::PeerAlert(AlertReason::Busy, None));
        m.session_closed(&busy);
        assert_eq!(m.common.handshakes.get(3), 1);
        m.handshake_ok(Duration::from_millis(2));
        assert_eq!(m.up.get(), 1);
        m.session_closed(&ConnectionError::Truncated);
        assert_eq!(m.up.get(), 0);
        assert_eq!(m.common.sessions_ended.get(4), 1);
        assert_eq!(m.common.handshakes.get(0), 1);
    }
}
