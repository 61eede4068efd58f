//! In-memory tests: a client and a server core pumped against each other,
//! with a virtual clock and a tamper hook.

mod common;

use common::*;
use hytun_core::wire::handshake::AlertReason;
use hytun_core::*;

fn dest(port: u16) -> Destination<'static> {
    Destination {
        host: Host::Domain("origin.test"),
        port,
    }
}

#[test]
fn handshake_completes_and_both_sides_see_connected() {
    let mut p = default_pair();
    let (c, s) = p.handshake();
    assert_eq!(c, vec![Ev::Connected]);
    assert_eq!(s, vec![Ev::Connected]);
    assert_eq!(p.client.suite(), Some(Suite::Aes128Gcm));
    assert_eq!(p.server.peer_key(), Some(public("client").id()));
    assert_eq!(p.client.peer_key(), Some(public("server").id()));
}

#[test]
fn rsa_3072_server_key_works() {
    let mut rng = TestRng::new("k");
    let c = client_config("client", "server3072", SessionConfig::HOST, &mut rng);
    let s = server_config("server3072", &["client"], SessionConfig::HOST, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> = Pair::new(c, s, TestRng::new("s"));
    p.handshake();
}

#[test]
fn stream_open_data_both_ways_half_close() {
    let mut p = default_pair();
    p.handshake();
    let id = p.client.open_stream(dest(80)).unwrap();
    // Data right after OPEN, before the server answers (no extra RTT).
    assert_eq!(
        p.client.stream_send(id, b"GET / HTTP/1.0\r\n\r\n").unwrap(),
        18
    );
    p.client.stream_finish(id).unwrap();
    let (_, s) = p.pump();
    assert_eq!(
        s,
        vec![
            Ev::OpenRequest(id, "origin.test:80".into()),
            Ev::Data(id, b"GET / HTTP/1.0\r\n\r\n".to_vec()),
            Ev::Finished(id)
        ]
    );
    p.server.accept_stream(id).unwrap();
    assert_eq!(
        p.server
            .stream_send(id, b"HTTP/1.0 200 OK\r\n\r\nhi")
            .unwrap(),
        21
    );
    p.server.stream_finish(id).unwrap();
    let (c, _) = p.pump();
    assert_eq!(
        c,
        vec![
            Ev::Opened(id),
            Ev::Data(id, b"HTTP/1.0 200 OK\r\n\r\nhi".to_vec()),
            Ev::Finished(id)
        ]
    );
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.server.stream_count(), 0);
}

#[test]
fn many_streams_interleaved() {
    let mut p = default_pair();
    p.handshake();
    let ids: Vec<_> = (0..50)
        .map(|i| p.client.open_stream(dest(1000 + i)).unwrap())
        .collect();
    let mut s = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let payload = vec![i as u8; 1000 + i * 37];
        let mut sent = 0;
        while sent < payload.len() {
            // The 64 KiB transmit buffer fills up: back-pressure, then pump.
            sent += p.client.stream_send(*id, &payload[sent..]).unwrap();
            s.extend(p.pump().1);
        }
    }
    let mut c = Vec::new();
    for id in &ids {
        p.server.accept_stream(*id).unwrap();
        let got = data_of(&s, *id);
        let mut sent = 0;
        while sent < got.len() {
            sent += p.server.stream_send(*id, &got[sent..]).unwrap();
            c.extend(p.pump().0);
        }
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(data_of(&c, *id), vec![i as u8; 1000 + i * 37]);
    }
}

#[test]
fn stream_limit_is_enforced_locally() {
    let mut p = default_pair();
    p.handshake();
    for i in 0..64 {
        p.client.open_stream(dest(1 + i)).unwrap();
    }
    assert_eq!(
        p.client.open_stream(dest(9)),
        Err(StreamError::TooManyStreams)
    );
    assert!(!p.client.can_open_stream());
}

#[test]
fn refused_stream_reports_reason() {
    let mut p = default_pair();
    p.handshake();
    let id = p.client.open_stream(dest(25)).unwrap();
    p.client.stream_send(id, b"early").unwrap();
    let (_, s) = p.pump();
    assert!(matches!(s[0], Ev::OpenRequest(..)));
    p.server
        .refuse_stream(id, StreamErrorCode::NotAllowed)
        .unwrap();
    let (c, _) = p.pump();
    assert_eq!(c, vec![Ev::OpenFailed(id, StreamErrorCode::NotAllowed)]);
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.server.stream_count(), 0);
    assert_eq!(
        p.client.stream_send(id, b"x"),
        Err(StreamError::UnknownStream)
    );
}

#[test]
fn reset_travels_both_ways() {
    let mut p = default_pair();
    p.handshake();
    let a = p.client.open_stream(dest(1)).unwrap();
    let b = p.client.open_stream(dest(2)).unwrap();
    p.pump();
    p.server.accept_stream(a).unwrap();
    p.server.accept_stream(b).unwrap();
    p.pump();
    p.client
        .stream_reset(a, StreamErrorCode::Cancelled)
        .unwrap();
    let (_, s) = p.pump();
    assert_eq!(s, vec![Ev::Reset(a, StreamErrorCode::Cancelled)]);
    p.server
        .stream_reset(b, StreamErrorCode::ConnectionRefused)
        .unwrap();
    let (c, _) = p.pump();
    assert_eq!(c, vec![Ev::Reset(b, StreamErrorCode::ConnectionRefused)]);
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.server.stream_count(), 0);
}

