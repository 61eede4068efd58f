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
//!
//! Behind a load balancer, the first flight starts with a PROXY protocol
//! header ([`super::proxy_header`]). Peers in [`TrustedProxies`]
//! (`--proxy-protocol-from`) must send one, and it is read here, under the
//! same hello deadline and pending budget; the pending-per-source count
//! then uses the client address from the header ([`Admission::admit_proxied`],
//! [`Admission::set_source`]). Any other peer whose first bytes look like a
//! PROXY header is refused, so nobody can claim another client's address.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use hytun_core::wire::handshake::{HEADER_LEN, HandshakeHeader, MAX_BODY_LEN};
use mio::Token;

use super::proxy_header::{self, Header, Invalid, Parse};
use crate::ratelimit::source_key;

/// The peers allowed (and required) to send a PROXY protocol header:
/// `--proxy-protocol-from CIDR`, repeatable. Empty by default: no peer
/// may send one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// Network address (host bits cleared) and prefix length.
    nets: Vec<(IpAddr, u8)>,
}

/// An invalid `--proxy-protocol-from` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxiesError {
    /// The value as given.
    pub text: String,
    /// Why it is invalid.
    pub why: &'static str,
}

impl fmt::Display for TrustedProxiesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid proxy-protocol-from '{}': {}",
            self.text, self.why
        )
    }
}

impl std::error::Error for TrustedProxiesError {}

impl TrustedProxies {
    /// Parses addresses and networks: `ADDR` or `ADDR/PREFIX`, IPv4 or
    /// IPv6 (without brackets). Host bits below the prefix must be zero.
    ///
    /// # Errors
    /// The first invalid value, with the reason.
    pub fn parse(values: &[String]) -> Result<Self, TrustedProxiesError> {
        let mut nets = Vec::with_capacity(values.len());
        for text in values {
            let bad = |why| TrustedProxiesError {
                text: text.clone(),
                why,
            };
            let (addr, prefix) = match text.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (text.as_str(), None),
            };
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| bad("expected an IP address or CIDR, e.g. 10.0.0.0/8 or ::1"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => {
                    let valid = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
                    match p.parse::<u8>() {
                        Ok(n) if valid && n <= max => n,
                        _ => {
                            return Err(bad(
                                "the prefix length must be 0-32 (IPv4) or 0-128 (IPv6)",
                            ));
                        }
                    }
                }
            };
            if mask(ip, prefix) != ip {
                return Err(bad("host bits are set below the prefix length"));
            }
            nets.push((ip, prefix));
        }
        Ok(TrustedProxies { nets })
    }

    /// True if no peer is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// True if `peer` is in one of the networks. An IPv4-mapped IPv6 peer
    /// (a dual-stack listener) matches the IPv4 networks.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.nets
            .iter()
            .any(|&(net, prefix)| net.is_ipv4() == peer.is_ipv4() && mask(peer, prefix) == net)
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (net, prefix)) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{net}/{prefix}")?;
        }
        Ok(())
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

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
    /// The source key; `None` while a trusted proxy's header is awaited
    /// (such entries count toward the total only).
    source: Option<IpAddr>,
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
        let victim = self.make_room();
        self.insert(token, Some(source), now);
        Ok(victim)
    }

    /// Admits `token` from a trusted proxy, before its PROXY header names
    /// the client: it counts toward the total now, and toward its source
    /// once [`Admission::set_source`] is called. The returned victim, if
    /// any, must be closed by the caller.
    pub fn admit_proxied(&mut self, token: Token, now: Instant) -> Option<Token> {
        let victim = self.make_room();
        self.insert(token, None, now);
        victim
    }

    /// The PROXY header of `token` named its client `peer` (or, for a
    /// LOCAL header, the proxy itself): from now on it counts toward that
    /// source. Refused, and forgotten, if that source already has its
    /// share.
    pub fn set_source(&mut self, token: Token, peer: IpAddr) -> Result<(), Refusal> {
        let source = source_key(peer);
        let Some(e) = self.entries.get(&token).copied() else {
            return Ok(());
        };
        if e.source.is_some() {
            return Ok(());
        }
        if self.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_pending_per_source
        {
            self.remove(token);
            return Err(Refusal::SourcePending);
        }
        if let Some(e) = self.entries.get_mut(&token) {
            e.source = Some(source);
        }
        *self.per_source.entry(source).or_insert(0) += 1;
        Ok(())
    }

    fn make_room(&mut self) -> Option<Token> {
        if self.entries.len() >= self.limits.max_pending.max(1) {
            let v = self.pick_victim();
            if let Some(v) = v {
                self.remove(v);
            }
            v
        } else {
            None
        }
    }

    fn insert(&mut self, token: Token, source: Option<IpAddr>, now: Instant) {
        self.entries.insert(
            token,
            Entry {
                source,
                since: now,
                hello: false,
            },
        );
        if let Some(source) = source {
            *self.per_source.entry(source).or_insert(0) += 1;
        }
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
        if let Some(source) = e.source
            && let Some(n) = self.per_source.get_mut(&source)
        {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
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
                let count = |s: Option<IpAddr>| {
                    s.and_then(|s| self.per_source.get(&s).copied())
                        .unwrap_or(0)
                };
                let (na, nb) = (count(a.source), count(b.source));
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
    /// The PROXY header from a trusted proxy is complete; call
    /// [`FirstFlight::read_from`] again for the first message.
    Proxied(Header),
    /// The first message is complete.
    Complete,
    /// The peer closed the connection before completing it.
    Eof,
    /// The connection must be closed without a handshake.
    Refused(HeaderRefusal),
}

/// Why a first flight was refused over its PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRefusal {
    /// A trusted proxy sent no valid header (it is required from them).
    Trusted(Invalid),
    /// A peer that is not a trusted proxy sent what looks like a header.
    Untrusted,
}

