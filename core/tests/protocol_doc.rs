//! `docs/PROTOCOL.md` Appendix A, checked against the code.
//!
//! Every `name = hex` entry and every PEM key in Appendix A is parsed out of
//! the document and compared with a value computed here (through
//! `hytun-core` for the key schedule and records, from the committed
//! session vectors in `tests/vectors/` for the whole-handshake values,
//! which `vectors.rs` in turn pins to the code byte for byte). The set of
//! entries must match exactly: a vector added to the appendix without a
//! check here, or a check whose entry was removed, fails the test. The
//! §2.3 fingerprint example is checked against the appendix's key, and the
//! inline byte examples of §3.5 (Alert) and §7.2 (OPEN) against the
//! encoders.

mod common;

use std::collections::BTreeMap;

use common::*;
use hytun_core::crypto::RecordSealer;
use hytun_core::crypto::schedule;
use hytun_core::crypto::schedule::Secret;
use hytun_core::wire::frame::Frame;
use hytun_core::wire::handshake::{HEADER_LEN, Suite};
use sha2::{Digest, Sha256};

const DOC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"));

/// Hex digits per line of a long value in the appendix.
const HEX_LINE: usize = 64;

// ------------------------------------------------------------ parsing --

/// The text of Appendix A.
fn appendix() -> &'static str {
    let at = DOC
        .find("\n## Appendix A")
        .expect("PROTOCOL.md has an Appendix A");
    &DOC[at..]
}

/// Lines inside fenced code blocks, with the `### A.n` heading in force.
fn code_lines(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut section = String::from("A");
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            out.push((section.clone(), line.to_string()));
        } else if let Some(h) = line.strip_prefix("### ") {
            section = h.split_whitespace().next().unwrap_or("").to_string();
        }
    }
    out
}

/// `section/name -> bytes` for every `name = hex` entry (continued on the
/// following indented lines of hex digits).
fn doc_entries() -> BTreeMap<String, Vec<u8>> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_pem = false;
    for (section, line) in code_lines(appendix()) {
        if line.starts_with("-----BEGIN") {
            in_pem = true;
        }
        if in_pem {
            in_pem = !line.starts_with("-----END");
            current = None;
            continue;
        }
        if let Some((name, value)) = line
            .split_once(" = ")
            .or_else(|| line.strip_suffix(" =").map(|n| (n, "")))
        {
            let key = format!("{section}/{}", name.trim());
            assert!(!map.contains_key(&key), "duplicate entry {key}");
            map.insert(key.clone(), value.trim().to_string());
            current = Some(key);
        } else if let Some(key) = &current {
            let t = line.trim();
            assert!(
                !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()),
                "unexpected line in {key}: {line:?}"
            );
            map.get_mut(key).unwrap().push_str(t);
        }
    }
    map.into_iter().map(|(k, v)| (k, from_hex(&v))).collect()
}

/// The DER of every PEM block in the appendix, in order, with its label.
fn doc_pems() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, String)> = None;
    for (_, line) in code_lines(appendix()) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            cur = Some((label.to_string(), String::new()));
        } else if line.starts_with("-----END") {
            let (label, b64) = cur.take().expect("END without BEGIN");
            out.push((label, base64_decode(&b64)));
        } else if let Some((_, b64)) = cur.as_mut() {
            b64.push_str(line.trim());
        }
    }
    out
}

