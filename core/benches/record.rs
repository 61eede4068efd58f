//! Record protection throughput: `RecordSealer::seal` + `RecordOpener::open`
//! (the record layer as the connection uses it: 2-byte header as AAD,
//! sequence-number nonce) against bare `aes-gcm` on the same buffer with a
//! fixed nonce — and, with the `ring` feature, against bare `ring` too. The
//! ratio of hytun to the bare provider it uses is the framing overhead of
//! hytun's record layer; `hytun-bench criterion-summary` prints it.
//!
//! Run: `cargo bench -p hytun-core --bench record` (RustCrypto provider) and
//! `cargo bench -p hytun-core --features ring --bench record` (ring).
#![allow(clippy::std_instead_of_core, unreachable_pub)]

use std::hint::black_box;

use aes_gcm::Aes128Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hytun_core::crypto::{RecordOpener, RecordSealer};
use hytun_core::wire::handshake::Suite;
use hytun_core::wire::record;
use zeroize::Zeroizing;

const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (16384, "16KiB")];

fn seal_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("record_seal_open");
    for (len, label) in SIZES {
        g.throughput(Throughput::Bytes(len as u64));

        // hytun: a sealer/opener pair of one direction, kept in step.
        let mut sealer = RecordSealer::new(Suite::Aes128Gcm, Zeroizing::new([7; 32]));
        let mut opener = RecordOpener::new(Suite::Aes128Gcm, Zeroizing::new([7; 32]));
        let mut buf = vec![0x5a_u8; len];
        let aad = record::header(len);
        g.bench_function(BenchmarkId::new("hytun", label), |b| {
            b.iter(|| {
                let tag = sealer.seal(&aad, &mut buf).expect("seal");
                opener.open(&aad, &mut buf, &tag).expect("open");
                black_box(&buf);
            })
        });

        // Bare AES-128-GCM on the same kind of buffer, same AAD, fixed nonce.
        let cipher = Aes128Gcm::new(&[7u8; 16].into());
        let nonce = Nonce::<Aes128Gcm>::from([3u8; 12]);
        let mut buf = vec![0x5a_u8; len];
        g.bench_function(BenchmarkId::new("aes_gcm_bare", label), |b| {
            b.iter(|| {
                let tag: Tag<Aes128Gcm> = cipher
                    .encrypt_inout_detached(&nonce, &aad, buf.as_mut_slice().into())
                    .expect("encrypt");
                cipher
                    .decrypt_inout_detached(&nonce, &aad, buf.as_mut_slice().into(), &tag)
                    .expect("decrypt");
                black_box(&buf);
            })
        });

        #[cfg(feature = "ring")]
        {
            let key = ring_key();
            g.bench_function(BenchmarkId::new("ring_bare", label), |b| {
                b.iter(|| {
                    let tag = key
                        .seal_in_place_separate_tag(
                            ring_nonce(),
                            ring::aead::Aad::from(aad),
                            &mut buf,
                        )
                        .expect("seal");
                    key.open_in_place_separate_tag(
                        ring_nonce(),
                        ring::aead::Aad::from(aad),
                        tag,
                        &mut buf,
                        0..,
                    )
                    .expect("open");
                    black_box(&buf);
                })
            });
        }
    }
    g.finish();
}

#[cfg(feature = "ring")]
fn ring_key() -> ring::aead::LessSafeKey {
    let key = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &[7u8; 16]).expect("key");
    ring::aead::LessSafeKey::new(key)
}

#[cfg(feature = "ring")]
fn ring_nonce() -> ring::aead::Nonce {
    ring::aead::Nonce::assume_unique_for_key([3u8; 12])
}

fn seal_only(c: &mut Criterion) {
    let mut g = c.benchmark_group("record_seal");
    for (len, label) in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        let mut sealer = RecordSealer::new(Suite::Aes128Gcm, Zeroizing::new([7; 32]));
        let mut buf = vec![0x5a_u8; len];
        let aad = record::header(len);
        g.bench_function(BenchmarkId::new("hytun", label), |b| {
            b.iter(|| black_box(sealer.seal(&aad, &mut buf).expect("seal")))
        });
        let cipher = Aes128Gcm::new(&[7u8; 16].into());
        let nonce = Nonce::<Aes128Gcm>::from([3u8; 12]);
        g.bench_function(BenchmarkId::new("aes_gcm_bare", label), |b| {
            b.iter(|| {
                black_box(
                    cipher
                        .encrypt_inout_detached(&nonce, &aad, buf.as_mut_slice().into())
                        .expect("encrypt"),
                )
            })
        });
        #[cfg(feature = "ring")]
        {
            let key = ring_key();
            g.bench_function(BenchmarkId::new("ring_bare", label), |b| {
                b.iter(|| {
                    black_box(
                        key.seal_in_place_separate_tag(
                            ring_nonce(),
                            ring::aead::Aad::from(aad),
                            &mut buf,
                        )
                        .expect("seal"),
                    )
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, seal_open, seal_only);
criterion_main!(benches);
