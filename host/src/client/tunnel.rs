//! [`TunnelSession`]: the client's one session with the server. It owns
//! the tunnel socket and its core [`HostConnection`], the
//! Down → (Resolving →) Connecting → Up life cycle with reconnect backoff
//! (a server given by name is looked up on a [`ServerLookup`] pool, off
//! the loop, its answer arriving through the loop's waker), the
//! fail-fast decisions of first contact, the private-key work the
//! handshake hands off (the job handle, the generation that tags the
//! current job, and the server input held while it runs), the map from
//! stream ids to the local connections they carry, the GOAWAY drain, and
//! the session's reverse listeners ([`ReverseListeners`]). It reads, feeds
//! and writes the tunnel socket and hands every stream event, by the local
//! connection's token, to a [`StreamRouter`] (the endpoint's table of local
//! connections); it never touches a local socket.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use hytun_core::{
    AlertReason, ClientConfig, CloseCode, ConnectionError, Event, HandshakeError, HostConnection,
    ListenErrorCode, ListenId, StreamError, StreamErrorCode, StreamId,
};
use log::{debug, error, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token, Waker};

use super::reverse::{ListenRefusal, ReverseListeners};
use super::{ClientError, describe_failure};
use crate::allow::DestHost;
use crate::backoff::Backoff;
use crate::config::{Endpoint, ReverseSpec};
use crate::keywork::{KeyWork, KeyWorkHandle};
use crate::metrics::ClientMetrics;
use crate::resolver::{LookupFn, LoopResolver, ResolverConfig, ResolverPool, SubmitError, Ticket};
use crate::runtime::{Clock, os_rng, random_u64};

/// The tunnel socket's poll token.
pub(super) const TUNNEL: Token = Token(2);
const READ_CHUNK: usize = 256 * 1024;
const TUNNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Server bytes a client keeps while its private-key operation runs: the
/// rest of the server's first flight. More ends the connection.
const MAX_HELD: usize = 64 * 1024;

/// Where the session delivers what its core reports about streams: the
/// endpoint's local connections, named by the token the stream map holds
/// for them. Calls that may end or answer a connection get the session
/// back, to unmap or reset the connection's stream.
pub(super) trait StreamRouter {
    /// The session is up: open streams for the connections that wait.
    fn session_up(&mut self, registry: &Registry, tunnel: &mut TunnelSession);
    /// The server connected the stream `id` that `local` opened.
    fn opened(&mut self, local: Token, id: StreamId);
    /// The server refused the stream of `local` (OPEN_FAIL).
    fn refused(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        local: Token,
        code: StreamErrorCode,
    );
    /// Stream data for `local`.
    fn data(&mut self, local: Token, data: &[u8]);
    /// The server finished the stream of `local` (authenticated FIN).
    fn finished(&mut self, local: Token);
    /// The server reset the stream of `local`.
    fn reset(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        local: Token,
        code: StreamErrorCode,
    );
    /// The stream of `local` has credit again.
    fn writable(&mut self, local: Token);
    /// (`-R`) The server opened stream `id` for a connection `origin`
    /// made to the listener of `spec`.
    fn incoming(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        id: StreamId,
        spec: ReverseSpec,
        origin: String,
    );
    /// The session ended with the streams of `broken` still open.
    fn session_lost(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        broken: Vec<Token>,
        reason: &str,
    );
}

/// What the session needs from the client's options.
pub(super) struct TunnelOptions {
    /// The server's address.
    pub(super) server: Endpoint,
    /// The core configuration (keys, pinned server key, session limits).
    pub(super) core: Arc<ClientConfig>,
    /// Reverse forwards (`-R`) to ask for on every session.
    pub(super) reverse: Vec<ReverseSpec>,
    /// Exit instead of retrying on a key error at first contact.
    pub(super) fail_fast_on_auth: bool,
    /// Exit instead of retrying when the first attempt fails.
    pub(super) fail_fast_on_first_attempt: bool,
}

/// Why no stream could be opened for a local connection.
pub(super) enum OpenError {
    /// Not now: no established session, no stream slot or transmit space,
    /// or the server is going away. The connection keeps waiting.
    Wait,
    /// The core refused it.
    Failed(StreamError),
}

