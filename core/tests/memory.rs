//! Heap memory for host sessions: a [`HostConnection`] takes its buffers
//! and stream table when traffic flows and gives them back with
//! `release_idle_buffers` when it stops, so an idle session is small.

mod common;

use common::*;
use hytun_core::*;

/// Moves bytes both ways until quiet; returns the events (client, server).
fn pump(
    c: &mut HostConnection,
    s: &mut HostConnection,
    now: Instant,
    rng: &mut TestRng,
) -> (Vec<Ev>, Vec<Ev>) {
    let mut evs = (Vec::new(), Vec::new());
    loop {
        let mut moved = false;
        for to_server in [true, false] {
            let (from, to, evs) = if to_server {
                (&mut *c, &mut *s, &mut evs.1)
            } else {
                (&mut *s, &mut *c, &mut evs.0)
            };
            let bytes = from.transmit_pending().to_vec();
            from.transmit_done(bytes.len());
            moved |= !bytes.is_empty();
            let mut off = 0;
            loop {
                off += to.handle_input(&bytes[off..], now, rng);
                while let Some(ev) = to.poll_event() {
                    let ev = own(ev);
                    if let Ev::Data(id, d) = &ev {
                        to.stream_consumed(*id, d.len());
                    }
                    evs.push(ev);
                }
                if off >= bytes.len() {
                    break;
                }
            }
        }
        if !moved {
            return evs;
        }
    }
}

#[test]
fn idle_host_sessions_give_their_buffers_back() {
    // The connection itself, without its heap storage, is small.
    let inline = std::mem::size_of::<HostConnection>();
    println!("HostConnection without heap storage: {inline} bytes");
    assert!(inline <= 16 * 1024, "HostConnection is {inline} bytes");

    let mut rng = TestRng::new("keys");
    let cc = client_config("client", "server", SessionConfig::HOST, &mut rng);
    let sc = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let mut rng = TestRng::new("memory");
    let now = Instant::from_millis(1_000);
    let mut c = Box::new(HostConnection::client(cc, now, &mut rng));
    let mut s = Box::new(HostConnection::server(sc, now));
    pump(&mut c, &mut s, now, &mut rng);
    assert!(c.is_established() && s.is_established());

    let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    for round in 0..2 {
        let id = c
            .open_stream(Destination {
                host: Host::Domain("origin.test"),
                port: 80,
            })
            .unwrap();
        let (_, sev) = pump(&mut c, &mut s, now, &mut rng);
        assert_eq!(sev, vec![Ev::OpenRequest(id, "origin.test:80".into())]);
        s.accept_stream(id).unwrap();
        let mut sent = 0;
        let mut got = Vec::new();
        while sent < payload.len() {
            sent += s.stream_send(id, &payload[sent..]).unwrap();
            assert!(s.heap_bytes() > 0);
            let (cev, _) = pump(&mut c, &mut s, now, &mut rng);
            got.extend(data_of(&cev, id));
        }
        s.stream_finish(id).unwrap();
        c.stream_finish(id).unwrap();
        pump(&mut c, &mut s, now, &mut rng);
        assert_eq!(got, payload, "round {round}");
        assert_eq!(c.stream_count(), 0);
        assert_eq!(s.stream_count(), 0);
        assert!(c.heap_bytes() > 0 && s.heap_bytes() > 0);
        // Quiet: everything written, no stream, no record half read.
        c.release_idle_buffers();
        s.release_idle_buffers();
        assert_eq!(c.heap_bytes(), 0, "round {round}");
        assert_eq!(s.heap_bytes(), 0, "round {round}");
        assert!(c.is_established() && s.is_established());
    }
}

#[test]
fn buffers_in_use_are_not_released() {
    let mut rng = TestRng::new("keys");
    let cc = client_config("client", "server", SessionConfig::HOST, &mut rng);
    let sc = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let mut rng = TestRng::new("memory");
    let now = Instant::from_millis(1_000);
    let mut c = Box::new(HostConnection::client(cc, now, &mut rng));
    let mut s = Box::new(HostConnection::server(sc, now));
    pump(&mut c, &mut s, now, &mut rng);
    let id = c
        .open_stream(Destination {
            host: Host::Domain("origin.test"),
            port: 80,
        })
        .unwrap();
    assert_eq!(c.stream_send(id, b"hello").unwrap(), 5);
    // Unwritten output and a live stream stay put.
    let pending = c.transmit_pending().to_vec();
    c.release_idle_buffers();
    assert!(c.heap_bytes() >= 64 * 1024);
    assert_eq!(c.transmit_pending(), &pending[..]);
    // Half a record received stays put too.
    let half = pending.len() / 2;
    assert_eq!(s.handle_input(&pending[..half], now, &mut rng), half);
    s.release_idle_buffers();
    c.transmit_done(pending.len());
    s.handle_input(&pending[half..], now, &mut rng);
    let mut evs = Vec::new();
    while let Some(ev) = s.poll_event() {
        evs.push(own(ev));
    }
    assert_eq!(
        evs,
        vec![
            Ev::OpenRequest(id, "origin.test:80".into()),
            Ev::Data(id, b"hello".to_vec())
        ]
    );
}
