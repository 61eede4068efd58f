//! RSA providers: who performs RSA-OAEP decryption with this side's
//! private key, and RSA-OAEP encryption to a peer's public key.
//!
//! [`PrivateKeyProvider`] is the one operation the handshake needs from a
//! private key: RSAES-OAEP-DECRYPT with SHA-256 and MGF1-SHA-256 under a
//! label, blinded. Everything around it — the ciphertext length check, the
//! implicit-rejection value and the constant-time choice between the two
//! (`docs/PROTOCOL.md` §4.3) — lives in [`super::identity`] and is shared by
//! every provider, so the bytes on the wire and the work done for a bad
//! ciphertext do not depend on the provider.
//!
//! Two providers ship with the core:
//! * [`RustCryptoRsa`] — the `rsa` crate (pure Rust, `no_std`, constant-time
//!   `crypto-bigint` arithmetic, blinded with the caller's RNG). The default
//!   and the only one on microcontrollers.
//! * `AwsLcRsa` (feature `aws-lc`) — AWS-LC through `aws-lc-rs`:
//!   constant-time OAEP decoding, blinding with AWS-LC's own RNG, several
//!   times faster. With the feature on it becomes [`RsaBackend::DEFAULT`].
//!
//! A driver may plug in its own provider (an HSM, a secure element) with
//! [`super::PrivateIdentity::from_provider`].
//!
//! The public-key side (encrypting the 32-byte secret to the peer) has the
//! same two built-in choices, picked per [`super::PublicIdentity`] with the
//! same [`RsaBackend`]. OAEP encryption is randomized (a 32-byte seed): the
//! `rsa` crate takes the seed from the RNG the core is given, AWS-LC only
//! from its own OS-seeded DRBG (`aws-lc-rs` accepts no external RNG for
//! it). Both produce the same wire format; only the `rsa` path reproduces
//! the committed known-answer vectors from a deterministic RNG, so tests
//! that compare bytes pin [`RsaBackend::RustCrypto`], while a host, whose
//! RNG is the OS RNG anyway, gets AWS-LC by default.

use alloc::boxed::Box;
#[cfg(feature = "aws-lc")]
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::convert::Infallible;

use rand_core::{CryptoRng, TryCryptoRng};
use rsa::Oaep;
use rsa::traits::PublicKeyParts;
use sha2::Sha256;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

use super::CryptoError;

/// The RNG a provider may use for blinding (any infallible CSPRNG).
pub type BlindingRng<'a> = dyn TryCryptoRng<Error = Infallible> + 'a;

/// Length of a handshake secret, the only plaintext length accepted.
pub const SECRET_LEN: usize = 32;

/// An RSA private key that can do RSA-OAEP-SHA256 decryption.
///
/// Implementations must be side-channel hardened (blinding, constant-time
/// OAEP decoding) and must not report *why* a decryption failed.
pub trait PrivateKeyProvider: Send + Sync {
    /// Length of the modulus in bytes (`k`); ciphertexts are exactly this
    /// long.
    fn modulus_len(&self) -> usize;

    /// RSAES-OAEP-DECRYPT (SHA-256, MGF1-SHA-256) of `ciphertext` (exactly
    /// [`Self::modulus_len`] bytes) under `label`, blinded (with `rng` or
    /// the provider's own RNG). If it succeeds and the plaintext is exactly
    /// [`SECRET_LEN`] bytes, writes it to `out` and returns a true
    /// [`Choice`]; otherwise returns a false one and `out` is unspecified.
    fn decrypt_secret(
        &self,
        rng: &mut BlindingRng<'_>,
        label: &[u8],
        ciphertext: &[u8],
        out: &mut [u8; SECRET_LEN],
    ) -> Choice;
}

/// Copies a decrypted plaintext into `out` if it is exactly 32 bytes,
/// without a branch on its length; returns whether it was.
fn take_secret(plain: &[u8], out: &mut [u8; SECRET_LEN]) -> Choice {
    let ok = (plain.len() as u64).ct_eq(&(SECRET_LEN as u64));
    for (i, slot) in out.iter_mut().enumerate() {
        let b = plain.get(i).copied().unwrap_or(0);
        slot.conditional_assign(&b, ok);
    }
    ok
}

/// The pure-Rust provider: the `rsa` crate's blinded decryption.
pub struct RustCryptoRsa {
    key: rsa::PrivateKey,
}

