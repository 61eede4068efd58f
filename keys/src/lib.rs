//! `hytun-keys` owns everything the host tool does with RSA key *files*:
//! generating long-term keys, writing them as PEM with safe permissions,
//! loading private keys, public keys and `authorized_keys` files with errors
//! that always name the file involved, and computing the SHA-256 fingerprints
//! that operators compare out of band. It knows nothing about the tunnel
//! protocol itself; `hytun-core` consumes the keys this crate produces.
//!
//! Accepted formats: PKCS#8 (`BEGIN PRIVATE KEY`) and PKCS#1
//! (`BEGIN RSA PRIVATE KEY`) private keys, SPKI (`BEGIN PUBLIC KEY`) and
//! PKCS#1 (`BEGIN RSA PUBLIC KEY`) public keys and OpenSSH `ssh-rsa` lines,
//! all unencrypted, with moduli of 2048 to 4096 bits. Written files are
//! always PKCS#8 / SPKI. Files that decide who may connect, and the
//! directories above keys, must pass sshd-style StrictModes checks
//! (`strict`).

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

mod error;
mod fingerprint;
mod load;
mod openssh;
mod options;
mod pem;
mod strict;
mod write;

pub use error::{KeyError, KeyKind};
pub use fingerprint::{Fingerprint, fingerprint, spki_der};
pub use load::{
    AuthorizedKey, KeyListing, fingerprint_file, load_authorized_keys, load_private_key,
    load_public_key,
};
pub use options::{KeyOptions, parse_key_options};
pub use strict::{Insecurity, check_secure_dirs, check_secure_file};
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

    use base64::Engine as _;
    use rsa::traits::PublicKeyParts as _;

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

    /// The OpenSSH encoding of `key`, as `ssh-keygen` writes it.
    pub(crate) fn ssh_rsa_line(key: &crate::RsaPublicKey, comment: &str) -> String {
        let mut blob = Vec::new();
        let mut put = |bytes: &[u8]| {
            blob.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            blob.extend_from_slice(bytes);
        };
        let mpint = |magnitude: Vec<u8>| {
            let mut v: Vec<u8> = magnitude.into_iter().skip_while(|&b| b == 0).collect();
            if v.first().is_some_and(|b| b & 0x80 != 0) {
                v.insert(0, 0);
            }
            v
        };
        put(b"ssh-rsa");
        put(&mpint(key.e_bytes().to_vec()));
        put(&mpint(key.n_bytes().to_vec()));
        format!(
            "ssh-rsa {} {comment}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }
}
