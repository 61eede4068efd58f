//! The PROXY protocol header (HAProxy's "PROXY protocol", versions 1 and
//! 2) as a wire format, without I/O: [`parse`] looks at the bytes a
//! connection has sent so far and says whether they begin with a complete
//! header, need more bytes, or cannot be one. A load balancer in front of
//! the server sends this header first on each connection it forwards, so
//! the server learns the real client address. Which peers may send it, and
//! when it is required, is decided by admission ([`super::admission`]).
//!
//! Accepted forms (everything else is [`Parse::Invalid`]):
//! - v1: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, the same with
//!   `TCP6`, and `PROXY UNKNOWN<anything>\r\n`; the whole line is at most
//!   [`V1_MAX_LEN`] bytes, single spaces, decimal ports without leading
//!   zeros.
//! - v2: the 12-byte signature, version 2, command LOCAL or PROXY; for
//!   PROXY the families UNSPEC, INET, INET6 and UNIX over STREAM (or
//!   UNSPEC). TLVs after the addresses are skipped. The whole header is at
//!   most [`V2_MAX_LEN`] bytes.
//!
//! LOCAL, UNKNOWN, UNSPEC and UNIX carry no usable client address:
//! [`Header::source`] is `None` and the connection's own peer address
//! stands.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature, the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The first bytes of every v1 header.
pub const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (from the specification).
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 header this server accepts: the 16-byte fixed part and
/// up to 496 bytes of addresses and TLVs. Load balancers send 28 (IPv4)
/// or 52 (IPv6) bytes plus a few small TLVs.
pub const V2_MAX_LEN: usize = 512;
/// Length of the v2 fixed part (signature, version/command, family,
/// length).
pub const V2_FIXED_LEN: usize = 16;

/// A complete, valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    /// The original client address, when the header carries one (v1
    /// TCP4/TCP6, v2 PROXY over INET/INET6).
    pub source: Option<SocketAddr>,
    /// True for a v2 LOCAL header (the proxy's own connection, e.g. a
    /// health check).
    pub local: bool,
}

/// Why bytes are not a valid PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// The bytes do not start with either signature.
    NoHeader,
    /// A v1 line without CRLF within [`V1_MAX_LEN`] bytes.
    V1TooLong,
    /// A v1 line that does not follow the grammar.
    V1Syntax,
    /// A v2 header with a version other than 2.
    V2Version(u8),
    /// A v2 command other than LOCAL (0) or PROXY (1).
    V2Command(u8),
    /// A v2 address family or transport this server does not take.
    V2Family(u8),
    /// A v2 length field larger than [`V2_MAX_LEN`] allows.
    V2TooLong(usize),
    /// A v2 length field too short for its address family.
    V2TooShort,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::NoHeader => write!(f, "no PROXY protocol header"),
            Invalid::V1TooLong => {
                write!(f, "PROXY v1 header without CRLF within {V1_MAX_LEN} bytes")
            }
            Invalid::V1Syntax => write!(f, "malformed PROXY v1 header"),
            Invalid::V2Version(v) => write!(f, "PROXY v2 header with version {v}"),
            Invalid::V2Command(c) => write!(f, "PROXY v2 header with unknown command {c}"),
            Invalid::V2Family(b) => {
                write!(
                    f,
                    "PROXY v2 header with unsupported family/transport {b:#04x}"
                )
            }
            Invalid::V2TooLong(n) => write!(
                f,
                "PROXY v2 header of {n} bytes (at most {V2_MAX_LEN} accepted)"
            ),
            Invalid::V2TooShort => write!(f, "PROXY v2 header too short for its addresses"),
        }
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// A valid prefix of a header: at least `min_total` bytes in all are
    /// needed (more may turn out to be needed for v1, whose length is
    /// only known at its CRLF).
    Incomplete {
        /// The smallest total length that may complete the header.
        min_total: usize,
    },
    /// A complete header of `consumed` bytes; what follows belongs to the
    /// application protocol.
    Done {
        /// The header.
        header: Header,
        /// Its length in bytes.
        consumed: usize,
    },
    /// Not a header this server accepts.
    Invalid(Invalid),
}

/// True if `buf` (at least its first bytes) could be the start of a PROXY
/// header of either version: the test applied to peers that are not
/// allowed to send one. An empty `buf` is not.
pub fn looks_like_header(buf: &[u8]) -> bool {
    let prefix_of = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        n > 0 && buf[..n] == sig[..n]
    };
    prefix_of(V1_PREFIX) || prefix_of(&V2_SIGNATURE)
}

