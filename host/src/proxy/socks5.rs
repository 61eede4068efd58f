//! Sans-IO server side of the SOCKS5 handshake (RFC 1928), "no
//! authentication" method only, CONNECT command only. [`Socks5Handshake`]
//! is fed whatever bytes arrived, split anywhere, and never consumes a byte
//! past the end of the request: everything after `consumed` in the chunk that
//! completed the request is stream payload the caller must forward. It
//! returns the bytes to write back (method selection, error replies); the
//! final success/failure reply is built by the caller with [`reply`] once the
//! tunnel stream has opened or failed. A handshake that needs more than
//! [`MAX_HANDSHAKE_BYTES`] is refused (only a client offering ~255 methods
//! *and* sending a ~255-byte domain could hit that).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::allow::DestHost;

/// Most bytes a client may send before its request is complete.
pub const MAX_HANDSHAKE_BYTES: usize = 512;

const VERSION: u8 = 0x05;
const METHOD_NO_AUTH: u8 = 0x00;
const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
const CMD_CONNECT: u8 = 0x01;
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// Reply codes (`REP` field) of RFC 1928 section 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Socks5Reply {
    /// Succeeded.
    Succeeded = 0,
    /// General SOCKS server failure.
    GeneralFailure = 1,
    /// Connection not allowed by ruleset.
    NotAllowed = 2,
    /// Network unreachable.
    NetworkUnreachable = 3,
    /// Host unreachable.
    HostUnreachable = 4,
    /// Connection refused.
    ConnectionRefused = 5,
    /// TTL expired.
    TtlExpired = 6,
    /// Command not supported.
    CommandNotSupported = 7,
    /// Address type not supported.
    AddressTypeNotSupported = 8,
}

/// Builds a reply: `VER REP RSV ATYP BND.ADDR BND.PORT`. Without a bound
/// address, `0.0.0.0:0` is sent.
#[must_use]
pub fn reply(code: Socks5Reply, bound: Option<SocketAddr>) -> Vec<u8> {
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[VERSION, code as u8, 0x00]);
    let bound = bound.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// What one call to [`Socks5Handshake::feed`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socks5Progress {
    /// All `consumed` (= the whole input) bytes were handshake; feed more.
    NeedMore {
        /// Bytes of this input that were used.
        consumed: usize,
        /// Bytes to write to the client now (may be empty).
        output: Vec<u8>,
    },
    /// The CONNECT request is complete. `input[consumed..]` is payload.
    Request {
        /// Bytes of this input that belonged to the handshake.
        consumed: usize,
        /// Bytes to write to the client now (e.g. the method selection when
        /// greeting and request came in one chunk), before the final reply.
        output: Vec<u8>,
        /// Requested destination host.
        host: DestHost,
        /// Requested destination port.
        port: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Request,
    Finished,
}

/// The incremental SOCKS5 handshake parser for one client connection.
#[derive(Debug, Clone)]
pub struct Socks5Handshake {
    state: State,
    /// Bytes of the message currently being assembled.
    buf: Vec<u8>,
    /// Bytes of already completed messages.
    done: usize,
}

impl Default for Socks5Handshake {
    fn default() -> Self {
        Self::new()
    }
}

