//! Handshake load generator: opens fresh hytun sessions to a running
//! `hytun server` as fast as the server completes them, with the client
//! side driven in-process through `hytun-core` (no `hytun client`
//! processes). Each worker thread runs a `mio` loop with a fixed number of
//! sessions in flight; a session counts as completed when the client sees
//! `Connected` (its Finished is then sent with a CLOSE right behind it and
//! the socket dropped, and a new session takes the slot).
//!
//! The result includes the server process's CPU time over the measured
//! window, so handshakes per second can be normalised to one core: the
//! client side of each handshake costs about as much as the server side
//! (both do an RSA private-key operation), so on a small machine the
//! clients compete with the server for CPU.
//!
//! With a `rate`, new sessions are paced to that many per second (spread
//! over the threads) instead of as fast as possible: a steady background
//! load for latency measurements of other traffic on the same server.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Instant as StdInstant;

use core::net::SocketAddr;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;

use hytun_core::{
    ClientConfig, CloseCode, Connection, Event, Instant, PrivateIdentity, PublicIdentity,
    SessionConfig,
};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::procfs;

/// A client session small enough to allocate per handshake: the
/// handshake needs no stream slots or large records.
type HsConn = Connection<4096, 2048, 1>;

type OsRng = rand_core::UnwrapErr<getrandom::SysRng>;

/// A session that makes no progress for this long is abandoned.
const STALL: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct HsOptions {
    /// The `hytun server` to connect to.
    pub(crate) server: SocketAddr,
    /// The client's private key (PEM, as written by `hytun keygen`).
    pub(crate) key: PathBuf,
    /// The server's public key (PEM).
    pub(crate) server_key: PathBuf,
    /// Worker threads.
    pub(crate) threads: usize,
    /// Sessions in flight per thread.
    pub(crate) in_flight: usize,
    /// Warm-up before the measured window.
    pub(crate) warmup: Duration,
    /// Length of the measured window.
    pub(crate) duration: Duration,
    /// The server's pid, for its CPU time over the window.
    pub(crate) server_pid: Option<u32>,
    /// Handshakes per second to start (all threads together); `None` = as
    /// fast as the server completes them.
    pub(crate) rate: Option<f64>,
}

/// What was measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HsResult {
    /// Handshakes completed inside the window.
    pub(crate) completed: u64,
    /// Sessions that failed (closed with an error, stalled, refused) inside
    /// the window.
    pub(crate) failed: u64,
    /// Window length in seconds.
    pub(crate) secs: f64,
    /// Server CPU seconds over the window (if its pid was given).
    pub(crate) server_cpu_s: Option<f64>,
}

impl HsResult {
    /// Completed handshakes per wall-clock second.
    pub(crate) fn per_sec(&self) -> f64 {
        self.completed as f64 / self.secs
    }

    /// Server CPU seconds per wall-clock second over the window.
    pub(crate) fn server_load(&self) -> Option<f64> {
        self.server_cpu_s.map(|c| c / self.secs)
    }

    /// Handshakes per second per fully used server core.
    pub(crate) fn per_core(&self) -> Option<f64> {
        self.server_load()
            .filter(|l| *l > 0.0)
            .map(|l| self.per_sec() / l)
    }

    /// Server CPU milliseconds per completed handshake.
    pub(crate) fn server_cpu_ms_per_handshake(&self) -> Option<f64> {
        self.server_cpu_s
            .filter(|_| self.completed > 0)
            .map(|c| c * 1000.0 / self.completed as f64)
    }
}

fn load_config(opts: &HsOptions) -> Result<Arc<ClientConfig>, String> {
    let mut rng: OsRng = rand_core::UnwrapErr(getrandom::SysRng);
    let key = hytun_keys::load_private_key(&opts.key)
        .map_err(|e| format!("{}: {e}", opts.key.display()))?;
    let identity =
        PrivateIdentity::new(key, &mut rng).map_err(|e| format!("{}: {e}", opts.key.display()))?;
    let server = hytun_keys::load_public_key(&opts.server_key)
        .map_err(|e| format!("{}: {e}", opts.server_key.display()))?;
    let server =
        PublicIdentity::new(server).map_err(|e| format!("{}: {e}", opts.server_key.display()))?;
    Ok(Arc::new(ClientConfig::new(
        identity,
        server,
        SessionConfig::HOST,
    )))
}

#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
}

