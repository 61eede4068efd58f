//! The tunnel server. One listening socket is shared by a group of `mio`
//! event loops ([`event_loop`]), one per thread; each loop routes
//! readiness to the [`session::Session`]s it accepted, and each session
//! owns its tunnel socket, core connection, upstreams ([`upstream`]) and
//! budget share. What is shared between loops — options, the allowlist,
//! and the server-wide budgets ([`budget`]) — lives in [`Shared`].
//! Connections that have not finished the handshake are budgeted apart
//! ([`admission`]).
//!
//! The resource model (every budget, its default, what happens when it is
//! spent) is in `docs/ARCHITECTURE.md`.

pub mod admission;
pub mod budget;
mod event_loop;
pub mod listener;
pub mod proxy_header;
pub mod reload;
pub mod session;
pub mod upstream;

pub use reload::{LiveConfig, ReloadFn};

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hytun_core::ServerConfig;
use hytun_core::handshake::ServerHelloJob;
use log::{info, warn};

use crate::allow::AllowList;
use crate::keywork::KeyWork;
use crate::metrics::{Exporter, ExporterError, Format, ServerGauges, ServerMetrics};
use crate::ratelimit::HandshakeRateLimiter;
use crate::resolver::{ResolverConfig, ResolverPool};
use crate::runtime::StopHandle;
use admission::TrustedProxies;
use budget::{LogLimiter, Pool, RateCap};
pub use event_loop::EventLoop;
pub use upstream::error_code;

/// How long an upstream connect may take.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful shutdown waits for streams to finish, by default.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Every budget a peer can make the server spend, with its default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most established sessions (`--max-sessions`, 256).
    pub max_sessions: usize,
    /// Most connections still in the handshake (`--max-pending`, 128),
    /// split evenly over the event loops.
    pub max_pending: usize,
    /// Most pending handshakes from one source address (IPv6: /64) per
    /// event loop (`--max-pending-per-source`, 8).
    pub max_pending_per_source: usize,
    /// Time from accept to a complete first message (`--hello-timeout`,
    /// 5 s); the core's handshake timeout then applies to the rest.
    pub hello_timeout: Duration,
    /// Handshakes per second per source (`--handshake-rate`, 20).
    pub handshakes_per_source_per_sec: NonZeroU32,
    /// Private-key operations per second, server-wide (`--key-ops-rate`,
    /// 500).
    pub key_ops_per_sec: NonZeroU32,
    /// Bytes of receive credit and session state, server-wide
    /// (`--memory-budget`, 256 MiB).
    pub memory_budget: usize,
    /// Bytes one session may hold (`--session-memory`, 64 MiB).
    pub session_memory: usize,
    /// Descriptors the server may use; `None` = the (raised) soft
    /// `RLIMIT_NOFILE` (`--max-descriptors`).
    pub max_descriptors: Option<usize>,
    /// Private-key operations run on this many worker threads, off the
    /// event loops (`--key-workers`, one per CPU, at most 8).
    pub key_workers: usize,
    /// Private-key operations waiting for a worker, server-wide
    /// (`--key-queue`, 64); past that a handshake gets Busy.
    pub key_queue: usize,
    /// How long a graceful stop waits for open streams
    /// (`--drain-timeout`, 5 s; a second SIGINT/SIGTERM cuts it short).
    pub drain: Duration,
    /// Name lookups: workers (`--dns-workers`, 4), in flight server-wide
    /// (`--dns-queue`, 256) and per session (`--dns-per-session`, 8), and
    /// the deadline (`--dns-timeout`, 5 s).
    pub dns: ResolverConfig,
    /// Remote listeners (`-R`) one session may hold at once (16, the
    /// protocol's per-session LISTEN limit, and never more).
    pub max_listeners: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 256,
            max_pending: 128,
            max_pending_per_source: 8,
            hello_timeout: Duration::from_secs(5),
            handshakes_per_source_per_sec: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
            key_ops_per_sec: NonZeroU32::new(500).unwrap_or(NonZeroU32::MIN),
            memory_budget: 256 << 20,
            session_memory: 64 << 20,
            max_descriptors: None,
            key_workers: std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
            key_queue: 64,
            drain: SHUTDOWN_GRACE,
            dns: ResolverConfig::default(),
            max_listeners: listener::MAX_LISTENERS_PER_SESSION,
        }
    }
}

