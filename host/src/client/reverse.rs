//! Reverse forwards (`-R [BIND:]PORT:HOST:PORT`): on every new session the
//! client asks the server to listen on each BIND:PORT (LISTEN), remembers
//! which listener id the server granted for which forward, and connects
//! each stream the server opens for a granted listener (INCOMING) to that
//! forward's HOST:PORT — a target fixed by the client's own command line,
//! whatever the server sends. The stream is accepted (OPEN_OK) only once
//! the target connection is up, and refused with the connect error
//! otherwise. A refused listener ends the client at first contact
//! (retrying cannot fix a port that is taken or not permitted); on a later
//! session it closes that session so the next one asks again.
//!
//! Three parts: [`ReverseListeners`], the listener bookkeeping the tunnel
//! session owns (it is per session); [`TargetResolver`], the lookups of
//! target *names*; and the target connections, which are local
//! connections and so are carried out on the table of
//! [`Locals`](super::locals::Locals).
//!
//! Target names are never resolved on the event loop: the client starts a
//! small [`ResolverPool`] (2 workers, at most 64 lookups in flight, 5 s
//! deadline) only when some `-R` target is a name, and its results wake
//! the loop through its waker. An IP target is connected at once. Each
//! lookup is tagged with the tunnel session and the stream it is for, and
//! the stream's local connection keeps the lookup's ticket while it waits:
//! a result is used only if all three still match, so a result for a
//! session that ended (a new session reuses stream ids) or for a stream the
//! server reset meanwhile (which ended its local connection and cancelled
//! the lookup) is dropped. A lookup that fails, finds no address, passes
//! its deadline, or cannot be queued refuses the stream (HostUnreachable,
//! TimedOut, ResourceExhausted) with one log line naming the target.
//!
//! The addresses are tried in the resolver's order: an attempt refused or
//! failing at once moves on to the next address; the stream is refused
//! with the last error when none is left. The connect timeout (10 s) is per
//! attempt, restarted for each address, as on the server; an attempt that
//! times out refuses the stream (TimedOut) rather than moving on, so a
//! blackholed address costs one timeout, not one per address.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use hytun_core::{
    Destination, Host, HostConnection, ListenErrorCode, ListenId, StreamErrorCode, StreamId,
};
use log::{debug, error, info, warn};
use mio::{Registry, Token, Waker};

use super::local::{End, Local, TargetConnect};
use super::locals::Locals;
use super::tunnel::TunnelSession;
use crate::allow::DestHost;
use crate::config::ReverseSpec;
use crate::resolver::{
    LookupError, LookupFn, LoopResolver, Resolved, ResolverConfig, ResolverPool, SubmitError,
    Ticket,
};
use crate::server::error_code;

/// How long one attempt to connect to a reverse forward's target may take.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The target-name resolver's pool: two workers are plenty for one
/// client's forwards; the deadline bounds how long a stream waits for a
/// name.
const LOOKUPS: ResolverConfig = ResolverConfig {
    workers: 2,
    max_stuck: 4,
    max_jobs: 64,
    per_session: 64,
    timeout: Duration::from_secs(5),
};

/// A resolving target gives up on its own this long after the pool's
/// deadline, should the pool ever fail to answer.
const LOOKUP_GRACE: Duration = Duration::from_secs(5);

/// The reverse forwards and the listeners the current session asked for.
#[derive(Debug, Default)]
pub(super) struct ReverseListeners {
    /// The forwards (`-R`), from the options.
    specs: Vec<ReverseSpec>,
    /// Listener id → index into `specs`.
    requested: HashMap<ListenId, usize>,
    granted: HashMap<ListenId, usize>,
    /// Sessions that asked for listeners so far (1 = first contact).
    sessions: u32,
}

/// What a refused listener means for the session.
pub(super) enum ListenRefusal {
    /// At first contact: the client stops with this message.
    Fatal(String),
    /// On a later session: close it, so the next one asks again.
    Reconnect,
}

fn bind_destination(addr: SocketAddr) -> Destination<'static> {
    let host = match addr.ip() {
        IpAddr::V4(a) => Host::Ipv4(a.octets()),
        IpAddr::V6(a) => Host::Ipv6(a.octets()),
    };
    Destination {
        host,
        port: addr.port(),
    }
}

