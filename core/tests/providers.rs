//! RSA private-key providers and deferred private-key operations.
//!
//! * Every built-in provider ([`RsaBackend::ALL`]: the `rsa` crate, plus
//!   AWS-LC with `--features aws-lc`) gives the same result as the
//!   specification for valid and invalid ciphertexts (implicit rejection,
//!   `docs/PROTOCOL.md` §4.3, recomputed here with the `hmac` crate), and
//!   every pairing of client and server providers writes the same session
//!   bytes, including when the client's encrypted secret is corrupted.
//! * Every built-in encryptor (the public-key side) writes RSA-OAEP
//!   ciphertexts that every provider and the `rsa` crate itself decrypt,
//!   randomized per call; the `rsa` encryptor is reproducible from the RNG,
//!   and sessions whose both encryptions go through AWS-LC complete.
//! * A connection in deferred mode (`defer_private_key_ops`) hands its
//!   job out (the client its private-key operation, the server its whole
//!   reply to the ClientHello), consumes no input and sends nothing while
//!   it waits, and writes exactly the bytes of the inline mode once the
//!   result comes back — also when the job ran on another thread, and also
//!   when the server's reply is a refusal.

mod common;

use std::sync::Arc;

use common::*;
use hmac::{KeyInit, Mac};
use hytun_core::crypto::identity::{LABEL_CLIENT_SECRET, LABEL_SERVER_SECRET};
use hytun_core::crypto::{DecryptedSecret, PrivateKeyOp, PublicIdentity, RsaBackend};
use hytun_core::{
    ClientConfig, ConnectionError, Destination, HandshakeError, Host, Instant, PrivateIdentity,
    ServerConfig, SessionConfig, TimeoutKind,
};
use rand_core::Rng;
use rsa::Oaep;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use sha2::Sha256;

fn identity(name: &str, backend: RsaBackend, rng: &mut TestRng) -> PrivateIdentity {
    let key = rsa::PrivateKey::from_pkcs8_der(&vector(&format!("{name}.key.der"))).unwrap();
    PrivateIdentity::with_backend(key, backend, rng).unwrap()
}

/// `HMAC-SHA256(rejection_key, label || ciphertext)`, computed apart from
/// the core.
fn implicit(rejection_key: &[u8; 32], label: &[u8], ct: &[u8]) -> [u8; 32] {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(rejection_key).unwrap();
    mac.update(label);
    mac.update(ct);
    mac.finalize().into_bytes().into()
}

/// RSA-OAEP-SHA256 encryption of arbitrary plaintext with the `rsa` crate.
fn encrypt(name: &str, label: &[u8], plain: &[u8], rng: &mut TestRng) -> Vec<u8> {
    let key = public(name);
    key.key()
        .encrypt(rng, Oaep::<Sha256>::new_with_label(label), plain)
        .unwrap()
}

