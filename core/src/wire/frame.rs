//! Stream frames: the plaintext inside a record is a sequence of frames,
//! each `type: u8` followed by a type-specific, fixed-order body.
//!
//! A record may hold any number of whole frames; a frame never spans two
//! records. See `docs/PROTOCOL.md` §7.1 for the table of types.

use core::fmt;

use super::{Reader, WireError, Writer};

/// Identifies one stream within a session. Chosen by the side that opens
/// the stream: nonzero and strictly increasing, odd for streams the client
/// opens, even for streams the server opens (PROTOCOL.md §7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StreamId(pub u32);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl StreamId {
    /// True for ids in the client's space (odd).
    pub fn is_client_initiated(self) -> bool {
        self.0 % 2 == 1
    }
}

/// Identifies one remote listener the client asked for (LISTEN): chosen
/// by the client, nonzero and strictly increasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ListenId(pub u32);

impl fmt::Display for ListenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

/// Longest domain name accepted in a destination.
pub const MAX_DOMAIN_LEN: usize = 255;
/// Bytes a DATA frame adds in front of its payload.
pub const DATA_OVERHEAD: usize = 1 + 4 + 2;
/// Largest encoded frame other than DATA (an OPEN with a 255-byte domain).
pub const MAX_CONTROL_FRAME_LEN: usize = 1 + 4 + 4 + 1 + 1 + MAX_DOMAIN_LEN + 2;

const T_OPEN: u8 = 0x01;
const T_OPEN_OK: u8 = 0x02;
const T_OPEN_FAIL: u8 = 0x03;
const T_DATA: u8 = 0x04;
const T_WINDOW: u8 = 0x05;
const T_FIN: u8 = 0x06;
const T_RESET: u8 = 0x07;
const T_PING: u8 = 0x08;
const T_PONG: u8 = 0x09;
const T_GOAWAY: u8 = 0x0a;
const T_KEY_UPDATE: u8 = 0x0b;
const T_CLOSE: u8 = 0x0c;
const T_LISTEN: u8 = 0x0d;
const T_LISTEN_OK: u8 = 0x0e;
const T_LISTEN_FAIL: u8 = 0x0f;
const T_INCOMING: u8 = 0x10;

const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// The host part of a stream destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Host<'a> {
    /// An IPv4 address.
    Ipv4([u8; 4]),
    /// An IPv6 address.
    Ipv6([u8; 16]),
    /// A DNS name, resolved by the server (1..=255 bytes of letters, digits,
    /// `-`, `.` and `_`).
    Domain(&'a str),
}

/// Where the server should connect a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Destination<'a> {
    /// Host to connect to.
    pub host: Host<'a>,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Destination<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            Host::Ipv4(a) => write!(f, "{}.{}.{}.{}:{}", a[0], a[1], a[2], a[3], self.port),
            Host::Ipv6(a) => {
                f.write_str("[")?;
                for (i, pair) in a.chunks_exact(2).enumerate() {
                    if i > 0 {
                        f.write_str(":")?;
                    }
                    write!(f, "{:x}", u16::from_be_bytes([pair[0], pair[1]]))?;
                }
                write!(f, "]:{}", self.port)
            }
            Host::Domain(d) => write!(f, "{d}:{}", self.port),
        }
    }
}

impl<'a> Destination<'a> {
    fn encoded_len(&self) -> usize {
        1 + match self.host {
            Host::Ipv4(_) => 4,
            Host::Ipv6(_) => 16,
            Host::Domain(d) => 1 + d.len(),
        } + 2
    }

    fn parse(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let host = match r.u8("address type")? {
            ATYP_IPV4 => Host::Ipv4(*r.array("ipv4 address")?),
            ATYP_IPV6 => Host::Ipv6(*r.array("ipv6 address")?),
            ATYP_DOMAIN => {
                let len = usize::from(r.u8("domain length")?);
                let raw = r.bytes(len, "domain")?;
                Host::Domain(validate_domain(raw)?)
            }
            _ => return Err(WireError::InvalidField("address type")),
        };
        let port = r.u16("port")?;
        if port == 0 {
            return Err(WireError::InvalidField("port"));
        }
        Ok(Destination { host, port })
    }

