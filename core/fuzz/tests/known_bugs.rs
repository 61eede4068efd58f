//! Regression tests for the core bugs the fuzzers found (see the
//! "Findings" section of `core/fuzz/README.md`); all are fixed and these
//! tests assert the correct behaviour:
//!
//!     cargo +nightly test --manifest-path core/fuzz/Cargo.toml

use hytun_core::wire::record::parse_header;
use hytun_core::{CloseCode, Connection, Destination, Host, StreamError, StreamErrorCode};
use hytun_core_fuzz::established::{Duo, Who};
use hytun_core_fuzz::{Conn, Ev};

type Pair = Duo<{ 64 * 1024 }, { 16384 + 18 }, 64>;

fn record(events: &mut Vec<(Who, Ev)>) -> impl FnMut(Who, &mut Conn, &Ev) + '_ {
    move |who, _c: &mut Connection<{ 64 * 1024 }, { 16384 + 18 }, 64>, e: &Ev| {
        events.push((who, e.clone()))
    }
}

fn connected_pair() -> Box<Pair> {
    let mut duo: Box<Pair> = Box::new(Duo::with_configs(false));
    let mut ev = Vec::new();
    duo.pump(&mut record(&mut ev));
    assert!(duo.client.is_established() && duo.server.is_established());
    duo
}

/// `wire::record::parse_header(&[0xff, 0xff], usize::MAX)` panics with
/// "attempt to add with overflow" (record.rs: `max_plaintext + TAG_LEN`)
/// when overflow checks are on, and wraps to a wrong answer without them.
/// Not reachable from peer input (callers pass at most 16384).
/// Fuzz reproducer: `regressions/record_header/overflow-usize-max`
/// (`ffff` + `ffffffffffffffff`, the limit as little-endian u64).
#[test]
fn record_header_accepts_any_limit_without_overflow() {
    let res = std::panic::catch_unwind(|| parse_header(&[0xff, 0xff], usize::MAX));
    assert_eq!(
        res.ok(),
        Some(Ok(65535)),
        "a 65535-byte record is within an unlimited limit"
    );
    let res = std::panic::catch_unwind(|| parse_header(&[0x00, 0x11], usize::MAX - 3));
    assert_eq!(res.ok(), Some(Ok(17)));
}

/// Server: `refuse_stream(id)` (or `stream_reset(id)`) on a stream awaiting
/// accept, then `accept_stream(id)` before the reply is flushed, returns
/// Ok and replaces the OPEN_FAIL with OPEN_OK, although the stream is
/// already finished both ways on the server. The server then forgets the
/// stream; the client sees `Opened`, its data is silently dropped, and it
/// never receives FIN or RESET: the client's stream slot is held until the
/// client resets it itself. Expected: `accept_stream` fails with
/// `InvalidState` and the client sees `OpenFailed`.
/// Fuzz reproducer: `regressions/established_session/accept-after-refuse`.
#[test]
fn accept_after_refuse_is_rejected() {
    for reset_instead in [false, true] {
        let mut duo = connected_pair();
        let mut ev = Vec::new();
        let id = duo
            .client
            .open_stream(Destination {
                host: Host::Domain("origin.test"),
                port: 80,
            })
            .unwrap();
        duo.pump(&mut record(&mut ev));
        assert!(
            ev.iter()
                .any(|(w, e)| *w == Who::Server && matches!(e, Ev::OpenRequest(i, _) if *i == id))
        );
        if reset_instead {
            duo.server
                .stream_reset(id, StreamErrorCode::Cancelled)
                .unwrap();
        } else {
            duo.server
                .refuse_stream(id, StreamErrorCode::NotAllowed)
                .unwrap();
        }
        let accepted = duo.server.accept_stream(id);
        ev.clear();
        duo.pump(&mut record(&mut ev));
        let client_events: Vec<_> = ev
            .iter()
            .filter(|(w, _)| *w == Who::Client)
            .map(|(_, e)| e.clone())
            .collect();
        assert_eq!(
            (accepted, client_events, duo.client.stream_count()),
            (
                Err(StreamError::InvalidState),
                vec![Ev::OpenFailed(
                    id,
                    if reset_instead {
                        StreamErrorCode::Cancelled
                    } else {
                        StreamErrorCode::NotAllowed
                    }
                )],
                0
            ),
            "reset_instead = {reset_instead}"
        );
    }
}

/// Minor API inconsistency: after the client's own `go_away`,
/// `can_open_stream()` still returns true while `open_stream` fails with
/// `GoingAway` (it checks `sent_goaway`, `can_open_stream` only the peer's
/// GOAWAY).
#[test]
fn can_open_stream_reflects_own_goaway() {
    let mut duo = connected_pair();
    duo.client.go_away(CloseCode::ShuttingDown);
    let can = duo.client.can_open_stream();
    let res = duo.client.open_stream(Destination {
        host: Host::Domain("a"),
        port: 1,
    });
    assert_eq!(
        can,
        res.is_ok(),
        "can_open_stream() = {can} but open_stream() = {res:?}"
    );
}