/// Parses the header at the start of `buf`. Never reads past the header;
/// `buf` may hold more bytes than the header.
pub fn parse(buf: &[u8]) -> Parse {
    if buf.is_empty() {
        return Parse::Incomplete { min_total: 1 };
    }
    if buf[0] == V2_SIGNATURE[0] {
        parse_v2(buf)
    } else if buf[0] == V1_PREFIX[0] {
        parse_v1(buf)
    } else {
        Parse::Invalid(Invalid::NoHeader)
    }
}

fn parse_v1(buf: &[u8]) -> Parse {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Parse::Invalid(Invalid::NoHeader);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if buf.len() >= V1_MAX_LEN {
            return Parse::Invalid(Invalid::V1TooLong);
        }
        // Shortest: "PROXY UNKNOWN\r\n".
        return Parse::Incomplete {
            min_total: (buf.len() + 1).max(15),
        };
    };
    if cr + 1 >= V1_MAX_LEN {
        return Parse::Invalid(Invalid::V1TooLong);
    }
    match buf.get(cr + 1) {
        None => {
            return Parse::Incomplete { min_total: cr + 2 };
        }
        Some(b'\n') => {}
        Some(_) => return Parse::Invalid(Invalid::V1Syntax),
    }
    let consumed = cr + 2;
    let Ok(line) = std::str::from_utf8(&buf[V1_PREFIX.len()..cr]) else {
        return Parse::Invalid(Invalid::V1Syntax);
    };
    match parse_v1_fields(line) {
        Some(source) => Parse::Done {
            header: Header {
                version: 1,
                source,
                local: false,
            },
            consumed,
        },
        None => Parse::Invalid(Invalid::V1Syntax),
    }
}

/// The fields after "PROXY ": `Some(None)` for UNKNOWN, `Some(Some(src))`
/// for TCP4/TCP6, `None` for anything malformed.
fn parse_v1_fields(line: &str) -> Option<Option<SocketAddr>> {
    if let Some(rest) = line.strip_prefix("UNKNOWN") {
        // The receiver ignores whatever follows UNKNOWN, but it must still
        // be a single line.
        return (rest.is_empty() || rest.starts_with(' ')).then_some(None);
    }
    let mut parts = line.split(' ');
    let proto = parts.next()?;
    let src = parts.next()?;
    let dst = parts.next()?;
    let sport = parse_v1_port(parts.next()?)?;
    // The destination is validated but not used.
    parse_v1_port(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    let src: IpAddr = match proto {
        "TCP4" => {
            dst.parse::<Ipv4Addr>().ok()?;
            src.parse::<Ipv4Addr>().ok()?.into()
        }
        "TCP6" => {
            dst.parse::<Ipv6Addr>().ok()?;
            src.parse::<Ipv6Addr>().ok()?.into()
        }
        _ => return None,
    };
    Some(Some(SocketAddr::new(src, sport)))
}

fn parse_v1_port(s: &str) -> Option<u16> {
    let valid = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if valid { s.parse().ok() } else { None }
}

fn parse_v2(buf: &[u8]) -> Parse {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Parse::Invalid(Invalid::NoHeader);
    }
    if buf.len() < V2_FIXED_LEN {
        // Check what is there already, so garbage fails early.
        if let Some(&vc) = buf.get(12)
            && let Err(e) = check_version_command(vc)
        {
            return Parse::Invalid(e);
        }
        return Parse::Incomplete {
            min_total: V2_FIXED_LEN,
        };
    }
    let local = match check_version_command(buf[12]) {
        Ok(local) => local,
        Err(e) => return Parse::Invalid(e),
    };
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED_LEN + len;
    if total > V2_MAX_LEN {
        return Parse::Invalid(Invalid::V2TooLong(total));
    }
    if buf.len() < total {
        return Parse::Incomplete { min_total: total };
    }
    let body = &buf[V2_FIXED_LEN..total];
    let done = |source| Parse::Done {
        header: Header {
            version: 2,
            source,
            local,
        },
        consumed: total,
    };
    if local {
        // LOCAL: the receiver ignores the address block.
        return done(None);
    }
    // High nibble: family (0 UNSPEC, 1 INET, 2 INET6, 3 UNIX); low nibble:
    // transport (0 UNSPEC, 1 STREAM, 2 DGRAM).
    let transport = family & 0x0f;
    match (family >> 4, transport) {
        (0, _) => done(None),
        (1, 1) => {
            if body.len() < 12 {
                return Parse::Invalid(Invalid::V2TooShort);
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            done(Some(SocketAddr::new(ip.into(), port)))
        }
        (2, 1) => {
            if body.len() < 36 {
                return Parse::Invalid(Invalid::V2TooShort);
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            done(Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port)))
        }
        (3, 1) => {
            if body.len() < 216 {
                return Parse::Invalid(Invalid::V2TooShort);
            }
            done(None)
        }
        _ => Parse::Invalid(Invalid::V2Family(family)),
    }
}

