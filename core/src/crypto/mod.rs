//! Cryptographic building blocks of the handshake and the record layer.
//!
//! * [`identity`] — long-term RSA keys: key ids (SHA-256 of the SPKI DER),
//!   RSA-OAEP encryption of handshake secrets with implicit rejection.
//! * [`kx`] — [`Ephemeral`]: the X25519 ephemeral key exchange
//!   (`x25519-dalek` by default; AWS-LC with the `aws-lc` feature).
//! * [`schedule`] — the HKDF-SHA256 key schedule and the Finished MACs.
//! * [`provider`] — [`PrivateKeyProvider`]: who performs the RSA private-key
//!   operation, and who encrypts to a peer's public key (the `rsa` crate
//!   by default; AWS-LC with the `aws-lc` feature).
//! * [`aead`] — [`RecordSealer`] and [`RecordOpener`]: AES-GCM with
//!   sequence-number nonces and key update.
//!
//! Every RSA private-key operation is blinded: the `rsa` provider calls
//! `decrypt_blinded` with the caller's RNG (never the unblinded `decrypt`),
//! AWS-LC blinds with its own RNG; see `docs/PROTOCOL.md` §10.9 for why.

pub mod aead;
pub mod identity;
pub mod kx;
pub mod provider;
pub mod schedule;

pub use aead::{RecordOpener, RecordSealer};
pub use identity::{DecryptedSecret, KeyId, PrivateIdentity, PrivateKeyOp, PublicIdentity};
pub use kx::Ephemeral;
pub use provider::{PrivateKeyProvider, RsaBackend};

use core::fmt;

/// A failure inside a cryptographic primitive. Deliberately coarse: the
/// detail must not help an attacker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CryptoError {
    /// An RSA key could not be parsed or has an unsupported size.
    BadKey,
    /// RSA encryption failed (e.g. the RNG failed).
    Encrypt,
    /// AEAD authentication failed.
    Decrypt,
    /// The sequence number space of a key is exhausted.
    SequenceExhausted,
    /// The X25519 result was all zeros (a low-order peer share).
    WeakKeyShare,
    /// An X25519 ephemeral key could not be set up (the provider failed).
    KeyExchange,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CryptoError::BadKey => "unsupported or malformed RSA key",
            CryptoError::Encrypt => "RSA encryption failed",
            CryptoError::Decrypt => "record authentication failed",
            CryptoError::SequenceExhausted => "record sequence numbers exhausted",
            CryptoError::WeakKeyShare => "peer sent a low-order X25519 share",
            CryptoError::KeyExchange => "X25519 key exchange setup failed",
        })
    }
}

impl core::error::Error for CryptoError {}
