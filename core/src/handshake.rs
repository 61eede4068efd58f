//! The handshake state machines, one state per message awaited.
//!
//! ```text
//! client                                         server
//!   ClientHello  ───────────────────────────────▶  (cheap checks, then RSA)
//!                ◀───────────────────────────────  ServerHello, Finished(s)
//!   verify Finished(s)
//!   Finished(c) + first records ────────────────▶  verify Finished(c)
//! ```
//!
//! Each state is a value consumed by its transition (`ClientExpectServerHello`
//! → `ClientExpectServerFinished` → [`Established`]; the server goes
//! `handle_client_hello` → `ServerExpectClientFinished` → [`Established`]),
//! so a state can never be used twice.
//!
//! The one expensive step of each side, the RSA private-key operation, can
//! be split off: [`ClientExpectServerHello::begin`] and [`server_hello`]
//! return a [`PrivateKeyOp`] and an "await" state ([`ClientAwaitPrivateKey`],
//! [`ServerAwaitPrivateKey`]) whose `finish` takes the operation's result.
//! The one-call transitions (`handle`, `handle_client_hello`) are exactly
//! `begin`, `run`, `finish` in a row. A server can also hand off its whole
//! reply to a `ClientHello` at once ([`ServerHelloJob`]), so none of its
//! handshake crypto runs where the message arrived. The states take whole encoded
//! messages (header included) because the transcript hashes whole messages.
//! Nothing here touches buffers beyond the output slice it is given.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::{ClientConfig, ServerConfig, SessionConfig};
use crate::crypto::identity::{LABEL_CLIENT_SECRET, LABEL_SERVER_SECRET};
use crate::crypto::schedule::{self, HandshakeSecrets, Secret};
use crate::crypto::{
    CryptoError, DecryptedSecret, Ephemeral, KeyId, PrivateKeyOp, RecordOpener, RecordSealer,
};
use crate::error::{ConnectionError, HandshakeError};
use crate::wire::handshake::{
    Alert, AlertReason, ClientHello, Finished, HEADER_LEN, ServerHello, Suite, TYPE_ALERT,
    TYPE_CLIENT_HELLO, TYPE_FINISHED, TYPE_SERVER_HELLO, VERSION,
};

/// What both sides agreed on, and the record keys.
pub struct Established {
    /// Seals this side's records.
    pub sealer: RecordSealer,
    /// Opens the peer's records.
    pub opener: RecordOpener,
    /// The negotiated suite.
    pub suite: Suite,
    /// Largest record plaintext the peer accepts.
    pub peer_max_record: u16,
    /// (client) credit per new stream for client→server data; (server) the
    /// value it announced.
    pub stream_window: u32,
    /// The stream limit announced in ServerHello (per id space).
    pub max_streams: u16,
    /// The peer's key id.
    pub peer_key: KeyId,
}

/// A handshake failure, with the alert to send to the peer if any.
pub struct Rejection {
    /// The error to report locally.
    pub error: HandshakeError,
    /// The alert (reason, key id) to send before closing.
    pub alert: Option<(AlertReason, Option<KeyId>)>,
}

impl From<HandshakeError> for Rejection {
    fn from(error: HandshakeError) -> Self {
        Rejection { error, alert: None }
    }
}

fn x25519(secret: &Ephemeral, peer: &[u8; 32]) -> Result<Secret, HandshakeError> {
    // An all-zero result means the peer's share was a low-order point.
    secret.agree(peer).map_err(|e| match e {
        CryptoError::WeakKeyShare => HandshakeError::WeakKeyShare,
        other => HandshakeError::Crypto(other),
    })
}

/// A fresh ephemeral key from 32 bytes of `rng`.
fn ephemeral<R: CryptoRng + ?Sized>(rng: &mut R) -> Result<Ephemeral, HandshakeError> {
    let eph_bytes = random32(rng);
    Ephemeral::from_bytes(&eph_bytes).map_err(HandshakeError::Crypto)
}

fn random32<R: CryptoRng + ?Sized>(rng: &mut R) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(out.as_mut());
    out
}

fn hash_of(transcript: &Sha256) -> [u8; 32] {
    transcript.clone().finalize().into()
}

