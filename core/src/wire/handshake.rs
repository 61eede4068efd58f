//! Handshake messages: their outer framing and their bodies.
//!
//! Every handshake message travels in the clear as
//! `type: u8 | length: u16 (big endian) | body[length]`. The bodies are
//! fixed-order fields (see `docs/PROTOCOL.md` §3). Parsing checks every
//! length and range that can be checked without keys; the state machine in
//! [`crate::handshake`] checks the rest.

use super::{Reader, WireError, Writer};

/// Message type of a [`ClientHello`].
pub const TYPE_CLIENT_HELLO: u8 = 0x01;
/// Message type of a [`ServerHello`].
pub const TYPE_SERVER_HELLO: u8 = 0x02;
/// Message type of a [`Finished`].
pub const TYPE_FINISHED: u8 = 0x03;
/// Message type of an [`Alert`].
pub const TYPE_ALERT: u8 = 0x15;

/// The four magic bytes that open a `ClientHello` ("HYTN").
pub const MAGIC: [u8; 4] = *b"HYTN";
/// The only protocol version this implementation speaks: 2, which added
/// server-opened streams and remote listeners to version 1
/// (PROTOCOL.md §12). A peer speaking another version is refused with a
/// clear `UnsupportedVersion`.
pub const VERSION: u8 = 2;
/// Bytes of the outer handshake header (`type`, `length`).
pub const HEADER_LEN: usize = 3;
/// Largest handshake body accepted (enough for RSA-4096 ciphertexts).
pub const MAX_BODY_LEN: usize = 768;
/// Smallest RSA ciphertext accepted (RSA-2048).
pub const MIN_RSA_CIPHERTEXT: usize = 256;
/// Largest RSA ciphertext accepted (RSA-4096).
pub const MAX_RSA_CIPHERTEXT: usize = 512;
/// Most cipher suites a `ClientHello` may offer.
pub const MAX_SUITES: usize = 8;
/// Smallest record plaintext limit either side may announce.
pub const MIN_RECORD_LIMIT: u16 = 1024;
/// Largest record plaintext limit either side may announce.
pub const MAX_RECORD_LIMIT: u16 = 16384;

/// An AEAD cipher suite for the record layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Suite {
    /// AES-128-GCM (the default; see the rationale in `docs/PROTOCOL.md`).
    Aes128Gcm,
    /// AES-256-GCM.
    Aes256Gcm,
}

impl Suite {
    /// The suite's code point on the wire.
    pub fn code(self) -> u8 {
        match self {
            Suite::Aes128Gcm => 0x01,
            Suite::Aes256Gcm => 0x02,
        }
    }

    /// The suite for a code point, if this implementation knows it.
    pub fn from_code(code: u8) -> Option<Suite> {
        match code {
            0x01 => Some(Suite::Aes128Gcm),
            0x02 => Some(Suite::Aes256Gcm),
            _ => None,
        }
    }

    /// AEAD key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            Suite::Aes256Gcm => 32,
        }
    }
}

/// Why a handshake was aborted, as carried in an [`Alert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AlertReason {
    /// The server does not list the client's public key.
    Unauthorized,
    /// The `ClientHello` names a server key the server does not hold.
    UnknownServerKey,
    /// No common protocol version.
    UnsupportedVersion,
    /// No common cipher suite.
    NoCommonSuite,
    /// The message could not be parsed or broke a rule.
    Malformed,
    /// The server is at its session limit or shutting down.
    Busy,
    /// Any other reason (including an unknown code from the peer).
    Other,
}

impl AlertReason {
    /// The reason's code point on the wire.
    pub fn code(self) -> u8 {
        match self {
            AlertReason::Unauthorized => 1,
            AlertReason::UnknownServerKey => 2,
            AlertReason::UnsupportedVersion => 3,
            AlertReason::NoCommonSuite => 4,
            AlertReason::Malformed => 5,
            AlertReason::Busy => 6,
            AlertReason::Other => 255,
        }
    }

    /// The reason for a code point; unknown codes map to [`AlertReason::Other`].
    pub fn from_code(code: u8) -> AlertReason {
        match code {
            1 => AlertReason::Unauthorized,
            2 => AlertReason::UnknownServerKey,
            3 => AlertReason::UnsupportedVersion,
            4 => AlertReason::NoCommonSuite,
            5 => AlertReason::Malformed,
            6 => AlertReason::Busy,
            _ => AlertReason::Other,
        }
    }
}

