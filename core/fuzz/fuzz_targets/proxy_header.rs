//! The server's PROXY protocol header parser (`host/src/server/
//! proxy_header.rs`, compiled in from the host crate's source: it is
//! std-only and self-contained, and depending on the whole host crate
//! would drag its I/O and crypto stack into the fuzz build). Checked: no
//! panic; `Done` consumes at most the input and at most the version's
//! bound, and parses the same from exactly its own bytes (nothing after
//! the header matters); every proper prefix of a complete header is
//! `Incomplete`, with a `min_total` past the prefix and within the header;
//! `Invalid` stays invalid whatever follows; `looks_like_header` is true
//! for anything that parses or is incomplete.
#![no_main]

#[path = "../../../host/src/server/proxy_header.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy_header;

use libfuzzer_sys::fuzz_target;
use proxy_header::{Parse, V1_MAX_LEN, V2_MAX_LEN, looks_like_header, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parse::Done { header, consumed } => {
            assert!(consumed <= data.len());
            let bound = if header.version == 1 {
                V1_MAX_LEN
            } else {
                V2_MAX_LEN
            };
            assert!(
                consumed <= bound,
                "v{} header of {consumed} bytes",
                header.version
            );
            assert!(header.version == 1 || header.version == 2);
            assert!(!(header.local && header.source.is_some()));
            assert_eq!(parse(&data[..consumed]), Parse::Done { header, consumed });
            assert!(looks_like_header(data));
            for cut in [0, consumed / 2, consumed.saturating_sub(1)] {
                if cut < consumed {
                    match parse(&data[..cut]) {
                        Parse::Incomplete { min_total } => {
                            assert!(min_total > cut && min_total <= consumed.max(cut + 1));
                        }
                        other => panic!("prefix of {cut} of a {consumed}-byte header: {other:?}"),
                    }
                }
            }
        }
        Parse::Incomplete { min_total } => {
            assert!(min_total > data.len());
            assert!(min_total <= V1_MAX_LEN.max(V2_MAX_LEN));
            assert!(data.is_empty() || looks_like_header(data));
        }
        Parse::Invalid(e) => {
            assert!(!e.to_string().is_empty());
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\0\0\0\0");
            assert!(
                matches!(parse(&longer), Parse::Invalid(_)),
                "{e} then valid"
            );
        }
    }
});