    fn emit(&self, w: &mut Writer<'_>) {
        match self.host {
            Host::Ipv4(a) => {
                w.u8(ATYP_IPV4);
                w.put(&a);
            }
            Host::Ipv6(a) => {
                w.u8(ATYP_IPV6);
                w.put(&a);
            }
            Host::Domain(d) => {
                w.u8(ATYP_DOMAIN);
                w.u8(d.len() as u8);
                w.put(d.as_bytes());
            }
        }
        w.u16(self.port);
    }

    /// Checks the rules a parser would apply, so a sender cannot emit a
    /// destination its peer must reject.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.port == 0 {
            return Err(WireError::InvalidField("port"));
        }
        if let Host::Domain(d) = self.host {
            validate_domain(d.as_bytes())?;
        }
        Ok(())
    }
}

fn validate_domain(raw: &[u8]) -> Result<&str, WireError> {
    if raw.is_empty() || raw.len() > MAX_DOMAIN_LEN {
        return Err(WireError::InvalidField("domain length"));
    }
    if !raw
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(WireError::InvalidField("domain"));
    }
    core::str::from_utf8(raw).map_err(|_| WireError::InvalidField("domain"))
}

/// Why a stream open was refused or a stream was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamErrorCode {
    /// The server's allowlist does not permit the destination.
    NotAllowed,
    /// The destination actively refused the TCP connection.
    ConnectionRefused,
    /// No route to the destination host.
    HostUnreachable,
    /// The network is unreachable or the name did not resolve.
    NetworkUnreachable,
    /// Connecting to the destination timed out.
    TimedOut,
    /// Code 6, reserved: v1 senders do not send it (a client that exceeds
    /// the announced `max_streams` breaks the protocol and the session is
    /// closed instead). Received, it is reported like any other code.
    TooManyStreams,
    /// The application aborted the stream.
    Cancelled,
    /// The stream was reset because the session is closing.
    SessionClosing,
    /// The server cannot take this stream now (memory, descriptors or
    /// name-lookup budget spent); the client may retry later.
    ResourceExhausted,
    /// Any other failure (including unknown codes from the peer).
    Other,
}

impl StreamErrorCode {
    /// The code point on the wire.
    pub fn code(self) -> u8 {
        match self {
            StreamErrorCode::NotAllowed => 1,
            StreamErrorCode::ConnectionRefused => 2,
            StreamErrorCode::HostUnreachable => 3,
            StreamErrorCode::NetworkUnreachable => 4,
            StreamErrorCode::TimedOut => 5,
            StreamErrorCode::TooManyStreams => 6,
            StreamErrorCode::Cancelled => 7,
            StreamErrorCode::SessionClosing => 8,
            StreamErrorCode::ResourceExhausted => 9,
            StreamErrorCode::Other => 255,
        }
    }

    /// The reason for a code point; unknown codes map to `Other`.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => StreamErrorCode::NotAllowed,
            2 => StreamErrorCode::ConnectionRefused,
            3 => StreamErrorCode::HostUnreachable,
            4 => StreamErrorCode::NetworkUnreachable,
            5 => StreamErrorCode::TimedOut,
            6 => StreamErrorCode::TooManyStreams,
            7 => StreamErrorCode::Cancelled,
            8 => StreamErrorCode::SessionClosing,
            9 => StreamErrorCode::ResourceExhausted,
            _ => StreamErrorCode::Other,
        }
    }
}

impl fmt::Display for StreamErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamErrorCode::NotAllowed => "destination not allowed by server",
            StreamErrorCode::ConnectionRefused => "connection refused by destination",
            StreamErrorCode::HostUnreachable => "destination host unreachable",
            StreamErrorCode::NetworkUnreachable => "network unreachable or name not resolved",
            StreamErrorCode::TimedOut => "connection to destination timed out",
            StreamErrorCode::TooManyStreams => "too many streams in session",
            StreamErrorCode::Cancelled => "stream cancelled",
            StreamErrorCode::SessionClosing => "session closing",
            StreamErrorCode::ResourceExhausted => "server out of resources, retry later",
            StreamErrorCode::Other => "stream failed",
        })
    }
}

