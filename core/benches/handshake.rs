//! Handshake cost per side with the committed RSA-2048 test keys
//! (`core/tests/vectors/{client,server}.*.der`):
//!
//! * `client_hello` — X25519 key generation + RSA-OAEP encryption of the
//!   client secret to the server key;
//! * `server_handle_client_hello` — X25519 + blinded RSA-2048 decryption +
//!   RSA encryption to the client key + key schedule + server Finished;
//! * `client_finish` — the client's ServerHello (X25519 + its own RSA-2048
//!   decryption) and server Finished handling, writing the client Finished;
//! * `server_finish` — verifying the client Finished;
//! * `connection_pair` — a whole in-memory `Connection` handshake, both
//!   sides.
//!
//! The `handshake` group encrypts with the `rsa` crate (the test helpers pin
//! it for reproducible bytes). The `primitives` group compares the parts
//! the server's handshake does besides its private-key operation, per
//! built-in provider: `rsa_encrypt/{provider}` (RSA-OAEP-SHA256 of a
//! 32-byte secret to the 2048-bit client key) and `x25519` (an ephemeral
//! key from 32 bytes, its share, and one agreement: x25519-dalek, or
//! AWS-LC with `--features aws-lc`).
//!
//! Run: `cargo bench -p hytun-core --bench handshake [--features aws-lc]`
#![allow(clippy::std_instead_of_core, unreachable_pub)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use common::{Pair, TestRng, client_config, public, server_config};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hytun_core::crypto::identity::LABEL_SERVER_SECRET;
use hytun_core::crypto::{Ephemeral, RsaBackend};
use hytun_core::handshake::{
    ClientExpectServerHello, ServerExpectClientFinished, client_hello, handle_client_hello,
};
use hytun_core::wire::handshake::{HEADER_LEN, HandshakeHeader};
use hytun_core::{ClientConfig, ServerConfig, SessionConfig};

const MAX_RECORD: u16 = 16384;
const MAX_STREAMS: u16 = 1024;

/// Length of the handshake message at the front of `buf` (header included).
fn message_len(buf: &[u8]) -> usize {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&buf[..HEADER_LEN]);
    HEADER_LEN + HandshakeHeader::parse(&h).expect("header").body_len
}

struct Keys {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn keys() -> Keys {
    let mut rng = TestRng::new("keys");
    Keys {
        client: client_config("client", "server", SessionConfig::HOST, &mut rng),
        server: server_config("server", &["client"], SessionConfig::HOST, &mut rng),
    }
}

/// Client state + ClientHello bytes.
fn hello(k: &Keys, rng: &mut TestRng) -> (ClientExpectServerHello, Vec<u8>) {
    let mut out = [0u8; 1024];
    let (n, state) = client_hello(&k.client, MAX_RECORD, rng, &mut out).expect("hello");
    (state, out[..n].to_vec())
}

/// Server state + ServerHello‖Finished bytes.
fn server_reply(k: &Keys, ch: &[u8], rng: &mut TestRng) -> (ServerExpectClientFinished, Vec<u8>) {
    let mut out = [0u8; 2048];
    let (n, state) = handle_client_hello(&k.server, MAX_RECORD, MAX_STREAMS, ch, rng, &mut out)
        .map_err(|r| r.error)
        .expect("server hello");
    (state, out[..n].to_vec())
}

fn handshake(c: &mut Criterion) {
    let k = keys();
    let mut rng = TestRng::new("bench");
    let mut g = c.benchmark_group("handshake");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(4));

    g.bench_function("client_hello", |b| {
        let mut out = [0u8; 1024];
        b.iter(|| {
            let r = client_hello(&k.client, MAX_RECORD, &mut rng, &mut out).expect("hello");
            black_box(r.0)
        })
    });

    let (_, ch) = hello(&k, &mut rng);
    g.bench_function("server_handle_client_hello", |b| {
        let mut out = [0u8; 2048];
        b.iter(|| {
            let r =
                handle_client_hello(&k.server, MAX_RECORD, MAX_STREAMS, &ch, &mut rng, &mut out);
            black_box(r.is_ok())
        })
    });

    g.bench_function("client_finish", |b| {
        b.iter_batched(
            || {
                let mut rng = TestRng::new("setup");
                let (state, ch) = hello(&k, &mut rng);
                let (_, reply) = server_reply(&k, &ch, &mut rng);
                (state, reply, rng)
            },
            |(state, reply, mut rng)| {
                let sh_len = message_len(&reply);
                let next = state
                    .handle(&k.client, &reply[..sh_len], &mut rng)
                    .expect("server hello");
                let mut out = [0u8; 128];
                let (n, est) = next.handle(&reply[sh_len..], &mut out).expect("finished");
                black_box((n, est.suite))
            },
            BatchSize::SmallInput,
        )
    });

    g.bench_function("server_finish", |b| {
        b.iter_batched(
            || {
                let mut rng = TestRng::new("setup");
                let (state, ch) = hello(&k, &mut rng);
                let (server_state, reply) = server_reply(&k, &ch, &mut rng);
                let sh_len = message_len(&reply);
                let next = state
                    .handle(&k.client, &reply[..sh_len], &mut rng)
                    .expect("server hello");
                let mut out = [0u8; 128];
                let (n, _) = next.handle(&reply[sh_len..], &mut out).expect("finished");
                (server_state, out[..n].to_vec())
            },
            |(server_state, fin)| black_box(server_state.handle(&fin).is_ok()),
            BatchSize::SmallInput,
        )
    });

    g.bench_function("connection_pair", |b| {
        b.iter(|| {
            let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> =
                Pair::new(k.client.clone(), k.server.clone(), TestRng::new("session"));
            p.handshake();
            black_box(p.client.is_established())
        })
    });
    g.finish();
}

fn primitives(c: &mut Criterion) {
    let mut rng = TestRng::new("bench");
    let mut g = c.benchmark_group("primitives");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(3));
    for &backend in RsaBackend::ALL {
        let to = public("client").using(backend).expect("key");
        g.bench_function(format!("rsa_encrypt/{backend}"), |b| {
            b.iter(|| {
                let ct = to
                    .encrypt_secret(&mut rng, LABEL_SERVER_SECRET, &[7u8; 32])
                    .expect("encrypt");
                black_box(ct.len())
            })
        });
    }
    let peer = *Ephemeral::from_bytes(&[0x21; 32]).expect("peer").share();
    g.bench_function("x25519", |b| {
        let mut scalar = [0x5au8; 32];
        b.iter(|| {
            scalar[0] = scalar[0].wrapping_add(1);
            let e = Ephemeral::from_bytes(&scalar).expect("key");
            let shared = e.agree(&peer).expect("agree");
            black_box((e.share()[0], shared[0]))
        })
    });
    g.finish();
}

criterion_group!(benches, handshake, primitives);
criterion_main!(benches);