impl Socks5Handshake {
    /// A handshake waiting for the client's greeting.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: State::Greeting,
            buf: Vec::with_capacity(32),
            done: 0,
        }
    }

    /// Consumes as much of `input` as the handshake needs.
    ///
    /// # Errors
    /// A protocol violation or unsupported request. Write
    /// [`Socks5Error::output`] to the client (it may hold an error reply),
    /// then close the connection. Feeding after completion or failure gives
    /// [`Socks5Error::Finished`].
    pub fn feed(&mut self, input: &[u8]) -> Result<Socks5Progress, Socks5Error> {
        if self.state == State::Finished {
            return Err(Socks5Error::Finished);
        }
        let mut consumed = 0;
        let mut output = Vec::new();
        loop {
            let need = match self.needed() {
                Ok(n) => n,
                Err(kind) => return Err(self.fail(kind, output)),
            };
            if self.done + need > MAX_HANDSHAKE_BYTES {
                return Err(self.fail(Failure::TooLong, output));
            }
            if self.buf.len() == need {
                match self.complete_message(&mut output) {
                    Ok(None) => continue,
                    Ok(Some((host, port))) => {
                        return Ok(Socks5Progress::Request {
                            consumed,
                            output,
                            host,
                            port,
                        });
                    }
                    Err(kind) => return Err(self.fail(kind, output)),
                }
            }
            if consumed == input.len() {
                return Ok(Socks5Progress::NeedMore { consumed, output });
            }
            let take = (need - self.buf.len()).min(input.len() - consumed);
            self.buf
                .extend_from_slice(&input[consumed..consumed + take]);
            consumed += take;
        }
    }

    /// Length of the current message as far as the buffered prefix tells;
    /// rejects bad fields as soon as they are seen.
    fn needed(&self) -> Result<usize, Failure> {
        let b = &self.buf;
        if let Some(&v) = b.first()
            && v != VERSION
        {
            return Err(Failure::BadVersion(v));
        }
        match self.state {
            State::Greeting => Ok(match b.get(1) {
                None => 2,
                Some(&n) => 2 + usize::from(n),
            }),
            State::Request => {
                if let Some(&cmd) = b.get(1)
                    && cmd != CMD_CONNECT
                {
                    return Err(Failure::Command(cmd));
                }
                match b.get(3) {
                    None => Ok(4),
                    Some(&ATYP_IPV4) => Ok(4 + 4 + 2),
                    Some(&ATYP_IPV6) => Ok(4 + 16 + 2),
                    Some(&ATYP_DOMAIN) => Ok(match b.get(4) {
                        None => 5,
                        Some(&len) => 5 + usize::from(len) + 2,
                    }),
                    Some(&other) => Err(Failure::AddressType(other)),
                }
            }
            State::Finished => Err(Failure::Finished),
        }
    }

    /// Handles a complete message in `buf`; returns the request when done.
    fn complete_message(
        &mut self,
        output: &mut Vec<u8>,
    ) -> Result<Option<(DestHost, u16)>, Failure> {
        let msg = std::mem::take(&mut self.buf);
        self.done += msg.len();
        match self.state {
            State::Greeting => {
                if !msg[2..].contains(&METHOD_NO_AUTH) {
                    output.extend_from_slice(&[VERSION, METHOD_NONE_ACCEPTABLE]);
                    return Err(Failure::NoAcceptableMethod);
                }
                output.extend_from_slice(&[VERSION, METHOD_NO_AUTH]);
                self.state = State::Request;
                Ok(None)
            }
            State::Request => {
                let (addr, port) = msg[4..].split_at(msg.len() - 6);
                let port = u16::from_be_bytes([port[0], port[1]]);
                let host = match msg[3] {
                    ATYP_IPV4 => {
                        let o: [u8; 4] = addr.try_into().map_err(|_| Failure::Internal)?;
                        DestHost::Ip(IpAddr::V4(Ipv4Addr::from(o)))
                    }
                    ATYP_IPV6 => {
                        let o: [u8; 16] = addr.try_into().map_err(|_| Failure::Internal)?;
                        DestHost::Ip(IpAddr::V6(Ipv6Addr::from(o)))
                    }
                    _ => {
                        let name =
                            std::str::from_utf8(&addr[1..]).map_err(|_| Failure::InvalidDomain)?;
                        DestHost::parse(name).ok_or(Failure::InvalidDomain)?
                    }
                };
                self.state = State::Finished;
                Ok(Some((host, port)))
            }
            State::Finished => Err(Failure::Finished),
        }
    }

    /// Marks the handshake failed and builds the error with the bytes to send.
    fn fail(&mut self, kind: Failure, mut output: Vec<u8>) -> Socks5Error {
        let in_request = self.state == State::Request;
        self.state = State::Finished;
        self.buf = Vec::new();
        let code = match kind {
            Failure::Command(_) => Some(Socks5Reply::CommandNotSupported),
            Failure::AddressType(_) => Some(Socks5Reply::AddressTypeNotSupported),
            Failure::InvalidDomain | Failure::TooLong | Failure::BadVersion(_) if in_request => {
                Some(Socks5Reply::GeneralFailure)
            }
            _ => None,
        };
        if let Some(code) = code {
            output.extend_from_slice(&reply(code, None));
        }
        match kind {
            Failure::BadVersion(version) => Socks5Error::BadVersion { version, output },
            Failure::NoAcceptableMethod => Socks5Error::NoAcceptableMethod { output },
            Failure::Command(command) => Socks5Error::CommandNotSupported { command, output },
            Failure::AddressType(atyp) => Socks5Error::AddressTypeNotSupported { atyp, output },
            Failure::InvalidDomain => Socks5Error::InvalidDomain { output },
            Failure::TooLong => Socks5Error::TooLong { output },
            Failure::Finished | Failure::Internal => Socks5Error::Finished,
        }
    }
}