/// Why a session is being closed, as carried in CLOSE and GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CloseCode {
    /// Orderly shutdown.
    Normal,
    /// The peer broke a protocol rule.
    ProtocolViolation,
    /// The peer sent more than its flow-control credit.
    FlowControl,
    /// No traffic within the idle timeout.
    IdleTimeout,
    /// The sender is shutting down (e.g. SIGTERM).
    ShuttingDown,
    /// An internal error at the sender.
    Internal,
    /// The server no longer authorizes the client's key (it was removed
    /// from the server's `authorized_keys`).
    KeyRevoked,
    /// Any other reason (including unknown codes from the peer).
    Other,
}

impl CloseCode {
    /// The code point on the wire.
    pub fn code(self) -> u8 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::ProtocolViolation => 1,
            CloseCode::FlowControl => 2,
            CloseCode::IdleTimeout => 3,
            CloseCode::ShuttingDown => 4,
            CloseCode::Internal => 5,
            CloseCode::KeyRevoked => 6,
            CloseCode::Other => 255,
        }
    }

    /// The reason for a code point; unknown codes map to `Other`.
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => CloseCode::Normal,
            1 => CloseCode::ProtocolViolation,
            2 => CloseCode::FlowControl,
            3 => CloseCode::IdleTimeout,
            4 => CloseCode::ShuttingDown,
            5 => CloseCode::Internal,
            6 => CloseCode::KeyRevoked,
            _ => CloseCode::Other,
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseCode::Normal => "normal close",
            CloseCode::ProtocolViolation => "protocol violation",
            CloseCode::FlowControl => "flow-control violation",
            CloseCode::IdleTimeout => "idle timeout",
            CloseCode::ShuttingDown => "peer shutting down",
            CloseCode::Internal => "internal error",
            CloseCode::KeyRevoked => "client key no longer authorized by the server",
            CloseCode::Other => "closed",
        })
    }
}

/// Why the server refused a LISTEN (PROTOCOL.md §7.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ListenErrorCode {
    /// The server's policy does not permit this key to listen there.
    NotPermitted,
    /// The address is already in use on the server.
    AddressInUse,
    /// The session already has the most listeners the server allows.
    TooManyListeners,
    /// The server cannot listen on that address (not local, name did not
    /// resolve, no permission from the operating system).
    AddressUnavailable,
    /// The server does not offer remote listeners at all.
    Unsupported,
    /// The server cannot take another listener now (descriptors or memory
    /// spent); a later session may succeed.
    ResourceExhausted,
    /// Any other failure (including unknown codes from the peer).
    Other,
}

impl ListenErrorCode {
    /// The code point on the wire.
    pub fn code(self) -> u8 {
        match self {
            ListenErrorCode::NotPermitted => 1,
            ListenErrorCode::AddressInUse => 2,
            ListenErrorCode::TooManyListeners => 3,
            ListenErrorCode::AddressUnavailable => 4,
            ListenErrorCode::Unsupported => 5,
            ListenErrorCode::ResourceExhausted => 6,
            ListenErrorCode::Other => 255,
        }
    }

    /// The reason for a code point; unknown codes map to `Other`.
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => ListenErrorCode::NotPermitted,
            2 => ListenErrorCode::AddressInUse,
            3 => ListenErrorCode::TooManyListeners,
            4 => ListenErrorCode::AddressUnavailable,
            5 => ListenErrorCode::Unsupported,
            6 => ListenErrorCode::ResourceExhausted,
            _ => ListenErrorCode::Other,
        }
    }
}

