//! The `hytun` TOML configuration file and the values shared with the
//! command line: [`ForwardSpec`] (`-L`/`--forward [BIND:]PORT:HOST:PORT`),
//! [`ListenSpec`] (`-D`/`--socks`, `--http-proxy`, server `--listen`,
//! `[BIND:]PORT`), [`Endpoint`] (`HOST[:PORT]`, the server a client dials)
//! and the bounded numbers ([`MaxSessions`], [`IdleTimeout`], …) whose
//! `FromStr` (flags) and `Deserialize` (TOML) run the same range check, so
//! a value is accepted or refused the same way, with the same message, in
//! both. Every TOML key has the name of its flag without the dashes; the
//! names of older releases still load, with a warning. Every config field
//! is optional so that flags can fill or override it (merging is the
//! caller's job). Unknown keys are errors; keys are kebab-case. Relative key
//! paths in the file are resolved against the config file's directory, so a
//! config works the same from any working directory. Values are validated
//! while parsing, so errors point at the file, line and column of the bad
//! value.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::allow::{AllowList, DestHost, parse_port};
use crate::server::admission::TrustedProxies;
use crate::server::listener::PermitListen;

/// The port `--server HOST` dials when HOST has none.
pub const DEFAULT_SERVER_PORT: u16 = 7000;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// `[server]` table.
    pub server: Option<ServerConfig>,
    /// `[client]` table.
    pub client: Option<ClientConfig>,
    /// Deprecated key names the file used: `(old, new)`, for a warning.
    #[serde(skip)]
    pub deprecated: Vec<(&'static str, &'static str)>,
}

/// Key names of older releases, still accepted (`serde` aliases) with a
/// warning: `(table, old, new)`.
const DEPRECATED_KEYS: &[(&str, &str, &str)] = &[
    ("server", "max-streams-per-session", "max-streams"),
    ("server", "handshake-timeout-secs", "handshake-timeout"),
    ("server", "idle-timeout-secs", "idle-timeout"),
    ("server", "handshakes-per-source-per-sec", "handshake-rate"),
    ("client", "keepalive-secs", "keepalive"),
];

/// The settings of `hytun server`: its command-line flags and, with the
/// same names, the keys of the `[server]` table (`config` is a flag only).
/// One type for both, so a setting cannot exist in one and not the other;
/// the flags win over the file when both are given (merged by
/// `setup::server_options`). The doc comments are the `--help` text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Address to accept tunnel clients on, [BIND:]PORT [default: 127.0.0.1:7000].
    #[arg(long, value_parser = ListenSpec::parse, value_name = "[BIND:]PORT")]
    pub listen: Option<ListenSpec>,
    /// The server's private key [default: keys/server.key].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// File of authorized client public keys (PEM, concatenated) [default: keys/authorized_keys].
    #[arg(long)]
    pub authorized_keys: Option<PathBuf>,
    /// Destination allowed for streams: host:port, host:*, *.example.com:443, 10.0.0.0/8:*, or '*' for all. Repeatable; replaces the config's list. Without any --allow every stream is refused.
    #[arg(long = "allow", value_name = "PATTERN")]
    #[serde(default)]
    pub allow: Vec<String>,
    /// Most concurrent sessions [default: 256].
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<MaxSessions>,
    /// Most concurrent streams per session, 1-1024 [default: 1024].
    #[arg(long, value_name = "N")]
    #[serde(alias = "max-streams-per-session")]
    pub max_streams: Option<MaxStreams>,
    /// Seconds a client has to finish the handshake [default: 10].
    #[arg(long, value_name = "SECS")]
    #[serde(alias = "handshake-timeout-secs")]
    pub handshake_timeout: Option<HandshakeTimeout>,
    /// Seconds without any traffic before a session is declared dead, at least 3 [default: 45].
    #[arg(long, value_name = "SECS")]
    #[serde(alias = "idle-timeout-secs")]
    pub idle_timeout: Option<IdleTimeout>,
    /// Handshakes per second allowed per source address (burst 2x) [default: 20].
    #[arg(long, value_name = "N")]
    #[serde(alias = "handshakes-per-source-per-sec")]
    pub handshake_rate: Option<HandshakeRate>,
    /// Most connections still in the handshake; when full, the oldest stalled one is dropped for a newcomer [default: 128].
    #[arg(long, value_name = "N")]
    pub max_pending: Option<MaxPending>,
    /// Most pending handshakes from one source address (IPv6: /64) per event loop [default: 8].
    #[arg(long, value_name = "N")]
    pub max_pending_per_source: Option<MaxPendingPerSource>,
    /// Seconds from accept to a complete ClientHello [default: 5].
    #[arg(long, value_name = "SECS")]
    pub hello_timeout: Option<HelloTimeout>,
    /// Private-key operations (handshakes) per second, server-wide [default: 500].
    #[arg(long, value_name = "N")]
    pub key_ops_rate: Option<KeyOpsRate>,
    /// MiB of stream receive credit and session state the server may hold [default: 256].
    #[arg(long, value_name = "MIB")]
    pub memory_budget: Option<MemoryBudget>,
    /// MiB one session may hold [default: 64].
    #[arg(long, value_name = "MIB")]
    pub session_memory: Option<SessionMemory>,
    /// Descriptors the server may use [default: the soft RLIMIT_NOFILE, raised to the hard limit].
    #[arg(long, value_name = "N")]
    pub max_descriptors: Option<MaxDescriptors>,
    /// Threads for the handshakes' crypto (each reply to a ClientHello, private-key operation included), off the event loops [default: one per CPU, at most 8].
    #[arg(long, value_name = "N")]
    pub key_workers: Option<KeyWorkers>,
    /// Handshakes waiting for a key worker, server-wide; past that a handshake gets Busy [default: 64].
    #[arg(long, value_name = "N")]
    pub key_queue: Option<KeyQueue>,
    /// Name-lookup worker threads, shared by all event loops [default: 4].
    #[arg(long, value_name = "N")]
    pub dns_workers: Option<DnsWorkers>,
    /// Most name lookups in flight, server-wide; more OPENs are refused (resource) [default: 256].
    #[arg(long, value_name = "N")]
    pub dns_queue: Option<DnsQueue>,
    /// Most name lookups in flight per session [default: 8].
    #[arg(long, value_name = "N")]
    pub dns_per_session: Option<DnsPerSession>,
    /// Seconds before a name lookup is answered as timed out [default: 5].
    #[arg(long, value_name = "SECS")]
    pub dns_timeout: Option<DnsTimeout>,
    /// Address clients may ask the server to listen on for them (-R): HOST:PORT or HOST:*, HOST an IP, localhost or *. Repeatable. Default: none.
    #[arg(long = "permit-listen", value_parser = PermitListen::parse, value_name = "HOST:PORT")]
    #[serde(default)]
    pub permit_listen: Vec<PermitListen>,
    /// Load balancer address or network (CIDR) that must send a PROXY protocol v1/v2 header with the real client address; a PROXY header from anywhere else is refused. Repeatable.
    #[arg(long = "proxy-protocol-from", value_name = "CIDR")]
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
    /// Event-loop threads; they share the listening socket and each keeps the sessions it accepted [default: the number of CPUs, at most 8].
    #[arg(long, value_name = "N")]
    pub threads: Option<Threads>,
    /// Seconds a graceful stop (SIGINT/SIGTERM) waits for open streams; a second signal stops at once [default: 5].
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<DrainTimeout>,
    /// Serve Prometheus metrics at http://[BIND:]PORT/metrics (no authentication: keep it on loopback).
    #[arg(long, value_parser = ListenSpec::parse, value_name = "[BIND:]PORT")]
    pub metrics: Option<ListenSpec>,
    /// TOML config file ([server] table, keys named like these flags); flags win.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// `[client]`: settings of `hytun client` (and `fetch`); each key is the
