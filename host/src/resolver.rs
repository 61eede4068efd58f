//! Name resolution off the event loops: one small pool of worker threads,
//! shared by every server loop, runs the blocking lookup function (the
//! system resolver by default, anything implementing [`LookupFn`] in tests)
//! and hands each result to the loop that asked, waking it with its
//! `mio::Waker`.
//!
//! The pool owns the DNS resource limits, so that no client can make DNS
//! slow for the others:
//! - a bounded number of lookups in flight (queued or running; default
//!   256): [`LoopResolver::submit`] answers [`SubmitError::Full`] at once
//!   when it is reached;
//! - a per-session quota of lookups in flight (default 8):
//!   [`SubmitError::QuotaExceeded`];
//! - a deadline per lookup, counted from submission (default 5 s): at the
//!   deadline the loop receives [`LookupError::TimedOut`] and the lookup
//!   frees its slot and quota, even if the lookup function is still blocked;
//! - a fair share of the workers: one session never runs lookups on more
//!   than half of the workers (at least one), so slow names from one client
//!   cannot occupy them all;
//! - cancellation ([`LoopResolver::cancel`], [`LoopResolver::cancel_session`],
//!   or dropping the [`LoopResolver`]): a job not yet started is never
//!   looked up, and no result is delivered for it afterwards.
//!
//! Stuck lookups: `getaddrinfo` cannot be interrupted, so a worker whose
//! lookup passed its deadline stays blocked until the OS gives up. Such a
//! worker is *stuck*: the pool starts a replacement worker and the stuck
//! thread exits when its lookup returns, as long as at most `max_stuck`
//! (default 16) threads are stuck at once. Beyond that no replacement is
//! started, so the pool never holds more than `workers + max_stuck`
//! threads; it may then run short of workers until stuck lookups return,
//! but every lookup is still answered by its deadline. A stuck thread still
//! counts towards its session's share of the workers until it returns.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::allow::{AllowList, NameDecision};

