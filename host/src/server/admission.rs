//! Admission of connections that have not finished the handshake. They are
//! budgeted apart from established sessions: per source and in total, with
//! a short deadline for the first complete ClientHello. When the table is
//! full the newcomer is admitted and a pending connection is evicted —
//! preferably one that has not sent its ClientHello yet, from the source
//! holding the most entries — so stalled connections can never lock out a
//! client that completes its handshake promptly (the rule OpenSSH's
//! `MaxStartups` and WireGuard's cookies serve in their own ways).
//!
//! [`FirstFlight`] reads the client's first message into a small buffer
//! without the core, so the server decides whether to spend a private-key
//! operation on it before any RSA work, and a stalled connection costs
//! about one KiB instead of a whole session.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::IpAddr;
use std::time::Instant;

use hytun_core::wire::handshake::{HEADER_LEN, HandshakeHeader, MAX_BODY_LEN};
use mio::Token;

use crate::ratelimit::source_key;

/// Pending-handshake limits of one event loop.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Most pending handshakes in total.
    pub max_pending: usize,
    /// Most pending handshakes from one source (IPv4 address, IPv6 /64).
    pub max_pending_per_source: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    source: IpAddr,
    since: Instant,
    /// The first message arrived complete.
    hello: bool,
}

/// Why a new connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This source already has its share of pending handshakes.
    SourcePending,
}

/// The pending-handshake table of one event loop.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    entries: HashMap<Token, Entry>,
    per_source: HashMap<IpAddr, usize>,
}

impl Admission {
    /// An empty table.
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission {
            limits,
            entries: HashMap::new(),
            per_source: HashMap::new(),
        }
    }

    /// Pending handshakes now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Admits `token` from `peer`. `Ok(Some(victim))` names a pending
    /// connection the caller must close to make room.
    pub fn admit(
        &mut self,
        token: Token,
        peer: IpAddr,
        now: Instant,
    ) -> Result<Option<Token>, Refusal> {
        let source = source_key(peer);
        if self.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_pending_per_source
        {
            return Err(Refusal::SourcePending);
        }
        let victim = if self.entries.len() >= self.limits.max_pending.max(1) {
            let v = self.pick_victim();
            if let Some(v) = v {
                self.remove(v);
            }
            v
        } else {
            None
        };
        self.entries.insert(
            token,
            Entry {
                source,
                since: now,
                hello: false,
            },
        );
        *self.per_source.entry(source).or_insert(0) += 1;
        Ok(victim)
    }

    /// Marks that `token`'s first message arrived complete.
    pub fn hello_received(&mut self, token: Token) {
        if let Some(e) = self.entries.get_mut(&token) {
            e.hello = true;
        }
    }

    /// Forgets `token` (established, failed or evicted).
    pub fn remove(&mut self, token: Token) -> bool {
        let Some(e) = self.entries.remove(&token) else {
            return false;
        };
        if let Some(n) = self.per_source.get_mut(&e.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&e.source);
            }
        }
        true
    }

    /// True while `token` is pending.
    pub fn contains(&self, token: Token) -> bool {
        self.entries.contains_key(&token)
    }

    /// The victim when the table is full: among connections without a
    /// ClientHello, the oldest one of the source with the most entries;
    /// failing that, the oldest pending connection.
    fn pick_victim(&self) -> Option<Token> {
        let stalled = self
            .entries
            .iter()
            .filter(|(_, e)| !e.hello)
            .max_by(|(ta, a), (tb, b)| {
                let na = self.per_source.get(&a.source).copied().unwrap_or(0);
                let nb = self.per_source.get(&b.source).copied().unwrap_or(0);
                // More entries first, then older (smaller `since`), then
                // the lower token, so the choice is deterministic.
                na.cmp(&nb)
                    .then(b.since.cmp(&a.since))
                    .then(tb.0.cmp(&ta.0))
            })
            .map(|(t, _)| *t);
        stalled.or_else(|| {
            self.entries
                .iter()
                .min_by(|(ta, a), (tb, b)| a.since.cmp(&b.since).then(ta.0.cmp(&tb.0)))
                .map(|(t, _)| *t)
        })
    }
}

/// What reading the first flight produced.
#[derive(Debug, PartialEq, Eq)]
pub enum FlightProgress {
    /// More bytes are needed (the socket would block).
    Partial,
    /// The first message is complete.
    Complete,
    /// The peer closed the connection before completing it.
    Eof,
}

/// The client's first handshake message, read without the core. At most
/// one message header and [`MAX_BODY_LEN`] body bytes are ever buffered,
/// and no byte past the message is read, so the core later sees the stream
/// exactly as the client sent it.
#[derive(Debug, Default)]
pub struct FirstFlight {
    buf: Vec<u8>,
    want: usize,
}

