//! The tunnel server: a single-threaded `mio` loop that accepts client
//! sessions, drives one [`HostConnection`] per session, and connects each
//! stream to its destination.
//!
//! Tokens: `LISTENER`, `WAKER` and `SIGNALS` are fixed; every session and
//! every upstream socket gets a fresh token from a counter (never reused).
//! After each poll the loop services every session it touched: drain core
//! events, retry blocked upstream reads, write the tunnel's pending bytes,
//! and reap what has finished.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant as StdInstant};

use hytun_core::{
    CloseCode, ConnectionError, Event, Host, HostConnection, Instant, ServerConfig,
    StreamErrorCode, StreamId,
};
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::allow::{AllowList, DestHost};
use crate::pipe::{Pipe, ReadOutcome};
use crate::ratelimit::HandshakeRateLimiter;
use crate::resolver::Resolver;
use crate::runtime::{Clock, StopHandle, os_rng};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
const FIRST_DYNAMIC: usize = 16;
const READ_CHUNK: usize = 256 * 1024;
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Everything the server needs besides the core configuration.
#[derive(Clone)]
pub struct ServerOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The core configuration (keys, authorized clients, session limits).
    pub core: Arc<ServerConfig>,
    /// Destination allowlist.
    pub allow: AllowList,
    /// Most concurrent sessions.
    pub max_sessions: usize,
    /// Handshakes per second per source address.
    pub handshakes_per_source_per_sec: NonZeroU32,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// Binding the listen address failed.
    Bind(SocketAddr, io::Error),
    /// Setting up the event loop failed.
    Io(io::Error),
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerError::Bind(addr, e) if e.kind() == io::ErrorKind::AddrInUse => {
                write!(
                    f,
                    "cannot listen on {addr}: address already in use (is another server running?)"
                )
            }
            ServerError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServerError::Io(e) => write!(f, "event loop setup failed: {e}"),
        }
    }
}

impl std::error::Error for ServerError {}

enum UpstreamState {
    Resolving,
    /// The socket moves into the pipe only once connected, so no byte is
    /// written to (and no shutdown applied on) a half-open socket.
    Connecting {
        sock: TcpStream,
        addrs: Vec<SocketAddr>,
        next: usize,
        deadline: StdInstant,
    },
    Connected,
}

struct Upstream {
    token: Option<Token>,
    /// In the session's `to_flush` list.
    flush_queued: bool,
    dest: String,
    state: UpstreamState,
    pipe: Pipe,
}

struct Session {
    sock: TcpStream,
    peer: SocketAddr,
    conn: Box<HostConnection>,
    upstreams: HashMap<StreamId, Upstream>,
    /// Upstreams that received tunnel data since the last flush.
    to_flush: Vec<StreamId>,
    started: StdInstant,
    closed: bool,
    write_failed: bool,
}

enum Owner {
    Session(Token),
    Upstream(Token, StreamId),
}

/// A bound, not yet running server.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    opts: ServerOptions,
    stop: StopHandle,
    resolver: Resolver<(Token, StreamId)>,
    clock: Clock,
    sessions: HashMap<Token, Session>,
    owners: HashMap<Token, Owner>,
    next_token: usize,
    limiter: HandshakeRateLimiter,
    touched: HashSet<Token>,
    accept_paused_until: Option<StdInstant>,
    shutdown_deadline: Option<StdInstant>,
    scratch: Vec<u8>,
}

impl Server {
    /// Binds the listener and prepares the loop.
    pub fn bind(opts: ServerOptions) -> Result<Server, ServerError> {
        let listener =
            TcpListener::bind(opts.listen).map_err(|e| ServerError::Bind(opts.listen, e))?;
        Self::with_listener(opts, listener)
    }