/// Everything the server needs besides the core configuration.
#[derive(Clone)]
pub struct ServerOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The core configuration (keys, authorized clients, session limits).
    pub core: Arc<ServerConfig>,
    /// Destination allowlist.
    pub allow: AllowList,
    /// The budgets.
    pub limits: Limits,
    /// Where to serve Prometheus metrics (`--metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Where clients may ask the server to listen (`-R`).
    pub listen_policy: listener::ListenPolicy,
    /// Peers that must send a PROXY protocol header
    /// (`--proxy-protocol-from`); nobody else may.
    pub proxy_from: TrustedProxies,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// Binding the listen address failed.
    Bind(SocketAddr, io::Error),
    /// Setting up the event loop failed.
    Io(io::Error),
    /// The metrics endpoint could not start.
    Metrics(ExporterError),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Bind(addr, e) if e.kind() == io::ErrorKind::AddrInUse => {
                write!(
                    f,
                    "cannot listen on {addr}: address already in use (is another hytun server running?)"
                )
            }
            ServerError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServerError::Io(e) => write!(f, "event loop setup failed: {e}"),
            ServerError::Metrics(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ServerError {}

/// What every event loop of one server shares: one generation of the
/// reloadable configuration, over the [`Common`] state (pools, budgets,
/// counters) that every generation shares. Fields of [`Common`] are reached
/// through `Deref`.
pub struct Shared {
    /// The core configuration (server key, authorized client keys, session
    /// parameters for new sessions).
    pub core: Arc<ServerConfig>,
    /// The destination allowlist.
    pub allow: AllowList,
    /// The limits.
    pub limits: Limits,
    /// Peers that must send a PROXY protocol header.
    pub proxy_from: TrustedProxies,
    /// Where clients may ask the server to listen (`-R`).
    pub listen_policy: listener::ListenPolicy,
    /// The address the server was asked to listen on.
    pub listen: SocketAddr,
    /// Where the metrics endpoint was asked to listen (fixed at start).
    pub metrics_listen: Option<SocketAddr>,
    /// 0 for the configuration the server started with, +1 per reload.
    pub generation: u64,
    common: Arc<Common>,
}

impl Deref for Shared {
    type Target = Common;

    fn deref(&self) -> &Common {
        &self.common
    }
}

/// Server state that no reload replaces.
pub struct Common {
    /// Receive credit and session state, in bytes.
    pub memory: Arc<Pool>,
    /// Descriptors for upstream sockets (accepts have their own headroom).
    pub fds: Arc<Pool>,
    /// Private-key operations per second.
    pub key_ops: RateCap,
    /// The name-lookup pool every loop submits to.
    pub dns: ResolverPool,
    /// The private-key worker pool every loop submits to.
    pub keywork: KeyWork<ServerHelloJob>,
    /// Counters every loop adds to (see [`crate::metrics`]).
    pub metrics: Arc<ServerMetrics>,
    rate: Mutex<HandshakeRateLimiter>,
    established: AtomicUsize,
    refusals: Mutex<LogLimiter>,
    /// Set by a second stop signal: every loop ends its drain at once.
    drain_cut: AtomicBool,
    /// Every loop's stop handle: a signal stops them all.
    loop_stops: Mutex<Vec<StopHandle>>,
    /// Loops still running; the loop that handles signals returns last,
    /// so a second signal is heard during every loop's drain.
    loops_live: AtomicUsize,
}

impl Shared {
    fn new(opts: &ServerOptions) -> io::Result<Shared> {
        let limits = opts.limits.clone();
        let nofile = match limits.max_descriptors {
            Some(n) => n,
            None => match budget::raise_nofile_limit() {
                Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
                Err(e) => {
                    warn!("cannot read the descriptor limit: {e}; assuming 1024");
                    1024
                }
            },
        };
        // Headroom so accepts never fail: every session and pending
        // handshake may hold a descriptor, plus the listener, pollers,
        // wakers, resolver and standard streams.
        let reserve = limits.max_sessions + limits.max_pending + 64;
        let upstream_fds = nofile.saturating_sub(reserve).max(nofile / 4).max(1);
        if reserve > nofile * 3 / 4 {
            warn!(
                "descriptor limit {nofile} is small for --max-sessions {} and --max-pending {}: \
                 upstreams get {upstream_fds} descriptors",
                limits.max_sessions, limits.max_pending
            );
        }
        info!(
            "budgets: {} sessions, {} pending handshakes ({} per source), {} MiB memory \
             ({} MiB per session), {} upstream descriptors of {nofile}, {} key operations/s",
            limits.max_sessions,
            limits.max_pending,
            limits.max_pending_per_source,
            limits.memory_budget >> 20,
            limits.session_memory >> 20,
            upstream_fds,
            limits.key_ops_per_sec
        );
        let dns = ResolverPool::new(limits.dns)?;
        let keywork = KeyWork::new(limits.key_workers.max(1), limits.key_queue.max(1))?;
        let common = Arc::new(Common {
            dns,
            keywork,
            memory: Arc::new(Pool::new("memory", limits.memory_budget)),
            fds: Arc::new(Pool::new("descriptors", upstream_fds)),
            key_ops: RateCap::new(limits.key_ops_per_sec.get(), Instant::now()),
            rate: Mutex::new(HandshakeRateLimiter::new(
                limits.handshakes_per_source_per_sec,
            )),
            established: AtomicUsize::new(0),
            refusals: Mutex::new(LogLimiter::new(Duration::from_secs(1))),
            drain_cut: AtomicBool::new(false),
            loop_stops: Mutex::new(Vec::new()),
            loops_live: AtomicUsize::new(0),
            metrics: Arc::new(ServerMetrics::new()),
        });
        Ok(Shared {
            core: opts.core.clone(),
            allow: opts.allow.clone(),
            listen_policy: opts.listen_policy.clone(),
            proxy_from: opts.proxy_from.clone(),
            listen: opts.listen,
            metrics_listen: opts.metrics,
            generation: 0,
            limits,
            common,
        })
    }

    /// The options this generation was built from (what a [`ReloadFn`]
    /// compares the re-read configuration with).
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            listen: self.listen,
            metrics: self.metrics_listen,
            core: self.core.clone(),
            allow: self.allow.clone(),
            listen_policy: self.listen_policy.clone(),
            proxy_from: self.proxy_from.clone(),
            limits: self.limits.clone(),
        }
    }

    /// The next generation: `opts` over the same [`Common`] state.
    fn next(&self, opts: ServerOptions) -> Shared {
        Shared {
            core: opts.core,
            allow: opts.allow,
            listen_policy: opts.listen_policy,
            proxy_from: opts.proxy_from,
            limits: opts.limits,
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            generation: self.generation + 1,
            common: self.common.clone(),
        }
    }

    /// True if `key` is an authorized client key of this generation.
    pub fn authorizes(&self, key: &hytun_core::KeyId) -> bool {
        self.core.authorized.iter().any(|k| k.id() == *key)
    }
}