impl FirstFlight {
    /// Reads from `sock` until the message is complete or the socket would
    /// block. A header the core would reject (unknown type, oversized
    /// body) completes the flight at once: the core then fails the
    /// handshake with the right alert, and no private-key work happens.
    pub fn read_from(&mut self, sock: &mut impl Read) -> io::Result<FlightProgress> {
        if self.want == 0 {
            self.want = HEADER_LEN;
            self.buf.reserve_exact(HEADER_LEN + MAX_BODY_LEN);
        }
        loop {
            if self.buf.len() == self.want {
                if self.want == HEADER_LEN {
                    let header: [u8; HEADER_LEN] = self.buf[..HEADER_LEN]
                        .try_into()
                        .map_err(|_| io::Error::other("header"))?;
                    match HandshakeHeader::parse(&header) {
                        Ok(h) if h.body_len > 0 => self.want = HEADER_LEN + h.body_len,
                        _ => return Ok(FlightProgress::Complete),
                    }
                    continue;
                }
                return Ok(FlightProgress::Complete);
            }
            let start = self.buf.len();
            self.buf.resize(self.want, 0);
            match sock.read(&mut self.buf[start..]) {
                Ok(0) => {
                    self.buf.truncate(start);
                    return Ok(FlightProgress::Eof);
                }
                Ok(n) => self.buf.truncate(start + n),
                Err(e) => {
                    self.buf.truncate(start);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(FlightProgress::Partial),
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    /// The message bytes read so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Any bytes read at all.
    pub fn started(&self) -> bool {
        !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(total: usize, per_source: usize) -> AdmissionLimits {
        AdmissionLimits {
            max_pending: total,
            max_pending_per_source: per_source,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn per_source_cap_refuses_the_newcomer() {
        let mut a = Admission::new(limits(10, 2));
        let t0 = Instant::now();
        assert_eq!(a.admit(Token(1), ip(1), t0), Ok(None));
        assert_eq!(a.admit(Token(2), ip(1), t0), Ok(None));
        assert_eq!(a.admit(Token(3), ip(1), t0), Err(Refusal::SourcePending));
        assert_eq!(a.admit(Token(4), ip(2), t0), Ok(None));
        a.remove(Token(1));
        assert_eq!(a.admit(Token(5), ip(1), t0), Ok(None));
    }

    #[test]
    fn a_full_table_evicts_a_stalled_connection_of_the_heaviest_source() {
        let mut a = Admission::new(limits(4, 8));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        a.admit(Token(1), ip(9), at(0)).unwrap(); // real client, hello sent
        a.hello_received(Token(1));
        a.admit(Token(2), ip(5), at(1)).unwrap();
        a.admit(Token(3), ip(5), at(2)).unwrap();
        a.admit(Token(4), ip(6), at(3)).unwrap();
        // Full: the newcomer gets in, the oldest stalled entry of ip 5 goes.
        assert_eq!(a.admit(Token(5), ip(7), at(4)), Ok(Some(Token(2))));
        assert_eq!(a.len(), 4);
        assert!(a.contains(Token(1)));
        // Only the real client has a hello; it is never chosen while a
        // stalled one exists.
        for t in 6..50 {
            let v = a.admit(Token(t), ip(t as u8), at(t as u64)).unwrap();
            assert_ne!(v, Some(Token(1)));
        }
        assert!(a.contains(Token(1)));
    }

    #[test]
    fn with_only_hellos_pending_the_oldest_goes() {
        let mut a = Admission::new(limits(2, 8));
        let t0 = Instant::now();
        a.admit(Token(1), ip(1), t0).unwrap();
        a.hello_received(Token(1));
        a.admit(Token(2), ip(2), t0 + Duration::from_millis(1))
            .unwrap();
        a.hello_received(Token(2));
        assert_eq!(
            a.admit(Token(3), ip(3), t0 + Duration::from_millis(2)),
            Ok(Some(Token(1)))
        );
    }

    #[test]
    fn first_flight_stops_at_the_message_end() {
        // A ClientHello header announcing 5 body bytes, then 3 extra bytes.
        let msg = [0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 9, 9, 9];
        let mut src = &msg[..];
        let mut f = FirstFlight::default();
        assert_eq!(f.read_from(&mut src).unwrap(), FlightProgress::Complete);
        assert_eq!(f.bytes(), &msg[..8]);
        assert_eq!(src, &[9, 9, 9]);
    }

    #[test]
    fn first_flight_reports_eof_and_bad_headers() {
        let mut f = FirstFlight::default();
        let mut short = &[0x01u8, 0x00][..];
        assert_eq!(f.read_from(&mut short).unwrap(), FlightProgress::Eof);
        let mut f = FirstFlight::default();
        let mut huge = &[0x01u8, 0xff, 0xff, 0][..];
        // Oversized: complete at once, so the core rejects it.
        assert_eq!(f.read_from(&mut huge).unwrap(), FlightProgress::Complete);
        assert_eq!(f.bytes().len(), 3);
    }
}