/// Internal failure kinds, turned into [`Socks5Error`] with output by `fail`.
#[derive(Debug, Clone, Copy)]
enum Failure {
    BadVersion(u8),
    NoAcceptableMethod,
    Command(u8),
    AddressType(u8),
    InvalidDomain,
    TooLong,
    Finished,
    Internal,
}

/// Why a SOCKS5 handshake failed. Every variant except `Finished` carries
/// `output`: bytes to write to the client before closing (possibly empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socks5Error {
    /// The version byte was not 5 (e.g. a SOCKS4 or HTTP client).
    BadVersion {
        /// The version byte received.
        version: u8,
        /// Bytes to send before closing.
        output: Vec<u8>,
    },
    /// The client did not offer "no authentication"; `output` holds 0xFF.
    NoAcceptableMethod {
        /// Bytes to send before closing.
        output: Vec<u8>,
    },
    /// BIND, UDP ASSOCIATE or an unknown command; `output` holds reply 0x07.
    CommandNotSupported {
        /// The command byte received.
        command: u8,
        /// Bytes to send before closing.
        output: Vec<u8>,
    },
    /// Unknown address type; `output` holds reply 0x08.
    AddressTypeNotSupported {
        /// The ATYP byte received.
        atyp: u8,
        /// Bytes to send before closing.
        output: Vec<u8>,
    },
    /// The domain name is empty, not UTF-8 or not a valid host name.
    InvalidDomain {
        /// Bytes to send before closing.
        output: Vec<u8>,
    },
    /// The handshake would exceed [`MAX_HANDSHAKE_BYTES`].
    TooLong {
        /// Bytes to send before closing.
        output: Vec<u8>,
    },
    /// `feed` was called after the handshake completed or failed.
    Finished,
}

impl Socks5Error {
    /// Bytes to write to the client before closing the connection.
    #[must_use]
    pub fn output(&self) -> &[u8] {
        match self {
            Self::BadVersion { output, .. }
            | Self::NoAcceptableMethod { output }
            | Self::CommandNotSupported { output, .. }
            | Self::AddressTypeNotSupported { output, .. }
            | Self::InvalidDomain { output }
            | Self::TooLong { output } => output,
            Self::Finished => &[],
        }
    }
}

impl fmt::Display for Socks5Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadVersion { version, .. } => write!(
                f,
                "client is not speaking SOCKS5 (version byte 0x{version:02x})"
            ),
            Self::NoAcceptableMethod { .. } => {
                f.write_str("SOCKS5 client did not offer the 'no authentication' method")
            }
            Self::CommandNotSupported { command, .. } => {
                let name = match command {
                    0x02 => "BIND",
                    0x03 => "UDP ASSOCIATE",
                    _ => "unknown",
                };
                write!(
                    f,
                    "SOCKS5 command 0x{command:02x} ({name}) is not supported; only CONNECT is"
                )
            }
            Self::AddressTypeNotSupported { atyp, .. } => {
                write!(f, "SOCKS5 address type 0x{atyp:02x} is not supported")
            }
            Self::InvalidDomain { .. } => {
                f.write_str("SOCKS5 request holds an invalid destination host name")
            }
            Self::TooLong { .. } => write!(
                f,
                "SOCKS5 handshake longer than {MAX_HANDSHAKE_BYTES} bytes"
            ),
            Self::Finished => f.write_str("SOCKS5 handshake already finished"),
        }
    }
}

impl std::error::Error for Socks5Error {}

#[cfg(test)]
mod tests {
    use super::*;

    const GREETING: [u8; 3] = [5, 1, 0];

    fn connect_ipv4(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut v = vec![5, 1, 0, ATYP_IPV4];
        v.extend_from_slice(&ip);
        v.extend_from_slice(&port.to_be_bytes());
        v
    }

