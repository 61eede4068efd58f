//! Live reload of a server's configuration: the [`LiveConfig`] slot every
//! event loop takes its [`Shared`] generation from, and the [`Reloader`]
//! thread that re-reads the files on SIGHUP.
//!
//! Re-reading means parsing `authorized_keys` (and building each key's
//! AWS-LC context), the config file and the allowlist: milliseconds for a
//! few keys, far more for thousands. That work runs on the reload thread,
//! never on an event loop; the loop that receives SIGHUP only asks for a
//! reload, and every loop takes the published generation at its next wake.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};

use log::{error, info, warn};

use super::{ServerOptions, Shared};

/// Re-reads the configuration for a reload: given the options in force,
/// returns the options to use from now on, or why the files could not be
/// used (the message is logged and the options in force stay).
pub type ReloadFn = Box<dyn FnMut(&ServerOptions) -> Result<ServerOptions, String> + Send>;

/// The slot every loop of one server takes its [`Shared`] generation from.
/// A reload writes it once and wakes every loop; each loop compares the
/// generation number at every wake (one atomic load) and takes the new
/// `Arc` when it changed.
pub struct LiveConfig {
    current: RwLock<Arc<Shared>>,
    generation: AtomicU64,
    wakers: Mutex<Vec<Arc<mio::Waker>>>,
}

impl LiveConfig {
    pub(super) fn new(shared: Shared) -> LiveConfig {
        LiveConfig {
            generation: AtomicU64::new(shared.generation),
            current: RwLock::new(Arc::new(shared)),
            wakers: Mutex::new(Vec::new()),
        }
    }

    /// The generation now in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The configuration now in force.
    pub fn current(&self) -> Arc<Shared> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn add_waker(&self, waker: Arc<mio::Waker>) {
        if let Ok(mut w) = self.wakers.lock() {
            w.push(waker);
        }
    }

    /// Publishes `opts` as the next generation (the listen address and the
    /// server-wide pools stay) and wakes every loop to take it.
    pub fn publish(&self, opts: ServerOptions) -> Arc<Shared> {
        let next = {
            let mut slot = match self.current.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let next = Arc::new(slot.next(opts));
            *slot = next.clone();
            self.generation.store(next.generation, Ordering::Release);
            next
        };
        if let Ok(wakers) = self.wakers.lock() {
            for w in wakers.iter() {
                if let Err(e) = w.wake() {
                    warn!("cannot wake a server loop for the reload: {e}");
                }
            }
        }
        next
    }

    /// Runs `reload` against the configuration in force and publishes the
    /// result; when it fails, logs why and keeps the configuration in force.
    /// True if a new generation was published.
    pub fn reload(&self, reload: &mut ReloadFn) -> bool {
        let old = self.current();
        match reload(&old.options()) {
            Ok(opts) => {
                let new = self.publish(opts);
                log_reload(&old, &new);
                true
            }
            Err(why) => {
                error!("reload failed, keeping the previous configuration: {why}");
                false
            }
        }
    }
}

/// Logs what a reload changed: the client keys added and removed (by
/// fingerprint), whether the allowlist changed, and the live limits.
fn log_reload(old: &Shared, new: &Shared) {
    let ids = |s: &Shared| -> Vec<hytun_core::KeyId> {
        s.core.authorized.iter().map(|k| k.id()).collect()
    };
    let (before, after) = (ids(old), ids(new));
    for id in after.iter().filter(|k| !before.contains(k)) {
        info!("reload: client key {id} added");
    }
    for id in before.iter().filter(|k| !after.contains(k)) {
        info!("reload: client key {id} removed; its sessions will be ended");
    }
    info!(
        "reloaded configuration (generation {}): {} authorized client keys, allowlist {}, \
         {} sessions, {} MiB per session, hello timeout {} s",
        new.generation,
        after.len(),
        if old.allow == new.allow {
            "unchanged"
        } else {
            "changed"
        },
        new.limits.max_sessions,
        new.limits.session_memory >> 20,
        new.limits.hello_timeout.as_secs()
    );
    if new.allow.is_empty() {
        warn!("the reloaded allowlist is empty: every new stream will be refused");
    } else if new.allow.allows_all() && !old.allow.allows_all() {
        warn!(
            "--allow '*': this server will now connect streams to ANY destination its clients name"
        );
    }
}