/// The blocking lookup a worker runs: `host` and `port` to socket addresses.
pub trait LookupFn: Send + Sync + 'static {
    /// Resolves `host:port`. May block; the pool bounds how long it waits.
    ///
    /// # Errors
    /// The resolver's failure (no such name, DNS failure, ...).
    fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The system resolver, through [`std::net::ToSocketAddrs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl LookupFn for SystemLookup {
    fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        (host, port).to_socket_addrs().map(Iterator::collect)
    }
}

impl<F> LookupFn for F
where
    F: Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
{
    fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        self(host, port)
    }
}

/// Pool sizes and limits; [`Default`] gives the values in the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Most stuck workers replaced at once (see the module docs).
    pub max_stuck: usize,
    /// Most lookups in flight in the whole pool (at least 1).
    pub max_jobs: usize,
    /// Most lookups in flight per session (at least 1).
    pub per_session: usize,
    /// Time from submission to a [`LookupError::TimedOut`] answer.
    pub timeout: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            max_stuck: 16,
            max_jobs: 256,
            per_session: 8,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a lookup was not accepted; the caller refuses the stream at once
/// (`NotAllowed` with the allowlist's refusal code, the others as a
/// resource refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The allowlist refuses the name before any lookup
    /// ([`LoopResolver::submit_name`]); the same whether or not it exists.
    NotAllowed,
    /// The pool holds its maximum of lookups in flight.
    Full,
    /// The session holds its maximum of lookups in flight.
    QuotaExceeded,
    /// The pool is shutting down.
    Closed,
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAllowed => "destination not allowed",
            Self::Full => "too many name lookups in progress on this server",
            Self::QuotaExceeded => "too many name lookups in progress for this session",
            Self::Closed => "the resolver is shutting down",
        })
    }
}

impl std::error::Error for SubmitError {}

/// Why a lookup produced no address to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// No resolved address is allowed, or the lookup failed for a name the
    /// client may not learn about (see [`admit`]); never from the pool.
    NotAllowed,
    /// The deadline passed first.
    TimedOut,
    /// The name resolved to no address.
    NoAddresses,
    /// The resolver failed; the text is its message.
    Failed(String),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAllowed => f.write_str("destination not allowed"),
            Self::TimedOut => f.write_str("name lookup timed out"),
            Self::NoAddresses => f.write_str("name has no addresses"),
            Self::Failed(e) => write!(f, "name lookup failed: {e}"),
        }
    }
}

impl std::error::Error for LookupError {}

/// Identifies one submitted lookup, for [`LoopResolver::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

/// A finished lookup, as delivered to the loop that submitted it.
#[derive(Debug)]
pub struct Resolved<T> {
    /// The ticket [`LoopResolver::submit`] returned.
    pub ticket: Ticket,
    /// The caller's tag.
    pub tag: T,
    /// The addresses (never empty), or why there are none.
    pub result: Result<Vec<SocketAddr>, LookupError>,
}

/// The resolver pool; dropping it stops the workers (lookups still queued
/// are never answered, so drop it only after the loops).
pub struct ResolverPool {
    shared: Arc<Shared>,
}

/// One event loop's access to the pool: submits lookups and receives their
/// results. Dropping it cancels every lookup it submitted.
pub struct LoopResolver<T> {
    shared: Arc<Shared>,
    loop_id: u64,
    waker: Arc<mio::Waker>,
    inbox: Arc<Inbox<T>>,
}

/// (loop id, caller's session key): the unit of the per-session quota.
type SessionKey = (u64, u64);

/// Pushes a job's result into its loop's inbox.
type Deliver = Box<dyn FnOnce(Result<Vec<SocketAddr>, LookupError>) + Send>;

struct Shared {
    cfg: ResolverConfig,
    lookup: Arc<dyn LookupFn>,
    state: Mutex<State>,
    /// Workers wait here for jobs.
    work: Condvar,
    /// The timer waits here for the next deadline.
    timer: Condvar,
}

#[derive(Default)]
struct State {
    next_id: u64,
    next_loop: u64,
    next_worker: u64,
    shutdown: bool,
    /// Every job not yet answered (queued, running, or cancelled while
    /// running), by ticket number.
    jobs: HashMap<u64, Job>,
    /// Jobs not started, oldest first.
    queue: VecDeque<u64>,
    /// (deadline, ticket) of every job in `jobs`.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Lookups in flight per session (the quota).
    in_flight: HashMap<SessionKey, usize>,
    /// Threads running a lookup per session, stuck ones included (the
    /// fair share of workers).
    busy: HashMap<SessionKey, usize>,
    /// Stuck workers that exit when their lookup returns.
    retiring: HashSet<u64>,
}

struct Job {
    key: SessionKey,
    host: String,
    port: u16,
    deadline: Instant,
    /// `None` once cancelled.
    deliver: Option<Deliver>,
    waker: Arc<mio::Waker>,
    /// The worker running it, if started.
    worker: Option<u64>,
    /// Whether it still counts in `in_flight`.
    counted: bool,
}

/// A loop's delivered results, each with the session key it was submitted
/// under (for [`LoopResolver::cancel_session`]).
struct Inbox<T> {
    results: Mutex<VecDeque<(u64, Resolved<T>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The pool's invariants hold between statements that cannot panic, so
    // a poisoned lock (a panicking lookup function) is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ResolverPool {
    /// Starts a pool with the system resolver.
    ///
    /// # Errors
    /// A worker or timer thread could not be spawned.
    pub fn new(cfg: ResolverConfig) -> io::Result<Self> {
        Self::with_lookup(cfg, SystemLookup)
    }

    /// Starts a pool that resolves with `lookup`.
    ///
    /// # Errors
    /// A worker or timer thread could not be spawned.
    pub fn with_lookup(cfg: ResolverConfig, lookup: impl LookupFn) -> io::Result<Self> {
        let cfg = ResolverConfig {
            workers: cfg.workers.max(1),
            max_jobs: cfg.max_jobs.max(1),
            per_session: cfg.per_session.max(1),
            ..cfg
        };
        let shared = Arc::new(Shared {
            cfg,
            lookup: Arc::new(lookup),
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            timer: Condvar::new(),
        });
        let pool = Self {
            shared: Arc::clone(&shared),
        };
        let timer = Arc::clone(&shared);
        thread::Builder::new()
            .name("hytun-dns-timer".into())
            .spawn(move || timer.run_timer())?;
        for _ in 0..cfg.workers {
            let id = {
                let mut st = lock(&shared.state);
                st.next_worker += 1;
                st.next_worker
            };
            Shared::spawn_worker(&shared, id)?;
        }
        Ok(pool)
    }

    /// A handle for one event loop; results for its lookups go to its own
    /// queue and wake `waker`.
    #[must_use]
    pub fn attach<T: Send + 'static>(&self, waker: Arc<mio::Waker>) -> LoopResolver<T> {
        let loop_id = {
            let mut st = lock(&self.shared.state);
            st.next_loop += 1;
            st.next_loop
        };
        LoopResolver {
            shared: Arc::clone(&self.shared),
            loop_id,
            waker,
            inbox: Arc::new(Inbox {
                results: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// Lookups in flight (queued or running, not yet answered).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.state).jobs.len()
    }

    /// Workers currently stuck in a lookup past its deadline and replaced.
    #[must_use]
    pub fn stuck(&self) -> usize {
        lock(&self.shared.state).retiring.len()
    }
}

impl Drop for ResolverPool {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.work.notify_all();
        self.shared.timer.notify_all();
    }
}

impl<T: Send + 'static> LoopResolver<T> {
    /// Queues a lookup of `host:port` for the caller's `session` (any key
    /// that identifies a client session within this loop); its result comes
    /// back from [`try_result`](Self::try_result) with `tag`, after the
    /// loop's waker is woken. Decide with
    /// [`AllowList::decide_name`](crate::allow::AllowList::decide_name)
    /// first: a refused name must not be submitted.
    ///
    /// # Errors
    /// [`SubmitError::Full`], [`SubmitError::QuotaExceeded`] or
    /// [`SubmitError::Closed`], at once; nothing is queued then.
    pub fn submit(
        &self,
        session: u64,
        tag: T,
        host: &str,
        port: u16,
    ) -> Result<Ticket, SubmitError> {
        let shared = &self.shared;
        let key = (self.loop_id, session);
        let mut st = lock(&shared.state);
        if st.shutdown {
            return Err(SubmitError::Closed);
        }
        if st.jobs.len() >= shared.cfg.max_jobs {
            return Err(SubmitError::Full);
        }
        if st.in_flight.get(&key).copied().unwrap_or(0) >= shared.cfg.per_session {
            return Err(SubmitError::QuotaExceeded);
        }
        st.next_id += 1;
        let id = st.next_id;
        let ticket = Ticket(id);
        let inbox = Arc::clone(&self.inbox);
        let deliver: Deliver = Box::new(move |result| {
            lock(&inbox.results).push_back((
                session,
                Resolved {
                    ticket,
                    tag,
                    result,
                },
            ));
        });
        let deadline = Instant::now() + shared.cfg.timeout;
        st.jobs.insert(
            id,
            Job {
                key,
                host: host.to_string(),
                port,
                deadline,
                deliver: Some(deliver),
                waker: Arc::clone(&self.waker),
                worker: None,
                counted: true,
            },
        );
        st.queue.push_back(id);
        st.deadlines.insert((deadline, id));
        *st.in_flight.entry(key).or_default() += 1;
        drop(st);
        shared.work.notify_one();
        shared.timer.notify_one();
        Ok(ticket)
    }

    /// Decides `name:port` with the allowlist and, unless it is refused,
    /// submits its lookup like [`submit`](Self::submit). A refused name is
    /// never looked up. Keep the returned decision for [`admit`].
    ///
    /// # Errors
    /// [`SubmitError::NotAllowed`] for a name no rule can match, else as
    /// [`submit`](Self::submit).
    pub fn submit_name(
        &self,
        allow: &AllowList,
        session: u64,
        tag: T,
        name: &str,
        port: u16,
    ) -> Result<(Ticket, NameDecision), SubmitError> {
        let decision = allow.decide_name(name, port);
        if !decision.needs_lookup() {
            return Err(SubmitError::NotAllowed);
        }
        self.submit(session, tag, name, port)
            .map(|ticket| (ticket, decision))
    }

    /// Takes a delivered result, if any.
    pub fn try_result(&self) -> Option<Resolved<T>> {
        lock(&self.inbox.results).pop_front().map(|(_, r)| r)
    }

    /// Cancels a lookup whose stream is gone: it is skipped if not started,
    /// its result is discarded, and it no longer counts against the
    /// session's quota. After this returns, [`try_result`](Self::try_result)
    /// never yields `ticket`. Returns whether the lookup was still pending
    /// (false if it had finished, timed out, or belongs to another loop).
    pub fn cancel(&self, ticket: Ticket) -> bool {
        let mut st = lock(&self.shared.state);
        let pending = st
            .jobs
            .get(&ticket.0)
            .is_some_and(|j| j.key.0 == self.loop_id && j.deliver.is_some());
        if pending {
            st.cancel(ticket.0);
        }
        lock(&self.inbox.results).retain(|(_, r)| r.ticket != ticket);
        pending
    }

    /// Cancels every lookup of `session` (when the session ends), with the
    /// same guarantees as [`cancel`](Self::cancel).
    pub fn cancel_session(&self, session: u64) {
        let key = (self.loop_id, session);
        let mut st = lock(&self.shared.state);
        let ids: Vec<u64> = st
            .jobs
            .iter()
            .filter(|(_, j)| j.key == key)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            st.cancel(id);
        }
        lock(&self.inbox.results).retain(|(s, _)| *s != session);
    }
}

impl<T> Drop for LoopResolver<T> {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        let ids: Vec<u64> = st
            .jobs
            .iter()
            .filter(|(_, j)| j.key.0 == self.loop_id)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            st.cancel(id);
        }
    }
}

