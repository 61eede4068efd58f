//! Writes seed inputs for every fuzz target into `<dir>/<target>/seed-*`
//! (default `<dir>` = `corpus`, relative to the current directory).
//!
//! The session seeds are real traffic: an in-memory client/server pair with
//! the fuzz targets' own keys, RNG labels and canonical driver policy runs a
//! scripted session, and each side's output becomes the other side's seed
//! (so `client_session` replays a server that completes the handshake and
//! streams data, and vice versa). The wire seeds are the handshake messages
//! cut out of that traffic plus one of every frame type. Finally the
//! generator checks that the session seeds really drive the targets past
//! the handshake, so a change in the core that breaks the seeds is noticed.
//!
//! Run from `core/fuzz/`: `cargo +nightly run --release --example gen_corpus`.

use std::fs;
use std::path::{Path, PathBuf};

use hytun_core::wire::frame::{Destination, Frame, Host, StreamId};
use hytun_core::wire::handshake::{Alert, AlertReason};
use hytun_core::{CloseCode, Connection, StreamErrorCode};
use hytun_core_fuzz::established::{Duo, Who};
use hytun_core_fuzz::single::{Header, Policy};
use hytun_core_fuzz::{Decide, Ev, fill_pattern};

struct Out {
    root: PathBuf,
    count: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let path = dir.join(format!("seed-{name}"));
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.count += 1;
    }
}

/// Both sides' traffic of one scripted session, with stage boundaries.
struct Transcript {
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    /// (name, c2s length, s2c length) after each stage.
    stages: Vec<(&'static str, usize, usize)>,
}

fn script<const TX: usize, const RX: usize, const S: usize>(bulk: usize) -> Transcript {
    let mut duo: Box<Duo<TX, RX, S>> = Box::new(Duo::with_configs(false));
    let mut policies = [Policy::new(false, 0), Policy::new(true, 0)];
    let mut h = |who: Who, c: &mut Connection<TX, RX, S>, e: &Ev| {
        policies[who.send_dir()].on_event(c, e);
    };
    let mut stages = Vec::new();
    macro_rules! stage {
        ($name:expr) => {
            stages.push(($name, duo.log[0].len(), duo.log[1].len()))
        };
    }

    // Flight by flight: ClientHello; ServerHello + Finished; client
    // Finished + first records; then everything the policies do.
    duo.transmit(Who::Client, None, &mut h);
    stage!("client-hello");
    duo.deliver(Who::Server, None, &mut h);
    duo.transmit(Who::Server, None, &mut h);
    stage!("server-flight");
    duo.deliver(Who::Client, None, &mut h);
    duo.transmit(Who::Client, None, &mut h);
    stage!("client-finished");
    duo.pump(&mut h);
    assert!(duo.client.is_established() && duo.server.is_established());
    stage!("streams");

    // Bulk data server -> client on stream 1, then key updates.
    let one = StreamId(1);
    send_all(&mut duo, Who::Server, one, bulk, &mut h);
    duo.server.request_key_update();
    duo.pump(&mut h);
    duo.client.request_key_update();
    send_all(&mut duo, Who::Client, one, bulk / 4, &mut h);
    duo.pump(&mut h);
    stage!("bulk-and-key-update");

    // Keepalive: 16 s of silence makes both sides PING (and answer PONG).
    duo.advance(16_000, &mut h);
    duo.pump(&mut h);
    stage!("ping-pong");

    // A third stream, reset by the client; stream 1 finished both ways.
    let mut v6 = [0u8; 16];
    v6[15] = 1;
    let three = duo.client.open_stream(Destination {
        host: Host::Ipv6(v6),
        port: 443,
    });
    duo.pump(&mut h);
    if let Ok(id) = three {
        let _ = duo.client.stream_reset(id, StreamErrorCode::Cancelled);
    }
    let _ = duo.server.stream_finish(one);
    duo.pump(&mut h);
    stage!("reset-and-fin");

    duo.server.go_away(CloseCode::ShuttingDown);
    duo.pump(&mut h);
    duo.client.close(CloseCode::Normal);
    duo.pump(&mut h);
    stage!("goaway-close");
    assert!(duo.client.is_closed() && duo.server.is_closed());
    Transcript {
        c2s: duo.log[0].clone(),
        s2c: duo.log[1].clone(),
        stages,
    }
}

fn send_all<const TX: usize, const RX: usize, const S: usize>(
    duo: &mut Duo<TX, RX, S>,
    who: Who,
    id: StreamId,
    total: usize,
    h: &mut hytun_core_fuzz::established::Handler<'_, TX, RX, S>,
) {
    let mut buf = vec![0u8; total];
    fill_pattern(id, who == Who::Server, 0, &mut buf);
    let mut sent = 0;
    for _ in 0..10_000 {
        if sent == total {
            return;
        }
        match duo.conn(who).stream_send(id, &buf[sent..]) {
            Ok(n) => sent += n,
            Err(e) => panic!("send on {id}: {e:?}"),
        }
        duo.pump(h);
    }
    panic!("could not send {total} bytes on {id}");
}

fn handshake_len(bytes: &[u8]) -> usize {
    3 + usize::from(u16::from_be_bytes([bytes[1], bytes[2]]))
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("corpus"));
    let mut out = Out { root, count: 0 };