impl core::fmt::Display for AlertReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            AlertReason::Unauthorized => "client key not authorized",
            AlertReason::UnknownServerKey => "server does not hold the pinned key",
            AlertReason::UnsupportedVersion => "unsupported protocol version",
            AlertReason::NoCommonSuite => "no common cipher suite",
            AlertReason::Malformed => "malformed handshake message",
            AlertReason::Busy => "server busy",
            AlertReason::Other => "handshake refused",
        })
    }
}

/// The outer framing of one handshake message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeHeader {
    /// Message type byte.
    pub msg_type: u8,
    /// Body length in bytes.
    pub body_len: usize,
}

impl HandshakeHeader {
    /// Parses the 3-byte header. Rejects unknown types and bodies longer
    /// than [`MAX_BODY_LEN`] before any body byte is buffered.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<HandshakeHeader, WireError> {
        let msg_type = bytes[0];
        let body_len = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
        match msg_type {
            TYPE_CLIENT_HELLO | TYPE_SERVER_HELLO | TYPE_FINISHED | TYPE_ALERT => {}
            other => return Err(WireError::UnknownType(other)),
        }
        if body_len > MAX_BODY_LEN {
            return Err(WireError::InvalidField("handshake length"));
        }
        Ok(HandshakeHeader { msg_type, body_len })
    }
}

fn emit_message(
    out: &mut [u8],
    msg_type: u8,
    body_len: usize,
    body: impl FnOnce(&mut Writer<'_>),
) -> Result<usize, WireError> {
    let mut w = Writer::with_capacity(out, HEADER_LEN + body_len)?;
    w.u8(msg_type);
    w.u16(body_len as u16);
    body(&mut w);
    debug_assert_eq!(w.written(), HEADER_LEN + body_len);
    Ok(w.written())
}

fn check_ciphertext_len(len: usize) -> Result<(), WireError> {
    if (MIN_RSA_CIPHERTEXT..=MAX_RSA_CIPHERTEXT).contains(&len) {
        Ok(())
    } else {
        Err(WireError::InvalidField("rsa ciphertext length"))
    }
}

fn check_record_limit(limit: u16) -> Result<(), WireError> {
    if (MIN_RECORD_LIMIT..=MAX_RECORD_LIMIT).contains(&limit) {
        Ok(())
    } else {
        Err(WireError::InvalidField("max record"))
    }
}

/// The client's first flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// Protocol version the client speaks.
    pub version: u8,
    /// Offered suite code points, most preferred first (1..=8 entries).
    pub suites: &'a [u8],
    /// Largest record plaintext the client will accept.
    pub max_record: u16,
    /// 32 fresh random bytes.
    pub random: &'a [u8; 32],
    /// The client's ephemeral X25519 public key.
    pub key_share: &'a [u8; 32],
    /// SHA-256 of the client's public key (SPKI DER).
    pub client_key_id: &'a [u8; 32],
    /// SHA-256 of the server public key the client pinned (SPKI DER).
    pub server_key_id: &'a [u8; 32],
    /// RSA-OAEP ciphertext of the client secret, to the server's key.
    pub encrypted_secret: &'a [u8],
}

impl<'a> ClientHello<'a> {
    /// Parses a `ClientHello` body.
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        if *r.array::<4>("magic")? != MAGIC {
            return Err(WireError::InvalidField("magic"));
        }
        let version = r.u8("version")?;
        let n_suites = usize::from(r.u8("suite count")?);
        if n_suites == 0 || n_suites > MAX_SUITES {
            return Err(WireError::InvalidField("suite count"));
        }
        let suites = r.bytes(n_suites, "suites")?;
        let max_record = r.u16("max record")?;
        check_record_limit(max_record)?;
        let random = r.array("random")?;
        let key_share = r.array("key share")?;
        let client_key_id = r.array("client key id")?;
        let server_key_id = r.array("server key id")?;
        let ct_len = usize::from(r.u16("secret length")?);
        check_ciphertext_len(ct_len)?;
        let encrypted_secret = r.bytes(ct_len, "encrypted secret")?;
        r.finish()?;
        Ok(ClientHello {
            version,
            suites,
            max_record,
            random,
            key_share,
            client_key_id,
            server_key_id,
            encrypted_secret,
        })
    }

    fn body_len(&self) -> usize {
        4 + 1 + 1 + self.suites.len() + 2 + 32 * 4 + 2 + self.encrypted_secret.len()
    }

    /// Emits the whole message (header and body) into `out`.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, WireError> {
        if self.suites.is_empty() || self.suites.len() > MAX_SUITES {
            return Err(WireError::InvalidField("suite count"));
        }
        check_ciphertext_len(self.encrypted_secret.len())?;
        emit_message(out, TYPE_CLIENT_HELLO, self.body_len(), |w| {
            w.put(&MAGIC);
            w.u8(self.version);
            w.u8(self.suites.len() as u8);
            w.put(self.suites);
            w.u16(self.max_record);
            w.put(self.random);
            w.put(self.key_share);
            w.put(self.client_key_id);
            w.put(self.server_key_id);
            w.u16(self.encrypted_secret.len() as u16);
            w.put(self.encrypted_secret);
        })
    }
}