/// flag's long name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientConfig {
    /// The server to connect to.
    pub server: Option<Endpoint>,
    /// The client's private key file.
    pub key: Option<PathBuf>,
    /// The server's public key file (pinned).
    pub server_key: Option<PathBuf>,
    /// Local port forwards (`-L` / `--forward`).
    pub forward: Option<Vec<ForwardSpec>>,
    /// Reverse forwards (`-R`): the server listens, the client connects.
    pub reverse: Option<Vec<ReverseSpec>>,
    /// SOCKS5 listeners (`-D` / `--socks`).
    pub socks: Option<Vec<ListenSpec>>,
    /// HTTP proxy listeners.
    pub http_proxy: Option<Vec<ListenSpec>>,
    /// Seconds between keepalives.
    #[serde(alias = "keepalive-secs")]
    pub keepalive: Option<Keepalive>,
    /// Where to serve Prometheus metrics (`[BIND:]PORT`).
    pub metrics: Option<ListenSpec>,
}

/// A number outside its option's range, or not a whole number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeError {
    /// The option (flag without dashes, and TOML key).
    pub name: &'static str,
    /// The smallest value allowed.
    pub min: u64,
    /// The largest value allowed.
    pub max: u64,
    /// The value as given.
    pub given: String,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} must be a whole number from {} to {}, not {}",
            self.name, self.min, self.max, self.given
        )
    }
}

impl std::error::Error for RangeError {}

/// The one range check behind every bounded option, flag or TOML.
fn check_range(name: &'static str, min: u64, max: u64, value: i128) -> Result<u64, RangeError> {
    u64::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| RangeError {
            name,
            min,
            max,
            given: value.to_string(),
        })
}

