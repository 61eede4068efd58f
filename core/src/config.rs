//! Session parameters and the two role configurations.
//!
//! A configuration is built once by the driver (the host reads key files, the
//! firmware decodes keys provisioned at build time) and shared by every
//! session of that role through an `Arc`.

use alloc::vec::Vec;
use core::time::Duration;

use crate::crypto::{KeyId, PrivateIdentity, PublicIdentity};
use crate::wire::handshake::{MAX_RECORD_LIMIT, MIN_RECORD_LIMIT, Suite};

/// Records sealed under one key before a key update is forced.
///
/// RFC 8446 §5.5 allows 2^24.5 full-size records per AES-GCM key; hytun
/// updates well before that.
pub const DEFAULT_KEY_UPDATE_AFTER: u64 = 1 << 23;

/// Parameters both roles use for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Largest record plaintext this side accepts (1024..=16384); further
    /// capped by the connection's receive buffer.
    pub max_record: u16,
    /// Initial credit this side grants each stream for data it receives
    /// (announced in ServerHello `stream_window` / OPEN `window`).
    pub stream_window: u32,
    /// Most the window tuner may grow one stream's receive window to, as
    /// it measures the path's bandwidth-delay product. At or below
    /// `stream_window` the window never grows (and no RTT-sampling PINGs
    /// are sent).
    pub max_stream_window: u32,
    /// Most concurrent streams (the server announces it; the client obeys
    /// the smaller of its own and the server's value). Capped by the
    /// connection's stream table.
    pub max_streams: u16,
    /// Send a PING after this long without receiving anything.
    pub keepalive_interval: Duration,
    /// Declare the peer dead after this long without receiving anything.
    pub idle_timeout: Duration,
    /// Give up if the handshake has not completed within this time.
    pub handshake_timeout: Duration,
    /// Update the sending key after this many records.
    pub key_update_after: u64,
}

impl SessionConfig {
    /// Defaults for a desktop/server host: 16 KiB records, 1024 streams,
    /// stream windows that start at 64 KiB and grow up to 64 MiB.
    ///
    /// 64 KiB initial: what a stream may hold before its upstream is
    /// connected or before the tuner has seen its delivery rate (1024 idle
    /// streams pin at most 64 MiB, a quarter of the old fixed 256 KiB);
    /// it still covers 13 Mbit/s at 40 ms from the first byte, and the
    /// window doubles about every two round trips while it is the limit.
    /// 64 MiB cap: 5 Gbit/s × 100 ms (hyper/h2 stop at 16 MiB, which
    /// bounds one stream to 1.3 Gbit/s at 100 ms; measured here, the cap
    /// was what limited one stream on long paths). What a stream really
    /// gets is bounded by the receiver's budget (`set_receive_budget`),
    /// which the server takes from its memory budget.
    pub const HOST: SessionConfig = SessionConfig {
        max_record: MAX_RECORD_LIMIT,
        stream_window: 64 * 1024,
        max_stream_window: 64 * 1024 * 1024,
        max_streams: 1024,
        keepalive_interval: Duration::from_secs(15),
        idle_timeout: Duration::from_secs(45),
        handshake_timeout: Duration::from_secs(10),
        key_update_after: DEFAULT_KEY_UPDATE_AFTER,
    };

    /// All zero: the placeholder of a connection that is not started yet
    /// (never used for a session; starting one replaces it).
    pub const UNSET: SessionConfig = SessionConfig {
        max_record: 0,
        stream_window: 0,
        max_stream_window: 0,
        max_streams: 0,
        keepalive_interval: Duration::ZERO,
        idle_timeout: Duration::ZERO,
        handshake_timeout: Duration::ZERO,
        key_update_after: 0,
    };

    /// Defaults for a small microcontroller: 1 KiB records and windows
    /// that never grow (no extra RAM, no RTT-sampling PINGs).
    pub const EMBEDDED: SessionConfig = SessionConfig {
        max_record: MIN_RECORD_LIMIT,
        stream_window: 1024,
        max_stream_window: 1024,
        max_streams: 2,
        keepalive_interval: Duration::from_secs(15),
        idle_timeout: Duration::from_secs(45),
        handshake_timeout: Duration::from_secs(30),
        key_update_after: DEFAULT_KEY_UPDATE_AFTER,
    };
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig::HOST
    }
}

/// What a client needs: its key pair, the pinned server key, suites.
#[derive(Debug)]
pub struct ClientConfig {
    /// The client's own key pair.
    pub identity: PrivateIdentity,
    /// The server key the client pins; any other server fails the handshake.
    pub server: PublicIdentity,
    /// Offered suites, most preferred first (1..=2 entries).
    pub suites: heapless::Vec<Suite, 2>,
    /// Session parameters.
    pub session: SessionConfig,
}

impl ClientConfig {
    /// A config with default suites (AES-128-GCM, then AES-256-GCM).
    pub fn new(identity: PrivateIdentity, server: PublicIdentity, session: SessionConfig) -> Self {
        ClientConfig {
            identity,
            server,
            suites: default_suites(),
            session,
        }
    }
}

/// What a server needs: its key pair and the client keys it admits.
#[derive(Debug)]
pub struct ServerConfig {
    /// The server's own key pair.
    pub identity: PrivateIdentity,
    /// Client keys the server admits.
    pub authorized: Vec<PublicIdentity>,
    /// Suites the server accepts; it picks the client's most preferred one
    /// that is in this list.
    pub suites: heapless::Vec<Suite, 2>,
    /// Session parameters.
    pub session: SessionConfig,
}

impl ServerConfig {
    /// A config with both suites enabled.
    pub fn new(
        identity: PrivateIdentity,
        authorized: Vec<PublicIdentity>,
        session: SessionConfig,
    ) -> Self {
        ServerConfig {
            identity,
            authorized,
            suites: default_suites(),
            session,
        }
    }

    /// The authorized key with this id, if any.
    pub fn authorized_key(&self, id: &KeyId) -> Option<&PublicIdentity> {
        self.authorized.iter().find(|k| k.id() == *id)
    }
}

fn default_suites() -> heapless::Vec<Suite, 2> {
    let mut v = heapless::Vec::new();
    // Capacity 2 holds both; `extend_from_slice` cannot fail here.
    let _ = v.extend_from_slice(&[Suite::Aes128Gcm, Suite::Aes256Gcm]);
    v
}
