//! In-memory tests of remote listeners and server-opened streams
//! (PROTOCOL.md §7.5, §7.15): id spaces, the LISTEN exchange, flow control
//! and ends of streams the server opens, limits, and refusal of a v1 peer.

mod common;

use common::*;
use hytun_core::connection::MAX_LISTENERS;
use hytun_core::wire::frame::Frame;
use hytun_core::wire::handshake::AlertReason;
use hytun_core::*;

type P = Pair<{ 64 * 1024 }, { 16384 + 18 }, 64>;

fn bind(port: u16) -> Destination<'static> {
    Destination {
        host: Host::Ipv4([127, 0, 0, 1]),
        port,
    }
}

fn origin() -> Destination<'static> {
    Destination {
        host: Host::Ipv4([127, 0, 0, 9]),
        port: 40000,
    }
}

/// An established pair with listener 1 granted.
fn granted() -> (P, ListenId) {
    let mut p = default_pair();
    p.handshake();
    let l = p.client.request_listen(bind(8080)).unwrap();
    let (_, s) = p.pump();
    assert_eq!(s, vec![Ev::ListenRequest(l, "127.0.0.1:8080".into())]);
    p.server.grant_listen(l).unwrap();
    let (c, _) = p.pump();
    assert_eq!(c, vec![Ev::ListenGranted(l)]);
    (p, l)
}

#[test]
fn server_opened_stream_carries_data_both_ways_and_half_closes() {
    let (mut p, l) = granted();
    let id = p.server.open_incoming(l, origin()).unwrap();
    // Server ids are even; the client's own stay odd.
    assert_eq!(id, StreamId(2));
    // No credit toward the client before its OPEN_OK.
    assert_eq!(p.server.stream_send_capacity(id), 0);
    assert_eq!(p.server.stream_send(id, b"early").unwrap(), 0);
    let (c, _) = p.pump();
    assert_eq!(c, vec![Ev::Incoming(id, l, "127.0.0.9:40000".into())]);
    p.client.accept_stream(id).unwrap();
    let (_, s) = p.pump();
    // OPEN_OK, then the WINDOW that grants the client's initial window.
    assert_eq!(s, vec![Ev::Opened(id), Ev::Writable(id)]);
    assert!(p.server.stream_send_capacity(id) > 0);
    p.server.stream_send(id, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    p.server.stream_finish(id).unwrap();
    let (c, _) = p.pump();
    assert_eq!(
        c,
        vec![
            Ev::Data(id, b"GET / HTTP/1.0\r\n\r\n".to_vec()),
            Ev::Finished(id)
        ]
    );
    p.client
        .stream_send(id, b"HTTP/1.0 200 OK\r\n\r\n")
        .unwrap();
    p.client.stream_finish(id).unwrap();
    let (_, s) = p.pump();
    assert_eq!(
        s,
        vec![
            Ev::Data(id, b"HTTP/1.0 200 OK\r\n\r\n".to_vec()),
            Ev::Finished(id)
        ]
    );
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.server.stream_count(), 0);
    // Both id spaces advance independently.
    let c1 = p.client.open_stream(bind(80)).unwrap();
    let s2 = p.server.open_incoming(l, origin()).unwrap();
    assert_eq!((c1, s2), (StreamId(1), StreamId(4)));
    let c2 = p.client.open_stream(bind(80)).unwrap();
    assert_eq!(c2, StreamId(3));
    let (c, s) = p.pump();
    assert!(
        c.contains(&Ev::Incoming(s2, l, "127.0.0.9:40000".into())),
        "{c:?}"
    );
    assert!(
        s.contains(&Ev::OpenRequest(c1, "127.0.0.1:80".into())),
        "{s:?}"
    );
}

#[test]
fn server_opened_stream_flow_control_bounds_the_server() {
    let (mut p, l) = granted();
    p.client_consumes = false;
    let id = p.server.open_incoming(l, origin()).unwrap();
    p.pump();
    p.client.accept_stream(id).unwrap();
    p.pump();
    let big = vec![7u8; 200_000];
    let mut sent = 0;
    for _ in 0..10 {
        sent += p.server.stream_send(id, &big[sent..]).unwrap();
        p.pump();
    }
    // A client that consumes nothing gets exactly its window, no more.
    assert_eq!(sent, SessionConfig::HOST.stream_window as usize);
    p.client_consumes = true;
    p.client.stream_consumed(id, sent);
    let (_, s) = p.pump();
    assert_eq!(s, vec![Ev::Writable(id)]);
    assert!(p.server.stream_send_capacity(id) > 0);
}