    let host = script::<{ 64 * 1024 }, { 16384 + 18 }, 64>(20_000);
    let small = script::<2048, { 1024 + 18 }, 4>(6_000);

    // Session seeds: the peer's traffic, cut after each stage.
    for (tag, t, small_flag) in [("host", &host, false), ("small", &small, true)] {
        for (i, (stage, c, s)) in t.stages.iter().enumerate() {
            for (target, traffic) in [
                ("server_session", &t.c2s[..*c]),
                ("client_session", &t.s2c[..*s]),
            ] {
                let hdr = Header {
                    small: small_flag,
                    ..Header::default()
                };
                let mut seed = hdr.encode().to_vec();
                seed.extend_from_slice(traffic);
                out.put(target, &format!("{tag}-{i}-{stage}"), &seed);
            }
        }
        // The same traffic in small slices, with the clock moving and the
        // driver making other choices.
        for (target, traffic) in [("server_session", &t.c2s), ("client_session", &t.s2c)] {
            let cut = &traffic[..traffic.len().min(3000)];
            for (k, hdr) in [
                Header {
                    chunk_max: 1,
                    small: small_flag,
                    ..Header::default()
                },
                Header {
                    chunk_max: 200,
                    small: small_flag,
                    time_step: 3,
                    decisions: 0,
                },
                Header {
                    chunk_max: 0,
                    small: small_flag,
                    time_step: 0,
                    decisions: 7,
                },
            ]
            .into_iter()
            .enumerate()
            {
                let mut seed = hdr.encode().to_vec();
                seed.extend_from_slice(cut);
                out.put(target, &format!("{tag}-sliced-{k}"), &seed);
            }
        }

        // Handshake messages, whole (header included).
        let ch = handshake_len(&t.c2s);
        let sh = handshake_len(&t.s2c);
        let sfin = sh + handshake_len(&t.s2c[sh..]);
        let cfin = ch + handshake_len(&t.c2s[ch..]);
        out.put("client_hello", tag, &t.c2s[..ch]);
        out.put("server_hello", tag, &t.s2c[..sh]);
        out.put(
            "finished_alert",
            &format!("{tag}-server-finished"),
            &t.s2c[sh..sfin],
        );
        out.put(
            "finished_alert",
            &format!("{tag}-client-finished"),
            &t.c2s[ch..cfin],
        );
    }
    let mut buf = [0u8; 64];
    for (name, alert) in [
        (
            "alert-plain",
            Alert {
                reason: AlertReason::Unauthorized,
                key_id: None,
            },
        ),
        (
            "alert-key",
            Alert {
                reason: AlertReason::UnknownServerKey,
                key_id: Some(&[0x42; 32]),
            },
        ),
    ] {
        let n = alert.emit(&mut buf).unwrap();
        out.put("finished_alert", name, &buf[..n]);
    }