impl Common {
    /// Asks every loop of this server for a graceful stop.
    fn stop_all_loops(&self) {
        if let Ok(stops) = self.loop_stops.lock() {
            for s in stops.iter() {
                s.stop();
            }
        }
    }

    /// Established sessions, server-wide.
    pub fn established(&self) -> usize {
        self.established.load(Ordering::Relaxed)
    }

    fn session_established(&self) {
        self.established.fetch_add(1, Ordering::Relaxed);
    }

    fn session_ended(&self) {
        self.established.fetch_sub(1, Ordering::Relaxed);
    }

    /// The metrics exposition, with the gauges read now.
    pub fn render_metrics(&self, format: Format) -> String {
        let gauges = ServerGauges {
            sessions: self.established(),
            memory_used: self.memory.used(),
            memory_limit: self.memory.limit(),
            fds_used: self.fds.used(),
            fds_limit: self.fds.limit(),
        };
        self.metrics.encode(gauges, format)
    }

    /// The most upstream descriptors one session may hold: half the
    /// budget, so one session can never starve every other.
    pub fn fd_share_per_session(&self) -> usize {
        (self.fds.limit() / 2).max(1)
    }

    fn rate_allows(&self, ip: IpAddr) -> bool {
        self.rate
            .lock()
            .map(|mut r| r.allow(ip, Instant::now()))
            .unwrap_or(false)
    }

