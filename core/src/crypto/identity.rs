//! Long-term RSA identities and the RSA-OAEP secret transport.
//!
//! A side's key id is `SHA-256(SubjectPublicKeyInfo DER)` — the same bytes
//! OpenSSH-style `SHA256:` fingerprints are printed from. A handshake secret
//! is 32 random bytes encrypted with RSA-OAEP (SHA-256, MGF1-SHA-256) under a
//! direction-specific label. Decryption uses *implicit rejection*: when the
//! ciphertext does not decrypt to exactly 32 bytes, the receiver continues
//! with `HMAC-SHA256(rejection_key, label || ciphertext)` instead, so the
//! failure only shows as a Finished mismatch later (`docs/PROTOCOL.md` §4.3).

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use hmac::Mac;
use rand_core::CryptoRng;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};
use sha2::{Digest, Sha256};
use subtle::ConditionallySelectable;
use zeroize::Zeroizing;

use super::CryptoError;
use super::provider::{PrivateKeyProvider, PublicKeyEncryptor, RsaBackend, SECRET_LEN};

/// OAEP label of the client → server secret.
pub const LABEL_CLIENT_SECRET: &[u8] = b"hytun/1 client secret";
/// OAEP label of the server → client secret.
pub const LABEL_SERVER_SECRET: &[u8] = b"hytun/1 server secret";
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: usize = 4096;

/// SHA-256 of a public key's SubjectPublicKeyInfo DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// The id of a key given as SPKI DER.
    pub fn of_spki_der(der: &[u8]) -> KeyId {
        KeyId(Sha256::digest(der).into())
    }
}

impl core::fmt::Display for KeyId {
    /// `SHA256:` followed by unpadded standard base64, like OpenSSH.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        f.write_str("SHA256:")?;
        for chunk in self.0.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                let idx = ((n >> (18 - 6 * i)) & 0x3f) as usize;
                write!(f, "{}", char::from(ALPHABET[idx]))?;
            }
        }
        Ok(())
    }
}

fn check_size(bits: usize) -> Result<(), CryptoError> {
    if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(CryptoError::BadKey)
    }
}

/// A peer's public key together with its id and the provider that does
/// its RSA-OAEP encryption.
#[derive(Debug, Clone)]
pub struct PublicIdentity {
    key: RsaPublicKey,
    id: KeyId,
    encryptor: PublicKeyEncryptor,
}

impl PublicIdentity {
    /// Wraps a parsed key (2048..=4096 bits); its encryption goes through
    /// the default provider ([`RsaBackend::DEFAULT`]).
    pub fn new(key: RsaPublicKey) -> Result<Self, CryptoError> {
        Self::with_backend(key, RsaBackend::DEFAULT)
    }

    /// Like [`Self::new`] with a chosen built-in encryption provider. Only
    /// [`RsaBackend::RustCrypto`] draws the OAEP seed from the RNG given to
    /// [`Self::encrypt_secret`], so only it gives reproducible ciphertexts
    /// with a deterministic RNG (known-answer tests); AWS-LC draws the seed
    /// from its own OS-seeded DRBG.
    pub fn with_backend(key: RsaPublicKey, backend: RsaBackend) -> Result<Self, CryptoError> {
        // Bits of the modulus itself (not rounded up to whole bytes).
        check_size(key.n().as_ref().bit_width() as usize)?;
        let der = key.to_public_key_der().map_err(|_| CryptoError::BadKey)?;
        let id = KeyId::of_spki_der(der.as_bytes());
        let encryptor = backend.encryptor(der.as_bytes())?;
        if encryptor.modulus_len(&key) != key.size() {
            return Err(CryptoError::BadKey);
        }
        Ok(PublicIdentity { key, id, encryptor })
    }

    /// The same key with another encryption provider.
    pub fn using(&self, backend: RsaBackend) -> Result<Self, CryptoError> {
        Self::with_backend(self.key.clone(), backend)
    }