/// Declares bounded options: a newtype over `u64` with the option's name
/// and range, parsed from a flag (`FromStr`) or a TOML integer
/// (`Deserialize`) through [`check_range`].
macro_rules! bounded {
    ($($(#[$doc:meta])* $ty:ident = $name:literal, $min:literal ..= $max:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $ty(u64);

        impl $ty {
            /// The option's name (flag without dashes, TOML key).
            pub const NAME: &'static str = $name;
            /// The smallest value allowed.
            pub const MIN: u64 = $min;
            /// The largest value allowed.
            pub const MAX: u64 = $max;

            /// Checks `value` against the range.
            ///
            /// # Errors
            /// [`RangeError`] naming the option and its range.
            pub fn new(value: u64) -> Result<Self, RangeError> {
                check_range($name, $min, $max, i128::from(value)).map(Self)
            }

            /// The value.
            #[must_use]
            pub fn get(self) -> u64 {
                self.0
            }

            /// The value as a `usize` (every range fits in 32 bits).
            #[must_use]
            pub fn as_usize(self) -> usize {
                usize::try_from(self.0).unwrap_or(usize::MAX)
            }

            /// The value as a `u32` (every range fits).
            #[must_use]
            pub fn as_u32(self) -> u32 {
                u32::try_from(self.0).unwrap_or(u32::MAX)
            }

            /// The value as seconds.
            #[must_use]
            pub fn secs(self) -> Duration {
                Duration::from_secs(self.0)
            }
        }

        impl FromStr for $ty {
            type Err = RangeError;
            fn from_str(s: &str) -> Result<Self, RangeError> {
                let value = s.trim().parse::<i128>().map_err(|_| RangeError {
                    name: $name,
                    min: $min,
                    max: $max,
                    given: format!("'{s}'"),
                })?;
                check_range($name, $min, $max, value).map(Self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = i64::deserialize(d)?;
                check_range($name, $min, $max, i128::from(value))
                    .map(Self)
                    .map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    )*};
}

bounded! {
    /// `threads`: event-loop threads of the server.
    Threads = "threads", 1..=256;
    /// `max-sessions`: established sessions, server-wide.
    MaxSessions = "max-sessions", 1..=1_000_000;
    /// `max-streams`: concurrent streams per session (the host's stream
    /// table holds 1024).
    MaxStreams = "max-streams", 1..=1024;
    /// `handshake-timeout`: seconds for the whole handshake.
    HandshakeTimeout = "handshake-timeout", 1..=600;
    /// `idle-timeout`: seconds without traffic before a session is dead
    /// (keepalives go every third of it, so at least 3).
    IdleTimeout = "idle-timeout", 3..=86_400;
    /// `handshake-rate`: handshakes per second per source address.
    HandshakeRate = "handshake-rate", 1..=10_000_000;
    /// `max-pending`: connections still in the handshake.
    MaxPending = "max-pending", 1..=1_000_000;
    /// `max-pending-per-source`: pending handshakes per source per loop.
    MaxPendingPerSource = "max-pending-per-source", 1..=1_000_000;
    /// `hello-timeout`: seconds from accept to a complete ClientHello.
    HelloTimeout = "hello-timeout", 1..=600;
    /// `key-ops-rate`: private-key operations per second, server-wide.
    KeyOpsRate = "key-ops-rate", 1..=10_000_000;
    /// `memory-budget`: MiB of receive credit and session state.
    MemoryBudget = "memory-budget", 1..=1_048_576;
    /// `session-memory`: MiB one session may hold.
    SessionMemory = "session-memory", 1..=1_048_576;
    /// `max-descriptors`: descriptors the server may use.
    MaxDescriptors = "max-descriptors", 1..=16_777_216;
    /// `key-workers`: private-key worker threads.
    KeyWorkers = "key-workers", 1..=256;
    /// `key-queue`: private-key operations waiting for a worker.
    KeyQueue = "key-queue", 1..=1_000_000;
    /// `dns-workers`: name-lookup threads.
    DnsWorkers = "dns-workers", 1..=256;
    /// `dns-queue`: name lookups in flight, server-wide.
    DnsQueue = "dns-queue", 1..=1_000_000;
    /// `dns-per-session`: name lookups in flight per session.
    DnsPerSession = "dns-per-session", 1..=65_536;
    /// `dns-timeout`: seconds before a lookup is answered as timed out.
    DnsTimeout = "dns-timeout", 1..=600;
    /// `drain-timeout`: seconds a graceful stop waits for open streams
    /// (0: close them at once).
    DrainTimeout = "drain-timeout", 0..=3600;
    /// `keepalive`: seconds between client keepalive pings.
    Keepalive = "keepalive", 1..=3600;
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Parse`]
    /// (with line and column) for TOML or value errors, and
    /// [`ConfigError::Invalid`] for an invalid `allow` pattern.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses config text; `path` names the file in errors and is the base
    /// for relative key paths.
    ///
    /// # Errors
    /// As for [`Config::load`], minus the read error.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        if let Ok(table) = text.parse::<toml::Table>() {
            for &(section, old, new) in DEPRECATED_KEYS {
                let used = table
                    .get(section)
                    .and_then(toml::Value::as_table)
                    .is_some_and(|t| t.contains_key(old));
                if used {
                    config.deprecated.push((old, new));
                }
            }
        }
        let base = path.parent().unwrap_or(Path::new(""));
        if let Some(server) = &mut config.server {
            AllowList::parse(&server.allow).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                field: "server.allow",
                message: e.to_string(),
            })?;
            TrustedProxies::parse(&server.proxy_protocol_from).map_err(|e| {
                ConfigError::Invalid {
                    path: path.to_path_buf(),
                    field: "server.proxy-protocol-from",
                    message: e.to_string(),
                }
            })?;
            resolve(base, &mut server.key);
            resolve(base, &mut server.authorized_keys);
        }
        if let Some(client) = &mut config.client {
            resolve(base, &mut client.key);
            resolve(base, &mut client.server_key);
        }
        Ok(config)
    }
}

fn resolve(base: &Path, path: &mut Option<PathBuf>) {
    if let Some(p) = path
        && p.is_relative()
    {
        *p = base.join(&*p);
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Splits on `:` outside `[...]`; `None` if brackets are unbalanced.
fn split_colons(s: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => return None,
            ':' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    (depth == 0).then(|| {
        parts.push(&s[start..]);
        parts
    })
}

/// Parses a bind address: an IP literal (IPv6 bracketed), `localhost` or `*`.
fn parse_bind(s: &str) -> Option<IpAddr> {
    match s {
        "localhost" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "*" => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        _ => match DestHost::parse(s)? {
            DestHost::Ip(ip) if !s.contains(':') || s.starts_with('[') => Some(ip),
            _ => None,
        },
    }
}

/// A listen port, where 0 (let the OS choose) is allowed.
fn parse_listen_port(s: &str) -> Option<u16> {
    if s == "0" { Some(0) } else { parse_port(s) }
}

/// `[BIND:]PORT` — a local listening address; BIND defaults to 127.0.0.1.
/// In TOML it is a string, or an integer for a bare port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenSpec {
    /// The socket address to bind.
    pub addr: SocketAddr,
}

impl ListenSpec {
    /// Parses `PORT`, `BIND:PORT` or `[IPV6]:PORT`. BIND is an IP address,
    /// `localhost` or `*` (all IPv4 interfaces). Port 0 lets the OS choose.
    ///
    /// # Errors
    /// [`ConfigError::Spec`] saying what is wrong.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let err = |reason| ConfigError::Spec {
            kind: "listen",
            spec: spec.to_string(),
            reason,
        };
        if spec.parse::<Ipv6Addr>().is_ok() {
            return Err(err(SpecProblem::MissingPort));
        }
        let parts = split_colons(spec).ok_or(err(SpecProblem::Brackets))?;
        let (bind, port) = match parts.as_slice() {
            [one] if parse_listen_port(one).is_none() && parse_bind(one).is_some() => {
                return Err(err(SpecProblem::MissingPort));
            }
            [port] => (IpAddr::V4(Ipv4Addr::LOCALHOST), *port),
            [bind, port] => (parse_bind(bind).ok_or(err(SpecProblem::Bind))?, *port),
            _ => return Err(err(SpecProblem::Shape)),
        };
        let port = parse_listen_port(port).ok_or(err(SpecProblem::ListenPort))?;
        Ok(Self {
            addr: SocketAddr::new(bind, port),
        })
    }
}

impl<'de> Deserialize<'de> for ListenSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ListenSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a \"[BIND:]PORT\" string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ListenSpec, E> {
                ListenSpec::parse(s).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ListenSpec, E> {
                ListenSpec::parse(&n.to_string()).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ListenSpec, E> {
                ListenSpec::parse(&n.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[BIND:]PORT:HOST:PORT` — a `-L` local forward.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ForwardSpec {
    /// Local address to listen on (BIND defaults to 127.0.0.1).
    pub listen: SocketAddr,
    /// Destination host, as the server will resolve it.
    pub host: DestHost,
    /// Destination port.
    pub port: u16,
}

impl ForwardSpec {
    /// Parses `PORT:HOST:PORT` or `BIND:PORT:HOST:PORT`; BIND and HOST may
    /// be bracketed IPv6 addresses.
    ///
    /// # Errors
    /// [`ConfigError::Spec`] saying which part is wrong.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let err = |reason| ConfigError::Spec {
            kind: "forward",
            spec: spec.to_string(),
            reason,
        };
        let parts = split_colons(spec).ok_or(err(SpecProblem::Brackets))?;
        let (bind, listen_port, host, port) = match parts.as_slice() {
            [lp, h, p] => (IpAddr::V4(Ipv4Addr::LOCALHOST), *lp, *h, *p),
            [b, lp, h, p] => (parse_bind(b).ok_or(err(SpecProblem::Bind))?, *lp, *h, *p),
            _ => return Err(err(SpecProblem::Shape)),
        };
        let listen_port = parse_listen_port(listen_port).ok_or(err(SpecProblem::ListenPort))?;
        let host = parse_dest_host(host).ok_or(err(SpecProblem::Host))?;
        let port = parse_port(port).ok_or(err(SpecProblem::Port))?;
        Ok(Self {
            listen: SocketAddr::new(bind, listen_port),
            host,
            port,
        })
    }
}

/// `[BIND:]PORT:HOST:PORT` — a `-R` reverse forward: the server listens on
/// BIND:PORT (BIND defaults to 127.0.0.1) and the client connects each
/// connection accepted there to HOST:PORT on its own side.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ReverseSpec {
    /// Address the server listens on (on the server machine).
    pub bind: SocketAddr,
    /// Target host, resolved by the client.
    pub host: DestHost,
    /// Target port.
    pub port: u16,
}

impl ReverseSpec {
    /// Parses `PORT:HOST:PORT` or `BIND:PORT:HOST:PORT` like `-L`, except
    /// that the server-side port must be 1-65535.
    ///
    /// # Errors
    /// [`ConfigError::Spec`] saying which part is wrong.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let err = |reason| ConfigError::Spec {
            kind: "reverse",
            spec: spec.to_string(),
            reason,
        };
        let f = ForwardSpec::parse(spec).map_err(|e| match e {
            ConfigError::Spec { reason, .. } => err(reason),
            other => other,
        })?;
        if f.listen.port() == 0 {
            return Err(err(SpecProblem::Port));
        }
        Ok(Self {
            bind: f.listen,
            host: f.host,
            port: f.port,
        })
    }
}