/// Runs the load for `warmup + duration` and reports the window.
pub(crate) fn run(opts: &HsOptions) -> Result<HsResult, String> {
    let config = load_config(opts)?;
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let hz = procfs::clock_ticks_per_sec();
    let mut workers = Vec::new();
    for _ in 0..opts.threads.max(1) {
        let (config, counters, stop) = (config.clone(), counters.clone(), stop.clone());
        let (server, in_flight) = (opts.server, opts.in_flight.max(1));
        // Each thread starts its share of the paced rate.
        let interval = opts
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(opts.threads.max(1) as f64 / r));
        workers.push(thread::spawn(move || {
            worker(server, in_flight, interval, &config, &counters, &stop)
        }));
    }
    thread::sleep(opts.warmup);
    let cpu = || opts.server_pid.map(|p| procfs::cpu_ticks(&[p]));
    let (c0, f0, cpu0, t0) = (
        counters.completed.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
        cpu(),
        StdInstant::now(),
    );
    thread::sleep(opts.duration);
    let (c1, f1, cpu1, secs) = (
        counters.completed.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
        cpu(),
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("handshake worker: {e}")),
            Err(_) => return Err("handshake worker panicked".into()),
        }
    }
    Ok(HsResult {
        completed: c1 - c0,
        failed: f1 - f0,
        secs,
        server_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a) as f64 / hz),
    })
}

struct Session {
    sock: TcpStream,
    conn: Box<HsConn>,
    started: StdInstant,
}

enum Progress {
    Pending,
    Connected,
    Failed,
}

fn start(
    poll: &Poll,
    token: Token,
    server: SocketAddr,
    config: &Arc<ClientConfig>,
    clock: StdInstant,
    rng: &mut OsRng,
) -> io::Result<Session> {
    let mut sock = TcpStream::connect(server)?;
    sock.set_nodelay(true)?;
    poll.registry()
        .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
    let now = Instant::from_millis(clock.elapsed().as_millis() as u64);
    Ok(Session {
        sock,
        conn: Box::new(Connection::client(config.clone(), now, rng)),
        started: StdInstant::now(),
    })
}

/// Writes what the session has pending; false on a socket error.
fn flush(s: &mut Session) -> bool {
    loop {
        let pending = s.conn.transmit_pending();
        if pending.is_empty() {
            return true;
        }
        match s.sock.write(pending) {
            Ok(0) => return false,
            Ok(n) => s.conn.transmit_done(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                ) =>
            {
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Moves the session forward after a readiness event.
fn drive(s: &mut Session, buf: &mut [u8], clock: StdInstant, rng: &mut OsRng) -> Progress {
    if !flush(s) {
        return Progress::Failed;
    }
    let mut connected = false;
    loop {
        let n = match s.sock.read(buf) {
            Ok(0) => {
                s.conn.handle_eof();
                0
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Progress::Failed,
        };
        let now = Instant::from_millis(clock.elapsed().as_millis() as u64);
        let mut off = 0;
        loop {
            off += s.conn.handle_input(&buf[off..n], now, rng);
            while let Some(ev) = s.conn.poll_event() {
                match ev {
                    Event::Connected => connected = true,
                    Event::Closed { .. } => return Progress::Failed,
                    _ => {}
                }
            }
            if off >= n {
                break;
            }
        }
        if n == 0 || s.conn.is_closed() {
            return Progress::Failed;
        }
        if connected {
            break;
        }
    }
    if connected {
        // Finished and CLOSE go out together; the socket buffer takes them.
        s.conn.close(CloseCode::Normal);
        flush(s);
        return Progress::Connected;
    }
    if !flush(s) {
        return Progress::Failed;
    }
    Progress::Pending
}

fn worker(
    server: SocketAddr,
    in_flight: usize,
    interval: Option<Duration>,
    config: &Arc<ClientConfig>,
    counters: &Counters,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(in_flight * 2);
    let mut rng: OsRng = rand_core::UnwrapErr(getrandom::SysRng);
    let clock = StdInstant::now();
    let mut buf = vec![0u8; 16 * 1024];
    let mut slots: Vec<Option<Session>> = (0..in_flight).map(|_| None).collect();
    let mut next_start = StdInstant::now();
    while !stop.load(Ordering::Relaxed) {
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            if let Some(iv) = interval {
                let now = StdInstant::now();
                if now < next_start {
                    break;
                }
                // Paced: starts missed while every slot was busy are not
                // made up in a burst later.
                next_start = (next_start + iv).max(now);
            }
            match start(&poll, Token(i), server, config, clock, &mut rng) {
                Ok(s) => *slot = Some(s),
                Err(_) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let wait = match interval {
            Some(_) => next_start
                .saturating_duration_since(StdInstant::now())
                .min(Duration::from_millis(100)),
            None => Duration::from_millis(100),
        };
        poll.poll(&mut events, Some(wait))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(s) = slots.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            let done = match drive(s, &mut buf, clock, &mut rng) {
                Progress::Pending => false,
                Progress::Connected => {
                    counters.completed.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Progress::Failed => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    true
                }
            };
            if done && let Some(mut s) = slots[i].take() {
                // Dropping the socket closes it; deregistering first keeps
                // the token free for the next session.
                let _ = poll.registry().deregister(&mut s.sock);
            }
        }
        for slot in &mut slots {
            if slot.as_ref().is_some_and(|s| s.started.elapsed() > STALL)
                && let Some(mut s) = slot.take()
            {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                let _ = poll.registry().deregister(&mut s.sock);
            }
        }
    }
    Ok(())
}
