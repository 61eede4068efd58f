//! One server event loop (one thread): accepts from the shared listening
//! socket, applies admission ([`super::admission`]), routes readiness to
//! its sessions, runs their timers, and delivers name lookups. It holds no
//! per-session state itself: sessions own their sockets, core connection
//! and budget share.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant as StdInstant};

use hytun_core::StreamId;
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::admission::{Admission, AdmissionLimits, Refusal};
use super::proxy_header::Header;
use super::session::{Ctx, ReadResult, Route, Routes, Session};
use super::{SHUTDOWN_GRACE, Shared};
use crate::keywork::KeyWorkHandle;
use crate::resolver::LoopResolver;
use crate::runtime::{Clock, StopHandle};

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
    stop: StopHandle,
    resolver: LoopResolver<(Token, StreamId)>,
    keys: KeyWorkHandle,
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
    /// `loops`.
    pub fn new(
        shared: Arc<Shared>,
        listener: std::net::TcpListener,
        loops: usize,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
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
                        if let Some(s) = signals.as_mut() {
                            for sig in s.pending() {
                                info!("signal {sig}: shutting down gracefully");
                            }
                        }
                        self.stop.stop();
                    }
                    token => self.dispatch(
                        token,
                        event.is_readable() || event.is_read_closed(),
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
                let streams: usize = self.sessions.values().map(Session::stream_count).sum();
                if streams == 0 || StdInstant::now() >= deadline {
                    self.finish_shutdown();
                    info!("server loop stopped");
                    return Ok(());
                }
            }
        }
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
                    warn!("accept failed: {e}; pausing accepts for {ACCEPT_RETRY:?}");
                    self.accept_paused_until = Some(StdInstant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, sock: TcpStream, peer: SocketAddr) {
        let _ = sock.set_nodelay(true);
        let token = self.routes.add(Route::Session);
        let mut session = Session::new(token, peer, sock);
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
                return self.refuse(session, "handshake rate limit for this source");
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
    fn refuse(&mut self, mut session: Session, why: &str) {
        session.send_busy();
        self.shared.log_refusal(session.peer, why);
        self.admission.remove(session.token);
        session.close(&mut ctx!(self));
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool) {
        match self.routes.get(token) {
            Some(Route::Session) => {
                if readable {
                    self.read_session(token);
                }
                self.touched.insert(token);
            }
            Some(Route::Upstream(t, id)) => {
                if let Some(s) = self.sessions.get_mut(&t) {
                    s.on_upstream(&mut ctx!(self), id, readable, writable);
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
            Some("handshake rate limit for this source")
        } else if self.admission.set_source(t, source).is_err() {
            Some("too many pending handshakes from this source")
        } else {
            None
        };
        match refusal {
            Some(why) => {
                if let Some(s) = self.sessions.remove(&t) {
                    self.refuse(s, why);
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
        self.admission.remove(t);
        s.close(&mut ctx!(self));
    }

    fn begin_shutdown(&mut self) {
        self.shutdown_deadline = Some(StdInstant::now() + SHUTDOWN_GRACE);
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
                s.close_now();
            }
            self.close_session(t);
        }
    }
}
