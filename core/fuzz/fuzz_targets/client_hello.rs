//! `ClientHello` (and the handshake header): parse never panics; whatever
//! parses re-emits to exactly the input bytes, and parses back equal.
#![no_main]

use hytun_core::wire::handshake::{
    ClientHello, HEADER_LEN, HandshakeHeader, MAX_BODY_LEN, TYPE_CLIENT_HELLO,
};
use hytun_core_fuzz::check_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The input is a whole message: 3-byte header, then the body.
    let header = check_header(data);
    let body = data.get(HEADER_LEN..).unwrap_or(&[]);
    let Ok(ch) = ClientHello::parse(body) else {
        return;
    };
    let mut out = [0u8; HEADER_LEN + MAX_BODY_LEN + 64];
    let n = ch.emit(&mut out).expect("a parsed ClientHello must emit");
    assert_eq!(n, HEADER_LEN + body.len(), "emitted length");
    assert_eq!(out[0], TYPE_CLIENT_HELLO);
    assert_eq!(&out[1..3], &(body.len() as u16).to_be_bytes());
    assert_eq!(&out[HEADER_LEN..n], body, "emit(parse(x)) != x");
    assert_eq!(
        ClientHello::parse(&out[HEADER_LEN..n]),
        Ok(ch),
        "parse(emit(x)) != x"
    );
    let hdr = HandshakeHeader::parse(&[out[0], out[1], out[2]]).expect("emitted header parses");
    assert_eq!(hdr.body_len, body.len());
    if header.is_some_and(|h| h.msg_type == TYPE_CLIENT_HELLO && h.body_len == body.len()) {
        assert_eq!(&out[..n], data);
    }
    // Too small a buffer is an error, never a panic.
    for cap in [0, 1, HEADER_LEN, n - 1] {
        assert!(ch.emit(&mut out[..cap]).is_err());
    }
});