/// The tunnel connection's state.
enum Link {
    Down {
        retry_at: StdInstant,
    },
    /// The server's name is being looked up (off the loop).
    Resolving {
        ticket: Ticket,
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

/// The pool that looks up the server's name when it is given by name: one
/// lookup at a time, answered (or timed out) within the connect timeout,
/// so a slow or dead resolver never stalls the loop's local listeners.
pub(super) struct ServerLookup {
    /// Declared before the pool: dropping it cancels its lookup first.
    lookups: LoopResolver<()>,
    _pool: ResolverPool,
}

const SERVER_LOOKUP: ResolverConfig = ResolverConfig {
    workers: 1,
    max_stuck: 2,
    max_jobs: 1,
    per_session: 1,
    timeout: TUNNEL_CONNECT_TIMEOUT,
};

impl ServerLookup {
    /// A pool resolving with `lookup`, waking the loop with `waker`.
    ///
    /// # Errors
    /// The worker thread could not be started.
    pub(super) fn new(waker: Arc<Waker>, lookup: impl LookupFn) -> io::Result<ServerLookup> {
        let pool = ResolverPool::with_lookup(SERVER_LOOKUP, lookup)?;
        Ok(ServerLookup {
            lookups: pool.attach(waker),
            _pool: pool,
        })
    }
}

/// The client's tunnel session (one at a time, re-established on demand).
pub(super) struct TunnelSession {
    server: Endpoint,
    /// Looks up `server` when it is a name.
    server_lookup: Option<ServerLookup>,
    core: Arc<ClientConfig>,
    fail_fast_on_auth: bool,
    fail_fast_on_first_attempt: bool,
    link: Link,
    /// Stream → the local connection it carries.
    streams: HashMap<StreamId, Token>,
    established_once: bool,
    backoff: Backoff,
    clock: Clock,
    scratch: Vec<u8>,
    /// Why the client must stop, once it must.
    fatal: Option<ClientError>,
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
    reverse: ReverseListeners,
    /// Counts the sessions that came up (their core connection started):
    /// names the current one, since a new session reuses stream ids.
    serial: u64,
}

impl TunnelSession {
    /// A session that is down and due to connect at once. Its private-key
    /// operations go to `key_pool` through `key_jobs`.
    pub(super) fn new(
        opts: TunnelOptions,
        key_pool: KeyWork,
        key_jobs: KeyWorkHandle,
        metrics: Arc<ClientMetrics>,
    ) -> TunnelSession {
        TunnelSession {
            server: opts.server,
            server_lookup: None,
            core: opts.core,
            fail_fast_on_auth: opts.fail_fast_on_auth,
            fail_fast_on_first_attempt: opts.fail_fast_on_first_attempt,
            link: Link::Down {
                retry_at: StdInstant::now(),
            },
            streams: HashMap::new(),
            established_once: false,
            backoff: Backoff::new(),
            clock: Clock::default(),
            scratch: vec![0; READ_CHUNK],
            fatal: None,
            _key_pool: key_pool,
            key_jobs,
            key_generation: 0,
            held: Vec::new(),
            metrics,
            reverse: ReverseListeners::new(opts.reverse),
            serial: 0,
        }
    }

    /// Where the server's name is looked up (needed when it is a name).
    pub(super) fn set_server_lookup(&mut self, lookup: ServerLookup) {
        self.server_lookup = Some(lookup);
    }

    /// True if the server is given by name (and so needs a lookup).
    pub(super) fn server_is_a_name(&self) -> bool {
        matches!(self.server.host, DestHost::Domain(_))
    }

    /// Why the client must stop, if it must (taken once).
    pub(super) fn take_fatal(&mut self) -> Option<ClientError> {
        self.fatal.take()
    }

    /// Names the current (or last) session: different for every session.
    pub(super) fn session_serial(&self) -> u64 {
        self.serial
    }

    /// Counts a new session without a server (tests of what must not
    /// outlive a session).
    #[cfg(test)]
    pub(super) fn pretend_new_session(&mut self) {
        self.serial += 1;
    }

    /// Streams the session carries.
    pub(super) fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The core connection of a session that is up (possibly closed).
    pub(super) fn conn_mut(&mut self) -> Option<&mut HostConnection> {
        match &mut self.link {
            Link::Up { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// True when the session is up and its core connection has closed.
    pub(super) fn is_closed(&self) -> bool {
        matches!(&self.link, Link::Up { conn, .. } if conn.is_closed())
    }

    /// Records that stream `id` carries local connection `local`.
    pub(super) fn bind_stream(&mut self, id: StreamId, local: Token) {
        self.streams.insert(id, local);
    }

    /// Forgets the local connection of stream `id`.
    pub(super) fn forget_stream(&mut self, id: StreamId) {
        self.streams.remove(&id);
    }

    /// Resets stream `id` (Cancelled) if the session is up; fails
    /// harmlessly when the stream or session is gone.
    pub(super) fn cancel_stream(&mut self, id: StreamId) {
        if let Some(conn) = self.conn_mut() {
            let _ = conn.stream_reset(id, StreamErrorCode::Cancelled);
        }
    }

    /// (`-R`) Refuses a server-opened stream.
    pub(super) fn refuse_incoming(&mut self, id: StreamId, code: StreamErrorCode) {
        if let Some(conn) = self.conn_mut() {
            let _ = conn.refuse_stream(id, code);
        }
    }

    /// Opens a stream to `host:port` for local connection `local` and sends
    /// its `early` bytes as far as the initial credit goes; returns the
    /// stream and how many early bytes went.
    pub(super) fn open_stream(
        &mut self,
        local: Token,
        host: &DestHost,
        port: u16,
        early: &[u8],
    ) -> Result<(StreamId, usize), OpenError> {
        let Link::Up { conn, .. } = &mut self.link else {
            return Err(OpenError::Wait);
        };
        if !conn.is_established() {
            return Err(OpenError::Wait);
        }
        let id = match conn.open_stream(host.destination(port)) {
            Ok(id) => id,
            // Retried when streams end / the buffer drains (service loop).
            Err(StreamError::TooManyStreams | StreamError::Blocked) => {
                return Err(OpenError::Wait);
            }
            // The server sent GOAWAY: this session takes no new streams.
            // The connection waits for the next session, which the service
            // loop starts at once.
            Err(StreamError::GoingAway) => return Err(OpenError::Wait),
            Err(e) => return Err(OpenError::Failed(e)),
        };
        let mut off = 0;
        while off < early.len() {
            match conn.stream_send(id, &early[off..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => off += n,
            }
        }
        self.streams.insert(id, local);
        Ok((id, off))
    }

    /// Time from `now` until the session's next timer.
    pub(super) fn next_timeout(&self, now: StdInstant) -> Option<Duration> {
        match &self.link {
            Link::Down { retry_at } if self.wants_tunnel() => {
                Some(retry_at.saturating_duration_since(now))
            }
            // The lookup answers (or times out) through the loop's waker.
            Link::Down { .. } | Link::Resolving { .. } => None,
            Link::Connecting { deadline, .. } => Some(deadline.saturating_duration_since(now)),
            Link::Up { conn, .. } => conn.poll_timeout().map(|t| self.clock.until(t)),
        }
    }

    /// The tunnel is kept up while the client runs (so the first local
    /// connection pays no handshake), and re-established after failures.
    fn wants_tunnel(&self) -> bool {
        true
    }

    /// Timers: a due reconnect, a connect that took too long, the core's
    /// own timeouts.
    pub(super) fn on_timer<R: StreamRouter>(
        &mut self,
        registry: &Registry,
        router: &mut R,
        now: StdInstant,
    ) {
        match &mut self.link {
            Link::Down { retry_at } => {
                if now >= *retry_at && self.wants_tunnel() {
                    self.start_connect(registry);
                }
            }
            // The lookup's own deadline answers through the waker.
            Link::Resolving { .. } => {}
            Link::Connecting { deadline, addr, .. } => {
                if now >= *deadline {
                    let why = format!("server {addr}: connect timed out");
                    warn!("{why}");
                    if let Link::Connecting { mut sock, .. } =
                        std::mem::replace(&mut self.link, Link::Down { retry_at: now })
                    {
                        let _ = registry.deregister(&mut sock);
                    }
                    self.schedule_retry(why);
                }
            }
            Link::Up { conn, .. } => {
                let now = self.clock.now();
                if conn.poll_timeout().is_some_and(|d| d <= now) {
                    conn.handle_timeout(now);
                    self.drain_events(registry, router);
                }
            }
        }
    }

    /// Starts a connection attempt: at once to an IP address; for a name,
    /// its lookup first, on the [`ServerLookup`] pool, never on the loop.
    fn start_connect(&mut self, registry: &Registry) {
        let name = match &self.server.host {
            DestHost::Ip(ip) => {
                let addr = SocketAddr::new(*ip, self.server.port);
                self.connect_to(registry, addr);
                return;
            }
            DestHost::Domain(name) => name.clone(),
        };
        let submitted = match &self.server_lookup {
            Some(l) => l.lookups.submit(0, (), &name, self.server.port),
            None => Err(SubmitError::Closed),
        };
        match submitted {
            Ok(ticket) => {
                debug!("looking up server {}", self.server);
                self.link = Link::Resolving { ticket };
            }
            Err(e) => {
                let why = format!("cannot resolve server {}: {e}", self.server);
                warn!("{why}");
                self.schedule_retry(why);
            }
        }
    }

    /// Results of the server-name lookup (after a wake): a current one
    /// starts the connect, a failed one schedules a retry.
    pub(super) fn take_server_lookup(&mut self, registry: &Registry) {
        let Some(l) = &self.server_lookup else {
            return;
        };
        let mut results = Vec::new();
        while let Some(r) = l.lookups.try_result() {
            results.push(r);
        }
        for r in results {
            if !matches!(&self.link, Link::Resolving { ticket } if *ticket == r.ticket) {
                continue;
            }
            self.link = Link::Down {
                retry_at: StdInstant::now(),
            };
            match r.result.map(|addrs| addrs.first().copied()) {
                Ok(Some(addr)) => self.connect_to(registry, addr),
                Ok(None) => {
                    let why = format!("server {} resolved to no address", self.server);
                    warn!("{why}");
                    self.schedule_retry(why);
                }
                Err(e) => {
                    let why = format!("cannot resolve server {}: {e}", self.server);
                    warn!("{why}");
                    self.schedule_retry(why);
                }
            }
        }
    }

    /// Opens the tunnel socket to `addr` (non-blocking).
    fn connect_to(&mut self, registry: &Registry, addr: SocketAddr) {
        match TcpStream::connect(addr) {
            Ok(mut sock) => {
                if let Err(e) =
                    registry.register(&mut sock, TUNNEL, Interest::READABLE | Interest::WRITABLE)
                {
                    let why = format!("cannot register tunnel socket: {e}");
                    warn!("{why}");
                    self.schedule_retry(why);
                    return;
                }
                debug!("connecting to server {addr}");
                self.link = Link::Connecting {
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
        if self.fail_fast_on_first_attempt && !self.established_once && self.fatal.is_none() {
            self.fatal = Some(ClientError::Unreachable(format!(
                "cannot establish a tunnel to {}: {why}",
                self.server
            )));
        }
        if self.fatal.is_some() {
            // The client is about to exit: no retry to announce.
            return;
        }
        let delay = self.backoff.next_delay(random_u64());
        info!(
            "reconnecting to {} in {} ms",
            self.server,
            delay.as_millis()
        );
        self.link = Link::Down {
            retry_at: StdInstant::now() + delay,
        };
    }

    /// Readiness on the tunnel socket: completes a pending connect (and
    /// starts the handshake), then reads.
    pub(super) fn on_ready<R: StreamRouter>(
        &mut self,
        registry: &Registry,
        router: &mut R,
        readable: bool,
        read_closed: bool,
    ) {
        if let Link::Connecting { sock, addr, .. } = &mut self.link {
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
                if let Link::Connecting { mut sock, .. } = std::mem::replace(
                    &mut self.link,
                    Link::Down {
                        retry_at: StdInstant::now(),
                    },
                ) {
                    let _ = registry.deregister(&mut sock);
                }
                self.schedule_retry(why);
                return;
            }
            let _ = sock.set_nodelay(true);
            let mut conn = Box::new(HostConnection::client(
                self.core.clone(),
                self.clock.now(),
                &mut os_rng(),
            ));
            conn.defer_private_key_ops(true);
            self.held.clear();
            self.serial += 1;
            if let Link::Connecting { sock, .. } = std::mem::replace(
                &mut self.link,
                Link::Down {
                    retry_at: StdInstant::now(),
                },
            ) {
                self.link = Link::Up {
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
            self.read(registry, router, read_closed);
        }
    }

    /// Reads and handles tunnel input. A short read ends the pass (the
    /// socket is drained and the next arrival raises a new event) unless
    /// the event said the server's FIN is already queued.
    fn read<R: StreamRouter>(&mut self, registry: &Registry, router: &mut R, read_closed: bool) {
        loop {
            let Link::Up { sock, conn, .. } = &mut self.link else {
                return;
            };
            if conn.is_closed() {
                return;
            }
            match sock.read(&mut self.scratch) {
                Ok(0) => {
                    conn.handle_eof();
                    self.drain_events(registry, router);
                    return;
                }
                Ok(n) => {
                    self.metrics.tunnel_received(n);
                    let input = std::mem::take(&mut self.scratch);
                    self.feed(registry, router, &input[..n]);
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
                    self.drain_events(registry, router);
                    return;
                }
            }
        }
    }

    /// Feeds tunnel input to the core. When the handshake stops for the
    /// client's private-key operation, the operation goes to the key
    /// worker and the rest of the input waits in `held` until the result
    /// is back ([`Self::take_key_results`]).
    fn feed<R: StreamRouter>(&mut self, registry: &Registry, router: &mut R, input: &[u8]) {
        let now = self.clock.now();
        let mut rng = os_rng();
        let mut off = 0;
        while off < input.len() {
            let Link::Up { conn, .. } = &mut self.link else {
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
                    self.drain_events(registry, router);
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
            self.drain_events(registry, router);
            if stuck {
                // The core takes input whenever its events are drained;
                // anything else is a bug, not a reason to spin.
                return;
            }
        }
    }

    /// The key worker finished: completes the handshake step it held up
    /// and feeds what arrived meanwhile.
    pub(super) fn take_key_results<R: StreamRouter>(
        &mut self,
        registry: &Registry,
        router: &mut R,
    ) {
        let mut results = Vec::new();
        self.key_jobs.drain(|token, r| results.push((token, r)));
        for (token, result) in results {
            let Link::Up { conn, .. } = &mut self.link else {
                continue;
            };
            if token != self.key_generation || !conn.awaits_private_key_op() {
                continue;
            }
            conn.complete_private_key_op(result);
            self.drain_events(registry, router);
            let held = std::mem::take(&mut self.held);
            if !held.is_empty() {
                self.feed(registry, router, &held);
            }
        }
    }

    /// Handles the core's events: session events here, stream events
    /// routed to their local connections.
    pub(super) fn drain_events<R: StreamRouter>(&mut self, registry: &Registry, router: &mut R) {
        loop {
            let Link::Up {
                conn,
                started,
                addr,
                going_away,
                ..
            } = &mut self.link
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
                    router.session_up(registry, self);
                    self.request_listeners();
                }
                Event::Opened { id } => {
                    self.metrics.stream_opened();
                    if let Some(&t) = self.streams.get(&id) {
                        router.opened(t, id);
                    }
                }
                Event::OpenFailed { id, code } => {
                    self.metrics.stream_refused(code);
                    if let Some(&t) = self.streams.get(&id) {
                        router.refused(registry, self, t, code);
                    }
                }
                Event::Data { id, data } => {
                    if let Some(&t) = self.streams.get(&id) {
                        router.data(t, data);
                    }
                }
                Event::Finished { id } => {
                    if let Some(&t) = self.streams.get(&id) {
                        router.finished(t);
                    }
                }
                Event::Reset { id, code } => {
                    if let Some(&t) = self.streams.get(&id) {
                        router.reset(registry, self, t, code);
                    }
                }
                Event::Writable { id } => {
                    if let Some(&t) = self.streams.get(&id) {
                        router.writable(t);
                    }
                }
                Event::GoAway { code } => {
                    info!(
                        "server is going away: {code}; new connections wait for the next session"
                    );
                    *going_away = true;
                }
                Event::OpenRequest { .. } | Event::ListenRequest { .. } => {
                    // The core refuses OPEN and LISTEN from a server.
                    debug!("ignoring a server-side request on the client");
                }
                Event::IncomingStream { id, listen, origin } => {
                    let origin = origin.to_string();
                    match self.reverse.target(listen).cloned() {
                        Some(spec) => router.incoming(registry, self, id, spec, origin),
                        // The core only reports streams for granted listeners.
                        None => self.refuse_incoming(id, StreamErrorCode::Other),
                    }
                }
                Event::ListenGranted { id } => self.reverse.on_granted(id),
                Event::ListenRefused { id, code } => self.on_listen_refused(id, code),
                Event::Closed { error } => {
                    self.on_closed(registry, router, error);
                    return;
                }
            }
        }
    }

    /// A session is up: asks the server for every reverse forward.
    fn request_listeners(&mut self) {
        if let Link::Up { conn, .. } = &mut self.link {
            self.reverse.request_all(conn);
        }
    }

    fn on_listen_refused(&mut self, id: ListenId, code: ListenErrorCode) {
        match self.reverse.on_refused(id, code) {
            Some(ListenRefusal::Fatal(msg)) if self.fatal.is_none() => {
                self.fatal = Some(ClientError::ReverseRefused(msg));
            }
            None | Some(ListenRefusal::Fatal(_)) => {}
            Some(ListenRefusal::Reconnect) => {
                if let Some(conn) = self.conn_mut() {
                    conn.close(CloseCode::Normal);
                }
            }
        }
    }

    fn on_closed<R: StreamRouter>(
        &mut self,
        registry: &Registry,
        router: &mut R,
        error: ConnectionError,
    ) {
        self.metrics.session_closed(&error);
        let auth = is_key_error(&error);
        let pinned = self.core.server.id();
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
                    self.core.identity.public().id()
                )
            }
            _ => String::new(),
        };
        let fatal = auth && self.fail_fast_on_auth && !self.established_once;
        if fatal {
            // The final error says it all; no log line, no "reconnecting".
            self.fatal = Some(ClientError::Authentication(format!(
                "{}{hint}",
                describe_failure(&self.server, &error)
            )));
        } else if auth {
            error!("{}{hint}", describe_failure(&self.server, &error));
        } else if matches!(error, ConnectionError::LocallyClosed(_)) {
            info!("session to {} closed: {error}", self.server);
        } else {
            warn!("tunnel to {} lost: {error}", self.server);
        }
        // Flush a final CLOSE if there is one, then drop the socket.
        if let Link::Up {
            sock,
            conn,
            write_failed,
            ..
        } = &mut self.link
        {
            if !*write_failed {
                let pending = conn.transmit_pending();
                let _ = sock.write(pending);
            }
            let _ = registry.deregister(sock);
        }
        let reason = session_end_reason(&error);
        let broken: Vec<Token> = self.streams.drain().map(|(_, t)| t).collect();
        router.session_lost(registry, self, broken, &reason);
        self.schedule_retry(describe_failure(&self.server, &error));
    }

    /// A session the server is retiring (GOAWAY) is closed as soon as its
    /// last stream ends, so connections waiting for a stream get a new
    /// session at once instead of waiting for the server's own CLOSE.
    pub(super) fn retire_if_drained<R: StreamRouter>(
        &mut self,
        registry: &Registry,
        router: &mut R,
    ) {
        if let Link::Up {
            conn, going_away, ..
        } = &mut self.link
            && *going_away
            && self.streams.is_empty()
            && !conn.is_closed()
        {
            info!("last stream of the retiring session ended; closing it");
            conn.close(CloseCode::Normal);
            self.drain_events(registry, router);
        }
    }

    /// Writes what the core has to send; returns the bytes written.
    pub(super) fn write(&mut self) -> usize {
        let Link::Up {
            sock,
            conn,
            write_failed,
            ..
        } = &mut self.link
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

    /// The client stops: closes the session and sends the CLOSE once.
    pub(super) fn shutdown(&mut self) {
        if let Link::Up { sock, conn, .. } = &mut self.link {
            if !conn.is_closed() {
                conn.close(CloseCode::Normal);
            }
            while conn.poll_event().is_some() {}
            let pending = conn.transmit_pending().to_vec();
            let _ = sock.write(&pending);
        }
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
