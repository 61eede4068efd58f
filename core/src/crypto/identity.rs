//! Long-term RSA identities and the RSA-OAEP secret transport.
//!
//! A side's key id is `SHA-256(SubjectPublicKeyInfo DER)` — the same bytes
//! OpenSSH-style `SHA256:` fingerprints are printed from. A handshake secret
//! is 32 random bytes encrypted with RSA-OAEP (SHA-256, MGF1-SHA-256) under a
//! direction-specific label. Decryption uses *implicit rejection*: when the
//! ciphertext does not decrypt to exactly 32 bytes, the receiver continues
//! with `HMAC-SHA256(rejection_key, label || ciphertext)` instead, so the
//! failure only shows as a Finished mismatch later (`docs/PROTOCOL.md` §4.3).

use alloc::vec::Vec;

use hmac::Mac;
use rand_core::CryptoRng;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::CryptoError;

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

/// A peer's public key together with its id.
#[derive(Debug, Clone)]
pub struct PublicIdentity {
    key: RsaPublicKey,
    id: KeyId,
}

impl PublicIdentity {
    /// Wraps a parsed key (2048..=4096 bits).
    pub fn new(key: RsaPublicKey) -> Result<Self, CryptoError> {
        // Bits of the modulus itself (not rounded up to whole bytes).
        check_size(key.n().as_ref().bit_width() as usize)?;
        let der = key.to_public_key_der().map_err(|_| CryptoError::BadKey)?;
        let id = KeyId::of_spki_der(der.as_bytes());
        Ok(PublicIdentity { key, id })
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

    /// Encrypts a 32-byte handshake secret under `label`.
    pub fn encrypt_secret<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        label: &'static [u8],
        secret: &[u8; 32],
    ) -> Result<Vec<u8>, CryptoError> {
        self.key
            .encrypt(rng, Oaep::<Sha256>::new_with_label(label), secret)
            .map_err(|_| CryptoError::Encrypt)
    }
}

/// This side's own key pair, plus the key used for implicit rejection.
pub struct PrivateIdentity {
    key: RsaPrivateKey,
    public: PublicIdentity,
    rejection_key: Zeroizing<[u8; 32]>,
}

impl core::fmt::Debug for PrivateIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PrivateIdentity")
            .field("id", &self.public.id)
            .finish_non_exhaustive()
    }
}

impl PrivateIdentity {
    /// Wraps a parsed private key (2048..=4096 bits). The rejection key is
    /// drawn from `rng` once per identity.
    pub fn new<R: CryptoRng + ?Sized>(
        key: RsaPrivateKey,
        rng: &mut R,
    ) -> Result<Self, CryptoError> {
        let public = PublicIdentity::new(key.to_public_key())?;
        let mut rejection_key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(rejection_key.as_mut());
        Ok(PrivateIdentity {
            key,
            public,
            rejection_key,
        })
    }

    /// Parses a PKCS#8 DER private key.
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
        // implicit = HMAC-SHA256(rejection_key, label || ciphertext), computed
        // unconditionally so both paths do the same work.
        let mut mac = super::schedule::hmac_sha256(self.rejection_key.as_ref());
        mac.update(label);
        mac.update(ciphertext);
        let mut out = Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()));
        let decrypted = if ciphertext.len() == self.public.ciphertext_len() {
            self.key
                .decrypt_blinded(rng, Oaep::<Sha256>::new_with_label(label), ciphertext)
                .ok()
                .map(Zeroizing::new)
        } else {
            None
        };
        if let Some(plain) = decrypted
            && plain.len() == 32
        {
            out.copy_from_slice(&plain);
        }
        out
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
