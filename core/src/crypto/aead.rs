//! AES-GCM record protection with sequence-number nonces.
//!
//! `nonce = iv XOR (0x00000000 || seq as u64 big endian)`, `aad` = the
//! 2-byte record header. Each direction has its own [`RecordSealer`] /
//! [`RecordOpener`]; the sequence number starts at 0 for every key and the
//! key is replaced (`update`) by the next traffic secret on KEY_UPDATE.
//! A sequence number never wraps: at `u64::MAX` the key refuses to work.
//!
//! Two interchangeable AES-GCM providers produce identical bytes: RustCrypto
//! `aes-gcm` (default, pure Rust, the only one on microcontrollers) and, with
//! the `ring` feature, `ring`'s AES-GCM (host builds; ~3x faster with
//! AES-NI/VAES). The known-answer test below runs against whichever is built.

use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::CryptoError;
use super::schedule::{LABEL_IV, LABEL_KEY, Secret, expand, next_traffic_secret};
use crate::wire::handshake::Suite;
use crate::wire::record::TAG_LEN;

enum Cipher {
    #[cfg_attr(feature = "ring", allow(dead_code))]
    Aes128(Aes128Gcm),
    #[cfg_attr(feature = "ring", allow(dead_code))]
    Aes256(Aes256Gcm),
    #[cfg(feature = "ring")]
    Ring(ring::aead::LessSafeKey),
}

impl Cipher {
    fn new(suite: Suite, key: &[u8]) -> Cipher {
        #[cfg(feature = "ring")]
        {
            let alg = match suite {
                Suite::Aes128Gcm => &ring::aead::AES_128_GCM,
                Suite::Aes256Gcm => &ring::aead::AES_256_GCM,
            };
            if let Ok(k) = ring::aead::UnboundKey::new(alg, key) {
                return Cipher::Ring(ring::aead::LessSafeKey::new(k));
            }
        }
        // Key lengths match the suite by construction; a failure here would
        // be a bug, and falls back to an all-zero key only in that case.
        match suite {
            Suite::Aes128Gcm => Cipher::Aes128(
                Aes128Gcm::new_from_slice(key)
                    .unwrap_or_else(|_| Aes128Gcm::new(&Default::default())),
            ),
            Suite::Aes256Gcm => Cipher::Aes256(
                Aes256Gcm::new_from_slice(key)
                    .unwrap_or_else(|_| Aes256Gcm::new(&Default::default())),
            ),
        }
    }

    fn seal(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let n = Nonce::<Aes128Gcm>::from(nonce);
        let tag = match self {
            Cipher::Aes128(c) => c.encrypt_inout_detached(&n, aad, buf.into()),
            Cipher::Aes256(c) => c.encrypt_inout_detached(&n, aad, buf.into()),
            #[cfg(feature = "ring")]
            Cipher::Ring(k) => {
                let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
                let tag = k
                    .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), buf)
                    .map_err(|_| CryptoError::Encrypt)?;
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                return Ok(out);
            }
        }
        .map_err(|_| CryptoError::Encrypt)?;
        Ok(tag.into())
    }

    fn open(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        let n = Nonce::<Aes128Gcm>::from(nonce);
        let t = Tag::<Aes128Gcm>::from(*tag);
        match self {
            Cipher::Aes128(c) => c.decrypt_inout_detached(&n, aad, buf.into(), &t),
            Cipher::Aes256(c) => c.decrypt_inout_detached(&n, aad, buf.into(), &t),
            #[cfg(feature = "ring")]
            Cipher::Ring(k) => {
                let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
                return k
                    .open_in_place_separate_tag(
                        nonce,
                        ring::aead::Aad::from(aad),
                        ring::aead::Tag::from(*tag),
                        buf,
                        0..,
                    )
                    .map(|_| ())
                    .map_err(|_| CryptoError::Decrypt);
            }
        }
        .map_err(|_| CryptoError::Decrypt)
    }
}

struct TrafficKey {
    cipher: Cipher,
    iv: [u8; 12],
    seq: u64,
    secret: Secret,
    suite: Suite,
}

impl TrafficKey {
    fn new(suite: Suite, secret: Secret) -> Self {
        let prk = Hkdf::<Sha256>::from_prk(secret.as_ref())
            .unwrap_or_else(|_| Hkdf::<Sha256>::new(None, secret.as_ref()));
        let mut key = Zeroizing::new([0u8; 32]);
        let key = &mut key[..suite.key_len()];
        expand(&prk, &[LABEL_KEY], key);
        let mut iv = [0u8; 12];
        expand(&prk, &[LABEL_IV], &mut iv);
        let cipher = Cipher::new(suite, key);
        TrafficKey {
            cipher,
            iv,
            seq: 0,
            secret,
            suite,
        }
    }