    /// The provider that does this key's RSA-OAEP encryption.
    pub fn backend(&self) -> RsaBackend {
        self.encryptor.backend()
    }

    /// Parses SubjectPublicKeyInfo DER.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        Self::new(RsaPublicKey::from_public_key_der(der).map_err(|_| CryptoError::BadKey)?)
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The RSA key.
    pub fn key(&self) -> &RsaPublicKey {
        &self.key
    }

    /// Length of this key's RSA ciphertexts in bytes.
    pub fn ciphertext_len(&self) -> usize {
        self.key.size()
    }

    /// Encrypts a 32-byte handshake secret under `label` (RSAES-OAEP,
    /// SHA-256, MGF1-SHA-256). The OAEP seed comes from `rng` with the
    /// `rsa` provider and from AWS-LC's own DRBG with the AWS-LC one (see
    /// [`Self::with_backend`]); the output is exactly
    /// [`Self::ciphertext_len`] bytes either way.
    pub fn encrypt_secret<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        label: &'static [u8],
        secret: &[u8; 32],
    ) -> Result<Vec<u8>, CryptoError> {
        self.encryptor.encrypt(&self.key, rng, label, secret)
    }
}

/// The private half of an identity shared with pending operations: the
/// provider that does RSA and the implicit-rejection key.
struct KeyInner {
    provider: Box<dyn PrivateKeyProvider>,
    rejection_key: Zeroizing<[u8; 32]>,
}

impl KeyInner {
    /// RSA-OAEP decryption with implicit rejection (`docs/PROTOCOL.md` §4.3),
    /// the same for every provider.
    fn decrypt_secret<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        label: &[u8],
        ciphertext: &[u8],
    ) -> Zeroizing<[u8; 32]> {
        // implicit = HMAC-SHA256(rejection_key, label || ciphertext), computed
        // unconditionally so both paths do the same work.
        let mut mac = super::schedule::hmac_sha256(self.rejection_key.as_ref());
        mac.update(label);
        mac.update(ciphertext);
        let mut out = Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()));
        // The length is public (it is on the wire); everything after it is
        // chosen without a branch on the decryption result.
        if ciphertext.len() == self.provider.modulus_len() {
            let mut plain = Zeroizing::new([0u8; SECRET_LEN]);
            let mut rng = rng;
            let ok = self
                .provider
                .decrypt_secret(&mut rng, label, ciphertext, &mut plain);
            for (o, p) in out.iter_mut().zip(plain.iter()) {
                o.conditional_assign(p, ok);
            }
        }
        out
    }
}

/// This side's own key pair, plus the key used for implicit rejection.
///
/// Cloning is cheap (the key is shared) and keeps the same rejection key.
#[derive(Clone)]
pub struct PrivateIdentity {
    inner: Arc<KeyInner>,
    public: PublicIdentity,
}

impl core::fmt::Debug for PrivateIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PrivateIdentity")
            .field("id", &self.public.id)
            .finish_non_exhaustive()
    }
}

impl PrivateIdentity {
    /// Wraps a parsed private key (2048..=4096 bits) with the default
    /// provider ([`RsaBackend::DEFAULT`]). The rejection key is drawn from
    /// `rng` once per identity.
    pub fn new<R: CryptoRng + ?Sized>(
        key: RsaPrivateKey,
        rng: &mut R,
    ) -> Result<Self, CryptoError> {
        Self::with_backend(key, RsaBackend::DEFAULT, rng)
    }

    /// Like [`Self::new`] with a chosen built-in provider.
    pub fn with_backend<R: CryptoRng + ?Sized>(
        key: RsaPrivateKey,
        backend: RsaBackend,
        rng: &mut R,
    ) -> Result<Self, CryptoError> {
        let public = PublicIdentity::new(key.to_public_key())?;
        Self::from_provider(backend.provider(key)?, public, rng)
    }