fn describe(spec: &ReverseSpec) -> String {
    format!("{} -> {}", spec.bind, spec.host.with_port(spec.port))
}

/// A server-opened stream whose target is being set up: what the log and
/// the refusal need.
#[derive(Debug, Clone)]
pub(super) struct Incoming {
    id: StreamId,
    spec: ReverseSpec,
    origin: String,
}

impl Incoming {
    /// `HOST:PORT` of the target, for the log.
    fn target(&self) -> String {
        self.spec.host.with_port(self.spec.port)
    }
}

/// What a lookup of a target name is for: the tunnel session and stream it
/// was asked for, and the local connection waiting for it.
#[derive(Debug)]
pub(super) struct TargetLookup {
    session: u64,
    local: Token,
    stream: Incoming,
}

/// The lookups of `-R` target names: a small pool of its own, whose
/// results wake the client's loop.
pub(super) struct TargetResolver {
    /// Declared before the pool: dropping it cancels its lookups first.
    lookups: LoopResolver<TargetLookup>,
    _pool: ResolverPool,
    /// Every lookup is its own unit of the pool's per-session limits: the
    /// client is one tenant, and the pool's fair share of workers per
    /// session would otherwise run its lookups one at a time and let one
    /// stuck lookup hold up the others.
    next_key: u64,
}

impl TargetResolver {
    /// A pool resolving with `lookup` (the system resolver in the client),
    /// waking the loop with `waker`.
    ///
    /// # Errors
    /// A worker thread could not be started.
    pub(super) fn new(waker: Arc<Waker>, lookup: impl LookupFn) -> io::Result<TargetResolver> {
        let pool = ResolverPool::with_lookup(LOOKUPS, lookup)?;
        Ok(TargetResolver {
            lookups: pool.attach(waker),
            _pool: pool,
            next_key: 0,
        })
    }

    fn submit(&mut self, tag: TargetLookup, name: &str) -> Result<Ticket, SubmitError> {
        self.next_key += 1;
        let port = tag.stream.spec.port;
        self.lookups.submit(self.next_key, tag, name, port)
    }

    /// Cancels a lookup whose stream no longer waits for it.
    pub(super) fn cancel(&self, ticket: Ticket) {
        self.lookups.cancel(ticket);
    }
}

/// The refusal for a lookup that produced no address.
fn lookup_refusal(e: &LookupError) -> StreamErrorCode {
    match e {
        LookupError::TimedOut => StreamErrorCode::TimedOut,
        LookupError::NoAddresses | LookupError::Failed(_) | LookupError::NotAllowed => {
            StreamErrorCode::HostUnreachable
        }
    }
}

/// The refusal, and the reason for the log, for a lookup that could not
/// be queued.
fn submit_refusal(e: SubmitError) -> (StreamErrorCode, &'static str) {
    match e {
        SubmitError::Full | SubmitError::QuotaExceeded => (
            StreamErrorCode::ResourceExhausted,
            "too many name lookups in progress",
        ),
        SubmitError::Closed | SubmitError::NotAllowed => {
            (StreamErrorCode::Other, "the name resolver is not running")
        }
    }
}

impl ReverseListeners {
    /// The forwards to ask for on every session.
    pub(super) fn new(specs: Vec<ReverseSpec>) -> Self {
        ReverseListeners {
            specs,
            ..ReverseListeners::default()
        }
    }

    /// A session is up: forgets the last session's listeners and asks the
    /// server on `conn` for every reverse forward.
    pub(super) fn request_all(&mut self, conn: &mut HostConnection) {
        if !self.new_session() {
            return;
        }
        for (i, spec) in self.specs.iter().enumerate() {
            match conn.request_listen(bind_destination(spec.bind)) {
                Ok(id) => {
                    debug!("asking the server to listen: {}", describe(spec));
                    self.requested.insert(id, i);
                }
                Err(e) => warn!("cannot ask for reverse forward {}: {e}", describe(spec)),
            }
        }
    }

