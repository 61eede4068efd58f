//! One client connection on the server, from accept to close: its tunnel
//! socket, the first-flight buffer while it is pending, the core
//! [`HostConnection`] once its ClientHello is admitted, its upstream
//! sockets, its remote listeners (`-R`, [`super::listener`]) and the
//! streams it opens for connections accepted on them, and its share of the
//! server budgets (memory reserved for receive credit, descriptors held by
//! upstreams and listeners, lookups in flight).
//!
//! The event loop ([`super::event_loop`]) only routes readiness to a
//! session and gives it a [`Ctx`] with the shared pieces; everything a
//! session holds is released by [`Session::close`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant as StdInstant;

use hytun_core::handshake::{ServerHelloJob, ServerHelloReply};
use hytun_core::{
    CloseCode, ConnectionError, Event, HandshakeError, Host, HostConnection, ListenErrorCode,
    ListenId, StreamErrorCode, StreamId,
};
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Registry, Token};

use super::admission::{FirstFlight, FlightProgress, HeaderRefusal};
use super::budget::Permit;
use super::listener::{self, RemoteListener};
use super::proxy_header::Header;
use super::upstream::{ConnectProgress, Upstream, UpstreamState, error_code};
use super::{Shared, UPSTREAM_CONNECT_TIMEOUT};
use crate::allow::DestHost;
use crate::keywork::KeyWorkHandle;
use crate::metrics::ServerMetrics;
use crate::pipe::{ReadOutcome, Readiness};
use crate::resolver::{self, LookupError, LoopResolver, SubmitError, Ticket};
use crate::runtime::{Clock, os_rng};

/// Memory charged per stream besides its receive credit (the upstream's
/// state and pipe bookkeeping).
pub const STREAM_OVERHEAD: usize = 1024;

/// The first growth allowance a session asks for beyond its streams'
/// initial windows; later steps double what is in use.
const GROWTH_STEP: usize = 256 * 1024;

/// The most input held while a handshake waits for its private-key
/// operation.
const MAX_HELD: usize = 17 * 1024;

/// The refusal code for a spent budget.
pub const RESOURCE_EXHAUSTED: StreamErrorCode = StreamErrorCode::ResourceExhausted;

/// What a poll token belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// A session's tunnel socket.
    Session,
    /// An upstream socket of a session's stream.
    Upstream(Token, StreamId),
    /// A remote listener of a session (`-R`).
    Listener(Token, ListenId),
}

/// Token allocation and routing for one event loop. Tokens are never
/// reused, so a late event for a closed socket finds no route.
#[derive(Debug)]
pub struct Routes {
    map: HashMap<Token, Route>,
    next: usize,
}

impl Routes {
    /// Dynamic tokens start at `first`.
    pub fn new(first: usize) -> Self {
        Routes {
            map: HashMap::new(),
            next: first,
        }
    }

    /// A fresh token routed to `route`.
    pub fn add(&mut self, route: Route) -> Token {
        self.next += 1;
        let t = Token(self.next);
        self.map.insert(t, route);
        t
    }

    /// Where `token` goes.
    pub fn get(&self, token: Token) -> Option<Route> {
        self.map.get(&token).copied()
    }

    /// Forgets `token`.
    pub fn remove(&mut self, token: Token) {
        self.map.remove(&token);
    }
}

/// What a session borrows from its loop while it handles an event.
pub struct Ctx<'a> {
    /// The loop's registry.
    pub registry: &'a Registry,
    /// The loop's token table.
    pub routes: &'a mut Routes,
    /// Options and budgets shared by every loop.
    pub shared: &'a Shared,
    /// The name resolver.
    pub dns: &'a LoopResolver<(Token, StreamId)>,
    /// The loop's clock.
    pub clock: &'a Clock,
    /// The loop's read buffer for tunnel input.
    pub scratch: &'a mut Vec<u8>,
    /// The private-key worker pool.
    pub keys: &'a KeyWorkHandle<ServerHelloJob>,
}

/// What reading the tunnel socket produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadResult {
    /// Nothing that needs the loop.
    Progress,
    /// (pending) The first message is complete: the loop decides whether
    /// to admit it ([`Session::start_core`]) or refuse it.
    HelloReady,
    /// (pending) The peer went away before completing its first message.
    Gone,
    /// (pending) A trusted proxy's PROXY header is complete: the loop
    /// accounts the session to its real client, then reads on.
    Proxied(Header),
    /// (pending) Refused over a PROXY header; close without a handshake.
    Refused(HeaderRefusal),
}

enum Phase {
    /// Reading the first message, no core yet.
    Pending(FirstFlight),
    /// The core drives the session.
    Core(Box<HostConnection>),
}