    fn next_nonce(&mut self) -> Result<[u8; 12], CryptoError> {
        if self.seq == u64::MAX {
            return Err(CryptoError::SequenceExhausted);
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Ok(nonce)
    }

    fn update(&mut self) {
        let next = next_traffic_secret(&self.secret);
        *self = TrafficKey::new(self.suite, next);
    }
}

/// Seals outgoing records for one direction.
pub struct RecordSealer {
    key: TrafficKey,
}

impl RecordSealer {
    /// A sealer for the first key derived from `traffic_secret`.
    pub fn new(suite: Suite, traffic_secret: Secret) -> Self {
        RecordSealer {
            key: TrafficKey::new(suite, traffic_secret),
        }
    }

    /// Encrypts `plaintext` in place with `aad` and returns the tag.
    pub fn seal(&mut self, aad: &[u8], plaintext: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        let nonce = self.key.next_nonce()?;
        self.key.cipher.seal(nonce, aad, plaintext)
    }

    /// Records sealed under the current key.
    pub fn sequence(&self) -> u64 {
        self.key.seq
    }

    /// Switches to the next traffic secret; the sequence restarts at 0.
    pub fn update(&mut self) {
        self.key.update();
    }
}

/// Opens incoming records for one direction.
pub struct RecordOpener {
    key: TrafficKey,
}

impl RecordOpener {
    /// An opener for the first key derived from `traffic_secret`.
    pub fn new(suite: Suite, traffic_secret: Secret) -> Self {
        RecordOpener {
            key: TrafficKey::new(suite, traffic_secret),
        }
    }

    /// Decrypts `ciphertext` in place; any failure is final for the session.
    pub fn open(
        &mut self,
        aad: &[u8],
        ciphertext: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        let nonce = self.key.next_nonce()?;
        self.key.cipher.open(nonce, aad, ciphertext, tag)
    }

    /// Records opened under the current key.
    pub fn sequence(&self) -> u64 {
        self.key.seq
    }

    /// Switches to the next traffic secret; the sequence restarts at 0.
    pub fn update(&mut self) {
        self.key.update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(suite: Suite) -> (RecordSealer, RecordOpener) {
        (
            RecordSealer::new(suite, Zeroizing::new([5; 32])),
            RecordOpener::new(suite, Zeroizing::new([5; 32])),
        )
    }

    #[test]
    fn seal_open_roundtrip_both_suites_and_updates() {
        for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm] {
            let (mut s, mut o) = pair(suite);
            for round in 0..3 {
                let mut buf = *b"hello world";
                let tag = s.seal(&[0, 27], &mut buf).unwrap();
                assert_ne!(&buf, b"hello world");
                o.open(&[0, 27], &mut buf, &tag).unwrap();
                assert_eq!(&buf, b"hello world");
                if round == 1 {
                    s.update();
                    o.update();
                    assert_eq!(s.sequence(), 0);
                }
            }
        }
    }

    #[test]
    fn tamper_replay_and_reorder_fail() {
        let (mut s, mut o) = pair(Suite::Aes128Gcm);
        let mut a = *b"first";
        let ta = s.seal(&[0, 21], &mut a).unwrap();
        let mut b = *b"secnd";
        let tb = s.seal(&[0, 21], &mut b).unwrap();
        // Reordered: b under seq 0 fails.
        let mut b2 = b;
        assert_eq!(o.open(&[0, 21], &mut b2, &tb), Err(CryptoError::Decrypt));
        // The failed attempt consumed seq 0 — a real session is dead now.
        let (_, mut o) = pair(Suite::Aes128Gcm);
        let mut flipped = a;
        flipped[0] ^= 1;
        assert!(o.open(&[0, 21], &mut flipped, &ta).is_err());
        let (_, mut o) = pair(Suite::Aes128Gcm);
        assert!(
            o.open(&[0, 22], &mut a.clone(), &ta).is_err(),
            "aad is bound"
        );
        let (_, mut o) = pair(Suite::Aes128Gcm);
        let mut a1 = a;
        o.open(&[0, 21], &mut a1, &ta).unwrap();
        let mut replay = a;
        assert!(o.open(&[0, 21], &mut replay, &ta).is_err(), "replay fails");
    }

