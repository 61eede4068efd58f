//! Known-answer vectors: the exact bytes of a complete session with the
//! committed keys and fixed RNGs (see `tests/vectors/README.md`).
//!
//! * `session_matches_committed_vectors` replays the session through the
//!   `common::Pair` harness and compares every byte each direction with
//!   `tests/vectors/handshake_{c2s,s2c}.hex` and the message layout with
//!   `handshake_layout.txt`. With `HYTUN_REGENERATE_VECTORS=1` it rewrites
//!   the three files instead (then review the diff).
//! * `captured_hellos_have_expected_fields` decodes the committed bytes with
//!   the wire parsers only.
//! * `key_schedule_recomputed_independently` rebuilds the whole key schedule
//!   from the committed bytes with the RSA, X25519, HKDF, HMAC and AES-GCM
//!   crates directly (not through hytun-core's crypto module), checks both
//!   Finished MACs and decrypts every record to the expected frames.

mod common;

use std::fmt::Write as _;

use common::*;
use hytun_core::wire::frame::Frame;
use hytun_core::wire::handshake::{
    ClientHello, Finished, HEADER_LEN, HandshakeHeader, MAGIC, ServerHello, TYPE_CLIENT_HELLO,
    TYPE_FINISHED, TYPE_SERVER_HELLO,
};
use hytun_core::wire::record;
use hytun_core::{Destination, Host, SessionConfig, StreamId};
use sha2::{Digest, Sha256};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi";
const C2S_FILE: &str = "handshake_c2s.hex";
const S2C_FILE: &str = "handshake_s2c.hex";
const LAYOUT_FILE: &str = "handshake_layout.txt";
/// Hex digits per line in the `.hex` files.
const HEX_LINE: usize = 64;

/// Both directions of the session, with the step that produced each part.
struct Capture {
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    /// `(end offset c2s, end offset s2c, step)` after each step.
    steps: Vec<(usize, usize, &'static str)>,
}

/// The scripted session: handshake, one stream to `origin.test:80` with an
/// HTTP request and response, FIN both ways.
fn run_session() -> Capture {
    let mut p = default_pair();
    let mut steps = Vec::new();
    let (c, s) = p.handshake();
    assert_eq!(c, vec![Ev::Connected]);
    assert_eq!(s, vec![Ev::Connected]);
    steps.push((p.wire_c2s.len(), p.wire_s2c.len(), "handshake"));

    let id = p
        .client
        .open_stream(Destination {
            host: Host::Domain("origin.test"),
            port: 80,
        })
        .unwrap();
    assert_eq!(id, StreamId(1));
    assert_eq!(p.client.stream_send(id, REQUEST).unwrap(), REQUEST.len());
    p.client.stream_finish(id).unwrap();
    let (c, s) = p.pump();
    assert_eq!(c, vec![]);
    assert_eq!(
        s,
        vec![
            Ev::OpenRequest(id, "origin.test:80".into()),
            Ev::Data(id, REQUEST.to_vec()),
            Ev::Finished(id)
        ]
    );
    steps.push((
        p.wire_c2s.len(),
        p.wire_s2c.len(),
        "request (client: OPEN, DATA, FIN)",
    ));

    p.server.accept_stream(id).unwrap();
    assert_eq!(p.server.stream_send(id, RESPONSE).unwrap(), RESPONSE.len());
    p.server.stream_finish(id).unwrap();
    let (c, s) = p.pump();
    assert_eq!(
        c,
        vec![
            Ev::Opened(id),
            Ev::Data(id, RESPONSE.to_vec()),
            Ev::Finished(id)
        ]
    );
    assert_eq!(s, vec![]);
    steps.push((
        p.wire_c2s.len(),
        p.wire_s2c.len(),
        "response (server: OPEN_OK, DATA, FIN)",
    ));

    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.server.stream_count(), 0);
    assert!(p.client.is_established() && p.server.is_established());
    Capture {
        c2s: p.wire_c2s.clone(),
        s2c: p.wire_s2c.clone(),
        steps,
    }
}

// ------------------------------------------------------------- helpers --

fn vectors_dir() -> String {
    format!("{}/tests/vectors", env!("CARGO_MANIFEST_DIR"))
}

fn to_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(hex, "{b:02x}").unwrap();
    }
    let mut out = String::new();
    for line in hex.as_bytes().chunks(HEX_LINE) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).expect("hex digit"))
        .collect()
}

fn read_hex(name: &str) -> Vec<u8> {
    let path = format!("{}/{name}", vectors_dir());
    from_hex(
        &std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e} (regenerate with HYTUN_REGENERATE_VECTORS=1)")),
    )
}

/// One unit on the wire: a handshake message or a record.
#[derive(Debug, Clone)]
struct Unit {
    start: usize,
    end: usize,
    what: String,
}