/// Parses an alert message (`whole` includes the header).
pub fn parse_alert(whole: &[u8]) -> HandshakeError {
    match Alert::parse(&whole[HEADER_LEN..]) {
        Ok(alert) => HandshakeError::PeerAlert(alert.reason, alert.key_id.map(|k| KeyId(*k))),
        Err(_) => HandshakeError::PeerAlert(AlertReason::Other, None),
    }
}

/// Writes an alert; returns the bytes used (0 if `out` is too small).
pub fn emit_alert(reason: AlertReason, key_id: Option<KeyId>, out: &mut [u8]) -> usize {
    let id = key_id.map(|k| k.0);
    Alert {
        reason,
        key_id: id.as_ref(),
    }
    .emit(out)
    .unwrap_or(0)
}

fn common_suite(offered: &[u8], accepted: &[Suite]) -> Option<Suite> {
    offered
        .iter()
        .filter_map(|c| Suite::from_code(*c))
        .find(|s| accepted.contains(s))
}

// ---------------------------------------------------------------- client --

/// Client state after sending `ClientHello`.
pub struct ClientExpectServerHello {
    ephemeral: Ephemeral,
    client_secret: Secret,
    transcript: Sha256,
}

/// Client state after a valid `ServerHello`.
pub struct ClientExpectServerFinished {
    secrets: HandshakeSecrets,
    transcript: Sha256,
    suite: Suite,
    peer_max_record: u16,
    stream_window: u32,
    max_streams: u16,
    peer_key: KeyId,
}

/// Builds the `ClientHello` into `out` and returns its length and the next
/// state.
pub fn client_hello<R: CryptoRng + ?Sized>(
    config: &ClientConfig,
    max_record: u16,
    rng: &mut R,
    out: &mut [u8],
) -> Result<(usize, ClientExpectServerHello), HandshakeError> {
    let ephemeral = ephemeral(rng)?;
    let random = random32(rng);
    let client_secret = random32(rng);
    let encrypted = config
        .server
        .encrypt_secret(rng, LABEL_CLIENT_SECRET, &client_secret)
        .map_err(HandshakeError::Crypto)?;
    if config.suites.is_empty() {
        return Err(HandshakeError::NoCommonSuite);
    }
    let mut suites = [0u8; 2];
    for (slot, s) in suites.iter_mut().zip(config.suites.iter()) {
        *slot = s.code();
    }
    let hello = ClientHello {
        version: VERSION,
        suites: &suites[..config.suites.len()],
        max_record,
        random: &random,
        key_share: ephemeral.share(),
        client_key_id: &config.identity.public().id().0,
        server_key_id: &config.server.id().0,
        encrypted_secret: &encrypted,
    };
    let n = hello
        .emit(out)
        .map_err(|_| HandshakeError::Crypto(CryptoError::BadKey))?;
    let mut transcript = Sha256::new();
    transcript.update(&out[..n]);
    Ok((
        n,
        ClientExpectServerHello {
            ephemeral,
            client_secret,
            transcript,
        },
    ))
}

impl ClientExpectServerHello {
    /// Handles the server's reply (`whole` includes the header), doing the
    /// private-key operation inline with `rng` for blinding.
    pub fn handle<R: CryptoRng + ?Sized>(
        self,
        config: &ClientConfig,
        whole: &[u8],
        rng: &mut R,
    ) -> Result<ClientExpectServerFinished, ConnectionError> {
        let (next, op) = self.begin(config, whole)?;
        Ok(next.finish(op.run(rng)))
    }

    /// First half of [`Self::handle`]: checks the `ServerHello` and returns
    /// the private-key operation it needs, for the driver to run (inline
    /// or elsewhere) and hand to [`ClientAwaitPrivateKey::finish`].
    pub fn begin(
        mut self,
        config: &ClientConfig,
        whole: &[u8],
    ) -> Result<(ClientAwaitPrivateKey, PrivateKeyOp), ConnectionError> {
        match whole[0] {
            TYPE_SERVER_HELLO => {}
            TYPE_ALERT => return Err(parse_alert(whole).into()),
            _ => return Err(HandshakeError::UnexpectedMessage.into()),
        }
        let sh = ServerHello::parse(&whole[HEADER_LEN..])?;
        if sh.version != VERSION {
            return Err(HandshakeError::UnsupportedVersion.into());
        }
        let suite = Suite::from_code(sh.suite)
            .filter(|s| config.suites.contains(s))
            .ok_or(HandshakeError::NoCommonSuite)?;
        let shared = x25519(&self.ephemeral, sh.key_share)?;
        let op = config
            .identity
            .defer_decrypt(LABEL_SERVER_SECRET, sh.encrypted_secret);
        self.transcript.update(whole);
        Ok((
            ClientAwaitPrivateKey {
                shared,
                client_secret: self.client_secret,
                transcript: self.transcript,
                suite,
                peer_max_record: sh.max_record,
                stream_window: sh.stream_window,
                // The announced limit: it bounds the server's opens as
                // seen here; the client's own smaller limit applies to its
                // own opens only (PROTOCOL.md §7.5).
                max_streams: sh.max_streams,
                peer_key: config.server.id(),
            },
            op,
        ))
    }
}