#[test]
fn every_provider_follows_the_implicit_rejection_rule() {
    for (name, k) in [("server", 256usize), ("server3072", 384)] {
        // The rejection key is the first 32 bytes the identity's RNG gives.
        let mut rk = [0u8; 32];
        TestRng::new("keys").fill_bytes(&mut rk);
        let mut enc_rng = TestRng::new("ciphertexts");
        let secret = [0x5a; 32];
        let valid = encrypt(name, LABEL_CLIENT_SECRET, &secret, &mut enc_rng);
        let cases: Vec<(&str, &'static [u8], Vec<u8>)> = vec![
            ("wrong label", LABEL_CLIENT_SECRET, {
                encrypt(name, LABEL_SERVER_SECRET, &secret, &mut enc_rng)
            }),
            ("31-byte plaintext", LABEL_CLIENT_SECRET, {
                encrypt(name, LABEL_CLIENT_SECRET, &[1; 31], &mut enc_rng)
            }),
            ("33-byte plaintext", LABEL_CLIENT_SECRET, {
                encrypt(name, LABEL_CLIENT_SECRET, &[1; 33], &mut enc_rng)
            }),
            ("empty plaintext", LABEL_CLIENT_SECRET, {
                encrypt(name, LABEL_CLIENT_SECRET, &[], &mut enc_rng)
            }),
            ("integer >= n", LABEL_CLIENT_SECRET, vec![0xff; k]),
            ("zero", LABEL_CLIENT_SECRET, vec![0; k]),
            ("flipped bit", LABEL_CLIENT_SECRET, {
                let mut c = valid.clone();
                c[k / 2] ^= 1;
                c
            }),
            ("one byte short", LABEL_CLIENT_SECRET, valid[1..].to_vec()),
            ("one byte long", LABEL_CLIENT_SECRET, {
                let mut c = valid.clone();
                c.push(0);
                c
            }),
            (
                "valid, other direction's label",
                LABEL_SERVER_SECRET,
                valid.clone(),
            ),
        ];
        for &backend in RsaBackend::ALL {
            let id = identity(name, backend, &mut TestRng::new("keys"));
            let mut rng = TestRng::new("blinding");
            let got = id.decrypt_secret(&mut rng, LABEL_CLIENT_SECRET, &valid);
            assert_eq!(*got, secret, "{backend} {name}: valid ciphertext");
            for (what, label, ct) in &cases {
                let got = id.decrypt_secret(&mut rng, label, ct);
                assert_eq!(
                    *got,
                    implicit(&rk, label, ct),
                    "{backend} {name}: {what} must give the implicit value"
                );
            }
            // The deferred form gives the same results.
            let op = id.defer_decrypt(LABEL_CLIENT_SECRET, &valid);
            let inline = id.defer_decrypt(LABEL_CLIENT_SECRET, &valid);
            assert!(op.run(&mut rng).matches(&inline.run(&mut rng)));
            let bad = id.defer_decrypt(LABEL_CLIENT_SECRET, &cases[0].2);
            assert!(!bad.run(&mut rng).matches(&op.run(&mut rng)));
        }
    }
}

#[test]
fn a_provider_must_match_the_public_key() {
    let mut rng = TestRng::new("keys");
    let key = rsa::PrivateKey::from_pkcs8_der(&vector("server.key.der")).unwrap();
    let provider = RsaBackend::RustCrypto.provider(key).unwrap();
    // A 3072-bit public key with a 2048-bit provider.
    let err = PrivateIdentity::from_provider(provider, public("server3072"), &mut rng);
    assert!(err.is_err());
    let key = rsa::PrivateKey::from_pkcs8_der(&vector("server.key.der")).unwrap();
    let provider = RsaBackend::DEFAULT.provider(key).unwrap();
    let id = PrivateIdentity::from_provider(provider, public("server"), &mut rng).unwrap();
    assert_eq!(id.public().id(), public("server").id());
}

#[test]
fn every_encryptor_is_decrypted_by_every_provider() {
    for (name, k) in [("server", 256usize), ("server3072", 384)] {
        let raw = rsa::PrivateKey::from_pkcs8_der(&vector(&format!("{name}.key.der"))).unwrap();
        let mut rk = [0u8; 32];
        TestRng::new("keys").fill_bytes(&mut rk);
        for &enc in RsaBackend::ALL {
            let to = public(name).using(enc).unwrap();
            assert_eq!(to.backend(), enc);
            assert_eq!(to.id(), public(name).id());
            let mut rng = TestRng::new("encrypt");
            let secret = [0xc3; 32];
            let a = to
                .encrypt_secret(&mut rng, LABEL_SERVER_SECRET, &secret)
                .unwrap();
            let b = to
                .encrypt_secret(&mut rng, LABEL_SERVER_SECRET, &secret)
                .unwrap();
            assert_eq!((a.len(), b.len()), (k, k), "{enc} {name}");
            assert_ne!(a, b, "{enc} {name}: OAEP must be randomized");
            // The `rsa` crate's own OAEP decoding, outside hytun-core.
            let plain = raw
                .decrypt_blinded(
                    &mut TestRng::new("rsa"),
                    Oaep::<Sha256>::new_with_label(LABEL_SERVER_SECRET),
                    &a,
                )
                .unwrap();
            assert_eq!(plain, secret, "{enc} {name}: rsa crate decrypts");
            for &dec in RsaBackend::ALL {
                let id = identity(name, dec, &mut TestRng::new("keys"));
                let mut brng = TestRng::new("blinding");
                for ct in [&a, &b] {
                    let got = id.decrypt_secret(&mut brng, LABEL_SERVER_SECRET, ct);
                    assert_eq!(*got, secret, "{enc} -> {dec} {name}");
                    // The label is bound: the other direction's label
                    // gives the implicit-rejection value.
                    let got = id.decrypt_secret(&mut brng, LABEL_CLIENT_SECRET, ct);
                    assert_eq!(*got, implicit(&rk, LABEL_CLIENT_SECRET, ct));
                }
            }
        }
    }
}

