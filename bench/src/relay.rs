//! The WAN-emulating TCP relay (`hytun-bench relay`): accepts connections
//! on a loopback address, opens one to the upstream address for each, and
//! moves the bytes of each direction through a [`DelayLine`] — one-way
//! delay, bounded bytes in flight, optional bandwidth cap.
//!
//! It terminates TCP on both sides (`tc netem` is not available on the
//! benchmark machines), so what it emulates is a long path *between two
//! TCP connections*: the application-level flow control of a tunnel (its
//! stream windows, OpenSSH's channel windows) sees the round trip, while
//! each TCP connection itself runs over loopback. When a direction holds
//! its maximum, the relay stops reading that side's socket, which fills
//! the kernel buffers and stalls the sender (TCP backpressure).
//!
//! Two threads per direction of each connection: a reader (socket →
//! delay line) and a writer (delay line → socket, sleeping until the next
//! chunk is due), with blocking I/O. An end of stream is passed on after
//! the bytes before it (half-close); an error on either socket shuts both
//! down.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Instant;

use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;

use crate::delayline::{DelayLine, LineConfig};

/// Largest single read from a socket.
const READ_MAX: usize = 256 * 1024;

/// Settings of a relay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayOptions {
    /// Where to connect for every accepted connection.
    pub(crate) upstream: SocketAddr,
    /// Per direction of each connection.
    pub(crate) line: LineConfig,
}

impl RelayOptions {
    /// A line of `delay` one way, at most `max_in_flight` bytes, and a cap
    /// of `rate_bps` bits per second (0: none). Chunks are joined over at
    /// most 1/20 of the delay (≤ 250 µs) and hold at most 256 KiB.
    pub(crate) fn new(
        upstream: SocketAddr,
        delay: Duration,
        max_in_flight: usize,
        rate_bps: u64,
    ) -> RelayOptions {
        RelayOptions {
            upstream,
            line: LineConfig {
                delay,
                max_in_flight: max_in_flight.max(1),
                rate: (rate_bps > 0).then_some(rate_bps / 8),
                granularity: (delay / 20).min(Duration::from_micros(250)),
                chunk_max: READ_MAX,
            },
        }
    }
}

/// Why the relay stopped.
#[derive(Debug)]
pub(crate) enum RelayError {
    /// Accepting a connection failed.
    Accept(io::Error),
    /// Starting a thread failed.
    Spawn(io::Error),
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayError::Accept(e) => write!(f, "accept failed: {e}"),
            RelayError::Spawn(e) => write!(f, "cannot start a relay thread: {e}"),
        }
    }
}

/// Serves `listener` until accepting fails. A connection whose upstream
/// cannot be reached is closed and reported on stderr.
pub(crate) fn serve(listener: &TcpListener, opts: RelayOptions) -> Result<(), RelayError> {
    loop {
        let (client, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(RelayError::Accept(e)),
        };
        let upstream = match TcpStream::connect(opts.upstream) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("relay: {peer}: upstream {}: {e}", opts.upstream);
                continue;
            }
        };
        relay_pair(client, upstream, opts.line).map_err(RelayError::Spawn)?;
    }
}

/// Starts the four threads that relay `a` ↔ `b`.
pub(crate) fn relay_pair(a: TcpStream, b: TcpStream, line: LineConfig) -> io::Result<()> {
    // The relay must not add Nagle delays of its own (small window
    // updates of the tunnels go out as soon as they are due).
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    for (from, to, name) in [(&a, &b, "a→b"), (&b, &a, "b→a")] {
        let dir = Arc::new(Direction::new(line));
        let (rd, wr) = (from.try_clone()?, to.try_clone()?);
        let (rd_other, wr_other) = (to.try_clone()?, from.try_clone()?);
        let d = Arc::clone(&dir);
        thread::Builder::new()
            .name(format!("relay-read {name}"))
            .spawn(move || d.read_loop(rd, &rd_other))?;
        thread::Builder::new()
            .name(format!("relay-write {name}"))
            .spawn(move || dir.write_loop(wr, &wr_other))?;
    }
    Ok(())
}

struct State {
    line: DelayLine,
    /// The reader saw the end of the stream.
    eof: bool,
    /// A socket failed: stop both threads.
    failed: bool,
    /// The writer is waiting on `due` (a notify is needed).
    writer_waiting: bool,
    /// The reader is waiting on `room`.
    reader_waiting: bool,
}

/// One direction: the line and the two threads' meeting point.
struct Direction {
    state: Mutex<State>,
    /// Signalled when bytes were pushed, the stream ended or failed.
    due: Condvar,
    /// Signalled when bytes left the flight or the direction failed.
    room: Condvar,
}