/// Client state after a valid `ServerHello`, waiting for the decryption of
/// the server's secret.
pub struct ClientAwaitPrivateKey {
    shared: Secret,
    client_secret: Secret,
    transcript: Sha256,
    suite: Suite,
    peer_max_record: u16,
    stream_window: u32,
    max_streams: u16,
    peer_key: KeyId,
}

impl ClientAwaitPrivateKey {
    /// Completes the `ServerHello` step with the result of the operation
    /// [`ClientExpectServerHello::begin`] returned.
    pub fn finish(self, server_secret: DecryptedSecret) -> ClientExpectServerFinished {
        let server_secret = server_secret.into_secret();
        let th1 = hash_of(&self.transcript);
        let secrets = schedule::derive(&self.client_secret, &server_secret, &self.shared, &th1);
        ClientExpectServerFinished {
            secrets,
            transcript: self.transcript,
            suite: self.suite,
            peer_max_record: self.peer_max_record,
            stream_window: self.stream_window,
            max_streams: self.max_streams,
            peer_key: self.peer_key,
        }
    }
}

impl ClientExpectServerFinished {
    /// Verifies the server's Finished, writes the client's Finished into
    /// `out`, and returns the session keys.
    pub fn handle(
        mut self,
        whole: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, Established), ConnectionError> {
        match whole[0] {
            TYPE_FINISHED => {}
            TYPE_ALERT => return Err(parse_alert(whole).into()),
            _ => return Err(HandshakeError::UnexpectedMessage.into()),
        }
        let fin = Finished::parse(&whole[HEADER_LEN..])?;
        let th1 = hash_of(&self.transcript);
        if !schedule::verify_finished(&self.secrets.server_finished, &th1, fin.mac) {
            return Err(HandshakeError::ServerAuthenticationFailed.into());
        }
        self.transcript.update(whole);
        let th2 = hash_of(&self.transcript);
        let mac = schedule::finished_mac(&self.secrets.client_finished, &th2);
        let n = Finished { mac: &mac }.emit(out)?;
        let HandshakeSecrets {
            client_traffic,
            server_traffic,
            ..
        } = self.secrets;
        Ok((
            n,
            Established {
                sealer: RecordSealer::new(self.suite, client_traffic),
                opener: RecordOpener::new(self.suite, server_traffic),
                suite: self.suite,
                peer_max_record: self.peer_max_record,
                stream_window: self.stream_window,
                max_streams: self.max_streams,
                peer_key: self.peer_key,
            },
        ))
    }
}

// ---------------------------------------------------------------- server --

/// Server state after sending `ServerHello` and its Finished.
pub struct ServerExpectClientFinished {
    secrets: HandshakeSecrets,
    th2: [u8; 32],
    suite: Suite,
    peer_max_record: u16,
    session: SessionConfig,
    max_streams: u16,
    peer_key: KeyId,
}

/// The checks on a `ClientHello` that cost no RSA work. The host calls this
/// (through the connection) before spending a private-key operation.
fn precheck<'a>(
    config: &'a ServerConfig,
    ch: &ClientHello<'_>,
) -> Result<(Suite, &'a crate::crypto::PublicIdentity), Rejection> {
    if ch.version != VERSION {
        return Err(Rejection {
            error: HandshakeError::UnsupportedVersion,
            alert: Some((AlertReason::UnsupportedVersion, None)),
        });
    }
    let own = config.identity.public().id();
    if *ch.server_key_id != own.0 {
        return Err(Rejection {
            error: HandshakeError::UnknownServerKey(KeyId(*ch.server_key_id)),
            alert: Some((AlertReason::UnknownServerKey, Some(own))),
        });
    }
    let client_id = KeyId(*ch.client_key_id);
    let Some(client_key) = config.authorized_key(&client_id) else {
        return Err(Rejection {
            error: HandshakeError::UnauthorizedClient(client_id),
            alert: Some((AlertReason::Unauthorized, None)),
        });
    };
    let Some(suite) = common_suite(ch.suites, &config.suites) else {
        return Err(Rejection {
            error: HandshakeError::NoCommonSuite,
            alert: Some((AlertReason::NoCommonSuite, None)),
        });
    };
    Ok((suite, client_key))
}

