//! The whole sans-IO data path of one established session, in memory:
//! client `stream_send` of 16 KiB → `transmit_pending` → server
//! `handle_input` + `poll_event` (+ `stream_consumed`) → the server's WINDOW
//! records back to the client. No sockets, no copies beyond the core's own.
//!
//! Run: `cargo bench -p hytun-core --bench connection`
#![allow(clippy::std_instead_of_core, unreachable_pub)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use common::{Conn, TestRng, default_pair};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hytun_core::{Destination, Event, Host, Instant, StreamId};

/// Feeds everything `from` has pending into `to` and drains `to`'s events,
/// reporting stream data as consumed. Returns the payload bytes delivered.
fn deliver(from: &mut Conn, to: &mut Conn, now: Instant, rng: &mut TestRng) -> usize {
    let mut payload = 0;
    loop {
        let pending = from.transmit_pending();
        if pending.is_empty() {
            return payload;
        }
        // The pending slice borrows `from`; the receiver gets it directly,
        // as a socket read would hand it over.
        let n = pending.len();
        let mut off = 0;
        while off < n {
            off += to.handle_input(&from.transmit_pending()[off..n], now, rng);
            while let Some(ev) = to.poll_event() {
                if let Event::Data { id, data } = ev {
                    let len = black_box(data).len();
                    payload += len;
                    to.stream_consumed(id, len);
                }
            }
        }
        from.transmit_done(n);
    }
}

fn stream_path(c: &mut Criterion) {
    let mut p = default_pair();
    p.handshake();
    let id: StreamId = p
        .client
        .open_stream(Destination {
            host: Host::Domain("origin.test"),
            port: 80,
        })
        .expect("open");
    p.pump();
    p.server.accept_stream(id).expect("accept");
    p.pump();

    let payload = vec![0xa5_u8; 16 * 1024];
    let now = p.now;
    let mut g = c.benchmark_group("connection");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("stream_16KiB_client_to_server", |b| {
        b.iter(|| {
            let mut sent = 0;
            let mut received = 0;
            while sent < payload.len() {
                sent += p.client.stream_send(id, &payload[sent..]).expect("send");
                received += deliver(&mut p.client, &mut p.server, now, &mut p.rng);
                // WINDOW updates back to the client.
                deliver(&mut p.server, &mut p.client, now, &mut p.rng);
            }
            assert_eq!(received, payload.len());
        })
    });
    g.finish();
}

criterion_group!(benches, stream_path);
criterion_main!(benches);