    /// Whether a refusal line may be logged now (at most one per second
    /// server-wide): `Some(n)` with the lines suppressed since the last.
    fn admit_log_line(&self) -> Option<u64> {
        self.refusals
            .lock()
            .ok()
            .and_then(|mut l| l.admit(Instant::now()))
    }

    /// Logs a refusal at info, at most one line per second server-wide
    /// (with a count of the lines suppressed in between).
    pub fn log_refusal(&self, peer: SocketAddr, why: &str) {
        let admitted = self.admit_log_line();
        match admitted {
            Some(0) => info!("{peer}: refused (busy): {why}"),
            Some(n) => info!("{peer}: refused (busy): {why} ({n} more refusals not logged)"),
            None => log::debug!("{peer}: refused (busy): {why}"),
        }
    }

    /// Logs a connection refused over its PROXY header at warn (it is a
    /// misconfiguration or an attempt to forge a client address),
    /// rate-limited like refusals.
    pub fn log_header_refusal(&self, peer: SocketAddr, why: &admission::HeaderRefusal) {
        let admitted = self.admit_log_line();
        match admitted {
            Some(0) => warn!("{peer}: refused: {why}"),
            Some(n) => warn!("{peer}: refused: {why} ({n} more refusals not logged)"),
            None => log::debug!("{peer}: refused: {why}"),
        }
    }

    /// Logs that a budget was spent (rate-limited like refusals).
    pub fn note_spent(&self, what: &str) {
        let admitted = self.admit_log_line();
        if admitted.is_some() {
            warn!("{what}: new streams are refused until it frees up");
        }
    }
}

/// A bound, not yet running server: one event loop per thread over one
/// listening socket.
pub struct Server {
    loops: Vec<EventLoop>,
    local_addr: SocketAddr,
    live: Arc<LiveConfig>,
    exporter: Option<Exporter>,
}

impl Server {
    /// Binds the listen address and prepares one event loop.
    pub fn bind(opts: ServerOptions) -> Result<Server, ServerError> {
        Self::bind_group(opts, 1)
    }

    /// Binds the listen address once (without `SO_REUSEPORT`, so a second
    /// server on the same address fails with "address already in use") and
    /// prepares `threads` event loops that all poll the same socket: a
    /// connection goes to whichever loop accepts it first, and stays there.
    pub fn bind_group(opts: ServerOptions, threads: usize) -> Result<Server, ServerError> {
        let threads = threads.max(1);
        let listener = bind_listener(opts.listen).map_err(|e| ServerError::Bind(opts.listen, e))?;
        let local_addr = listener.local_addr().map_err(ServerError::Io)?;
        let live = Arc::new(LiveConfig::new(
            Shared::new(&opts).map_err(ServerError::Io)?,
        ));
        let mut loops = Vec::with_capacity(threads);
        for _ in 0..threads {
            let l = listener.try_clone().map_err(ServerError::Io)?;
            loops.push(EventLoop::new(&live, l, threads).map_err(ServerError::Io)?);
        }
        let shared = live.current();
        if let Ok(mut stops) = shared.loop_stops.lock() {
            *stops = loops.iter().map(EventLoop::stop_handle).collect();
        }
        shared.loops_live.store(loops.len(), Ordering::SeqCst);
        let exporter = match opts.metrics {
            Some(addr) => {
                // Rendered from the generation in force at each scrape.
                let slot = live.clone();
                let render = Arc::new(move |f| slot.current().render_metrics(f));
                let e =
                    Exporter::start(addr, render, "hytun-metrics").map_err(ServerError::Metrics)?;
                Some(e)
            }
            None => None,
        };
        Ok(Server {
            loops,
            local_addr,
            live,
            exporter,
        })
    }

