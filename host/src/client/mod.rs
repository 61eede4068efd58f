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

mod reverse;

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant as StdInstant};

use hytun_core::{
    AlertReason, ClientConfig, CloseCode, ConnectionError, Destination, Event, HandshakeError,
    Host, HostConnection, StreamErrorCode, StreamId,
};
use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::allow::DestHost;
use crate::backoff::Backoff;
use crate::config::Endpoint;
use crate::keywork::{KeyWork, KeyWorkHandle};
use crate::metrics::{ClientMetrics, Exporter, ExporterError};
use crate::pipe::{Pipe, ReadOutcome};
use crate::proxy::http::{HttpProxyParser, ProxyRequest, ProxyStatus};
use crate::proxy::socks5::{self, Socks5Handshake, Socks5Progress, Socks5Reply};
use crate::runtime::{Clock, StopHandle, os_rng, random_u64};

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const TUNNEL: Token = Token(2);
const FIRST_DYNAMIC: usize = 16;
const READ_CHUNK: usize = 256 * 1024;
/// How long a local connection may wait for the tunnel to come up.
pub const PENDING_LOCAL_TIMEOUT: Duration = Duration::from_secs(15);
const TUNNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

enum Phase {
    /// Reading the SOCKS / HTTP request.
    Negotiating,
    /// Request known; waiting for the tunnel to open a stream for it.
    WaitingTunnel {
        host: DestHost,
        port: u16,
        early: Vec<u8>,
    },
    /// OPEN sent; waiting for OPENED (SOCKS/CONNECT reply pending).
    Opening(StreamId),
    /// Relaying.
    Streaming(StreamId),
    /// (`-R`) The server opened the stream; connecting to the target.
    Connecting(StreamId),
    /// Closing after a final local reply was flushed.
    Closing,
}

/// How a local connection ends.
enum End {
    /// Both directions finished cleanly, or no stream was ever carried.
    Clean,
    /// Anything else: the local socket is reset (RST) and the stream, if
    /// still live, is reset too. The text says why, for the log.
    Abort(String),
}

/// A parsed proxy request: destination and the payload bytes after it.
type ProxyTarget = (DestHost, u16, Vec<u8>);

enum Proto {
    Forward,
    Socks(Socks5Handshake),
    Http {
        parser: HttpProxyParser,
        connect: bool,
    },
}

struct Local {
    peer: SocketAddr,
    pipe: Pipe,
    proto: Proto,
    phase: Phase,
    deadline: Option<StdInstant>,
}

impl Local {
    /// Sends a proxy's own answer (a SOCKS5 failure, an HTTP error) and
    /// closes cleanly once it is written: no stream carries this
    /// connection any more.
    fn answer_and_close(&mut self, reply: &[u8]) {
        self.pipe.queue_local(reply);
        self.pipe.tunnel_fin = true;
        self.pipe.sock_eof = true;
        self.phase = Phase::Closing;
        self.deadline = None;
    }
}

enum Tunnel {
    Down {
        retry_at: StdInstant,
    },
    Connecting {
        sock: TcpStream,
        addr: SocketAddr,
        deadline: StdInstant,
    },
    Up {
        sock: TcpStream,
        addr: SocketAddr,
        conn: Box<HostConnection>,
        started: StdInstant,
        write_failed: bool,
        /// The server sent GOAWAY: no new streams on this session.
        going_away: bool,
    },
}

/// A bound, not yet running client.
pub struct Client {
    poll: Poll,
    opts: ClientOptions,
    listeners: HashMap<Token, (TcpListener, ListenerKind)>,
    locals: HashMap<Token, Local>,
    streams: HashMap<StreamId, Token>,
    tunnel: Tunnel,
    established_once: bool,
    backoff: Backoff,
    clock: Clock,
    stop: StopHandle,
    next_token: usize,
    touched_locals: HashSet<Token>,
    scratch: Vec<u8>,
    fatal: Option<ClientError>,
    bound: Vec<SocketAddr>,
    /// The client's RSA decryption runs here, off the loop, so a
    /// reconnect never stalls traffic on the local listeners.
    _key_pool: KeyWork,
    key_jobs: KeyWorkHandle,
    /// Tags the latest private-key job; a result with another tag belongs
    /// to a connection that is gone.
    key_generation: u64,
    /// Tunnel input that arrived while the handshake waited for the
    /// private-key result (at most [`MAX_HELD`]).
    held: Vec<u8>,
    metrics: Arc<ClientMetrics>,
    exporter: Option<Exporter>,
    reverse: reverse::ReverseState,
}

/// Server bytes a client keeps while its private-key operation runs: the
/// rest of the server's first flight. More ends the connection.
const MAX_HELD: usize = 64 * 1024;

fn destination(host: &DestHost, port: u16) -> Destination<'_> {
    let host = match host {
        DestHost::Ip(IpAddr::V4(a)) => Host::Ipv4(a.octets()),
        DestHost::Ip(IpAddr::V6(a)) => Host::Ipv6(a.octets()),
        DestHost::Domain(d) => Host::Domain(d.trim_end_matches('.')),
    };
    Destination { host, port }
}