impl fmt::Display for ListenErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListenErrorCode::NotPermitted => "listening there is not permitted for this key",
            ListenErrorCode::AddressInUse => "address already in use on the server",
            ListenErrorCode::TooManyListeners => "too many listeners in this session",
            ListenErrorCode::AddressUnavailable => "the server cannot listen on that address",
            ListenErrorCode::Unsupported => "the server does not offer remote listeners",
            ListenErrorCode::ResourceExhausted => "server out of resources for a listener",
            ListenErrorCode::Other => "listen refused",
        })
    }
}

/// One decoded frame, borrowing variable-length fields from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Frame<'a> {
    /// Client asks the server to connect a new stream.
    Open {
        /// New stream id (greater than every earlier one).
        id: StreamId,
        /// Credit the client grants for server→client data on this stream.
        window: u32,
        /// Where to connect.
        dest: Destination<'a>,
    },
    /// Server connected the stream.
    OpenOk {
        /// The stream.
        id: StreamId,
    },
    /// Server could not or would not connect the stream.
    OpenFail {
        /// The stream.
        id: StreamId,
        /// Why.
        code: StreamErrorCode,
    },
    /// Stream payload (1..=65535 bytes, bounded further by the record).
    Data {
        /// The stream.
        id: StreamId,
        /// Payload bytes.
        data: &'a [u8],
    },
    /// More flow-control credit for the receiver of this frame.
    Window {
        /// The stream.
        id: StreamId,
        /// Additional bytes the peer may send (nonzero).
        increment: u32,
    },
    /// The sender will send no more data on the stream (half-close).
    Fin {
        /// The stream.
        id: StreamId,
    },
    /// Abort the stream in both directions.
    Reset {
        /// The stream.
        id: StreamId,
        /// Why.
        code: StreamErrorCode,
    },
    /// Liveness probe; answered by a PONG with the same value.
    Ping {
        /// Opaque value.
        opaque: u64,
    },
    /// Answer to a PING.
    Pong {
        /// The PING's value.
        opaque: u64,
    },
    /// The sender will accept no new streams; existing ones continue.
    GoAway {
        /// Why.
        code: CloseCode,
    },
    /// The sender switches its sending key after this record.
    KeyUpdate {
        /// The sender asks the receiver to update its sending key too.
        request_peer: bool,
    },
    /// Authenticated end of the session; the sender sends nothing after it.
    Close {
        /// Why.
        code: CloseCode,
    },
    /// Client asks the server to listen on `bind` for it.
    Listen {
        /// New listener id (greater than every earlier one).
        id: ListenId,
        /// Address and port on the server's side.
        bind: Destination<'a>,
    },
    /// Server listens as asked.
    ListenOk {
        /// The listener.
        id: ListenId,
    },
    /// Server refused the listener; it is gone.
    ListenFail {
        /// The listener.
        id: ListenId,
        /// Why.
        code: ListenErrorCode,
    },
    /// Server opens a stream for a connection accepted on a listener.
    Incoming {
        /// New stream id (even, greater than every earlier server id).
        id: StreamId,
        /// Credit the server grants for client→server data on this stream.
        window: u32,
        /// The listener that accepted the connection.
        listen: ListenId,
        /// Address of the accepted connection's peer (IPv4 or IPv6 only).
        origin: Destination<'a>,
    },
}

