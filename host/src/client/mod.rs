//! The tunnel client: a single-threaded `mio` loop that accepts local
//! connections (`-L` forwards, SOCKS5, HTTP proxy), keeps one tunnel
//! session to the server, and carries every local connection as a stream
//! of that session.
//!
//! The session is (re)established on demand: at start, and after it dies,
//! with exponential backoff and jitter. Local connections that arrive while
//! the tunnel is down wait (up to [`PENDING_LOCAL_TIMEOUT`]).
//!
//! Ends are mapped faithfully: only the server's authenticated FIN becomes
//! `shutdown(Write)` on the local socket. A RESET, a lost or truncated
//! session, a CLOSE while streams are open, an idle timeout, or a refusal
//! of a `-L` stream end the local socket abortively (RST), so the
//! application reads `ECONNRESET` rather than a clean EOF; the log says
//! "aborted (reason)" with the byte counts. A SOCKS5 or HTTP-proxy
//! connection whose reply is still pending gets the matching failure reply
//! instead. Busy and rate-limit refusals (including a silent close before
//! the ServerHello) are retried with backoff; only key errors can end the
//! client at first contact. After the server's GOAWAY, new local
//! connections wait and the session is closed as soon as its last stream
//! ends, so they get a new session then.
//!
//! Folders by role: this module is the endpoint — the poll, its tokens, the
//! local listeners, and the routing of readiness, timers and service passes.
//! `tunnel.rs` owns the session (socket, core connection, reconnect backoff,
//! private-key work, the stream map, GOAWAY drain); `local.rs` owns one local
//! connection (its pipe, proxy negotiation, phase, deadline and how it
//! ends); `locals.rs` is the table of them, which carries out what needs a
//! connection and the session together and receives the session's stream
//! events; `reverse.rs` is `-R` (the session's listeners, the target
//! connections, and the lookups of target names, which run on a small
//! resolver pool of the client's own, off the loop, and come back through
//! the loop's waker like the private-key results). Each call gets the
//! pieces it needs, lent explicitly.

mod local;
mod locals;
mod reverse;
mod tunnel;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant as StdInstant};

use hytun_core::{ClientConfig, ConnectionError};
use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use self::local::Local;
use self::locals::Locals;
use self::reverse::TargetResolver;
use self::tunnel::{ServerLookup, TUNNEL, TunnelOptions, TunnelSession};
use crate::allow::DestHost;
use crate::config::Endpoint;
use crate::keywork::KeyWork;
use crate::metrics::{ClientMetrics, Exporter, ExporterError};
use crate::pipe::Readiness;
use crate::resolver::{LookupFn, SystemLookup};
use crate::runtime::StopHandle;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_DYNAMIC: usize = 16;
/// How long a local connection may wait for the tunnel to come up.
pub const PENDING_LOCAL_TIMEOUT: Duration = Duration::from_secs(15);

/// What a local listener does with its connections.
#[derive(Debug, Clone)]
pub enum ListenerKind {
    /// `-L`: every connection goes to this fixed destination.
    Forward {
        /// Destination host.
        host: DestHost,
        /// Destination port.
        port: u16,
    },
    /// `-D`: SOCKS5 CONNECT.
    Socks,
    /// `--http-proxy`: HTTP CONNECT and absolute-form requests.
    HttpProxy,
}

/// Everything the client needs besides the core configuration.
pub struct ClientOptions {
    /// The server's address.
    pub server: Endpoint,
    /// The core configuration (keys, pinned server key, session limits).
    pub core: Arc<ClientConfig>,
    /// Local listeners.
    pub listeners: Vec<(SocketAddr, ListenerKind)>,
    /// Where to serve Prometheus metrics (`--metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Reverse forwards (`-R`): the server listens, we connect the target.
    pub reverse: Vec<crate::config::ReverseSpec>,
    /// Exit instead of retrying when the very first handshake is refused
    /// for a key reason (pinned key mismatch, unauthorized client).
    pub fail_fast_on_auth: bool,
    /// Exit instead of retrying when the very first connection attempt
    /// fails for any reason (used by `fetch`: a one-shot command should
    /// report "server unreachable" at once, not wait).
    pub fail_fast_on_first_attempt: bool,
}