/// Handles a `ClientHello` (`whole` includes the header): writes
/// `ServerHello` and the server's Finished into `out`, doing the
/// private-key operation inline with `rng` for blinding.
pub fn handle_client_hello<R: CryptoRng + ?Sized>(
    config: &ServerConfig,
    max_record: u16,
    max_streams: u16,
    whole: &[u8],
    rng: &mut R,
    out: &mut [u8],
) -> Result<(usize, ServerExpectClientFinished), Rejection> {
    let (sh_len, next, op) = server_hello(config, max_record, max_streams, whole, rng, out)?;
    let (fin_len, next) = next.finish(op.run(rng), &mut out[sh_len..])?;
    Ok((sh_len + fin_len, next))
}

/// The server's whole reply to a `ClientHello` as one self-contained job:
/// the checks, the X25519 key and agreement, the RSA-OAEP encryption of the
/// server's secret to the client key, the private-key operation, the key
/// schedule and the server's Finished — every costly step of the server's
/// handshake. `Send + 'static` (it owns a copy of the message and a
/// reference to the configuration), so a driver can run it on a worker
/// thread; [`Self::run`] is exactly [`handle_client_hello`].
#[derive(Clone)]
pub struct ServerHelloJob {
    config: Arc<ServerConfig>,
    hello: Vec<u8>,
    max_record: u16,
    max_streams: u16,
}

/// The outcome of a [`ServerHelloJob`]: the server's first flight
/// (`ServerHello` ‖ Finished) and its next state, or the rejection (with
/// the alert to send, if any).
pub struct ServerHelloReply(pub(crate) Result<(Vec<u8>, ServerExpectClientFinished), Rejection>);

/// The most a server's first flight can take: a `ServerHello` and a
/// Finished, each at most one handshake message.
const MAX_SERVER_FLIGHT: usize = 2 * (HEADER_LEN + crate::wire::handshake::MAX_BODY_LEN);

impl ServerHelloJob {
    /// Packages the reply to `whole` (a `ClientHello`, header included).
    pub fn new(config: Arc<ServerConfig>, max_record: u16, max_streams: u16, whole: &[u8]) -> Self {
        ServerHelloJob {
            config,
            hello: whole.to_vec(),
            max_record,
            max_streams,
        }
    }

    /// Does the work, with `rng` for the server's randomness and blinding.
    pub fn run<R: CryptoRng + ?Sized>(self, rng: &mut R) -> ServerHelloReply {
        let mut out = vec![0u8; MAX_SERVER_FLIGHT];
        let result = handle_client_hello(
            &self.config,
            self.max_record,
            self.max_streams,
            &self.hello,
            rng,
            &mut out,
        )
        .map(|(n, next)| {
            out.truncate(n);
            (out, next)
        });
        ServerHelloReply(result)
    }
}

