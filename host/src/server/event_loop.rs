//! One server event loop (one thread): accepts from the shared listening
//! socket, applies admission ([`super::admission`]), routes readiness to
//! its sessions, runs their timers, and delivers name lookups. It holds no
//! per-session state itself: sessions own their sockets, core connection
//! and budget share. At every wake it checks the server's [`LiveConfig`]
//! for a reloaded configuration and, taking it, ends the sessions of client
//! keys that are no longer authorized.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant as StdInstant};

use hytun_core::handshake::ServerHelloJob;
use hytun_core::{CloseCode, StreamId};
use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::admission::{Admission, AdmissionLimits, Refusal};
use super::proxy_header::Header;
use super::reload::{ReloadRequest, Reloader};
use super::session::{Ctx, ReadResult, Route, Routes, Session};
use super::{LiveConfig, ReloadFn, Shared};
use crate::keywork::KeyWorkHandle;
use crate::metrics::HandshakeOutcome;
use crate::pipe::Readiness;
use crate::resolver::LoopResolver;
use crate::runtime::{Clock, StopHandle};
use crate::service::StatusLine;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
const FIRST_DYNAMIC: usize = 16;
const READ_CHUNK: usize = 256 * 1024;
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// A session quiet this long gives its record buffers back.
const IDLE_RELEASE_AFTER: Duration = Duration::from_secs(1);

/// One event loop of a server.
pub struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    shared: Arc<Shared>,
    live: Arc<LiveConfig>,
    reload: Option<Reloader>,
    stop: StopHandle,
    resolver: LoopResolver<(Token, StreamId)>,
    keys: KeyWorkHandle<ServerHelloJob>,
    clock: Clock,
    sessions: HashMap<Token, Session>,
    routes: Routes,
    admission: Admission,
    touched: HashSet<Token>,
    accept_paused_until: Option<StdInstant>,
    shutdown_deadline: Option<StdInstant>,
    scratch: Vec<u8>,
    next_idle_sweep: StdInstant,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// Pending handshakes last reported to the metrics.
    pending_seen: usize,
    /// The service manager's status line (the signal-handling loop only).
    status: Option<StatusLine>,
}

/// Builds the [`Ctx`] a session borrows, from disjoint fields of the loop.
macro_rules! ctx {
    ($l:expr) => {
        Ctx {
            registry: $l.poll.registry(),
            routes: &mut $l.routes,
            shared: &$l.shared,
            dns: &$l.resolver,
            keys: &$l.keys,
            clock: &$l.clock,
            scratch: &mut $l.scratch,
        }
    };
}

impl EventLoop {
    /// A loop over `listener` (a clone of the server's socket), one of
    /// `loops`, taking its configuration from `live`.
    pub fn new(
        live: &Arc<LiveConfig>,
        listener: std::net::TcpListener,
        loops: usize,
    ) -> io::Result<Self> {
        let shared = live.current();
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        live.add_waker(waker.clone());
        let resolver = shared.dns.attach(waker.clone());
        let keys = shared.keywork.handle(waker.clone());
        let stop = StopHandle::new(Arc::new(AtomicBool::new(false)), waker);
        let admission = Admission::new(AdmissionLimits {
            max_pending: shared.limits.max_pending.div_ceil(loops).max(1),
            max_pending_per_source: shared.limits.max_pending_per_source.max(1),
        });
        Ok(EventLoop {
            poll,
            listener,
            shared,
            live: live.clone(),
            reload: None,
            stop,
            resolver,
            keys,
            clock: Clock::default(),
            sessions: HashMap::new(),
            routes: Routes::new(FIRST_DYNAMIC),
            admission,
            touched: HashSet::new(),
            accept_paused_until: None,
            shutdown_deadline: None,
            scratch: vec![0; READ_CHUNK],
            next_idle_sweep: StdInstant::now() + IDLE_RELEASE_AFTER,
            signals: None,
            pending_seen: 0,
            status: None,
        })
    }

    /// Logs what the server will do, once per server.
    pub fn log_start(&self, addr: SocketAddr, loops: usize) {
        if self.shared.allow.allows_all() {
            warn!(
                "--allow '*': this server will connect streams to ANY destination its clients name"
            );
        }
        info!(
            "listening on {addr} ({} authorized client keys, {loops} event loop(s))",
            self.shared.core.authorized.len()
        );
    }