    /// Forgets the last session's listeners; false when there are no
    /// forwards to ask for (and so no session counted).
    fn new_session(&mut self) -> bool {
        self.requested.clear();
        self.granted.clear();
        if self.specs.is_empty() {
            return false;
        }
        self.sessions += 1;
        true
    }

    pub(super) fn on_granted(&mut self, id: ListenId) {
        let Some(i) = self.requested.remove(&id) else {
            return;
        };
        self.granted.insert(id, i);
        if let Some(spec) = self.specs.get(i) {
            info!("reverse forward up: server listens on {}", describe(spec));
        }
    }

    /// The server refused listener `id`; `None` for an id we did not ask
    /// for in this session.
    pub(super) fn on_refused(
        &mut self,
        id: ListenId,
        code: ListenErrorCode,
    ) -> Option<ListenRefusal> {
        let i = self.requested.remove(&id)?;
        let spec = self.specs.get(i)?;
        let msg = format!("server refused reverse forward {}: {code}", describe(spec));
        if self.sessions <= 1 {
            // First contact: a taken or forbidden port stays so; say why
            // and stop instead of retrying forever.
            error!("{msg}");
            return Some(ListenRefusal::Fatal(msg));
        }
        // A later session (e.g. the server has not yet noticed that our
        // previous session died and still holds the port): start over.
        warn!("{msg}; reconnecting to ask again");
        Some(ListenRefusal::Reconnect)
    }

    /// The forward whose granted listener is `listen`.
    pub(super) fn target(&self, listen: ListenId) -> Option<&ReverseSpec> {
        self.granted.get(&listen).and_then(|&i| self.specs.get(i))
    }
}

impl Locals {
    /// The server opened stream `id` for a connection `origin` made to the
    /// listener of `spec`: connect it to that forward's target, an IP
    /// address at once, a name once the resolver pool has looked it up.
    pub(super) fn connect_target(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        id: StreamId,
        spec: &ReverseSpec,
        origin: &str,
    ) {
        let stream = Incoming {
            id,
            spec: spec.clone(),
            origin: origin.to_owned(),
        };
        let t = self.next_token();
        match &spec.host {
            DestHost::Ip(ip) => {
                let addr = SocketAddr::new(*ip, spec.port);
                self.connect_addrs(registry, tunnel, t, &stream, vec![addr]);
            }
            DestHost::Domain(name) => self.look_up_target(tunnel, t, stream, name),
        }
    }

    /// Queues the lookup of target `name` for `stream`, whose local
    /// connection (token `t`) waits for it without a socket.
    fn look_up_target(
        &mut self,
        tunnel: &mut TunnelSession,
        t: Token,
        stream: Incoming,
        name: &str,
    ) {
        let (id, bind) = (stream.id, stream.spec.bind);
        let target = stream.target();
        let origin = stream.origin.clone();
        let tag = TargetLookup {
            session: tunnel.session_serial(),
            local: t,
            stream,
        };
        let submitted = match self.targets.as_mut() {
            Some(r) => r.submit(tag, name),
            None => Err(SubmitError::Closed),
        };
        match submitted {
            Ok(ticket) => {
                debug!("{origin}: reverse stream {id}: looking up {name}");
                let deadline = StdInstant::now() + LOOKUPS.timeout + LOOKUP_GRACE;
                self.insert(t, Local::resolving(bind, id, ticket, deadline));
                tunnel.bind_stream(id, t);
            }
            Err(e) => {
                let (code, why) = submit_refusal(e);
                info!("{origin}: reverse stream {id} to {target} failed: {why}");
                tunnel.refuse_incoming(id, code);
            }
        }
    }

    /// Lookups of target names finished (the loop's waker fired): each
    /// result still wanted starts its target's connect or refuses its
    /// stream.
    pub(super) fn take_resolved(&mut self, registry: &Registry, tunnel: &mut TunnelSession) {
        let Some(r) = self.targets.as_ref() else {
            return;
        };
        let mut done = Vec::new();
        while let Some(res) = r.lookups.try_result() {
            done.push(res);
        }
        for res in done {
            self.on_resolved(registry, tunnel, res);
        }
    }

