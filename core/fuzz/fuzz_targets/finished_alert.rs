//! `Finished`, `Alert` and the handshake header: parse never panics;
//! whatever parses re-emits to the input bytes (an unknown alert code is
//! canonicalized to `Other` = 255, by design) and parses back equal.
#![no_main]

use hytun_core::wire::handshake::{
    Alert, AlertReason, Finished, HEADER_LEN, TYPE_ALERT, TYPE_FINISHED,
};
use hytun_core_fuzz::check_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = check_header(data);
    let body = data.get(HEADER_LEN..).unwrap_or(&[]);
    let whole_is = |t: u8| header.is_some_and(|h| h.msg_type == t && h.body_len == body.len());
    let mut out = [0u8; 128];

    if let Ok(fin) = Finished::parse(body) {
        let n = fin.emit(&mut out).expect("a parsed Finished must emit");
        assert_eq!(n, HEADER_LEN + 32);
        assert_eq!(&out[..3], &[TYPE_FINISHED, 0, 32]);
        assert_eq!(&out[HEADER_LEN..n], body, "emit(parse(x)) != x");
        assert_eq!(Finished::parse(&out[HEADER_LEN..n]), Ok(fin));
        if whole_is(TYPE_FINISHED) {
            assert_eq!(&out[..n], data);
        }
        assert!(fin.emit(&mut out[..n - 1]).is_err());
    }

    if let Ok(alert) = Alert::parse(body) {
        let n = alert.emit(&mut out).expect("a parsed Alert must emit");
        assert_eq!(n, HEADER_LEN + body.len(), "emitted length");
        assert_eq!(out[0], TYPE_ALERT);
        assert_eq!(&out[1..3], &(body.len() as u16).to_be_bytes());
        let mut expect = body.to_vec();
        expect[0] = AlertReason::from_code(body[0]).code();
        assert_eq!(
            &out[HEADER_LEN..n],
            &expect[..],
            "emit(parse(x)) != canonical x"
        );
        assert_eq!(Alert::parse(&out[HEADER_LEN..n]), Ok(alert));
        if whole_is(TYPE_ALERT) && expect[0] == body[0] {
            assert_eq!(&out[..n], data);
        }
        assert!(alert.emit(&mut out[..n - 1]).is_err());
    }
});
