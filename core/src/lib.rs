//! # hytun-core
//!
//! The protocol core of hytun, an encrypted TCP forwarding tunnel: framing,
//! the hybrid RSA-OAEP + X25519 handshake, AES-GCM records and multiplexed
//! streams with credit-based flow control — as a sans-IO state machine.
//!
//! `no_std`, no `unsafe`, no clock and no OS RNG: the driver (the `mio`
//! host or the firmware) feeds bytes, time and randomness in and takes bytes
//! and events out; see [`connection`] for the driving contract. Heap use is
//! limited to the RSA operations and the shared configuration (`Arc`),
//! plus, only when a driver chooses [`memory::Heap`], the connection's
//! buffers; by default all buffers are fixed-size arrays sized by the
//! connection's const parameters.
//!
//! Layers, bottom up (cf. smoltcp's `wire`/`socket` split):
//! * [`wire`] — parse/emit of handshake messages, record headers, frames;
//! * [`crypto`] — RSA identities, key schedule, record sealing;
//! * [`handshake`] — the handshake states;
//! * [`stream`] — per-stream flow-control bookkeeping;
//! * [`connection`] — the session state machine tying them together;
//! * [`memory`] — where a connection keeps its buffers (inline or heap).
//!
//! The wire protocol is specified in `docs/PROTOCOL.md`.

#![no_std]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    clippy::std_instead_of_core,
    clippy::alloc_instead_of_core
)]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

mod buffer;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod error;
pub mod handshake;
pub mod memory;
pub(crate) mod stream;
pub mod time;
pub mod wire;

pub use config::{ClientConfig, ServerConfig, SessionConfig};
pub use connection::{Connection, Event, HostConnection, Stats};
pub use crypto::{KeyId, PrivateIdentity, PublicIdentity};
pub use error::{ConnectionError, HandshakeError, ProtocolViolation, StreamError, TimeoutKind};
pub use time::Instant;
pub use wire::frame::{
    CloseCode, Destination, Host, ListenErrorCode, ListenId, StreamErrorCode, StreamId,
};
pub use wire::handshake::{AlertReason, Suite};