    fn on_resolved(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        res: Resolved<TargetLookup>,
    ) {
        let Resolved {
            ticket,
            tag,
            result,
        } = res;
        let TargetLookup {
            session,
            local: t,
            stream,
        } = tag;
        // Only for the session and stream it was asked for, whose local
        // connection still waits for this very lookup.
        let waiting = self.get_mut(t).and_then(|l| l.lookup());
        if session != tunnel.session_serial() || waiting != Some((stream.id, ticket)) {
            debug!(
                "{}: dropping the lookup of {} for reverse stream {}: no longer wanted",
                stream.origin,
                stream.target(),
                stream.id
            );
            return;
        }
        match result {
            Ok(addrs) => self.connect_addrs(registry, tunnel, t, &stream, addrs),
            Err(e) => {
                info!(
                    "{}: reverse stream {} to {} failed: {e}",
                    stream.origin,
                    stream.id,
                    stream.target()
                );
                self.drop_target(registry, tunnel, t, stream.id, lookup_refusal(&e));
            }
        }
    }

    /// Starts connecting `stream`'s target to `addrs` (in order) under
    /// token `t`: the local connection waiting there for a lookup, or a new
    /// one.
    fn connect_addrs(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        t: Token,
        stream: &Incoming,
        addrs: Vec<SocketAddr>,
    ) {
        let id = stream.id;
        let started = match self.get_mut(t) {
            Some(l) => l
                .connect_resolved(registry, t, addrs, TARGET_CONNECT_TIMEOUT)
                .map(|()| None),
            None => Local::connect_target(registry, t, id, addrs, TARGET_CONNECT_TIMEOUT).map(Some),
        };
        match started {
            Ok(new) => {
                if let Some(l) = new {
                    self.insert(t, l);
                    tunnel.bind_stream(id, t);
                }
                info!(
                    "{}: reverse stream {id} via {} to {}",
                    stream.origin,
                    stream.spec.bind,
                    stream.target()
                );
            }
            Err(e) => {
                info!(
                    "{}: reverse stream {id} to {} failed: {e}",
                    stream.origin,
                    stream.target()
                );
                self.drop_target(registry, tunnel, t, id, error_code(&e));
            }
        }
    }

    /// Readiness on a target socket that is still connecting: accept the
    /// stream once connected, try the next address if this one failed,
    /// refuse the stream with the connect error when none is left.
    pub(super) fn finish_target_connect(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        t: Token,
    ) {
        let Some(l) = self.get_mut(t) else {
            return;
        };
        match l.finish_connect(registry, t) {
            TargetConnect::Pending => {}
            TargetConnect::Failed(id, e) => self.fail_target(
                registry,
                tunnel,
                t,
                id,
                error_code(&e),
                &format!("connect failed: {e}"),
            ),
            TargetConnect::Connected(id) => {
                if let Some(conn) = tunnel.conn_mut()
                    && conn.accept_stream(id).is_err()
                {
                    // The server reset the stream meanwhile.
                    self.end(
                        registry,
                        tunnel,
                        t,
                        End::Abort("stream gone before the target connected".into()),
                    );
                    return;
                }
                self.touch(t);
            }
        }
    }

    /// Cancels the lookup `l` waits for, if any: its stream no longer
    /// needs it.
    pub(super) fn cancel_lookup(&self, l: &Local) {
        if let (Some((_, ticket)), Some(r)) = (l.lookup(), self.targets.as_ref()) {
            r.cancel(ticket);
        }
    }

    /// A target connection that never came up: the stream is refused (the
    /// server resets the accepted connection) and the socket dropped.
    pub(super) fn fail_target(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        t: Token,
        id: StreamId,
        code: StreamErrorCode,
        why: &str,
    ) {
        if let Some(l) = self.get_mut(t) {
            info!("{}: reverse stream {id} refused: {why}", l.peer());
        }
        self.drop_target(registry, tunnel, t, id, code);
    }