/// The thread that runs reloads. It owns the [`ReloadFn`]; requests are
/// coalesced: while one reload waits to start, another request adds
/// nothing (the waiting one reads the files as they are when it runs).
pub struct Reloader {
    requests: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What [`Reloader::request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadRequest {
    /// A reload will run.
    Queued,
    /// A reload was already waiting to run; this request joins it.
    AlreadyQueued,
    /// The reload thread is gone (it panicked); nothing will run.
    Unavailable,
}

impl Reloader {
    /// Starts the reload thread for `live`: each request runs `reload`
    /// and publishes its result ([`LiveConfig::reload`]).
    pub fn start(live: Arc<LiveConfig>, mut reload: ReloadFn) -> std::io::Result<Reloader> {
        Self::with_action(move || {
            live.reload(&mut reload);
        })
    }

    /// Starts a reload thread that runs `action` once per request.
    fn with_action(mut action: impl FnMut() + Send + 'static) -> std::io::Result<Reloader> {
        // One request may wait while one runs.
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let thread = thread::Builder::new()
            .name("hytun-reload".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    action();
                }
            })?;
        Ok(Reloader {
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    /// Asks for a reload; never blocks.
    pub fn request(&self) -> ReloadRequest {
        match self.requests.as_ref().map(|tx| tx.try_send(())) {
            Some(Ok(())) => ReloadRequest::Queued,
            Some(Err(TrySendError::Full(()))) => ReloadRequest::AlreadyQueued,
            Some(Err(TrySendError::Disconnected(()))) | None => ReloadRequest::Unavailable,
        }
    }
}

impl Drop for Reloader {
    /// Lets a reload in progress finish (its result is published or
    /// logged), then ends the thread.
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("the reload thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Receiver;
    use std::time::Duration;

    /// A reloader whose action reports each start and then waits for a go.
    fn gated() -> (Reloader, Receiver<()>, SyncSender<()>) {
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::sync_channel::<()>(8);
        let r = Reloader::with_action(move || {
            let _ = started_tx.send(());
            let _ = go_rx.recv();
        })
        .expect("thread");
        (r, started, go)
    }

    #[test]
    fn a_request_never_waits_for_a_running_reload_and_requests_coalesce() {
        let (r, started, go) = gated();
        assert_eq!(r.request(), ReloadRequest::Queued);
        // The first reload is running (and blocked): asking again returns
        // at once, and queues exactly one more.
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("first run");
        assert_eq!(r.request(), ReloadRequest::Queued);
        assert_eq!(r.request(), ReloadRequest::AlreadyQueued);
        assert_eq!(r.request(), ReloadRequest::AlreadyQueued);
        go.send(()).expect("go");
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("second run");
        go.send(()).expect("go");
        // Three requests after the first made one more run, not three.
        assert!(started.recv_timeout(Duration::from_millis(200)).is_err());
        drop(r);
    }

    #[test]
    fn dropping_the_reloader_lets_a_running_reload_finish() {
        let (r, started, go) = gated();
        assert_eq!(r.request(), ReloadRequest::Queued);
        started.recv_timeout(Duration::from_secs(10)).expect("run");
        let finisher = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            let _ = go.send(());
        });
        // Joins the thread once the running reload returns.
        drop(r);
        finisher.join().expect("finisher");
    }

    #[test]
    fn a_dead_reload_thread_is_reported() {
        let r = Reloader::with_action(|| panic!("reload panicked (expected by this test)"))
            .expect("thread");
        assert_eq!(r.request(), ReloadRequest::Queued);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while r.request() != ReloadRequest::Unavailable {
            assert!(std::time::Instant::now() < deadline, "thread still alive");
            thread::sleep(Duration::from_millis(10));
        }
    }
}
