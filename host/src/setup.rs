//! Turning command-line flags and the TOML config into runnable options:
//! flags win over the config file, the config over built-in defaults. Key
//! files are loaded here so every operator mistake is reported before any
//! socket is opened.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hytun_core::{
    ClientConfig as CoreClientConfig, PrivateIdentity, PublicIdentity,
    ServerConfig as CoreServerConfig, SessionConfig,
};

use crate::allow::AllowList;
use crate::client::{ClientOptions, ListenerKind};
use crate::config::{
    self, DnsPerSession, DnsQueue, DnsTimeout, DnsWorkers, DrainTimeout, Endpoint, ForwardSpec,
    HelloTimeout, Keepalive, KeyQueue, KeyWorkers, ListenSpec, MaxDescriptors, MaxPending,
    MaxPendingPerSource, MaxSessions, MaxStreams, ReverseSpec, Threads,
};
use crate::resolver::ResolverConfig;
use crate::runtime::os_rng;
use crate::server::admission::TrustedProxies;
use crate::server::listener::{ListenPolicy, PermitListen};
use crate::server::{Limits, ReloadFn, ServerOptions};

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

/// Server flags (all optional: the config or defaults fill the gaps): the
/// same type as the `[server]` table, see [`crate::config::ServerConfig`].
pub type ServerFlags = crate::config::ServerConfig;

/// Client flags.
#[derive(Debug, Default, Clone)]
pub struct ClientFlags {
    /// `--server`.
    pub server: Option<Endpoint>,
    /// `--key`.
    pub key: Option<PathBuf>,
    /// `--server-key`.
    pub server_key: Option<PathBuf>,
    /// `-L` / `--forward` (replaces the config's list when given).
    pub forward: Vec<ForwardSpec>,
    /// `-R` (replaces the config's list when given).
    pub reverse: Vec<ReverseSpec>,
    /// `-D` / `--socks` (replaces the config's list when given).
    pub socks: Vec<ListenSpec>,
    /// `--http-proxy` (replaces the config's list when given).
    pub http_proxy: Vec<ListenSpec>,
    /// `--keepalive` seconds.
    pub keepalive: Option<Keepalive>,
    /// `--metrics`.
    pub metrics: Option<ListenSpec>,
    /// `--config`.
    pub config: Option<PathBuf>,
}

