//! Handshake crypto off the event loop: a fixed pool of worker threads fed
//! through one bounded job queue. A job is a [`KeyJob`]: the client's
//! [`PrivateKeyOp`] (its RSA decryption) or the server's
//! [`ServerHelloJob`] (its whole reply to a ClientHello, private-key
//! operation included).
//!
//! This module owns the threads, the queue and the completion queues; it
//! knows nothing about sessions. An event loop gets a [`KeyWorkHandle`]
//! (one per loop, with the loop's `mio::Waker`), submits a job tagged
//! with a token of its choosing
//! ([`KeyWorkHandle::try_submit`] never blocks: a full queue hands the
//! operation back), and after the waker fires drains the results with
//! [`KeyWorkHandle::drain`]. Memory is bounded: at most `capacity` jobs
//! wait, at most `workers` run, and a loop's completion queue holds at most
//! what that loop submitted and has not drained yet.
//!
//! Tokens are opaque to the pool. A loop that reuses session slots should
//! put a generation counter into its tokens (or [`KeyWorkHandle::cancel`]
//! the job when a session goes away), so a late result never reaches a
//! newer session in the same slot.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use hytun_core::crypto::{DecryptedSecret, PrivateKeyOp};
use hytun_core::handshake::{ServerHelloJob, ServerHelloReply};

/// The RNG a worker gives its jobs: the operating system's.
pub type WorkerRng = rand_core::UnwrapErr<getrandom::SysRng>;

/// Work the pool runs: self-contained, so it can move to a worker thread.
pub trait KeyJob: Send + 'static {
    /// What comes back to the loop.
    type Output: Send + 'static;
    /// Does the work.
    fn run(self, rng: &mut WorkerRng) -> Self::Output;
}

impl KeyJob for PrivateKeyOp {
    type Output = DecryptedSecret;
    fn run(self, rng: &mut WorkerRng) -> DecryptedSecret {
        PrivateKeyOp::run(&self, rng)
    }
}

impl KeyJob for ServerHelloJob {
    type Output = ServerHelloReply;
    fn run(self, rng: &mut WorkerRng) -> ServerHelloReply {
        ServerHelloJob::run(self, rng)
    }
}

/// Why a job was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWorkError {
    /// The job queue is at its capacity; retry later or refuse the
    /// handshake (Busy).
    Full,
    /// The pool is shutting down.
    Closed,
}

impl fmt::Display for KeyWorkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyWorkError::Full => "private-key job queue is full",
            KeyWorkError::Closed => "private-key worker pool is shut down",
        })
    }
}

impl std::error::Error for KeyWorkError {}

/// A job the pool did not take, handed back.
pub struct Rejected<J> {
    /// Why.
    pub reason: KeyWorkError,
    /// The job, to retry, run elsewhere or drop.
    pub op: J,
}

impl<J> fmt::Debug for Rejected<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// Where one event loop's results land.
struct Completions<J: KeyJob> {
    done: Mutex<VecDeque<(u64, J::Output)>>,
    waker: Arc<mio::Waker>,
}

struct Job<J: KeyJob> {
    token: u64,
    op: J,
    to: Arc<Completions<J>>,
}

struct Queue<J: KeyJob> {
    jobs: VecDeque<Job<J>>,
    closed: bool,
}

struct Shared<J: KeyJob> {
    queue: Mutex<Queue<J>>,
    ready: Condvar,
    capacity: usize,
}

/// A poisoned lock only means another thread panicked while holding it;
/// the queue itself is still consistent (every change is a single push or
/// pop), so keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The worker pool. Dropping it stops the workers after the job each is
/// running; queued jobs are dropped without a result.
pub struct KeyWork<J: KeyJob = PrivateKeyOp> {
    shared: Arc<Shared<J>>,
    workers: Vec<JoinHandle<()>>,
}

impl<J: KeyJob> KeyWork<J> {
    /// Starts `workers` threads (at least 1) sharing a queue of at most
    /// `capacity` waiting jobs (at least 1).
    pub fn new(workers: usize, capacity: usize) -> std::io::Result<KeyWork<J>> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(capacity.max(1)),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        });
        let mut pool = KeyWork {
            shared,
            workers: Vec::new(),
        };
        for i in 0..workers.max(1) {
            let shared = pool.shared.clone();
            let handle = thread::Builder::new()
                .name(format!("hytun-rsa-{i}"))
                .spawn(move || worker(&shared))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// A submission handle for one event loop; its results wake `waker`.
    pub fn handle(&self, waker: Arc<mio::Waker>) -> KeyWorkHandle<J> {
        KeyWorkHandle {
            shared: self.shared.clone(),
            completions: Arc::new(Completions {
                done: Mutex::new(VecDeque::new()),
                waker,
            }),
        }
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }
}