impl Direction {
    fn new(line: LineConfig) -> Direction {
        Direction {
            state: Mutex::new(State {
                line: DelayLine::new(line),
                eof: false,
                failed: false,
                writer_waiting: false,
                reader_waiting: false,
            }),
            due: Condvar::new(),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking relay thread leaves consistent state behind (every
        // update is a few assignments), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the direction failed, wakes its threads and shuts both
    /// sockets down so the other direction's threads stop too.
    fn fail(&self, s1: &TcpStream, s2: &TcpStream) {
        self.lock().failed = true;
        self.due.notify_all();
        self.room.notify_all();
        let _ = s1.shutdown(Shutdown::Both);
        let _ = s2.shutdown(Shutdown::Both);
    }

    /// Socket → line, while there is room.
    fn read_loop(&self, mut from: TcpStream, to: &TcpStream) {
        let mut buf = vec![0u8; READ_MAX];
        loop {
            let room = {
                let mut st = self.lock();
                while st.line.room() == 0 && !st.failed {
                    st.reader_waiting = true;
                    st = self.room.wait(st).unwrap_or_else(|p| p.into_inner());
                    st.reader_waiting = false;
                }
                if st.failed {
                    return;
                }
                st.line.room().min(READ_MAX)
            };
            match from.read(&mut buf[..room]) {
                Ok(0) => {
                    let mut st = self.lock();
                    st.eof = true;
                    drop(st);
                    self.due.notify_one();
                    return;
                }
                Ok(n) => {
                    let mut st = self.lock();
                    // The room only grows while unlocked, so all of it fits.
                    st.line.push(Instant::now(), &buf[..n]);
                    let wake = st.writer_waiting;
                    drop(st);
                    if wake {
                        self.due.notify_one();
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.fail(&from, to);
                    return;
                }
            }
        }
    }

    /// Line → socket, each chunk when it is due; the end of stream after
    /// the last byte.
    fn write_loop(&self, mut to: TcpStream, from: &TcpStream) {
        loop {
            let chunk = {
                let mut st = self.lock();
                loop {
                    if st.failed {
                        return;
                    }
                    let now = Instant::now();
                    if let Some(c) = st.line.pop_due(now) {
                        break c;
                    }
                    st.writer_waiting = true;
                    st = match st.line.next_due() {
                        Some(t) => {
                            self.due
                                .wait_timeout(st, t.saturating_duration_since(now))
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                        None if st.eof => {
                            drop(st);
                            let _ = to.shutdown(Shutdown::Write);
                            return;
                        }
                        None => self.due.wait(st).unwrap_or_else(|p| p.into_inner()),
                    };
                    st.writer_waiting = false;
                }
            };
            if to.write_all(&chunk).is_err() {
                self.fail(&to, from);
                return;
            }
            let mut st = self.lock();
            st.line.written(chunk);
            let wake = st.reader_waiting;
            drop(st);
            if wake {
                self.room.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, SocketAddrV4};

    fn lo() -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
    }

    /// A relay in front of a server that echoes and then half-closes.
    fn relay_to_echo(opts: impl Fn(SocketAddr) -> RelayOptions) -> SocketAddr {
        let echo = TcpListener::bind(lo()).unwrap();
        let echo_addr = echo.local_addr().unwrap();
        thread::spawn(move || {
            for s in echo.incoming() {
                let mut s = s.unwrap();
                thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = io::copy(&mut r, &mut s);
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
        let relay = TcpListener::bind(lo()).unwrap();
        let addr = relay.local_addr().unwrap();
        let o = opts(echo_addr);
        thread::spawn(move || serve(&relay, o));
        addr
    }

    #[test]
    fn relays_every_byte_in_order_and_passes_the_end_on() {
        // A small bound forces many rounds of backpressure.
        let addr = relay_to_echo(|up| RelayOptions::new(up, Duration::ZERO, 3000, 0));
        let mut s = TcpStream::connect(addr).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = s.try_clone().unwrap();
        let sent = data.clone();
        let writer = thread::spawn(move || {
            w.write_all(&sent).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data);
    }

    #[test]
    fn a_round_trip_takes_at_least_twice_the_delay() {
        let delay = Duration::from_millis(30);
        let addr = relay_to_echo(|up| RelayOptions::new(up, delay, 1 << 20, 0));
        let mut s = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        assert!(start.elapsed() >= 2 * delay);
    }

    #[test]
    fn an_unreachable_upstream_closes_the_connection() {
        // Bind and drop: nothing listens on that port any more.
        let dead = TcpListener::bind(lo()).unwrap().local_addr().unwrap();
        let relay = TcpListener::bind(lo()).unwrap();
        let addr = relay.local_addr().unwrap();
        let o = RelayOptions::new(dead, Duration::ZERO, 1024, 0);
        thread::spawn(move || serve(&relay, o));
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    }

    #[test]
    fn options_derive_the_line() {
        let up = lo();
        let o = RelayOptions::new(up, Duration::from_millis(20), 0, 800_000_000);
        assert_eq!(o.line.rate, Some(100_000_000));
        assert_eq!(o.line.max_in_flight, 1);
        assert_eq!(o.line.granularity, Duration::from_micros(250));
        let o = RelayOptions::new(up, Duration::from_millis(1), 10, 0);
        assert_eq!(o.line.rate, None);
        assert_eq!(o.line.granularity, Duration::from_micros(50));
        assert_eq!(
            RelayOptions::new(up, Duration::ZERO, 10, 0)
                .line
                .granularity,
            Duration::ZERO
        );
    }
}