impl fmt::Display for HeaderRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderRefusal::Trusted(e) => write!(
                f,
                "{e} from a trusted proxy address (--proxy-protocol-from requires one)"
            ),
            HeaderRefusal::Untrusted => write!(
                f,
                "sent a PROXY protocol header but is not a trusted proxy address \
                 (see --proxy-protocol-from)"
            ),
        }
    }
}

/// Where the first flight is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// A trusted proxy's PROXY header comes first.
    Header,
    /// The first message; a PROXY header here is refused.
    #[default]
    Message,
}

/// The client's first handshake message, read without the core, after
/// the PROXY header when the peer is a trusted proxy. At most
/// [`proxy_header::V2_MAX_LEN`] header bytes, one message header and
/// [`MAX_BODY_LEN`] body bytes are ever buffered. No byte past the message
/// is read, except that a v1 PROXY line (whose length shows only at its
/// CRLF) is read in one go of up to [`proxy_header::V1_MAX_LEN`] bytes;
/// whatever follows it stays in [`FirstFlight::bytes`], so the core still
/// sees the stream exactly as the client sent it.
#[derive(Debug, Default)]
pub struct FirstFlight {
    buf: Vec<u8>,
    want: usize,
    stage: Stage,
    /// The peer is a trusted proxy (its header was read, or is awaited).
    from_proxy: bool,
}

impl FirstFlight {
    /// A flight from a trusted proxy: a PROXY header is required first.
    pub fn behind_proxy() -> Self {
        FirstFlight {
            stage: Stage::Header,
            from_proxy: true,
            ..FirstFlight::default()
        }
    }

    /// Reads from `sock` until the header or the message is complete or
    /// the socket would block. A message header the core would reject
    /// (unknown type, oversized body) completes the flight at once: the
    /// core then fails the handshake with the right alert, and no
    /// private-key work happens.
    pub fn read_from(&mut self, sock: &mut impl Read) -> io::Result<FlightProgress> {
        if self.stage == Stage::Header {
            return self.read_header(sock);
        }
        if self.want == 0 {
            self.want = HEADER_LEN;
            self.buf.reserve(HEADER_LEN + MAX_BODY_LEN);
        }
        loop {
            if self.buf.len() >= self.want {
                if self.want == HEADER_LEN {
                    let header: [u8; HEADER_LEN] = self.buf[..HEADER_LEN]
                        .try_into()
                        .map_err(|_| io::Error::other("header"))?;
                    if !self.from_proxy && proxy_header::looks_like_header(&header) {
                        return Ok(FlightProgress::Refused(HeaderRefusal::Untrusted));
                    }
                    match HandshakeHeader::parse(&header) {
                        Ok(h) if h.body_len > 0 => self.want = HEADER_LEN + h.body_len,
                        _ => return Ok(FlightProgress::Complete),
                    }
                    continue;
                }
                return Ok(FlightProgress::Complete);
            }
            let want = self.want;
            if let Some(done) = self.fill(sock, want)? {
                return Ok(done);
            }
        }
    }

