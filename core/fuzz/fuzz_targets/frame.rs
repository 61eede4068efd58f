//! Frames: the input is a record's plaintext, parsed frame by frame as the
//! connection does (stopping at the first error). Every parsed frame
//! re-emits to its input bytes (unknown error/close codes canonicalize to
//! `Other` = 255, by design), reports its `encoded_len`, and parses back
//! equal.
#![no_main]

use hytun_core::wire::frame::Frame;
use hytun_core_fuzz::canonical_frame_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pos = 0;
    let mut out = vec![0u8; data.len() + 16];
    while pos < data.len() {
        let Ok((frame, used)) = Frame::parse(&data[pos..]) else {
            return;
        };
        assert!(used > 0 && used <= data.len() - pos, "parse used {used}");
        let input = &data[pos..pos + used];
        assert_eq!(frame.encoded_len(), used, "encoded_len of {frame:?}");
        let n = frame.emit(&mut out).expect("a parsed frame must emit");
        assert_eq!(n, used, "emitted length of {frame:?}");
        assert_eq!(
            &out[..n],
            &canonical_frame_bytes(input)[..],
            "emit(parse(x)) != x for {frame:?}"
        );
        let (again, used2) = Frame::parse(&out[..n]).expect("emitted frame parses");
        assert_eq!((again, used2), (frame, n), "parse(emit(x)) != x");
        if n > 0 {
            assert!(
                frame.emit(&mut out[..n - 1]).is_err(),
                "emit into a short buffer must fail"
            );
        }
        pos += used;
    }
});