impl<J: KeyJob> Drop for KeyWork<J> {
    fn drop(&mut self) {
        {
            let mut q = lock(&self.shared.queue);
            q.closed = true;
            q.jobs.clear();
        }
        self.shared.ready.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker<J: KeyJob>(shared: &Shared<J>) {
    let mut rng: WorkerRng = rand_core::UnwrapErr(getrandom::SysRng);
    loop {
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if q.closed {
                    return;
                }
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                q = shared.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let result = KeyJob::run(job.op, &mut rng);
        lock(&job.to.done).push_back((job.token, result));
        if let Err(e) = job.to.waker.wake() {
            log::warn!("private-key worker cannot wake its event loop: {e}");
        }
    }
}

/// One event loop's access to the pool.
pub struct KeyWorkHandle<J: KeyJob = PrivateKeyOp> {
    shared: Arc<Shared<J>>,
    completions: Arc<Completions<J>>,
}

impl<J: KeyJob> KeyWorkHandle<J> {
    /// Queues `op`; its result comes back tagged with `token`. Never
    /// blocks: when the queue is full (or the pool closed) the job is
    /// handed back.
    pub fn try_submit(&self, token: u64, op: J) -> Result<(), Rejected<J>> {
        {
            let mut q = lock(&self.shared.queue);
            if q.closed {
                return Err(Rejected {
                    reason: KeyWorkError::Closed,
                    op,
                });
            }
            if q.jobs.len() >= self.shared.capacity {
                return Err(Rejected {
                    reason: KeyWorkError::Full,
                    op,
                });
            }
            q.jobs.push_back(Job {
                token,
                op,
                to: self.completions.clone(),
            });
        }
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Removes this loop's job `token` if no worker has started it yet;
    /// returns whether it did. (A job already running still delivers its
    /// result.)
    pub fn cancel(&self, token: u64) -> bool {
        let mut q = lock(&self.shared.queue);
        let before = q.jobs.len();
        q.jobs
            .retain(|j| !(j.token == token && Arc::ptr_eq(&j.to, &self.completions)));
        q.jobs.len() != before
    }

    /// Jobs waiting in the shared queue (all loops), for load decisions.
    pub fn queued(&self) -> usize {
        lock(&self.shared.queue).jobs.len()
    }

    /// True if a new job would be refused as [`KeyWorkError::Full`] now.
    pub fn is_full(&self) -> bool {
        self.queued() >= self.shared.capacity
    }

    /// Hands every finished result of this loop to `f`, oldest first.
    pub fn drain(&self, mut f: impl FnMut(u64, J::Output)) {
        // Take the batch first so `f` runs without the lock.
        let batch = std::mem::take(&mut *lock(&self.completions.done));
        for (token, result) in batch {
            f(token, result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, Instant};

    use hytun_core::PrivateIdentity;
    use hytun_core::crypto::identity::LABEL_CLIENT_SECRET;
    use mio::{Events, Poll, Token};

    const SERVER_KEY: &[u8] = include_bytes!("../../core/tests/vectors/server.key.der");
    const SERVER_PUB: &[u8] = include_bytes!("../../core/tests/vectors/server.pub.der");
    const WAKE: Token = Token(7);

    fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
        rand_core::UnwrapErr(getrandom::SysRng)
    }

    fn identity() -> PrivateIdentity {
        PrivateIdentity::from_pkcs8_der(SERVER_KEY, &mut rng()).unwrap()
    }

    /// An operation over a real ciphertext of `secret`.
    fn op(id: &PrivateIdentity, secret: u8) -> PrivateKeyOp {
        let public = hytun_core::PublicIdentity::from_spki_der(SERVER_PUB).unwrap();
        let ct = public
            .encrypt_secret(&mut rng(), LABEL_CLIENT_SECRET, &[secret; 32])
            .unwrap();
        id.defer_decrypt(LABEL_CLIENT_SECRET, &ct)
    }

    /// Waits on `poll` until `n` results arrived through `h`.
    fn collect(poll: &mut Poll, h: &KeyWorkHandle, n: usize) -> Vec<(u64, DecryptedSecret)> {
        let mut events = Events::with_capacity(8);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} results",
                got.len()
            );
            poll.poll(&mut events, Some(Duration::from_secs(1)))
                .unwrap();
            h.drain(|t, r| got.push((t, r)));
        }
        got
    }

    #[test]
    fn keywork_results_come_back_tagged_through_the_waker() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).unwrap());
        let pool = KeyWork::new(2, 8).unwrap();
        assert_eq!(pool.workers(), 2);
        let h = pool.handle(waker);
        let id = identity();
        let ops: Vec<_> = (0..4u8).map(|i| op(&id, i)).collect();
        // The same operations run inline, for comparison.
        let inline: Vec<_> = ops.iter().map(|o| o.run(&mut rng())).collect();
        for (t, o) in ops.into_iter().enumerate() {
            h.try_submit(t as u64, o).unwrap();
        }
        let mut got = collect(&mut poll, &h, 4);
        got.sort_by_key(|(t, _)| *t);
        assert_eq!(
            got.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        for (t, r) in &got {
            let t = *t as usize;
            assert!(r.matches(&inline[t]), "result {t} differs from inline");
            assert!(
                !r.matches(&inline[(t + 1) % 4]),
                "results {t} and next agree"
            );
        }
    }

    #[test]
    fn keywork_full_queue_hands_the_op_back_and_never_grows() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).unwrap());
        // One worker, one queue slot: of many quick submissions at most two
        // (one running, one waiting) can be accepted.
        let pool = KeyWork::new(1, 1).unwrap();
        let h = pool.handle(waker);
        let id = identity();
        let ops: Vec<_> = (0..10u8).map(|i| op(&id, i)).collect();
        let mut accepted = 0;
        let mut full = 0;
        for (i, o) in ops.into_iter().enumerate() {
            match h.try_submit(i as u64, o) {
                Ok(()) => accepted += 1,
                Err(Rejected { reason, op }) => {
                    assert_eq!(reason, KeyWorkError::Full);
                    assert_eq!(reason.to_string(), "private-key job queue is full");
                    // The handed-back operation is intact and usable.
                    drop(op);
                    full += 1;
                }
            }
            assert!(h.queued() <= 1);
        }
        assert!((1..=2).contains(&accepted), "accepted {accepted}");
        assert_eq!(accepted + full, 10);
        assert_eq!(collect(&mut poll, &h, accepted).len(), accepted);
        // Drained: the queue takes work again.
        h.try_submit(99, op(&id, 99)).unwrap();
        assert_eq!(collect(&mut poll, &h, 1)[0].0, 99);
    }

    #[test]
    fn keywork_loops_get_only_their_own_results() {
        let mut poll_a = Poll::new().unwrap();
        let mut poll_b = Poll::new().unwrap();
        let pool = KeyWork::new(2, 8).unwrap();
        let a = pool.handle(Arc::new(mio::Waker::new(poll_a.registry(), WAKE).unwrap()));
        let b = pool.handle(Arc::new(mio::Waker::new(poll_b.registry(), WAKE).unwrap()));
        let id = identity();
        a.try_submit(1, op(&id, 1)).unwrap();
        b.try_submit(2, op(&id, 2)).unwrap();
        a.try_submit(3, op(&id, 3)).unwrap();
        let mut got_a: Vec<u64> = collect(&mut poll_a, &a, 2).iter().map(|r| r.0).collect();
        got_a.sort_unstable();
        assert_eq!(got_a, [1, 3]);
        assert_eq!(collect(&mut poll_b, &b, 1)[0].0, 2);
    }

    #[test]
    fn keywork_cancel_removes_a_queued_job() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).unwrap());
        let pool = KeyWork::new(1, 4).unwrap();
        let h = pool.handle(waker);
        let id = identity();
        for t in 0..4u64 {
            h.try_submit(t, op(&id, t as u8)).unwrap();
        }
        // The single worker runs one job at a time, so the last one is
        // still waiting when we cancel it.
        assert!(h.cancel(3));
        assert!(!h.cancel(3));
        let got = collect(&mut poll, &h, 3);
        assert!(got.iter().all(|(t, _)| *t != 3));
        // Nothing else arrives.
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        let mut late = 0;
        h.drain(|_, _| late += 1);
        assert_eq!(late, 0);
    }

    #[test]
    fn keywork_drop_stops_workers_and_closes_handles() {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).unwrap());
        let pool = KeyWork::new(3, 2).unwrap();
        let h = pool.handle(waker);
        drop(pool);
        let id = identity();
        let err = h.try_submit(1, op(&id, 1)).unwrap_err();
        assert_eq!(err.reason, KeyWorkError::Closed);
    }
}