impl RustCryptoRsa {
    /// Wraps a parsed key.
    pub fn new(key: rsa::PrivateKey) -> Self {
        RustCryptoRsa { key }
    }
}

impl PrivateKeyProvider for RustCryptoRsa {
    fn modulus_len(&self) -> usize {
        self.key.size()
    }

    fn decrypt_secret(
        &self,
        rng: &mut BlindingRng<'_>,
        label: &[u8],
        ciphertext: &[u8],
        out: &mut [u8; SECRET_LEN],
    ) -> Choice {
        // Always `decrypt_blinded` with the caller's RNG: the unblinded
        // `decrypt` depends on the `rsa` crate's features (§10.9).
        let oaep = Oaep::<Sha256>::new_with_label(label);
        match self.key.decrypt_blinded(rng, oaep, ciphertext) {
            Ok(plain) => take_secret(&Zeroizing::new(plain), out),
            Err(_) => Choice::from(0),
        }
    }
}

/// The AWS-LC provider (feature `aws-lc`).
#[cfg(feature = "aws-lc")]
pub struct AwsLcRsa {
    key: aws_lc_rs::rsa::OaepPrivateDecryptingKey,
}

#[cfg(feature = "aws-lc")]
impl AwsLcRsa {
    /// Parses a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|_| CryptoError::BadKey)?;
        let key =
            aws_lc_rs::rsa::OaepPrivateDecryptingKey::new(key).map_err(|_| CryptoError::BadKey)?;
        Ok(AwsLcRsa { key })
    }

    /// Converts a parsed `rsa` key (through its PKCS#8 encoding).
    pub fn from_rsa(key: &rsa::PrivateKey) -> Result<Self, CryptoError> {
        use rsa::pkcs8::EncodePrivateKey;
        let der = key.to_pkcs8_der().map_err(|_| CryptoError::BadKey)?;
        Self::from_pkcs8_der(der.as_bytes())
    }
}

#[cfg(feature = "aws-lc")]
impl PrivateKeyProvider for AwsLcRsa {
    fn modulus_len(&self) -> usize {
        self.key.key_size_bytes()
    }

    fn decrypt_secret(
        &self,
        _rng: &mut BlindingRng<'_>,
        label: &[u8],
        ciphertext: &[u8],
        out: &mut [u8; SECRET_LEN],
    ) -> Choice {
        // AWS-LC blinds every private-key operation with its own RNG and
        // decodes OAEP in constant time; the label goes into the hash.
        let mut plain = Zeroizing::new(alloc::vec![0u8; self.key.min_output_size()]);
        match self.key.decrypt(
            &aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256,
            ciphertext,
            &mut plain,
            Some(label),
        ) {
            Ok(p) => take_secret(p, out),
            Err(_) => Choice::from(0),
        }
    }
}

/// Who performs RSA-OAEP-SHA256 encryption to a [`super::PublicIdentity`].
#[derive(Clone)]
pub(crate) enum PublicKeyEncryptor {
    /// The `rsa` crate, with the caller's RNG for the OAEP seed.
    RustCrypto,
    /// AWS-LC, with its own DRBG for the OAEP seed (shared, immutable key).
    #[cfg(feature = "aws-lc")]
    AwsLc(Arc<aws_lc_rs::rsa::OaepPublicEncryptingKey>),
}

impl core::fmt::Debug for PublicKeyEncryptor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.backend().name())
    }
}

impl PublicKeyEncryptor {
    pub(crate) fn backend(&self) -> RsaBackend {
        match self {
            PublicKeyEncryptor::RustCrypto => RsaBackend::RustCrypto,
            #[cfg(feature = "aws-lc")]
            PublicKeyEncryptor::AwsLc(_) => RsaBackend::AwsLc,
        }
    }

    /// Ciphertext length this encryptor produces for `key`.
    pub(crate) fn modulus_len(&self, key: &rsa::PublicKey) -> usize {
        match self {
            PublicKeyEncryptor::RustCrypto => key.size(),
            #[cfg(feature = "aws-lc")]
            PublicKeyEncryptor::AwsLc(k) => k.ciphertext_size(),
        }
    }