#[test]
fn data_beyond_credit_on_a_server_stream_is_fatal_at_the_client() {
    let (mut p, c_ts, s_ts) = {
        let mut p = default_pair();
        p.handshake();
        let (c_ts, s_ts) = default_pair_traffic_secrets(&p.wire_c2s, &p.wire_s2c);
        (p, c_ts, s_ts)
    };
    let _ = c_ts;
    let l = p.client.request_listen(bind(8080)).unwrap();
    // Flush the LISTEN; the real server never sees it, a forger answers.
    let out = p.client.transmit_pending().len();
    p.client.transmit_done(out);
    let mut forge = Forger::new(s_ts);
    let rec = forge.record(&[
        Frame::ListenOk { id: l },
        Frame::Incoming {
            id: StreamId(2),
            window: 1024,
            listen: l,
            origin: origin(),
        },
        // The client granted nothing yet: any DATA is beyond credit.
        Frame::Data {
            id: StreamId(2),
            data: b"x",
        },
    ]);
    let evs = feed(&mut p.client, &rec, p.now, &mut p.rng);
    assert_eq!(evs[0], Ev::ListenGranted(l));
    assert!(matches!(evs[1], Ev::Incoming(StreamId(2), _, _)), "{evs:?}");
    assert_eq!(
        evs[2],
        Ev::Closed(ConnectionError::Protocol(ProtocolViolation::FlowControl))
    );
}

#[test]
fn resets_end_server_opened_streams_from_either_side() {
    let (mut p, l) = granted();
    let a = p.server.open_incoming(l, origin()).unwrap();
    let b = p.server.open_incoming(l, origin()).unwrap();
    p.pump();
    p.client.accept_stream(a).unwrap();
    // The client refuses b (its target refused the connection).
    p.client
        .refuse_stream(b, StreamErrorCode::ConnectionRefused)
        .unwrap();
    let (_, s) = p.pump();
    assert!(s.contains(&Ev::Opened(a)), "{s:?}");
    assert!(
        s.contains(&Ev::OpenFailed(b, StreamErrorCode::ConnectionRefused)),
        "{s:?}"
    );
    // The server resets a; the client sees it and forgets the stream.
    p.server
        .stream_reset(a, StreamErrorCode::Cancelled)
        .unwrap();
    let (c, _) = p.pump();
    assert_eq!(c, vec![Ev::Reset(a, StreamErrorCode::Cancelled)]);
    assert_eq!((p.client.stream_count(), p.server.stream_count()), (0, 0));
    // And the other way round.
    let d = p.server.open_incoming(l, origin()).unwrap();
    p.pump();
    p.client.accept_stream(d).unwrap();
    p.client
        .stream_reset(d, StreamErrorCode::Cancelled)
        .unwrap();
    let (_, s) = p.pump();
    assert_eq!(
        s,
        vec![Ev::Opened(d), Ev::Reset(d, StreamErrorCode::Cancelled)]
    );
    assert!(p.client.is_established() && p.server.is_established());
}

#[test]
fn refused_listen_reports_its_reason_and_opens_nothing() {
    let mut p = default_pair();
    p.handshake();
    let l = p.client.request_listen(bind(22)).unwrap();
    p.pump();
    p.server
        .refuse_listen(l, ListenErrorCode::NotPermitted)
        .unwrap();
    // Refused listeners cannot be used or answered again.
    assert_eq!(
        p.server.open_incoming(l, origin()),
        Err(StreamError::UnknownListener)
    );
    assert_eq!(p.server.grant_listen(l), Err(StreamError::UnknownListener));
    let (c, _) = p.pump();
    assert_eq!(c, vec![Ev::ListenRefused(l, ListenErrorCode::NotPermitted)]);
    // A listener must be granted before the server opens streams for it.
    let l2 = p.client.request_listen(bind(23)).unwrap();
    p.pump();
    assert_eq!(
        p.server.open_incoming(l2, origin()),
        Err(StreamError::UnknownListener)
    );
}

