//! The key schedule (HKDF-SHA256, RFC 5869) and the Finished MACs.
//!
//! ```text
//! th1   = SHA-256(ClientHello || ServerHello)            (whole messages)
//! ikm   = client_secret || server_secret || x25519(eph_c, eph_s)
//! prk   = HKDF-Extract(salt = "hytun/1", ikm)
//! c_fin = HKDF-Expand(prk, "hytun/1 c finished" || th1, 32)
//! s_fin = HKDF-Expand(prk, "hytun/1 s finished" || th1, 32)
//! c_ts0 = HKDF-Expand(prk, "hytun/1 c traffic"  || th1, 32)
//! s_ts0 = HKDF-Expand(prk, "hytun/1 s traffic"  || th1, 32)
//! ServerFinished.mac = HMAC-SHA256(s_fin, th1)
//! th2   = SHA-256(ClientHello || ServerHello || ServerFinished)
//! ClientFinished.mac = HMAC-SHA256(c_fin, th2)
//! key   = HKDF-Expand(ts_n, "hytun/1 key", key_len)   (from a traffic secret)
//! iv    = HKDF-Expand(ts_n, "hytun/1 iv", 12)
//! ts_n+1 = HKDF-Expand(ts_n, "hytun/1 update", 32)    (key update)
//! ```

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// A 32-byte secret that is wiped when dropped.
pub type Secret = Zeroizing<[u8; 32]>;

const SALT: &[u8] = b"hytun/1";
const LABEL_C_FINISHED: &[u8] = b"hytun/1 c finished";
const LABEL_S_FINISHED: &[u8] = b"hytun/1 s finished";
const LABEL_C_TRAFFIC: &[u8] = b"hytun/1 c traffic";
const LABEL_S_TRAFFIC: &[u8] = b"hytun/1 s traffic";
pub(crate) const LABEL_KEY: &[u8] = b"hytun/1 key";
pub(crate) const LABEL_IV: &[u8] = b"hytun/1 iv";
pub(crate) const LABEL_UPDATE: &[u8] = b"hytun/1 update";

/// All secrets the handshake derives from its inputs.
pub struct HandshakeSecrets {
    /// Key of the client's Finished MAC.
    pub client_finished: Secret,
    /// Key of the server's Finished MAC.
    pub server_finished: Secret,
    /// First client → server traffic secret.
    pub client_traffic: Secret,
    /// First server → client traffic secret.
    pub server_traffic: Secret,
}

/// HKDF-Expand with a 32-byte-or-shorter output; lengths are constants here,
/// so the length check inside `expand` cannot fail.
pub(crate) fn expand(prk: &Hkdf<Sha256>, parts: &[&[u8]], out: &mut [u8]) {
    if prk.expand_multi_info(parts, out).is_err() {
        // Unreachable for outputs ≤ 255·32 bytes; fail closed with zeros
        // would be worse than a loud stop in a debug build.
        debug_assert!(false, "HKDF output length");
        out.fill(0);
    }
}

/// Derives the handshake secrets (see the module doc for the formulas).
pub fn derive(
    client_secret: &[u8; 32],
    server_secret: &[u8; 32],
    shared: &[u8; 32],
    th1: &[u8; 32],
) -> HandshakeSecrets {
    let mut ikm = Zeroizing::new([0u8; 96]);
    ikm[..32].copy_from_slice(client_secret);
    ikm[32..64].copy_from_slice(server_secret);
    ikm[64..].copy_from_slice(shared);
    let prk = Hkdf::<Sha256>::new(Some(SALT), ikm.as_ref());
    let mut out = HandshakeSecrets {
        client_finished: Zeroizing::new([0; 32]),
        server_finished: Zeroizing::new([0; 32]),
        client_traffic: Zeroizing::new([0; 32]),
        server_traffic: Zeroizing::new([0; 32]),
    };
    expand(&prk, &[LABEL_C_FINISHED, th1], out.client_finished.as_mut());
    expand(&prk, &[LABEL_S_FINISHED, th1], out.server_finished.as_mut());
    expand(&prk, &[LABEL_C_TRAFFIC, th1], out.client_traffic.as_mut());
    expand(&prk, &[LABEL_S_TRAFFIC, th1], out.server_traffic.as_mut());
    out
}

/// A keyed HMAC-SHA256. HMAC takes keys of any length, so
/// `new_from_slice` cannot fail; the fallback only keeps this `unwrap`-free.
pub(crate) fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()))
}