    /// Refuses stream `id` and drops its target connection (token `t`),
    /// if it has one yet, without a log line of its own.
    fn drop_target(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        t: Token,
        id: StreamId,
        code: StreamErrorCode,
    ) {
        if let Some(l) = self.remove(t) {
            self.cancel_lookup(&l);
            l.discard(registry);
        }
        tunnel.forget_stream(id);
        tunnel.refuse_incoming(id, code);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::OnceLock;

    use hytun_core::{ClientConfig, PrivateIdentity, SessionConfig};
    use mio::{Events, Poll};

    use super::super::tunnel::{StreamRouter, TunnelOptions};
    use super::*;
    use crate::config::Endpoint;
    use crate::keywork::KeyWork;
    use crate::metrics::ClientMetrics;
    use crate::runtime::os_rng;

    fn forwards() -> ReverseListeners {
        ReverseListeners::new(vec![ReverseSpec {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            host: DestHost::Ip(Ipv4Addr::LOCALHOST.into()),
            port: 80,
        }])
    }

    /// As `request_all` leaves a new session once LISTEN `id` is sent.
    fn asked(l: &mut ReverseListeners, id: ListenId) {
        assert!(l.new_session());
        l.requested.insert(id, 0);
    }

    #[test]
    fn a_refused_listener_stops_the_client_at_first_contact_and_reconnects_later() {
        let mut l = forwards();
        asked(&mut l, ListenId(1));
        let Some(ListenRefusal::Fatal(msg)) =
            l.on_refused(ListenId(1), ListenErrorCode::AddressInUse)
        else {
            panic!("first contact is final");
        };
        assert_eq!(
            msg,
            "server refused reverse forward 127.0.0.1:8080 -> 127.0.0.1:80: address already in use on the server"
        );
        // An answer to a listener this session did not ask for is ignored.
        assert!(l.on_refused(ListenId(1), ListenErrorCode::Other).is_none());

        asked(&mut l, ListenId(2));
        assert!(matches!(
            l.on_refused(ListenId(2), ListenErrorCode::AddressInUse),
            Some(ListenRefusal::Reconnect)
        ));
    }

    #[test]
    fn without_forwards_no_session_is_counted() {
        let mut l = ReverseListeners::new(Vec::new());
        assert!(!l.new_session());
        assert_eq!(l.sessions, 0);
    }

    #[test]
    fn lookup_failures_refuse_with_the_matching_code() {
        use StreamErrorCode as C;
        for (e, code) in [
            (LookupError::TimedOut, C::TimedOut),
            (LookupError::NoAddresses, C::HostUnreachable),
            (
                LookupError::Failed("no such name".into()),
                C::HostUnreachable,
            ),
            (LookupError::NotAllowed, C::HostUnreachable),
        ] {
            assert_eq!(lookup_refusal(&e), code, "{e}");
        }
        assert_eq!(
            submit_refusal(SubmitError::Full),
            (C::ResourceExhausted, "too many name lookups in progress")
        );
        assert_eq!(
            submit_refusal(SubmitError::QuotaExceeded).0,
            C::ResourceExhausted
        );
        assert_eq!(submit_refusal(SubmitError::Closed).0, C::Other);
    }

    #[test]
    fn only_a_granted_listener_has_a_target() {
        let mut l = forwards();
        asked(&mut l, ListenId(1));
        assert!(l.target(ListenId(1)).is_none(), "asked, not granted");
        l.on_granted(ListenId(7));
        assert!(l.target(ListenId(7)).is_none(), "never asked for");
        l.on_granted(ListenId(1));
        assert_eq!(l.target(ListenId(1)).map(|s| s.port), Some(80));
        // Granted listeners do not outlive their session.
        asked(&mut l, ListenId(1));
        assert!(l.target(ListenId(1)).is_none());
    }

    /// A client's loop pieces without a server: the poll and its waker,
    /// the table of local connections with a target resolver that answers
    /// every name with `target` at once, and a tunnel session that is down.
    struct Pieces {
        poll: Poll,
        locals: Locals,
        tunnel: TunnelSession,
    }

    const WAKER: Token = Token(0);

    fn client_config() -> Arc<ClientConfig> {
        static CFG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
        CFG.get_or_init(|| {
            let key = hytun_keys::generate(2048).expect("keygen");
            let identity = PrivateIdentity::new(key, &mut os_rng()).expect("identity");
            let pinned = identity.public().clone();
            Arc::new(ClientConfig::new(identity, pinned, SessionConfig::HOST))
        })
        .clone()
    }

    impl Pieces {
        fn new(target: SocketAddr) -> Pieces {
            let poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
            let mut locals = Locals::new(16);
            locals.targets = Some(
                TargetResolver::new(waker.clone(), move |_: &str, _: u16| Ok(vec![target]))
                    .unwrap(),
            );
            let key_pool = KeyWork::new(1, 2).unwrap();
            let key_jobs = key_pool.handle(waker);
            let tunnel = TunnelSession::new(
                TunnelOptions {
                    server: Endpoint {
                        host: DestHost::Ip(Ipv4Addr::LOCALHOST.into()),
                        port: 9,
                    },
                    core: client_config(),
                    reverse: Vec::new(),
                    fail_fast_on_auth: false,
                    fail_fast_on_first_attempt: false,
                },
                key_pool,
                key_jobs,
                Arc::new(ClientMetrics::new()),
            );
            Pieces {
                poll,
                locals,
                tunnel,
            }
        }

        /// The server opens stream `id` for the name forward; returns the
        /// token of the local connection that waits for the lookup.
        fn incoming(&mut self, id: StreamId) -> Token {
            let spec = ReverseSpec {
                bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
                host: DestHost::Domain("target.test".into()),
                port: 80,
            };
            let t = Token(self.locals.next_token().0 + 1);
            self.locals.connect_target(
                self.poll.registry(),
                &mut self.tunnel,
                id,
                &spec,
                "127.0.0.1:5555",
            );
            let l = self.locals.get_mut(t).expect("a local connection waits");
            assert_eq!(l.lookup().map(|(s, _)| s), Some(id));
            t
        }

        /// Waits for the loop's waker: a lookup result was delivered
        /// (bounded by a generous 30 s so a bug fails instead of hanging).
        fn wait_for_result(&mut self) {
            let mut events = Events::with_capacity(4);
            let until = StdInstant::now() + Duration::from_secs(30);
            loop {
                assert!(StdInstant::now() < until, "no lookup result");
                self.poll
                    .poll(&mut events, Some(Duration::from_millis(100)))
                    .unwrap();
                if events.iter().any(|e| e.token() == WAKER) {
                    return;
                }
            }
        }

        fn take_resolved(&mut self) {
            self.locals
                .take_resolved(self.poll.registry(), &mut self.tunnel);
        }
    }

    // Two guards keep a stale result away from a stream, and each alone
    // passes these tests: ending a connection cancels its lookup (which
    // also withdraws a result already delivered), and a result is used
    // only if its session, stream and ticket still match.

    #[test]
    fn a_result_for_a_stream_the_server_reset_is_dropped() {
        let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut p = Pieces::new(target.local_addr().unwrap());
        let t = p.incoming(StreamId(2));
        assert_eq!(p.tunnel.stream_count(), 1);
        p.wait_for_result();
        // The server resets the stream before the loop takes the result.
        p.locals.reset(
            p.poll.registry(),
            &mut p.tunnel,
            t,
            StreamErrorCode::Cancelled,
        );
        assert!(p.locals.get_mut(t).is_none());
        p.take_resolved();
        assert!(p.locals.get_mut(t).is_none(), "the result was used");
        assert_eq!(p.tunnel.stream_count(), 0);
    }

    #[test]
    fn a_result_for_a_session_that_ended_never_reaches_the_new_session() {
        let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut p = Pieces::new(target.local_addr().unwrap());
        let old = p.incoming(StreamId(2));
        p.wait_for_result();
        // The session dies before the loop takes the result; the next one
        // reuses stream id 2 for another connection.
        p.locals
            .session_lost(p.poll.registry(), &mut p.tunnel, vec![old], "tunnel lost");
        p.tunnel.pretend_new_session();
        let new = p.incoming(StreamId(2));
        p.wait_for_result();
        p.take_resolved();
        assert!(p.locals.get_mut(old).is_none(), "the old result was used");
        let l = p.locals.get_mut(new).expect("the new stream's target");
        assert_eq!(l.connecting(), Some(StreamId(2)), "the new result was not");
        assert_eq!(p.tunnel.stream_count(), 1);
    }
}