#[test]
fn flow_control_bounds_a_slow_reader() {
    let mut rng = TestRng::new("k");
    let mut session = SessionConfig::HOST;
    session.stream_window = 8192;
    let c = client_config("client", "server", session, &mut rng);
    let s = server_config("server", &["client"], session, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> = Pair::new(c, s, TestRng::new("s"));
    p.handshake();
    let id = p.client.open_stream(dest(1)).unwrap();
    p.pump();
    p.server.accept_stream(id).unwrap();
    p.pump();
    // The client never consumes: the server may send one window, no more.
    p.client_consumes = false;
    let big = vec![7u8; 100_000];
    let mut sent = 0;
    for _ in 0..10 {
        sent += p.server.stream_send(id, &big[sent..]).unwrap();
        p.pump();
    }
    assert_eq!(sent, 8192, "sender stops at the window");
    // Once the reader consumes, credit returns and sending resumes.
    p.client.stream_consumed(id, 8192);
    let (_, s) = p.pump();
    assert!(s.contains(&Ev::Writable(id)));
    assert_eq!(p.server.stream_send(id, &big[sent..]).unwrap(), 8192);
}

#[test]
fn sending_beyond_credit_is_a_fatal_flow_control_error() {
    // A peer that ignores the window: forge by giving the server a huge
    // window view via a tampered SERVER window is not possible (records are
    // authenticated), so drive the core directly: the client announces a
    // small window and a raw server connection with a large config sends.
    let mut rng = TestRng::new("k");
    let mut small = SessionConfig::HOST;
    small.stream_window = 4096;
    let c = client_config("client", "server", small, &mut rng);
    let s = server_config("server", &["client"], small, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> = Pair::new(c, s, TestRng::new("s"));
    p.handshake();
    let id = p.client.open_stream(dest(1)).unwrap();
    // The server's credit for client data is 4096; the client core itself
    // refuses to exceed it.
    assert_eq!(p.client.stream_send(id, &[1u8; 10_000]).unwrap(), 4096);
}

#[test]
fn key_update_automatic_and_requested() {
    let mut rng = TestRng::new("k");
    let mut session = SessionConfig::HOST;
    session.key_update_after = 5;
    let c = client_config("client", "server", session, &mut rng);
    let s = server_config("server", &["client"], session, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> = Pair::new(c, s, TestRng::new("s"));
    p.handshake();
    let id = p.client.open_stream(dest(1)).unwrap();
    p.pump();
    p.server.accept_stream(id).unwrap();
    let mut expected = Vec::new();
    for i in 0..40u8 {
        let chunk = vec![i; 3000];
        p.client.stream_send(id, &chunk).unwrap();
        expected.extend_from_slice(&chunk);
        let (_, s) = p.pump();
        let _ = s;
    }
    assert!(
        p.client.stats().key_updates_sent >= 5,
        "{:?}",
        p.client.stats()
    );
    assert_eq!(
        p.client.stats().key_updates_sent,
        p.server.stats().key_updates_received
    );
    p.server.request_key_update();
    p.server.stream_send(id, b"after update").unwrap();
    let (c, _) = p.pump();
    assert!(c.contains(&Ev::Data(id, b"after update".to_vec())));
    assert!(p.server.stats().key_updates_sent >= 1);
}

#[test]
fn authenticated_close_and_truncation() {
    let mut p = default_pair();
    p.handshake();
    p.client.close(CloseCode::Normal);
    let (c, s) = p.pump();
    assert_eq!(
        c,
        vec![Ev::Closed(ConnectionError::LocallyClosed(
            CloseCode::Normal
        ))]
    );
    assert_eq!(
        s,
        vec![Ev::Closed(ConnectionError::PeerClosed(CloseCode::Normal))]
    );

    let mut p = default_pair();
    p.handshake();
    p.server.handle_eof();
    let (_, s) = p.pump();
    assert_eq!(s, vec![Ev::Closed(ConnectionError::Truncated)]);
}

#[test]
fn keepalive_and_idle_timeout() {
    let mut p = default_pair();
    p.handshake();
    let t = p.client.poll_timeout().unwrap();
    assert_eq!(t.as_millis(), p.now.as_millis() + 15_000);
    p.advance(15_000);
    let before = p.server.stats().records_received;
    p.pump();
    assert!(p.server.stats().records_received > before, "ping sent");
    assert!(p.client.is_established());
    // A dead peer: nothing moves for the idle timeout.
    p.advance(15_000);
    p.advance(30_001);
    let (c, _) = (drain(&mut p.client), ());
    assert!(
        c.contains(&Ev::Closed(ConnectionError::Timeout(TimeoutKind::Idle))),
        "{c:?}"
    );
}

fn drain<const TX: usize, const RX: usize, const S: usize>(
    c: &mut Connection<TX, RX, S>,
) -> Vec<Ev> {
    let mut v = Vec::new();
    while let Some(e) = c.poll_event() {
        v.push(own(e));
    }
    v
}

#[test]
fn handshake_timeout() {
    let mut p = default_pair();
    p.advance(10_001);
    assert!(
        drain(&mut p.server).contains(&Ev::Closed(ConnectionError::Timeout(
            TimeoutKind::Handshake
        )))
    );
}

#[test]
fn goaway_stops_new_streams() {
    let mut p = default_pair();
    p.handshake();
    p.server.go_away(CloseCode::ShuttingDown);
    let (c, _) = p.pump();
    assert_eq!(c, vec![Ev::GoAway(CloseCode::ShuttingDown)]);
    assert_eq!(p.client.open_stream(dest(1)), Err(StreamError::GoingAway));
}

#[test]
fn small_buffers_one_byte_at_a_time() {
    let mut rng = TestRng::new("k");
    let c = client_config("client", "server", SessionConfig::EMBEDDED, &mut rng);
    let s = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let mut p: Pair<2048, { 1024 + 18 }, 4> = Pair::new(c, s, TestRng::new("s"));
    p.chunk = 1;
    p.handshake();
    p.chunk = 7;
    let id = p.client.open_stream(dest(80)).unwrap();
    let mut sent = 0;
    let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let mut got = Vec::new();
    let mut accepted = false;
    while got.len() < body.len() {
        if sent < body.len() {
            sent += p.client.stream_send(id, &body[sent..]).unwrap();
        }
        let (_, s) = p.pump();
        if !accepted {
            p.server.accept_stream(id).unwrap();
            accepted = true;
        }
        got.extend(data_of(&s, id));
    }
    assert_eq!(got, body);
}

// ---------------------------------------------------- security properties --

#[test]
fn p1_client_without_its_private_key_fails() {
    // The client presents the authorized "client" key id but holds "other"'s
    // private key: build a config whose identity is other's key but whose
    // announced id is client's — impossible through the API, so instead the
    // server authorizes "client" and the attacker owns only client.pub. The
    // attacker uses its own key "other" and rewrites the key id in the hello.
    let mut rng = TestRng::new("k");
    let c = client_config("other", "server", SessionConfig::HOST, &mut rng);
    let s = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> = Pair::new(c, s, TestRng::new("s"));
    let client_id = public("client").id().0;
    p.tamper = Some(Box::new(move |dir, bytes| {
        if dir == Dir::ClientToServer && bytes.first() == Some(&1) {
            // header 3 + magic 4 + version 1 + n 1 + 2 suites + max 2 + random 32 + share 32
            let at = 3 + 4 + 1 + 1 + 2 + 2 + 32 + 32;
            bytes[at..at + 32].copy_from_slice(&client_id);
        }
    }));
    let (c, s) = p.pump();
    assert!(!p.server.is_established());
    assert!(
        s.contains(&Ev::Closed(ConnectionError::Handshake(
            HandshakeError::ClientAuthenticationFailed
        ))) || c.iter().any(|e| matches!(e, Ev::Closed(_))),
        "{c:?} {s:?}"
    );
    assert!(c.iter().any(|e| matches!(e, Ev::Closed(_))));
}

#[test]
fn p2_server_without_pinned_private_key_fails() {
    // The server holds "other"'s key but claims to be "server" (the id check
    // is passed by tampering the hello's server key id on the way in).
    let mut rng = TestRng::new("k");
    let c = client_config("client", "server", SessionConfig::HOST, &mut rng);
    let s = server_config("other", &["client"], SessionConfig::HOST, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> = Pair::new(c, s, TestRng::new("s"));
    let other_id = public("other").id().0;
    p.tamper = Some(Box::new(move |dir, bytes| {
        if dir == Dir::ClientToServer && bytes.first() == Some(&1) {
            let at = 3 + 4 + 1 + 1 + 2 + 2 + 32 + 32 + 32;
            bytes[at..at + 32].copy_from_slice(&other_id);
        }
    }));
    let (c, _) = p.pump();
    assert!(
        c.contains(&Ev::Closed(ConnectionError::Handshake(
            HandshakeError::ServerAuthenticationFailed
        ))),
        "{c:?}"
    );
    assert!(!p.client.is_established());
}

#[test]
fn wrong_pinned_key_is_named_by_the_server() {
    let mut rng = TestRng::new("k");
    let c = client_config("client", "other", SessionConfig::HOST, &mut rng);
    let s = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> = Pair::new(c, s, TestRng::new("s"));
    let (c, s) = p.pump();
    let server_id = public("server").id();
    assert_eq!(
        c,
        vec![Ev::Closed(ConnectionError::Handshake(
            HandshakeError::PeerAlert(AlertReason::UnknownServerKey, Some(server_id))
        ))]
    );
    assert_eq!(
        s,
        vec![Ev::Closed(ConnectionError::Handshake(
            HandshakeError::UnknownServerKey(public("other").id())
        ))]
    );
}

#[test]
fn unauthorized_client_is_refused_with_its_key_id() {
    let mut rng = TestRng::new("k");
    let c = client_config("other", "server", SessionConfig::HOST, &mut rng);
    let s = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> = Pair::new(c, s, TestRng::new("s"));
    let (c, s) = p.pump();
    assert_eq!(
        s,
        vec![Ev::Closed(ConnectionError::Handshake(
            HandshakeError::UnauthorizedClient(public("other").id())
        ))]
    );
    assert_eq!(
        c,
        vec![Ev::Closed(ConnectionError::Handshake(
            HandshakeError::PeerAlert(AlertReason::Unauthorized, None)
        ))]
    );
}

#[test]
fn p3_replayed_client_flight_never_yields_a_session() {
    let mut p = default_pair();
    p.handshake();
    let flight = p.wire_c2s.clone();
    // Replay the client's whole flight (hello + finished) to a fresh server.
    let mut rng = TestRng::new("k2");
    let s = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let mut server: Conn = Connection::server(s, Instant::from_millis(0));
    let mut r = TestRng::new("fresh server randomness");
    let mut off = 0;
    let mut evs = Vec::new();
    while off < flight.len() {
        off += server.handle_input(&flight[off..], Instant::from_millis(1), &mut r);
        while let Some(e) = server.poll_event() {
            evs.push(own(e));
        }
    }
    assert!(!server.is_established());
    assert_eq!(
        evs,
        vec![Ev::Closed(ConnectionError::Handshake(
            HandshakeError::ClientAuthenticationFailed
        ))]
    );
}

#[test]
fn p3_replayed_server_flight_never_yields_a_session() {
    let mut p = default_pair();
    p.handshake();
    let flight = p.wire_s2c.clone();
    let mut rng = TestRng::new("k3");
    let c = client_config("client", "server", SessionConfig::HOST, &mut rng);
    let mut r = TestRng::new("fresh client");
    let mut client: Conn = Connection::client(c, Instant::from_millis(0), &mut r);
    let mut off = 0;
    let mut evs = Vec::new();
    while off < flight.len() {
        off += client.handle_input(&flight[off..], Instant::from_millis(1), &mut r);
        while let Some(e) = client.poll_event() {
            evs.push(own(e));
        }
    }
    assert!(!client.is_established());
    assert_eq!(
        evs,
        vec![Ev::Closed(ConnectionError::Handshake(
            HandshakeError::ServerAuthenticationFailed
        ))]
    );
}

/// Runs a handshake where byte `index` of the first `len` bytes in `dir`
/// is flipped; returns true if neither side established a session.
fn flip_fails(dir: Dir, index: usize) -> bool {
    let mut p = default_pair();
    let mut seen = 0usize;
    p.tamper = Some(Box::new(move |d, bytes| {
        if d == dir {
            if index >= seen && index < seen + bytes.len() {
                bytes[index - seen] ^= 0x01;
            }
            seen += bytes.len();
        }
    }));
    let _ = p.pump();
    // A corrupted length makes a side wait for bytes that never come: the
    // handshake timer ends that.
    p.advance(11_000);
    // A side that failed drops the transport, which the other side sees as
    // EOF (the client may already consider itself established after
    // sending its Finished, as in TLS 1.3; it learns the truth this way).
    if p.server.is_closed() {
        p.client.handle_eof();
    }
    if p.client.is_closed() {
        p.server.handle_eof();
    }
    !p.server.is_established() && !p.client.is_established()
}

#[test]
fn p4_any_flipped_bit_in_any_handshake_message_fails() {
    let mut p = default_pair();
    p.handshake();
    let c2s = p.wire_c2s.len();
    let s2c = p.wire_s2c.len();
    // Every byte of the client's flight (hello + finished) and the server's
    // flight (hello + finished). Flipping the low bit of each byte covers
    // every message and field.
    for i in 0..c2s {
        assert!(
            flip_fails(Dir::ClientToServer, i),
            "c2s byte {i} flipped but a session came up"
        );
    }
    for i in 0..s2c {
        assert!(
            flip_fails(Dir::ServerToClient, i),
            "s2c byte {i} flipped but a session came up"
        );
    }
}

#[test]
fn p5_oaep_failure_is_implicit_rejection() {
    // Corrupt the RSA ciphertext in the ClientHello: the server must not
    // fail early or send an alert; it answers like always, and the failure
    // shows only as the client rejecting the server's Finished.
    let mut p = default_pair();
    p.tamper = Some(Box::new(|dir, bytes| {
        if dir == Dir::ClientToServer && bytes.first() == Some(&1) {
            let n = bytes.len();
            bytes[n - 10] ^= 0x80;
        }
    }));
    let (c, s) = p.pump();
    assert_eq!(
        c,
        vec![Ev::Closed(ConnectionError::Handshake(
            HandshakeError::ServerAuthenticationFailed
        ))]
    );
    // The server only learns of it as a truncated session (the client
    // stops), never through a decryption error of its own.
    assert!(s.iter().all(|e| !matches!(
        e,
        Ev::Closed(ConnectionError::Handshake(HandshakeError::Crypto(_)))
    )));
    assert!(!p.server.is_established());
}

#[test]
fn p6_suite_downgrade_is_caught_by_the_transcript() {
    // The client prefers AES-256; an attacker strips it from the offer so
    // the server picks AES-128.
    let mut rng = TestRng::new("k");
    let mut cfg = ClientConfig::new(
        private("client", &mut rng),
        public("server"),
        SessionConfig::HOST,
    );
    cfg.suites.clear();
    cfg.suites.push(Suite::Aes256Gcm).unwrap();
    cfg.suites.push(Suite::Aes128Gcm).unwrap();
    let s = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> =
        Pair::new(std::sync::Arc::new(cfg), s, TestRng::new("s"));
    p.tamper = Some(Box::new(|dir, bytes| {
        if dir == Dir::ClientToServer && bytes.first() == Some(&1) {
            bytes[9] = 0x01; // first offered suite: AES-256 -> AES-128
        }
    }));
    let (c, _) = p.pump();
    assert_eq!(
        c,
        vec![Ev::Closed(ConnectionError::Handshake(
            HandshakeError::ServerAuthenticationFailed
        ))]
    );
    // Without tampering the stronger preferred suite is chosen.
    let mut rng = TestRng::new("k");
    let mut cfg = ClientConfig::new(
        private("client", &mut rng),
        public("server"),
        SessionConfig::HOST,
    );
    cfg.suites.clear();
    cfg.suites.push(Suite::Aes256Gcm).unwrap();
    let s = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> =
        Pair::new(std::sync::Arc::new(cfg), s, TestRng::new("s"));
    p.handshake();
    assert_eq!(p.client.suite(), Some(Suite::Aes256Gcm));
}

#[test]
fn version_downgrade_is_refused() {
    let mut p = default_pair();
    p.tamper = Some(Box::new(|dir, bytes| {
        if dir == Dir::ClientToServer && bytes.first() == Some(&1) {
            bytes[7] = 0; // version
        }
    }));
    let (c, _) = p.pump();
    assert!(
        matches!(
            c[0],
            Ev::Closed(ConnectionError::Handshake(HandshakeError::PeerAlert(
                AlertReason::UnsupportedVersion,
                None
            )))
        ),
        "{c:?}"
    );
}

#[test]
fn tampered_replayed_or_dropped_records_close_the_session() {
    // Flip a bit in the first post-handshake record from the client.
    for mode in 0..3 {
        let mut p = default_pair();
        p.handshake();
        let id = p.client.open_stream(dest(1)).unwrap();
        p.client.stream_send(id, b"hello").unwrap();
        let record = p.client.transmit_pending().to_vec();
        p.client.transmit_done(record.len());
        let mut bytes = match mode {
            0 => {
                let mut r = record.clone();
                r[5] ^= 4;
                r
            }
            1 => {
                // the record followed by a replay of itself
                let mut r = record.clone();
                r.extend_from_slice(&record);
                r
            }
            _ => {
                // drop this record, deliver the next one
                p.client.stream_send(id, b"second").unwrap();
                let next = p.client.transmit_pending().to_vec();
                p.client.transmit_done(next.len());
                next
            }
        };
        let mut evs = Vec::new();
        let mut off = 0;
        while off < bytes.len() {
            off += p.server.handle_input(&bytes[off..], p.now, &mut p.rng);
            while let Some(e) = p.server.poll_event() {
                evs.push(own(e));
            }
        }
        bytes.clear();
        assert!(
            evs.contains(&Ev::Closed(ConnectionError::Record(
                hytun_core::crypto::CryptoError::Decrypt
            ))),
            "mode {mode}: {evs:?}"
        );
        // Nothing from a failed record was delivered.
        if mode != 1 {
            assert!(
                !evs.iter().any(|e| matches!(e, Ev::Data(..))),
                "mode {mode}: {evs:?}"
            );
        }
        assert!(p.server.is_closed());
    }
}

#[test]
fn oversized_record_header_is_rejected_before_buffering() {
    let mut p = default_pair();
    p.handshake();
    let mut evs = Vec::new();
    let n = p
        .server
        .handle_input(&[0xff, 0xff, 0, 0, 0], p.now, &mut p.rng);
    assert_eq!(n, 5);
    while let Some(e) = p.server.poll_event() {
        evs.push(own(e));
    }
    assert!(
        matches!(evs[0], Ev::Closed(ConnectionError::Malformed(_))),
        "{evs:?}"
    );
}

// ------------------------------------------------ regressions from review --

#[test]
fn key_update_then_close_is_a_normal_close() {
    let mut p = default_pair();
    p.handshake();
    p.client.request_key_update();
    p.client.close(CloseCode::Normal);
    let (_, s) = p.pump();
    assert_eq!(
        s,
        vec![Ev::Closed(ConnectionError::PeerClosed(CloseCode::Normal))]
    );
}

#[test]
fn requested_key_update_is_answered_by_the_peer_once() {
    let mut p = default_pair();
    p.handshake();
    p.client.request_key_update();
    let id = p.client.open_stream(dest(1)).unwrap();
    p.pump();
    p.server.accept_stream(id).unwrap();
    p.server.stream_send(id, b"x").unwrap();
    p.pump();
    p.client.stream_send(id, b"y").unwrap();
    p.pump();
    assert_eq!(p.client.stats().key_updates_sent, 1);
    assert_eq!(p.server.stats().key_updates_received, 1);
    assert_eq!(
        p.server.stats().key_updates_sent,
        1,
        "peer answered the request"
    );
    assert_eq!(p.client.stats().key_updates_received, 1);
    assert!(p.client.is_established() && p.server.is_established());
}

#[test]
fn reset_then_reopen_at_the_stream_limit() {
    let mut rng = TestRng::new("k");
    let mut session = SessionConfig::HOST;
    session.max_streams = 1;
    let c = client_config("client", "server", session, &mut rng);
    let s = server_config("server", &["client"], session, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> = Pair::new(c, s, TestRng::new("s"));
    p.handshake();
    for round in 0..5u16 {
        let id = p.client.open_stream(dest(100 + round)).unwrap();
        p.client.stream_send(id, b"data").unwrap();
        p.pump();
        p.server.accept_stream(id).unwrap();
        // The server owes a WINDOW frame when the client resets.
        p.server.stream_consumed(id, 4);
        p.client
            .stream_reset(id, StreamErrorCode::Cancelled)
            .unwrap();
        let (_, s) = p.pump();
        assert!(
            s.contains(&Ev::Reset(id, StreamErrorCode::Cancelled)),
            "round {round}: {s:?}"
        );
        assert!(p.server.is_established(), "round {round}");
    }
}

#[test]
fn fin_cannot_overtake_open_ok() {
    let mut p = default_pair();
    p.handshake();
    let id = p.client.open_stream(dest(1)).unwrap();
    p.pump();
    assert_eq!(p.server.stream_finish(id), Err(StreamError::InvalidState));
    p.server.accept_stream(id).unwrap();
    p.server.stream_finish(id).unwrap();
    let (c, _) = p.pump();
    assert_eq!(c, vec![Ev::Opened(id), Ev::Finished(id)]);
}

#[test]
fn accept_after_refuse_or_reset_is_refused() {
    let mut p = default_pair();
    p.handshake();
    let a = p.client.open_stream(dest(1)).unwrap();
    let b = p.client.open_stream(dest(2)).unwrap();
    p.pump();
    p.server
        .refuse_stream(a, StreamErrorCode::NotAllowed)
        .unwrap();
    assert_eq!(p.server.accept_stream(a), Err(StreamError::InvalidState));
    assert_eq!(
        p.server.refuse_stream(a, StreamErrorCode::Other),
        Err(StreamError::InvalidState)
    );
    p.server
        .stream_reset(b, StreamErrorCode::Cancelled)
        .unwrap();
    assert_eq!(p.server.accept_stream(b), Err(StreamError::InvalidState));
    let (c, _) = p.pump();
    assert_eq!(
        c,
        vec![
            Ev::OpenFailed(a, StreamErrorCode::NotAllowed),
            Ev::OpenFailed(b, StreamErrorCode::Cancelled)
        ]
    );
    p.client.go_away(CloseCode::Normal);
    assert!(!p.client.can_open_stream());
}

#[test]
fn connections_start_and_restart_in_place() {
    let mut rng = TestRng::new("k");
    let c = client_config("client", "server", SessionConfig::HOST, &mut rng);
    let s = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> =
        Pair::new(c.clone(), s.clone(), TestRng::new("s"));
    p.handshake();
    p.client.close(CloseCode::Normal);
    p.pump();
    // Same storage, new sessions (what a firmware with a static does).
    let now = p.now;
    p.client.start_client(c, now, &mut p.rng);
    p.server.start_server(s, now);
    p.wire_c2s.clear();
    let (c_ev, s_ev) = p.handshake();
    assert_eq!((c_ev, s_ev), (vec![Ev::Connected], vec![Ev::Connected]));
    assert_eq!(p.client.stats().records_received, 0, "counters restart");
    // An unstarted connection refuses input without panicking.
    let mut idle: SmallConn = Connection::unstarted();
    assert_eq!(
        idle.handle_input(&[1, 0, 1, 0], now, &mut TestRng::new("x")),
        4
    );
    assert!(matches!(idle.poll_event(), Some(Event::Closed { .. })));
}

// ------------------------------------------- PROTOCOL.md rules (issue 9) --

use hytun_core::wire::frame::Frame;

/// A `default_pair()` after its handshake, with the client's and the
/// server's first traffic secrets.
fn established_with_secrets() -> (Pair<{ 64 * 1024 }, { 16384 + 18 }, 64>, [u8; 32], [u8; 32]) {
    let mut p = default_pair();
    p.handshake();
    let (c_ts, s_ts) = default_pair_traffic_secrets(&p.wire_c2s, &p.wire_s2c);
    (p, c_ts, s_ts)
}

/// Everything the server has to send now (its records from the first).
fn server_output(p: &mut Pair<{ 64 * 1024 }, { 16384 + 18 }, 64>) -> Vec<u8> {
    let out = p.server.transmit_pending().to_vec();
    p.server.transmit_done(out.len());
    out
}

#[test]
fn pong_owed_for_a_ping_survives_a_later_failing_record() {
    let mut p = default_pair();
    p.handshake();
    // The client's keepalive PING (the server's timer is not run).
    p.now = Instant::from_millis(p.now.as_millis() + 15_000);
    p.client.handle_timeout(p.now);
    let mut read = p.client.transmit_pending().to_vec();
    p.client.transmit_done(read.len());
    // A second record in the same read, damaged on the way.
    let id = p.client.open_stream(dest(1)).unwrap();
    p.client.stream_send(id, b"x").unwrap();
    let mut bad = p.client.transmit_pending().to_vec();
    p.client.transmit_done(bad.len());
    bad[4] ^= 1;
    read.extend_from_slice(&bad);
    let evs = feed(&mut p.server, &read, p.now, &mut p.rng);
    assert_eq!(
        evs,
        vec![Ev::Closed(ConnectionError::Record(
            hytun_core::crypto::CryptoError::Decrypt
        ))]
    );
    let (_, s_ts) = default_pair_traffic_secrets(&p.wire_c2s, &p.wire_s2c);
    let out = server_output(&mut p);
    assert_eq!(
        read_records(s_ts, &out),
        vec![
            vec!["Pong { opaque: 1 }".to_string()],
            vec!["Close { code: ProtocolViolation }".to_string()],
        ]
    );
}

#[test]
fn pong_owed_for_a_ping_earlier_in_a_failing_record_is_sent() {
    let (mut p, c_ts, s_ts) = established_with_secrets();
    let mut forge = Forger::new(c_ts);
    // PING, then a frame for a stream that was never opened (fatal).
    let rec = forge.record(&[Frame::Ping { opaque: 77 }, Frame::Fin { id: StreamId(9) }]);
    let evs = feed(&mut p.server, &rec, p.now, &mut p.rng);
    assert_eq!(
        evs,
        vec![Ev::Closed(ConnectionError::Protocol(
            ProtocolViolation::BadStreamId
        ))]
    );
    let out = server_output(&mut p);
    assert_eq!(
        read_records(s_ts, &out),
        vec![
            vec!["Pong { opaque: 77 }".to_string()],
            vec!["Close { code: ProtocolViolation }".to_string()],
        ]
    );
}

#[test]
fn key_update_request_is_answered_at_once_on_an_idle_session() {
    let mut p = default_pair();
    p.handshake();
    assert!(!p.client.wants_transmit());
    p.client.request_key_update();
    assert!(
        p.client.wants_transmit(),
        "a requested update is owed output"
    );
    let c2s_before = p.wire_c2s.len();
    let s2c_before = p.wire_s2c.len();
    let (c, s) = p.pump();
    assert_eq!((c, s), (vec![], vec![]));
    // One record each way, each carrying only the KEY_UPDATE frame: 2 + 2 + 16.
    assert_eq!(p.wire_c2s.len() - c2s_before, 20);
    assert_eq!(p.wire_s2c.len() - s2c_before, 20);
    let (c_ts, s_ts) = default_pair_traffic_secrets(&p.wire_c2s, &p.wire_s2c);
    assert_eq!(
        read_records(c_ts, &p.wire_c2s[c2s_before..]),
        vec![vec!["KeyUpdate { request_peer: true }".to_string()]]
    );
    assert_eq!(
        read_records(s_ts, &p.wire_s2c[s2c_before..]),
        vec![vec!["KeyUpdate { request_peer: false }".to_string()]]
    );
    assert_eq!(p.client.stats().key_updates_sent, 1);
    assert_eq!(p.client.stats().key_updates_received, 1);
    assert_eq!(p.server.stats().key_updates_sent, 1);
    assert_eq!(p.server.stats().key_updates_received, 1);
    assert!(!p.client.wants_transmit() && !p.server.wants_transmit());
    // Both directions work under the new keys.
    let id = p.client.open_stream(dest(1)).unwrap();
    p.pump();
    p.server.accept_stream(id).unwrap();
    p.server.stream_send(id, b"ok").unwrap();
    let (c, _) = p.pump();
    assert_eq!(c, vec![Ev::Opened(id), Ev::Data(id, b"ok".to_vec())]);
}

#[test]
fn open_after_the_clients_own_goaway_is_fatal() {
    // The client API refuses it...
    let mut p = default_pair();
    p.handshake();
    p.client.go_away(CloseCode::Normal);
    assert_eq!(p.client.open_stream(dest(1)), Err(StreamError::GoingAway));
    // ...and a server that receives it anyway closes the session.
    let (mut p, c_ts, s_ts) = established_with_secrets();
    let mut forge = Forger::new(c_ts);
    let mut read = forge.record(&[Frame::GoAway {
        code: CloseCode::Normal,
    }]);
    read.extend_from_slice(&forge.record(&[Frame::Open {
        id: StreamId(1),
        window: 1024,
        dest: dest(80),
    }]));
    let evs = feed(&mut p.server, &read, p.now, &mut p.rng);
    assert_eq!(
        evs,
        vec![
            Ev::GoAway(CloseCode::Normal),
            Ev::Closed(ConnectionError::Protocol(
                ProtocolViolation::UnexpectedFrame
            ))
        ]
    );
    assert_eq!(
        read_records(s_ts, &server_output(&mut p)),
        vec![vec!["Close { code: ProtocolViolation }".to_string()]]
    );
}

#[test]
fn a_repeated_goaway_changes_nothing() {
    let (mut p, c_ts, _) = established_with_secrets();
    let mut forge = Forger::new(c_ts);
    let rec = forge.record(&[
        Frame::GoAway {
            code: CloseCode::Normal,
        },
        Frame::GoAway {
            code: CloseCode::ShuttingDown,
        },
    ]);
    let evs = feed(&mut p.server, &rec, p.now, &mut p.rng);
    assert_eq!(evs, vec![Ev::GoAway(CloseCode::Normal)]);
    assert!(p.server.is_established());
}

#[test]
fn open_with_window_zero_waits_for_credit() {
    let (mut p, c_ts, s_ts) = established_with_secrets();
    let mut forge = Forger::new(c_ts);
    let id = StreamId(1);
    let rec = forge.record(&[Frame::Open {
        id,
        window: 0,
        dest: dest(80),
    }]);
    let evs = feed(&mut p.server, &rec, p.now, &mut p.rng);
    assert_eq!(evs, vec![Ev::OpenRequest(id, "origin.test:80".into())]);
    p.server.accept_stream(id).unwrap();
    assert_eq!(p.server.stream_send_capacity(id), 0);
    assert_eq!(p.server.stream_send(id, b"hello").unwrap(), 0);
    let rec = forge.record(&[Frame::Window { id, increment: 5 }]);
    let evs = feed(&mut p.server, &rec, p.now, &mut p.rng);
    assert_eq!(evs, vec![Ev::Writable(id)]);
    assert_eq!(p.server.stream_send(id, b"hello!").unwrap(), 5);
    p.server.stream_finish(id).unwrap();
    let frames: Vec<String> = read_records(s_ts, &server_output(&mut p)).concat();
    assert_eq!(
        frames,
        vec![
            "OpenOk { id: StreamId(1) }".to_string(),
            "Data { id: StreamId(1), data: [104, 101, 108, 108, 111] }".to_string(),
            "Fin { id: StreamId(1) }".to_string(),
        ]
    );
}

#[test]
fn a_frame_after_close_makes_the_record_a_violation() {
    let (mut p, c_ts, s_ts) = established_with_secrets();
    let mut forge = Forger::new(c_ts);
    let rec = forge.record(&[
        Frame::Close {
            code: CloseCode::Normal,
        },
        Frame::Ping { opaque: 1 },
    ]);
    let evs = feed(&mut p.server, &rec, p.now, &mut p.rng);
    assert_eq!(
        evs,
        vec![Ev::Closed(ConnectionError::Protocol(
            ProtocolViolation::FrameAfterEnd
        ))]
    );
    assert_eq!(
        read_records(s_ts, &server_output(&mut p)),
        vec![vec!["Close { code: ProtocolViolation }".to_string()]]
    );

    // A valid CLOSE record: records after it are ignored, nothing answers.
    let (mut p, c_ts, _) = established_with_secrets();
    let mut forge = Forger::new(c_ts);
    let mut read = forge.record(&[Frame::Close {
        code: CloseCode::Normal,
    }]);
    read.extend_from_slice(&forge.record(&[Frame::Ping { opaque: 2 }]));
    read.extend_from_slice(b"not even a record");
    let evs = feed(&mut p.server, &read, p.now, &mut p.rng);
    assert_eq!(
        evs,
        vec![Ev::Closed(ConnectionError::PeerClosed(CloseCode::Normal))]
    );
    assert!(server_output(&mut p).is_empty());
}

/// Moves what `from` has to send to `to` once; returns `to`'s events.
fn hop(p: &mut Pair<{ 64 * 1024 }, { 16384 + 18 }, 64>, dir: Dir) -> Vec<Ev> {
    let (from, to) = match dir {
        Dir::ClientToServer => (&mut p.client, &mut p.server),
        Dir::ServerToClient => (&mut p.server, &mut p.client),
    };
    let bytes = from.transmit_pending().to_vec();
    from.transmit_done(bytes.len());
    let evs = feed(to, &bytes, p.now, &mut p.rng);
    for e in &evs {
        if let Ev::Data(id, d) = e {
            to.stream_consumed(*id, d.len());
        }
    }
    evs
}

/// §7.8: with `max_streams = 1` the client opens the next stream at the
/// first moment its own view of the frames says the slot is free — and the
/// server, which saw every earlier client frame and sent every frame the
/// client saw, never finds the limit exceeded.
#[test]
fn stream_slot_frees_exactly_when_the_frame_rule_says() {
    let mut rng = TestRng::new("keys");
    let mut session = SessionConfig::HOST;
    session.max_streams = 1;
    let c = client_config("client", "server", session, &mut rng);
    let s = server_config("server", &["client"], session, &mut rng);
    let mut p: Pair<{ 64 * 1024 }, { 16384 + 18 }, 64> = Pair::new(c, s, TestRng::new("s"));
    p.handshake();
    let mut port = 1;
    // How each stream ends; after it the client must be able to open at once.
    for ending in 0..6 {
        port += 1;
        let id = p.client.open_stream(dest(port)).unwrap();
        assert!(
            !p.client.can_open_stream(),
            "ending {ending}: limit 1 reached"
        );
        hop(&mut p, Dir::ClientToServer);
        match ending {
            // Client FIN first, then the server's FIN frees the slot on receipt.
            0 => {
                p.server.accept_stream(id).unwrap();
                p.client.stream_finish(id).unwrap();
                hop(&mut p, Dir::ClientToServer);
                p.server.stream_finish(id).unwrap();
                assert!(!p.client.can_open_stream());
                hop(&mut p, Dir::ServerToClient);
            }
            // Server FIN first; the client's own FIN frees the slot once sent.
            1 => {
                p.server.accept_stream(id).unwrap();
                p.server.stream_finish(id).unwrap();
                hop(&mut p, Dir::ServerToClient);
                p.client.stream_finish(id).unwrap();
                assert!(!p.client.can_open_stream(), "FIN not sent yet");
                let _ = p.client.transmit_pending();
            }
            // Client RESET: free once sent, before the server has seen it.
            2 => {
                p.client
                    .stream_reset(id, StreamErrorCode::Cancelled)
                    .unwrap();
                assert!(!p.client.can_open_stream(), "RESET not sent yet");
                let _ = p.client.transmit_pending();
            }
            // Server RESET: free on receipt.
            3 => {
                p.server.accept_stream(id).unwrap();
                hop(&mut p, Dir::ServerToClient);
                p.server.stream_reset(id, StreamErrorCode::Other).unwrap();
                assert!(!p.client.can_open_stream());
                hop(&mut p, Dir::ServerToClient);
            }
            // OPEN_FAIL: free on receipt.
            4 => {
                p.server
                    .refuse_stream(id, StreamErrorCode::ResourceExhausted)
                    .unwrap();
                let evs = hop(&mut p, Dir::ServerToClient);
                assert_eq!(
                    evs,
                    vec![Ev::OpenFailed(id, StreamErrorCode::ResourceExhausted)]
                );
            }
            // FINs crossing: each side's FIN is in flight when it sends its own.
            _ => {
                p.server.accept_stream(id).unwrap();
                hop(&mut p, Dir::ServerToClient);
                p.client.stream_finish(id).unwrap();
                p.server.stream_finish(id).unwrap();
                let c_out = p.client.transmit_pending().to_vec();
                p.client.transmit_done(c_out.len());
                hop(&mut p, Dir::ServerToClient);
                assert!(p.client.can_open_stream(), "both FINs sent/received");
                // The server has not seen the client's FIN yet: the next
                // OPEN travels behind it.
                let next = p.client.open_stream(dest(999)).unwrap();
                let mut read = c_out;
                let rest = p.client.transmit_pending().to_vec();
                p.client.transmit_done(rest.len());
                read.extend_from_slice(&rest);
                let evs = feed(&mut p.server, &read, p.now, &mut p.rng);
                assert_eq!(
                    evs,
                    vec![
                        Ev::Finished(id),
                        Ev::OpenRequest(next, "origin.test:999".into())
                    ]
                );
                assert!(p.server.is_established());
                p.client
                    .stream_reset(next, StreamErrorCode::Cancelled)
                    .unwrap();
                p.pump();
                continue;
            }
        }
        assert!(p.client.can_open_stream(), "ending {ending}: slot is free");
        assert_eq!(p.client.stream_count(), 0, "ending {ending}");
        // Open the next stream before anything else moves.
        let next = p.client.open_stream(dest(1000 + ending)).unwrap();
        let evs = hop(&mut p, Dir::ClientToServer);
        assert!(
            evs.contains(&Ev::OpenRequest(
                next,
                format!("origin.test:{}", 1000 + ending)
            )),
            "ending {ending}: {evs:?}"
        );
        assert!(p.server.is_established(), "ending {ending}: {evs:?}");
        assert_eq!(p.server.stream_count(), 1, "ending {ending}");
        p.client
            .stream_reset(next, StreamErrorCode::Cancelled)
            .unwrap();
        p.pump();
        assert_eq!(p.server.stream_count(), 0, "ending {ending}");
    }
}
