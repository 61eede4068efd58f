//! What the client fetches through the tunnel, fixed at build time.
//!
//! `build.rs` validates `HYTUN_ORIGIN_HOST` (IPv4 literal or domain, default
//! `127.0.0.1`), `HYTUN_ORIGIN_PORT` (default 8080), `HYTUN_ORIGIN_PATH`
//! (default `/hello`) and `HYTUN_EXPECT_BODY` (default `hytun-origin-ok`)
//! and generates the constants below. The server connects the stream to
//! `HOST:PORT` (it must allow that destination); the client sends
//! [`REQUEST`] (`GET PATH HTTP/1.0` with `Host: HOST`, composed at build
//! time) and requires a `200` status and `EXPECT_BODY` somewhere in the
//! body.

use hytun_core::Host;

include!(concat!(env!("OUT_DIR"), "/origin.rs"));
