//! `hytun-host` is the host-side (std) part of hytun: the `hytun` command-line
//! tool's client and server. This library holds its pure, sans-IO building
//! blocks — destination allowlist, SOCKS5 and HTTP-proxy request parsing,
//! configuration file, handshake rate limiting and reconnect backoff — so
//! they can be unit-tested without sockets; the binary wires them to mio.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

pub mod allow;
pub mod backoff;
pub mod client;
pub mod config;
pub mod demo;
pub mod fetch;
pub mod keywork;
pub mod metrics;
pub mod origin;
pub mod pipe;
pub mod proxy;
pub mod ratelimit;
pub mod resolver;
pub mod runtime;
pub mod server;
pub mod service;
pub mod setup;