#[test]
fn the_rsa_encryptor_is_reproducible_from_the_rng() {
    let to = public("client");
    assert_eq!(to.backend(), RsaBackend::RustCrypto);
    let secret = [9u8; 32];
    let a = to
        .encrypt_secret(&mut TestRng::new("seed"), LABEL_CLIENT_SECRET, &secret)
        .unwrap();
    let b = to
        .encrypt_secret(&mut TestRng::new("seed"), LABEL_CLIENT_SECRET, &secret)
        .unwrap();
    assert_eq!(a, b);
    // Exactly the `rsa` crate's encryption with the same RNG stream.
    let direct = encrypt(
        "client",
        LABEL_CLIENT_SECRET,
        &secret,
        &mut TestRng::new("seed"),
    );
    assert_eq!(a, direct);
    // A key parsed without a choice uses the default provider.
    let spki = vector("client.pub.der");
    let default = PublicIdentity::from_spki_der(&spki).unwrap();
    assert_eq!(default.backend(), RsaBackend::DEFAULT);
    let again = PublicIdentity::with_backend(
        rsa::PublicKey::from_public_key_der(&spki).unwrap(),
        RsaBackend::RustCrypto,
    )
    .unwrap();
    assert_eq!(again.id(), default.id());
}

// ------------------------------------------------------------ sessions --

fn configs(client: RsaBackend, server: RsaBackend) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    // Same order of RNG draws as `common::default_pair`.
    let mut rng = TestRng::new("keys");
    let c = ClientConfig::new(
        identity("client", client, &mut rng),
        public("server"),
        SessionConfig::HOST,
    );
    let s = ServerConfig::new(
        identity("server", server, &mut rng),
        vec![public("client")],
        SessionConfig::HOST,
    );
    (Arc::new(c), Arc::new(s))
}

/// How a side runs its private-key operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Inline,
    /// Deferred, run on the test thread with its own RNG.
    Deferred,
    /// Deferred, run on a fresh thread.
    Thread,
}

struct Side {
    conn: Conn,
    inbox: Vec<u8>,
    events: Vec<Ev>,
    mode: Mode,
    ops: usize,
}

impl Side {
    fn new(conn: Conn, mode: Mode) -> Side {
        let mut side = Side {
            conn,
            inbox: Vec::new(),
            events: Vec::new(),
            mode,
            ops: 0,
        };
        side.conn.defer_private_key_ops(mode != Mode::Inline);
        side
    }

