//! The state of one direction of the WAN-emulating relay, without I/O: a
//! FIFO of byte chunks, each stamped with the instant it may leave, a bound
//! on the bytes in flight and an optional bandwidth cap.
//!
//! Model: bytes that enter at `now` are first serialised onto the link at
//! the capped rate (if any; they queue behind earlier bytes), then
//! propagate for the one-way `delay`. A byte is in flight from the moment
//! it is pushed until the relay has finished writing it out
//! ([`DelayLine::written`]); [`DelayLine::room`] says how much more may be
//! pushed, and the relay stops reading its socket at zero, so the sender
//! sees TCP backpressure exactly as from a full bottleneck buffer.
//!
//! To keep the number of chunks (and wake-ups) small, bytes that arrive
//! within `granularity` of a chunk's first release time join that chunk,
//! which then leaves when its last byte is due: every byte is held at least
//! its due time and at most `granularity` longer. Time is passed in, so the
//! logic is tested without clocks.

use std::collections::VecDeque;
use std::time::Instant;

use core::time::Duration;

/// How long one direction holds bytes and how many it may hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LineConfig {
    /// One-way propagation delay.
    pub(crate) delay: Duration,
    /// Most bytes in flight (queued for the link, propagating, or being
    /// written out).
    pub(crate) max_in_flight: usize,
    /// Bandwidth cap in bytes per second; `None` for an uncapped link.
    pub(crate) rate: Option<u64>,
    /// Bytes due within this long of a chunk's first byte share its chunk.
    pub(crate) granularity: Duration,
    /// Largest chunk (bounds the burst written at once).
    pub(crate) chunk_max: usize,
}

struct Chunk {
    data: Vec<u8>,
    /// When the last byte of the chunk is due (the chunk leaves then).
    due: Instant,
    /// Bytes due after this must start a new chunk.
    join_until: Instant,
}

/// Buffers kept for reuse: enough for the chunks of a busy direction
/// without holding on to memory after a burst.
const POOL_MAX: usize = 16;

/// One direction of the relay.
pub(crate) struct DelayLine {
    cfg: LineConfig,
    queue: VecDeque<Chunk>,
    /// Bytes in `queue`.
    queued: usize,
    /// Bytes handed out by [`DelayLine::pop_due`] and not yet written.
    writing: usize,
    /// When the capped link finishes serialising what it has been given.
    link_free: Option<Instant>,
    pool: Vec<Vec<u8>>,
}

impl DelayLine {
    pub(crate) fn new(cfg: LineConfig) -> DelayLine {
        DelayLine {
            cfg,
            queue: VecDeque::new(),
            queued: 0,
            writing: 0,
            link_free: None,
            pool: Vec::new(),
        }
    }

    /// Bytes in flight: queued plus being written.
    pub(crate) fn in_flight(&self) -> usize {
        self.queued + self.writing
    }

    /// How many more bytes may be pushed now.
    pub(crate) fn room(&self) -> usize {
        self.cfg.max_in_flight.saturating_sub(self.in_flight())
    }

    /// When `len` bytes arriving at `now` are due, and when the capped link
    /// is free again after them (`None` without a cap).
    fn plan(&self, now: Instant, len: usize) -> (Instant, Option<Instant>) {
        let Some(rate) = self.cfg.rate.filter(|r| *r > 0) else {
            return (now + self.cfg.delay, None);
        };
        let start = self.link_free.map_or(now, |f| f.max(now));
        let nanos = (len as u128 * 1_000_000_000) / u128::from(rate);
        let end = start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        (end + self.cfg.delay, Some(end))
    }

    /// Takes bytes that arrived at `now`; returns how many were taken (at
    /// most [`DelayLine::room`]). Due times never decrease, so the queue
    /// stays in arrival order.
    pub(crate) fn push(&mut self, now: Instant, bytes: &[u8]) -> usize {
        let chunk_max = self.cfg.chunk_max.max(1);
        let taken = bytes.len().min(self.room());
        let mut rest = &bytes[..taken];
        while !rest.is_empty() {
            // Join the last chunk if it has space and these bytes are due
            // within its granularity; otherwise open a new chunk.
            let join = match self.queue.back() {
                Some(c) if c.data.len() < chunk_max => {
                    let n = rest.len().min(chunk_max - c.data.len());
                    let (due, free) = self.plan(now, n);
                    (due <= c.join_until).then_some((n, due, free))
                }
                _ => None,
            };
            let (n, due, free) = join.unwrap_or_else(|| {
                let n = rest.len().min(chunk_max);
                let (due, free) = self.plan(now, n);
                (n, due, free)
            });
            self.link_free = free;
            match self.queue.back_mut() {
                Some(c) if join.is_some() => {
                    c.data.extend_from_slice(&rest[..n]);
                    c.due = due;
                }
                _ => {
                    let mut data = self.pool.pop().unwrap_or_default();
                    data.clear();
                    data.extend_from_slice(&rest[..n]);
                    self.queue.push_back(Chunk {
                        data,
                        due,
                        join_until: due + self.cfg.granularity,
                    });
                }
            }
            self.queued += n;
            rest = &rest[n..];
        }
        taken
    }

