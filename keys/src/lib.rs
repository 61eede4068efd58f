//! `hytun-keys` owns everything the host tool does with RSA key *files*:
//! generating long-term keys, writing them as PEM with safe permissions,
//! loading private keys, public keys and `authorized_keys` files with errors
//! that always name the file involved, and computing the SHA-256 fingerprints
//! that operators compare out of band. It knows nothing about the tunnel
//! protocol itself; `hytun-core` consumes the keys this crate produces.
//!
//! Accepted formats: PKCS#8 (`BEGIN PRIVATE KEY`) and PKCS#1
//! (`BEGIN RSA PRIVATE KEY`) private keys, SPKI (`BEGIN PUBLIC KEY`) and
//! PKCS#1 (`BEGIN RSA PUBLIC KEY`) public keys, all unencrypted, with moduli
//! of 2048 to 4096 bits. Written files are always PKCS#8 / SPKI.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

mod error;
mod fingerprint;
mod load;
mod options;
mod pem;
mod write;

pub use error::{KeyError, KeyKind};
pub use fingerprint::{Fingerprint, fingerprint, spki_der};
pub use load::{AuthorizedKey, load_authorized_keys, load_private_key, load_public_key};
pub use options::{KeyOptions, parse_key_options};
pub use write::{KeyPaths, SUPPORTED_GENERATE_BITS, generate, write_keypair};

/// RSA private key type used throughout hytun (`rsa::PrivateKey`).
pub type RsaPrivateKey = rsa::PrivateKey;
/// RSA public key type used throughout hytun (`rsa::PublicKey`).
pub type RsaPublicKey = rsa::PublicKey;

/// Smallest modulus, in bits, accepted when loading a key.
pub const MIN_KEY_BITS: usize = 2048;
/// Largest modulus, in bits, accepted when loading a key.
pub const MAX_KEY_BITS: usize = 4096;

/// Returns the modulus size of `key` in bits.
#[must_use]
pub fn key_bits(key: &RsaPublicKey) -> usize {
    use rsa::traits::PublicKeyParts;
    key.n().bit_width_vartime() as usize
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Shared fixtures for the unit tests: one 2048-bit key generated once.

    use std::sync::OnceLock;

    use crate::RsaPrivateKey;

    /// A 2048-bit key generated on first use and shared by every test.
    pub(crate) fn test_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| match crate::generate(2048) {
            Ok(key) => key,
            Err(e) => panic!("test key generation failed: {e}"),
        })
    }

    /// A second, different 2048-bit key.
    pub(crate) fn other_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| match crate::generate(2048) {
            Ok(key) => key,
            Err(e) => panic!("test key generation failed: {e}"),
        })
    }
}
