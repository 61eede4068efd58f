//! The error enums of the session layer, each with a `Display` suitable for
//! logs. Detail that would help an attacker (which check failed inside the
//! crypto) is deliberately left out.

use core::fmt;

use crate::crypto::{CryptoError, KeyId};
use crate::wire::WireError;
use crate::wire::frame::CloseCode;
use crate::wire::handshake::AlertReason;

/// Why a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HandshakeError {
    /// A handshake message arrived in the wrong state.
    UnexpectedMessage,
    /// The peer's version is not ours.
    UnsupportedVersion,
    /// No suite in common (or the server chose one we did not offer).
    NoCommonSuite,
    /// (server) the client's key is not in the authorized list.
    UnauthorizedClient(KeyId),
    /// (server) the client pinned a key the server does not hold.
    UnknownServerKey(KeyId),
    /// (client) the server's Finished did not verify: it does not hold the
    /// pinned private key, or a message was altered.
    ServerAuthenticationFailed,
    /// (server) the client's Finished did not verify: it does not hold its
    /// private key, or a message was altered or replayed.
    ClientAuthenticationFailed,
    /// The peer's X25519 share is a low-order point.
    WeakKeyShare,
    /// The peer aborted with an alert (with the key id it named, if any).
    PeerAlert(AlertReason, Option<KeyId>),
    /// A local crypto operation failed.
    Crypto(CryptoError),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::UnexpectedMessage => f.write_str("unexpected handshake message"),
            HandshakeError::UnsupportedVersion => f.write_str("unsupported protocol version"),
            HandshakeError::NoCommonSuite => f.write_str("no common cipher suite"),
            HandshakeError::UnauthorizedClient(id) => write!(f, "client key {id} is not authorized"),
            HandshakeError::UnknownServerKey(id) => {
                write!(f, "client pinned server key {id}, which this server does not hold")
            }
            HandshakeError::ServerAuthenticationFailed => f.write_str(
                "server authentication failed (server lacks the pinned private key, or the handshake was tampered with)",
            ),
            HandshakeError::ClientAuthenticationFailed => f.write_str(
                "client authentication failed (client lacks its private key, or the handshake was tampered with or replayed)",
            ),
            HandshakeError::WeakKeyShare => f.write_str("peer sent a weak X25519 key share"),
            HandshakeError::PeerAlert(reason, Some(id)) => write!(f, "peer refused the handshake: {reason} (peer key {id})"),
            HandshakeError::PeerAlert(reason, None) => write!(f, "peer refused the handshake: {reason}"),
            HandshakeError::Crypto(e) => write!(f, "handshake crypto failure: {e}"),
        }
    }
}

/// A rule of the session protocol the peer broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ProtocolViolation {
    /// A frame type that is not allowed in this direction or state.
    UnexpectedFrame,
    /// A stream id that is not greater than every earlier one, or names a
    /// stream that never existed.
    BadStreamId,
    /// More data than the flow-control credit allowed.
    FlowControl,
    /// Data after the peer's FIN on that stream.
    DataAfterFin,
    /// More streams than announced in the handshake.
    TooManyStreams,
    /// Frames after KEY_UPDATE in the same record, or after CLOSE.
    FrameAfterEnd,
    /// Window credit overflowed 2^32-1.
    WindowOverflow,
    /// A listener id that is not greater than every earlier one, or names
    /// a listener that was never requested or granted.
    BadListenId,
    /// More LISTEN requests in one session than the protocol allows.
    TooManyListeners,
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolViolation::UnexpectedFrame => "unexpected frame",
            ProtocolViolation::BadStreamId => "invalid stream id",
            ProtocolViolation::FlowControl => "flow-control credit exceeded",
            ProtocolViolation::DataAfterFin => "data after FIN",
            ProtocolViolation::TooManyStreams => "stream limit exceeded",
            ProtocolViolation::FrameAfterEnd => "frame after KEY_UPDATE or CLOSE in a record",
            ProtocolViolation::WindowOverflow => "window credit overflow",
            ProtocolViolation::BadListenId => "invalid listener id",
            ProtocolViolation::TooManyListeners => "listener limit exceeded",
        })
    }
}

/// Which timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TimeoutKind {
    /// The handshake did not complete in time.
    Handshake,
    /// Nothing was received for the idle timeout (keepalives unanswered).
    Idle,
}

