//! Turning command-line flags and the TOML config into runnable options:
//! flags win over the config file, the config over built-in defaults. Key
//! files are loaded here so every operator mistake is reported before any
//! socket is opened.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hytun_core::{
    ClientConfig as CoreClientConfig, PrivateIdentity, PublicIdentity,
    ServerConfig as CoreServerConfig, SessionConfig,
};

use crate::allow::AllowList;
use crate::client::{ClientOptions, ListenerKind};
use crate::config::{self, Endpoint, ForwardSpec, ListenSpec};
use crate::resolver::ResolverConfig;
use crate::runtime::os_rng;
use crate::server::admission::TrustedProxies;
use crate::server::{Limits, ServerOptions};

/// Default server listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";
/// Default directory for key files.
pub const DEFAULT_KEY_DIR: &str = "keys";
/// Most streams one session may carry (the host connection's table size).
pub const MAX_STREAMS_LIMIT: u32 = 1024;

/// A setup error: a message for the operator.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

fn err(e: impl std::fmt::Display) -> SetupError {
    SetupError(e.to_string())
}

/// Server flags (all optional: the config or defaults fill the gaps).
#[derive(Debug, Default, Clone)]
pub struct ServerFlags {
    /// `--listen`.
    pub listen: Option<ListenSpec>,
    /// `--key`.
    pub key: Option<PathBuf>,
    /// `--authorized-keys`.
    pub authorized_keys: Option<PathBuf>,
    /// `--allow` (replaces the config's list when given).
    pub allow: Vec<String>,
    /// `--max-sessions`.
    pub max_sessions: Option<u32>,
    /// `--max-streams`.
    pub max_streams: Option<u32>,
    /// `--handshake-timeout` seconds.
    pub handshake_timeout: Option<u64>,
    /// `--idle-timeout` seconds.
    pub idle_timeout: Option<u64>,
    /// `--handshake-rate` per source per second.
    pub handshake_rate: Option<u32>,
    /// `--max-pending`.
    pub max_pending: Option<u32>,
    /// `--max-pending-per-source`.
    pub max_pending_per_source: Option<u32>,
    /// `--hello-timeout` seconds.
    pub hello_timeout: Option<u64>,
    /// `--key-ops-rate` per second.
    pub key_ops_rate: Option<u32>,
    /// `--memory-budget` MiB.
    pub memory_budget: Option<u32>,
    /// `--session-memory` MiB.
    pub session_memory: Option<u32>,
    /// `--max-descriptors`.
    pub max_descriptors: Option<u32>,
    /// `--key-workers`.
    pub key_workers: Option<u32>,
    /// `--key-queue`.
    pub key_queue: Option<u32>,
    /// `--dns-workers`.
    pub dns_workers: Option<u32>,
    /// `--dns-queue`.
    pub dns_queue: Option<u32>,
    /// `--dns-per-session`.
    pub dns_per_session: Option<u32>,
    /// `--dns-timeout` seconds.
    pub dns_timeout: Option<u64>,
    /// `--proxy-protocol-from` (replaces the config's list when given).
    pub proxy_protocol_from: Vec<String>,
    /// `--config`.
    pub config: Option<PathBuf>,
}

/// Client flags.
#[derive(Debug, Default, Clone)]
pub struct ClientFlags {
    /// `--server`.
    pub server: Option<Endpoint>,
    /// `--key`.
    pub key: Option<PathBuf>,
    /// `--server-key`.
    pub server_key: Option<PathBuf>,
    /// `-L`.
    pub forward: Vec<ForwardSpec>,
    /// `-D`.
    pub socks: Vec<ListenSpec>,
    /// `--http-proxy`.
    pub http_proxy: Vec<ListenSpec>,
    /// `--keepalive` seconds.
    pub keepalive: Option<u64>,
    /// `--config`.
    pub config: Option<PathBuf>,
}

fn load_config(path: Option<&Path>) -> Result<config::Config, SetupError> {
    match path {
        Some(p) => config::Config::load(p).map_err(err),
        None => Ok(config::Config::default()),
    }
}

/// Loads this side's private key as a core identity.
pub fn load_identity(path: &Path) -> Result<PrivateIdentity, SetupError> {
    let key = hytun_keys::load_private_key(path).map_err(err)?;
    PrivateIdentity::new(key, &mut os_rng())
        .map_err(|e| SetupError(format!("{}: {e}", path.display())))
}

/// Loads a public key as a core identity.
pub fn load_public(path: &Path) -> Result<PublicIdentity, SetupError> {
    let key = hytun_keys::load_public_key(path).map_err(err)?;
    PublicIdentity::new(key).map_err(|e| SetupError(format!("{}: {e}", path.display())))
}