    /// Runs a pending job, if any; true if it did. A server's job draws
    /// its randomness from `rng`, the session's RNG, right where the inline
    /// mode draws it (inside the `handle_input` that read the ClientHello),
    /// so both modes write the same bytes.
    fn work(&mut self, rng: &mut TestRng) -> bool {
        if let Some(job) = self.conn.take_server_hello_job() {
            assert!(self.conn.awaits_private_key_op());
            assert!(self.conn.take_server_hello_job().is_none(), "taken twice");
            assert!(self.conn.take_private_key_op().is_none());
            let reply = match self.mode {
                Mode::Thread => {
                    let mut moved = std::mem::replace(rng, TestRng::new("stand-in"));
                    let (reply, back) = std::thread::spawn(move || {
                        let reply = job.run(&mut moved);
                        (reply, moved)
                    })
                    .join()
                    .unwrap();
                    *rng = back;
                    reply
                }
                Mode::Inline | Mode::Deferred => job.run(rng),
            };
            self.conn.complete_server_hello_job(reply);
            self.ops += 1;
            return true;
        }
        let Some(op) = self.conn.take_private_key_op() else {
            return false;
        };
        assert!(self.conn.awaits_private_key_op());
        assert!(self.conn.take_private_key_op().is_none(), "taken twice");
        let result = run_op(op, self.mode);
        self.conn.complete_private_key_op(result);
        self.ops += 1;
        true
    }

    fn feed(&mut self, now: Instant, rng: &mut TestRng) -> bool {
        let mut progress = false;
        loop {
            let n = self.conn.handle_input(&self.inbox, now, rng);
            self.inbox.drain(..n);
            let mut evs = false;
            while let Some(ev) = self.conn.poll_event() {
                self.events.push(own(ev));
                evs = true;
            }
            progress |= n > 0 || evs;
            if n == 0 && !evs {
                return progress;
            }
        }
    }
}

fn run_op(op: PrivateKeyOp, mode: Mode) -> DecryptedSecret {
    match mode {
        Mode::Inline | Mode::Deferred => op.run(&mut TestRng::new("worker")),
        Mode::Thread => std::thread::spawn(move || op.run(&mut TestRng::new("thread")))
            .join()
            .unwrap(),
    }
}

fn move_bytes(
    from: &mut Side,
    to: &mut Side,
    log: &mut Vec<u8>,
    tamper: &dyn Fn(&mut [u8]),
) -> bool {
    let pending = from.conn.transmit_pending();
    if pending.is_empty() {
        return false;
    }
    let mut bytes = pending.to_vec();
    let n = bytes.len();
    from.conn.transmit_done(n);
    log.extend_from_slice(&bytes);
    tamper(&mut bytes);
    to.inbox.extend_from_slice(&bytes);
    true
}

/// Moves bytes both ways and runs both sides' jobs until nothing moves.
fn exchange(client: &mut Side, server: &mut Side, now: Instant, rng: &mut TestRng) {
    let mut log = Vec::new();
    for _ in 0..100 {
        let mut p = move_bytes(client, server, &mut log, &|_| {});
        p |= move_bytes(server, client, &mut log, &|_| {});
        p |= server.feed(now, rng) | server.work(rng);
        p |= client.feed(now, rng) | client.work(rng);
        if !p {
            return;
        }
    }
}

/// A session: handshake, then one stream opened and a few bytes each way.
struct Session {
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    client: Side,
    server: Side,
}

fn session(
    backends: (RsaBackend, RsaBackend),
    modes: (Mode, Mode),
    tamper_c2s: &dyn Fn(&mut [u8]),
) -> Session {
    let (ccfg, scfg) = configs(backends.0, backends.1);
    let now = Instant::from_millis(1_000);
    let mut rng = TestRng::new("session");
    let mut s = Session {
        c2s: Vec::new(),
        s2c: Vec::new(),
        client: Side::new(Conn::client(ccfg, now, &mut rng), modes.0),
        server: Side::new(Conn::server(scfg, now), modes.1),
    };
    let mut opened = false;
    for _ in 0..1000 {
        let mut progress = move_bytes(&mut s.client, &mut s.server, &mut s.c2s, tamper_c2s);
        progress |= move_bytes(&mut s.server, &mut s.client, &mut s.s2c, &|_| {});
        progress |= s.server.feed(now, &mut rng);
        progress |= s.server.work(&mut rng);
        progress |= s.client.feed(now, &mut rng);
        progress |= s.client.work(&mut rng);
        if !opened && s.client.conn.is_established() {
            let id = s
                .client
                .conn
                .open_stream(Destination {
                    host: Host::Domain("origin.test"),
                    port: 80,
                })
                .unwrap();
            s.client.conn.stream_send(id, b"ping").unwrap();
            opened = true;
            progress = true;
        }
        if !progress {
            return s;
        }
    }
    panic!("session did not settle");
}