/// One client connection.
pub struct Session {
    /// This session's poll token.
    pub token: Token,
    /// The client's address.
    pub peer: SocketAddr,
    sock: TcpStream,
    phase: Phase,
    upstreams: HashMap<StreamId, Upstream>,
    /// Remote listeners granted to the client.
    listeners: HashMap<ListenId, RemoteListener>,
    /// Upstreams that received tunnel data since the last flush.
    to_flush: Vec<StreamId>,
    started: StdInstant,
    /// The handshake finished (`Connected`).
    pub established: bool,
    closed: bool,
    /// A poll event reported the client's FIN or an error.
    read_closed: bool,
    write_failed: bool,
    /// Bytes reserved from the server memory pool (fixed state, each
    /// stream's initial window and bookkeeping, and `growth`).
    charged: usize,
    /// The part of `charged` that lets stream windows grow past their
    /// initial size (the core's receive budget beyond the initial windows).
    growth: usize,
    /// When tunnel bytes last moved either way.
    last_io: StdInstant,
    /// Buffers were given back and nothing moved since.
    released: bool,
    /// Input that arrived while the handshake waited for its private-key
    /// operation (fed once the result is back).
    held: Vec<u8>,
    /// The worker pool refused this session's private-key operation.
    key_refused: bool,
    metrics: Arc<ServerMetrics>,
}

impl Session {
    /// A freshly accepted connection, pending its first message.
    pub fn new(
        token: Token,
        peer: SocketAddr,
        sock: TcpStream,
        metrics: Arc<ServerMetrics>,
    ) -> Self {
        Session {
            token,
            peer,
            sock,
            phase: Phase::Pending(FirstFlight::default()),
            upstreams: HashMap::new(),
            listeners: HashMap::new(),
            to_flush: Vec::new(),
            started: StdInstant::now(),
            established: false,
            closed: false,
            read_closed: false,
            write_failed: false,
            charged: 0,
            growth: 0,
            last_io: StdInstant::now(),
            released: false,
            held: Vec::new(),
            key_refused: false,
            metrics,
        }
    }

    /// The peer is a trusted proxy: a PROXY header must come first.
    pub fn expect_proxy_header(&mut self) {
        self.phase = Phase::Pending(FirstFlight::behind_proxy());
    }

    /// The tunnel socket (for registration).
    /// A poll event said the client's FIN (or an error) is queued: the
    /// next read pass goes on to it.
    pub fn note_read_closed(&mut self) {
        self.read_closed = true;
    }