/// `HOST[:PORT]` — a remote endpoint such as the tunnel server; the port
/// defaults to [`DEFAULT_SERVER_PORT`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: DestHost,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `HOST:PORT` or `HOST` (port [`DEFAULT_SERVER_PORT`]); an IPv6
    /// address is always bracketed (`[::1]`, `[::1]:7000`).
    ///
    /// # Errors
    /// [`ConfigError::Spec`] saying which part is wrong.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let err = |reason| ConfigError::Spec {
            kind: "endpoint",
            spec: spec.to_string(),
            reason,
        };
        if spec.parse::<Ipv6Addr>().is_ok() {
            // `2001:db8::1:7000` could be an address with or without a
            // port: brackets say which.
            return Err(err(SpecProblem::Host));
        }
        let parts = split_colons(spec).ok_or(err(SpecProblem::Brackets))?;
        let (host, port) = match parts.as_slice() {
            [host] => (*host, None),
            [host, port] => (*host, Some(*port)),
            _ => return Err(err(SpecProblem::Shape)),
        };
        Ok(Self {
            host: parse_dest_host(host).ok_or(err(SpecProblem::Host))?,
            port: match port {
                Some(p) => parse_port(p).ok_or(err(SpecProblem::Port))?,
                None => DEFAULT_SERVER_PORT,
            },
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host.with_port(self.port))
    }
}