    /// Binds `threads` servers to the same address with `SO_REUSEPORT`, so
    /// the kernel spreads new sessions over one event loop per thread (each
    /// session stays on the thread that accepted it). The session cap and
    /// the per-source handshake rate are split between the threads.
    pub fn bind_group(opts: ServerOptions, threads: usize) -> Result<Vec<Server>, ServerError> {
        let threads = threads.max(1);
        let mut per = opts.clone();
        per.max_sessions = opts.max_sessions.div_ceil(threads).max(1);
        let rate = opts
            .handshakes_per_source_per_sec
            .get()
            .div_ceil(threads as u32);
        per.handshakes_per_source_per_sec = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let mut servers = Vec::with_capacity(threads);
        let mut addr = opts.listen;
        for _ in 0..threads {
            let listener = reuseport_listener(addr).map_err(|e| ServerError::Bind(addr, e))?;
            let server = Self::with_listener(per.clone(), listener)?;
            // Port 0: the first bind picks the port, the others join it.
            addr = server.local_addr();
            servers.push(server);
        }
        Ok(servers)
    }

    fn with_listener(
        opts: ServerOptions,
        mut listener: TcpListener,
    ) -> Result<Server, ServerError> {
        let poll = Poll::new().map_err(ServerError::Io)?;
        let local_addr = listener.local_addr().map_err(ServerError::Io)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ServerError::Io)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ServerError::Io)?);
        let resolver = Resolver::start(waker.clone()).map_err(ServerError::Io)?;
        let stop = StopHandle::new(Arc::new(AtomicBool::new(false)), waker.clone());
        let limiter = HandshakeRateLimiter::new(opts.handshakes_per_source_per_sec);
        Ok(Server {
            poll,
            listener,
            local_addr,
            opts,
            stop,
            resolver,
            clock: Clock::default(),
            sessions: HashMap::new(),
            owners: HashMap::new(),
            next_token: FIRST_DYNAMIC,
            limiter,
            touched: HashSet::new(),
            accept_paused_until: None,
            shutdown_deadline: None,
            scratch: vec![0; READ_CHUNK],
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops the loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    /// Runs until stopped (by the handle, or SIGINT/SIGTERM when
    /// `handle_signals`). Returns after a graceful shutdown.
    pub fn run(mut self, handle_signals: bool) -> io::Result<()> {
        let mut signals = if handle_signals {
            let mut s = signal_hook_mio::v1_0::Signals::new([
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
            ])?;
            self.poll
                .registry()
                .register(&mut s, SIGNALS, Interest::READABLE)?;
            Some(s)
        } else {
            None
        };
        if self.opts.allow.allows_all() {
            warn!(
                "--allow '*': this server will connect streams to ANY destination its clients name"
            );
        }
        info!(
            "listening on {} ({} authorized client keys)",
            self.local_addr,
            self.opts.core.authorized.len()
        );
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.next_timeout();
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.take_resolved(),
                    SIGNALS => {
                        if let Some(s) = signals.as_mut() {
                            for sig in s.pending() {
                                info!("signal {sig}: shutting down gracefully");
                            }
                        }
                        self.stop.stop();
                    }
                    token => self.dispatch(
                        token,
                        event.is_readable(),
                        event.is_writable() || event.is_write_closed(),
                    ),
                }
            }
            if self.stop.is_stopped() && self.shutdown_deadline.is_none() {
                self.begin_shutdown();
            }
            self.run_timers();
            let touched: Vec<Token> = self.touched.drain().collect();
            for t in touched {
                self.service(t);
            }
            if let Some(deadline) = self.shutdown_deadline {
                let streams: usize = self.sessions.values().map(|s| s.upstreams.len()).sum();
                if streams == 0 || StdInstant::now() >= deadline {
                    self.finish_shutdown();
                    info!("server stopped");
                    return Ok(());
                }
            }
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut take = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));
        for s in self.sessions.values() {
            if let Some(t) = s.conn.poll_timeout() {
                take(self.clock.until(t));
            }
            for up in s.upstreams.values() {
                if let UpstreamState::Connecting { deadline, .. } = up.state {
                    take(deadline.saturating_duration_since(StdInstant::now()));
                }
            }
        }
        if let Some(t) = self.accept_paused_until {
            take(t.saturating_duration_since(StdInstant::now()));
        }
        if self.shutdown_deadline.is_some() {
            take(Duration::from_millis(100));
        }
        next
    }

    fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() || self.shutdown_deadline.is_some() {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((sock, peer)) => self.admit(sock, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off instead of spinning;
                    // the listener stays registered.
                    warn!("accept failed: {e}; pausing accepts for {ACCEPT_RETRY:?}");
                    self.accept_paused_until = Some(StdInstant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut sock: TcpStream, peer: SocketAddr) {
        if self.sessions.len() >= self.opts.max_sessions {
            warn!(
                "{peer}: refused, at the session limit ({})",
                self.opts.max_sessions
            );
            // Tell the client why (best effort; the socket is new and empty).
            let mut alert = [0u8; 8];
            let n =
                hytun_core::handshake::emit_alert(hytun_core::AlertReason::Busy, None, &mut alert);
            let _ = sock.write(&alert[..n]);
            return;
        }
        if !self.limiter.allow(peer.ip(), StdInstant::now()) {
            debug!("{peer}: refused, handshake rate limit");
            return;
        }
        let _ = sock.set_nodelay(true);
        let token = self.token();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            warn!("{peer}: cannot register: {e}");
            return;
        }
        debug!("{peer}: connection accepted");
        let conn = Box::new(HostConnection::server(
            self.opts.core.clone(),
            self.clock.now(),
        ));
        self.sessions.insert(
            token,
            Session {
                sock,
                peer,
                conn,
                upstreams: HashMap::new(),
                to_flush: Vec::new(),
                started: StdInstant::now(),
                closed: false,
                write_failed: false,
            },
        );
        self.owners.insert(token, Owner::Session(token));
        self.touched.insert(token);
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool) {
        match self.owners.get(&token) {
            Some(Owner::Session(t)) => {
                let t = *t;
                if readable {
                    self.read_session(t);
                }
                self.touched.insert(t);
            }
            Some(Owner::Upstream(t, id)) => {
                let (t, id) = (*t, *id);
                self.upstream_event(t, id, readable, writable);
                self.touched.insert(t);
            }
            None => {}
        }
    }

    fn read_session(&mut self, t: Token) {
        let Some(s) = self.sessions.get_mut(&t) else {
            return;
        };
        if s.closed {
            return;
        }
        loop {
            match s.sock.read(&mut self.scratch) {
                Ok(0) => {
                    s.conn.handle_eof();
                    break;
                }
                Ok(n) => {
                    let now = self.clock.now();
                    let mut off = 0;
                    let mut rng = os_rng();
                    loop {
                        off += s.conn.handle_input(&self.scratch[off..n], now, &mut rng);
                        Self::drain_events(
                            s,
                            &self.opts,
                            &self.resolver,
                            &self.poll,
                            &mut self.owners,
                            &mut self.next_token,
                            t,
                        );
                        if off >= n || s.conn.is_closed() {
                            break;
                        }
                    }
                    if s.conn.is_closed() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("{}: read error: {e}", s.peer);
                    s.conn.handle_eof();
                    break;
                }
            }
        }
    }

    /// Handles every pending core event of one session.
    #[allow(clippy::too_many_arguments)]
    fn drain_events(
        s: &mut Session,
        opts: &ServerOptions,
        resolver: &Resolver<(Token, StreamId)>,
        poll: &Poll,
        owners: &mut HashMap<Token, Owner>,
        next_token: &mut usize,
        t: Token,
    ) {
        loop {
            let Some(ev) = s.conn.poll_event() else {
                return;
            };
            match ev {
                Event::Connected => {
                    let key = s.conn.peer_key().map(|k| k.to_string()).unwrap_or_default();
                    info!(
                        "{}: session up, client key {key}, handshake {} ms",
                        s.peer,
                        s.started.elapsed().as_millis()
                    );
                }
                Event::OpenRequest { id, dest } => {
                    let host = match dest.host {
                        Host::Ipv4(a) => DestHost::Ip(IpAddr::from(a)),
                        Host::Ipv6(a) => DestHost::Ip(IpAddr::from(a)),
                        Host::Domain(d) => DestHost::Domain(d.to_string()),
                    };
                    let port = dest.port;
                    let label = host.with_port(port);
                    let up = Upstream {
                        token: None,
                        flush_queued: false,
                        dest: label.clone(),
                        state: UpstreamState::Resolving,
                        pipe: Pipe::new(None),
                    };
                    match &host {
                        DestHost::Ip(ip) => {
                            if !opts.allow.allows(&host, port) {
                                info!("{}: stream {id} to {label} refused: not allowed", s.peer);
                                let _ = s.conn.refuse_stream(id, StreamErrorCode::NotAllowed);
                                continue;
                            }
                            s.upstreams.insert(id, up);
                            Self::connect_upstream(
                                s,
                                poll,
                                owners,
                                next_token,
                                t,
                                id,
                                vec![SocketAddr::new(*ip, port)],
                            );
                        }
                        DestHost::Domain(name) => {
                            // A domain not matched by a name pattern may
                            // still be allowed by its resolved address.
                            let name = name.clone();
                            s.upstreams.insert(id, up);
                            resolver.lookup((t, id), name, port);
                        }
                    }
                }
                Event::Data { id, data } => {
                    if let Some(up) = s.upstreams.get_mut(&id) {
                        up.pipe.queue_tunnel(data);
                        if !up.flush_queued {
                            up.flush_queued = true;
                            s.to_flush.push(id);
                        }
                    }
                }
                Event::Finished { id } => {
                    if let Some(up) = s.upstreams.get_mut(&id) {
                        up.pipe.tunnel_fin = true;
                        if let Ok(n) = up.pipe.flush() {
                            s.conn.stream_consumed(id, n);
                        }
                    }
                }
                Event::Reset { id, code } => {
                    if s.upstreams.contains_key(&id) {
                        debug!("{}: stream {id} reset by client: {code}", s.peer);
                        Self::drop_upstream(s, poll, owners, id);
                    }
                }
                Event::Closed { error } => {
                    Self::log_close(s, &error);
                    s.closed = true;
                    return;
                }
                Event::Writable { .. }
                | Event::Opened { .. }
                | Event::OpenFailed { .. }
                | Event::GoAway { .. } => {}
            }
        }
    }

    fn log_close(s: &Session, error: &ConnectionError) {
        match error {
            ConnectionError::Handshake(hytun_core::HandshakeError::UnauthorizedClient(id)) => {
                warn!("{}: refused unauthorized client key {id}", s.peer)
            }
            ConnectionError::Handshake(e) => warn!("{}: handshake failed: {e}", s.peer),
            ConnectionError::PeerClosed(CloseCode::Normal) => {
                info!("{}: session closed by client", s.peer)
            }
            ConnectionError::LocallyClosed(code) => info!("{}: session closed: {code}", s.peer),
            e => info!("{}: session ended: {e}", s.peer),
        }
    }

    fn connect_upstream(
        s: &mut Session,
        poll: &Poll,
        owners: &mut HashMap<Token, Owner>,
        next_token: &mut usize,
        t: Token,
        id: StreamId,
        addrs: Vec<SocketAddr>,
    ) {
        let Some(up) = s.upstreams.get_mut(&id) else {
            return;
        };
        let mut last_err = None;
        for (i, addr) in addrs.iter().enumerate() {
            match TcpStream::connect(*addr) {
                Ok(mut sock) => {
                    *next_token += 1;
                    let token = Token(*next_token);
                    if let Err(e) = poll.registry().register(
                        &mut sock,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        last_err = Some(e);
                        continue;
                    }
                    owners.insert(token, Owner::Upstream(t, id));
                    up.token = Some(token);
                    up.state = UpstreamState::Connecting {
                        sock,
                        addrs: addrs.clone(),
                        next: i + 1,
                        deadline: StdInstant::now() + UPSTREAM_CONNECT_TIMEOUT,
                    };
                    return;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let code = last_err.as_ref().map_or(StreamErrorCode::Other, error_code);
        info!(
            "{}: stream {id} to {} failed: {}",
            s.peer,
            up.dest,
            last_err.map_or_else(|| "no address".into(), |e| e.to_string())
        );
        Self::refuse_upstream(s, poll, owners, id, code);
    }

    /// Refuses a stream (OPEN_FAIL with `code`) and forgets its upstream.
    fn refuse_upstream(
        s: &mut Session,
        poll: &Poll,
        owners: &mut HashMap<Token, Owner>,
        id: StreamId,
        code: StreamErrorCode,
    ) {
        let _ = s.conn.refuse_stream(id, code);
        Self::drop_upstream(s, poll, owners, id);
    }

    fn drop_upstream(
        s: &mut Session,
        poll: &Poll,
        owners: &mut HashMap<Token, Owner>,
        id: StreamId,
    ) {
        if let Some(mut up) = s.upstreams.remove(&id) {
            // hytun-edges: a stream not finished cleanly both ways (RESET,
            // lost or closed session, local error) ends the destination
            // socket with RST, never with a FIN that looks complete.
            if !up.pipe.is_done() {
                up.pipe.abort();
            }
            if let Some(sock) = up.pipe.sock.as_mut() {
                let _ = poll.registry().deregister(sock);
            }
            if let UpstreamState::Connecting { sock, .. } = &mut up.state {
                let _ = poll.registry().deregister(sock);
            }
            if let Some(tok) = up.token {
                owners.remove(&tok);
            }
        }
    }

    fn take_resolved(&mut self) {
        while let Some(res) = self.resolver.try_result() {
            let (t, id) = res.tag;
            let Some(s) = self.sessions.get_mut(&t) else {
                continue;
            };
            let Some(up) = s.upstreams.get(&id) else {
                continue;
            };
            let dest = up.dest.clone();
            let host = DestHost::Domain(
                dest.rsplit_once(':')
                    .map_or(dest.clone(), |(h, _)| h.to_string()),
            );
            match res.result {
                Ok(addrs) => {
                    let port = addrs.first().map_or(0, |a| a.port());
                    let allowed: Vec<SocketAddr> = if self.opts.allow.allows(&host, port) {
                        addrs
                    } else {
                        addrs
                            .into_iter()
                            .filter(|a| self.opts.allow.check_resolved(&host, port, a.ip()))
                            .collect()
                    };
                    if allowed.is_empty() {
                        info!("{}: stream {id} to {dest} refused: not allowed", s.peer);
                        Self::refuse_upstream(
                            s,
                            &self.poll,
                            &mut self.owners,
                            id,
                            StreamErrorCode::NotAllowed,
                        );
                    } else {
                        Self::connect_upstream(
                            s,
                            &self.poll,
                            &mut self.owners,
                            &mut self.next_token,
                            t,
                            id,
                            allowed,
                        );
                    }
                }
                Err(e) => {
                    info!("{}: stream {id} to {dest}: name not resolved: {e}", s.peer);
                    let _ = s
                        .conn
                        .refuse_stream(id, StreamErrorCode::NetworkUnreachable);
                    Self::drop_upstream(s, &self.poll, &mut self.owners, id);
                }
            }
            self.touched.insert(t);
        }
    }

    fn upstream_event(&mut self, t: Token, id: StreamId, readable: bool, writable: bool) {
        let Some(s) = self.sessions.get_mut(&t) else {
            return;
        };
        let Some(up) = s.upstreams.get_mut(&id) else {
            return;
        };
        if let UpstreamState::Connecting {
            sock, addrs, next, ..
        } = &mut up.state
        {
            if !writable && !readable {
                return;
            }
            let failure = match sock.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => match sock.peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => Some(e),
                },
            };
            if let Some(e) = failure {
                let rest: Vec<SocketAddr> = addrs[*next..].to_vec();
                let _ = self.poll.registry().deregister(sock);
                if let Some(tok) = up.token.take() {
                    self.owners.remove(&tok);
                }
                up.state = UpstreamState::Resolving;
                if rest.is_empty() {
                    info!("{}: stream {id} to {} failed: {e}", s.peer, up.dest);
                    Self::refuse_upstream(s, &self.poll, &mut self.owners, id, error_code(&e));
                } else {
                    Self::connect_upstream(
                        s,
                        &self.poll,
                        &mut self.owners,
                        &mut self.next_token,
                        t,
                        id,
                        rest,
                    );
                }
                return;
            }
            let _ = sock.set_nodelay(true);
            let state = std::mem::replace(&mut up.state, UpstreamState::Connected);
            if let UpstreamState::Connecting { sock, .. } = state {
                up.pipe.sock = Some(sock);
            }
            debug!("{}: stream {id} connected to {}", s.peer, up.dest);
            let _ = s.conn.accept_stream(id);
        }
        let Some(up) = s.upstreams.get_mut(&id) else {
            return;
        };
        if writable {
            match up.pipe.flush() {
                Ok(n) => s.conn.stream_consumed(id, n),
                Err(e) => {
                    debug!("{}: stream {id} write to {} failed: {e}", s.peer, up.dest);
                    let _ = s.conn.stream_reset(id, StreamErrorCode::Other);
                    Self::drop_upstream(s, &self.poll, &mut self.owners, id);
                    return;
                }
            }
        }
        if readable || up.pipe.read_blocked {
            Self::pump_upstream(s, &self.poll, &mut self.owners, id);
        }
    }

    fn pump_upstream(
        s: &mut Session,
        poll: &Poll,
        owners: &mut HashMap<Token, Owner>,
        id: StreamId,
    ) {
        let Some(up) = s.upstreams.get_mut(&id) else {
            return;
        };
        if !matches!(up.state, UpstreamState::Connected) {
            return;
        }
        match up.pipe.read_into(&mut *s.conn, id) {
            Ok(ReadOutcome::Eof) => {
                if up.pipe.is_done() {
                    Self::drop_upstream(s, poll, owners, id);
                }
            }
            Ok(_) => {}
            Err(e) => {
                debug!("{}: stream {id} read from {} failed: {e}", s.peer, up.dest);
                let _ = s.conn.stream_reset(id, StreamErrorCode::Other);
                Self::drop_upstream(s, poll, owners, id);
            }
        }
    }

    fn run_timers(&mut self) {
        let now = self.clock.now();
        let std_now = StdInstant::now();
        if self.accept_paused_until.is_some_and(|t| std_now >= t) {
            self.accept_paused_until = None;
            self.accept_all();
        }
        let tokens: Vec<Token> = self.sessions.keys().copied().collect();
        for t in tokens {
            let Some(s) = self.sessions.get_mut(&t) else {
                continue;
            };
            if s.conn.poll_timeout().is_some_and(|d: Instant| d <= now) {
                s.conn.handle_timeout(now);
                self.touched.insert(t);
            }
            let expired: Vec<StreamId> = s
                .upstreams
                .iter()
                .filter(|(_, u)| matches!(u.state, UpstreamState::Connecting { deadline, .. } if std_now >= deadline))
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                info!("{}: stream {id}: connect timed out", s.peer);
                Self::refuse_upstream(
                    s,
                    &self.poll,
                    &mut self.owners,
                    id,
                    StreamErrorCode::TimedOut,
                );
                self.touched.insert(t);
            }
        }
    }

    /// Drains events, retries blocked reads, writes the tunnel, reaps.
    fn service(&mut self, t: Token) {
        for _ in 0..64 {
            let Some(s) = self.sessions.get_mut(&t) else {
                return;
            };
            Self::drain_events(
                s,
                &self.opts,
                &self.resolver,
                &self.poll,
                &mut self.owners,
                &mut self.next_token,
                t,
            );
            // Write the batch of tunnel data each upstream received.
            for id in std::mem::take(&mut s.to_flush) {
                let Some(up) = s.upstreams.get_mut(&id) else {
                    continue;
                };
                up.flush_queued = false;
                match up.pipe.flush() {
                    Ok(n) => s.conn.stream_consumed(id, n),
                    Err(e) => {
                        debug!("{}: stream {id} write to {} failed: {e}", s.peer, up.dest);
                        let _ = s.conn.stream_reset(id, StreamErrorCode::Other);
                        Self::drop_upstream(s, &self.poll, &mut self.owners, id);
                    }
                }
            }
            // Retry upstream reads that stopped for lack of room.
            let blocked: Vec<StreamId> = s
                .upstreams
                .iter()
                .filter(|(_, u)| u.pipe.read_blocked)
                .map(|(id, _)| *id)
                .collect();
            for id in blocked {
                if s.conn.stream_send_capacity(id) > 0 {
                    Self::pump_upstream(s, &self.poll, &mut self.owners, id);
                }
            }
            // Upstreams finished in both directions go away.
            let done: Vec<StreamId> = s
                .upstreams
                .iter()
                .filter(|(_, u)| u.pipe.is_done())
                .map(|(id, _)| *id)
                .collect();
            for id in done {
                Self::drop_upstream(s, &self.poll, &mut self.owners, id);
            }
            let wrote = Self::write_tunnel(s);
            if s.closed && (s.write_failed || s.conn.transmit_pending().is_empty()) {
                self.close_session(t);
                return;
            }
            let more = s.upstreams.values().any(|u| u.pipe.read_blocked) && wrote > 0;
            if !more {
                return;
            }
        }
    }

    fn write_tunnel(s: &mut Session) -> usize {
        let mut total = 0;
        loop {
            let pending = s.conn.transmit_pending();
            if pending.is_empty() || s.write_failed {
                return total;
            }
            match s.sock.write(pending) {
                Ok(n) => {
                    total += n;
                    s.conn.transmit_done(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("{}: write error: {e}", s.peer);
                    s.write_failed = true;
                    s.conn.handle_eof();
                    return total;
                }
            }
        }
    }

    fn close_session(&mut self, t: Token) {
        if let Some(mut s) = self.sessions.remove(&t) {
            let ids: Vec<StreamId> = s.upstreams.keys().copied().collect();
            for id in ids {
                Self::drop_upstream(&mut s, &self.poll, &mut self.owners, id);
            }
            let _ = self.poll.registry().deregister(&mut s.sock);
            self.owners.remove(&t);
        }
    }

    fn begin_shutdown(&mut self) {
        self.shutdown_deadline = Some(StdInstant::now() + SHUTDOWN_GRACE);
        let _ = self.poll.registry().deregister(&mut self.listener);
        for (t, s) in self.sessions.iter_mut() {
            s.conn.go_away(CloseCode::ShuttingDown);
            self.touched.insert(*t);
        }
    }

    fn finish_shutdown(&mut self) {
        let tokens: Vec<Token> = self.sessions.keys().copied().collect();
        for t in tokens {
            if let Some(s) = self.sessions.get_mut(&t) {
                if !s.conn.is_closed() {
                    s.conn.close(CloseCode::ShuttingDown);
                }
                let _ = s.conn.poll_event();
                Self::write_tunnel(s);
            }
            self.close_session(t);
        }
    }
}

/// A non-blocking listener with `SO_REUSEPORT` (and `SO_REUSEADDR`, as
/// `std` sets it), backlog 1024.
fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    Ok(TcpListener::from_std(sock.into()))
}

/// Runs a group from [`Server::bind_group`]: the first server in this
/// thread (handling SIGINT/SIGTERM when `handle_signals`), the others in
/// their own threads; when the first stops, the others are stopped too.
pub fn run_group(servers: Vec<Server>, handle_signals: bool) -> io::Result<()> {
    let mut servers = servers.into_iter();
    let Some(first) = servers.next() else {
        return Ok(());
    };
    let mut others = Vec::new();
    for (i, server) in servers.enumerate() {
        let stop = server.stop_handle();
        let thread = std::thread::Builder::new()
            .name(format!("hytun-server-{}", i + 1))
            .spawn(move || server.run(false))?;
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
    result
}

/// Maps a connect error to the stream error code the client sees.
pub fn error_code(e: &io::Error) -> StreamErrorCode {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => StreamErrorCode::ConnectionRefused,
        io::ErrorKind::HostUnreachable => StreamErrorCode::HostUnreachable,
        io::ErrorKind::NetworkUnreachable => StreamErrorCode::NetworkUnreachable,
        io::ErrorKind::TimedOut => StreamErrorCode::TimedOut,
        _ => StreamErrorCode::Other,
    }
}