impl State {
    /// Stops counting job `id` against its session's quota.
    fn release(&mut self, id: u64) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if !std::mem::replace(&mut job.counted, false) {
            return;
        }
        let key = job.key;
        if let Some(n) = self.in_flight.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&key);
            }
        }
    }

    /// Cancels job `id`: forgets it if queued; if running, keeps it (so its
    /// deadline still detects a stuck worker) but drops its delivery.
    fn cancel(&mut self, id: u64) {
        self.release(id);
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.deliver = None;
        if job.worker.is_none() {
            let deadline = job.deadline;
            self.jobs.remove(&id);
            self.queue.retain(|&q| q != id);
            self.deadlines.remove(&(deadline, id));
        }
    }

    /// Counts one thread fewer running a lookup for `key`.
    fn unbusy(&mut self, key: SessionKey) {
        if let Some(n) = self.busy.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.busy.remove(&key);
            }
        }
    }
}

impl Shared {
    /// Most threads one session may have running lookups.
    fn session_share(&self) -> usize {
        (self.cfg.workers / 2).max(1)
    }

    fn spawn_worker(this: &Arc<Self>, id: u64) -> io::Result<()> {
        let shared = Arc::clone(this);
        thread::Builder::new()
            .name("hytun-dns".into())
            .spawn(move || shared.run_worker(id))
            .map(drop)
    }