/// Loads the config file, which (like `authorized_keys`) must pass the
/// StrictModes checks: it names the keys to trust.
fn load_config(path: Option<&Path>) -> Result<config::Config, SetupError> {
    let Some(path) = path else {
        return Ok(config::Config::default());
    };
    let config = config::Config::load(path).map_err(err)?;
    hytun_keys::check_secure_file(path).map_err(|e| SetupError(format!("config file: {e}")))?;
    for (old, new) in &config.deprecated {
        log::warn!(
            "{}: key '{old}' is deprecated, write '{new}' (the flag's name)",
            path.display()
        );
    }
    Ok(config)
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

/// Everything the server's options are made of except its private key:
/// what a reload re-reads.
struct ServerSettings {
    listen: SocketAddr,
    key: PathBuf,
    /// The server's key, when asked for (not on reload).
    identity: Option<PrivateIdentity>,
    allow: AllowList,
    authorized: Vec<PublicIdentity>,
    session: SessionConfig,
    limits: Limits,
    /// Event-loop threads (fixed at start).
    threads: usize,
    /// Where to serve metrics (fixed at start).
    metrics: Option<SocketAddr>,
    /// Where clients may ask the server to listen (`-R`).
    listen_policy: ListenPolicy,
    /// Peers that must send a PROXY protocol header.
    proxy_from: TrustedProxies,
}

/// Builds the server's options.
pub fn server_options(flags: ServerFlags) -> Result<ServerOptions, SetupError> {
    server_setup(flags).map(|(opts, _)| opts)
}

/// The default number of server event loops: one per CPU, at most 8.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Builds the server's options and the number of event-loop threads
/// (`--threads`, `threads`, or [`default_threads`]).
pub fn server_setup(flags: ServerFlags) -> Result<(ServerOptions, usize), SetupError> {
    let settings = server_settings(flags, true)?;
    if settings.allow.is_empty() {
        log::warn!("no --allow patterns: every stream will be refused (try --allow '127.0.0.1:*')");
    }
    let Some(identity) = settings.identity else {
        return Err(SetupError("the server key was not loaded".into()));
    };
    log::info!(
        "server key {} ({})",
        identity.public().id(),
        settings.key.display()
    );
    log::info!("allowed destinations: {}", settings.allow);
    if !settings.proxy_from.is_empty() {
        log::info!(
            "PROXY protocol header required from {}",
            settings.proxy_from
        );
    }
    let opts = ServerOptions {
        listen: settings.listen,
        metrics: settings.metrics,
        listen_policy: settings.listen_policy,
        proxy_from: settings.proxy_from,
        core: Arc::new(CoreServerConfig::new(
            identity,
            settings.authorized,
            settings.session,
        )),
        allow: settings.allow,
        limits: settings.limits,
    };
    Ok((opts, settings.threads))
}

/// What SIGHUP runs: [`reload_server_options`] with the flags the server
/// was started with (flags still win over the re-read config file).
pub fn server_reloader(flags: ServerFlags) -> ReloadFn {
    Box::new(move |current| reload_server_options(flags.clone(), current).map_err(|e| e.0))
}

/// Re-reads the config file, `authorized_keys` and the allowlist for a
/// reload of a server running with `current`. The authorized keys, the
/// allowlist, the session parameters of new sessions (`max-streams`,
/// handshake and idle timeouts) and the limits `max-sessions`,
/// `session-memory` and `hello-timeout` take effect; the listen address,
/// the server key and the other limits (sized into pools and threads at
/// start) keep their running values, and a change to them is logged as
/// needing a restart.
pub fn reload_server_options(
    flags: ServerFlags,
    current: &ServerOptions,
) -> Result<ServerOptions, SetupError> {
    let settings = server_settings(flags, false)?;
    let restart = |what: &str, from: String, to: String| {
        log::warn!("reload: {what} changed from {from} to {to}: this takes a restart");
    };
    if settings.listen != current.listen {
        restart(
            "listen address",
            current.listen.to_string(),
            settings.listen.to_string(),
        );
    }
    let running_id = current.core.identity.public().id();
    match hytun_keys::load_private_key(&settings.key).map(|k| k.to_public_key()) {
        Ok(key) if hytun_keys::fingerprint(&key).0 != running_id.0 => log::warn!(
            "reload: the server key in {} is not the running one ({running_id}): a new server \
             key takes a restart",
            settings.key.display()
        ),
        Ok(_) => {}
        Err(e) => log::warn!("reload: cannot check the server key: {e}"),
    }
    let (old, new) = (&current.limits, &settings.limits);
    let mut limits = settings.limits.clone();
    // Each restart-only setting, shown in the unit of its flag.
    macro_rules! fixed {
        ($($field:ident).+, $name:literal, $show:expr) => {
            if old.$($field).+ != new.$($field).+ {
                let show = $show;
                restart($name, show(&old.$($field).+), show(&new.$($field).+));
                limits.$($field).+ = old.$($field).+.clone();
            }
        };
    }
    let number = |v: &usize| v.to_string();
    let rate = |v: &std::num::NonZeroU32| format!("{v}/s");
    let secs = |v: &std::time::Duration| format!("{} s", v.as_secs());
    fixed!(max_pending, "max-pending", number);
    fixed!(max_pending_per_source, "max-pending-per-source", number);
    fixed!(handshakes_per_source_per_sec, "handshake-rate", rate);
    fixed!(key_ops_per_sec, "key-ops-rate", rate);
    fixed!(memory_budget, "memory-budget", |v: &usize| format!(
        "{} MiB",
        v >> 20
    ));
    fixed!(max_descriptors, "max-descriptors", |v: &Option<usize>| v
        .map_or_else(
            || "the descriptor limit".to_string(),
            |n| n.to_string()
        ));
    fixed!(key_workers, "key-workers", number);
    fixed!(key_queue, "key-queue", number);
    fixed!(dns.workers, "dns-workers", number);
    fixed!(dns.max_jobs, "dns-queue", number);
    fixed!(dns.per_session, "dns-per-session", number);
    fixed!(dns.timeout, "dns-timeout", secs);
    let mut core = CoreServerConfig::new(
        current.core.identity.clone(),
        settings.authorized,
        settings.session,
    );
    core.suites = current.core.suites.clone();
    Ok(ServerOptions {
        listen: current.listen,
        metrics: current.metrics,
        listen_policy: settings.listen_policy,
        proxy_from: settings.proxy_from,
        core: Arc::new(core),
        allow: settings.allow,
        limits,
    })
}

/// Reads the config file, `authorized_keys` and the allowlist, and merges
/// them with `flags` (flags win); with `load_key`, loads the server key
/// too, first, so that its errors come before those of the other files.
fn server_settings(flags: ServerFlags, load_key: bool) -> Result<ServerSettings, SetupError> {
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
        cfg.allow
    } else {
        flags.allow
    };
    let allow = AllowList::parse(&allow_patterns).map_err(err)?;
    let proxy_from = if flags.proxy_protocol_from.is_empty() {
        cfg.proxy_protocol_from.clone()
    } else {
        flags.proxy_protocol_from.clone()
    };
    let proxy_from = TrustedProxies::parse(&proxy_from).map_err(err)?;
    let identity = if load_key {
        Some(load_identity(&key)?)
    } else {
        None
    };
    let keys = hytun_keys::load_authorized_keys(&authorized).map_err(err)?;
    let mut authorized_ids = Vec::new();
    let mut listen_policy = ListenPolicy {
        server: if flags.permit_listen.is_empty() {
            cfg.permit_listen
        } else {
            flags.permit_listen
        },
        ..ListenPolicy::default()
    };
    for k in keys {
        let narrow = k
            .options
            .permit_listen
            .iter()
            .map(|p| PermitListen::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                SetupError(format!(
                    "{}: key {}: {e}",
                    authorized.display(),
                    k.fingerprint
                ))
            })?;
        let id = PublicIdentity::new(k.key)
            .map_err(|e| SetupError(format!("{}: {e}", authorized.display())))?;
        if !narrow.is_empty() {
            listen_policy.per_key.insert(id.id(), narrow);
        }
        authorized_ids.push(id);
    }
    let max_streams = flags
        .max_streams
        .or(cfg.max_streams)
        .map_or(MAX_STREAMS_LIMIT, MaxStreams::as_u32);
    let mut session = SessionConfig::HOST;
    session.max_streams = u16::try_from(max_streams).unwrap_or(u16::MAX);
    // Every OPEN implicitly grants the client this much credit before the
    // upstream is even connected, and the server must be able to hold it:
    // keep it small (the memory budget admits ~1000 streams per 64 MiB
    // session), and let connected streams grow from there.
    session.stream_window = SERVER_INITIAL_WINDOW;
    if let Some(t) = flags.handshake_timeout.or(cfg.handshake_timeout) {
        session.handshake_timeout = t.secs();
    }
    if let Some(t) = flags.idle_timeout.or(cfg.idle_timeout) {
        session.idle_timeout = t.secs();
        session.keepalive_interval = session.idle_timeout / 3;
    }
    let defaults = Limits::default();
    let nz = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
    let limits = Limits {
        max_sessions: flags
            .max_sessions
            .or(cfg.max_sessions)
            .map_or(defaults.max_sessions, MaxSessions::as_usize),
        max_pending: flags
            .max_pending
            .or(cfg.max_pending)
            .map_or(defaults.max_pending, MaxPending::as_usize),
        max_pending_per_source: flags
            .max_pending_per_source
            .or(cfg.max_pending_per_source)
            .map_or(
                defaults.max_pending_per_source,
                MaxPendingPerSource::as_usize,
            ),
        hello_timeout: flags
            .hello_timeout
            .or(cfg.hello_timeout)
            .map_or(defaults.hello_timeout, HelloTimeout::secs),
        handshakes_per_source_per_sec: flags
            .handshake_rate
            .or(cfg.handshake_rate)
            .map_or(defaults.handshakes_per_source_per_sec, |v| nz(v.as_u32())),
        key_ops_per_sec: flags
            .key_ops_rate
            .or(cfg.key_ops_rate)
            .map_or(defaults.key_ops_per_sec, |v| nz(v.as_u32())),
        memory_budget: flags
            .memory_budget
            .or(cfg.memory_budget)
            .map_or(defaults.memory_budget, |v| v.as_usize() << 20),
        session_memory: flags
            .session_memory
            .or(cfg.session_memory)
            .map_or(defaults.session_memory, |v| v.as_usize() << 20),
        max_descriptors: flags
            .max_descriptors
            .or(cfg.max_descriptors)
            .map(MaxDescriptors::as_usize),
        key_workers: flags
            .key_workers
            .or(cfg.key_workers)
            .map_or(defaults.key_workers, KeyWorkers::as_usize),
        key_queue: flags
            .key_queue
            .or(cfg.key_queue)
            .map_or(defaults.key_queue, KeyQueue::as_usize),
        dns: ResolverConfig {
            workers: flags
                .dns_workers
                .or(cfg.dns_workers)
                .map_or(defaults.dns.workers, DnsWorkers::as_usize),
            max_jobs: flags
                .dns_queue
                .or(cfg.dns_queue)
                .map_or(defaults.dns.max_jobs, DnsQueue::as_usize),
            per_session: flags
                .dns_per_session
                .or(cfg.dns_per_session)
                .map_or(defaults.dns.per_session, DnsPerSession::as_usize),
            timeout: flags
                .dns_timeout
                .or(cfg.dns_timeout)
                .map_or(defaults.dns.timeout, DnsTimeout::secs),
            ..defaults.dns
        },
        drain: flags
            .drain_timeout
            .or(cfg.drain_timeout)
            .map_or(defaults.drain, DrainTimeout::secs),
        max_listeners: defaults.max_listeners,
    };
    let threads = flags
        .threads
        .or(cfg.threads)
        .map_or_else(default_threads, Threads::as_usize);
    Ok(ServerSettings {
        listen,
        key,
        identity,
        allow,
        authorized: authorized_ids,
        session,
        limits,
        threads,
        metrics: flags.metrics.or(cfg.metrics).map(|l| l.addr),
        listen_policy,
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
        warn_if_open("SOCKS5 proxy", s.addr);
        listeners.push((s.addr, ListenerKind::Socks));
    }
    let http = if flags.http_proxy.is_empty() {
        cfg.http_proxy.unwrap_or_default()
    } else {
        flags.http_proxy
    };
    for h in http {
        warn_if_open("HTTP proxy", h.addr);
        listeners.push((h.addr, ListenerKind::HttpProxy));
    }
    let reverse = if flags.reverse.is_empty() {
        cfg.reverse.unwrap_or_default()
    } else {
        flags.reverse
    };
    let identity = load_identity(&key)?;
    let pinned = load_public(&server_key)?;
    let mut session = SessionConfig::HOST;
    if let Some(k) = flags.keepalive.or(cfg.keepalive) {
        session.keepalive_interval = k.secs();
        session.idle_timeout = session.keepalive_interval * 3;
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
        metrics: flags.metrics.or(cfg.metrics).map(|l| l.addr),
        reverse,
        fail_fast_on_auth: true,
        fail_fast_on_first_attempt: false,
    })
}