#[test]
fn wrong_id_parity_is_a_protocol_error() {
    // A client OPEN with an even (server) id closes the session.
    let mut p = default_pair();
    p.handshake();
    let (c_ts, s_ts) = default_pair_traffic_secrets(&p.wire_c2s, &p.wire_s2c);
    let rec = Forger::new(c_ts).record(&[Frame::Open {
        id: StreamId(2),
        window: 1024,
        dest: bind(80),
    }]);
    let evs = feed(&mut p.server, &rec, p.now, &mut p.rng);
    assert_eq!(
        evs,
        vec![Ev::Closed(ConnectionError::Protocol(
            ProtocolViolation::BadStreamId
        ))]
    );
    // A server INCOMING with an odd (client) id, on a granted listener.
    let l = p.client.request_listen(bind(8080)).unwrap();
    let out = p.client.transmit_pending().len();
    p.client.transmit_done(out);
    let rec = Forger::new(s_ts).record(&[
        Frame::ListenOk { id: l },
        Frame::Incoming {
            id: StreamId(3),
            window: 1024,
            listen: l,
            origin: origin(),
        },
    ]);
    let evs = feed(&mut p.client, &rec, p.now, &mut p.rng);
    assert_eq!(
        evs,
        vec![
            Ev::ListenGranted(l),
            Ev::Closed(ConnectionError::Protocol(ProtocolViolation::BadStreamId))
        ]
    );
}

#[test]
fn incoming_for_a_listener_never_granted_is_fatal() {
    let mut p = default_pair();
    p.handshake();
    let (_, s_ts) = default_pair_traffic_secrets(&p.wire_c2s, &p.wire_s2c);
    let rec = Forger::new(s_ts).record(&[Frame::Incoming {
        id: StreamId(2),
        window: 1024,
        listen: ListenId(1),
        origin: origin(),
    }]);
    let evs = feed(&mut p.client, &rec, p.now, &mut p.rng);
    assert_eq!(
        evs,
        vec![Ev::Closed(ConnectionError::Protocol(
            ProtocolViolation::BadListenId
        ))]
    );
}

#[test]
fn server_stream_limit_is_separate_from_the_clients() {
    let mut rng = TestRng::new("keys");
    let mut session = SessionConfig::HOST;
    session.max_streams = 2;
    let c = client_config("client", "server", SessionConfig::HOST, &mut rng);
    let s = server_config("server", &["client"], session, &mut rng);
    let mut p: P = Pair::new(c, s, TestRng::new("session"));
    p.handshake();
    let l = p.client.request_listen(bind(8080)).unwrap();
    p.pump();
    p.server.grant_listen(l).unwrap();
    p.pump();
    // Two client streams and two server streams live at once.
    p.client.open_stream(bind(1)).unwrap();
    p.client.open_stream(bind(2)).unwrap();
    assert_eq!(
        p.client.open_stream(bind(3)),
        Err(StreamError::TooManyStreams)
    );
    p.server.open_incoming(l, origin()).unwrap();
    p.server.open_incoming(l, origin()).unwrap();
    assert_eq!(
        p.server.open_incoming(l, origin()),
        Err(StreamError::TooManyStreams)
    );
    assert!(!p.server.can_open_stream());
    let (c, s) = p.pump();
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(p.server.stream_count(), 4);
    assert_eq!(p.server.local_stream_count(), 2);
    assert!(p.client.is_established() && p.server.is_established());
}

#[test]
fn listener_requests_are_limited_per_session() {
    let mut p = default_pair();
    p.handshake();
    for i in 0..MAX_LISTENERS {
        p.client.request_listen(bind(9000 + i as u16)).unwrap();
    }
    assert_eq!(
        p.client.request_listen(bind(9999)),
        Err(StreamError::TooManyListeners)
    );
    let (_, s) = p.pump();
    assert_eq!(s.len(), MAX_LISTENERS);
    // One more, forged, is a protocol violation at the server.
    let mut p = default_pair();
    p.handshake();
    let (c_ts, _) = default_pair_traffic_secrets(&p.wire_c2s, &p.wire_s2c);
    let frames: Vec<Frame<'_>> = (1..=MAX_LISTENERS as u32 + 1)
        .map(|i| Frame::Listen {
            id: ListenId(i),
            bind: bind(8000),
        })
        .collect();
    let rec = Forger::new(c_ts).record(&frames);
    let evs = feed(&mut p.server, &rec, p.now, &mut p.rng);
    assert_eq!(evs.len(), MAX_LISTENERS + 1);
    assert_eq!(
        evs[MAX_LISTENERS],
        Ev::Closed(ConnectionError::Protocol(
            ProtocolViolation::TooManyListeners
        ))
    );
}