/// The receive window a new stream starts with on the server (C→S credit
/// announced in ServerHello).
pub const SERVER_INITIAL_WINDOW: u32 = 64 * 1024;

/// Builds the server's options.
pub fn server_options(flags: ServerFlags) -> Result<ServerOptions, SetupError> {
    let cfg = load_config(flags.config.as_deref())?
        .server
        .unwrap_or_default();
    let listen = match flags.listen.or(cfg.listen) {
        Some(l) => l.addr,
        None => DEFAULT_LISTEN
            .parse()
            .map_err(|_| SetupError("bad default listen address".into()))?,
    };
    let key = flags
        .key
        .or(cfg.key)
        .unwrap_or_else(|| Path::new(DEFAULT_KEY_DIR).join("server.key"));
    let authorized = flags
        .authorized_keys
        .or(cfg.authorized_keys)
        .unwrap_or_else(|| Path::new(DEFAULT_KEY_DIR).join("authorized_keys"));
    let allow_patterns = if flags.allow.is_empty() {
        cfg.allow.unwrap_or_default()
    } else {
        flags.allow
    };
    let allow = AllowList::parse(&allow_patterns).map_err(err)?;
    if allow.is_empty() {
        log::warn!("no --allow patterns: every stream will be refused (try --allow '127.0.0.1:*')");
    }
    let proxy_from = if flags.proxy_protocol_from.is_empty() {
        cfg.proxy_protocol_from.clone().unwrap_or_default()
    } else {
        flags.proxy_protocol_from.clone()
    };
    let proxy_from = TrustedProxies::parse(&proxy_from).map_err(err)?;
    if !proxy_from.is_empty() {
        log::info!("PROXY protocol header required from {proxy_from}");
    }
    let identity = load_identity(&key)?;
    let keys = hytun_keys::load_authorized_keys(&authorized).map_err(err)?;
    let mut authorized_ids = Vec::new();
    for k in keys {
        let id = PublicIdentity::new(k.key)
            .map_err(|e| SetupError(format!("{}: {e}", authorized.display())))?;
        authorized_ids.push(id);
    }
    let max_streams = flags
        .max_streams
        .or(cfg.max_streams_per_session.map(NonZeroU32::get))
        .unwrap_or(MAX_STREAMS_LIMIT);
    if max_streams == 0 || max_streams > MAX_STREAMS_LIMIT {
        return Err(SetupError(format!(
            "--max-streams must be 1..={MAX_STREAMS_LIMIT}"
        )));
    }
    let mut session = SessionConfig::HOST;
    session.max_streams = max_streams as u16;
    // Every OPEN implicitly grants the client this much credit before the
    // upstream is even connected, and the server must be able to hold it:
    // keep it small (the memory budget admits ~1000 streams per 64 MiB
    // session), and let connected streams grow from there.
    session.stream_window = SERVER_INITIAL_WINDOW;
    if let Some(s) = flags
        .handshake_timeout
        .or(cfg.handshake_timeout_secs.map(|v| v.get()))
    {
        session.handshake_timeout = Duration::from_secs(s.max(1));
    }
    if let Some(s) = flags
        .idle_timeout
        .or(cfg.idle_timeout_secs.map(|v| v.get()))
    {
        session.idle_timeout = Duration::from_secs(s.max(3));
        session.keepalive_interval = session.idle_timeout / 3;
    }
    let defaults = Limits::default();
    let pick = |flag: Option<u32>,
                cfg: Option<NonZeroU32>,
                name: &str|
     -> Result<Option<u32>, SetupError> {
        match flag.or(cfg.map(NonZeroU32::get)) {
            Some(0) => Err(SetupError(format!("--{name} must be at least 1"))),
            v => Ok(v),
        }
    };
    let nz = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
    let limits = Limits {
        max_sessions: pick(flags.max_sessions, cfg.max_sessions, "max-sessions")?
            .map_or(defaults.max_sessions, |v| v as usize),
        max_pending: pick(flags.max_pending, cfg.max_pending, "max-pending")?
            .map_or(defaults.max_pending, |v| v as usize),
        max_pending_per_source: pick(
            flags.max_pending_per_source,
            cfg.max_pending_per_source,
            "max-pending-per-source",
        )?
        .map_or(defaults.max_pending_per_source, |v| v as usize),
        hello_timeout: match flags
            .hello_timeout
            .or(cfg.hello_timeout.map(NonZeroU64::get))
        {
            Some(0) => return Err(SetupError("--hello-timeout must be at least 1".into())),
            Some(s) => Duration::from_secs(s),
            None => defaults.hello_timeout,
        },
        handshakes_per_source_per_sec: pick(
            flags.handshake_rate,
            cfg.handshakes_per_source_per_sec,
            "handshake-rate",
        )?
        .map_or(defaults.handshakes_per_source_per_sec, nz),
        key_ops_per_sec: pick(flags.key_ops_rate, cfg.key_ops_rate, "key-ops-rate")?
            .map_or(defaults.key_ops_per_sec, nz),
        memory_budget: pick(flags.memory_budget, cfg.memory_budget, "memory-budget")?
            .map_or(defaults.memory_budget, |v| (v as usize) << 20),
        session_memory: pick(flags.session_memory, cfg.session_memory, "session-memory")?
            .map_or(defaults.session_memory, |v| (v as usize) << 20),
        max_descriptors: pick(
            flags.max_descriptors,
            cfg.max_descriptors,
            "max-descriptors",
        )?
        .map(|v| v as usize),
        key_workers: pick(flags.key_workers, cfg.key_workers, "key-workers")?
            .map_or(defaults.key_workers, |v| v as usize),
        key_queue: pick(flags.key_queue, cfg.key_queue, "key-queue")?
            .map_or(defaults.key_queue, |v| v as usize),
        dns: ResolverConfig {
            workers: pick(flags.dns_workers, cfg.dns_workers, "dns-workers")?
                .map_or(defaults.dns.workers, |v| v as usize),
            max_jobs: pick(flags.dns_queue, cfg.dns_queue, "dns-queue")?
                .map_or(defaults.dns.max_jobs, |v| v as usize),
            per_session: pick(
                flags.dns_per_session,
                cfg.dns_per_session,
                "dns-per-session",
            )?
            .map_or(defaults.dns.per_session, |v| v as usize),
            timeout: match flags.dns_timeout.or(cfg.dns_timeout.map(NonZeroU64::get)) {
                Some(0) => return Err(SetupError("--dns-timeout must be at least 1".into())),
                Some(s) => Duration::from_secs(s),
                None => defaults.dns.timeout,
            },
            ..defaults.dns
        },
    };
    log::info!("server key {} ({})", identity.public().id(), key.display());
    Ok(ServerOptions {
        listen,
        core: Arc::new(CoreServerConfig::new(identity, authorized_ids, session)),
        allow,
        limits,
        proxy_from,
    })
}