    pub fn sock_mut(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// When this connection was accepted.
    pub fn started(&self) -> StdInstant {
        self.started
    }

    /// True while the core has not been started.
    pub fn is_pending(&self) -> bool {
        matches!(self.phase, Phase::Pending(_))
    }

    /// Why the core ended the session, once it has.
    pub fn error(&self) -> Option<ConnectionError> {
        match &self.phase {
            Phase::Core(c) => c.error(),
            Phase::Pending(_) => None,
        }
    }

    /// Streams with an upstream.
    pub fn stream_count(&self) -> usize {
        self.upstreams.len()
    }

    /// The client's key, once the handshake has completed.
    pub fn client_key(&self) -> Option<hytun_core::KeyId> {
        match &self.phase {
            Phase::Core(c) => c.peer_key(),
            Phase::Pending(_) => None,
        }
    }

    /// The first message arrived (pending sessions only).
    pub fn hello_started(&self) -> bool {
        match &self.phase {
            Phase::Pending(f) => f.started(),
            Phase::Core(_) => true,
        }
    }

    fn conn(&mut self) -> Option<&mut HostConnection> {
        match &mut self.phase {
            Phase::Core(c) => Some(c),
            Phase::Pending(_) => None,
        }
    }

    /// The earliest core deadline, as a `std` instant.
    pub fn next_deadline(&self, clock: &Clock) -> Option<StdInstant> {
        let mut next = None;
        let mut take = |t: StdInstant| next = Some(next.map_or(t, |n: StdInstant| n.min(t)));
        if let Phase::Core(c) = &self.phase
            && let Some(t) = c.poll_timeout()
        {
            take(StdInstant::now() + clock.until(t));
        }
        for up in self.upstreams.values() {
            if let Some(d) = up.connect_deadline() {
                take(d);
            }
        }
        next
    }

    /// Sends the Busy alert (best effort: the socket is new and its send
    /// buffer empty) before the connection is dropped.
    pub fn send_busy(&mut self) {
        let mut alert = [0u8; 8];
        let n = hytun_core::handshake::emit_alert(hytun_core::AlertReason::Busy, None, &mut alert);
        let _ = self.sock.write(&alert[..n]);
    }

    /// Reads what the tunnel socket has.
    pub fn on_readable(&mut self, ctx: &mut Ctx<'_>) -> ReadResult {
        if self.closed {
            return ReadResult::Progress;
        }
        if let Phase::Pending(flight) = &mut self.phase {
            return match flight.read_from(&mut self.sock) {
                Ok(FlightProgress::Partial) => ReadResult::Progress,
                Ok(FlightProgress::Complete) => ReadResult::HelloReady,
                Ok(FlightProgress::Proxied(h)) => ReadResult::Proxied(h),
                Ok(FlightProgress::Refused(why)) => ReadResult::Refused(why),
                Ok(FlightProgress::Eof) | Err(_) => ReadResult::Gone,
            };
        }
        self.read_tunnel(ctx);
        ReadResult::Progress
    }

    /// Admits the pending session: charges its fixed memory, creates the
    /// core and feeds it the first message (whose reply, with every costly
    /// step of the server's handshake, goes to the worker pool). False if
    /// the memory budget cannot hold another session.
    pub fn start_core(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let Phase::Pending(flight) = &self.phase else {
            return true;
        };
        let fixed = session_fixed_cost();
        if !ctx.shared.memory.try_take(fixed) {
            return false;
        }
        self.charged += fixed;
        let first = flight.bytes().to_vec();
        let mut conn = Box::new(HostConnection::server(
            ctx.shared.core.clone(),
            ctx.clock.now(),
        ));
        // The reply to the ClientHello (X25519, RSA encryption to the
        // client key, the private-key operation) runs on the worker pool,
        // not on this loop.
        conn.defer_private_key_ops(true);
        self.phase = Phase::Core(conn);
        self.rebalance_memory(ctx.shared);
        self.feed(ctx, &first);
        // More of the client's flight may be waiting already.
        self.read_tunnel(ctx);
        true
    }

    /// True if the worker pool refused this session's handshake job (the
    /// loop then answers Busy).
    pub fn key_queue_full(&self) -> bool {
        self.key_refused
    }

    /// Feeds tunnel input to the core, draining events as it goes. Input
    /// that arrives while the handshake waits for its reply to the
    /// ClientHello is held until the result is back; the job itself goes
    /// to the worker pool.
    fn feed(&mut self, ctx: &mut Ctx<'_>, input: &[u8]) {
        if !self.held.is_empty() {
            self.hold(input);
            return;
        }
        let mut off = 0;
        let mut rng = os_rng();
        while off < input.len() {
            let now = ctx.clock.now();
            let Phase::Core(c) = &mut self.phase else {
                break;
            };
            let used = c.handle_input(&input[off..], now, &mut rng);
            off += used;
            if let Some(job) = c.take_server_hello_job()
                && ctx.keys.try_submit(self.token.0 as u64, job).is_err()
            {
                self.key_refused = true;
                return;
            }
            let done = c.is_closed();
            let waiting = c.awaits_private_key_op();
            self.drain_events(ctx);
            if done {
                return;
            }
            if waiting {
                // A legitimate client sends nothing more before the
                // ServerHello; whatever came is fed after the result.
                self.hold(&input[off..]);
                return;
            }
            if used == 0 {
                // The core takes input whenever its events are drained (as
                // they are here); anything else is a bug, not a reason to
                // spin.
                debug!("{}: core took no input: closed", self.peer);
                self.closed = true;
                self.write_failed = true;
                return;
            }
        }
    }

    /// Keeps input for after the private-key operation. A legitimate
    /// client sends nothing while it waits for the ServerHello, so more
    /// than one record's worth ends the session instead of growing.
    fn hold(&mut self, input: &[u8]) {
        if self.held.len() + input.len() > MAX_HELD {
            debug!(
                "{}: sent {} bytes while its handshake waited: closed",
                self.peer,
                self.held.len() + input.len()
            );
            self.held = Vec::new();
            self.closed = true;
            self.write_failed = true;
            return;
        }
        self.held.extend_from_slice(input);
    }

    /// The worker pool finished this session's reply to the ClientHello.
    pub fn on_key_result(&mut self, ctx: &mut Ctx<'_>, reply: ServerHelloReply) {
        let Phase::Core(c) = &mut self.phase else {
            return;
        };
        c.complete_server_hello_job(reply);
        self.drain_events(ctx);
        let held = std::mem::take(&mut self.held);
        if !held.is_empty() {
            self.feed(ctx, &held);
        }
    }

    fn read_tunnel(&mut self, ctx: &mut Ctx<'_>) {
        loop {
            if self.closed {
                return;
            }
            let n = match self.sock.read(ctx.scratch) {
                Ok(0) => {
                    if let Some(c) = self.conn() {
                        c.handle_eof();
                    }
                    self.drain_events(ctx);
                    return;
                }
                Ok(n) => {
                    self.metrics.tunnel_received(n);
                    self.last_io = StdInstant::now();
                    self.released = false;
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("{}: read error: {e}", self.peer);
                    if let Some(c) = self.conn() {
                        c.handle_eof();
                    }
                    self.drain_events(ctx);
                    return;
                }
            };
            let input = std::mem::take(ctx.scratch);
            self.feed(ctx, &input[..n]);
            *ctx.scratch = input;
            // A short read means the socket is drained: skip the extra
            // read that would only return EAGAIN (unless the client's FIN
            // is already queued: no later event would report it).
            if n < ctx.scratch.len() && !self.read_closed {
                return;
            }
        }
    }

    /// Handles every pending core event.
    fn drain_events(&mut self, ctx: &mut Ctx<'_>) {
        loop {
            let Phase::Core(conn) = &mut self.phase else {
                return;
            };
            let Some(ev) = conn.poll_event() else {
                return;
            };
            match ev {
                Event::Connected => {
                    self.established = true;
                    self.metrics.handshake_ok(self.started.elapsed());
                    let key = conn.peer_key().map(|k| k.to_string()).unwrap_or_default();
                    info!(
                        "{}: session up, client key {key}, handshake {} ms",
                        self.peer,
                        self.started.elapsed().as_millis()
                    );
                }
                Event::OpenRequest { id, dest } => {
                    let host = match dest.host {
                        Host::Ipv4(a) => DestHost::Ip(IpAddr::from(a)),
                        Host::Ipv6(a) => DestHost::Ip(IpAddr::from(a)),
                        Host::Domain(d) => DestHost::Domain(d.to_string()),
                    };
                    let port = dest.port;
                    self.open_stream(ctx, id, host, port);
                }
                Event::Data { id, data } => {
                    if let Some(up) = self.upstreams.get_mut(&id) {
                        up.pipe.queue_tunnel(data);
                        if !up.flush_queued {
                            up.flush_queued = true;
                            self.to_flush.push(id);
                        }
                    }
                }
                Event::Finished { id } => {
                    if let Some(up) = self.upstreams.get_mut(&id) {
                        up.pipe.tunnel_fin = true;
                        if let Ok(n) = up.pipe.flush() {
                            conn.stream_consumed(id, n);
                        }
                    }
                }
                Event::Reset { id, code } => {
                    if self.upstreams.contains_key(&id) {
                        self.end_upstream(ctx, id, End::Abort(&format!("reset by client: {code}")));
                    }
                }
                Event::Closed { error } => {
                    log_close(self.peer, &error);
                    self.closed = true;
                    return;
                }
                Event::ListenRequest { id, bind } => {
                    let label = bind.to_string();
                    let addr = listener::bind_addr(&bind);
                    self.listen(ctx, id, &label, addr);
                }
                Event::Opened { id } => {
                    if let Some(up) = self.upstreams.get(&id) {
                        debug!(
                            "{}: stream {id} from {} accepted by the client",
                            self.peer, up.dest
                        );
                    }
                }
                Event::OpenFailed { id, code } => {
                    if self.upstreams.contains_key(&id) {
                        let why = format!("refused by the client: {code}");
                        self.end_upstream(ctx, id, End::Abort(&why));
                    }
                }
                Event::Writable { .. }
                | Event::GoAway { .. }
                | Event::ListenGranted { .. }
                | Event::ListenRefused { .. }
                | Event::IncomingStream { .. } => {}
            }
        }
    }

    /// Answers an OPEN: policy, budgets, then lookup or connect.
    fn open_stream(&mut self, ctx: &mut Ctx<'_>, id: StreamId, host: DestHost, port: u16) {
        let label = host.with_port(port);
        let allow = &ctx.shared.allow;
        let needs_lookup = match &host {
            DestHost::Ip(_) => {
                if !allow.allows(&host, port) {
                    return self.refuse(id, &label, StreamErrorCode::NotAllowed, "not allowed");
                }
                false
            }
            DestHost::Domain(_) => true,
        };
        // Budgets: receive credit (the initial window the client may
        // already be using) plus bookkeeping, and one descriptor.
        let need = self.stream_cost(ctx.shared);
        if self.charged + need > ctx.shared.limits.session_memory {
            ctx.shared.note_spent("session memory budget spent");
            return self.refuse(
                id,
                &label,
                RESOURCE_EXHAUSTED,
                "session memory budget spent",
            );
        }
        if !ctx.shared.memory.try_take(need) {
            ctx.shared.note_spent("server memory budget spent");
            return self.refuse(id, &label, RESOURCE_EXHAUSTED, "server memory budget spent");
        }
        self.charged += need;
        let fds = self.upstreams.values().filter(|u| u.holds_fd()).count();
        if fds >= ctx.shared.fd_share_per_session() {
            self.give_back(ctx.shared, need);
            ctx.shared.note_spent("session descriptor share spent");
            return self.refuse(
                id,
                &label,
                RESOURCE_EXHAUSTED,
                "session descriptor share spent",
            );
        }
        let Some(fd) = Permit::take(&ctx.shared.fds) else {
            self.give_back(ctx.shared, need);
            ctx.shared.note_spent("descriptor budget spent");
            return self.refuse(id, &label, RESOURCE_EXHAUSTED, "descriptor budget spent");
        };
        let mut up = Upstream::new(label);
        match host {
            DestHost::Domain(name) if needs_lookup => {
                let key = self.token.0 as u64;
                match ctx
                    .dns
                    .submit_name(allow, key, (self.token, id), &name, port)
                {
                    Ok((ticket, decision)) => {
                        up.hold_fd(fd);
                        up.lookup = Some((ticket, decision));
                        self.upstreams.insert(id, up);
                    }
                    Err(e) => {
                        let code = match e {
                            SubmitError::NotAllowed => StreamErrorCode::NotAllowed,
                            SubmitError::Full | SubmitError::QuotaExceeded => RESOURCE_EXHAUSTED,
                            SubmitError::Closed => StreamErrorCode::SessionClosing,
                        };
                        drop(fd);
                        self.give_back(ctx.shared, need);
                        self.refuse(id, &up.dest, code, &e.to_string());
                    }
                }
            }
            DestHost::Ip(ip) => {
                self.upstreams.insert(id, up);
                self.connect(ctx, id, vec![SocketAddr::new(ip, port)], fd);
            }
            DestHost::Domain(_) => {}
        }
    }

    /// Answers a LISTEN: policy (server list narrowed by the key's own),
    /// the per-session listener limit and a descriptor, then the bind.
    fn listen(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ListenId,
        label: &str,
        addr: Result<SocketAddr, ListenErrorCode>,
    ) {
        let key = self.conn().and_then(|c| c.peer_key());
        let refusal = match addr {
            Err(code) => Err((
                code,
                "the server resolves no name but localhost".to_string(),
            )),
            Ok(addr) if !ctx.shared.listen_policy.allows(key, addr) => Err((
                ListenErrorCode::NotPermitted,
                "not permitted for this key (see --permit-listen)".to_string(),
            )),
            Ok(_)
                if self.listeners.len()
                    >= ctx
                        .shared
                        .limits
                        .max_listeners
                        .min(listener::MAX_LISTENERS_PER_SESSION) =>
            {
                Err((
                    ListenErrorCode::TooManyListeners,
                    format!(
                        "session listener limit {} reached",
                        ctx.shared.limits.max_listeners
                    ),
                ))
            }
            Ok(addr) => match Permit::take(&ctx.shared.fds) {
                None => {
                    ctx.shared.note_spent("descriptor budget spent");
                    Err((
                        ListenErrorCode::ResourceExhausted,
                        "descriptor budget spent".into(),
                    ))
                }
                Some(fd) => {
                    let token = ctx.routes.add(Route::Listener(self.token, id));
                    match RemoteListener::bind(id, addr, ctx.registry, token, fd) {
                        Ok(l) => Ok(l),
                        Err(e) => {
                            ctx.routes.remove(token);
                            Err((listener::bind_error_code(&e), e.to_string()))
                        }
                    }
                }
            },
        };
        let peer = self.peer;
        let Some(conn) = self.conn() else {
            return;
        };
        match refusal {
            Ok(l) => {
                if conn.grant_listen(id).is_err() {
                    ctx.routes.remove(l.token);
                    l.close(ctx.registry);
                    return;
                }
                info!("{peer}: listening on {} for the client ({id})", l.addr);
                self.listeners.insert(id, l);
            }
            Err((code, why)) => {
                info!("{peer}: listen on {label} refused: {code} ({why})");
                let _ = conn.refuse_listen(id, code);
            }
        }
    }

    /// Accept readiness on remote listener `id`: every pending connection
    /// becomes a stream opened toward the client, within the same budgets
    /// as a client's OPEN (memory for its window and bookkeeping, one
    /// descriptor, the session's descriptor share, the stream limit);
    /// a connection over budget is reset.
    pub fn on_listener(&mut self, ctx: &mut Ctx<'_>, id: ListenId) {
        loop {
            let Some(l) = self.listeners.get(&id) else {
                return;
            };
            let (sock, peer) = match l.accept() {
                Ok(v) => v,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("{}: accept on {} failed: {e}", self.peer, l.addr);
                    return;
                }
            };
            let local = l.addr;
            if let Err(why) = self.open_incoming(ctx, id, sock, peer) {
                info!(
                    "{}: connection from {peer} on {local} reset: {why}",
                    self.peer
                );
            }
        }
    }