#[test]
fn listen_frames_in_the_wrong_direction_are_fatal() {
    let mut p = default_pair();
    p.handshake();
    let (c_ts, s_ts) = default_pair_traffic_secrets(&p.wire_c2s, &p.wire_s2c);
    // A server may not ask the client to listen.
    let rec = Forger::new(s_ts).record(&[Frame::Listen {
        id: ListenId(1),
        bind: bind(80),
    }]);
    let evs = feed(&mut p.client, &rec, p.now, &mut p.rng);
    assert_eq!(
        evs,
        vec![Ev::Closed(ConnectionError::Protocol(
            ProtocolViolation::UnexpectedFrame
        ))]
    );
    // A client may not open a server-style stream.
    let rec = Forger::new(c_ts).record(&[Frame::Incoming {
        id: StreamId(2),
        window: 1,
        listen: ListenId(1),
        origin: origin(),
    }]);
    let evs = feed(&mut p.server, &rec, p.now, &mut p.rng);
    assert_eq!(
        evs,
        vec![Ev::Closed(ConnectionError::Protocol(
            ProtocolViolation::UnexpectedFrame
        ))]
    );
}

#[test]
fn v1_client_is_refused_with_a_version_alert() {
    let mut p = default_pair();
    p.tamper = Some(Box::new(|dir, bytes| {
        if dir == Dir::ClientToServer && bytes.first() == Some(&1) {
            bytes[7] = 1; // a version-1 ClientHello
        }
    }));
    let (c, s) = p.pump();
    assert_eq!(
        s,
        vec![Ev::Closed(ConnectionError::Handshake(
            HandshakeError::UnsupportedVersion
        ))]
    );
    assert_eq!(
        c,
        vec![Ev::Closed(ConnectionError::Handshake(
            HandshakeError::PeerAlert(AlertReason::UnsupportedVersion, None)
        ))]
    );
}

#[test]
fn v1_server_hello_is_refused_by_the_client() {
    let mut p = default_pair();
    p.tamper = Some(Box::new(|dir, bytes| {
        if dir == Dir::ServerToClient && bytes.first() == Some(&2) {
            bytes[3] = 1; // ServerHello version 1
        }
    }));
    let (c, _) = p.pump();
    assert_eq!(
        c[0],
        Ev::Closed(ConnectionError::Handshake(
            HandshakeError::UnsupportedVersion
        ))
    );
    assert!(p.client.is_closed());
}

#[test]
fn goaway_stops_server_opened_streams_too() {
    let (mut p, l) = granted();
    p.server.go_away(CloseCode::ShuttingDown);
    assert_eq!(
        p.server.open_incoming(l, origin()),
        Err(StreamError::GoingAway)
    );
    let (mut p, l) = granted();
    p.client.go_away(CloseCode::Normal);
    p.pump();
    assert_eq!(
        p.server.open_incoming(l, origin()),
        Err(StreamError::GoingAway)
    );
}

/// Moves bytes between two connections of different sizes until quiet.
fn pump_apart<const A: usize, const B: usize>(
    client: &mut Connection<{ 64 * 1024 }, { 16384 + 18 }, A>,
    server: &mut Connection<{ 64 * 1024 }, { 16384 + 18 }, B>,
    rng: &mut TestRng,
) -> (Vec<Ev>, Vec<Ev>) {
    let now = Instant::from_millis(1_000);
    let (mut c, mut s) = (Vec::new(), Vec::new());
    loop {
        let to_server = client.transmit_pending().to_vec();
        client.transmit_done(to_server.len());
        let to_client = server.transmit_pending().to_vec();
        server.transmit_done(to_client.len());
        if to_server.is_empty() && to_client.is_empty() {
            return (c, s);
        }
        s.extend(feed(server, &to_server, now, rng));
        c.extend(feed(client, &to_client, now, rng));
    }
}