#[test]
fn every_pairing_of_providers_writes_the_same_bytes() {
    let reference = session(
        (RsaBackend::RustCrypto, RsaBackend::RustCrypto),
        (Mode::Inline, Mode::Inline),
        &|_| {},
    );
    assert_eq!(reference.client.events, vec![Ev::Connected]);
    assert_eq!(reference.server.events[0], Ev::Connected);
    assert!(matches!(reference.server.events[1], Ev::OpenRequest(..)));
    for &c in RsaBackend::ALL {
        for &s in RsaBackend::ALL {
            let got = session((c, s), (Mode::Inline, Mode::Inline), &|_| {});
            assert_eq!(got.c2s, reference.c2s, "client {c}, server {s}: c2s");
            assert_eq!(got.s2c, reference.s2c, "client {c}, server {s}: s2c");
            assert_eq!(got.server.events, reference.server.events);
        }
    }
}

#[test]
fn corrupted_client_secret_gives_the_same_bytes_with_every_provider() {
    // Flip a bit inside the RSA ciphertext at the end of the ClientHello
    // (its last 256 bytes; the ClientHello is the first message).
    let flip = |b: &mut [u8]| {
        if b.len() >= 399 && b[0] == 0x01 {
            b[399 - 100] ^= 0x04;
        }
    };
    let mut flights = Vec::new();
    for &backend in RsaBackend::ALL {
        for mode in [Mode::Inline, Mode::Deferred] {
            let s = session(
                (RsaBackend::RustCrypto, backend),
                (Mode::Inline, mode),
                &flip,
            );
            // The server answers exactly as for a valid ciphertext: a full
            // ServerHello + Finished; the client then fails on the
            // Finished, and the server never sees a session.
            assert_eq!(s.s2c.len(), 335 + 35, "{backend} {mode:?}");
            assert_eq!(
                s.client.events,
                vec![Ev::Closed(ConnectionError::Handshake(
                    HandshakeError::ServerAuthenticationFailed
                ))]
            );
            assert!(!s.server.conn.is_established());
            flights.push((backend, mode, s.s2c));
        }
    }
    for (backend, mode, f) in &flights {
        assert_eq!(f, &flights[0].2, "{backend} {mode:?} differs");
    }
}

#[test]
fn deferred_operations_write_the_same_bytes_as_inline() {
    let reference = session(
        (RsaBackend::DEFAULT, RsaBackend::DEFAULT),
        (Mode::Inline, Mode::Inline),
        &|_| {},
    );
    for modes in [
        (Mode::Deferred, Mode::Deferred),
        (Mode::Inline, Mode::Thread),
        (Mode::Thread, Mode::Inline),
        (Mode::Thread, Mode::Thread),
    ] {
        for &backend in RsaBackend::ALL {
            let s = session((backend, backend), modes, &|_| {});
            assert_eq!(s.c2s, reference.c2s, "{modes:?} {backend}: c2s");
            assert_eq!(s.s2c, reference.s2c, "{modes:?} {backend}: s2c");
            assert_eq!(s.client.events, reference.client.events);
            assert_eq!(s.server.events, reference.server.events);
            assert_eq!(s.client.ops, usize::from(modes.0 != Mode::Inline));
            assert_eq!(s.server.ops, usize::from(modes.1 != Mode::Inline));
        }
    }
}