/// Builds the client's options.
pub fn client_options(flags: ClientFlags) -> Result<ClientOptions, SetupError> {
    let cfg = load_config(flags.config.as_deref())?
        .client
        .unwrap_or_default();
    let server = match flags.server.or(cfg.server) {
        Some(s) => s,
        None => Endpoint::parse(DEFAULT_LISTEN).map_err(err)?,
    };
    let key = flags
        .key
        .or(cfg.key)
        .unwrap_or_else(|| Path::new(DEFAULT_KEY_DIR).join("id.key"));
    let server_key = flags
        .server_key
        .or(cfg.server_key)
        .unwrap_or_else(|| Path::new(DEFAULT_KEY_DIR).join("server.pub"));
    let identity = load_identity(&key)?;
    let pinned = load_public(&server_key)?;
    let mut session = SessionConfig::HOST;
    if let Some(s) = flags.keepalive.or(cfg.keepalive_secs.map(|v| v.get())) {
        session.keepalive_interval = Duration::from_secs(s.max(1));
        session.idle_timeout = session.keepalive_interval * 3;
    }
    let mut listeners = Vec::new();
    let forward = if flags.forward.is_empty() {
        cfg.forward.unwrap_or_default()
    } else {
        flags.forward
    };
    for f in forward {
        listeners.push((
            f.listen,
            ListenerKind::Forward {
                host: f.host,
                port: f.port,
            },
        ));
    }
    let socks = if flags.socks.is_empty() {
        cfg.socks.unwrap_or_default()
    } else {
        flags.socks
    };
    for s in socks {
        listeners.push((s.addr, ListenerKind::Socks));
    }
    let http = if flags.http_proxy.is_empty() {
        cfg.http_proxy.unwrap_or_default()
    } else {
        flags.http_proxy
    };
    for h in http {
        listeners.push((h.addr, ListenerKind::HttpProxy));
    }
    log::info!(
        "client key {}, pinned server key {}",
        identity.public().id(),
        pinned.id()
    );
    Ok(ClientOptions {
        server,
        core: Arc::new(CoreClientConfig::new(identity, pinned, session)),
        listeners,
        fail_fast_on_auth: true,
        fail_fast_on_first_attempt: false,
    })
}

/// A loopback address with an OS-chosen port.
pub fn any_loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}