fn from_hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd number of hex digits");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = B64.iter().position(|&x| x == c).expect("base64 digit") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Standard alphabet, no padding (the fingerprint form of §2.3).
fn base64_unpadded(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let v = chunk.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b)) << (8 * (3 - n));
        for i in 0..=n {
            out.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

// ------------------------------------------------------- computation --

fn secret(bytes: [u8; 32]) -> Secret {
    zeroize::Zeroizing::new(bytes)
}

/// HKDF-Expand from a traffic secret used as the PRK (§4.8, §4.9).
fn expand(ts: &[u8; 32], label: &[u8], len: usize) -> Vec<u8> {
    let hk = hkdf::Hkdf::<Sha256>::from_prk(ts).unwrap();
    let mut out = vec![0u8; len];
    hk.expand(label, &mut out).unwrap();
    out
}

/// One record sealed with `sealer` holding `plain`.
fn seal(sealer: &mut RecordSealer, plain: &[u8]) -> Vec<u8> {
    let hdr = ((plain.len() + 16) as u16).to_be_bytes();
    let mut body = plain.to_vec();
    let tag = sealer.seal(&hdr, &mut body).unwrap();
    [&hdr[..], &body, &tag].concat()
}

fn hex_file(name: &str) -> Vec<u8> {
    let text = String::from_utf8(vector(name)).unwrap();
    from_hex(&text.split_whitespace().collect::<String>())
}

/// Every value Appendix A must show, computed.
fn expected_entries() -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: &[u8]| {
        assert!(m.insert(k.to_string(), v.to_vec()).is_none(), "{k} twice");
    };

    // A.1 key schedule from fixed inputs.
    let th1 = [4u8; 32];
    let s = schedule::derive(&[1; 32], &[2; 32], &[3; 32], &th1);
    put("A.1/c_fin", &s.client_finished[..]);
    put("A.1/s_fin", &s.server_finished[..]);
    put("A.1/c_ts0", &s.client_traffic[..]);
    put("A.1/s_ts0", &s.server_traffic[..]);
    put(
        "A.1/HMAC-SHA256(s_fin, th1)",
        &schedule::finished_mac(&s.server_finished, &th1),
    );

    // A.2 traffic keys and records from ts = 05×32.
    let ts = [5u8; 32];
    put("A.2/key (AES-128)", &expand(&ts, b"hytun/1 key", 16));
    put("A.2/key (AES-256)", &expand(&ts, b"hytun/1 key", 32));
    put("A.2/iv", &expand(&ts, b"hytun/1 iv", 12));
    put("A.2/ts_1 (update)", &schedule::next_traffic_secret(&ts)[..]);
    let mut ping = [0u8; 9];
    Frame::Ping { opaque: 1 }.emit(&mut ping).unwrap();
    let mut s128 = RecordSealer::new(Suite::Aes128Gcm, secret(ts));
    put("A.2/AES-128 seq 0", &seal(&mut s128, &ping));
    put("A.2/AES-128 seq 1", &seal(&mut s128, &ping));
    s128.update();
    put("A.2/AES-128 seq 0 after update", &seal(&mut s128, &ping));
    let mut s256 = RecordSealer::new(Suite::Aes256Gcm, secret(ts));
    put("A.2/AES-256 seq 0", &seal(&mut s256, &ping));
    put("A.2/AES-256 seq 1", &seal(&mut s256, &ping));

    // A.4 the committed session (tests/vectors/), cut into its units.
    let c2s = hex_file("handshake_c2s.hex");
    let s2c = hex_file("handshake_s2c.hex");
    let ch_len = HEADER_LEN + usize::from(u16::from_be_bytes([c2s[1], c2s[2]]));
    let sh_len = HEADER_LEN + usize::from(u16::from_be_bytes([s2c[1], s2c[2]]));
    let fin = HEADER_LEN + 32;
    let (ch, c_fin_msg, c_rec) = (
        &c2s[..ch_len],
        &c2s[ch_len..ch_len + fin],
        &c2s[ch_len + fin..],
    );
    let (sh, s_fin_msg, s_rec) = (
        &s2c[..sh_len],
        &s2c[sh_len..sh_len + fin],
        &s2c[sh_len + fin..],
    );
    let secrets_in = session_inputs(ch, sh);
    let th1: [u8; 32] = Sha256::new()
        .chain_update(ch)
        .chain_update(sh)
        .finalize()
        .into();
    let th2: [u8; 32] = Sha256::new()
        .chain_update(ch)
        .chain_update(sh)
        .chain_update(s_fin_msg)
        .finalize()
        .into();
    let ks = schedule::derive(
        &secrets_in.client_secret,
        &secrets_in.server_secret,
        &secrets_in.shared,
        &th1,
    );
    assert_eq!(
        &s_fin_msg[HEADER_LEN..],
        &schedule::finished_mac(&ks.server_finished, &th1)
    );
    assert_eq!(
        &c_fin_msg[HEADER_LEN..],
        &schedule::finished_mac(&ks.client_finished, &th2)
    );
    put("A.4/client_ephemeral", &secrets_in.client_ephemeral);
    put("A.4/client_secret", &secrets_in.client_secret);
    put("A.4/server_secret", &secrets_in.server_secret);
    put("A.4/shared", &secrets_in.shared);
    put("A.4/ClientHello", ch);
    put("A.4/ServerHello", sh);
    put("A.4/th1", &th1);
    put("A.4/c_fin", &ks.client_finished[..]);
    put("A.4/s_fin", &ks.server_finished[..]);
    put("A.4/c_ts0", &ks.client_traffic[..]);
    put("A.4/s_ts0", &ks.server_traffic[..]);
    put("A.4/Finished (server)", s_fin_msg);
    put("A.4/th2", &th2);
    put("A.4/Finished (client)", c_fin_msg);
    put("A.4/record C->S seq 0", c_rec);
    put("A.4/record S->C seq 0", s_rec);
    m
}

struct SessionInputs {
    client_ephemeral: [u8; 32],
    client_secret: [u8; 32],
    server_secret: [u8; 32],
    shared: [u8; 32],
}