    fn open_incoming(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ListenId,
        sock: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), String> {
        let reset = |sock: TcpStream, why: String| {
            super::upstream::abort_on_close(&sock);
            Err(why)
        };
        if self.closed || !self.conn().is_some_and(|c| c.can_open_stream()) {
            return reset(sock, "session takes no new stream now".into());
        }
        let need = self.stream_cost(ctx.shared);
        if self.charged + need > ctx.shared.limits.session_memory {
            return reset(sock, "session memory budget spent".into());
        }
        if !ctx.shared.memory.try_take(need) {
            ctx.shared.note_spent("server memory budget spent");
            return reset(sock, "server memory budget spent".into());
        }
        self.charged += need;
        let fds = self.upstreams.values().filter(|u| u.holds_fd()).count() + self.listeners.len();
        let fd = if fds >= ctx.shared.fd_share_per_session() {
            None
        } else {
            Permit::take(&ctx.shared.fds)
        };
        let Some(fd) = fd else {
            self.give_back(ctx.shared, need);
            return reset(sock, "descriptor budget spent".into());
        };
        let opened = match self.conn() {
            Some(c) => c
                .open_incoming(id, listener::origin(peer))
                .map_err(|e| e.to_string()),
            None => Err("session not established".into()),
        };
        let sid = match opened {
            Ok(sid) => sid,
            Err(why) => {
                self.give_back(ctx.shared, need);
                return reset(sock, why);
            }
        };
        let token = ctx.routes.add(Route::Upstream(self.token, sid));
        match Upstream::accepted(format!("{peer}"), sock, ctx.registry, token, fd) {
            Ok(up) => {
                debug!("{}: stream {sid} opened for {peer}", self.peer);
                self.upstreams.insert(sid, up);
                Ok(())
            }
            Err(e) => {
                ctx.routes.remove(token);
                self.give_back(ctx.shared, need);
                if let Some(c) = self.conn() {
                    let _ = c.stream_reset(sid, StreamErrorCode::Other);
                }
                Err(format!("cannot register: {e}"))
            }
        }
    }