/// Why the client could not start or had to stop.
#[derive(Debug)]
pub enum ClientError {
    /// Binding a local listener failed.
    Bind(SocketAddr, io::Error),
    /// Setting up the event loop failed.
    Io(io::Error),
    /// The server refused our key or does not hold the pinned key.
    Authentication(String),
    /// The server could not be reached (fail-fast mode only).
    Unreachable(String),
    /// The metrics endpoint could not start.
    Metrics(ExporterError),
    /// The server refused a reverse forward at first contact.
    ReverseRefused(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Bind(addr, e) if e.kind() == io::ErrorKind::AddrInUse => {
                write!(f, "cannot listen on {addr}: address already in use")
            }
            ClientError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ClientError::Io(e) => write!(f, "event loop setup failed: {e}"),
            ClientError::Authentication(msg)
            | ClientError::Unreachable(msg)
            | ClientError::ReverseRefused(msg) => f.write_str(msg),
            ClientError::Metrics(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ClientError {}

/// A bound, not yet running client: the endpoint. It owns the poll, the
/// local listeners and the stop handle, and routes: readiness of the
/// tunnel socket and key-work wake-ups to the tunnel session, readiness of
/// local sockets to the table of local connections, and timers and service
/// passes to both.
pub struct Client {
    poll: Poll,
    listeners: HashMap<Token, (TcpListener, ListenerKind)>,
    /// What each listener does, in the order of the options' listeners.
    kinds: Vec<ListenerKind>,
    bound: Vec<SocketAddr>,
    locals: Locals,
    tunnel: TunnelSession,
    stop: StopHandle,
    metrics: Arc<ClientMetrics>,
    exporter: Option<Exporter>,
    /// Wakes the loop: key-work and name-lookup results, stop requests.
    waker: Arc<Waker>,
}

impl Client {
    /// Binds the local listeners and prepares the loop.
    pub fn bind(opts: ClientOptions) -> Result<Client, ClientError> {
        let ClientOptions {
            server,
            core,
            listeners: wanted,
            metrics: metrics_addr,
            reverse,
            fail_fast_on_auth,
            fail_fast_on_first_attempt,
        } = opts;
        let poll = Poll::new().map_err(ClientError::Io)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ClientError::Io)?);
        let stop = StopHandle::new(Arc::new(AtomicBool::new(false)), waker.clone());
        let key_pool = KeyWork::new(1, 2).map_err(ClientError::Io)?;
        let key_jobs = key_pool.handle(waker.clone());
        let mut locals = Locals::new(FIRST_DYNAMIC);
        if reverse
            .iter()
            .any(|spec| matches!(spec.host, DestHost::Domain(_)))
        {
            locals.targets =
                Some(TargetResolver::new(waker.clone(), SystemLookup).map_err(ClientError::Io)?);
        }
        let mut listeners = HashMap::new();
        let mut bound = Vec::new();
        let mut kinds = Vec::new();
        for (addr, kind) in wanted {
            let mut l = TcpListener::bind(addr).map_err(|e| ClientError::Bind(addr, e))?;
            let token = locals.next_token();
            poll.registry()
                .register(&mut l, token, Interest::READABLE)
                .map_err(ClientError::Io)?;
            bound.push(l.local_addr().map_err(ClientError::Io)?);
            listeners.insert(token, (l, kind.clone()));
            kinds.push(kind);
        }
        let metrics = Arc::new(ClientMetrics::new());
        let exporter = match metrics_addr {
            Some(addr) => {
                let m = metrics.clone();
                let render = Arc::new(move |f| m.encode(f));
                let e =
                    Exporter::start(addr, render, "hytun-metrics").map_err(ClientError::Metrics)?;
                Some(e)
            }
            None => None,
        };
        let mut tunnel = TunnelSession::new(
            TunnelOptions {
                server,
                core,
                reverse,
                fail_fast_on_auth,
                fail_fast_on_first_attempt,
            },
            key_pool,
            key_jobs,
            metrics.clone(),
        );
        if tunnel.server_is_a_name() {
            tunnel.set_server_lookup(
                ServerLookup::new(waker.clone(), SystemLookup).map_err(ClientError::Io)?,
            );
        }
        Ok(Client {
            poll,
            listeners,
            kinds,
            bound,
            locals,
            tunnel,
            stop,
            metrics,
            exporter,
            waker,
        })
    }

    /// Looks up `-R` target names with `lookup` instead of the system
    /// resolver (tests inject slow or fixed answers this way); replaces the
    /// resolver pool, or starts one if no target is a name. Call it before
    /// [`run`](Self::run).
    ///
    /// # Errors
    /// The pool's worker threads could not be started.
    pub fn resolve_targets_with(&mut self, lookup: impl LookupFn) -> Result<(), ClientError> {
        self.locals.targets =
            Some(TargetResolver::new(self.waker.clone(), lookup).map_err(ClientError::Io)?);
        Ok(())
    }

    /// Looks up the server's name with `lookup` instead of the system
    /// resolver (tests inject slow or fixed answers this way). Call it
    /// before [`run`](Self::run).
    ///
    /// # Errors
    /// The pool's worker thread could not be started.
    pub fn resolve_server_with(&mut self, lookup: impl LookupFn) -> Result<(), ClientError> {
        self.tunnel.set_server_lookup(
            ServerLookup::new(self.waker.clone(), lookup).map_err(ClientError::Io)?,
        );
        Ok(())
    }

    /// Where the metrics endpoint listens, if it runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.exporter.as_ref().map(Exporter::local_addr)
    }