    fn run_worker(&self, id: u64) {
        let mut st = lock(&self.state);
        loop {
            if st.shutdown {
                return;
            }
            let share = self.session_share();
            let next = st.queue.iter().position(|q| {
                st.jobs
                    .get(q)
                    .is_some_and(|j| st.busy.get(&j.key).copied().unwrap_or(0) < share)
            });
            let Some(jid) = next.and_then(|pos| st.queue.remove(pos)) else {
                st = self.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            let Some(job) = st.jobs.get_mut(&jid) else {
                continue;
            };
            job.worker = Some(id);
            let (key, host, port) = (job.key, std::mem::take(&mut job.host), job.port);
            *st.busy.entry(key).or_default() += 1;
            drop(st);

            let lookup = Arc::clone(&self.lookup);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                lookup.lookup(&host, port)
            }));
            let result = match outcome {
                Ok(Ok(addrs)) if addrs.is_empty() => Err(LookupError::NoAddresses),
                Ok(Ok(addrs)) => Ok(addrs),
                Ok(Err(e)) => Err(LookupError::Failed(e.to_string())),
                Err(_) => Err(LookupError::Failed("the resolver crashed".into())),
            };

            st = lock(&self.state);
            st.unbusy(key);
            st.release(jid);
            let mut wake = None;
            if let Some(job) = st.jobs.remove(&jid) {
                st.deadlines.remove(&(job.deadline, jid));
                if let Some(deliver) = job.deliver {
                    deliver(result);
                    wake = Some(job.waker);
                }
            }
            let retired = st.retiring.remove(&id);
            if retired {
                // Our session share is free again: let a live worker look.
                self.work.notify_one();
            }
            if retired || wake.is_some() {
                drop(st);
                if let Some(w) = wake {
                    let _ = w.wake();
                }
                if retired {
                    return;
                }
                st = lock(&self.state);
            }
        }
    }

    fn run_timer(self: Arc<Self>) {
        let mut st = lock(&self.state);
        loop {
            if st.shutdown {
                return;
            }
            let now = Instant::now();
            let mut wakers = Vec::new();
            while let Some(&(deadline, id)) = st.deadlines.first() {
                if deadline > now {
                    break;
                }
                st.deadlines.pop_first();
                st.release(id);
                let Some(job) = st.jobs.remove(&id) else {
                    continue;
                };
                if let Some(deliver) = job.deliver {
                    deliver(Err(LookupError::TimedOut));
                    wakers.push(job.waker);
                }
                match job.worker {
                    None => st.queue.retain(|&q| q != id),
                    Some(worker) => self.worker_stuck(&mut st, worker),
                }
            }
            if !wakers.is_empty() {
                drop(st);
                for w in wakers {
                    let _ = w.wake();
                }
                st = lock(&self.state);
                continue;
            }
            st = match st.deadlines.first() {
                Some(&(deadline, _)) => {
                    self.timer
                        .wait_timeout(st, deadline.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self.timer.wait(st).unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// `worker` is blocked in a lookup past its deadline: replace it while
    /// fewer than `max_stuck` workers are stuck (see the module docs).
    fn worker_stuck(self: &Arc<Self>, st: &mut State, worker: u64) {
        if st.retiring.len() >= self.cfg.max_stuck {
            log::warn!(
                "name resolver: {} lookups stuck past their deadline; not adding workers",
                st.retiring.len() + 1
            );
            return;
        }
        st.next_worker += 1;
        let id = st.next_worker;
        match Self::spawn_worker(self, id) {
            Ok(()) => {
                st.retiring.insert(worker);
            }
            Err(e) => log::warn!("name resolver: cannot start a replacement worker: {e}"),
        }
    }
}

/// The addresses a resolved name may connect to: the lookup's result for a
/// name decided as `decision` ([`LoopResolver::submit_name`]), filtered by
/// [`AllowList::filter_resolved`].
///
/// # Errors
/// [`LookupError::NotAllowed`] if no address is allowed, and also for any
/// failed lookup of a name that is not itself allowed
/// ([`NameDecision::may_reveal_lookup_errors`]), so the answer does not tell
/// whether it exists; otherwise the lookup's own error.
pub fn admit(
    allow: &AllowList,
    decision: NameDecision,
    result: Result<Vec<SocketAddr>, LookupError>,
) -> Result<Vec<SocketAddr>, LookupError> {
    match result {
        Ok(addrs) => {
            let allowed = allow.filter_resolved(decision, addrs);
            if allowed.is_empty() {
                Err(LookupError::NotAllowed)
            } else {
                Ok(allowed)
            }
        }
        Err(e) if decision.may_reveal_lookup_errors() => Err(e),
        Err(_) => Err(LookupError::NotAllowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    /// An injected lookup: records every name it is asked for; names
    /// starting with `slow` block until [`Fake::open`], `fail` fails,
    /// `empty` has no address, anything else is 127.0.0.1.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        open: Mutex<bool>,
        gate: Condvar,
        /// Lookups currently blocked.
        blocked: Mutex<usize>,
    }

    impl Fake {
        fn calls(&self) -> Vec<String> {
            lock(&self.calls).clone()
        }

        fn blocked(&self) -> usize {
            *lock(&self.blocked)
        }

        fn open(&self) {
            *lock(&self.open) = true;
            self.gate.notify_all();
        }

        /// Waits until `n` lookups are blocked (the test's own progress
        /// check, not a timing assertion).
        fn wait_blocked(&self, n: usize) {
            let until = Instant::now() + Duration::from_secs(30);
            while self.blocked() != n {
                assert!(Instant::now() < until, "never {n} blocked lookups");
                thread::sleep(Duration::from_millis(2));
            }
        }
    }

    struct FakeLookup(Arc<Fake>);

    impl LookupFn for FakeLookup {
        fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            let fake = &self.0;
            lock(&fake.calls).push(host.to_string());
            if host.starts_with("slow") {
                *lock(&fake.blocked) += 1;
                let mut open = lock(&fake.open);
                while !*open {
                    open = fake.gate.wait(open).unwrap_or_else(PoisonError::into_inner);
                }
                drop(open);
                *lock(&fake.blocked) -= 1;
            }
            if host.starts_with("fail") {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no such name"));
            }
            if host.starts_with("empty") {
                return Ok(Vec::new());
            }
            Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)])
        }
    }

    /// One event loop: its poll, and its handle on the pool.
    struct Loop {
        poll: mio::Poll,
        res: LoopResolver<&'static str>,
    }

    impl Loop {
        fn new(pool: &ResolverPool) -> Self {
            let poll = mio::Poll::new().unwrap();
            let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
            Self {
                res: pool.attach(waker),
                poll,
            }
        }

        /// The next result, waiting on the loop's waker (panics after a
        /// generous 30 s so a bug fails instead of hanging).
        fn next(&mut self) -> Resolved<&'static str> {
            let until = Instant::now() + Duration::from_secs(30);
            let mut events = mio::Events::with_capacity(4);
            loop {
                if let Some(r) = self.res.try_result() {
                    return r;
                }
                let left = until.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "no result delivered");
                self.poll.poll(&mut events, Some(left)).unwrap();
            }
        }

        fn submit(&self, session: u64, tag: &'static str, host: &str) -> Ticket {
            match self.res.submit(session, tag, host, 80) {
                Ok(t) => t,
                Err(e) => panic!("{host}: {e}"),
            }
        }
    }

    fn pool(cfg: ResolverConfig) -> (ResolverPool, Arc<Fake>) {
        let fake = Arc::new(Fake::default());
        let pool = ResolverPool::with_lookup(cfg, FakeLookup(Arc::clone(&fake))).unwrap();
        (pool, fake)
    }

    fn cfg(workers: usize) -> ResolverConfig {
        ResolverConfig {
            workers,
            ..ResolverConfig::default()
        }
    }

    fn localhost(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    #[test]
    fn results_are_tagged_and_delivered_to_their_own_loop() {
        let (pool, fake) = pool(cfg(2));
        let mut a = Loop::new(&pool);
        let mut b = Loop::new(&pool);
        let ta = a.submit(1, "a-ok", "one.test");
        let tb = b.submit(1, "b-fail", "fail.test");
        let ra = a.next();
        assert_eq!((ra.ticket, ra.tag), (ta, "a-ok"));
        assert_eq!(ra.result, Ok(vec![localhost(80)]));
        let rb = b.next();
        assert_eq!((rb.ticket, rb.tag), (tb, "b-fail"));
        assert_eq!(rb.result, Err(LookupError::Failed("no such name".into())));
        assert!(a.res.try_result().is_none(), "b's result went to a");
        b.submit(1, "b-empty", "empty.test");
        let r = b.next();
        assert_eq!(
            (r.tag, r.result),
            ("b-empty", Err(LookupError::NoAddresses))
        );
        let mut calls = fake.calls();
        calls.sort();
        assert_eq!(calls, ["empty.test", "fail.test", "one.test"]);
        assert_eq!(pool.in_flight(), 0);
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let (pool, fake) = pool(ResolverConfig {
            max_jobs: 2,
            ..cfg(1)
        });
        let mut l = Loop::new(&pool);
        l.submit(1, "s1", "slow1.test");
        l.submit(2, "s2", "slow2.test");
        assert_eq!(
            l.res.submit(3, "x", "other.test", 80),
            Err(SubmitError::Full)
        );
        assert_eq!(pool.in_flight(), 2);
        fake.open();
        let mut tags = [l.next().tag, l.next().tag];
        tags.sort_unstable();
        assert_eq!(tags, ["s1", "s2"]);
        l.submit(3, "again", "other.test");
        assert_eq!(l.next().tag, "again");
        assert!(!fake.calls().contains(&"x".to_string()));
    }

    #[test]
    fn per_session_quota_counts_lookups_in_flight() {
        let (pool, fake) = pool(ResolverConfig {
            per_session: 2,
            ..cfg(1)
        });
        let mut l = Loop::new(&pool);
        let first = l.submit(7, "a", "slow-a.test");
        l.submit(7, "b", "slow-b.test");
        assert_eq!(
            l.res.submit(7, "c", "slow-c.test", 80),
            Err(SubmitError::QuotaExceeded)
        );
        // Another session of the same loop, and the same key on another
        // loop, have their own quota.
        l.submit(8, "d", "slow-d.test");
        let other = Loop::new(&pool);
        other.submit(7, "e", "slow-e.test");
        // Cancelling returns the quota.
        assert!(l.res.cancel(first));
        l.submit(7, "c", "slow-c.test");
        fake.open();
        let mut tags: Vec<_> = (0..3).map(|_| l.next().tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, ["b", "c", "d"]);
        drop(other);
    }

    #[test]
    fn timeout_is_delivered_while_the_lookup_is_still_blocked() {
        let (pool, fake) = pool(ResolverConfig {
            timeout: Duration::from_secs(1),
            max_stuck: 1,
            ..cfg(1)
        });
        let mut l = Loop::new(&pool);
        let t = l.submit(1, "slow", "slow.test");
        let r = l.next();
        assert_eq!((r.ticket, r.result), (t, Err(LookupError::TimedOut)));
        assert_eq!(fake.blocked(), 1, "the lookup is still blocked");
        assert_eq!(pool.in_flight(), 0, "the slot is free");
        assert_eq!(pool.stuck(), 1);
        // The stuck worker was replaced: other sessions' names still
        // resolve. Session 1's stuck lookup still holds its share of the
        // workers, so its next name waits (and times out) instead.
        l.submit(2, "fast", "fast.test");
        let r = l.next();
        assert_eq!((r.tag, r.result), ("fast", Ok(vec![localhost(80)])));
        l.submit(1, "held", "held.test");
        let r = l.next();
        assert_eq!((r.tag, r.result), ("held", Err(LookupError::TimedOut)));
        assert_eq!(fake.calls(), ["slow.test", "fast.test"]);
        // When the blocked lookup returns, its result is dropped and the
        // stuck thread retires.
        fake.open();
        let until = Instant::now() + Duration::from_secs(30);
        while pool.stuck() != 0 {
            assert!(Instant::now() < until, "stuck worker never retired");
            thread::sleep(Duration::from_millis(2));
        }
        assert!(l.res.try_result().is_none());
    }

    #[test]
    fn beyond_the_stuck_budget_lookups_still_time_out() {
        let (pool, fake) = pool(ResolverConfig {
            timeout: Duration::from_secs(1),
            max_stuck: 0,
            ..cfg(1)
        });
        let mut l = Loop::new(&pool);
        l.submit(1, "slow", "slow.test");
        assert_eq!(l.next().result, Err(LookupError::TimedOut));
        assert_eq!(pool.stuck(), 0, "no replacement beyond the budget");
        // The only worker is wedged: a queued name is answered at its
        // deadline anyway, without being looked up.
        l.submit(1, "queued", "fast.test");
        let r = l.next();
        assert_eq!((r.tag, r.result), ("queued", Err(LookupError::TimedOut)));
        assert_eq!(fake.calls(), ["slow.test"]);
        fake.open();
        l.submit(1, "later", "later.test");
        assert_eq!(l.next().result, Ok(vec![localhost(80)]));
    }

    #[test]
    fn cancel_skips_a_lookup_not_started() {
        let (pool, fake) = pool(cfg(1));
        let mut l = Loop::new(&pool);
        l.submit(1, "slow", "slow.test");
        fake.wait_blocked(1);
        let gone = l.submit(2, "gone", "skipped.test");
        assert!(l.res.cancel(gone));
        assert!(!l.res.cancel(gone), "already cancelled");
        fake.open();
        assert_eq!(l.next().tag, "slow");
        l.submit(2, "after", "after.test");
        assert_eq!(l.next().tag, "after");
        assert_eq!(fake.calls(), ["slow.test", "after.test"]);
        assert!(l.res.try_result().is_none());
    }

    #[test]
    fn cancel_discards_the_result_of_a_running_lookup() {
        let (pool, fake) = pool(cfg(1));
        let mut l = Loop::new(&pool);
        let t = l.submit(1, "slow", "slow.test");
        fake.wait_blocked(1);
        assert!(l.res.cancel(t));
        fake.open();
        l.submit(1, "next", "next.test");
        let r = l.next();
        assert_eq!(r.tag, "next", "the cancelled result was delivered");
        assert!(l.res.try_result().is_none());
        assert_eq!(pool.in_flight(), 0);
    }

    #[test]
    fn cancel_session_and_dropping_a_loop_cancel_their_lookups() {
        let (pool, fake) = pool(cfg(1));
        let mut l = Loop::new(&pool);
        l.submit(1, "slow", "slow.test");
        fake.wait_blocked(1);
        l.submit(2, "x", "session2-a.test");
        l.submit(2, "y", "session2-b.test");
        l.res.cancel_session(2);
        let other = Loop::new(&pool);
        other.submit(1, "z", "other-loop.test");
        drop(other);
        fake.open();
        assert_eq!(l.next().tag, "slow");
        l.submit(2, "after", "after.test");
        assert_eq!(l.next().tag, "after");
        assert_eq!(fake.calls(), ["slow.test", "after.test"]);
    }

    #[test]
    fn one_session_cannot_occupy_every_worker() {
        let (pool, fake) = pool(cfg(2));
        let mut l = Loop::new(&pool);
        l.submit(1, "s1", "slow1.test");
        l.submit(1, "s2", "slow2.test");
        fake.wait_blocked(1);
        // Session 1 holds its share (one of two workers); session 2 is
        // served by the other one while slow2 waits in the queue.
        l.submit(2, "fast", "fast.test");
        assert_eq!(l.next().tag, "fast");
        assert_eq!(fake.calls(), ["slow1.test", "fast.test"]);
        fake.open();
        let mut tags = [l.next().tag, l.next().tag];
        tags.sort_unstable();
        assert_eq!(tags, ["s1", "s2"]);
    }

    #[test]
    fn a_name_no_rule_matches_is_never_looked_up() {
        let allow =
            AllowList::parse(&["*.allowed.test:443".into(), "10.0.0.0/8:22".into()]).unwrap();
        let (pool, fake) = pool(cfg(1));
        let mut l = Loop::new(&pool);
        for (name, port) in [
            ("secret.internal", 443),
            ("allowed.test", 443),
            ("x.allowed.test", 80),
            ("fail.nonexistent", 443),
        ] {
            assert_eq!(
                l.res.submit_name(&allow, 1, "no", name, port),
                Err(SubmitError::NotAllowed),
                "{name}:{port}"
            );
        }
        let (_, d) = l
            .res
            .submit_name(&allow, 1, "yes", "x.allowed.test", 443)
            .unwrap();
        assert_eq!(d, NameDecision::Allowed);
        let r = l.next();
        assert_eq!(r.tag, "yes");
        // Resolved to 127.0.0.1: a special address no IP rule allows.
        assert_eq!(admit(&allow, d, r.result), Err(LookupError::NotAllowed));
        let (_, d) = l
            .res
            .submit_name(&allow, 1, "ip", "intranet.test", 22)
            .unwrap();
        assert_eq!(d, NameDecision::NeedsAddressCheck);
        l.next();
        assert_eq!(fake.calls(), ["x.allowed.test", "intranet.test"]);
    }

    #[test]
    fn admit_hides_lookup_failures_of_names_not_allowed() {
        let allow = AllowList::parse(&["ok.test:*".into(), "10.0.0.0/8:*".into()]).unwrap();
        let public: SocketAddr = "93.184.216.34:80".parse().unwrap();
        let internal: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let both = Ok(vec![localhost(80), public, internal]);
        assert_eq!(
            admit(&allow, NameDecision::Allowed, both.clone()),
            Ok(vec![public, internal])
        );
        assert_eq!(
            admit(&allow, NameDecision::NeedsAddressCheck, both),
            Ok(vec![internal])
        );
        for e in [
            LookupError::TimedOut,
            LookupError::NoAddresses,
            LookupError::Failed("nxdomain".into()),
        ] {
            assert_eq!(
                admit(&allow, NameDecision::Allowed, Err(e.clone())),
                Err(e.clone())
            );
            assert_eq!(
                admit(&allow, NameDecision::NeedsAddressCheck, Err(e)),
                Err(LookupError::NotAllowed)
            );
        }
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            SubmitError::QuotaExceeded.to_string(),
            "too many name lookups in progress for this session"
        );
        assert_eq!(
            LookupError::Failed("boom".into()).to_string(),
            "name lookup failed: boom"
        );
        assert_eq!(LookupError::TimedOut.to_string(), "name lookup timed out");
    }
}