    /// Remote listeners held (for tests and logs).
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// Lets stream windows grow only as far as the session and server
    /// budgets allow: the core may hold `initial windows + growth` of
    /// receive credit, and `growth` is taken from the server pool in steps
    /// (at most doubling per pass), given back when windows shrink or
    /// streams end. When the pool is spent windows simply stop growing.
    fn rebalance_memory(&mut self, shared: &Shared) {
        let Phase::Core(conn) = &mut self.phase else {
            return;
        };
        let initial = self.upstreams.len() * shared.core.session.stream_window as usize;
        let grown = conn.receive_outstanding().saturating_sub(initial);
        let others = self.charged - self.growth;
        let room = shared.limits.session_memory.saturating_sub(others);
        // Only connected streams can grow: an idle session reserves nothing.
        let step = if self.upstreams.values().any(Upstream::is_connected) {
            GROWTH_STEP
        } else {
            0
        };
        let want = grown
            .saturating_mul(2)
            .saturating_add(step)
            .min(room)
            .max(grown.min(self.growth));
        if want > self.growth {
            let got = shared.memory.take_up_to(want - self.growth);
            self.growth += got;
            self.charged += got;
        } else if want < self.growth {
            let back = self.growth - want;
            self.growth -= back;
            self.charged -= back;
            shared.memory.give_back(back);
        }
        conn.set_receive_budget(initial + self.growth);
    }

