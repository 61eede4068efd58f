//! The X25519 ephemeral key exchange of the handshake (RFC 7748).
//!
//! [`Ephemeral`] owns one side's ephemeral secret: it is built from 32
//! bytes the caller draws from the core's RNG (so known-answer vectors stay
//! reproducible), gives its public share, and computes the shared secret
//! with the peer's share, rejecting an all-zero result (a low-order peer
//! share, `docs/PROTOCOL.md`). With the `aws-lc` feature the arithmetic is
//! AWS-LC's (assembly on x86_64 and aarch64); otherwise, and always on
//! microcontrollers, `x25519-dalek`. Both are the same function of the same
//! bytes, so the choice never shows on the wire. The scalar is erased when
//! an [`Ephemeral`] is dropped (`x25519-dalek`'s `zeroize` feature; AWS-LC
//! cleanses every allocation it frees), as `docs/PROTOCOL.md` §4.4 asks.

use zeroize::Zeroizing;

use super::CryptoError;

/// One side's X25519 ephemeral secret and its public share.
pub struct Ephemeral {
    #[cfg(not(feature = "aws-lc"))]
    secret: x25519_dalek::StaticSecret,
    #[cfg(feature = "aws-lc")]
    secret: aws_lc_rs::agreement::PrivateKey,
    share: [u8; 32],
}

impl Ephemeral {
    /// The ephemeral key whose scalar is `bytes` (clamped as RFC 7748 says).
    #[cfg(not(feature = "aws-lc"))]
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, CryptoError> {
        let secret = x25519_dalek::StaticSecret::from(*bytes);
        let share = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Ok(Ephemeral { secret, share })
    }

    /// The ephemeral key whose scalar is `bytes` (clamped as RFC 7748 says).
    #[cfg(feature = "aws-lc")]
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, CryptoError> {
        use aws_lc_rs::agreement::{PrivateKey, X25519};
        let secret =
            PrivateKey::from_private_key(&X25519, bytes).map_err(|_| CryptoError::BadKey)?;
        let public = secret
            .compute_public_key()
            .map_err(|_| CryptoError::BadKey)?;
        let share = <[u8; 32]>::try_from(public.as_ref()).map_err(|_| CryptoError::BadKey)?;
        Ok(Ephemeral { secret, share })
    }

    /// This side's public share (the u-coordinate of `scalar · 9`).
    pub fn share(&self) -> &[u8; 32] {
        &self.share
    }

    /// X25519 with the peer's share; an all-zero result is
    /// [`CryptoError::WeakKeyShare`].
    #[cfg(not(feature = "aws-lc"))]
    pub fn agree(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        let bytes = Zeroizing::new(shared.to_bytes());
        if bool::from(subtle::ConstantTimeEq::ct_eq(&bytes[..], &[0u8; 32][..])) {
            return Err(CryptoError::WeakKeyShare);
        }
        Ok(bytes)
    }

    /// X25519 with the peer's share; an all-zero result is
    /// [`CryptoError::WeakKeyShare`].
    #[cfg(feature = "aws-lc")]
    pub fn agree(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        use aws_lc_rs::agreement::{UnparsedPublicKey, X25519, agree};
        // AWS-LC's X25519 fails when the result is all zeros (the share is
        // 32 bytes and every 32-byte string is a valid encoding); any other
        // failure would be an internal one, and is refused the same way.
        agree(
            &self.secret,
            UnparsedPublicKey::new(&X25519, peer),
            CryptoError::WeakKeyShare,
            |km| {
                let mut out = Zeroizing::new([0u8; 32]);
                if km.len() != 32 {
                    return Err(CryptoError::WeakKeyShare);
                }
                out.copy_from_slice(km);
                Ok(out)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// RFC 7748 §6.1: Alice's and Bob's keys and their shared secret.
    #[test]
    fn rfc7748_diffie_hellman() {
        let a = Ephemeral::from_bytes(&hex32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ))
        .unwrap();
        let b = Ephemeral::from_bytes(&hex32(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ))
        .unwrap();
        assert_eq!(
            *a.share(),
            hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            *b.share(),
            hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let k = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(*a.agree(b.share()).unwrap(), k);
        assert_eq!(*b.agree(a.share()).unwrap(), k);
    }

    /// The same function as `x25519-dalek` (the reference on every build)
    /// for a spread of scalars and peer shares, including non-canonical
    /// ones (high bit set, values >= p).
    #[test]
    fn matches_x25519_dalek() {
        let mut seed = [0x42u8; 32];
        for i in 0..64u8 {
            seed[0] = i;
            seed[31] = i.wrapping_mul(37);
            let mine = Ephemeral::from_bytes(&seed).unwrap();
            let reference = x25519_dalek::StaticSecret::from(seed);
            assert_eq!(
                *mine.share(),
                x25519_dalek::PublicKey::from(&reference).to_bytes()
            );
            let mut peer = [0u8; 32];
            for (j, p) in peer.iter_mut().enumerate() {
                *p = (j as u8).wrapping_mul(i).wrapping_add(0x55) ^ seed[j];
            }
            if i % 4 == 0 {
                peer[31] |= 0x80;
            }
            if i == 7 {
                // 2^255 - 19 + 1 (non-canonical encoding of 1 + p).
                peer = [0xff; 32];
                peer[0] = 0xee;
                peer[31] = 0x7f;
            }
            let expect = reference
                .diffie_hellman(&x25519_dalek::PublicKey::from(peer))
                .to_bytes();
            match mine.agree(&peer) {
                Ok(got) => assert_eq!(*got, expect, "scalar {i}"),
                Err(e) => {
                    assert_eq!(e, CryptoError::WeakKeyShare);
                    assert_eq!(expect, [0u8; 32], "scalar {i}");
                }
            }
        }
    }

    /// Low-order shares give the all-zero secret and are refused.
    #[test]
    fn low_order_shares_are_refused() {
        let me = Ephemeral::from_bytes(&[0x11; 32]).unwrap();
        let mut one = [0u8; 32];
        one[0] = 1;
        // 0, 1, and the order-8 point from RFC 7748 / libsodium's blocklist.
        let order8 = hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        for peer in [[0u8; 32], one, order8] {
            assert_eq!(me.agree(&peer).unwrap_err(), CryptoError::WeakKeyShare);
        }
    }
}