    /// RSAES-OAEP-ENCRYPT (SHA-256, MGF1-SHA-256) of `secret` under
    /// `label` to `key` (the same key this encryptor was built from).
    pub(crate) fn encrypt<R: CryptoRng + ?Sized>(
        &self,
        key: &rsa::PublicKey,
        rng: &mut R,
        label: &[u8],
        secret: &[u8; SECRET_LEN],
    ) -> Result<Vec<u8>, CryptoError> {
        match self {
            PublicKeyEncryptor::RustCrypto => key
                .encrypt(rng, Oaep::<Sha256>::new_with_label(label), secret)
                .map_err(|_| CryptoError::Encrypt),
            #[cfg(feature = "aws-lc")]
            PublicKeyEncryptor::AwsLc(k) => {
                let mut out = alloc::vec![0u8; k.ciphertext_size()];
                let n = k
                    .encrypt(
                        &aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256,
                        secret,
                        &mut out,
                        Some(label),
                    )
                    .map_err(|_| CryptoError::Encrypt)?
                    .len();
                // RSA ciphertexts are always exactly `k` bytes.
                if n != out.len() {
                    return Err(CryptoError::Encrypt);
                }
                Ok(out)
            }
        }
    }
}

/// Which built-in provider a [`super::PrivateIdentity`] or
/// [`super::PublicIdentity`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RsaBackend {
    /// The `rsa` crate (pure Rust).
    RustCrypto,
    /// AWS-LC through `aws-lc-rs`.
    #[cfg(feature = "aws-lc")]
    AwsLc,
}

impl RsaBackend {
    /// The fastest built-in provider compiled in: AWS-LC with the `aws-lc`
    /// feature, the `rsa` crate otherwise.
    #[cfg(feature = "aws-lc")]
    pub const DEFAULT: RsaBackend = RsaBackend::AwsLc;
    /// The fastest built-in provider compiled in: AWS-LC with the `aws-lc`
    /// feature, the `rsa` crate otherwise.
    #[cfg(not(feature = "aws-lc"))]
    pub const DEFAULT: RsaBackend = RsaBackend::RustCrypto;

    /// Every built-in provider compiled in.
    pub const ALL: &'static [RsaBackend] = &[
        RsaBackend::RustCrypto,
        #[cfg(feature = "aws-lc")]
        RsaBackend::AwsLc,
    ];

    /// A short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            RsaBackend::RustCrypto => "rsa (RustCrypto)",
            #[cfg(feature = "aws-lc")]
            RsaBackend::AwsLc => "aws-lc-rs",
        }
    }

    /// Builds this backend's provider for `key`.
    pub fn provider(
        self,
        key: rsa::PrivateKey,
    ) -> Result<Box<dyn PrivateKeyProvider>, CryptoError> {
        Ok(match self {
            RsaBackend::RustCrypto => Box::new(RustCryptoRsa::new(key)),
            #[cfg(feature = "aws-lc")]
            RsaBackend::AwsLc => Box::new(AwsLcRsa::from_rsa(&key)?),
        })
    }
}

impl RsaBackend {
    /// Builds this backend's encryptor for the public key `spki_der`
    /// (SubjectPublicKeyInfo DER).
    #[cfg_attr(not(feature = "aws-lc"), allow(unused_variables))]
    pub(crate) fn encryptor(self, spki_der: &[u8]) -> Result<PublicKeyEncryptor, CryptoError> {
        Ok(match self {
            RsaBackend::RustCrypto => PublicKeyEncryptor::RustCrypto,
            #[cfg(feature = "aws-lc")]
            RsaBackend::AwsLc => {
                let key = aws_lc_rs::rsa::PublicEncryptingKey::from_der(spki_der)
                    .map_err(|_| CryptoError::BadKey)?;
                let key = aws_lc_rs::rsa::OaepPublicEncryptingKey::new(key)
                    .map_err(|_| CryptoError::BadKey)?;
                PublicKeyEncryptor::AwsLc(Arc::new(key))
            }
        })
    }
}

impl core::fmt::Display for RsaBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_secret_accepts_exactly_32_bytes() {
        let mut out = [7u8; 32];
        assert!(bool::from(take_secret(&[1u8; 32], &mut out)));
        assert_eq!(out, [1u8; 32]);
        let mut out = [7u8; 32];
        assert!(!bool::from(take_secret(&[1u8; 31], &mut out)));
        assert_eq!(out, [7u8; 32]);
        assert!(!bool::from(take_secret(&[1u8; 33], &mut out)));
        assert!(!bool::from(take_secret(&[], &mut out)));
        assert_eq!(out, [7u8; 32]);
    }
}