/// `HMAC-SHA256(key, transcript_hash)`.
pub fn finished_mac(key: &[u8; 32], transcript_hash: &[u8; 32]) -> [u8; 32] {
    let mut mac = hmac_sha256(key);
    mac.update(transcript_hash);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a received Finished MAC.
pub fn verify_finished(key: &[u8; 32], transcript_hash: &[u8; 32], received: &[u8; 32]) -> bool {
    let mut mac = hmac_sha256(key);
    mac.update(transcript_hash);
    mac.verify_slice(received).is_ok()
}

/// The next traffic secret after a key update.
pub fn next_traffic_secret(current: &[u8; 32]) -> Secret {
    let prk =
        Hkdf::<Sha256>::from_prk(current).unwrap_or_else(|_| Hkdf::<Sha256>::new(None, current));
    let mut out = Zeroizing::new([0u8; 32]);
    expand(&prk, &[LABEL_UPDATE], out.as_mut());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_and_labels_give_distinct_secrets() {
        let s = derive(&[1; 32], &[2; 32], &[3; 32], &[4; 32]);
        let all = [
            &s.client_finished,
            &s.server_finished,
            &s.client_traffic,
            &s.server_traffic,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.as_ref(), b.as_ref());
            }
        }
        // Every input matters.
        let t = derive(&[1; 32], &[2; 32], &[3; 32], &[5; 32]);
        assert_ne!(s.client_traffic.as_ref(), t.client_traffic.as_ref());
        let u = derive(&[1; 32], &[9; 32], &[3; 32], &[4; 32]);
        assert_ne!(s.client_traffic.as_ref(), u.client_traffic.as_ref());
        assert_ne!(
            next_traffic_secret(&s.client_traffic).as_ref(),
            s.client_traffic.as_ref()
        );
    }

    #[test]
    fn finished_verifies_only_exact_mac() {
        let mac = finished_mac(&[7; 32], &[8; 32]);
        assert!(verify_finished(&[7; 32], &[8; 32], &mac));
        let mut bad = mac;
        bad[31] ^= 1;
        assert!(!verify_finished(&[7; 32], &[8; 32], &bad));
        assert!(!verify_finished(&[7; 32], &[9; 32], &mac));
    }

    fn hex(s: &str) -> std::vec::Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The key-schedule vectors of docs/PROTOCOL.md, Appendix A (computed
    /// there with an independent implementation): spec and code agree.
    #[test]
    fn protocol_appendix_a_key_schedule() {
        let s = derive(&[1; 32], &[2; 32], &[3; 32], &[4; 32]);
        assert_eq!(
            &s.client_finished[..],
            hex("6529a645f736bee318f52828a961416bc218b09750d5831f8667476f1838dfa1")
        );
        assert_eq!(
            &s.server_finished[..],
            hex("98bc8b7f7b2d2a1bfe59b0537adb3f7b51a625542daf277143749fff20e1b086")
        );
        assert_eq!(
            &s.client_traffic[..],
            hex("758249eca467df6690d2690dbe7d04db2bf204aa6f209779b0d82b2fba0adea3")
        );
        assert_eq!(
            &s.server_traffic[..],
            hex("e265502e61e813a7906d578111b91dff29e42ffc4961a2756a851ec10c0887d2")
        );
        assert_eq!(
            &finished_mac(&s.server_finished, &[4; 32])[..],
            hex("e3c14f345d984d690ad47a996e9148f3c30c389ba1d381242a252d88b34136c3")
        );
        assert_eq!(
            &next_traffic_secret(&[5; 32])[..],
            hex("c52e7dbc8a07417ec1fa47088124667dd3a1b9a39b7252f70eb1ae46e00b87d6")
        );
    }

    /// RFC 5869 test case 1, to pin the HKDF implementation this schedule uses.
    #[test]
    fn hkdf_rfc5869_case1() {
        let ikm = [0x0bu8; 22];
        let salt: [u8; 13] = core::array::from_fn(|i| i as u8);
        let info: [u8; 10] = core::array::from_fn(|i| 0xf0 + i as u8);
        let hk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
        let mut okm = [0u8; 42];
        expand(&hk, &[&info], &mut okm);
        let expected = [
            0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f, 0x64, 0xd0, 0x36,
            0x2f, 0x2a, 0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56,
            0xec, 0xc4, 0xc5, 0xbf, 0x34, 0x00, 0x72, 0x08, 0xd5, 0xb8, 0x87, 0x18, 0x58, 0x65,
        ];
        assert_eq!(okm, expected);
    }
}