    /// The bound local addresses, in the order of the options' listeners.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.bound
    }

    /// A handle that stops the loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Runs until stopped (handle or SIGINT/SIGTERM when `handle_signals`),
    /// or until a fatal authentication error.
    pub fn run(mut self, handle_signals: bool) -> Result<(), ClientError> {
        let mut signals = if handle_signals {
            let mut s = signal_hook_mio::v1_0::Signals::new([
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
            ])
            .map_err(ClientError::Io)?;
            self.poll
                .registry()
                .register(&mut s, SIGNALS, Interest::READABLE)
                .map_err(ClientError::Io)?;
            Some(s)
        } else {
            None
        };
        for (addr, kind) in self.bound.iter().zip(self.kinds.iter()) {
            let what = match kind {
                ListenerKind::Forward { host, port } => {
                    format!("forward to {}", host.with_port(*port))
                }
                ListenerKind::Socks => "SOCKS5 proxy".into(),
                ListenerKind::HttpProxy => "HTTP proxy".into(),
            };
            info!("listening on {addr}: {what}");
        }
        if let Some(addr) = self.metrics_addr() {
            info!("metrics on http://{addr}/metrics");
        }
        let mut events = Events::with_capacity(1024);
        loop {
            if let Some(e) = self.tunnel.take_fatal() {
                return Err(e);
            }
            if self.stop.is_stopped() {
                self.shutdown();
                return Ok(());
            }
            let timeout = self.next_timeout();
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::Io(e)),
            }
            for event in events.iter() {
                let registry = self.poll.registry();
                let token = event.token();
                match token {
                    WAKER => {
                        self.tunnel.take_server_lookup(registry);
                        self.tunnel.take_key_results(registry, &mut self.locals);
                        self.locals.take_resolved(registry, &mut self.tunnel);
                    }
                    SIGNALS => {
                        if let Some(s) = signals.as_mut() {
                            for sig in s.pending() {
                                info!("signal {sig}: shutting down");
                            }
                        }
                        self.stop.stop();
                    }
                    TUNNEL => self.tunnel.on_ready(
                        registry,
                        &mut self.locals,
                        event.is_readable(),
                        event.is_read_closed() || event.is_error(),
                    ),
                    t if self.listeners.contains_key(&t) => self.accept_all(t),
                    t => self.locals.on_ready(
                        registry,
                        &mut self.tunnel,
                        t,
                        Readiness {
                            readable: event.is_readable(),
                            writable: event.is_writable() || event.is_write_closed(),
                            read_closed: event.is_read_closed() || event.is_error(),
                        },
                    ),
                }
            }
            self.run_timers();
            self.service();
            self.metrics.set_streams(self.tunnel.stream_count());
        }
    }

    /// Time until the next timer of the session or a local connection.
    fn next_timeout(&self) -> Option<Duration> {
        let now = StdInstant::now();
        match (self.tunnel.next_timeout(now), self.locals.next_timeout(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Accepts every pending connection of listener `lt`.
    fn accept_all(&mut self, lt: Token) {
        let registry = self.poll.registry();
        loop {
            let Some((listener, kind)) = self.listeners.get(&lt) else {
                return;
            };
            match listener.accept() {
                Ok((mut sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let t = self.locals.next_token();
                    if let Err(e) =
                        registry.register(&mut sock, t, Interest::READABLE | Interest::WRITABLE)
                    {
                        warn!("{peer}: cannot register: {e}");
                        continue;
                    }
                    let local = Local::accepted(sock, peer, kind.clone());
                    debug!("{peer}: local connection accepted");
                    self.locals.accept(registry, &mut self.tunnel, t, local);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("local accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn run_timers(&mut self) {
        let now = StdInstant::now();
        let registry = self.poll.registry();
        self.tunnel.on_timer(registry, &mut self.locals, now);
        self.locals.on_timer(registry, &mut self.tunnel, now);
    }

    /// Moves bytes until nothing is left to do (at most 64 rounds): the
    /// session's events, the local connections with work, streams for the
    /// waiting ones, the GOAWAY drain, and the tunnel write.
    fn service(&mut self) {
        let registry = self.poll.registry();
        for _ in 0..64 {
            self.tunnel.drain_events(registry, &mut self.locals);
            // Locals: flush to socket, read into tunnel.
            let touched = self.locals.take_touched();
            let blocked = self.locals.read_blocked();
            for t in touched.into_iter().chain(blocked) {
                self.locals.service(registry, &mut self.tunnel, t);
            }
            // Locals still waiting for a stream slot.
            self.locals.open_waiting(registry, &mut self.tunnel);
            self.tunnel.retire_if_drained(registry, &mut self.locals);
            let wrote = self.tunnel.write();
            if self.tunnel.is_closed() {
                self.tunnel.drain_events(registry, &mut self.locals);
            }
            let again = wrote > 0 && self.locals.any_read_blocked();
            if !again && !self.locals.has_touched() {
                return;
            }
        }
    }

    fn shutdown(&mut self) {
        crate::service::notify_stopping();
        // Streams still open are cut, not complete: reset their sockets.
        self.locals.shutdown(self.poll.registry(), &mut self.tunnel);
        self.tunnel.shutdown();
        info!("client stopped");
    }
}

/// "handshake with SERVER failed: WHY", without the core's own
/// "handshake failed:" prefix doubled into it.
pub fn describe_failure(server: &crate::config::Endpoint, error: &ConnectionError) -> String {
    match error {
        ConnectionError::Handshake(e) => format!("handshake with {server} failed: {e}"),
        e => format!("session with {server} failed: {e}"),
    }
}