    fn stream_cost(&self, shared: &Shared) -> usize {
        shared.core.session.stream_window as usize + STREAM_OVERHEAD
    }

    fn give_back(&mut self, shared: &Shared, n: usize) {
        let n = n.min(self.charged);
        self.charged -= n;
        shared.memory.give_back(n);
    }

    fn refuse(&mut self, id: StreamId, label: &str, code: StreamErrorCode, why: &str) {
        self.metrics.stream_refused(code);
        debug!("{}: stream {id} to {label} refused: {why}", self.peer);
        if let Some(c) = self.conn() {
            let _ = c.refuse_stream(id, code);
        }
    }

    fn connect(&mut self, ctx: &mut Ctx<'_>, id: StreamId, addrs: Vec<SocketAddr>, fd: Permit) {
        let token = ctx.routes.add(Route::Upstream(self.token, id));
        let Some(up) = self.upstreams.get_mut(&id) else {
            ctx.routes.remove(token);
            return;
        };
        if let Err(e) = up.connect(ctx.registry, token, addrs, fd, UPSTREAM_CONNECT_TIMEOUT) {
            ctx.routes.remove(token);
            let why = format!("connect failed: {e}");
            self.end_upstream(ctx, id, End::Refuse(error_code(&e), &why));
        }
    }

    /// A lookup finished for stream `id`.
    pub fn on_resolved(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: StreamId,
        ticket: Ticket,
        result: Result<Vec<SocketAddr>, LookupError>,
    ) {
        let Some(up) = self.upstreams.get_mut(&id) else {
            return;
        };
        let Some((expected, decision)) = up.lookup else {
            return;
        };
        if expected != ticket {
            return;
        }
        up.lookup = None;
        match resolver::admit(&ctx.shared.allow, decision, result) {
            Ok(addrs) => match up.release_fd() {
                Some(fd) => self.connect(ctx, id, addrs, fd),
                None => {
                    self.end_upstream(ctx, id, End::Refuse(RESOURCE_EXHAUSTED, "no descriptor"))
                }
            },
            Err(e) => {
                let code = match e {
                    LookupError::NotAllowed => StreamErrorCode::NotAllowed,
                    LookupError::TimedOut => StreamErrorCode::TimedOut,
                    LookupError::NoAddresses | LookupError::Failed(_) => {
                        StreamErrorCode::NetworkUnreachable
                    }
                };
                let why = e.to_string();
                self.end_upstream(ctx, id, End::Refuse(code, &why));
            }
        }
    }

    /// Readiness on an upstream socket.
    pub fn on_upstream(&mut self, ctx: &mut Ctx<'_>, id: StreamId, ready: Readiness) {
        let Some(up) = self.upstreams.get_mut(&id) else {
            return;
        };
        let Readiness {
            readable,
            writable,
            read_closed,
        } = ready;
        up.pipe.note_event(read_closed);
        if let UpstreamState::Connecting { .. } = up.state {
            if !readable && !writable {
                return;
            }
            match up.on_connect_event(ctx.registry) {
                ConnectProgress::Pending => return,
                ConnectProgress::Failed(e) => {
                    let why = format!("connect failed: {e}");
                    return self.end_upstream(ctx, id, End::Refuse(error_code(&e), &why));
                }
                ConnectProgress::Connected => {
                    self.metrics.stream_opened();
                    debug!("{}: stream {id} connected to {}", self.peer, up.dest);
                    // Budget first: an accepted stream's window may grow
                    // at once.
                    self.rebalance_memory(ctx.shared);
                    if let Phase::Core(c) = &mut self.phase {
                        let _ = c.accept_stream(id);
                    }
                }
            }
        }
        if writable {
            self.flush_upstream(ctx, id);
        }
        let blocked = self.upstreams.get(&id).is_some_and(|u| u.pipe.read_blocked);
        if readable || blocked {
            self.pump_upstream(ctx, id);
        }
    }