/// Splits one direction into its two cleartext handshake messages and the
/// records after them.
fn split(wire: &[u8], client: bool) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut off = 0;
    for _ in 0..2 {
        let hdr = HandshakeHeader::parse(wire[off..off + HEADER_LEN].try_into().unwrap()).unwrap();
        let end = off + HEADER_LEN + hdr.body_len;
        let name = match hdr.msg_type {
            TYPE_CLIENT_HELLO => "ClientHello".to_string(),
            TYPE_SERVER_HELLO => "ServerHello".to_string(),
            TYPE_FINISHED => format!("Finished ({})", if client { "client" } else { "server" }),
            t => panic!("unexpected handshake message type {t:#x}"),
        };
        units.push(Unit {
            start: off,
            end,
            what: format!("{name}, body {} bytes", hdr.body_len),
        });
        off = end;
    }
    let mut n = 0;
    while off < wire.len() {
        let len = record::parse_header(&[wire[off], wire[off + 1]], 16384).unwrap();
        let end = off + record::HEADER_LEN + len;
        assert!(end <= wire.len(), "truncated record at {off}");
        units.push(Unit {
            start: off,
            end,
            what: format!(
                "record #{n}: {} plaintext bytes + 16-byte tag",
                len - record::TAG_LEN
            ),
        });
        off = end;
        n += 1;
    }
    units
}

fn layout(cap: &Capture) -> String {
    let mut out = String::new();
    writeln!(
        out,
        "# Generated by core/tests/vectors.rs (HYTUN_REGENERATE_VECTORS=1); do not edit."
    )
    .unwrap();
    writeln!(
        out,
        "# direction  [start, end)  unit  (step that produced it)"
    )
    .unwrap();
    for (dir, wire, client) in [("c2s", &cap.c2s, true), ("s2c", &cap.s2c, false)] {
        for u in split(wire, client) {
            let end_of = |(c, s, _): &(usize, usize, &str)| if client { *c } else { *s };
            let step = cap
                .steps
                .iter()
                .find(|st| u.end <= end_of(st))
                .map_or("?", |st| st.2);
            writeln!(out, "{dir}  [{}, {})  {}  ({step})", u.start, u.end, u.what).unwrap();
        }
        writeln!(out, "{dir}  total {} bytes", wire.len()).unwrap();
    }
    out
}

/// Panics with the unit in which two byte strings first differ.
fn assert_same_bytes(dir: &str, got: &[u8], want: &[u8], client: bool) {
    if got == want {
        return;
    }
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let unit = split(want, client).into_iter().find(|u| first < u.end);
    panic!(
        "{dir}: differs from the committed vector at byte {first} (got {} bytes, want {}); in {:?}. \
         If the change is intended, regenerate with HYTUN_REGENERATE_VECTORS=1 and review the diff.",
        got.len(),
        want.len(),
        unit.map(|u| u.what)
    );
}

// --------------------------------------------------------------- tests --

#[test]
fn session_matches_committed_vectors() {
    let cap = run_session();
    // The run is deterministic: a second run gives the same bytes.
    let again = run_session();
    assert_eq!(cap.c2s, again.c2s, "c2s not deterministic");
    assert_eq!(cap.s2c, again.s2c, "s2c not deterministic");

    let dir = vectors_dir();
    if std::env::var_os("HYTUN_REGENERATE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(format!("{dir}/{C2S_FILE}"), to_hex(&cap.c2s)).unwrap();
        std::fs::write(format!("{dir}/{S2C_FILE}"), to_hex(&cap.s2c)).unwrap();
        std::fs::write(format!("{dir}/{LAYOUT_FILE}"), layout(&cap)).unwrap();
        eprintln!("rewrote {dir}/{{{C2S_FILE},{S2C_FILE},{LAYOUT_FILE}}}");
        return;
    }
    assert_same_bytes("c2s", &cap.c2s, &read_hex(C2S_FILE), true);
    assert_same_bytes("s2c", &cap.s2c, &read_hex(S2C_FILE), false);
    let want = std::fs::read_to_string(format!("{dir}/{LAYOUT_FILE}")).unwrap();
    assert_eq!(
        layout(&cap),
        want,
        "message layout differs from {LAYOUT_FILE}"
    );
}

#[test]
fn hex_format_roundtrips() {
    let bytes: Vec<u8> = (0..=255u8).chain(0..7).collect();
    let hex = to_hex(&bytes);
    assert!(hex.lines().all(|l| l.len() <= HEX_LINE));
    assert_eq!(hex.lines().next().unwrap().len(), HEX_LINE);
    assert_eq!(from_hex(&hex), bytes);
}

