//! The local proxy protocols the client speaks to applications before a
//! connection becomes a tunnel stream: SOCKS5 (`-D`) and the HTTP proxy
//! (`--http-proxy`: CONNECT and absolute-form requests). Both are sans-IO
//! parsers that take bytes and say what was asked and what to answer; the
//! client's event loop ([`crate::client`]) owns the sockets.

pub mod http;
pub mod socks5;