/// The server's reply to a `ClientHello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHello<'a> {
    /// The version chosen (equal to the client's).
    pub version: u8,
    /// The chosen suite code point.
    pub suite: u8,
    /// Largest record plaintext the server will accept.
    pub max_record: u16,
    /// Credit the server grants each new stream for client→server data.
    pub stream_window: u32,
    /// Most streams the client may have open at once (at least 1).
    pub max_streams: u16,
    /// 32 fresh random bytes.
    pub random: &'a [u8; 32],
    /// The server's ephemeral X25519 public key.
    pub key_share: &'a [u8; 32],
    /// RSA-OAEP ciphertext of the server secret, to the client's key.
    pub encrypted_secret: &'a [u8],
}

impl<'a> ServerHello<'a> {
    /// Parses a `ServerHello` body.
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let version = r.u8("version")?;
        let suite = r.u8("suite")?;
        let max_record = r.u16("max record")?;
        check_record_limit(max_record)?;
        let stream_window = r.u32("stream window")?;
        if stream_window == 0 {
            return Err(WireError::InvalidField("stream window"));
        }
        let max_streams = r.u16("max streams")?;
        if max_streams == 0 {
            return Err(WireError::InvalidField("max streams"));
        }
        let random = r.array("random")?;
        let key_share = r.array("key share")?;
        let ct_len = usize::from(r.u16("secret length")?);
        check_ciphertext_len(ct_len)?;
        let encrypted_secret = r.bytes(ct_len, "encrypted secret")?;
        r.finish()?;
        Ok(ServerHello {
            version,
            suite,
            max_record,
            stream_window,
            max_streams,
            random,
            key_share,
            encrypted_secret,
        })
    }

    /// Emits the whole message (header and body) into `out`.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, WireError> {
        check_ciphertext_len(self.encrypted_secret.len())?;
        let body_len = 1 + 1 + 2 + 4 + 2 + 32 + 32 + 2 + self.encrypted_secret.len();
        emit_message(out, TYPE_SERVER_HELLO, body_len, |w| {
            w.u8(self.version);
            w.u8(self.suite);
            w.u16(self.max_record);
            w.u32(self.stream_window);
            w.u16(self.max_streams);
            w.put(self.random);
            w.put(self.key_share);
            w.u16(self.encrypted_secret.len() as u16);
            w.put(self.encrypted_secret);
        })
    }
}

/// Key confirmation: an HMAC-SHA256 over the transcript hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished<'a> {
    /// The 32-byte MAC.
    pub mac: &'a [u8; 32],
}

impl<'a> Finished<'a> {
    /// Parses a `Finished` body.
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let mac = r.array("finished mac")?;
        r.finish()?;
        Ok(Finished { mac })
    }

    /// Emits the whole message (header and body) into `out`.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, WireError> {
        emit_message(out, TYPE_FINISHED, 32, |w| w.put(self.mac))
    }
}

/// An unauthenticated notice that the sender aborts the handshake.
///
/// For [`AlertReason::UnknownServerKey`] the server adds the id of the key it
/// does hold, so the client can name both fingerprints in its error. The
/// alert is not authenticated: it is information for the operator, never a
/// reason to trust anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert<'a> {
    /// Why the handshake was aborted.
    pub reason: AlertReason,
    /// A key id that explains the reason (see above), if any.
    pub key_id: Option<&'a [u8; 32]>,
}

impl<'a> Alert<'a> {
    /// Parses an `Alert` body.
    pub fn parse(body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let reason = AlertReason::from_code(r.u8("alert reason")?);
        let key_id = match r.u8("alert key id length")? {
            0 => None,
            32 => Some(r.array("alert key id")?),
            _ => return Err(WireError::InvalidField("alert key id length")),
        };
        r.finish()?;
        Ok(Alert { reason, key_id })
    }