impl<'a> Frame<'a> {
    /// Parses one frame from the front of `buf`; returns it and the number of
    /// bytes it used.
    pub fn parse(buf: &'a [u8]) -> Result<(Frame<'a>, usize), WireError> {
        let mut r = Reader::new(buf);
        let frame_type = r.u8("frame type")?;
        let frame = match frame_type {
            T_OPEN => {
                let id = stream_id(&mut r)?;
                let window = r.u32("window")?;
                let dest = Destination::parse(&mut r)?;
                Frame::Open { id, window, dest }
            }
            T_OPEN_OK => Frame::OpenOk {
                id: stream_id(&mut r)?,
            },
            T_OPEN_FAIL => Frame::OpenFail {
                id: stream_id(&mut r)?,
                code: StreamErrorCode::from_code(r.u8("error code")?),
            },
            T_DATA => {
                let id = stream_id(&mut r)?;
                let len = usize::from(r.u16("data length")?);
                if len == 0 {
                    return Err(WireError::InvalidField("data length"));
                }
                Frame::Data {
                    id,
                    data: r.bytes(len, "data")?,
                }
            }
            T_WINDOW => {
                let id = stream_id(&mut r)?;
                let increment = r.u32("window increment")?;
                if increment == 0 {
                    return Err(WireError::InvalidField("window increment"));
                }
                Frame::Window { id, increment }
            }
            T_FIN => Frame::Fin {
                id: stream_id(&mut r)?,
            },
            T_RESET => Frame::Reset {
                id: stream_id(&mut r)?,
                code: StreamErrorCode::from_code(r.u8("error code")?),
            },
            T_PING => Frame::Ping {
                opaque: r.u64("ping value")?,
            },
            T_PONG => Frame::Pong {
                opaque: r.u64("pong value")?,
            },
            T_GOAWAY => Frame::GoAway {
                code: CloseCode::from_code(r.u8("close code")?),
            },
            T_KEY_UPDATE => Frame::KeyUpdate {
                request_peer: match r.u8("key update flag")? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::InvalidField("key update flag")),
                },
            },
            T_CLOSE => Frame::Close {
                code: CloseCode::from_code(r.u8("close code")?),
            },
            T_LISTEN => Frame::Listen {
                id: listen_id(&mut r)?,
                bind: Destination::parse(&mut r)?,
            },
            T_LISTEN_OK => Frame::ListenOk {
                id: listen_id(&mut r)?,
            },
            T_LISTEN_FAIL => Frame::ListenFail {
                id: listen_id(&mut r)?,
                code: ListenErrorCode::from_code(r.u8("listen error code")?),
            },
            T_INCOMING => {
                let id = stream_id(&mut r)?;
                let window = r.u32("window")?;
                let listen = listen_id(&mut r)?;
                let origin = Destination::parse(&mut r)?;
                if matches!(origin.host, Host::Domain(_)) {
                    return Err(WireError::InvalidField("origin address type"));
                }
                Frame::Incoming {
                    id,
                    window,
                    listen,
                    origin,
                }
            }
            other => return Err(WireError::UnknownType(other)),
        };
        let used = buf.len() - r.remaining();
        Ok((frame, used))
    }

    /// Encoded length of this frame.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Frame::Open { dest, .. } => 4 + 4 + dest.encoded_len(),
            Frame::OpenOk { .. } | Frame::Fin { .. } => 4,
            Frame::OpenFail { .. } | Frame::Reset { .. } => 5,
            Frame::Data { data, .. } => 4 + 2 + data.len(),
            Frame::Window { .. } => 8,
            Frame::Ping { .. } | Frame::Pong { .. } => 8,
            Frame::GoAway { .. } | Frame::KeyUpdate { .. } | Frame::Close { .. } => 1,
            Frame::Listen { bind, .. } => 4 + bind.encoded_len(),
            Frame::ListenOk { .. } => 4,
            Frame::ListenFail { .. } => 5,
            Frame::Incoming { origin, .. } => 4 + 4 + 4 + origin.encoded_len(),
        }
    }

    /// Writes the frame to the front of `out`; returns the bytes used.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, WireError> {
        match self {
            Frame::Open { dest, .. } | Frame::Listen { bind: dest, .. } => dest.validate()?,
            Frame::Incoming { origin, .. } => {
                origin.validate()?;
                if matches!(origin.host, Host::Domain(_)) {
                    return Err(WireError::InvalidField("origin address type"));
                }
            }
            _ => {}
        }
        if let Frame::Data { data, .. } = self
            && (data.is_empty() || data.len() > usize::from(u16::MAX))
        {
            return Err(WireError::InvalidField("data length"));
        }
        let mut w = Writer::with_capacity(out, self.encoded_len())?;
        match *self {
            Frame::Open { id, window, dest } => {
                w.u8(T_OPEN);
                w.u32(id.0);
                w.u32(window);
                dest.emit(&mut w);
            }
            Frame::OpenOk { id } => {
                w.u8(T_OPEN_OK);
                w.u32(id.0);
            }
            Frame::OpenFail { id, code } => {
                w.u8(T_OPEN_FAIL);
                w.u32(id.0);
                w.u8(code.code());
            }
            Frame::Data { id, data } => {
                w.u8(T_DATA);
                w.u32(id.0);
                w.u16(data.len() as u16);
                w.put(data);
            }
            Frame::Window { id, increment } => {
                w.u8(T_WINDOW);
                w.u32(id.0);
                w.u32(increment);
            }
            Frame::Fin { id } => {
                w.u8(T_FIN);
                w.u32(id.0);
            }
            Frame::Reset { id, code } => {
                w.u8(T_RESET);
                w.u32(id.0);
                w.u8(code.code());
            }
            Frame::Ping { opaque } => {
                w.u8(T_PING);
                w.u64(opaque);
            }
            Frame::Pong { opaque } => {
                w.u8(T_PONG);
                w.u64(opaque);
            }
            Frame::GoAway { code } => {
                w.u8(T_GOAWAY);
                w.u8(code.code());
            }
            Frame::KeyUpdate { request_peer } => {
                w.u8(T_KEY_UPDATE);
                w.u8(u8::from(request_peer));
            }
            Frame::Close { code } => {
                w.u8(T_CLOSE);
                w.u8(code.code());
            }
            Frame::Listen { id, bind } => {
                w.u8(T_LISTEN);
                w.u32(id.0);
                bind.emit(&mut w);
            }
            Frame::ListenOk { id } => {
                w.u8(T_LISTEN_OK);
                w.u32(id.0);
            }
            Frame::ListenFail { id, code } => {
                w.u8(T_LISTEN_FAIL);
                w.u32(id.0);
                w.u8(code.code());
            }
            Frame::Incoming {
                id,
                window,
                listen,
                origin,
            } => {
                w.u8(T_INCOMING);
                w.u32(id.0);
                w.u32(window);
                w.u32(listen.0);
                origin.emit(&mut w);
            }
        }
        Ok(w.written())
    }
}