/// A destination host in a spec: IPv6 must be bracketed (colons split parts).
fn parse_dest_host(s: &str) -> Option<DestHost> {
    if s.contains(':') && !s.starts_with('[') {
        return None;
    }
    DestHost::parse(s)
}

macro_rules! spec_conversions {
    ($($ty:ty),*) => {$(
        impl FromStr for $ty {
            type Err = ConfigError;
            fn from_str(s: &str) -> Result<Self, ConfigError> {
                Self::parse(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = ConfigError;
            fn try_from(s: String) -> Result<Self, ConfigError> {
                Self::parse(&s)
            }
        }
    )*};
}
spec_conversions!(ListenSpec, ForwardSpec, ReverseSpec, Endpoint);

/// What is wrong with a spec string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecProblem {
    /// Wrong number of `:`-separated parts.
    Shape,
    /// Unbalanced or misplaced brackets.
    Brackets,
    /// The bind address is not an IP, `localhost` or `*`.
    Bind,
    /// The listen port is not in 0..=65535.
    ListenPort,
    /// The host is not a host name or IP address.
    Host,
    /// The port is not in 1..=65535.
    Port,
    /// An address without the port a listener needs.
    MissingPort,
}

/// Errors loading the config file or parsing an address spec.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// TOML syntax, an unknown key, a wrong type or an invalid value.
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A value that parsed but is not valid.
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted key, e.g. `server.allow`.
        field: &'static str,
        /// Why it is invalid.
        message: String,
    },
    /// An invalid `[BIND:]PORT`, `[BIND:]PORT:HOST:PORT` or `HOST:PORT`.
    Spec {
        /// `listen`, `forward` or `endpoint`.
        kind: &'static str,
        /// The spec as given.
        spec: String,
        /// What is wrong.
        reason: SpecProblem,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => {
                write!(f, "cannot read config file '{}': {source}", path.display())
            }
            Self::Parse {
                path,
                line,
                column,
                message,
            } => {
                if *line == 0 {
                    write!(f, "{}: {message}", path.display())
                } else {
                    write!(f, "{}:{line}:{column}: {message}", path.display())
                }
            }
            Self::Invalid {
                path,
                field,
                message,
            } => write!(f, "{}: {field}: {message}", path.display()),
            Self::Spec { kind, spec, reason } => {
                let expected = match *kind {
                    "forward" | "reverse" => "[BIND:]PORT:HOST:PORT",
                    "listen" => "[BIND:]PORT",
                    _ => "HOST[:PORT]",
                };
                let why = match reason {
                    SpecProblem::Shape => format!("expected {expected}"),
                    SpecProblem::Brackets => {
                        "unbalanced brackets (write IPv6 addresses as [::1])".to_string()
                    }
                    SpecProblem::Bind => {
                        "BIND must be an IP address ([::1] for IPv6), 'localhost' or '*'"
                            .to_string()
                    }
                    SpecProblem::ListenPort => "the listen port must be 0-65535".to_string(),
                    SpecProblem::Host => {
                        "HOST must be a host name or IP address ([::1] for IPv6)".to_string()
                    }
                    SpecProblem::Port => "the port must be 1-65535".to_string(),
                    SpecProblem::MissingPort => {
                        format!("missing port (expected {expected}, e.g. 127.0.0.1:7000)")
                    }
                };
                write!(f, "invalid {kind} spec '{spec}': {why}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
# server
[server]
listen = "127.0.0.1:7000"
key = "keys/server.key"
authorized-keys = "/etc/hytun/authorized_keys"
allow = ["127.0.0.1:*", "*.example.com:443"]
threads = 2
max-sessions = 256
max-streams = 1024
handshake-timeout = 10
idle-timeout = 300
handshake-rate = 20
drain-timeout = 0

# client
[client]
server = "tunnel.example.com:7000"
key = "keys/id.key"
server-key = "keys/server.pub"
forward = ["8080:127.0.0.1:80", "[::1]:2222:[fd00::5]:22"]
socks = [1080]
http-proxy = ["0.0.0.0:3128"]
keepalive = 15
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/hytun/hytun.toml"))
    }

    fn sock(s: &str) -> SocketAddr {
        match s.parse() {
            Ok(a) => a,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn full_example_parses() {
        let config = match load(FULL) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let server = config.server.unwrap_or_default();
        assert_eq!(server.listen.map(|l| l.addr), Some(sock("127.0.0.1:7000")));
        assert_eq!(
            server.key,
            Some(PathBuf::from("/etc/hytun/keys/server.key"))
        );
        assert_eq!(
            server.authorized_keys,
            Some(PathBuf::from("/etc/hytun/authorized_keys"))
        );
        assert_eq!(server.allow.len(), 2);
        assert_eq!(server.threads.map(Threads::get), Some(2));
        assert_eq!(server.max_sessions.map(MaxSessions::get), Some(256));
        assert_eq!(server.max_streams.map(MaxStreams::get), Some(1024));
        assert_eq!(
            server.handshake_timeout.map(HandshakeTimeout::get),
            Some(10)
        );
        assert_eq!(server.idle_timeout.map(IdleTimeout::get), Some(300));
        assert_eq!(server.handshake_rate.map(HandshakeRate::get), Some(20));
        assert_eq!(server.drain_timeout.map(DrainTimeout::get), Some(0));
        assert!(config.deprecated.is_empty());

        let client = config.client.unwrap_or_default();
        let endpoint = client.server.clone().map(|e| e.to_string());
        assert_eq!(endpoint.as_deref(), Some("tunnel.example.com:7000"));
        assert_eq!(
            client.server_key,
            Some(PathBuf::from("/etc/hytun/keys/server.pub"))
        );
        let forward = client.forward.unwrap_or_default();
        assert_eq!(forward.len(), 2);
        assert_eq!(forward[1].listen, sock("[::1]:2222"));
        assert_eq!(forward[1].host, DestHost::Ip(sock("[fd00::5]:1").ip()));
        assert_eq!(forward[1].port, 22);
        let socks = client.socks.unwrap_or_default();
        assert_eq!(socks[0].addr, sock("127.0.0.1:1080"));
        let http = client.http_proxy.unwrap_or_default();
        assert_eq!(http[0].addr, sock("0.0.0.0:3128"));
        assert_eq!(client.keepalive.map(Keepalive::get), Some(15));
    }

    #[test]
    fn old_key_names_still_load_and_are_reported() {
        let text = "[server]\nmax-streams-per-session = 8\nhandshake-timeout-secs = 4\n\
                    idle-timeout-secs = 30\nhandshakes-per-source-per-sec = 3\n\
                    [client]\nkeepalive-secs = 5\n";
        let config = match load(text) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let server = config.server.clone().unwrap_or_default();
        assert_eq!(server.max_streams.map(MaxStreams::get), Some(8));
        assert_eq!(server.handshake_timeout.map(HandshakeTimeout::get), Some(4));
        assert_eq!(server.idle_timeout.map(IdleTimeout::get), Some(30));
        assert_eq!(server.handshake_rate.map(HandshakeRate::get), Some(3));
        let keepalive = config.client.clone().and_then(|c| c.keepalive);
        assert_eq!(keepalive.map(Keepalive::get), Some(5));
        assert_eq!(
            config.deprecated,
            vec![
                ("max-streams-per-session", "max-streams"),
                ("handshake-timeout-secs", "handshake-timeout"),
                ("idle-timeout-secs", "idle-timeout"),
                ("handshakes-per-source-per-sec", "handshake-rate"),
                ("keepalive-secs", "keepalive"),
            ]
        );
        // Old and new name together: one value too many.
        assert!(load("[server]\nmax-streams = 1\nmax-streams-per-session = 2\n").is_err());
    }

    #[test]
    fn flags_and_toml_share_one_range_check() {
        // The same value is refused with the same words either way.
        for (key, bad) in [
            ("max-sessions", "0"),
            ("threads", "0"),
            ("idle-timeout", "0"),
            ("idle-timeout", "2"),
            ("max-streams", "1025"),
            ("handshake-timeout", "-1"),
            ("drain-timeout", "3601"),
        ] {
            let toml_err = match load(&format!("[server]\n{key} = {bad}\n")) {
                Err(e) => e.to_string(),
                Ok(c) => panic!("{key} = {bad} accepted: {c:?}"),
            };
            let flag_err = match key {
                "max-sessions" => bad.parse::<MaxSessions>().map(|_| ()),
                "threads" => bad.parse::<Threads>().map(|_| ()),
                "idle-timeout" => bad.parse::<IdleTimeout>().map(|_| ()),
                "max-streams" => bad.parse::<MaxStreams>().map(|_| ()),
                "handshake-timeout" => bad.parse::<HandshakeTimeout>().map(|_| ()),
                _ => bad.parse::<DrainTimeout>().map(|_| ()),
            };
            let flag_err = match flag_err {
                Err(e) => e.to_string(),
                Ok(()) => panic!("--{key} {bad} accepted"),
            };
            assert!(
                flag_err.starts_with(&format!("{key} must be")),
                "{flag_err}"
            );
            assert!(
                toml_err.starts_with("/etc/hytun/hytun.toml:2:"),
                "{toml_err}"
            );
            assert!(toml_err.ends_with(&flag_err), "{toml_err} vs {flag_err}");
        }
        assert_eq!(
            "0".parse::<MaxSessions>().map_err(|e| e.to_string()),
            Err("max-sessions must be a whole number from 1 to 1000000, not 0".into())
        );
        assert_eq!(
            "x".parse::<Threads>().map_err(|e| e.to_string()),
            Err("threads must be a whole number from 1 to 256, not 'x'".into())
        );
        assert_eq!("1024".parse::<MaxStreams>().map(MaxStreams::get), Ok(1024));
        assert_eq!("0".parse::<DrainTimeout>().map(DrainTimeout::get), Ok(0));
        assert_eq!(
            IdleTimeout::new(3).map(IdleTimeout::secs),
            Ok(Duration::from_secs(3))
        );
        // A string where a number belongs is a type error, not a panic.
        assert!(load("[server]\nthreads = \"2\"\n").is_err());
    }

    #[test]
    fn ports_may_be_integers() {
        let c = load(
            "[server]\nlisten = 7000\n[client]\nsocks = [1080, \"*:1081\"]\nhttp-proxy = [3128]\n",
        );
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let listen = c.server.and_then(|s| s.listen).map(|l| l.addr);
        assert_eq!(listen, Some(sock("127.0.0.1:7000")));
        let client = c.client.unwrap_or_default();
        let socks: Vec<SocketAddr> = client
            .socks
            .unwrap_or_default()
            .iter()
            .map(|l| l.addr)
            .collect();
        assert_eq!(socks, vec![sock("127.0.0.1:1080"), sock("0.0.0.0:1081")]);
        let err = load("[server]\nlisten = 70000\n").unwrap_err().to_string();
        assert!(err.contains("the listen port must be 0-65535"), "{err}");
        let err = load("[server]\nlisten = 1.5\n").unwrap_err().to_string();
        assert!(
            err.contains("a port number or a \"[BIND:]PORT\" string"),
            "{err}"
        );
    }

    #[test]
    fn metrics_key_on_both_sides() {
        let c = load("[server]\nmetrics = \"9100\"\n[client]\nmetrics = \"[::1]:9101\"\n")
            .ok()
            .unwrap_or_default();
        let server = c.server.and_then(|s| s.metrics).map(|l| l.addr);
        assert_eq!(server, Some(sock("127.0.0.1:9100")));
        let client = c.client.and_then(|c| c.metrics).map(|l| l.addr);
        assert_eq!(client, Some(sock("[::1]:9101")));
        let err = load("[server]\nmetrics = \"nine\"\n").unwrap_err();
        assert!(err.to_string().contains(":2:"), "{err}");
    }

    #[test]
    fn empty_file_and_partial_tables() {
        assert_eq!(load("").ok(), Some(Config::default()));
        let c = load("[client]\nkeepalive = 5\n").ok().unwrap_or_default();
        assert!(c.server.is_none());
        assert_eq!(
            c.client.and_then(|c| c.keepalive).map(Keepalive::get),
            Some(5)
        );
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = load("[server]\nlisten = \"7000\"\nmax-session = 3\n").unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("/etc/hytun/hytun.toml:3:1: "), "{shown}");
        assert!(shown.contains("max-session"), "{shown}");

        let err = load("[client]\nserver = \"no pe\"\n").unwrap_err();
        match &err {
            ConfigError::Parse { line, column, .. } => assert_eq!((*line, *column), (2, 10)),
            other => panic!("unexpected {other}"),
        }
        assert!(
            err.to_string().contains("invalid endpoint spec 'no pe'"),
            "{err}"
        );

        // Inside an array the position is that of the array.
        let err = load("[client]\nforward = [\"8080:nope\"]\n").unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("/etc/hytun/hytun.toml:2:"), "{shown}");
        assert!(
            shown.contains("invalid forward spec '8080:nope'"),
            "{shown}"
        );

        let err = load("[server]\nmax-sessions = 0\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/hytun/hytun.toml:2:16: max-sessions must be a whole number from 1 to 1000000, not 0"
        );

        let err = load("[server\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 1, .. }), "{err}");

        let err = load("[server]\nproxy-protocol-from = [\"10.0.0.1/8\"]\n").unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("server.proxy-protocol-from"), "{shown}");
        assert!(shown.contains("host bits"), "{shown}");
        let ok = load("[server]\nproxy-protocol-from = [\"10.0.0.0/8\", \"::1\"]\n").unwrap();
        assert_eq!(ok.server.map(|s| s.proxy_protocol_from.len()), Some(2));
        let err = load("[server]\nallow = [\"example.com\"]\n").unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("server.allow"), "{shown}");
        assert!(shown.contains("'example.com'"), "{shown}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = Config::load(Path::new("/nonexistent/hytun.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/hytun.toml"));
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = Config::from_toml("[client]\nkey = \"id.key\"\n", Path::new("hytun.toml"));
        let key = c.ok().and_then(|c| c.client).and_then(|c| c.key);
        assert_eq!(key, Some(PathBuf::from("id.key")));
    }

    #[test]
    fn forward_specs() {
        let f = ForwardSpec::parse("8080:127.0.0.1:80").ok();
        assert_eq!(
            f,
            Some(ForwardSpec {
                listen: sock("127.0.0.1:8080"),
                host: DestHost::Ip(sock("127.0.0.1:1").ip()),
                port: 80
            })
        );
        let f = ForwardSpec::parse("0.0.0.0:8443:example.com:443").ok();
        assert_eq!(f.as_ref().map(|f| f.listen), Some(sock("0.0.0.0:8443")));
        assert_eq!(
            f.map(|f| f.host),
            Some(DestHost::Domain("example.com".into()))
        );
        let f = ForwardSpec::parse("[::]:22:[::1]:2222").ok();
        assert_eq!(f.as_ref().map(|f| f.listen), Some(sock("[::]:22")));
        assert_eq!(f.map(|f| f.port), Some(2222));

        for (bad, problem) in [
            ("8080", SpecProblem::Shape),
            ("1:2:3:4:5", SpecProblem::Shape),
            ("8080:h:0", SpecProblem::Port),
            ("8080:h:http", SpecProblem::Port),
            ("99999:h:80", SpecProblem::ListenPort),
            ("8080:bad host:80", SpecProblem::Host),
            ("example.com:8080:h:80", SpecProblem::Bind),
            ("[::1:8080:h:80", SpecProblem::Brackets),
            ("8080:[example.com]:80", SpecProblem::Host),
        ] {
            match ForwardSpec::parse(bad) {
                Err(ConfigError::Spec { reason, spec, .. }) => {
                    assert_eq!(reason, problem, "{bad}");
                    assert_eq!(spec, bad);
                }
                other => panic!("{bad}: unexpected {other:?}"),
            }
        }
        let shown = ForwardSpec::parse("8080").unwrap_err().to_string();
        assert_eq!(
            shown,
            "invalid forward spec '8080': expected [BIND:]PORT:HOST:PORT"
        );
    }

    #[test]
    fn reverse_specs_and_permit_listen_keys() {
        let r = ReverseSpec::parse("8080:127.0.0.1:3000").unwrap();
        assert_eq!(r.bind, sock("127.0.0.1:8080"));
        assert_eq!(
            (r.host.to_string(), r.port),
            ("127.0.0.1".to_string(), 3000)
        );
        let r = ReverseSpec::parse("*:9000:localhost:22").unwrap();
        assert_eq!(r.bind, sock("0.0.0.0:9000"));
        let shown = ReverseSpec::parse("0:h:80").unwrap_err().to_string();
        assert_eq!(
            shown,
            "invalid reverse spec '0:h:80': the port must be 1-65535"
        );
        let shown = ReverseSpec::parse("8080").unwrap_err().to_string();
        assert_eq!(
            shown,
            "invalid reverse spec '8080': expected [BIND:]PORT:HOST:PORT"
        );
        let c = Config::from_toml(
            "[client]\nreverse = [\"8080:127.0.0.1:3000\"]\n\
             [server]\npermit-listen = [\"127.0.0.1:*\", \"[::1]:8080\"]\n",
            Path::new("hytun.toml"),
        )
        .unwrap();
        assert_eq!(c.client.and_then(|c| c.reverse).map(|r| r.len()), Some(1));
        let permits = c.server.map(|s| s.permit_listen).unwrap();
        assert_eq!(permits[1].to_string(), "[::1]:8080");
        let err = Config::from_toml(
            "[server]\npermit-listen = [\"nope\"]\n",
            Path::new("hytun.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("invalid permit-listen 'nope'"),
            "{err}"
        );
    }

    #[test]
    fn listen_specs() {
        let addr = |s: &str| ListenSpec::parse(s).ok().map(|l| l.addr);
        assert_eq!(addr("1080"), Some(sock("127.0.0.1:1080")));
        assert_eq!(addr("0"), Some(sock("127.0.0.1:0")));
        assert_eq!(addr("*:1080"), Some(sock("0.0.0.0:1080")));
        assert_eq!(addr("localhost:1080"), Some(sock("127.0.0.1:1080")));
        assert_eq!(addr("[::1]:1080"), Some(sock("[::1]:1080")));
        assert_eq!(addr("::1:1080"), None);
        assert_eq!(addr(""), None);
        assert_eq!(addr("1080:"), None);
        for missing in ["127.0.0.1", "localhost", "[::1]", "::1", "*"] {
            let err = ListenSpec::parse(missing).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "invalid listen spec '{missing}': missing port (expected [BIND:]PORT, e.g. 127.0.0.1:7000)"
                )
            );
        }
        assert!(matches!(
            "x:1".parse::<ListenSpec>(),
            Err(ConfigError::Spec {
                reason: SpecProblem::Bind,
                ..
            })
        ));
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("[2001:db8::1]:7000").ok();
        assert_eq!(
            e.map(|e| e.to_string()),
            Some("[2001:db8::1]:7000".to_string())
        );
        let shown = |s: &str| Endpoint::parse(s).map(|e| e.to_string()).ok();
        assert_eq!(shown("host"), Some("host:7000".to_string()));
        assert_eq!(shown("127.0.0.1"), Some("127.0.0.1:7000".to_string()));
        assert_eq!(shown("[::1]"), Some("[::1]:7000".to_string()));
        assert_eq!(shown("host:7001"), Some("host:7001".to_string()));
        assert!(Endpoint::parse("host:0").is_err());
        assert!(Endpoint::parse("").is_err());
        assert!(Endpoint::parse("a:b:c").is_err());
        // Ambiguous without brackets: refused, with the hint.
        let err = Endpoint::parse("2001:db8::1:7000").unwrap_err().to_string();
        assert!(err.contains("[::1] for IPv6"), "{err}");
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncdé f", 8), (2, 5));
        assert_eq!(line_column("", 0), (1, 1));
    }
}