/// Warns that a proxy listener reachable from other machines lets anyone
/// who can reach it use the tunnel: the proxies have no authentication.
fn warn_if_open(what: &str, addr: SocketAddr) {
    if !addr.ip().is_loopback() {
        log::warn!(
            "{what} on {addr} is not on loopback and has no authentication: \
             anyone who can reach it can use the tunnel"
        );
    }
}

/// A loopback address with an OS-chosen port.
pub fn any_loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A fresh directory with `server.key` and an `authorized_keys` file.
    fn key_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hytun-setup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = hytun_keys::generate(2048).expect("keygen");
        hytun_keys::write_keypair(&dir, "server", &key, false).expect("write keys");
        std::fs::copy(dir.join("server.pub"), dir.join("authorized_keys")).expect("copy");
        dir
    }

    #[test]
    fn flags_win_over_the_config_and_the_config_over_defaults() {
        let dir = key_dir("merge");
        let config = dir.join("hytun.toml");
        std::fs::write(
            &config,
            "[server]\nkey = \"server.key\"\nauthorized-keys = \"authorized_keys\"\n\
             threads = 3\ndrain-timeout = 0\nidle-timeout = 30\nmax-streams = 8\n\
             allow = [\"127.0.0.1:*\"]\nlisten = 0\n",
        )
        .expect("write config");
        let flags = ServerFlags {
            config: Some(config),
            max_streams: Some(MaxStreams::new(16).expect("in range")),
            allow: vec!["127.0.0.1:80".into()],
            ..ServerFlags::default()
        };
        let (opts, threads) = match server_setup(flags) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(threads, 3);
        assert_eq!(opts.limits.drain, Duration::ZERO);
        assert_eq!(opts.core.session.idle_timeout, Duration::from_secs(30));
        assert_eq!(
            opts.core.session.keepalive_interval,
            Duration::from_secs(10)
        );
        assert_eq!(opts.core.session.max_streams, 16, "the flag wins");
        // A list flag replaces the config's list.
        assert_eq!(opts.allow.to_string(), "127.0.0.1:80");
        assert_eq!(opts.listen, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn defaults_fill_what_neither_gives() {
        let dir = key_dir("defaults");
        let flags = ServerFlags {
            key: Some(dir.join("server.key")),
            authorized_keys: Some(dir.join("authorized_keys")),
            ..ServerFlags::default()
        };
        let (opts, threads) = match server_setup(flags) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(threads, default_threads());
        assert_eq!(opts.limits.drain, crate::server::SHUTDOWN_GRACE);
        assert_eq!(opts.core.session.max_streams, 1024);
        assert!(opts.allow.is_empty());
        assert_eq!(opts.listen.to_string(), DEFAULT_LISTEN);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