#[test]
fn a_server_stream_finding_no_client_slot_is_refused_without_taking_one() {
    let mut rng = TestRng::new("keys");
    let c = client_config("client", "server", SessionConfig::HOST, &mut rng);
    let s = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let now = Instant::from_millis(1_000);
    let mut rng = TestRng::new("session");
    // A client with two stream slots, a server with 64.
    let mut client: Connection<{ 64 * 1024 }, { 16384 + 18 }, 2> =
        Connection::client(c, now, &mut rng);
    let mut server: Connection<{ 64 * 1024 }, { 16384 + 18 }, 64> = Connection::server(s, now);
    pump_apart(&mut client, &mut server, &mut rng);
    assert!(client.is_established() && server.is_established());
    let l = client.request_listen(bind(8080)).unwrap();
    pump_apart(&mut client, &mut server, &mut rng);
    server.grant_listen(l).unwrap();
    pump_apart(&mut client, &mut server, &mut rng);
    // The client's own streams take both of its slots.
    client.open_stream(bind(1)).unwrap();
    client.open_stream(bind(2)).unwrap();
    pump_apart(&mut client, &mut server, &mut rng);
    let id = server.open_incoming(l, origin()).unwrap();
    let (c, s) = pump_apart(&mut client, &mut server, &mut rng);
    assert!(c.is_empty(), "{c:?}");
    assert_eq!(
        s,
        vec![Ev::OpenFailed(id, StreamErrorCode::ResourceExhausted)]
    );
    assert_eq!(client.stream_count(), 2);
    // The id was used: a late frame for it is ignored, and the next server
    // stream gets a fresh id once a slot is free.
    let first = StreamId(1);
    client
        .stream_reset(first, StreamErrorCode::Cancelled)
        .unwrap();
    pump_apart(&mut client, &mut server, &mut rng);
    let next = server.open_incoming(l, origin()).unwrap();
    assert_eq!(next, StreamId(id.0 + 2));
    let (c, _) = pump_apart(&mut client, &mut server, &mut rng);
    assert_eq!(c, vec![Ev::Incoming(next, l, "127.0.0.9:40000".into())]);
    assert!(client.is_established() && server.is_established());
}

#[test]
fn server_streams_beyond_the_clients_own_limit_and_slots_are_refused_not_fatal() {
    let mut rng = TestRng::new("keys");
    // The client limits its own opens to 1 and has 3 slots; the server
    // announces 64.
    let mut own = SessionConfig::HOST;
    own.max_streams = 1;
    let c = client_config("client", "server", own, &mut rng);
    let s = server_config("server", &["client"], SessionConfig::HOST, &mut rng);
    let now = Instant::from_millis(1_000);
    let mut rng = TestRng::new("session");
    let mut client: Connection<{ 64 * 1024 }, { 16384 + 18 }, 3> =
        Connection::client(c, now, &mut rng);
    let mut server: Connection<{ 64 * 1024 }, { 16384 + 18 }, 64> = Connection::server(s, now);
    pump_apart(&mut client, &mut server, &mut rng);
    let l = client.request_listen(bind(8080)).unwrap();
    pump_apart(&mut client, &mut server, &mut rng);
    server.grant_listen(l).unwrap();
    pump_apart(&mut client, &mut server, &mut rng);
    // The client's own limit binds its opens only.
    client.open_stream(bind(1)).unwrap();
    assert_eq!(
        client.open_stream(bind(2)),
        Err(StreamError::TooManyStreams)
    );
    pump_apart(&mut client, &mut server, &mut rng);
    // Five server streams at once: two fit the client's free slots, the
    // other three are refused with OPEN_FAIL 9 and the session lives.
    let ids: Vec<StreamId> = (0..5)
        .map(|_| server.open_incoming(l, origin()).unwrap())
        .collect();
    let (c, s) = pump_apart(&mut client, &mut server, &mut rng);
    let incoming = c.iter().filter(|e| matches!(e, Ev::Incoming(..))).count();
    assert_eq!(incoming, 2, "{c:?}");
    let refused: Vec<&Ev> = s
        .iter()
        .filter(|e| matches!(e, Ev::OpenFailed(_, StreamErrorCode::ResourceExhausted)))
        .collect();
    assert_eq!(refused.len(), 3, "{s:?}");
    assert!(matches!(refused[0], Ev::OpenFailed(id, _) if *id == ids[2]));
    assert!(client.is_established() && server.is_established());
    assert_eq!(client.stream_count(), 3);
}