/// The secrets behind the committed session: RSA-OAEP decryption with the
/// committed private keys; the client's ephemeral scalar is the first draw
/// of `TestRng::new("session")` (see `tests/vectors/README.md`).
fn session_inputs(ch: &[u8], sh: &[u8]) -> SessionInputs {
    use hytun_core::wire::handshake::{ClientHello, ServerHello};
    use rand_core::Rng as _;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::{Oaep, PrivateKey};
    use x25519_dalek::{PublicKey, StaticSecret};

    let ch = ClientHello::parse(&ch[HEADER_LEN..]).unwrap();
    let sh = ServerHello::parse(&sh[HEADER_LEN..]).unwrap();
    let unwrap = |key: &str, label: &'static [u8], ct: &[u8]| -> [u8; 32] {
        PrivateKey::from_pkcs8_der(&vector(key))
            .unwrap()
            .decrypt(Oaep::<Sha256>::new_with_label(label), ct)
            .unwrap()
            .try_into()
            .unwrap()
    };
    let mut client_ephemeral = [0u8; 32];
    TestRng::new("session").fill_bytes(&mut client_ephemeral);
    let eph = StaticSecret::from(client_ephemeral);
    assert_eq!(PublicKey::from(&eph).as_bytes(), ch.key_share);
    SessionInputs {
        client_ephemeral,
        client_secret: unwrap(
            "server.key.der",
            b"hytun/1 client secret",
            ch.encrypted_secret,
        ),
        server_secret: unwrap(
            "client.key.der",
            b"hytun/1 server secret",
            sh.encrypted_secret,
        ),
        shared: *eph
            .diffie_hellman(&PublicKey::from(*sh.key_share))
            .as_bytes(),
    }
}

/// `expected` in the appendix's own notation, to paste when it changes.
fn render(expected: &BTreeMap<String, Vec<u8>>) -> String {
    let mut out = String::new();
    for (k, v) in expected {
        let h = hex(v);
        if h.len() <= HEX_LINE {
            out.push_str(&format!("{k} = {h}\n"));
        } else {
            out.push_str(&format!("{k} =\n"));
            for line in h.as_bytes().chunks(HEX_LINE) {
                out.push_str(&format!("  {}\n", std::str::from_utf8(line).unwrap()));
            }
        }
    }
    out
}

// --------------------------------------------------------------- tests --

#[test]
fn appendix_a_values_match_the_code() {
    let doc = doc_entries();
    let want = expected_entries();
    let doc_keys: Vec<&String> = doc.keys().collect();
    let want_keys: Vec<&String> = want.keys().collect();
    assert_eq!(
        doc_keys,
        want_keys,
        "Appendix A entries differ from the checked set; expected:\n{}",
        render(&want)
    );
    for (k, v) in &want {
        assert_eq!(
            hex(&doc[k]),
            hex(v),
            "Appendix A `{k}` is wrong; expected:\n{}",
            render(&want)
        );
    }
}

#[test]
fn appendix_a_keys_are_the_committed_test_keys() {
    let pems = doc_pems();
    let want = [
        ("PUBLIC KEY", "client.pub.der"),
        ("PUBLIC KEY", "server.pub.der"),
        ("PRIVATE KEY", "client.key.der"),
        ("PRIVATE KEY", "server.key.der"),
    ];
    assert_eq!(pems.len(), want.len(), "PEM blocks in Appendix A");
    for ((label, der), (want_label, file)) in pems.iter().zip(want) {
        assert_eq!(label, want_label, "{file}");
        assert_eq!(hex(der), hex(&vector(file)), "{file}");
    }
}

#[test]
fn fingerprint_example_is_the_appendix_client_key() {
    let client_pub = &doc_pems()[0].1;
    let fp = format!("SHA256:{}", base64_unpadded(&Sha256::digest(client_pub)));
    assert_eq!(fp.len(), 50);
    let section = &DOC[DOC.find("### 2.3").unwrap()..DOC.find("## 3.").unwrap()];
    assert!(
        section.contains(&format!("`{fp}`")),
        "§2.3 must show the fingerprint {fp} of the Appendix A client key"
    );
}

#[test]
fn base64_helpers_roundtrip() {
    assert_eq!(base64_unpadded(b"foob"), "Zm9vYg");
    assert_eq!(base64_decode("Zm9vYg=="), b"foob");
    assert_eq!(base64_decode("Zm9vYmFy"), b"foobar");
}

/// The first backticked hex string after `marker` in the document.
fn inline_hex_after(marker: &str) -> Vec<u8> {
    let at = DOC
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not found"))
        + marker.len();
    let rest = &DOC[at..];
    let start = rest.find('`').unwrap() + 1;
    let end = start + rest[start..].find('`').unwrap();
    from_hex(&rest[start..end].split_whitespace().collect::<String>())
}

#[test]
fn inline_byte_examples_match_the_encoders() {
    use hytun_core::wire::handshake::AlertReason;
    use hytun_core::{Destination, Host, StreamId};

    // §3.5: an Unauthorized alert.
    let mut out = [0u8; 64];
    let n = hytun_core::handshake::emit_alert(AlertReason::Unauthorized, None, &mut out);
    assert_eq!(
        hex(&out[..n]),
        hex(&inline_hex_after("Total 5 or 37 bytes, e.g."))
    );

    // §7.2: OPEN for origin.test:80, id 1, window 262144.
    let open = Frame::Open {
        id: StreamId(1),
        window: 262_144,
        dest: Destination {
            host: Host::Domain("origin.test"),
            port: 80,
        },
    };
    let n = open.emit(&mut out).unwrap();
    assert_eq!(n, 24);
    assert_eq!(
        hex(&out[..n]),
        hex(&inline_hex_after(
            "Example: OPEN for `origin.test:80`, id 1, window 262144:"
        ))
    );
}