/// The committed ClientHello and ServerHello, decoded with the wire
/// parsers only.
#[test]
fn captured_hellos_have_expected_fields() {
    let c2s = read_hex(C2S_FILE);
    let s2c = read_hex(S2C_FILE);
    let client_id: [u8; 32] = Sha256::digest(vector("client.pub.der")).into();
    let server_id: [u8; 32] = Sha256::digest(vector("server.pub.der")).into();

    let units = split(&c2s, true);
    let ch_unit = &units[0];
    assert_eq!(c2s[0], TYPE_CLIENT_HELLO);
    let ch = ClientHello::parse(&c2s[HEADER_LEN..ch_unit.end]).unwrap();
    assert_eq!(&c2s[HEADER_LEN..HEADER_LEN + 4], &MAGIC);
    assert_eq!(ch.version, 2);
    assert_eq!(ch.suites, &[1, 2]);
    assert_eq!(ch.max_record, 16384);
    assert_eq!(ch.client_key_id, &client_id);
    assert_eq!(ch.server_key_id, &server_id);
    assert_eq!(ch.encrypted_secret.len(), 256);
    assert_eq!(
        ch_unit.end,
        HEADER_LEN + 4 + 1 + 1 + 2 + 2 + 4 * 32 + 2 + 256
    );
    assert_ne!(ch.random, ch.key_share);
    let fin = &units[1];
    assert_eq!(c2s[fin.start], TYPE_FINISHED);
    Finished::parse(&c2s[fin.start + HEADER_LEN..fin.end]).unwrap();
    assert_eq!(fin.end - fin.start, HEADER_LEN + 32);

    let units = split(&s2c, false);
    let sh_unit = &units[0];
    assert_eq!(s2c[0], TYPE_SERVER_HELLO);
    let sh = ServerHello::parse(&s2c[HEADER_LEN..sh_unit.end]).unwrap();
    assert_eq!(sh.version, 2);
    assert_eq!(
        sh.suite, 1,
        "server picks the client's first suite (AES-128-GCM)"
    );
    assert_eq!(sh.max_record, 16384);
    assert_eq!(sh.stream_window, SessionConfig::HOST.stream_window);
    assert_eq!(
        sh.max_streams, 64,
        "min(HOST.max_streams, the pair's 64 stream slots)"
    );
    assert_eq!(sh.encrypted_secret.len(), 256);
    let fin = &units[1];
    assert_eq!(s2c[fin.start], TYPE_FINISHED);
    assert_eq!(fin.end - fin.start, HEADER_LEN + 32);
    // After the handshake only records follow, each within the limits.
    for u in split(&s2c, false)
        .iter()
        .chain(split(&c2s, true).iter())
        .filter(|u| u.what.starts_with("record"))
    {
        assert!(u.end - u.start <= record::OVERHEAD + 16384);
    }
}