    fn flush_upstream(&mut self, ctx: &mut Ctx<'_>, id: StreamId) {
        let Phase::Core(conn) = &mut self.phase else {
            return;
        };
        let Some(up) = self.upstreams.get_mut(&id) else {
            return;
        };
        up.flush_queued = false;
        match up.pipe.flush() {
            Ok(n) => conn.stream_consumed(id, n),
            Err(e) => {
                let why = format!("write to destination failed: {e}");
                let _ = conn.stream_reset(id, StreamErrorCode::Other);
                self.end_upstream(ctx, id, End::Abort(&why));
            }
        }
    }

    fn pump_upstream(&mut self, ctx: &mut Ctx<'_>, id: StreamId) {
        let Phase::Core(conn) = &mut self.phase else {
            return;
        };
        let Some(up) = self.upstreams.get_mut(&id) else {
            return;
        };
        if !up.is_connected() {
            return;
        }
        match up.pipe.read_into(&mut **conn, id) {
            Ok(ReadOutcome::Eof) if up.pipe.is_done() => self.end_upstream(ctx, id, End::Clean),
            Ok(_) => {}
            Err(e) => {
                let why = format!("read from destination failed: {e}");
                let _ = conn.stream_reset(id, StreamErrorCode::Other);
                self.end_upstream(ctx, id, End::Abort(&why));
            }
        }
    }

    /// Removes an upstream, releasing its descriptor and memory, and tells
    /// both ends the truth about how it ended.
    fn end_upstream(&mut self, ctx: &mut Ctx<'_>, id: StreamId, end: End<'_>) {
        let Some(up) = self.upstreams.remove(&id) else {
            return;
        };
        if let Some(t) = up.token {
            ctx.routes.remove(t);
        }
        if up.is_connected() {
            self.metrics.stream_closed();
        }
        if let Some((ticket, _)) = up.lookup {
            ctx.dns.cancel(ticket);
        }
        let (to_dest, from_dest) = (up.pipe.bytes_to_sock, up.pipe.bytes_from_sock);
        match end {
            End::Clean => {
                debug!(
                    "{}: stream {id} to {} closed ({to_dest} bytes sent, {from_dest} received)",
                    self.peer, up.dest
                );
                up.close(ctx.registry);
            }
            End::Abort(why) => {
                debug!(
                    "{}: stream {id} to {} aborted ({why}; {to_dest} bytes sent, {from_dest} received)",
                    self.peer, up.dest
                );
                up.abort(ctx.registry);
            }
            End::Refuse(code, why) => {
                let accepted = up.is_connected();
                if !accepted {
                    self.metrics.stream_refused(code);
                }
                debug!("{}: stream {id} to {} refused: {why}", self.peer, up.dest);
                if let Phase::Core(c) = &mut self.phase
                    && c.refuse_stream(id, code).is_err()
                    && accepted
                {
                    let _ = c.stream_reset(id, code);
                }
                up.abort(ctx.registry);
            }
        }
        let cost = self.stream_cost(ctx.shared);
        self.give_back(ctx.shared, cost);
    }