#[test]
fn sessions_with_every_encryptor_complete() {
    for &enc in RsaBackend::ALL {
        for modes in [(Mode::Inline, Mode::Inline), (Mode::Thread, Mode::Deferred)] {
            let mut rng = TestRng::new("keys");
            let c = Arc::new(ClientConfig::new(
                identity("client", RsaBackend::DEFAULT, &mut rng),
                public("server").using(enc).unwrap(),
                SessionConfig::HOST,
            ));
            let s = Arc::new(ServerConfig::new(
                identity("server", RsaBackend::DEFAULT, &mut rng),
                vec![public("client").using(enc).unwrap()],
                SessionConfig::HOST,
            ));
            let now = Instant::from_millis(1_000);
            let mut rng = TestRng::new("session");
            let mut client = Side::new(Conn::client(c, now, &mut rng), modes.0);
            let mut server = Side::new(Conn::server(s, now), modes.1);
            exchange(&mut client, &mut server, now, &mut rng);
            assert_eq!(client.events, vec![Ev::Connected], "{enc} {modes:?}");
            assert_eq!(server.events, vec![Ev::Connected], "{enc} {modes:?}");
        }
    }
}

/// A server that has read a ClientHello in deferred mode, and that hello.
fn awaiting_server() -> (Side, Vec<u8>, TestRng) {
    let (ccfg, scfg) = configs(RsaBackend::DEFAULT, RsaBackend::DEFAULT);
    let now = Instant::from_millis(1_000);
    let mut rng = TestRng::new("session");
    let mut client = Conn::client(ccfg, now, &mut rng);
    let hello = client.transmit_pending().to_vec();
    let mut server = Side::new(Conn::server(scfg, now), Mode::Deferred);
    // The hello plus trailing bytes: the server stops right after the hello.
    let mut input = hello.clone();
    input.extend_from_slice(&[0x03, 0x00, 0x20]);
    let n = server.conn.handle_input(&input, now, &mut rng);
    assert_eq!(n, hello.len());
    assert!(server.conn.awaits_private_key_op());
    (server, hello, rng)
}

#[test]
fn a_waiting_server_consumes_nothing_and_sends_nothing() {
    let (mut server, _, mut rng) = awaiting_server();
    let now = Instant::from_millis(1_001);
    assert_eq!(
        server.conn.handle_input(&[0x03, 0x00, 0x20], now, &mut rng),
        0
    );
    assert!(!server.conn.wants_transmit());
    assert!(server.conn.transmit_pending().is_empty());
    assert!(server.conn.poll_event().is_none());
    assert!(server.work(&mut rng));
    assert!(!server.conn.awaits_private_key_op());
    assert_eq!(server.conn.transmit_pending().len(), 335 + 35);
}

#[test]
fn handshake_timeout_while_waiting_drops_the_server_hello() {
    let (mut server, _, _) = awaiting_server();
    let job = server.conn.take_server_hello_job().unwrap();
    server
        .conn
        .handle_timeout(Instant::from_millis(1_000 + 10_000));
    assert!(server.conn.is_closed());
    assert!(!server.conn.awaits_private_key_op());
    assert_eq!(
        server.conn.error(),
        Some(ConnectionError::Timeout(TimeoutKind::Handshake))
    );
    // Nothing goes out: not the lone ServerHello, not an alert.
    assert!(server.conn.transmit_pending().is_empty());
    // A late result is ignored.
    server
        .conn
        .complete_server_hello_job(job.run(&mut TestRng::new("late")));
    assert!(server.conn.transmit_pending().is_empty());
    assert!(server.conn.take_server_hello_job().is_none());
}

#[test]
fn a_result_without_a_waiting_handshake_is_ignored() {
    let (mut server, hello, _) = awaiting_server();
    let job = server.conn.take_server_hello_job().unwrap();
    let spare = job.clone();
    server
        .conn
        .complete_server_hello_job(job.run(&mut TestRng::new("w")));
    let flight = server.conn.transmit_pending().to_vec();
    assert_eq!(flight.len(), 335 + 35);
    // A second result (a duplicate delivery) changes nothing.
    server
        .conn
        .complete_server_hello_job(spare.run(&mut TestRng::new("w2")));
    assert_eq!(server.conn.transmit_pending(), &flight[..]);
    assert!(hello.len() > 256);
}