/// First half of [`handle_client_hello`]: checks the `ClientHello`, writes
/// the `ServerHello` into `out` and returns its length, the next state and
/// the private-key operation the server's Finished needs. The driver runs
/// the operation (inline or elsewhere) and passes its result to
/// [`ServerAwaitPrivateKey::finish`]. All randomness of the server's
/// handshake is drawn here, before the private-key operation.
pub fn server_hello<R: CryptoRng + ?Sized>(
    config: &ServerConfig,
    max_record: u16,
    max_streams: u16,
    whole: &[u8],
    rng: &mut R,
    out: &mut [u8],
) -> Result<(usize, ServerAwaitPrivateKey, PrivateKeyOp), Rejection> {
    if whole[0] != TYPE_CLIENT_HELLO {
        return Err(Rejection {
            error: HandshakeError::UnexpectedMessage,
            alert: Some((AlertReason::Malformed, None)),
        });
    }
    let ch = ClientHello::parse(&whole[HEADER_LEN..]).map_err(|_| Rejection {
        error: HandshakeError::UnexpectedMessage,
        alert: Some((AlertReason::Malformed, None)),
    })?;
    let (suite, client_key) = precheck(config, &ch)?;

    // Cheap before costly: the X25519 share is checked before any RSA work.
    let ephemeral = ephemeral(rng)?;
    let shared = x25519(&ephemeral, ch.key_share)?;
    let random = random32(rng);
    let server_secret = random32(rng);
    let encrypted = client_key
        .encrypt_secret(rng, LABEL_SERVER_SECRET, &server_secret)
        .map_err(|e| Rejection::from(HandshakeError::Crypto(e)))?;
    let sh = ServerHello {
        version: VERSION,
        suite: suite.code(),
        max_record,
        stream_window: config.session.stream_window.max(1),
        max_streams,
        random: &random,
        key_share: ephemeral.share(),
        encrypted_secret: &encrypted,
    };
    let sh_len = sh
        .emit(out)
        .map_err(|_| Rejection::from(HandshakeError::Crypto(CryptoError::BadKey)))?;
    let mut transcript = Sha256::new();
    transcript.update(whole);
    transcript.update(&out[..sh_len]);
    // client_secret = RSA-OAEP-Decrypt(server_key, ct) or the implicit
    // rejection value; never an early error (docs/PROTOCOL.md §4.3).
    let op = config
        .identity
        .defer_decrypt(LABEL_CLIENT_SECRET, ch.encrypted_secret);
    Ok((
        sh_len,
        ServerAwaitPrivateKey {
            shared,
            server_secret,
            transcript,
            suite,
            peer_max_record: ch.max_record,
            session: config.session,
            max_streams,
            peer_key: client_key.id(),
        },
        op,
    ))
}

/// Server state after writing `ServerHello`, waiting for the decryption of
/// the client's secret before it can write its Finished.
pub struct ServerAwaitPrivateKey {
    shared: Secret,
    server_secret: Secret,
    transcript: Sha256,
    suite: Suite,
    peer_max_record: u16,
    session: SessionConfig,
    max_streams: u16,
    peer_key: KeyId,
}

impl ServerAwaitPrivateKey {
    /// Completes the `ClientHello` step with the result of the operation
    /// [`server_hello`] returned: writes the server's Finished into `out`
    /// (the bytes right after the `ServerHello`).
    pub fn finish(
        mut self,
        client_secret: DecryptedSecret,
        out: &mut [u8],
    ) -> Result<(usize, ServerExpectClientFinished), Rejection> {
        let client_secret = client_secret.into_secret();
        let th1 = hash_of(&self.transcript);
        let secrets = schedule::derive(&client_secret, &self.server_secret, &self.shared, &th1);
        let mac = schedule::finished_mac(&secrets.server_finished, &th1);
        let fin_len = Finished { mac: &mac }
            .emit(out)
            .map_err(|_| Rejection::from(HandshakeError::Crypto(CryptoError::BadKey)))?;
        self.transcript.update(&out[..fin_len]);
        let th2 = hash_of(&self.transcript);
        Ok((
            fin_len,
            ServerExpectClientFinished {
                secrets,
                th2,
                suite: self.suite,
                peer_max_record: self.peer_max_record,
                session: self.session,
                max_streams: self.max_streams,
                peer_key: self.peer_key,
            },
        ))
    }
}

impl ServerExpectClientFinished {
    /// Verifies the client's Finished and returns the session keys.
    pub fn handle(self, whole: &[u8]) -> Result<Established, ConnectionError> {
        match whole[0] {
            TYPE_FINISHED => {}
            TYPE_ALERT => return Err(parse_alert(whole).into()),
            _ => return Err(HandshakeError::UnexpectedMessage.into()),
        }
        let fin = Finished::parse(&whole[HEADER_LEN..])?;
        if !schedule::verify_finished(&self.secrets.client_finished, &self.th2, fin.mac) {
            return Err(HandshakeError::ClientAuthenticationFailed.into());
        }
        let HandshakeSecrets {
            client_traffic,
            server_traffic,
            ..
        } = self.secrets;
        Ok(Established {
            sealer: RecordSealer::new(self.suite, server_traffic),
            opener: RecordOpener::new(self.suite, client_traffic),
            suite: self.suite,
            peer_max_record: self.peer_max_record,
            stream_window: self.session.stream_window,
            max_streams: self.max_streams,
            peer_key: self.peer_key,
        })
    }
}
