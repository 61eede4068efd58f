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
    reverse: reverse::ReverseState,
}

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
        let stop = StopHandle::new(Arc::new(AtomicBool::new(false)), waker);
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
            reverse: reverse::ReverseState::default(),
        })
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
                    WAKER => {}
                    SIGNALS => {
                        if let Some(s) = signals.as_mut() {
                            for sig in s.pending() {
                                info!("signal {sig}: shutting down");
                            }
                        }
                        self.stop.stop();
                    }
                    TUNNEL => self.tunnel_event(event.is_readable()),
                    t if self.listeners.contains_key(&t) => self.accept_all(t),
                    t => {
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
                warn!("cannot resolve server {}: {e}", self.opts.server);
                self.schedule_retry();
                return;
            }
        };
        let Some(addr) = addrs.first().copied() else {
            warn!("server {} resolved to no address", self.opts.server);
            self.schedule_retry();
            return;
        };
        match TcpStream::connect(addr) {
            Ok(mut sock) => {
                if let Err(e) = self.poll.registry().register(
                    &mut sock,
                    TUNNEL,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    warn!("cannot register tunnel socket: {e}");
                    self.schedule_retry();
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
                warn!("cannot connect to server {addr}: {e}");
                self.schedule_retry();
            }
        }
    }

    fn schedule_retry(&mut self) {
        if self.opts.fail_fast_on_first_attempt && !self.established_once && self.fatal.is_none() {
            self.fatal = Some(ClientError::Unreachable(format!(
                "cannot establish a tunnel to {} (see the log above)",
                self.opts.server
            )));
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

    fn tunnel_event(&mut self, readable: bool) {
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
                warn!("server {addr} unreachable: {e}");
                if let Tunnel::Connecting { mut sock, .. } = std::mem::replace(
                    &mut self.tunnel,
                    Tunnel::Down {
                        retry_at: StdInstant::now(),
                    },
                ) {
                    let _ = self.poll.registry().deregister(&mut sock);
                }
                self.schedule_retry();
                return;
            }
            let _ = sock.set_nodelay(true);
            let conn = Box::new(HostConnection::client(
                self.opts.core.clone(),
                self.clock.now(),
                &mut os_rng(),
            ));
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
        if readable {
            self.read_tunnel();
        }
    }

    fn read_tunnel(&mut self) {
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
                    let now = self.clock.now();
                    let mut off = 0;
                    let mut rng = os_rng();
                    loop {
                        let Tunnel::Up { conn, .. } = &mut self.tunnel else {
                            return;
                        };
                        off += conn.handle_input(&self.scratch[off..n], now, &mut rng);
                        self.drain_events();
                        let Tunnel::Up { conn, .. } = &mut self.tunnel else {
                            return;
                        };
                        if off >= n || conn.is_closed() {
                            break;
                        }
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
                    let suite = conn.suite();
                    info!(
                        "tunnel up to {addr} (server key {}, {:?}, handshake {} ms)",
                        conn.peer_key().map(|k| k.to_string()).unwrap_or_default(),
                        suite,
                        started.elapsed().as_millis()
                    );
                    self.backoff.reset();
                    self.established_once = true;
                    self.open_waiting();
                    self.request_listeners();
                }
                Event::Opened { id } => {
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
        if auth {
            error!(
                "tunnel handshake with {} failed: {error}{hint}",
                self.opts.server
            );
        } else if matches!(error, ConnectionError::LocallyClosed(_)) {
            info!("session to {} closed: {error}", self.opts.server);
        } else {
            warn!("tunnel to {} lost: {error}", self.opts.server);
        }
        if auth && self.opts.fail_fast_on_auth && !self.established_once {
            self.fatal = Some(ClientError::Authentication(format!(
                "handshake with {} failed: {error}{hint}",
                self.opts.server
            )));
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
        self.schedule_retry();
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
                info!("{}: stream {id} to {}", l.peer, host.with_port(*port));
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
            (End::Clean, Some(id)) => info!(
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
                warn!(
                    "{}: stream {id} aborted ({reason}; {sent} bytes sent, {received} received)",
                    l.peer
                );
            }
            (End::Abort(reason), None) => {
                l.pipe.abort();
                info!("{}: local connection aborted ({reason})", l.peer);
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
                    info!("{}: stream {id} failed before the reply: {reason}", l.peer);
                }
                l.pipe.queue_local(&reply);
                l.pipe.tunnel_fin = true;
                l.pipe.sock_eof = true;
                l.phase = Phase::Closing;
                l.deadline = None;
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
                    info!("{}: stream {id} refused by server: {code}", l.peer);
                }
                l.pipe.queue_local(&reply);
                l.pipe.tunnel_fin = true;
                l.pipe.sock_eof = true;
                l.phase = Phase::Closing;
                l.deadline = None;
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
                    warn!("server {addr}: connect timed out");
                    if let Tunnel::Connecting { mut sock, .. } =
                        std::mem::replace(&mut self.tunnel, Tunnel::Down { retry_at: std_now })
                    {
                        let _ = self.poll.registry().deregister(&mut sock);
                    }
                    self.schedule_retry();
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
                    l.pipe.queue_local(&reply);
                    l.pipe.tunnel_fin = true;
                    l.pipe.sock_eof = true;
                    l.phase = Phase::Closing;
                    l.deadline = None;
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