#[test]
fn a_waiting_client_keeps_the_server_finished_for_later() {
    let (ccfg, scfg) = configs(RsaBackend::DEFAULT, RsaBackend::DEFAULT);
    let now = Instant::from_millis(1_000);
    let mut rng = TestRng::new("session");
    let mut client = Side::new(Conn::client(ccfg, now, &mut rng), Mode::Deferred);
    let mut server = Side::new(Conn::server(scfg, now), Mode::Inline);
    let hello = client.conn.transmit_pending().to_vec();
    client.conn.transmit_done(hello.len());
    assert_eq!(server.conn.handle_input(&hello, now, &mut rng), hello.len());
    let flight = server.conn.transmit_pending().to_vec();
    // ServerHello and Finished arrive together; the client stops after
    // the ServerHello.
    let n = client.conn.handle_input(&flight, now, &mut rng);
    assert_eq!(n, 335);
    assert!(client.conn.awaits_private_key_op());
    assert!(!client.conn.wants_transmit());
    assert_eq!(client.conn.handle_input(&flight[n..], now, &mut rng), 0);
    assert!(client.work(&mut rng));
    assert_eq!(client.conn.handle_input(&flight[n..], now, &mut rng), 35);
    client.feed(now, &mut rng);
    assert_eq!(client.events, vec![Ev::Connected]);
    assert!(client.conn.is_established());
}

#[test]
fn deferred_handshake_with_a_3072_bit_server_key() {
    let mut rng = TestRng::new("keys");
    let c = Arc::new(ClientConfig::new(
        identity("client", RsaBackend::DEFAULT, &mut rng),
        public("server3072"),
        SessionConfig::HOST,
    ));
    let s: Arc<ServerConfig> = Arc::new(ServerConfig::new(
        identity("server3072", RsaBackend::DEFAULT, &mut rng),
        vec![public("client")],
        SessionConfig::HOST,
    ));
    let now = Instant::from_millis(1_000);
    let mut rng = TestRng::new("session");
    let mut client = Side::new(Conn::client(c, now, &mut rng), Mode::Thread);
    let mut server = Side::new(Conn::server(s, now), Mode::Thread);
    exchange(&mut client, &mut server, now, &mut rng);
    assert_eq!(client.events, vec![Ev::Connected]);
    assert_eq!(server.events, vec![Ev::Connected]);
    assert_eq!(client.conn.peer_key(), Some(public("server3072").id()));
    assert_eq!((client.ops, server.ops), (1, 1));
}

#[test]
fn a_refused_client_hello_gets_the_same_alert_when_deferred() {
    // A server that authorizes no client key: the ClientHello is refused
    // with an Unauthorized alert, inline or from a deferred job alike.
    let (ccfg, _) = configs(RsaBackend::DEFAULT, RsaBackend::DEFAULT);
    let mut keys = TestRng::new("keys");
    let scfg = Arc::new(ServerConfig::new(
        identity("server", RsaBackend::DEFAULT, &mut keys),
        Vec::new(),
        SessionConfig::HOST,
    ));
    let now = Instant::from_millis(1_000);
    let mut flights = Vec::new();
    for mode in [Mode::Inline, Mode::Deferred, Mode::Thread] {
        let mut rng = TestRng::new("session");
        let mut client = Conn::client(ccfg.clone(), now, &mut rng);
        let hello = client.transmit_pending().to_vec();
        let mut server = Side::new(Conn::server(scfg.clone(), now), mode);
        server.inbox = hello;
        server.feed(now, &mut rng);
        assert_eq!(server.work(&mut rng), mode != Mode::Inline, "{mode:?}");
        server.feed(now, &mut rng);
        assert!(
            matches!(
                server.events.as_slice(),
                [Ev::Closed(ConnectionError::Handshake(
                    HandshakeError::UnauthorizedClient(_)
                ))]
            ),
            "{mode:?}: {:?}",
            server.events
        );
        flights.push(server.conn.transmit_pending().to_vec());
    }
    assert!(!flights[0].is_empty(), "no alert");
    for (i, f) in flights.iter().enumerate() {
        assert_eq!(f, &flights[0], "mode {i}");
    }
}