impl Client {
    /// Binds the local listeners and prepares the loop.
    pub fn bind(opts: ClientOptions) -> Result<Client, ClientError> {
        let poll = Poll::new().map_err(ClientError::Io)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ClientError::Io)?);
        let stop = StopHandle::new(Arc::new(AtomicBool::new(false)), waker.clone());
        let key_pool = KeyWork::new(1, 2).map_err(ClientError::Io)?;
        let key_jobs = key_pool.handle(waker);
        let mut listeners = HashMap::new();
        let mut bound = Vec::new();
        let mut next_token = FIRST_DYNAMIC;
        for (addr, kind) in &opts.listeners {
            let mut l = TcpListener::bind(*addr).map_err(|e| ClientError::Bind(*addr, e))?;
            next_token += 1;
            let token = Token(next_token);
            poll.registry()
                .register(&mut l, token, Interest::READABLE)
                .map_err(ClientError::Io)?;
            bound.push(l.local_addr().map_err(ClientError::Io)?);
            listeners.insert(token, (l, kind.clone()));
        }
        let metrics = Arc::new(ClientMetrics::new());
        let exporter = match opts.metrics {
            Some(addr) => {
                let m = metrics.clone();
                let render = Arc::new(move |f| m.encode(f));
                let e =
                    Exporter::start(addr, render, "hytun-metrics").map_err(ClientError::Metrics)?;
                Some(e)
            }
            None => None,
        };
        Ok(Client {
            poll,
            opts,
            listeners,
            locals: HashMap::new(),
            streams: HashMap::new(),
            tunnel: Tunnel::Down {
                retry_at: StdInstant::now(),
            },
            established_once: false,
            backoff: Backoff::new(),
            clock: Clock::default(),
            stop,
            next_token,
            touched_locals: HashSet::new(),
            scratch: vec![0; READ_CHUNK],
            fatal: None,
            bound,
            _key_pool: key_pool,
            key_jobs,
            key_generation: 0,
            held: Vec::new(),
            metrics,
            exporter,
            reverse: reverse::ReverseState::default(),
        })
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

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
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
        for (addr, (_, kind)) in self.bound.iter().zip(self.opts.listeners.iter()) {
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
            if let Some(e) = self.fatal.take() {
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
                let token = event.token();
                match token {
                    WAKER => self.take_key_results(),
                    SIGNALS => {
                        if let Some(s) = signals.as_mut() {
                            for sig in s.pending() {
                                info!("signal {sig}: shutting down");
                            }
                        }
                        self.stop.stop();
                    }
                    TUNNEL => self.tunnel_event(
                        event.is_readable(),
                        event.is_read_closed() || event.is_error(),
                    ),
                    t if self.listeners.contains_key(&t) => self.accept_all(t),
                    t => {
                        if (event.is_read_closed() || event.is_error())
                            && let Some(l) = self.locals.get_mut(&t)
                        {
                            l.pipe.note_event(true);
                        }
                        self.local_event(
                            t,
                            event.is_readable(),
                            event.is_writable() || event.is_write_closed(),
                        );
                    }
                }
            }
            self.run_timers();
            self.service();
            self.metrics.set_streams(self.streams.len());
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        let now = StdInstant::now();
        let mut next: Option<Duration> = None;
        let mut take = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));
        match &self.tunnel {
            Tunnel::Down { retry_at } if self.wants_tunnel() => {
                take(retry_at.saturating_duration_since(now))
            }
            Tunnel::Down { .. } => {}
            Tunnel::Connecting { deadline, .. } => take(deadline.saturating_duration_since(now)),
            Tunnel::Up { conn, .. } => {
                if let Some(t) = conn.poll_timeout() {
                    take(self.clock.until(t));
                }
            }
        }
        for l in self.locals.values() {
            if let Some(d) = l.deadline {
                take(d.saturating_duration_since(now));
            }
        }
        next
    }

    /// The tunnel is kept up while the client runs (so the first local
    /// connection pays no handshake), and re-established after failures.
    fn wants_tunnel(&self) -> bool {
        true
    }

    fn start_connect(&mut self) {
        let addrs: Vec<SocketAddr> = match (
            self.opts.server.host.to_string().as_str(),
            self.opts.server.port,
        )
            .to_socket_addrs()
        {
            Ok(a) => a.collect(),
            Err(e) => {
                let why = format!("cannot resolve server {}: {e}", self.opts.server);
                warn!("{why}");
                self.schedule_retry(why);
                return;
            }
        };
        let Some(addr) = addrs.first().copied() else {
            let why = format!("server {} resolved to no address", self.opts.server);
            warn!("{why}");
            self.schedule_retry(why);
            return;
        };
        match TcpStream::connect(addr) {
            Ok(mut sock) => {
                if let Err(e) = self.poll.registry().register(
                    &mut sock,
                    TUNNEL,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    let why = format!("cannot register tunnel socket: {e}");
                    warn!("{why}");
                    self.schedule_retry(why);
                    return;
                }
                debug!("connecting to server {addr}");
                self.tunnel = Tunnel::Connecting {
                    sock,
                    addr,
                    deadline: StdInstant::now() + TUNNEL_CONNECT_TIMEOUT,
                };
            }
            Err(e) => {
                let why = format!("cannot connect to server {addr}: {e}");
                warn!("{why}");
                self.schedule_retry(why);
            }
        }
    }

    /// Plans the next connection attempt after a failure (`why`, already
    /// logged); with `fail_fast_on_first_attempt` and no session yet, the
    /// failure is final instead.
    fn schedule_retry(&mut self, why: String) {
        if self.opts.fail_fast_on_first_attempt && !self.established_once && self.fatal.is_none() {
            self.fatal = Some(ClientError::Unreachable(format!(
                "cannot establish a tunnel to {}: {why}",
                self.opts.server
            )));
        }
        if self.fatal.is_some() {
            // The client is about to exit: no retry to announce.
            return;
        }
        let delay = self.backoff.next_delay(random_u64());
        info!(
            "reconnecting to {} in {} ms",
            self.opts.server,
            delay.as_millis()
        );
        self.tunnel = Tunnel::Down {
            retry_at: StdInstant::now() + delay,
        };
    }

    fn tunnel_event(&mut self, readable: bool, read_closed: bool) {
        if let Tunnel::Connecting { sock, addr, .. } = &mut self.tunnel {
            let failure = match sock.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => match sock.peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => Some(e),
                },
            };
            let addr = *addr;
            if let Some(e) = failure {
                let why = format!("server {addr} unreachable: {e}");
                warn!("{why}");
                if let Tunnel::Connecting { mut sock, .. } = std::mem::replace(
                    &mut self.tunnel,
                    Tunnel::Down {
                        retry_at: StdInstant::now(),
                    },
                ) {
                    let _ = self.poll.registry().deregister(&mut sock);
                }
                self.schedule_retry(why);
                return;
            }
            let _ = sock.set_nodelay(true);
            let mut conn = Box::new(HostConnection::client(
                self.opts.core.clone(),
                self.clock.now(),
                &mut os_rng(),
            ));
            conn.defer_private_key_ops(true);
            self.held.clear();
            if let Tunnel::Connecting { sock, .. } = std::mem::replace(
                &mut self.tunnel,
                Tunnel::Down {
                    retry_at: StdInstant::now(),
                },
            ) {
                self.tunnel = Tunnel::Up {
                    sock,
                    addr,
                    conn,
                    started: StdInstant::now(),
                    write_failed: false,
                    going_away: false,
                };
            }
        }
        if readable || read_closed {
            self.read_tunnel(read_closed);
        }
    }

    /// Reads and handles tunnel input. A short read ends the pass (the
    /// socket is drained and the next arrival raises a new event) unless
    /// the event said the server's FIN is already queued.
    fn read_tunnel(&mut self, read_closed: bool) {
        loop {
            let Tunnel::Up { sock, conn, .. } = &mut self.tunnel else {
                return;
            };
            if conn.is_closed() {
                return;
            }
            match sock.read(&mut self.scratch) {
                Ok(0) => {
                    conn.handle_eof();
                    self.drain_events();
                    return;
                }
                Ok(n) => {
                    self.metrics.tunnel_received(n);
                    let input = std::mem::take(&mut self.scratch);
                    self.feed_tunnel(&input[..n]);
                    self.scratch = input;
                    if n < self.scratch.len() && !read_closed {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("tunnel read error: {e}");
                    conn.handle_eof();
                    self.drain_events();
                    return;
                }
            }
        }
    }

    /// Feeds tunnel input to the core. When the handshake stops for the
    /// client's private-key operation, the operation goes to the key
    /// worker and the rest of the input waits in `held` until the result
    /// is back ([`Self::take_key_results`]).
    fn feed_tunnel(&mut self, input: &[u8]) {
        let now = self.clock.now();
        let mut rng = os_rng();
        let mut off = 0;
        while off < input.len() {
            let Tunnel::Up { conn, .. } = &mut self.tunnel else {
                return;
            };
            if conn.is_closed() {
                return;
            }
            if conn.awaits_private_key_op() {
                if self.held.len() + input.len() - off > MAX_HELD {
                    debug!("server sent too much while the handshake waited");
                    conn.handle_eof();
                    self.held = Vec::new();
                    self.drain_events();
                    return;
                }
                self.held.extend_from_slice(&input[off..]);
                return;
            }
            let used = conn.handle_input(&input[off..], now, &mut rng);
            off += used;
            if let Some(op) = conn.take_private_key_op() {
                self.key_generation += 1;
                if let Err(rejected) = self.key_jobs.try_submit(self.key_generation, op) {
                    // Only if the worker is gone: do it here rather than
                    // not at all.
                    conn.complete_private_key_op(rejected.op.run(&mut rng));
                }
            }
            let stuck = used == 0 && !conn.awaits_private_key_op();
            self.drain_events();
            if stuck {
                // The core takes input whenever its events are drained;
                // anything else is a bug, not a reason to spin.
                return;
            }
        }
    }

    /// The key worker finished: completes the handshake step it held up
    /// and feeds what arrived meanwhile.
    fn take_key_results(&mut self) {
        let mut results = Vec::new();
        self.key_jobs.drain(|token, r| results.push((token, r)));
        for (token, result) in results {
            let Tunnel::Up { conn, .. } = &mut self.tunnel else {
                continue;
            };
            if token != self.key_generation || !conn.awaits_private_key_op() {
                continue;
            }
            conn.complete_private_key_op(result);
            self.drain_events();
            let held = std::mem::take(&mut self.held);
            if !held.is_empty() {
                self.feed_tunnel(&held);
            }
        }
    }

    fn drain_events(&mut self) {
        loop {
            let Tunnel::Up {
                conn,
                started,
                addr,
                ..
            } = &mut self.tunnel
            else {
                return;
            };
            let Some(ev) = conn.poll_event() else { return };
            match ev {
                Event::Connected => {
                    self.metrics.handshake_ok(started.elapsed());
                    let suite = conn.suite();
                    info!(
                        "tunnel up to {addr} (server key {}, {}, handshake {} ms)",
                        conn.peer_key().map(|k| k.to_string()).unwrap_or_default(),
                        suite_name(suite),
                        started.elapsed().as_millis()
                    );
                    self.backoff.reset();
                    self.established_once = true;
                    self.open_waiting();
                    self.request_listeners();
                }
                Event::Opened { id } => {
                    self.metrics.stream_opened();
                    let Some(&t) = self.streams.get(&id) else {
                        continue;
                    };
                    if let Some(l) = self.locals.get_mut(&t) {
                        match &l.proto {
                            Proto::Socks(_) => l
                                .pipe
                                .queue_local(&socks5::reply(Socks5Reply::Succeeded, None)),
                            Proto::Http { connect: true, .. } => {
                                l.pipe.queue_local(&ProxyStatus::Established.response(""))
                            }
                            _ => {}
                        }
                        l.phase = Phase::Streaming(id);
                        l.deadline = None;
                        self.touched_locals.insert(t);
                    }
                }
                Event::OpenFailed { id, code } => {
                    self.metrics.stream_refused(code);
                    let Some(&t) = self.streams.get(&id) else {
                        continue;
                    };
                    self.refuse_local(t, code);
                }
                Event::Data { id, data } => {
                    let Some(&t) = self.streams.get(&id) else {
                        continue;
                    };
                    let Some(l) = self.locals.get_mut(&t) else {
                        continue;
                    };
                    l.pipe.queue_tunnel(data);
                    self.touched_locals.insert(t);
                }
                Event::Finished { id } => {
                    let Some(&t) = self.streams.get(&id) else {
                        continue;
                    };
                    if let Some(l) = self.locals.get_mut(&t) {
                        l.pipe.tunnel_fin = true;
                        self.touched_locals.insert(t);
                    }
                }
                Event::Reset { id, code } => {
                    if let Some(&t) = self.streams.get(&id) {
                        self.fail_local(t, format!("reset by the server: {code}"));
                    }
                }
                Event::Writable { id } => {
                    if let Some(&t) = self.streams.get(&id) {
                        self.touched_locals.insert(t);
                    }
                }
                Event::GoAway { code } => {
                    info!(
                        "server is going away: {code}; new connections wait for the next session"
                    );
                    if let Tunnel::Up { going_away, .. } = &mut self.tunnel {
                        *going_away = true;
                    }
                }
                Event::OpenRequest { .. } | Event::ListenRequest { .. } => {
                    // The core refuses OPEN and LISTEN from a server.
                    debug!("ignoring a server-side request on the client");
                }
                Event::IncomingStream { id, listen, origin } => {
                    let origin = origin.to_string();
                    self.on_incoming(id, listen, origin);
                }
                Event::ListenGranted { id } => self.on_listen_granted(id),
                Event::ListenRefused { id, code } => self.on_listen_refused(id, code),
                Event::Closed { error } => {
                    self.on_tunnel_closed(error);
                    return;
                }
            }
        }
    }

    fn on_tunnel_closed(&mut self, error: ConnectionError) {
        self.metrics.session_closed(&error);
        let auth = is_key_error(&error);
        let pinned = self.opts.core.server.id();
        let hint = match error {
            ConnectionError::Handshake(HandshakeError::PeerAlert(
                AlertReason::UnknownServerKey,
                _,
            )) => format!(
                "; we pinned server key {pinned} (--server-key) but the server holds a different key: check the server's fingerprint"
            ),
            ConnectionError::Handshake(HandshakeError::ServerAuthenticationFailed) => {
                format!("; the server could not prove it holds the pinned key {pinned}")
            }
            ConnectionError::Handshake(HandshakeError::PeerAlert(AlertReason::Unauthorized, _)) => {
                format!(
                    "; add our public key ({}) to the server's authorized_keys",
                    self.opts.core.identity.public().id()
                )
            }
            _ => String::new(),
        };
        let fatal = auth && self.opts.fail_fast_on_auth && !self.established_once;
        if fatal {
            // The final error says it all; no log line, no "reconnecting".
            self.fatal = Some(ClientError::Authentication(format!(
                "{}{hint}",
                describe_failure(&self.opts.server, &error)
            )));
        } else if auth {
            error!("{}{hint}", describe_failure(&self.opts.server, &error));
        } else if matches!(error, ConnectionError::LocallyClosed(_)) {
            info!("session to {} closed: {error}", self.opts.server);
        } else {
            warn!("tunnel to {} lost: {error}", self.opts.server);
        }
        // Flush a final CLOSE if there is one, then drop the socket.
        if let Tunnel::Up {
            sock,
            conn,
            write_failed,
            ..
        } = &mut self.tunnel
        {
            if !*write_failed {
                let pending = conn.transmit_pending();
                let _ = sock.write(pending);
            }
            let _ = self.poll.registry().deregister(sock);
        }
        // Every live stream is broken: the local side must not mistake the
        // break for a complete stream, so it is reset (or, with a proxy
        // reply still pending, answered with a failure).
        let reason = session_end_reason(&error);
        let broken: Vec<Token> = self.streams.drain().map(|(_, t)| t).collect();
        for t in broken {
            self.fail_local(t, reason.clone());
        }
        self.schedule_retry(describe_failure(&self.opts.server, &error));
    }

    fn accept_all(&mut self, lt: Token) {
        loop {
            let Some((listener, kind)) = self.listeners.get(&lt) else {
                return;
            };
            let kind = kind.clone();
            match listener.accept() {
                Ok((mut sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    let t = self.token();
                    if let Err(e) = self.poll.registry().register(
                        &mut sock,
                        t,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!("{peer}: cannot register: {e}");
                        continue;
                    }
                    let (proto, phase) = match kind {
                        ListenerKind::Forward { host, port } => (
                            Proto::Forward,
                            Phase::WaitingTunnel {
                                host,
                                port,
                                early: Vec::new(),
                            },
                        ),
                        ListenerKind::Socks => {
                            (Proto::Socks(Socks5Handshake::new()), Phase::Negotiating)
                        }
                        ListenerKind::HttpProxy => (
                            Proto::Http {
                                parser: HttpProxyParser::new(),
                                connect: false,
                            },
                            Phase::Negotiating,
                        ),
                    };
                    debug!("{peer}: local connection accepted");
                    self.locals.insert(
                        t,
                        Local {
                            peer,
                            pipe: Pipe::new(Some(sock)),
                            proto,
                            phase,
                            deadline: Some(StdInstant::now() + PENDING_LOCAL_TIMEOUT),
                        },
                    );
                    if matches!(
                        self.locals.get(&t).map(|l| &l.phase),
                        Some(Phase::WaitingTunnel { .. })
                    ) {
                        self.open_for(t);
                    }
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

    /// Opens streams for every local connection waiting for one.
    fn open_waiting(&mut self) {
        let waiting: Vec<Token> = self
            .locals
            .iter()
            .filter(|(_, l)| matches!(l.phase, Phase::WaitingTunnel { .. }))
            .map(|(t, _)| *t)
            .collect();
        for t in waiting {
            self.open_for(t);
        }
    }

    /// Opens the stream for a local connection whose request is known.
    fn open_for(&mut self, t: Token) {
        let Tunnel::Up { conn, .. } = &mut self.tunnel else {
            return;
        };
        if !conn.is_established() {
            return;
        }
        let Some(l) = self.locals.get_mut(&t) else {
            return;
        };
        let Phase::WaitingTunnel { host, port, early } = &mut l.phase else {
            return;
        };
        match conn.open_stream(destination(host, *port)) {
            Ok(id) => {
                debug!("{}: stream {id} to {}", l.peer, host.with_port(*port));
                let early = std::mem::take(early);
                let mut off = 0;
                while off < early.len() {
                    match conn.stream_send(id, &early[off..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => off += n,
                    }
                }
                // Early bytes beyond the initial credit are rare (a client
                // pipelining a big body before the reply); keep them.
                // What went is part of what the application sent (for a
                // plain http:// request: the rewritten request head).
                l.pipe.bytes_from_sock += off as u64;
                if off < early.len() {
                    let excess = early.len() - off;
                    l.phase = Phase::Opening(id);
                    self.streams.insert(id, t);
                    self.end_local(
                        t,
                        End::Abort(format!(
                            "{excess} early bytes exceed the initial stream window"
                        )),
                    );
                    return;
                }
                l.phase = match l.proto {
                    Proto::Forward | Proto::Http { connect: false, .. } => Phase::Streaming(id),
                    _ => Phase::Opening(id),
                };
                if matches!(l.phase, Phase::Streaming(_)) {
                    l.deadline = None;
                }
                self.streams.insert(id, t);
                self.touched_locals.insert(t);
            }
            Err(hytun_core::StreamError::TooManyStreams | hytun_core::StreamError::Blocked) => {
                // Retried when streams end / the buffer drains (service loop).
            }
            Err(hytun_core::StreamError::GoingAway) => {
                // The server sent GOAWAY: this session takes no new
                // streams. The connection waits for the next session,
                // which the service loop starts at once.
            }
            Err(e) => {
                let reason = format!("cannot open a stream: {e}");
                self.fail_local(t, reason);
            }
        }
    }

    fn local_event(&mut self, t: Token, readable: bool, writable: bool) {
        if !self.locals.contains_key(&t) {
            return;
        }
        if self
            .locals
            .get(&t)
            .is_some_and(|l| matches!(l.phase, Phase::Connecting(_)))
        {
            if readable || writable {
                self.finish_target_connect(t);
            }
            return;
        }
        if readable {
            let negotiating = self
                .locals
                .get(&t)
                .is_some_and(|l| matches!(l.phase, Phase::Negotiating));
            if negotiating {
                self.negotiate(t);
            }
        }
        let _ = writable;
        self.touched_locals.insert(t);
    }

    /// Reads a SOCKS5 / HTTP proxy request from a local connection.
    fn negotiate(&mut self, t: Token) {
        let mut buf = [0u8; 4096];
        loop {
            let Some(l) = self.locals.get_mut(&t) else {
                return;
            };
            let Some(sock) = l.pipe.sock.as_mut() else {
                return;
            };
            let n = match sock.read(&mut buf) {
                Ok(0) => {
                    debug!("{}: closed during negotiation", l.peer);
                    self.end_local(t, End::Clean);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.end_local(t, End::Abort(format!("local read failed: {e}")));
                    return;
                }
            };
            let input = &buf[..n];
            let outcome: Result<Option<ProxyTarget>, Vec<u8>> = match &mut l.proto {
                Proto::Socks(hs) => match hs.feed(input) {
                    Ok(Socks5Progress::NeedMore { output, .. }) => {
                        l.pipe.queue_local(&output);
                        Ok(None)
                    }
                    Ok(Socks5Progress::Request {
                        consumed,
                        output,
                        host,
                        port,
                    }) => {
                        l.pipe.queue_local(&output);
                        Ok(Some((host, port, input[consumed..].to_vec())))
                    }
                    Err(e) => {
                        debug!("{}: SOCKS5 error: {e}", l.peer);
                        Err(e.output().to_vec())
                    }
                },
                Proto::Http { parser, connect } => match parser.feed(input) {
                    Ok(None) => Ok(None),
                    Ok(Some(ProxyRequest::Connect {
                        host,
                        port,
                        consumed,
                    })) => {
                        *connect = true;
                        Ok(Some((host, port, input[consumed..].to_vec())))
                    }
                    Ok(Some(ProxyRequest::Forward {
                        host,
                        port,
                        head,
                        consumed,
                    })) => {
                        let mut early = head;
                        early.extend_from_slice(&input[consumed..]);
                        Ok(Some((host, port, early)))
                    }
                    Err(e) => {
                        debug!("{}: HTTP proxy error: {e}", l.peer);
                        Err(e.response())
                    }
                },
                Proto::Forward => Ok(None),
            };
            match outcome {
                Ok(None) => {}
                Ok(Some((host, port, early))) => {
                    l.phase = Phase::WaitingTunnel { host, port, early };
                    self.open_for(t);
                    self.touched_locals.insert(t);
                    return;
                }
                Err(reply) => {
                    l.pipe.queue_local(&reply);
                    l.pipe.tunnel_fin = true;
                    l.pipe.sock_eof = true;
                    l.phase = Phase::Closing;
                    self.touched_locals.insert(t);
                    return;
                }
            }
        }
    }

    /// Removes a local connection. A clean end closes the socket normally
    /// (its FIN was already sent by the pipe); an abort resets the stream
    /// if it is still live and closes the socket with RST.
    fn end_local(&mut self, t: Token, end: End) {
        let Some(mut l) = self.locals.remove(&t) else {
            return;
        };
        if let Some(sock) = l.pipe.sock.as_mut() {
            let _ = self.poll.registry().deregister(sock);
        }
        let id = match l.phase {
            Phase::Streaming(id) | Phase::Opening(id) | Phase::Connecting(id) => {
                self.streams.remove(&id);
                Some(id)
            }
            _ => None,
        };
        let (sent, received) = (l.pipe.bytes_from_sock, l.pipe.bytes_to_sock);
        match (end, id) {
            (End::Clean, Some(id)) => debug!(
                "{}: stream {id} closed ({sent} bytes sent, {received} received)",
                l.peer
            ),
            (End::Clean, None) => debug!("{}: local connection closed", l.peer),
            (End::Abort(reason), Some(id)) => {
                if let Tunnel::Up { conn, .. } = &mut self.tunnel {
                    // Fails harmlessly when the stream or session is gone.
                    let _ = conn.stream_reset(id, StreamErrorCode::Cancelled);
                }
                l.pipe.abort();
                debug!(
                    "{}: stream {id} aborted ({reason}; {sent} bytes sent, {received} received)",
                    l.peer
                );
            }
            (End::Abort(reason), None) => {
                l.pipe.abort();
                debug!("{}: local connection aborted ({reason})", l.peer);
            }
        }
        // Dropping `l` closes the socket (with RST after `abort`).
    }

    /// A failure of a local connection's stream. A SOCKS5 / HTTP CONNECT
    /// client whose reply is still pending gets a failure reply and a
    /// normal close; everything else is aborted.
    fn fail_local(&mut self, t: Token, reason: String) {
        let Some(l) = self.locals.get_mut(&t) else {
            return;
        };
        let reply = match (&l.proto, &l.phase) {
            (Proto::Socks(_), Phase::Opening(_) | Phase::WaitingTunnel { .. }) => {
                Some(socks5::reply(Socks5Reply::GeneralFailure, None))
            }
            (Proto::Http { .. }, Phase::Opening(_) | Phase::WaitingTunnel { .. }) => {
                Some(ProxyStatus::BadGateway.response(&reason))
            }
            _ => None,
        };
        match reply {
            Some(reply) => {
                if let Phase::Opening(id) = l.phase {
                    self.streams.remove(&id);
                    debug!("{}: stream {id} failed before the reply: {reason}", l.peer);
                }
                l.answer_and_close(&reply);
                self.touched_locals.insert(t);
            }
            None => self.end_local(t, End::Abort(reason)),
        }
    }

    /// The server refused a stream (OPEN_FAIL): a proxy client gets the
    /// matching failure reply; a `-L` connection, whose application may
    /// already have sent data, is reset.
    fn refuse_local(&mut self, t: Token, code: StreamErrorCode) {
        let Some(l) = self.locals.get_mut(&t) else {
            return;
        };
        let reply = match &l.proto {
            Proto::Socks(_) => Some(socks5::reply(socks_code(code), None)),
            Proto::Http { .. } => Some(http_status(code).response(&code.to_string())),
            Proto::Forward => None,
        };
        match reply {
            Some(reply) => {
                if let Phase::Opening(id) | Phase::Streaming(id) = l.phase {
                    self.streams.remove(&id);
                    debug!("{}: stream {id} refused by server: {code}", l.peer);
                }
                l.answer_and_close(&reply);
                self.touched_locals.insert(t);
            }
            None => self.end_local(t, End::Abort(format!("refused by server: {code}"))),
        }
    }

    fn run_timers(&mut self) {
        let std_now = StdInstant::now();
        match &mut self.tunnel {
            Tunnel::Down { retry_at } => {
                if std_now >= *retry_at && self.wants_tunnel() {
                    self.start_connect();
                }
            }
            Tunnel::Connecting { deadline, addr, .. } => {
                if std_now >= *deadline {
                    let why = format!("server {addr}: connect timed out");
                    warn!("{why}");
                    if let Tunnel::Connecting { mut sock, .. } =
                        std::mem::replace(&mut self.tunnel, Tunnel::Down { retry_at: std_now })
                    {
                        let _ = self.poll.registry().deregister(&mut sock);
                    }
                    self.schedule_retry(why);
                }
            }
            Tunnel::Up { conn, .. } => {
                let now = self.clock.now();
                if conn.poll_timeout().is_some_and(|d| d <= now) {
                    conn.handle_timeout(now);
                    self.drain_events();
                }
            }
        }
        // Buffers of local connections quiet for a second go back.
        if let Some(quiet_before) = std_now.checked_sub(Duration::from_secs(1)) {
            for l in self.locals.values_mut() {
                l.pipe.release_if_drained_before(quiet_before);
            }
        }
        let expired: Vec<Token> = self
            .locals
            .iter()
            .filter(|(_, l)| l.deadline.is_some_and(|d| std_now >= d))
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            let Some(l) = self.locals.get_mut(&t) else {
                continue;
            };
            if let Phase::Connecting(id) = l.phase {
                self.fail_target(t, id, StreamErrorCode::TimedOut, "target connect timed out");
                continue;
            }
            warn!(
                "{}: tunnel not available in time; closing local connection",
                l.peer
            );
            let reply = match &l.proto {
                Proto::Socks(_) if !matches!(l.phase, Phase::Negotiating) => {
                    Some(socks5::reply(Socks5Reply::GeneralFailure, None))
                }
                Proto::Http { .. } if !matches!(l.phase, Phase::Negotiating) => {
                    Some(ProxyStatus::GatewayTimeout.response("tunnel unavailable"))
                }
                _ => None,
            };
            match reply {
                Some(reply) => {
                    if let Phase::Opening(id) = l.phase {
                        // The server may still connect it: cancel it there.
                        self.streams.remove(&id);
                        if let Tunnel::Up { conn, .. } = &mut self.tunnel {
                            let _ = conn.stream_reset(id, StreamErrorCode::Cancelled);
                        }
                    }
                    l.answer_and_close(&reply);
                    self.touched_locals.insert(t);
                }
                // A `-L` application may have sent data already: no clean
                // end for it.
                None => self.end_local(t, End::Abort("tunnel not available in time".into())),
            }
        }
    }

    fn service(&mut self) {
        for _ in 0..64 {
            self.drain_events();
            // Locals: flush to socket, read into tunnel.
            let touched: Vec<Token> = self.touched_locals.drain().collect();
            let blocked: Vec<Token> = self
                .locals
                .iter()
                .filter(|(_, l)| l.pipe.read_blocked)
                .map(|(t, _)| *t)
                .collect();
            for t in touched.into_iter().chain(blocked) {
                self.service_local(t);
            }
            // Locals still waiting for a stream slot.
            self.open_waiting();
            self.retire_drained_session();
            let wrote = self.write_tunnel();
            let closed = matches!(&self.tunnel, Tunnel::Up { conn, .. } if conn.is_closed());
            if closed {
                self.drain_events();
            }
            let again = wrote > 0 && self.locals.values().any(|l| l.pipe.read_blocked);
            if !again && self.touched_locals.is_empty() {
                return;
            }
        }
    }

    fn service_local(&mut self, t: Token) {
        let Some(l) = self.locals.get_mut(&t) else {
            return;
        };
        if matches!(l.phase, Phase::Connecting(_)) {
            // Nothing is written to (or shut down on) a socket that is
            // still connecting; the stream is not accepted yet.
            return;
        }
        let id = match l.phase {
            Phase::Streaming(id) | Phase::Opening(id) => Some(id),
            _ => None,
        };
        match l.pipe.flush() {
            Ok(n) => {
                if let (Some(id), Tunnel::Up { conn, .. }) = (id, &mut self.tunnel)
                    && n > 0
                {
                    conn.stream_consumed(id, n);
                }
            }
            Err(e) => {
                self.end_local(t, End::Abort(local_failure("write to", &e)));
                return;
            }
        }
        if matches!(l.phase, Phase::Closing) {
            if l.pipe.buffered() == 0 {
                self.end_local(t, End::Clean);
            }
            return;
        }
        if let (Phase::Streaming(id), Tunnel::Up { conn, .. }) = (&l.phase, &mut self.tunnel) {
            let id = *id;
            match l.pipe.read_into(&mut **conn, id) {
                Ok(ReadOutcome::Eof) | Ok(_) => {}
                Err(e) => {
                    self.end_local(t, End::Abort(local_failure("read from", &e)));
                    return;
                }
            }
            if l.pipe.is_done() {
                self.end_local(t, End::Clean);
            }
        }
    }

    /// A session the server is retiring (GOAWAY) is closed as soon as its
    /// last stream ends, so connections waiting for a stream get a new
    /// session at once instead of waiting for the server's own CLOSE.
    fn retire_drained_session(&mut self) {
        if let Tunnel::Up {
            conn, going_away, ..
        } = &mut self.tunnel
            && *going_away
            && self.streams.is_empty()
            && !conn.is_closed()
        {
            info!("last stream of the retiring session ended; closing it");
            conn.close(CloseCode::Normal);
            self.drain_events();
        }
    }

    fn write_tunnel(&mut self) -> usize {
        let Tunnel::Up {
            sock,
            conn,
            write_failed,
            ..
        } = &mut self.tunnel
        else {
            return 0;
        };
        let mut total = 0;
        loop {
            let pending = conn.transmit_pending();
            if pending.is_empty() || *write_failed {
                return total;
            }
            match sock.write(pending) {
                Ok(n) => {
                    total += n;
                    self.metrics.tunnel_sent(n);
                    conn.transmit_done(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("tunnel write error: {e}");
                    *write_failed = true;
                    conn.handle_eof();
                    return total;
                }
            }
        }
    }

    fn shutdown(&mut self) {
        crate::service::notify_stopping();
        // Streams still open are cut, not complete: reset their sockets.
        let live: Vec<Token> = self.locals.keys().copied().collect();
        for t in live {
            let clean = self
                .locals
                .get(&t)
                .is_some_and(|l| matches!(l.phase, Phase::Negotiating | Phase::Closing));
            let end = if clean {
                End::Clean
            } else {
                End::Abort("client stopping".into())
            };
            self.end_local(t, end);
        }
        if let Tunnel::Up { sock, conn, .. } = &mut self.tunnel {
            if !conn.is_closed() {
                conn.close(CloseCode::Normal);
            }
            while conn.poll_event().is_some() {}
            let pending = conn.transmit_pending().to_vec();
            let _ = sock.write(&pending);
        }
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

/// A cipher suite's name for the log.
fn suite_name(suite: Option<hytun_core::Suite>) -> &'static str {
    match suite {
        Some(hytun_core::Suite::Aes128Gcm) => "AES-128-GCM",
        Some(hytun_core::Suite::Aes256Gcm) => "AES-256-GCM",
        None => "no suite",
    }
}

/// True for the handshake failures that retrying cannot fix: the server
/// does not hold the pinned key, or does not authorize ours. Busy, rate
/// limiting (a silent close before the ServerHello), timeouts and lost
/// connections are retryable.
fn is_key_error(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::Handshake(
            HandshakeError::PeerAlert(AlertReason::UnknownServerKey | AlertReason::Unauthorized, _)
                | HandshakeError::ServerAuthenticationFailed
                | HandshakeError::UnknownServerKey(_)
        )
    )
}

/// Why the streams of a session that ended are aborted, for the log.
fn session_end_reason(error: &ConnectionError) -> String {
    match error {
        ConnectionError::PeerClosed(code) => {
            format!("server closed the session with the stream open: {code}")
        }
        ConnectionError::LocallyClosed(code) => {
            format!("session closed with the stream open: {code}")
        }
        ConnectionError::Truncated => "tunnel lost: connection to the server cut".into(),
        e => format!("tunnel lost: {e}"),
    }
}

/// A local socket error as an abort reason.
fn local_failure(what: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "local application reset the connection".into(),
        io::ErrorKind::BrokenPipe => "local application closed the connection".into(),
        _ => format!("{what} the local application failed: {e}"),
    }
}

fn socks_code(code: StreamErrorCode) -> Socks5Reply {
    match code {
        StreamErrorCode::NotAllowed => Socks5Reply::NotAllowed,
        StreamErrorCode::ConnectionRefused => Socks5Reply::ConnectionRefused,
        StreamErrorCode::HostUnreachable => Socks5Reply::HostUnreachable,
        StreamErrorCode::NetworkUnreachable => Socks5Reply::NetworkUnreachable,
        StreamErrorCode::TimedOut => Socks5Reply::TtlExpired,
        _ => Socks5Reply::GeneralFailure,
    }
}

fn http_status(code: StreamErrorCode) -> ProxyStatus {
    match code {
        StreamErrorCode::NotAllowed => ProxyStatus::Forbidden,
        StreamErrorCode::TimedOut => ProxyStatus::GatewayTimeout,
        StreamErrorCode::ResourceExhausted | StreamErrorCode::SessionClosing => {
            ProxyStatus::Unavailable
        }
        _ => ProxyStatus::BadGateway,
    }
}