    /// Core timers and upstream connect deadlines.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.clock.now();
        if let Phase::Core(c) = &mut self.phase
            && c.poll_timeout().is_some_and(|d| d <= now)
        {
            c.handle_timeout(now);
        }
        let std_now = StdInstant::now();
        let expired: Vec<StreamId> = self
            .upstreams
            .iter()
            .filter(|(_, u)| u.connect_deadline().is_some_and(|d| std_now >= d))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.end_upstream(
                ctx,
                id,
                End::Refuse(StreamErrorCode::TimedOut, "connect timed out"),
            );
        }
    }

    /// After events: drain the core, write queued tunnel data to the
    /// upstreams, retry blocked upstream reads, reap finished upstreams and
    /// write the tunnel. Returns false once the session is over.
    pub fn service(&mut self, ctx: &mut Ctx<'_>) -> bool {
        for _ in 0..64 {
            if self.is_pending() {
                return true;
            }
            self.drain_events(ctx);
            for id in std::mem::take(&mut self.to_flush) {
                self.flush_upstream(ctx, id);
            }
            let blocked: Vec<StreamId> = self
                .upstreams
                .iter()
                .filter(|(_, u)| u.pipe.read_blocked)
                .map(|(id, _)| *id)
                .collect();
            for id in blocked {
                let cap = match &self.phase {
                    Phase::Core(c) => c.stream_send_capacity(id),
                    Phase::Pending(_) => 0,
                };
                if cap > 0 {
                    self.pump_upstream(ctx, id);
                }
            }
            let done: Vec<StreamId> = self
                .upstreams
                .iter()
                .filter(|(_, u)| u.pipe.is_done())
                .map(|(id, _)| *id)
                .collect();
            for id in done {
                self.end_upstream(ctx, id, End::Clean);
            }
            let wrote = self.write_tunnel();
            if self.closed {
                let pending = match &mut self.phase {
                    Phase::Core(c) => !c.transmit_pending().is_empty(),
                    Phase::Pending(_) => false,
                };
                if self.write_failed || !pending {
                    return false;
                }
            }
            let more = self.upstreams.values().any(|u| u.pipe.read_blocked) && wrote > 0;
            if !more {
                self.rebalance_memory(ctx.shared);
                // A session without streams is idle until its next OPEN:
                // give the buffers back now rather than after the idle
                // delay, so thousands of such sessions hold almost nothing.
                if self.established && self.upstreams.is_empty() {
                    self.release_if_idle(StdInstant::now());
                }
                return true;
            }
        }
        true
    }

    fn write_tunnel(&mut self) -> usize {
        let Phase::Core(conn) = &mut self.phase else {
            return 0;
        };
        let mut total = 0;
        loop {
            let pending = conn.transmit_pending();
            if pending.is_empty() || self.write_failed {
                return total;
            }
            match self.sock.write(pending) {
                Ok(n) => {
                    total += n;
                    self.metrics.tunnel_sent(n);
                    conn.transmit_done(n);
                    self.last_io = StdInstant::now();
                    self.released = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("{}: write error: {e}", self.peer);
                    self.write_failed = true;
                    conn.handle_eof();
                    return total;
                }
            }
        }
    }

    /// Gives back the record buffers and empty tables of a session that
    /// has been quiet since `quiet_before`; an idle session then holds a
    /// few KiB. The next record takes them again.
    pub fn release_if_idle(&mut self, quiet_before: StdInstant) {
        for up in self.upstreams.values_mut() {
            up.pipe.release_if_drained_before(quiet_before);
        }
        if self.released || self.last_io > quiet_before {
            return;
        }
        let Phase::Core(conn) = &mut self.phase else {
            return;
        };
        conn.release_idle_buffers();
        if self.upstreams.is_empty() {
            self.upstreams = HashMap::new();
        }
        if self.to_flush.is_empty() {
            self.to_flush = Vec::new();
        }
        self.released = true;
    }

    /// Starts a graceful shutdown: no new streams.
    pub fn go_away(&mut self) {
        if let Some(c) = self.conn() {
            c.go_away(CloseCode::ShuttingDown);
        }
    }

    /// Ends the session now with an authenticated CLOSE carrying `code`
    /// (if keys exist).
    pub fn close_now(&mut self, code: CloseCode) {
        if let Phase::Core(c) = &mut self.phase {
            if !c.is_closed() {
                c.close(code);
            }
            while c.poll_event().is_some() {}
        }
        self.write_tunnel();
        self.closed = true;
    }

    /// Releases everything the session holds. Upstreams still present did
    /// not finish cleanly, so their destinations see a reset.
    pub fn close(mut self, ctx: &mut Ctx<'_>) {
        let ids: Vec<StreamId> = self.upstreams.keys().copied().collect();
        let why = match &self.phase {
            Phase::Core(c) => c.error().map_or_else(
                || "session closed".to_string(),
                |e| format!("session ended: {e}"),
            ),
            Phase::Pending(_) => "session closed".to_string(),
        };
        for id in ids {
            self.end_upstream(ctx, id, End::Abort(&why));
        }
        for (_, l) in self.listeners.drain() {
            info!("{}: no longer listening on {}", self.peer, l.addr);
            ctx.routes.remove(l.token);
            l.close(ctx.registry);
        }
        ctx.dns.cancel_session(self.token.0 as u64);
        ctx.keys.cancel(self.token.0 as u64);
        let _ = ctx.registry.deregister(&mut self.sock);
        ctx.routes.remove(self.token);
        let charged = self.charged;
        self.charged = 0;
        ctx.shared.memory.give_back(charged);
    }
}

/// How an upstream ends.
enum End<'a> {
    /// Both directions finished: a normal close.
    Clean,
    /// Aborted (reason): RST to the destination.
    Abort(&'a str),
    /// The stream never got going: OPEN_FAIL (or RESET once accepted).
    Refuse(StreamErrorCode, &'a str),
}

/// What one established session costs the server when idle: the core
/// connection with its record buffers and stream table.
pub fn session_fixed_cost() -> usize {
    std::mem::size_of::<HostConnection>()
}

fn log_close(peer: SocketAddr, error: &ConnectionError) {
    match error {
        ConnectionError::Handshake(HandshakeError::UnauthorizedClient(id)) => {
            warn!("{peer}: refused unauthorized client key {id}")
        }
        ConnectionError::Handshake(e) => warn!("{peer}: {e}"),
        ConnectionError::PeerClosed(CloseCode::Normal) => info!("{peer}: session closed by client"),
        ConnectionError::LocallyClosed(code) => info!("{peer}: session closed: {code}"),
        e => info!("{peer}: session ended: {e}"),
    }
}