    /// An identity whose private-key operation is done by `provider`, for
    /// the key whose public half is `public`. The rejection key is drawn
    /// from `rng`.
    pub fn from_provider<R: CryptoRng + ?Sized>(
        provider: Box<dyn PrivateKeyProvider>,
        public: PublicIdentity,
        rng: &mut R,
    ) -> Result<Self, CryptoError> {
        if provider.modulus_len() != public.ciphertext_len() {
            return Err(CryptoError::BadKey);
        }
        let mut rejection_key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(rejection_key.as_mut());
        Ok(PrivateIdentity {
            inner: Arc::new(KeyInner {
                provider,
                rejection_key,
            }),
            public,
        })
    }

    /// Parses a PKCS#8 DER private key (default provider).
    pub fn from_pkcs8_der<R: CryptoRng + ?Sized>(
        der: &[u8],
        rng: &mut R,
    ) -> Result<Self, CryptoError> {
        Self::new(
            RsaPrivateKey::from_pkcs8_der(der).map_err(|_| CryptoError::BadKey)?,
            rng,
        )
    }

    /// The public half.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// Decrypts a handshake secret with blinding. Never fails: on any OAEP
    /// failure it returns the implicit-rejection secret instead.
    pub fn decrypt_secret<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        label: &'static [u8],
        ciphertext: &[u8],
    ) -> Zeroizing<[u8; 32]> {
        self.inner.decrypt_secret(rng, label, ciphertext)
    }

    /// Packages the decryption of `ciphertext` under `label` as a
    /// self-contained operation that can run later or on another thread
    /// ([`PrivateKeyOp::run`] gives the same result as
    /// [`Self::decrypt_secret`]).
    pub fn defer_decrypt(&self, label: &'static [u8], ciphertext: &[u8]) -> PrivateKeyOp {
        PrivateKeyOp {
            key: self.inner.clone(),
            label,
            ciphertext: ciphertext.to_vec(),
        }
    }
}

/// A private-key operation a handshake waits for: the decryption of the
/// peer's encrypted secret, with implicit rejection. `Send + 'static`, so a
/// driver can hand it to a worker thread; it owns a reference to the key
/// and a copy of the ciphertext.
#[derive(Clone)]
pub struct PrivateKeyOp {
    key: Arc<KeyInner>,
    label: &'static [u8],
    ciphertext: Vec<u8>,
}

impl core::fmt::Debug for PrivateKeyOp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PrivateKeyOp")
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl PrivateKeyOp {
    /// Runs the operation (the expensive part: one RSA private-key
    /// operation). `rng` is used for blinding by providers that take it.
    pub fn run<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> DecryptedSecret {
        DecryptedSecret(self.key.decrypt_secret(rng, self.label, &self.ciphertext))
    }
}

/// The result of a [`PrivateKeyOp`]: the peer's secret or the implicit
/// rejection value — deliberately indistinguishable. Only
/// [`PrivateKeyOp::run`] makes one.
pub struct DecryptedSecret(Zeroizing<[u8; 32]>);

impl core::fmt::Debug for DecryptedSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DecryptedSecret(..)")
    }
}

impl DecryptedSecret {
    /// Constant-time comparison, for tests that check a result computed
    /// elsewhere against one computed inline (the bytes stay private).
    pub fn matches(&self, other: &DecryptedSecret) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]))
    }

    pub(crate) fn into_secret(self) -> Zeroizing<[u8; 32]> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_display_matches_openssh_format() {
        let id = KeyId([0u8; 32]);
        let mut s = heapless::String::<64>::new();
        core::fmt::write(&mut s, format_args!("{id}")).unwrap();
        assert_eq!(
            s.as_str(),
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        );
        assert_eq!(s.len(), 7 + 43);
        let id = KeyId([0xff; 32]);
        s.clear();
        core::fmt::write(&mut s, format_args!("{id}")).unwrap();
        assert!(s.ends_with("//////8"), "{s}");
    }
}
