//! Stream frame encode/decode (`hytun_core::wire::frame::Frame`): DATA
//! frames of 1 KiB and 16 KiB (emit copies the payload, parse borrows it),
//! the small control frames WINDOW and OPEN (domain destination).
//!
//! Run: `cargo bench -p hytun-core --bench frame`
#![allow(clippy::std_instead_of_core, unreachable_pub)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hytun_core::wire::frame::Frame;
use hytun_core::{Destination, Host, StreamId};

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let payload_1k = vec![0x42_u8; 1024];
    let payload_16k = vec![0x42_u8; 16 * 1024 - 7];
    let cases: [(&str, Frame<'_>); 4] = [
        (
            "data_1KiB",
            Frame::Data {
                id: StreamId(7),
                data: &payload_1k,
            },
        ),
        (
            "data_16KiB",
            Frame::Data {
                id: StreamId(7),
                data: &payload_16k,
            },
        ),
        (
            "window",
            Frame::Window {
                id: StreamId(7),
                increment: 65536,
            },
        ),
        (
            "open_domain",
            Frame::Open {
                id: StreamId(9),
                window: 262_144,
                dest: Destination {
                    host: Host::Domain("origin.example.test"),
                    port: 443,
                },
            },
        ),
    ];
    let mut out = vec![0u8; 17 * 1024];
    for (name, frame) in cases {
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("emit", name), |b| {
            b.iter(|| black_box(black_box(&frame).emit(&mut out).expect("emit")))
        });
        let n = frame.emit(&mut out).expect("emit");
        let encoded = out[..n].to_vec();
        g.bench_function(BenchmarkId::new("parse", name), |b| {
            b.iter(|| {
                let (f, used) = Frame::parse(black_box(&encoded)).expect("parse");
                black_box((f, used))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