    fn read_header(&mut self, sock: &mut impl Read) -> io::Result<FlightProgress> {
        if self.buf.capacity() == 0 {
            self.buf
                .reserve(proxy_header::V2_MAX_LEN + HEADER_LEN + MAX_BODY_LEN);
        }
        loop {
            let target = match proxy_header::parse(&self.buf) {
                Parse::Done { header, consumed } => {
                    self.buf.drain(..consumed);
                    self.stage = Stage::Message;
                    return Ok(FlightProgress::Proxied(header));
                }
                Parse::Invalid(e) => {
                    return Ok(FlightProgress::Refused(HeaderRefusal::Trusted(e)));
                }
                // Until the version is known, read no more than the
                // shortest v2 header; a v1 line is read up to its longest.
                Parse::Incomplete { min_total } if self.buf.first() == Some(&b'P') => {
                    min_total.max(proxy_header::V1_MAX_LEN)
                }
                Parse::Incomplete { min_total } => min_total.max(proxy_header::V2_FIXED_LEN),
            };
            if let Some(done) = self.fill(sock, target)? {
                return Ok(done);
            }
        }
    }

    /// One read toward `target` buffered bytes. `Some` when the caller
    /// must return (would block, EOF); `None` after progress.
    fn fill(&mut self, sock: &mut impl Read, target: usize) -> io::Result<Option<FlightProgress>> {
        let start = self.buf.len();
        self.buf.resize(target.max(start + 1), 0);
        loop {
            match sock.read(&mut self.buf[start..]) {
                Ok(0) => {
                    self.buf.truncate(start);
                    return Ok(Some(FlightProgress::Eof));
                }
                Ok(n) => {
                    self.buf.truncate(start + n);
                    return Ok(None);
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        self.buf.truncate(start);
                        return Ok(Some(FlightProgress::Partial));
                    }
                    io::ErrorKind::Interrupted => {}
                    _ => {
                        self.buf.truncate(start);
                        return Err(e);
                    }
                },
            }
        }
    }

    /// The message bytes read so far (after any PROXY header).
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

    /// A reader that hands out its bytes in fixed-size pieces, then
    /// would block (like a non-blocking socket), or EOF when `eof`.
    struct Trickle<'a> {
        data: &'a [u8],
        piece: usize,
        eof: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = out.len().min(self.piece).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn v2_local() -> Vec<u8> {
        let mut h = proxy_header::V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0, 0]);
        h
    }

    fn v2_proxy_v4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut h = proxy_header::V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&[127, 0, 0, 1]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&7000u16.to_be_bytes());
        h
    }

    const HELLO: [u8; 8] = [0x01, 0x00, 0x05, 1, 2, 3, 4, 5];

    /// Reads a whole flight from `data` in `piece`-byte reads, the way the
    /// loop does: again after every `Proxied` and `Partial`.
    fn run_flight(mut f: FirstFlight, data: &[u8], piece: usize) -> (Vec<FlightProgress>, Vec<u8>) {
        let mut src = Trickle {
            data,
            piece,
            eof: true,
        };
        let mut seen = Vec::new();
        loop {
            let p = f.read_from(&mut src).unwrap();
            let last = !matches!(p, FlightProgress::Proxied(_) | FlightProgress::Partial);
            seen.push(p);
            if last {
                return (seen, f.bytes().to_vec());
            }
        }
    }

    #[test]
    fn behind_a_proxy_v2_then_the_hello_in_any_pieces() {
        let mut data = v2_proxy_v4([192, 0, 2, 7], 5555);
        data.extend_from_slice(&HELLO);
        data.extend_from_slice(&[9, 9]);
        for piece in [1, 3, 7, 100] {
            let (seen, bytes) = run_flight(FirstFlight::behind_proxy(), &data, piece);
            let header = seen.iter().find_map(|p| match p {
                FlightProgress::Proxied(h) => Some(*h),
                _ => None,
            });
            assert_eq!(
                header.and_then(|h| h.source),
                Some("192.0.2.7:5555".parse().unwrap()),
                "piece {piece}"
            );
            assert_eq!(
                seen.last(),
                Some(&FlightProgress::Complete),
                "piece {piece}"
            );
            // v2 is read exactly, so nothing past the hello is taken.
            assert_eq!(bytes, HELLO, "piece {piece}");
        }
    }

    #[test]
    fn behind_a_proxy_v1_keeps_what_follows_the_line() {
        let mut data = b"PROXY TCP6 2001:db8::5 ::1 4000 7000\r\n".to_vec();
        data.extend_from_slice(&HELLO);
        let (seen, bytes) = run_flight(FirstFlight::behind_proxy(), &data, 1000);
        assert!(matches!(
            seen[0],
            FlightProgress::Proxied(h) if h.source == Some("[2001:db8::5]:4000".parse().unwrap())
        ));
        assert_eq!(seen.last(), Some(&FlightProgress::Complete));
        assert_eq!(bytes, HELLO);
    }

    #[test]
    fn behind_a_proxy_the_header_is_required() {
        let (seen, _) = run_flight(FirstFlight::behind_proxy(), &HELLO, 100);
        assert_eq!(
            seen,
            vec![FlightProgress::Refused(HeaderRefusal::Trusted(
                Invalid::NoHeader
            ))]
        );
        let shown = HeaderRefusal::Trusted(Invalid::NoHeader).to_string();
        assert!(shown.contains("no PROXY protocol header"), "{shown}");
        // A v1 line that never ends stops at 107 bytes.
        let endless = [b'P', b'R', b'O', b'X', b'Y', b' ']
            .iter()
            .copied()
            .chain(std::iter::repeat_n(b'x', 500))
            .collect::<Vec<_>>();
        let mut src = Trickle {
            data: &endless,
            piece: 1000,
            eof: false,
        };
        let mut f = FirstFlight::behind_proxy();
        let mut last = FlightProgress::Partial;
        for _ in 0..10 {
            last = f.read_from(&mut src).unwrap();
            if last != FlightProgress::Partial {
                break;
            }
        }
        assert_eq!(
            last,
            FlightProgress::Refused(HeaderRefusal::Trusted(Invalid::V1TooLong))
        );
        assert!(src.data.len() >= 500 - proxy_header::V1_MAX_LEN);
    }

    #[test]
    fn a_health_check_sends_local_and_leaves() {
        let (seen, _) = run_flight(FirstFlight::behind_proxy(), &v2_local(), 100);
        assert!(matches!(
            seen[0],
            FlightProgress::Proxied(h) if h.local && h.source.is_none()
        ));
        assert_eq!(seen.last(), Some(&FlightProgress::Eof));
    }

    #[test]
    fn an_untrusted_peer_sending_a_header_is_refused() {
        for data in [
            b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\r\n".to_vec(),
            v2_proxy_v4([192, 0, 2, 7], 1),
        ] {
            let (seen, _) = run_flight(FirstFlight::default(), &data, 100);
            assert_eq!(
                seen,
                vec![FlightProgress::Refused(HeaderRefusal::Untrusted)]
            );
        }
        let shown = HeaderRefusal::Untrusted.to_string();
        assert!(shown.contains("--proxy-protocol-from"), "{shown}");
        // A plain hello is untouched.
        let (seen, bytes) = run_flight(FirstFlight::default(), &HELLO, 2);
        assert_eq!(seen.last(), Some(&FlightProgress::Complete));
        assert_eq!(bytes, HELLO);
    }

    #[test]
    fn proxied_entries_count_toward_their_real_source() {
        let mut a = Admission::new(limits(10, 2));
        let t0 = Instant::now();
        // Many connections from one proxy: only the total counts so far.
        for t in 1..=5 {
            assert_eq!(a.admit_proxied(Token(t), t0), None);
        }
        assert_eq!(a.set_source(Token(1), ip(50)), Ok(()));
        assert_eq!(a.set_source(Token(2), ip(50)), Ok(()));
        assert_eq!(a.set_source(Token(3), ip(50)), Err(Refusal::SourcePending));
        assert!(!a.contains(Token(3)));
        assert_eq!(a.set_source(Token(4), ip(51)), Ok(()));
        // A direct connection from the same client shares the count.
        assert_eq!(a.admit(Token(6), ip(50), t0), Err(Refusal::SourcePending));
        a.remove(Token(1));
        assert_eq!(a.admit(Token(6), ip(50), t0), Ok(None));
        assert_eq!(a.len(), 4); // 2, 4, 5 (no header yet) and 6
        // Removing an entry whose header never came frees the total.
        assert!(a.remove(Token(5)));
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn trusted_proxies_parse_and_match() {
        let list = |v: &[&str]| {
            TrustedProxies::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        let t = list(&["127.0.0.8/30", "::1", "fd00::/8"]).unwrap();
        assert!(t.contains(ip(8)));
        assert!(t.contains(ip(11)));
        assert!(!t.contains(ip(12)));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("fe80::1".parse().unwrap()));
        // IPv4-mapped peers of a dual-stack listener.
        assert!(t.contains("::ffff:127.0.0.9".parse().unwrap()));
        assert_eq!(t.to_string(), "127.0.0.8/30, ::1/128, fd00::/8");
        assert!(list(&[]).unwrap().is_empty());
        assert!(!list(&[]).unwrap().contains(ip(1)));
        assert!(list(&["0.0.0.0/0"]).unwrap().contains(ip(1)));
        for bad in [
            "127.0.0.1/33",
            "127.0.0.9/30",
            "::1/129",
            "localhost",
            "1.2.3.4/",
            "1.2.3.4/+1",
        ] {
            let e = list(&[bad]).unwrap_err();
            assert_eq!(e.text, bad);
            assert!(
                e.to_string().starts_with("invalid proxy-protocol-from"),
                "{e}"
            );
        }
    }
}