    // One of every frame type, and all of them in one record.
    let v6 = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let frames = [
        Frame::Open {
            id: StreamId(1),
            window: 65536,
            dest: Destination {
                host: Host::Domain("origin.test"),
                port: 80,
            },
        },
        Frame::Open {
            id: StreamId(2),
            window: 1,
            dest: Destination {
                host: Host::Ipv4([127, 0, 0, 1]),
                port: 8080,
            },
        },
        Frame::Open {
            id: StreamId(3),
            window: 9,
            dest: Destination {
                host: Host::Ipv6(v6),
                port: 443,
            },
        },
        Frame::OpenOk { id: StreamId(1) },
        Frame::OpenFail {
            id: StreamId(2),
            code: StreamErrorCode::NotAllowed,
        },
        Frame::Data {
            id: StreamId(1),
            data: b"GET / HTTP/1.1\r\n\r\n",
        },
        Frame::Window {
            id: StreamId(1),
            increment: 4096,
        },
        Frame::Fin { id: StreamId(1) },
        Frame::Reset {
            id: StreamId(3),
            code: StreamErrorCode::Cancelled,
        },
        Frame::Ping {
            opaque: 0x0102_0304_0506_0708,
        },
        Frame::Pong { opaque: 7 },
        Frame::GoAway {
            code: CloseCode::ShuttingDown,
        },
        Frame::KeyUpdate { request_peer: true },
        Frame::Close {
            code: CloseCode::Normal,
        },
    ];
    let mut all = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let mut b = vec![0u8; f.encoded_len()];
        f.emit(&mut b).unwrap();
        out.put("frame", &format!("{i:02}"), &b);
        all.extend_from_slice(&b);
    }
    out.put("frame", "all", &all);

    // Record headers: the smallest and largest valid records, one too big.
    for (name, hdr, max) in [
        ("min", [0x00, 0x11], 16384u64),
        ("max", [0x40, 0x10], 16384),
        ("over", [0x40, 0x11], 16384),
        ("embedded", [0x04, 0x10], 1024),
        ("huge-max", [0xff, 0xff], u64::MAX),
    ] {
        let mut seed = hdr.to_vec();
        seed.extend_from_slice(&max.to_le_bytes());
        out.put("record_header", name, &seed);
    }

    // PROXY protocol headers (the host's parser): v1 TCP4/TCP6/UNKNOWN,
    // v2 PROXY over INET/INET6 with a TLV, and LOCAL, each followed by the
    // start of a ClientHello.
    let v2 = |cmd: u8, fam: u8, body: &[u8]| {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.extend_from_slice(&[0x20 | cmd, fam]);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    };
    let mut inet = vec![192, 0, 2, 7, 127, 0, 0, 1, 0x15, 0xb3, 0x1b, 0x58];
    inet.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
    let mut inet6 = vec![0x20, 0x01, 0x0d, 0xb8];
    inet6.resize(32, 0);
    inet6.extend_from_slice(&[0x15, 0xb3, 0x1b, 0x58]);
    for (name, mut seed) in [
        (
            "v1-tcp4",
            b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 7000\r\n".to_vec(),
        ),
        (
            "v1-tcp6",
            b"PROXY TCP6 2001:db8::7 ::1 5555 7000\r\n".to_vec(),
        ),
        ("v1-unknown", b"PROXY UNKNOWN\r\n".to_vec()),
        ("v2-inet", v2(1, 0x11, &inet)),
        ("v2-inet6", v2(1, 0x21, &inet6)),
        ("v2-local", v2(0, 0x00, &[])),
    ] {
        seed.extend_from_slice(&[0x01, 0x01, 0x04]);
        out.put("proxy_header", name, &seed);
    }

    // established_session decodes its input with `arbitrary`; any bytes
    // are a valid plan, so the seeds are deterministic noise of a few sizes.
    let mut d = Decide::new(2024);
    for len in [16, 64, 256, 1024, 4096] {
        let seed: Vec<u8> = (0..len).map(|_| d.next_u64() as u8).collect();
        out.put("established_session", &format!("noise-{len}"), &seed);
    }

    self_check(&out.root);
    println!("wrote {} seeds under {}", out.count, out.root.display());
}

/// The full-session seeds must take the targets through the handshake and
/// produce stream events: otherwise the fuzzers would never get past it.
fn self_check(root: &Path) {
    for (target, server) in [("server_session", true), ("client_session", false)] {
        for tag in ["host", "small"] {
            let path = root.join(target).join(format!("seed-{tag}-7-goaway-close"));
            let seed = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = hytun_core_fuzz::single::run(&seed, server);
            assert!(
                outcome.connected,
                "{}: did not connect: {outcome:?}",
                path.display()
            );
            assert!(
                outcome.events > 4,
                "{}: too few events: {outcome:?}",
                path.display()
            );
            println!("self-check {target} {tag}: {outcome:?}");
        }
    }
}