    /// Where the metrics endpoint listens, if it runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.exporter.as_ref().map(Exporter::local_addr)
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Lets the first loop handle `signals` (from [`stop_signals`], taken
    /// before binding so that a signal right after the socket listens stops
    /// the server gracefully instead of killing it).
    pub fn handle_signals(&mut self, signals: signal_hook_mio::v1_0::Signals) -> io::Result<()> {
        match self.loops.first_mut() {
            Some(l) => l.use_signals(signals),
            None => Ok(()),
        }
    }

    /// How SIGHUP re-reads the configuration (without it, SIGHUP is logged
    /// and ignored). The loop that handles the signals asks; the reading
    /// runs on a thread of its own ([`reload::Reloader`]).
    pub fn set_reload(&mut self, reload: ReloadFn) -> io::Result<()> {
        match self.loops.first_mut() {
            Some(l) => l.set_reload(reload),
            None => Ok(()),
        }
    }

    /// The configuration slot of this server's loops: publish a new
    /// generation from another thread (what SIGHUP does).
    pub fn live(&self) -> Arc<LiveConfig> {
        self.live.clone()
    }

    /// Handles that stop the loops from another thread.
    pub fn stop_handle(&self) -> GroupStop {
        GroupStop(self.loops.iter().map(EventLoop::stop_handle).collect())
    }

    /// Runs the loops: the first in this thread (handling SIGINT/SIGTERM
    /// when `handle_signals`), the others in their own threads; when the
    /// first stops, the others are stopped too.
    pub fn run(self, handle_signals: bool) -> io::Result<()> {
        if let Some(l) = self.loops.first() {
            l.log_start(self.local_addr, self.loops.len());
        }
        if let Some(addr) = self.metrics_addr() {
            info!("metrics on http://{addr}/metrics");
        }
        // The endpoint serves until the loops are done.
        let _exporter = self.exporter;
        let mut loops = self.loops.into_iter();
        let Some(first) = loops.next() else {
            return Ok(());
        };
        let mut others = Vec::new();
        for (i, l) in loops.enumerate() {
            let stop = l.stop_handle();
            let thread = std::thread::Builder::new()
                .name(format!("hytun-server-{}", i + 1))
                .spawn(move || l.run(false))?;
            others.push((stop, thread));
        }
        let result = first.run(handle_signals);
        for (stop, _) in &others {
            stop.stop();
        }
        for (_, thread) in others {
            match thread.join() {
                Ok(Err(e)) => warn!("a server thread failed: {e}"),
                Err(_) => warn!("a server thread panicked"),
                Ok(Ok(())) => {}
            }
        }
        info!("server stopped");
        result
    }
}

/// Takes over SIGINT, SIGTERM and SIGHUP now: from here on they are
/// delivered to the loop that [`Server::handle_signals`] gives them to,
/// SIGINT and SIGTERM as a graceful stop, SIGHUP as a reload
/// ([`Server::set_reload`]).
pub fn stop_signals() -> io::Result<signal_hook_mio::v1_0::Signals> {
    signal_hook_mio::v1_0::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
}

/// Stops every loop of a server.
#[derive(Clone)]
pub struct GroupStop(Vec<StopHandle>);

impl GroupStop {
    /// Requests a graceful stop of every loop.
    pub fn stop(&self) {
        for s in &self.0 {
            s.stop();
        }
    }
}

/// A non-blocking listener with `SO_REUSEADDR` (restart while old
/// connections linger in TIME_WAIT) but not `SO_REUSEPORT`, backlog 1024.
fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}