    /// Takes over SIGINT and SIGTERM now (a graceful stop once the loop
    /// runs), so a signal that arrives between binding and running is not
    /// fatal.
    pub fn handle_signals(&mut self) -> io::Result<()> {
        self.use_signals(super::stop_signals()?)
    }

    /// Handles `s` (from [`super::stop_signals`]) in this loop.
    pub fn use_signals(&mut self, mut s: signal_hook_mio::v1_0::Signals) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut s, SIGNALS, Interest::READABLE)?;
        self.signals = Some(s);
        self.status = StatusLine::if_supervised();
        Ok(())
    }

    /// How this loop answers SIGHUP (when it handles the signals): by
    /// asking a reload thread, started here, to re-read the configuration.
    pub fn set_reload(&mut self, reload: ReloadFn) -> io::Result<()> {
        self.reload = Some(Reloader::start(self.live.clone(), reload)?);
        Ok(())
    }

    /// A handle that stops this loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Runs until stopped (by the handle, or SIGINT/SIGTERM when
    /// `handle_signals`). Returns after a graceful shutdown.
    pub fn run(mut self, handle_signals: bool) -> io::Result<()> {
        if handle_signals && self.signals.is_none() {
            self.handle_signals()?;
        }
        let mut signals = self.signals.take();
        // However this returns (an error, a panic), it counts as stopped.
        let _live = LoopLive(self.shared.clone());
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
                    WAKER => {
                        self.take_resolved();
                        self.take_key_results();
                    }
                    SIGNALS => {
                        let pending: Vec<i32> = signals
                            .as_mut()
                            .map(|s| s.pending().collect())
                            .unwrap_or_default();
                        for sig in pending {
                            self.on_signal(sig);
                        }
                    }
                    token => self.dispatch(
                        token,
                        Readiness {
                            readable: event.is_readable() || event.is_read_closed(),
                            writable: event.is_writable() || event.is_write_closed(),
                            read_closed: event.is_read_closed() || event.is_error(),
                        },
                    ),
                }
            }
            if self.live.generation() != self.shared.generation {
                self.adopt(self.live.current());
            }
            if self.stop.is_stopped() && self.shutdown_deadline.is_none() {
                self.begin_shutdown();
            }
            self.run_timers();
            let touched: Vec<Token> = self.touched.drain().collect();
            for t in touched {
                self.service(t);
            }
            self.pending_seen = self
                .shared
                .metrics
                .pending_moved(self.pending_seen, self.admission.len());
            if let Some(status) = self.status.as_mut()
                && self.shutdown_deadline.is_none()
            {
                let sessions = self.shared.established();
                status.update(StdInstant::now(), || format!("{sessions} sessions"));
            }
            if let Some(deadline) = self.shutdown_deadline {
                let streams: usize = self.sessions.values().map(Session::stream_count).sum();
                if streams == 0
                    || StdInstant::now() >= deadline
                    || self.shared.drain_cut.load(Ordering::SeqCst)
                {
                    self.finish_shutdown();
                }
                // The loop that hears signals stays until the others are
                // done, so a second signal still cuts their drain short.
                let others_done = self.shared.loops_live.load(Ordering::SeqCst) <= 1;
                if self.sessions.is_empty() && (signals.is_none() || others_done) {
                    debug!("server loop stopped");
                    return Ok(());
                }
            }
        }
    }

    fn on_signal(&mut self, sig: i32) {
        if sig != signal_hook::consts::SIGHUP {
            if self.stop.is_stopped() {
                info!("signal {sig} again: closing every session now");
                self.shared.drain_cut.store(true, Ordering::SeqCst);
            } else {
                info!(
                    "signal {sig}: shutting down gracefully (waiting up to {} s for open \
                     streams; repeat to stop now)",
                    self.shared.limits.drain.as_secs()
                );
            }
            self.shared.stop_all_loops();
            self.stop.stop();
            return;
        }
        if self.shutdown_deadline.is_some() {
            info!("SIGHUP: shutting down, not reloading");
            return;
        }
        match self.reload.as_ref().map(Reloader::request) {
            Some(ReloadRequest::Queued) => info!("SIGHUP: reloading the configuration"),
            Some(ReloadRequest::AlreadyQueued) => {
                info!(
                    "SIGHUP: a reload is already waiting to run; it will read the files as they are then"
                );
            }
            Some(ReloadRequest::Unavailable) => {
                error!(
                    "SIGHUP: the reload thread is gone; restart the server to change its configuration"
                );
            }
            None => warn!("SIGHUP: this server has no configuration to reload; ignored"),
        }
    }

    /// Takes a reloaded configuration: new sessions and new streams use it
    /// from now on, streams already open keep running, and established
    /// sessions of client keys it no longer authorizes are ended.
    fn adopt(&mut self, next: Arc<Shared>) {
        self.shared = next;
        let revoked: Vec<Token> = self
            .sessions
            .values()
            .filter(|s| s.established && !self.key_authorized(s))
            .map(|s| s.token)
            .collect();
        for t in revoked {
            self.revoke(t);
        }
    }

    fn key_authorized(&self, s: &Session) -> bool {
        s.client_key().is_some_and(|k| self.shared.authorizes(&k))
    }

    /// Ends session `t` because its client key is no longer authorized:
    /// an authenticated CLOSE, then its streams are aborted.
    fn revoke(&mut self, t: Token) {
        let Some(s) = self.sessions.get_mut(&t) else {
            return;
        };
        let key = s.client_key().map(|k| k.to_string()).unwrap_or_default();
        warn!(
            "{}: client key {key} is no longer in authorized_keys: session ended ({} open streams aborted)",
            s.peer,
            s.stream_count()
        );
        s.close_now(CloseCode::KeyRevoked);
        self.close_session(t);
    }

    fn next_timeout(&self) -> Option<Duration> {
        let now = StdInstant::now();
        let hello = self.shared.limits.hello_timeout;
        let mut next: Option<StdInstant> = None;
        let mut take = |t: StdInstant| next = Some(next.map_or(t, |n: StdInstant| n.min(t)));
        for s in self.sessions.values() {
            if s.is_pending() {
                take(s.started() + hello);
            } else if let Some(t) = s.next_deadline(&self.clock) {
                take(t);
            }
        }
        if let Some(t) = self.accept_paused_until {
            take(t);
        }
        if let Some(status) = &self.status {
            take(status.next_due());
        }
        if !self.sessions.is_empty() {
            take(self.next_idle_sweep);
        }
        if self.shutdown_deadline.is_some() {
            take(now + Duration::from_millis(100));
        }
        next.map(|t| t.saturating_duration_since(now))
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
                    // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                    warn!(
                        "accept failed: {e}; pausing accepts for {} ms",
                        ACCEPT_RETRY.as_millis()
                    );
                    self.accept_paused_until = Some(StdInstant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, sock: TcpStream, peer: SocketAddr) {
        let _ = sock.set_nodelay(true);
        let token = self.routes.add(Route::Session);
        let mut session = Session::new(token, peer, sock, self.shared.metrics.clone());
        if self.shared.established() >= self.shared.limits.max_sessions {
            return self.refuse(session, "at the session limit");
        }
        let victim = if self.shared.proxy_from.contains(peer.ip()) {
            // The per-source checks wait for the client address in the
            // PROXY header (see `proxied`).
            session.expect_proxy_header();
            self.admission.admit_proxied(token, StdInstant::now())
        } else {
            if !self.shared.rate_allows(peer.ip()) {
                let why = "handshake rate limit for this source";
                return self.refuse_as(session, HandshakeOutcome::RateLimited, why);
            }
            match self.admission.admit(token, peer.ip(), StdInstant::now()) {
                Err(Refusal::SourcePending) => {
                    return self.refuse(session, "too many pending handshakes from this source");
                }
                Ok(victim) => victim,
            }
        };
        if let Some(victim) = victim
            && let Some(v) = self.sessions.remove(&victim)
        {
            self.shared.metrics.handshake(HandshakeOutcome::Failed);
            debug!("{}: pending handshake evicted for a newcomer", v.peer);
            v.close(&mut ctx!(self));
        }
        if let Err(e) = self.poll.registry().register(
            session.sock_mut(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("{peer}: cannot register: {e}");
            self.admission.remove(token);
            self.routes.remove(token);
            return;
        }
        debug!("{peer}: connection accepted");
        self.sessions.insert(token, session);
        self.touched.insert(token);
    }

    /// Refuses a connection with the Busy alert; the client retries.
    fn refuse(&mut self, session: Session, why: &str) {
        self.refuse_as(session, HandshakeOutcome::Busy, why);
    }

    /// [`Self::refuse`], counted as `outcome`.
    fn refuse_as(&mut self, mut session: Session, outcome: HandshakeOutcome, why: &str) {
        self.shared.metrics.handshake(outcome);
        session.send_busy();
        self.shared.log_refusal(session.peer, why);
        self.admission.remove(session.token);
        session.close(&mut ctx!(self));
    }

    fn dispatch(&mut self, token: Token, ready: Readiness) {
        match self.routes.get(token) {
            Some(Route::Session) => {
                if ready.read_closed
                    && let Some(s) = self.sessions.get_mut(&token)
                {
                    s.note_read_closed();
                }
                if ready.readable {
                    self.read_session(token);
                }
                self.touched.insert(token);
            }
            Some(Route::Upstream(t, id)) => {
                if let Some(s) = self.sessions.get_mut(&t) {
                    s.on_upstream(&mut ctx!(self), id, ready);
                    self.touched.insert(t);
                }
            }
            Some(Route::Listener(t, id)) => {
                if let Some(s) = self.sessions.get_mut(&t) {
                    s.on_listener(&mut ctx!(self), id);
                    self.touched.insert(t);
                }
            }
            None => {}
        }
    }

    fn read_session(&mut self, t: Token) {
        loop {
            let Some(s) = self.sessions.get_mut(&t) else {
                return;
            };
            match s.on_readable(&mut ctx!(self)) {
                ReadResult::Progress => return,
                ReadResult::Gone => return self.close_session(t),
                ReadResult::HelloReady => return self.hello_ready(t),
                ReadResult::Proxied(header) => {
                    if !self.proxied(t, header) {
                        return;
                    }
                }
                ReadResult::Refused(why) => {
                    let peer = s.peer;
                    self.shared.log_header_refusal(peer, &why);
                    return self.close_session(t);
                }
            }
        }
    }

    /// The trusted proxy in front of pending session `t` named its client:
    /// from here on the session is that client (logs, per-source limits).
    /// A LOCAL header (a health check) leaves the proxy's own address.
    /// False if the session was refused.
    fn proxied(&mut self, t: Token, header: Header) -> bool {
        let Some(s) = self.sessions.get_mut(&t) else {
            return false;
        };
        let proxy = s.peer;
        if let Some(client) = header.source {
            // A dual-stack balancer names IPv4 clients as ::ffff:a.b.c.d.
            let client = SocketAddr::new(client.ip().to_canonical(), client.port());
            debug!("{proxy}: PROXY v{} header: client {client}", header.version);
            s.peer = client;
        } else {
            debug!(
                "{proxy}: PROXY v{} header without a client address",
                header.version
            );
        }
        let source = s.peer.ip();
        let refusal = if !self.shared.rate_allows(source) {
            Some((
                HandshakeOutcome::RateLimited,
                "handshake rate limit for this source",
            ))
        } else if self.admission.set_source(t, source).is_err() {
            Some((
                HandshakeOutcome::Busy,
                "too many pending handshakes from this source",
            ))
        } else {
            None
        };
        match refusal {
            Some((outcome, why)) => {
                if let Some(s) = self.sessions.remove(&t) {
                    self.refuse_as(s, outcome, why);
                }
                false
            }
            None => true,
        }
    }

    /// The pending session `t` sent its complete first message: spend a
    /// private-key operation on it only within the budgets.
    fn hello_ready(&mut self, t: Token) {
        self.admission.hello_received(t);
        let refusal = if self.shared.established() >= self.shared.limits.max_sessions {
            Some("at the session limit")
        } else if !self.shared.key_ops.try_take(StdInstant::now()) {
            Some("server-wide private-key operation rate reached")
        } else {
            None
        };
        let Some(mut s) = self.sessions.remove(&t) else {
            return;
        };
        if let Some(why) = refusal {
            return self.refuse(s, why);
        }
        if !s.start_core(&mut ctx!(self)) {
            return self.refuse(s, "server memory budget spent");
        }
        if s.key_queue_full() {
            return self.refuse(s, "private-key work queue full");
        }
        self.sessions.insert(t, s);
        self.touched.insert(t);
    }

    fn take_resolved(&mut self) {
        while let Some(res) = self.resolver.try_result() {
            let (t, id) = res.tag;
            let Some(s) = self.sessions.get_mut(&t) else {
                continue;
            };
            s.on_resolved(&mut ctx!(self), id, res.ticket, res.result);
            self.touched.insert(t);
        }
    }

    /// Private-key results from the worker pool resume their handshakes.
    fn take_key_results(&mut self) {
        let mut results = Vec::new();
        self.keys
            .drain(|token, result| results.push((Token(token as usize), result)));
        for (t, result) in results {
            let Some(s) = self.sessions.get_mut(&t) else {
                continue;
            };
            s.on_key_result(&mut ctx!(self), result);
            self.touched.insert(t);
        }
    }

    fn run_timers(&mut self) {
        let std_now = StdInstant::now();
        if self.accept_paused_until.is_some_and(|t| std_now >= t) {
            self.accept_paused_until = None;
            self.accept_all();
        }
        if std_now >= self.next_idle_sweep {
            self.next_idle_sweep = std_now + IDLE_RELEASE_AFTER;
            let quiet_before = std_now - IDLE_RELEASE_AFTER;
            for s in self.sessions.values_mut() {
                s.release_if_idle(quiet_before);
            }
        }
        let hello = self.shared.limits.hello_timeout;
        let stale: Vec<Token> = self
            .sessions
            .values()
            .filter(|s| s.is_pending() && std_now >= s.started() + hello)
            .map(|s| s.token)
            .collect();
        for t in stale {
            if let Some(s) = self.sessions.get(&t) {
                debug!(
                    "{}: no complete ClientHello within {hello:?}: closed",
                    s.peer
                );
            }
            self.close_session(t);
        }
        let tokens: Vec<Token> = self.sessions.keys().copied().collect();
        for t in tokens {
            let Some(s) = self.sessions.get_mut(&t) else {
                continue;
            };
            if s.next_deadline(&self.clock)
                .is_some_and(|d| d <= std_now + Duration::from_millis(1))
            {
                s.on_timer(&mut ctx!(self));
                self.touched.insert(t);
            }
        }
    }

    fn service(&mut self, t: Token) {
        let Some(s) = self.sessions.get_mut(&t) else {
            return;
        };
        let alive = s.service(&mut ctx!(self));
        if s.established && self.admission.remove(t) {
            self.shared.session_established();
            // Its handshake may have begun under a configuration that a
            // reload has replaced since.
            let authorized = s.client_key().is_some_and(|k| self.shared.authorizes(&k));
            if alive && !authorized {
                return self.revoke(t);
            }
        }
        if !alive {
            self.close_session(t);
        }
    }

    fn close_session(&mut self, t: Token) {
        let Some(s) = self.sessions.remove(&t) else {
            return;
        };
        if s.established && !self.admission.contains(t) {
            self.shared.session_ended();
        }
        self.shared
            .metrics
            .connection_closed(s.established, s.error());
        self.admission.remove(t);
        s.close(&mut ctx!(self));
    }

    fn begin_shutdown(&mut self) {
        crate::service::notify_stopping();
        self.shutdown_deadline = Some(StdInstant::now() + self.shared.limits.drain);
        let _ = self.poll.registry().deregister(&mut self.listener);
        for (t, s) in self.sessions.iter_mut() {
            s.go_away();
            self.touched.insert(*t);
        }
    }

    fn finish_shutdown(&mut self) {
        let tokens: Vec<Token> = self.sessions.keys().copied().collect();
        for t in tokens {
            if let Some(s) = self.sessions.get_mut(&t) {
                s.close_now(CloseCode::ShuttingDown);
            }
            self.close_session(t);
        }
    }
}

/// Counts a running loop in [`Shared`]'s `loops_live` down when dropped.
struct LoopLive(Arc<Shared>);

impl Drop for LoopLive {
    fn drop(&mut self) {
        let _ = self
            .0
            .loops_live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}