    /// Emits the whole message (header and body) into `out`.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, WireError> {
        let id_len = if self.key_id.is_some() { 32 } else { 0 };
        emit_message(out, TYPE_ALERT, 2 + id_len, |w| {
            w.u8(self.reason.code());
            w.u8(id_len as u8);
            if let Some(id) = self.key_id {
                w.put(id);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_ch(ct: &[u8]) -> ClientHello<'_> {
        ClientHello {
            version: VERSION,
            suites: &[1, 2],
            max_record: 4096,
            random: &[1; 32],
            key_share: &[2; 32],
            client_key_id: &[3; 32],
            server_key_id: &[4; 32],
            encrypted_secret: ct,
        }
    }

    #[test]
    fn client_hello_roundtrip_and_every_truncation_fails() {
        let ct = [9u8; 256];
        let ch = sample_ch(&ct);
        let mut buf = [0u8; 600];
        let n = ch.emit(&mut buf).unwrap();
        let hdr = HandshakeHeader::parse(buf[..3].try_into().unwrap()).unwrap();
        assert_eq!(hdr.msg_type, TYPE_CLIENT_HELLO);
        assert_eq!(hdr.body_len, n - 3);
        let body = &buf[3..n];
        assert_eq!(ClientHello::parse(body).unwrap(), ch);
        for cut in 0..body.len() {
            assert!(ClientHello::parse(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = [0u8; 700];
        long[..body.len()].copy_from_slice(body);
        assert_eq!(
            ClientHello::parse(&long[..body.len() + 1]),
            Err(WireError::TrailingBytes)
        );
    }

    #[test]
    fn client_hello_rejects_bad_fields() {
        let ct = [9u8; 256];
        let mut buf = [0u8; 600];
        let n = sample_ch(&ct).emit(&mut buf).unwrap();
        let body = &mut buf[3..n];
        body[0] = b'X';
        assert_eq!(
            ClientHello::parse(body),
            Err(WireError::InvalidField("magic"))
        );
        body[0] = b'H';
        body[5] = 0; // suite count
        assert!(ClientHello::parse(body).is_err());
        let short_ct = [0u8; 100];
        assert!(sample_ch(&short_ct).emit(&mut buf).is_err());
    }

    #[test]
    fn emit_reports_required_size() {
        let ct = [9u8; 256];
        let mut small = [0u8; 10];
        match sample_ch(&ct).emit(&mut small) {
            Err(WireError::BufferTooSmall { required }) => {
                assert_eq!(required, 3 + 4 + 2 + 2 + 2 + 128 + 2 + 256)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn server_hello_finished_alert_roundtrip() {
        let ct = [7u8; 384];
        let sh = ServerHello {
            version: 1,
            suite: 1,
            max_record: 16384,
            stream_window: 65536,
            max_streams: 64,
            random: &[5; 32],
            key_share: &[6; 32],
            encrypted_secret: &ct,
        };
        let mut buf = [0u8; 600];
        let n = sh.emit(&mut buf).unwrap();
        assert_eq!(ServerHello::parse(&buf[3..n]).unwrap(), sh);
        for cut in 0..n - 3 {
            assert!(ServerHello::parse(&buf[3..3 + cut]).is_err());
        }
        let fin = Finished { mac: &[8; 32] };
        let n = fin.emit(&mut buf).unwrap();
        assert_eq!(n, 35);
        assert_eq!(Finished::parse(&buf[3..n]).unwrap(), fin);
        let n = Alert {
            reason: AlertReason::Unauthorized,
            key_id: None,
        }
        .emit(&mut buf)
        .unwrap();
        assert_eq!(&buf[..n], &[TYPE_ALERT, 0, 2, 1, 0]);
        assert_eq!(
            Alert::parse(&buf[3..n]).unwrap().reason,
            AlertReason::Unauthorized
        );
        let alert = Alert {
            reason: AlertReason::UnknownServerKey,
            key_id: Some(&[3; 32]),
        };
        let n = alert.emit(&mut buf).unwrap();
        assert_eq!(Alert::parse(&buf[3..n]).unwrap(), alert);
        assert!(Alert::parse(&[1, 5, 0]).is_err());
    }

    #[test]
    fn header_rejects_unknown_type_and_oversize() {
        assert_eq!(
            HandshakeHeader::parse(&[0x42, 0, 1]),
            Err(WireError::UnknownType(0x42))
        );
        assert!(HandshakeHeader::parse(&[TYPE_CLIENT_HELLO, 0xff, 0xff]).is_err());
    }
}