    /// When the first chunk is due, if any is queued.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|c| c.due)
    }

    /// The first chunk if it is due at `now`. Its bytes stay in flight
    /// until it is handed back with [`DelayLine::written`].
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.queue.front()?.due > now {
            return None;
        }
        let c = self.queue.pop_front()?;
        self.queued -= c.data.len();
        self.writing += c.data.len();
        Some(c.data)
    }

    /// A chunk from [`DelayLine::pop_due`] has been written out: its bytes
    /// leave the flight and its buffer is kept for reuse.
    pub(crate) fn written(&mut self, mut buf: Vec<u8>) {
        self.writing = self.writing.saturating_sub(buf.len());
        if self.pool.len() < POOL_MAX {
            buf.clear();
            self.pool.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    fn cfg(delay: Duration) -> LineConfig {
        LineConfig {
            delay,
            max_in_flight: 1 << 20,
            rate: None,
            granularity: 250 * US,
            chunk_max: 64 * 1024,
        }
    }

    /// Pops everything due at `now`, marks it written, returns the bytes.
    fn drain(line: &mut DelayLine, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = line.pop_due(now) {
            out.extend_from_slice(&c);
            line.written(c);
        }
        out
    }

    #[test]
    fn bytes_leave_after_the_delay_not_before() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(cfg(20 * MS));
        assert_eq!(line.push(t0, b"hello"), 5);
        assert_eq!(line.next_due(), Some(t0 + 20 * MS));
        assert!(line.pop_due(t0).is_none());
        assert!(line.pop_due(t0 + 20 * MS - US).is_none());
        assert_eq!(drain(&mut line, t0 + 20 * MS), b"hello");
        assert_eq!(line.in_flight(), 0);
        assert_eq!(line.next_due(), None);
    }

    #[test]
    fn zero_delay_is_due_at_once() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(cfg(Duration::ZERO));
        line.push(t0, b"x");
        assert_eq!(drain(&mut line, t0), b"x");
    }

    #[test]
    fn close_arrivals_share_a_chunk_that_leaves_with_the_last_byte() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(cfg(10 * MS));
        line.push(t0, b"ab");
        line.push(t0 + 100 * US, b"cd");
        // One chunk, due when "cd" is due: "ab" waits 100 µs longer.
        assert_eq!(line.next_due(), Some(t0 + 100 * US + 10 * MS));
        assert!(line.pop_due(t0 + 10 * MS).is_none());
        assert_eq!(line.pop_due(t0 + 100 * US + 10 * MS).unwrap(), b"abcd");
        // Later than the granularity: a chunk of its own.
        line.push(t0 + MS, b"e");
        line.push(t0 + 2 * MS, b"f");
        assert_eq!(line.next_due(), Some(t0 + 11 * MS));
        assert_eq!(line.pop_due(t0 + 11 * MS).unwrap(), b"e");
        assert!(line.pop_due(t0 + 11 * MS).is_none());
        assert_eq!(line.pop_due(t0 + 12 * MS).unwrap(), b"f");
    }

    #[test]
    fn order_is_kept_across_chunks() {
        let t0 = Instant::now();
        let mut c = cfg(5 * MS);
        c.chunk_max = 7;
        let mut line = DelayLine::new(c);
        let data: Vec<u8> = (0..=255).collect();
        let mut t = t0;
        for part in data.chunks(13) {
            assert_eq!(line.push(t, part), part.len());
            t += 30 * US;
        }
        // No chunk exceeds chunk_max.
        let mut out = Vec::new();
        while let Some(c) = line.pop_due(t + 5 * MS) {
            assert!(c.len() <= 7);
            out.extend_from_slice(&c);
            line.written(c);
        }
        assert_eq!(out, data);
        assert_eq!(line.in_flight(), 0);
    }

    #[test]
    fn in_flight_is_bounded_until_written() {
        let t0 = Instant::now();
        let mut c = cfg(MS);
        c.max_in_flight = 10;
        let mut line = DelayLine::new(c);
        assert_eq!(line.push(t0, b"123456"), 6);
        assert_eq!(line.room(), 4);
        // Only what fits is taken; the caller keeps the rest (in the
        // socket: backpressure).
        assert_eq!(line.push(t0, b"789abc"), 4);
        assert_eq!(line.room(), 0);
        assert_eq!(line.push(t0, b"d"), 0);
        // Popped but not yet written: still in flight.
        let chunk = line.pop_due(t0 + MS).unwrap();
        assert_eq!(chunk, b"123456789a");
        assert_eq!(line.room(), 0);
        assert_eq!(line.in_flight(), 10);
        line.written(chunk);
        assert_eq!(line.room(), 10);
        assert_eq!(line.in_flight(), 0);
    }

    #[test]
    fn rate_cap_serialises_before_the_delay() {
        let t0 = Instant::now();
        let mut c = cfg(20 * MS);
        c.rate = Some(1_000_000); // 1 MB/s: 1 byte per µs
        c.granularity = Duration::ZERO;
        let mut line = DelayLine::new(c);
        line.push(t0, &[0; 1000]);
        // 1 ms on the link, then 20 ms of propagation.
        assert_eq!(line.next_due(), Some(t0 + 21 * MS));
        // Arriving while the link is busy: queued behind the first 1000.
        line.push(t0 + 500 * US, &[1; 500]);
        let t_second = t0 + 1500 * US + 20 * MS;
        assert_eq!(drain(&mut line, t0 + 21 * MS), vec![0; 1000]);
        assert!(line.pop_due(t_second - US).is_none());
        assert_eq!(drain(&mut line, t_second), vec![1; 500]);
        // After an idle gap the link starts at the arrival again.
        line.push(t0 + 100 * MS, &[2; 10]);
        assert_eq!(line.next_due(), Some(t0 + 120 * MS + 10 * US));
    }

    #[test]
    fn buffers_are_reused_and_the_pool_is_bounded() {
        let t0 = Instant::now();
        let mut c = cfg(Duration::ZERO);
        c.chunk_max = 1;
        c.granularity = Duration::ZERO;
        let mut line = DelayLine::new(c);
        line.push(t0, &[7; 40]);
        assert_eq!(drain(&mut line, t0), vec![7; 40]);
        assert_eq!(line.pool.len(), POOL_MAX);
        line.push(t0, b"z");
        assert_eq!(line.pool.len(), POOL_MAX - 1);
    }
}