    fn connect_domain(name: &[u8], port: u16) -> Vec<u8> {
        let mut v = vec![5, 1, 0, ATYP_DOMAIN, name.len() as u8];
        v.extend_from_slice(name);
        v.extend_from_slice(&port.to_be_bytes());
        v
    }

    /// Feeds `input` one byte at a time; returns the concatenated output,
    /// the request and the index of the first payload byte.
    fn feed_bytewise(input: &[u8]) -> Result<(Vec<u8>, DestHost, u16, usize), Socks5Error> {
        let mut hs = Socks5Handshake::new();
        let mut out = Vec::new();
        for (i, byte) in input.iter().enumerate() {
            match hs.feed(std::slice::from_ref(byte))? {
                Socks5Progress::NeedMore { consumed, output } => {
                    assert_eq!(consumed, 1);
                    out.extend(output);
                }
                Socks5Progress::Request {
                    consumed,
                    output,
                    host,
                    port,
                } => {
                    assert_eq!(consumed, 1);
                    out.extend(output);
                    return Ok((out, host, port, i + 1));
                }
            }
        }
        panic!("request never completed");
    }

    #[test]
    fn ipv4_connect_in_one_chunk_preserves_payload() {
        let mut input = GREETING.to_vec();
        input.extend(connect_ipv4([127, 0, 0, 1], 8080));
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut hs = Socks5Handshake::new();
        match hs.feed(&input) {
            Ok(Socks5Progress::Request {
                consumed,
                output,
                host,
                port,
            }) => {
                assert_eq!(output, vec![5, 0]);
                assert_eq!(host, DestHost::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
                assert_eq!(port, 8080);
                assert_eq!(&input[consumed..], b"GET / HTTP/1.1\r\n");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(hs.feed(b"x"), Err(Socks5Error::Finished));
    }

    #[test]
    fn byte_by_byte_domain_and_ipv6() {
        let mut input = vec![5, 2, 2, 0];
        input.extend(connect_domain(b"Example.COM", 443));
        input.push(0xAB);
        let (out, host, port, payload_at) = match feed_bytewise(&input) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(out, vec![5, 0]);
        assert_eq!(host, DestHost::Domain("Example.COM".into()));
        assert_eq!(port, 443);
        assert_eq!(&input[payload_at..], &[0xAB]);

        let mut input = GREETING.to_vec();
        input.extend_from_slice(&[5, 1, 0, ATYP_IPV6]);
        input.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        input.extend_from_slice(&22u16.to_be_bytes());
        let (_, host, port, payload_at) = match feed_bytewise(&input) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(host, DestHost::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(port, 22);
        assert_eq!(payload_at, input.len());
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let mut input = GREETING.to_vec();
        input.extend(connect_domain(b"a.example", 80));
        input.extend_from_slice(b"payload");
        for split in 0..=input.len() {
            let mut hs = Socks5Handshake::new();
            let (a, b) = input.split_at(split);
            let mut out = Vec::new();
            let mut result = None;
            for (offset, chunk) in [(0, a), (split, b)] {
                if result.is_some() {
                    break;
                }
                match hs.feed(chunk) {
                    Ok(Socks5Progress::NeedMore { output, consumed }) => {
                        assert_eq!(consumed, chunk.len());
                        out.extend(output);
                    }
                    Ok(Socks5Progress::Request {
                        consumed,
                        output,
                        host,
                        port,
                    }) => {
                        out.extend(output);
                        result = Some((host, port, offset + consumed));
                    }
                    Err(e) => panic!("split {split}: {e}"),
                }
            }
            let (host, port, at) = match result {
                Some(r) => r,
                None => panic!("split {split}: no request"),
            };
            assert_eq!(out, vec![5, 0]);
            assert_eq!(host, DestHost::Domain("a.example".into()));
            assert_eq!(port, 80);
            assert_eq!(&input[at..], b"payload", "split {split}");
        }
    }

    #[test]
    fn no_acceptable_method_replies_ff() {
        let mut hs = Socks5Handshake::new();
        let err = match hs.feed(&[5, 2, 1, 2]) {
            Err(e) => e,
            Ok(p) => panic!("unexpected {p:?}"),
        };
        assert!(matches!(err, Socks5Error::NoAcceptableMethod { .. }));
        assert_eq!(err.output(), &[5, 0xFF]);
        // Zero methods offered is the same failure.
        let err = Socks5Handshake::new().feed(&[5, 0]).unwrap_err();
        assert_eq!(err.output(), &[5, 0xFF]);
    }

    #[test]
    fn bind_and_udp_get_command_not_supported() {
        for cmd in [2u8, 3] {
            let mut input = GREETING.to_vec();
            input.extend_from_slice(&[5, cmd, 0, ATYP_IPV4, 1, 2, 3, 4, 0, 80]);
            let err = Socks5Handshake::new().feed(&input).unwrap_err();
            assert!(
                matches!(err, Socks5Error::CommandNotSupported { command, .. } if command == cmd)
            );
            let mut expected = vec![5, 0];
            expected.extend(reply(Socks5Reply::CommandNotSupported, None));
            assert_eq!(err.output(), expected.as_slice());
            assert!(err.to_string().contains("only CONNECT"));
        }
    }

    #[test]
    fn unknown_address_type_and_bad_domain() {
        let mut hs = Socks5Handshake::new();
        assert!(hs.feed(&GREETING).is_ok());
        let err = hs.feed(&[5, 1, 0, 9]).unwrap_err();
        assert!(matches!(
            err,
            Socks5Error::AddressTypeNotSupported { atyp: 9, .. }
        ));
        assert_eq!(
            err.output(),
            reply(Socks5Reply::AddressTypeNotSupported, None)
        );

        for bad in [&b""[..], b"bad host", b"\xff\xfe", b"a..b"] {
            let mut input = GREETING.to_vec();
            input.extend(connect_domain(bad, 80));
            let err = Socks5Handshake::new().feed(&input).unwrap_err();
            assert!(matches!(err, Socks5Error::InvalidDomain { .. }), "{bad:?}");
            assert_eq!(
                err.output()[2..],
                reply(Socks5Reply::GeneralFailure, None)[..]
            );
        }
    }

    #[test]
    fn non_socks5_clients_are_rejected_without_reply() {
        let err = Socks5Handshake::new()
            .feed(b"GET / HTTP/1.1\r\n")
            .unwrap_err();
        assert!(matches!(err, Socks5Error::BadVersion { version: b'G', .. }));
        assert!(err.output().is_empty());
        let err = Socks5Handshake::new().feed(&[4, 1, 0, 80]).unwrap_err();
        assert!(matches!(err, Socks5Error::BadVersion { version: 4, .. }));
    }

    #[test]
    fn oversized_handshake_is_refused() {
        // 255 methods (257 bytes) plus a request with a 250-byte domain
        // (257 bytes) exceeds the 512-byte bound.
        let mut input = vec![5, 255];
        input.extend(std::iter::repeat_n(0u8, 255));
        let label = [b'a'; 50];
        let name: Vec<u8> = [
            &label[..],
            b".",
            &label,
            b".",
            &label,
            b".",
            &label,
            b".",
            &label,
        ]
        .concat()
        .into_iter()
        .take(250)
        .collect();
        input.extend(connect_domain(&name, 80));
        let err = Socks5Handshake::new().feed(&input).unwrap_err();
        assert!(matches!(err, Socks5Error::TooLong { .. }), "{err}");
        // A normal greeting with the same long domain is fine.
        let mut input = GREETING.to_vec();
        input.extend(connect_domain(&name, 80));
        assert!(matches!(
            Socks5Handshake::new().feed(&input),
            Ok(Socks5Progress::Request { .. })
        ));
    }

    #[test]
    fn reply_encoding() {
        assert_eq!(
            reply(Socks5Reply::Succeeded, None),
            vec![5, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        let v4: SocketAddr = "10.1.2.3:4660".parse().unwrap();
        assert_eq!(
            reply(Socks5Reply::ConnectionRefused, Some(v4)),
            vec![5, 5, 0, 1, 10, 1, 2, 3, 0x12, 0x34]
        );
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let r = reply(Socks5Reply::NotAllowed, Some(v6));
        assert_eq!(r.len(), 22);
        assert_eq!(&r[..4], &[5, 2, 0, 4]);
        assert_eq!(r[19], 1);
        assert_eq!(&r[20..], &[0, 80]);
        assert_eq!(Socks5Reply::AddressTypeNotSupported as u8, 8);
        assert_eq!(Socks5Reply::TtlExpired as u8, 6);
    }
}