/// Writes the header of a DATA frame whose `len` payload bytes the caller
/// places right after it (used to read socket data straight into a record).
pub fn emit_data_header(id: StreamId, len: u16, out: &mut [u8; DATA_OVERHEAD]) {
    out[0] = T_DATA;
    out[1..5].copy_from_slice(&id.0.to_be_bytes());
    out[5..7].copy_from_slice(&len.to_be_bytes());
}

fn listen_id(r: &mut Reader<'_>) -> Result<ListenId, WireError> {
    match r.u32("listen id")? {
        0 => Err(WireError::InvalidField("listen id")),
        id => Ok(ListenId(id)),
    }
}

fn stream_id(r: &mut Reader<'_>) -> Result<StreamId, WireError> {
    match r.u32("stream id")? {
        0 => Err(WireError::InvalidField("stream id")),
        id => Ok(StreamId(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> [Frame<'static>; 19] {
        [
            Frame::Open {
                id: StreamId(1),
                window: 65536,
                dest: Destination {
                    host: Host::Domain("example.com"),
                    port: 443,
                },
            },
            Frame::Open {
                id: StreamId(2),
                window: 1,
                dest: Destination {
                    host: Host::Ipv4([127, 0, 0, 1]),
                    port: 80,
                },
            },
            Frame::Open {
                id: StreamId(3),
                window: 1,
                dest: Destination {
                    host: Host::Ipv6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
                    port: 22,
                },
            },
            Frame::OpenOk { id: StreamId(1) },
            Frame::OpenFail {
                id: StreamId(1),
                code: StreamErrorCode::NotAllowed,
            },
            Frame::Data {
                id: StreamId(9),
                data: b"hello",
            },
            Frame::Window {
                id: StreamId(9),
                increment: 4096,
            },
            Frame::Fin { id: StreamId(9) },
            Frame::Reset {
                id: StreamId(9),
                code: StreamErrorCode::Cancelled,
            },
            Frame::Ping {
                opaque: 0x0102030405060708,
            },
            Frame::Pong { opaque: 7 },
            Frame::GoAway {
                code: CloseCode::ShuttingDown,
            },
            Frame::KeyUpdate { request_peer: true },
            Frame::Close {
                code: CloseCode::Normal,
            },
            Frame::Listen {
                id: ListenId(1),
                bind: Destination {
                    host: Host::Ipv4([127, 0, 0, 1]),
                    port: 8080,
                },
            },
            Frame::Listen {
                id: ListenId(2),
                bind: Destination {
                    host: Host::Domain("localhost"),
                    port: 8081,
                },
            },
            Frame::ListenOk { id: ListenId(1) },
            Frame::ListenFail {
                id: ListenId(2),
                code: ListenErrorCode::AddressInUse,
            },
            Frame::Incoming {
                id: StreamId(2),
                window: 65536,
                listen: ListenId(1),
                origin: Destination {
                    host: Host::Ipv6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
                    port: 50000,
                },
            },
        ]
    }

    #[test]
    fn every_frame_roundtrips_and_truncations_fail() {
        for frame in all_frames() {
            let mut buf = [0u8; 300];
            let n = frame.emit(&mut buf).unwrap();
            assert_eq!(n, frame.encoded_len());
            let (parsed, used) = Frame::parse(&buf[..n]).unwrap();
            assert_eq!(parsed, frame);
            assert_eq!(used, n);
            for cut in 0..n {
                assert!(Frame::parse(&buf[..cut]).is_err(), "{frame:?} cut {cut}");
            }
        }
    }

    #[test]
    fn invalid_fields_rejected() {
        assert_eq!(Frame::parse(&[0x42]), Err(WireError::UnknownType(0x42)));
        assert!(Frame::parse(&[T_FIN, 0, 0, 0, 0]).is_err()); // stream id 0
        assert!(Frame::parse(&[T_DATA, 0, 0, 0, 1, 0, 0]).is_err()); // empty data
        assert!(Frame::parse(&[T_WINDOW, 0, 0, 0, 1, 0, 0, 0, 0]).is_err());
        assert!(Frame::parse(&[T_KEY_UPDATE, 2]).is_err());
        // domain with a space, and port 0
        assert!(
            Frame::parse(&[
                T_OPEN, 0, 0, 0, 1, 0, 0, 1, 0, 3, 3, b'a', b' ', b'b', 0, 80
            ])
            .is_err()
        );
        assert!(Frame::parse(&[T_OPEN, 0, 0, 0, 1, 0, 0, 1, 0, 1, 127, 0, 0, 1, 0, 0]).is_err());
        let bad = Frame::Open {
            id: StreamId(1),
            window: 1,
            dest: Destination {
                host: Host::Domain(""),
                port: 1,
            },
        };
        assert!(bad.emit(&mut [0u8; 64]).is_err());
    }

    #[test]
    fn stream_error_codes_match_the_protocol_table() {
        // docs/PROTOCOL.md §7.3, code by code.
        let table = [
            (1, StreamErrorCode::NotAllowed),
            (2, StreamErrorCode::ConnectionRefused),
            (3, StreamErrorCode::HostUnreachable),
            (4, StreamErrorCode::NetworkUnreachable),
            (5, StreamErrorCode::TimedOut),
            (6, StreamErrorCode::TooManyStreams),
            (7, StreamErrorCode::Cancelled),
            (8, StreamErrorCode::SessionClosing),
            (9, StreamErrorCode::ResourceExhausted),
            (255, StreamErrorCode::Other),
        ];
        for (code, name) in table {
            assert_eq!(name.code(), code);
            assert_eq!(StreamErrorCode::from_code(code), name);
        }
        // Unassigned codes (0, 10..=254) are read as Other, never an error.
        for code in core::iter::once(0).chain(10..=254) {
            assert_eq!(StreamErrorCode::from_code(code), StreamErrorCode::Other);
        }
        // On the wire: OPEN_FAIL and RESET carry code 9 as one byte.
        let mut buf = [0u8; 8];
        let fail = Frame::OpenFail {
            id: StreamId(5),
            code: StreamErrorCode::ResourceExhausted,
        };
        let n = fail.emit(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[T_OPEN_FAIL, 0, 0, 0, 5, 9]);
        assert_eq!(Frame::parse(&buf[..n]).unwrap(), (fail, n));
        let reset = Frame::Reset {
            id: StreamId(5),
            code: StreamErrorCode::ResourceExhausted,
        };
        let n = reset.emit(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[T_RESET, 0, 0, 0, 5, 9]);
        assert_eq!(Frame::parse(&buf[..n]).unwrap(), (reset, n));
    }

    #[test]
    fn close_codes_match_the_protocol_table() {
        // docs/PROTOCOL.md §7.4, code by code.
        let table = [
            (0, CloseCode::Normal),
            (1, CloseCode::ProtocolViolation),
            (2, CloseCode::FlowControl),
            (3, CloseCode::IdleTimeout),
            (4, CloseCode::ShuttingDown),
            (5, CloseCode::Internal),
            (6, CloseCode::KeyRevoked),
            (255, CloseCode::Other),
        ];
        for (code, name) in table {
            assert_eq!(name.code(), code);
            assert_eq!(CloseCode::from_code(code), name);
        }
        // Unassigned codes are read as Other, never an error.
        for code in 7..=254 {
            assert_eq!(CloseCode::from_code(code), CloseCode::Other);
        }
        let mut buf = [0u8; 4];
        let close = Frame::Close {
            code: CloseCode::KeyRevoked,
        };
        let n = close.emit(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[T_CLOSE, 6]);
        assert_eq!(Frame::parse(&buf[..n]).unwrap(), (close, n));
    }

    #[test]
    fn listen_frames_have_the_documented_layout() {
        // docs/PROTOCOL.md §7.1 / §7.15 byte layouts.
        let mut buf = [0u8; 64];
        let listen = Frame::Listen {
            id: ListenId(1),
            bind: Destination {
                host: Host::Ipv4([127, 0, 0, 1]),
                port: 8080,
            },
        };
        let n = listen.emit(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            &[T_LISTEN, 0, 0, 0, 1, 1, 127, 0, 0, 1, 0x1f, 0x90]
        );
        let incoming = Frame::Incoming {
            id: StreamId(2),
            window: 0x10000,
            listen: ListenId(1),
            origin: Destination {
                host: Host::Ipv4([127, 0, 0, 1]),
                port: 40000,
            },
        };
        let n = incoming.emit(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            &[
                T_INCOMING, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0, 0, 1, 1, 127, 0, 0, 1, 0x9c, 0x40
            ]
        );
        // listen id 0, and a domain as origin, are invalid.
        assert!(Frame::parse(&[T_LISTEN_OK, 0, 0, 0, 0]).is_err());
        let mut bad = [0u8; 32];
        bad[..14].copy_from_slice(&[T_INCOMING, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 3]);
        bad[14..18].copy_from_slice(&[1, b'a', 0, 80]);
        assert!(Frame::parse(&bad[..18]).is_err());
        for (code, name) in [
            (1, ListenErrorCode::NotPermitted),
            (2, ListenErrorCode::AddressInUse),
            (3, ListenErrorCode::TooManyListeners),
            (4, ListenErrorCode::AddressUnavailable),
            (5, ListenErrorCode::Unsupported),
            (6, ListenErrorCode::ResourceExhausted),
            (255, ListenErrorCode::Other),
        ] {
            assert_eq!(name.code(), code);
            assert_eq!(ListenErrorCode::from_code(code), name);
        }
        assert_eq!(ListenErrorCode::from_code(0), ListenErrorCode::Other);
    }

    #[test]
    fn destination_display() {
        let d = Destination {
            host: Host::Ipv6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            port: 8,
        };
        let mut s = heapless::String::<64>::new();
        core::fmt::write(&mut s, format_args!("{d}")).unwrap();
        assert_eq!(s.as_str(), "[0:0:0:0:0:0:0:1]:8");
    }
}
