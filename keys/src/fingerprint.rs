//! Key fingerprints: SHA-256 over the DER `SubjectPublicKeyInfo` of an RSA
//! public key, shown OpenSSH-style as `SHA256:` followed by unpadded standard
//! base64. This module also owns the canonical SPKI DER encoding itself
//! ([`spki_der`]), written out by hand so that it is infallible and byte-for-byte
//! identical to `rsa`'s `EncodePublicKey::to_public_key_der` (checked by a test).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rsa::traits::PublicKeyParts;
use sha2::{Digest as _, Sha256};

use crate::RsaPublicKey;

/// SHA-256 of a public key's SubjectPublicKeyInfo DER.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The raw 32 digest bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SHA256:{}", STANDARD_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Computes the fingerprint of `key`.
#[must_use]
pub fn fingerprint(key: &RsaPublicKey) -> Fingerprint {
    let digest = Sha256::digest(spki_der(key));
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_slice());
    Fingerprint(out)
}

/// DER encoding of `key` as an X.509 SubjectPublicKeyInfo with the
/// `rsaEncryption` algorithm identifier (NULL parameters), i.e. exactly the
/// bytes inside a `-----BEGIN PUBLIC KEY-----` block.
#[must_use]
pub fn spki_der(key: &RsaPublicKey) -> Vec<u8> {
    // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
    let mut rsa_public_key = Vec::with_capacity(key.size() + 32);
    push_integer(&mut rsa_public_key, &key.n_bytes());
    push_integer(&mut rsa_public_key, &key.e_bytes());
    let rsa_public_key = tlv(TAG_SEQUENCE, &rsa_public_key);

    // subjectPublicKey BIT STRING: a zero "unused bits" octet, then the key.
    let mut bits = Vec::with_capacity(rsa_public_key.len() + 1);
    bits.push(0);
    bits.extend_from_slice(&rsa_public_key);

    let mut body = Vec::with_capacity(bits.len() + 32);
    body.extend_from_slice(&RSA_ALGORITHM_IDENTIFIER);
    body.extend_from_slice(&tlv(TAG_BIT_STRING, &bits));
    tlv(TAG_SEQUENCE, &body)
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }.
const RSA_ALGORITHM_IDENTIFIER: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// Appends a DER INTEGER holding the unsigned big-endian `magnitude`.
pub(crate) fn push_integer(out: &mut Vec<u8>, magnitude: &[u8]) {
    let first_nonzero = magnitude.iter().position(|&b| b != 0);
    let trimmed = match first_nonzero {
        Some(i) => &magnitude[i..],
        None => &[][..],
    };
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    // A set top bit would make the value negative; zero needs one octet.
    if trimmed.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    out.extend_from_slice(&tlv(TAG_INTEGER, &content));
}

/// Encodes one DER tag-length-value.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        // Short form; the cast cannot truncate because len < 128.
        out.push(len as u8);
    } else {
        let be = len.to_be_bytes();
        let skip = be.iter().take_while(|&&b| b == 0).count();
        let len_bytes = &be[skip..];
        // At most size_of::<usize>() (8) octets, so this fits in 7 bits.
        out.push(0x80 | len_bytes.len() as u8);
        out.extend_from_slice(len_bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{other_key, test_key};
    use rsa::pkcs8::EncodePublicKey as _;

    #[test]
    fn spki_der_matches_the_rsa_crate_encoding() {
        let public = test_key().to_public_key();
        let expected = match public.to_public_key_der() {
            Ok(doc) => doc.as_bytes().to_vec(),
            Err(e) => panic!("rsa crate failed to encode: {e}"),
        };
        assert_eq!(spki_der(&public), expected);
    }

    #[test]
    fn fingerprint_is_sha256_of_spki_der() {
        let public = test_key().to_public_key();
        let digest = Sha256::digest(spki_der(&public));
        assert_eq!(
            fingerprint(&public).as_bytes().as_slice(),
            digest.as_slice()
        );
    }

    #[test]
    fn fingerprint_display_is_openssh_style() {
        let shown = fingerprint(&test_key().to_public_key()).to_string();
        let b64 = match shown.strip_prefix("SHA256:") {
            Some(rest) => rest,
            None => panic!("missing prefix: {shown}"),
        };
        assert_eq!(b64.len(), 43, "{shown}");
        assert!(!b64.contains('='));
        assert!(
            b64.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        );
        // Known vector: all-zero digest.
        assert_eq!(
            Fingerprint([0; 32]).to_string(),
            "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        );
    }

    #[test]
    fn different_keys_have_different_fingerprints() {
        let a = fingerprint(&test_key().to_public_key());
        let b = fingerprint(&other_key().to_public_key());
        assert_ne!(a, b);
        assert_eq!(a, fingerprint(&test_key().to_public_key()));
    }

    #[test]
    fn der_helpers_encode_lengths_and_signs() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0u8; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        let longer = tlv(0x04, &[0u8; 300]);
        assert_eq!(&longer[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let mut v = Vec::new();
        push_integer(&mut v, &[0x00, 0x80]);
        assert_eq!(v, vec![0x02, 2, 0x00, 0x80]);
        v.clear();
        push_integer(&mut v, &[0x01, 0x00, 0x01]);
        assert_eq!(v, vec![0x02, 3, 0x01, 0x00, 0x01]);
        v.clear();
        push_integer(&mut v, &[]);
        assert_eq!(v, vec![0x02, 1, 0x00]);
    }
}
