//! `wire::record::parse_header` with an arbitrary limit: never panics,
//! accepts exactly the lengths `TAG_LEN + 1 ..= max + TAG_LEN`, and
//! `header(len - TAG_LEN)` reproduces the bytes it accepted.
#![no_main]

use hytun_core::wire::record::{HEADER_LEN, TAG_LEN, header, parse_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let hdr = [data[0], data[1]];
    let mut max_bytes = [0u8; 8];
    let rest = &data[HEADER_LEN..];
    let n = rest.len().min(8);
    max_bytes[..n].copy_from_slice(&rest[..n]);
    // Any usize limit: small ones (the realistic range) are common, and
    // the top of the range is reachable too.
    let max = usize::try_from(u64::from_le_bytes(max_bytes)).unwrap_or(usize::MAX);
    let len = usize::from(u16::from_be_bytes(hdr));
    let expect_ok = len > TAG_LEN && (len - TAG_LEN) <= max;
    match parse_header(&hdr, max) {
        Ok(got) => {
            assert!(expect_ok, "accepted length {len} with max {max}");
            assert_eq!(got, len);
            assert_eq!(
                header(got - TAG_LEN),
                hdr,
                "header() does not reproduce the parsed bytes"
            );
        }
        Err(_) => assert!(!expect_ok, "rejected length {len} with max {max}"),
    }
});