/// Rebuilds the key schedule of `docs/PROTOCOL.md` from the committed
/// bytes, the committed private keys and the client's ephemeral X25519 key
/// (the first 32 bytes of `TestRng::new("session")`), using the primitive
/// crates directly; then decrypts every record.
#[test]
fn key_schedule_recomputed_independently() {
    use aes_gcm::Aes128Gcm;
    use aes_gcm::aead::{AeadInOut, Nonce, Tag};
    use hkdf::Hkdf;
    use hmac::{Hmac, KeyInit, Mac};
    use rand_core::Rng as _;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::{Oaep, PrivateKey};
    use x25519_dalek::{PublicKey, StaticSecret};

    let c2s = read_hex(C2S_FILE);
    let s2c = read_hex(S2C_FILE);
    let cu = split(&c2s, true);
    let su = split(&s2c, false);
    let ch_whole = &c2s[cu[0].start..cu[0].end];
    let sh_whole = &s2c[su[0].start..su[0].end];
    let sfin_whole = &s2c[su[1].start..su[1].end];
    let cfin_whole = &c2s[cu[1].start..cu[1].end];
    let ch = ClientHello::parse(&ch_whole[HEADER_LEN..]).unwrap();
    let sh = ServerHello::parse(&sh_whole[HEADER_LEN..]).unwrap();

    // The RSA-wrapped secrets, unwrapped with the committed private keys.
    let server_key = PrivateKey::from_pkcs8_der(&vector("server.key.der")).unwrap();
    let client_key = PrivateKey::from_pkcs8_der(&vector("client.key.der")).unwrap();
    let client_secret = server_key
        .decrypt(
            Oaep::<Sha256>::new_with_label(&b"hytun/1 client secret"[..]),
            ch.encrypted_secret,
        )
        .unwrap();
    let server_secret = client_key
        .decrypt(
            Oaep::<Sha256>::new_with_label(&b"hytun/1 server secret"[..]),
            sh.encrypted_secret,
        )
        .unwrap();
    assert_eq!(client_secret.len(), 32);
    assert_eq!(server_secret.len(), 32);

    // The client's ephemeral key is the first draw from the session RNG.
    let mut eph = [0u8; 32];
    TestRng::new("session").fill_bytes(&mut eph);
    let eph = StaticSecret::from(eph);
    assert_eq!(
        PublicKey::from(&eph).as_bytes(),
        ch.key_share,
        "client ephemeral key"
    );
    let shared = eph.diffie_hellman(&PublicKey::from(*sh.key_share));

    // HKDF-SHA256 schedule.
    let th1: [u8; 32] = Sha256::new()
        .chain_update(ch_whole)
        .chain_update(sh_whole)
        .finalize()
        .into();
    let mut ikm = client_secret.clone();
    ikm.extend_from_slice(&server_secret);
    ikm.extend_from_slice(shared.as_bytes());
    let prk = Hkdf::<Sha256>::new(Some(b"hytun/1"), &ikm);
    let derive = |label: &[u8]| {
        let mut info = label.to_vec();
        info.extend_from_slice(&th1);
        let mut out = [0u8; 32];
        prk.expand(&info, &mut out).unwrap();
        out
    };
    let (c_fin, s_fin) = (derive(b"hytun/1 c finished"), derive(b"hytun/1 s finished"));
    let (c_ts0, s_ts0) = (derive(b"hytun/1 c traffic"), derive(b"hytun/1 s traffic"));
    let hmac = |key: &[u8], msg: &[u8]| -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        m.update(msg);
        m.finalize().into_bytes().into()
    };
    assert_eq!(
        &sfin_whole[HEADER_LEN..],
        &hmac(&s_fin, &th1),
        "server Finished MAC"
    );
    let th2: [u8; 32] = Sha256::new()
        .chain_update(ch_whole)
        .chain_update(sh_whole)
        .chain_update(sfin_whole)
        .finalize()
        .into();
    assert_eq!(
        &cfin_whole[HEADER_LEN..],
        &hmac(&c_fin, &th2),
        "client Finished MAC"
    );

    // Records: AES-128-GCM, key/iv from the traffic secret, nonce = iv XOR
    // the 64-bit big-endian sequence number, AAD = the 2-byte header.
    let open_all = |ts: &[u8; 32], wire: &[u8], units: &[Unit]| -> Vec<u8> {
        let hk = Hkdf::<Sha256>::from_prk(ts).unwrap();
        let mut key = [0u8; 16];
        hk.expand(b"hytun/1 key", &mut key).unwrap();
        let mut iv = [0u8; 12];
        hk.expand(b"hytun/1 iv", &mut iv).unwrap();
        let aead = Aes128Gcm::new_from_slice(&key).unwrap();
        let mut plain = Vec::new();
        for (seq, u) in units
            .iter()
            .filter(|u| u.what.starts_with("record"))
            .enumerate()
        {
            let mut nonce = iv;
            for (n, s) in nonce[4..].iter_mut().zip((seq as u64).to_be_bytes()) {
                *n ^= s;
            }
            let hdr = &wire[u.start..u.start + 2];
            let mut body = wire[u.start + 2..u.end - 16].to_vec();
            let tag: [u8; 16] = wire[u.end - 16..u.end].try_into().unwrap();
            aead.decrypt_inout_detached(
                &Nonce::<Aes128Gcm>::from(nonce),
                hdr,
                body.as_mut_slice().into(),
                &Tag::<Aes128Gcm>::from(tag),
            )
            .unwrap_or_else(|_| panic!("record {seq} does not open"));
            plain.extend_from_slice(&body);
        }
        plain
    };
    let frames = |plain: &[u8]| -> Vec<String> {
        let mut out = Vec::new();
        let mut off = 0;
        while off < plain.len() {
            let (f, n) = Frame::parse(&plain[off..]).unwrap();
            out.push(format!("{f:?}"));
            off += n;
        }
        out
    };
    let dest = Destination {
        host: Host::Domain("origin.test"),
        port: 80,
    };
    let id = StreamId(1);
    let want_c2s = [
        Frame::Open {
            id,
            window: SessionConfig::HOST.stream_window,
            dest,
        },
        Frame::Data { id, data: REQUEST },
        Frame::Fin { id },
    ];
    let want_s2c = [
        Frame::OpenOk { id },
        Frame::Data { id, data: RESPONSE },
        Frame::Fin { id },
    ];
    let fmt = |fs: &[Frame<'_>]| fs.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>();
    assert_eq!(frames(&open_all(&c_ts0, &c2s, &cu)), fmt(&want_c2s));
    assert_eq!(frames(&open_all(&s_ts0, &s2c, &su)), fmt(&want_s2c));
}