/// `Ok(true)` for LOCAL, `Ok(false)` for PROXY.
fn check_version_command(vc: u8) -> Result<bool, Invalid> {
    if vc >> 4 != 2 {
        return Err(Invalid::V2Version(vc >> 4));
    }
    match vc & 0x0f {
        0 => Ok(true),
        1 => Ok(false),
        c => Err(Invalid::V2Command(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v4_body(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut b = src.to_vec();
        b.extend_from_slice(&dst);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b
    }

    fn done(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Parse::Done { header, consumed } => (header, consumed),
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[test]
    fn v1_tcp4_and_what_follows_is_left_alone() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 7000\r\n";
        let mut buf = line.to_vec();
        buf.extend_from_slice(&[0x01, 0x00, 0x05]);
        let (h, n) = done(&buf);
        assert_eq!(n, line.len());
        assert_eq!(h.version, 1);
        assert!(!h.local);
        assert_eq!(h.source, Some("192.0.2.7:56324".parse().unwrap()));
    }

    #[test]
    fn v1_tcp6() {
        let line = b"PROXY TCP6 2001:db8::1 ::1 65535 443\r\n";
        let (h, n) = done(line);
        assert_eq!(n, line.len());
        assert_eq!(h.source, Some("[2001:db8::1]:65535".parse().unwrap()));
    }

    #[test]
    fn v1_unknown_keeps_the_peer_address() {
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n",
        ] {
            let (h, n) = done(line);
            assert_eq!(n, line.len());
            assert_eq!(h.source, None);
        }
    }

    #[test]
    fn v1_rejects_malformed_lines() {
        for line in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 7000 9\r\n",
            b"PROXY TCP4 2001:db8::1 ::1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4  192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 2\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\rX",
            b"PROXY TCP4 1.2.3.\xff 198.51.100.1 1 2\r\n",
        ] {
            assert_eq!(
                parse(line),
                Parse::Invalid(Invalid::V1Syntax),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn v1_truncated_is_incomplete_at_every_length() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 7000\r\n";
        for n in 0..line.len() {
            match parse(&line[..n]) {
                Parse::Incomplete { min_total } => {
                    assert!(min_total > n && min_total <= line.len(), "{n}: {min_total}");
                }
                other => panic!("{n}: {other:?}"),
            }
        }
    }

    #[test]
    fn v1_longer_than_107_bytes_is_refused() {
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'x');
        assert_eq!(parse(&long), Parse::Invalid(Invalid::V1TooLong));
        // CRLF ending exactly at byte 107 is still fine.
        let mut max = b"PROXY UNKNOWN ".to_vec();
        max.resize(V1_MAX_LEN - 2, b'x');
        max.extend_from_slice(b"\r\n");
        assert_eq!(done(&max).1, V1_MAX_LEN);
        // One more byte before the CRLF is not.
        let mut over = b"PROXY UNKNOWN ".to_vec();
        over.resize(V1_MAX_LEN - 1, b'x');
        over.extend_from_slice(b"\r\n");
        assert_eq!(parse(&over), Parse::Invalid(Invalid::V1TooLong));
    }

    #[test]
    fn v2_proxy_inet_and_inet6() {
        let h4 = v2(
            1,
            0x11,
            &v4_body([192, 0, 2, 7], [127, 0, 0, 1], 4242, 7000),
        );
        let (h, n) = done(&h4);
        assert_eq!((h.version, h.local, n), (2, false, 28));
        assert_eq!(h.source, Some("192.0.2.7:4242".parse().unwrap()));

        let mut b6 = Vec::new();
        b6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        b6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b6.extend_from_slice(&4243u16.to_be_bytes());
        b6.extend_from_slice(&7000u16.to_be_bytes());
        let (h, n) = done(&v2(1, 0x21, &b6));
        assert_eq!(n, 52);
        assert_eq!(h.source, Some("[2001:db8::7]:4243".parse().unwrap()));
    }

    #[test]
    fn v2_local_is_a_health_check_without_address() {
        // haproxy's health checks: LOCAL, family UNSPEC, no addresses.
        let (h, n) = done(&v2(0, 0x00, &[]));
        assert_eq!(n, 16);
        assert!(h.local);
        assert_eq!(h.source, None);
        // LOCAL with an address block: the block is ignored.
        let (h, _) = done(&v2(0, 0x11, &v4_body([1, 2, 3, 4], [5, 6, 7, 8], 1, 2)));
        assert_eq!(h.source, None);
    }

    #[test]
    fn v2_tlvs_are_skipped_and_the_rest_left_alone() {
        let mut body = v4_body([192, 0, 2, 9], [127, 0, 0, 1], 1000, 7000);
        // PP2_TYPE_ALPN "h2", PP2_TYPE_UNIQUE_ID of 5 bytes.
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        body.extend_from_slice(&[0x05, 0x00, 0x05, 1, 2, 3, 4, 5]);
        let mut buf = v2(1, 0x11, &body);
        let header_len = buf.len();
        buf.extend_from_slice(&[0x01, 0x00, 0x05]);
        let (h, n) = done(&buf);
        assert_eq!(n, header_len);
        assert_eq!(h.source, Some("192.0.2.9:1000".parse().unwrap()));
    }

    #[test]
    fn v2_truncated_is_incomplete_at_every_length() {
        let full = v2(1, 0x11, &v4_body([192, 0, 2, 7], [127, 0, 0, 1], 1, 2));
        for n in 0..full.len() {
            match parse(&full[..n]) {
                Parse::Incomplete { min_total } => {
                    assert!(min_total > n && min_total <= full.len(), "{n}: {min_total}");
                }
                other => panic!("{n}: {other:?}"),
            }
        }
    }

    #[test]
    fn v2_oversized_and_malformed_are_refused() {
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(
            parse(&big),
            Parse::Invalid(Invalid::V2TooLong(V2_FIXED_LEN + 0xffff))
        );
        let at_max = v2(1, 0x00, &vec![0; V2_MAX_LEN - V2_FIXED_LEN]);
        assert_eq!(done(&at_max).1, V2_MAX_LEN);
        let over = v2(1, 0x00, &vec![0; V2_MAX_LEN - V2_FIXED_LEN + 1]);
        assert!(matches!(
            parse(&over),
            Parse::Invalid(Invalid::V2TooLong(_))
        ));

        let mut v1_in_v2 = v2(1, 0x11, &v4_body([1, 2, 3, 4], [5, 6, 7, 8], 1, 2));
        v1_in_v2[12] = 0x11;
        assert_eq!(parse(&v1_in_v2), Parse::Invalid(Invalid::V2Version(1)));
        // Bad version is caught before the length arrives.
        assert_eq!(
            parse(&v1_in_v2[..13]),
            Parse::Invalid(Invalid::V2Version(1))
        );
        let mut cmd = v2(1, 0x11, &v4_body([1, 2, 3, 4], [5, 6, 7, 8], 1, 2));
        cmd[12] = 0x22;
        assert_eq!(parse(&cmd), Parse::Invalid(Invalid::V2Command(2)));
        // INET over DGRAM, and an unknown family.
        assert_eq!(
            parse(&v2(1, 0x12, &v4_body([1, 2, 3, 4], [5, 6, 7, 8], 1, 2))),
            Parse::Invalid(Invalid::V2Family(0x12))
        );
        assert_eq!(
            parse(&v2(1, 0x41, &[])),
            Parse::Invalid(Invalid::V2Family(0x41))
        );
        // A length too short for the family's addresses.
        assert_eq!(
            parse(&v2(1, 0x11, &[0; 11])),
            Parse::Invalid(Invalid::V2TooShort)
        );
        assert_eq!(
            parse(&v2(1, 0x21, &[0; 35])),
            Parse::Invalid(Invalid::V2TooShort)
        );
    }

    #[test]
    fn anything_else_is_no_header() {
        assert_eq!(
            parse(&[0x01, 0x00, 0x05]),
            Parse::Invalid(Invalid::NoHeader)
        );
        assert_eq!(parse(b"PROXZ"), Parse::Invalid(Invalid::NoHeader));
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUIX"),
            Parse::Invalid(Invalid::NoHeader)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n"),
            Parse::Invalid(Invalid::NoHeader)
        );
    }

    #[test]
    fn sniffing_for_untrusted_peers() {
        assert!(looks_like_header(b"PRO"));
        assert!(looks_like_header(b"PROXY TCP4"));
        assert!(looks_like_header(&V2_SIGNATURE[..3]));
        assert!(!looks_like_header(b""));
        assert!(!looks_like_header(&[0x01, 0x00, 0x05]));
        assert!(!looks_like_header(b"PRX"));
    }

    #[test]
    fn display_never_shows_debug_output() {
        let shown = Invalid::V2TooLong(70000).to_string();
        assert_eq!(
            shown,
            "PROXY v2 header of 70000 bytes (at most 512 accepted)"
        );
        assert!(!Invalid::V1Syntax.to_string().contains("V1Syntax"));
    }
}
