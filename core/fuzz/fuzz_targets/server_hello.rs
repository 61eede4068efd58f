//! `ServerHello`: parse never panics; whatever parses re-emits to exactly
//! the input bytes, and parses back equal.
#![no_main]

use hytun_core::wire::handshake::{HEADER_LEN, MAX_BODY_LEN, ServerHello, TYPE_SERVER_HELLO};
use hytun_core_fuzz::check_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = check_header(data);
    let body = data.get(HEADER_LEN..).unwrap_or(&[]);
    let Ok(sh) = ServerHello::parse(body) else {
        return;
    };
    assert!(sh.stream_window > 0 && sh.max_streams > 0);
    let mut out = [0u8; HEADER_LEN + MAX_BODY_LEN + 64];
    let n = sh.emit(&mut out).expect("a parsed ServerHello must emit");
    assert_eq!(n, HEADER_LEN + body.len(), "emitted length");
    assert_eq!(out[0], TYPE_SERVER_HELLO);
    assert_eq!(&out[1..3], &(body.len() as u16).to_be_bytes());
    assert_eq!(&out[HEADER_LEN..n], body, "emit(parse(x)) != x");
    assert_eq!(
        ServerHello::parse(&out[HEADER_LEN..n]),
        Ok(sh),
        "parse(emit(x)) != x"
    );
    if header.is_some_and(|h| h.msg_type == TYPE_SERVER_HELLO && h.body_len == body.len()) {
        assert_eq!(&out[..n], data);
    }
    for cap in [0, 1, HEADER_LEN, n - 1] {
        assert!(sh.emit(&mut out[..cap]).is_err());
    }
});