    /// NIST GCM test vector (gcmEncryptExtIV128, Count 0 with 16-byte PT),
    /// driven through the provider the sealer uses (RustCrypto or ring).
    #[test]
    fn aes128_gcm_known_answer() {
        let c = Cipher::new(Suite::Aes128Gcm, &[0u8; 16]);
        let mut pt = [0u8; 16];
        let tag = c.seal([0u8; 12], &[], &mut pt).unwrap();
        let ct = [
            0x03, 0x88, 0xda, 0xce, 0x60, 0xb6, 0xa3, 0x92, 0xf3, 0x28, 0xc2, 0xb9, 0x71, 0xb2,
            0xfe, 0x78,
        ];
        let want_tag = [
            0xab, 0x6e, 0x47, 0xd4, 0x2c, 0xec, 0x13, 0xbd, 0xf5, 0x3a, 0x67, 0xb2, 0x12, 0x57,
            0xbd, 0xdf,
        ];
        assert_eq!(pt, ct);
        assert_eq!(tag, want_tag);
        c.open([0u8; 12], &[], &mut pt, &tag).unwrap();
        assert_eq!(pt, [0u8; 16]);
    }

    /// Both providers agree byte for byte (run with `--features ring`).
    #[cfg(feature = "ring")]
    #[test]
    fn ring_and_rustcrypto_agree() {
        for (suite, klen) in [(Suite::Aes128Gcm, 16), (Suite::Aes256Gcm, 32)] {
            let key: [u8; 32] = core::array::from_fn(|i| i as u8 * 7);
            let ring = Cipher::new(suite, &key[..klen]);
            assert!(matches!(ring, Cipher::Ring(_)));
            let rc = match suite {
                Suite::Aes128Gcm => Cipher::Aes128(Aes128Gcm::new_from_slice(&key[..16]).unwrap()),
                Suite::Aes256Gcm => Cipher::Aes256(Aes256Gcm::new_from_slice(&key).unwrap()),
            };
            let mut a: [u8; 100] = core::array::from_fn(|i| i as u8);
            let mut b = a;
            let ta = ring.seal([9; 12], b"aad", &mut a).unwrap();
            let tb = rc.seal([9; 12], b"aad", &mut b).unwrap();
            assert_eq!((a, ta), (b, tb));
            rc.open([9; 12], b"aad", &mut a, &ta).unwrap();
            ring.open([9; 12], b"aad", &mut b, &tb).unwrap();
            assert_eq!(a, b);
        }
    }

    /// The record vectors of docs/PROTOCOL.md, Appendix A: PING(1) sealed
    /// under `ts = 05×32` at seq 0, seq 1, and seq 0 after a key update.
    #[test]
    fn protocol_appendix_a_records() {
        fn hex(s: &str) -> std::vec::Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        }
        let k = TrafficKey::new(Suite::Aes128Gcm, Zeroizing::new([5; 32]));
        assert_eq!(k.iv.to_vec(), hex("dd3aa0f5d01172047343bc17"));
        let mut sealer = RecordSealer::new(Suite::Aes128Gcm, Zeroizing::new([5; 32]));
        let one = |sealer: &mut RecordSealer| {
            let mut buf = [0x08, 0, 0, 0, 0, 0, 0, 0, 1];
            let tag = sealer.seal(&[0x00, 0x19], &mut buf).unwrap();
            let mut rec = std::vec![0x00, 0x19];
            rec.extend_from_slice(&buf);
            rec.extend_from_slice(&tag);
            rec
        };
        assert_eq!(
            one(&mut sealer),
            hex("00199ba99dd28aea8a07702b6dd29785abd87d5972016db5325962")
        );
        assert_eq!(
            one(&mut sealer),
            hex("00197f26419e5eb92272dd9701c752c1ac301897be45e1f42cf9aa")
        );
        sealer.update();
        assert_eq!(
            one(&mut sealer),
            hex("00191bbfd9e1fb34ffe6f427bdf2985bc156068168cb3e1a36caa1")
        );
    }

    #[test]
    fn nonce_is_iv_xor_sequence() {
        let mut k = TrafficKey::new(Suite::Aes128Gcm, Zeroizing::new([1; 32]));
        let iv = k.iv;
        assert_eq!(k.next_nonce().unwrap(), iv);
        let n1 = k.next_nonce().unwrap();
        assert_eq!(n1[11], iv[11] ^ 1);
        k.seq = u64::MAX;
        assert_eq!(k.next_nonce(), Err(CryptoError::SequenceExhausted));
    }
}