/// Why a session ended. Every variant closes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConnectionError {
    /// The handshake failed.
    Handshake(HandshakeError),
    /// The peer sent bytes that do not parse.
    Malformed(WireError),
    /// The peer broke a protocol rule.
    Protocol(ProtocolViolation),
    /// A record failed authentication (tampering, replay, reordering) or
    /// its key's sequence numbers ran out.
    Record(CryptoError),
    /// The peer closed the session with an authenticated CLOSE.
    PeerClosed(CloseCode),
    /// This side closed the session.
    LocallyClosed(CloseCode),
    /// A timer fired.
    Timeout(TimeoutKind),
    /// The transport ended without an authenticated CLOSE (truncation).
    Truncated,
}

impl ConnectionError {
    /// The CLOSE code this side sends when it fails with this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ConnectionError::Protocol(ProtocolViolation::FlowControl) => CloseCode::FlowControl,
            ConnectionError::Malformed(_)
            | ConnectionError::Protocol(_)
            | ConnectionError::Record(_) => CloseCode::ProtocolViolation,
            ConnectionError::Timeout(_) => CloseCode::IdleTimeout,
            ConnectionError::LocallyClosed(code) => *code,
            _ => CloseCode::Internal,
        }
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionError::Handshake(e) => write!(f, "handshake failed: {e}"),
            ConnectionError::Malformed(e) => write!(f, "malformed input from peer: {e}"),
            ConnectionError::Protocol(e) => write!(f, "peer broke the protocol: {e}"),
            ConnectionError::Record(e) => write!(f, "record layer failure: {e}"),
            ConnectionError::PeerClosed(code) => write!(f, "peer closed the session: {code}"),
            ConnectionError::LocallyClosed(code) => write!(f, "session closed locally: {code}"),
            ConnectionError::Timeout(TimeoutKind::Handshake) => f.write_str("handshake timed out"),
            ConnectionError::Timeout(TimeoutKind::Idle) => {
                f.write_str("peer unresponsive (idle timeout)")
            }
            ConnectionError::Truncated => {
                f.write_str("connection ended without an authenticated close (truncated)")
            }
        }
    }
}

impl From<HandshakeError> for ConnectionError {
    fn from(e: HandshakeError) -> Self {
        ConnectionError::Handshake(e)
    }
}

impl From<WireError> for ConnectionError {
    fn from(e: WireError) -> Self {
        ConnectionError::Malformed(e)
    }
}

impl From<ProtocolViolation> for ConnectionError {
    fn from(e: ProtocolViolation) -> Self {
        ConnectionError::Protocol(e)
    }
}

/// A local API call on a stream that cannot be carried out. These never
/// close the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamError {
    /// No such stream (never opened, or already finished and forgotten).
    UnknownStream,
    /// The session is not established (or already closed).
    NotEstablished,
    /// The stream limit is reached; try again after a stream ends.
    TooManyStreams,
    /// The stream's sending side is finished or reset.
    NotWritable,
    /// The call does not fit the stream's state (e.g. accepting twice).
    InvalidState,
    /// The transmit buffer has no room for the frame now; retry after
    /// flushing.
    Blocked,
    /// The destination cannot be encoded (empty or bad domain, port 0).
    BadDestination,
    /// The peer sent GOAWAY: no new streams on this session.
    GoingAway,
    /// The session already made as many LISTEN requests as allowed.
    TooManyListeners,
    /// No such listener (never requested, refused, or not granted yet).
    UnknownListener,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamError::UnknownStream => "unknown stream",
            StreamError::NotEstablished => "session not established",
            StreamError::TooManyStreams => "stream limit reached",
            StreamError::NotWritable => "stream is closed for sending",
            StreamError::InvalidState => "operation not valid in the stream's state",
            StreamError::Blocked => "transmit buffer full",
            StreamError::BadDestination => "invalid destination",
            StreamError::GoingAway => "peer is going away; no new streams",
            StreamError::TooManyListeners => "listener limit reached",
            StreamError::UnknownListener => "unknown listener",
        })
    }
}

impl core::error::Error for HandshakeError {}
impl core::error::Error for ConnectionError {}
impl core::error::Error for StreamError {}
impl core::error::Error for ProtocolViolation {}
