//! The `hytun` TOML configuration file and the address specs shared with the
//! command line: [`ForwardSpec`] (`-L [BIND:]PORT:HOST:PORT`), [`ListenSpec`]
//! (`-D` / `--http-proxy` / server `listen`, `[BIND:]PORT`) and [`Endpoint`]
//! (`HOST:PORT`, the server a client dials). Every config field is optional
//! so that command-line flags can fill or override it (merging is the
//! caller's job). Unknown keys are errors; keys are kebab-case. Relative key
//! paths in the file are resolved against the config file's directory, so a
//! config works the same from any working directory. Counts and durations
//! must be at least 1. Values are validated while parsing, so errors point at
//! the file, line and column of the bad value.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::allow::{AllowList, DestHost, parse_port};
use crate::server::admission::TrustedProxies;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// `[server]` table.
    pub server: Option<ServerConfig>,
    /// `[client]` table.
    pub client: Option<ClientConfig>,
}

/// `[server]`: settings of `hytun server`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Address to accept tunnel clients on.
    pub listen: Option<ListenSpec>,
    /// The server's private key file.
    pub key: Option<PathBuf>,
    /// File of client public keys allowed to connect.
    pub authorized_keys: Option<PathBuf>,
    /// Destination allowlist patterns (see `allow`); validated on load.
    pub allow: Option<Vec<String>>,
    /// Most concurrent client sessions.
    pub max_sessions: Option<NonZeroU32>,
    /// Most concurrent streams within one session.
    pub max_streams_per_session: Option<NonZeroU32>,
    /// Seconds a client has to complete the handshake.
    pub handshake_timeout_secs: Option<NonZeroU64>,
    /// Seconds without traffic before a session is closed.
    pub idle_timeout_secs: Option<NonZeroU64>,
    /// Handshakes per second allowed from one source address (burst 2x).
    pub handshakes_per_source_per_sec: Option<NonZeroU32>,
    /// Most connections still in the handshake (same as `--max-pending`).
    pub max_pending: Option<NonZeroU32>,
    /// Most pending handshakes from one source per event loop.
    pub max_pending_per_source: Option<NonZeroU32>,
    /// Seconds from accept to a complete ClientHello.
    pub hello_timeout: Option<NonZeroU64>,
    /// Private-key operations per second, server-wide.
    pub key_ops_rate: Option<NonZeroU32>,
    /// MiB of receive credit and session state, server-wide.
    pub memory_budget: Option<NonZeroU32>,
    /// MiB one session may hold.
    pub session_memory: Option<NonZeroU32>,
    /// Descriptors the server may use (default: the raised RLIMIT_NOFILE).
    pub max_descriptors: Option<NonZeroU32>,
    /// Private-key worker threads.
    pub key_workers: Option<NonZeroU32>,
    /// Private-key operations waiting for a worker, server-wide.
    pub key_queue: Option<NonZeroU32>,
    /// Name-lookup worker threads.
    pub dns_workers: Option<NonZeroU32>,
    /// Most name lookups in flight, server-wide.
    pub dns_queue: Option<NonZeroU32>,
    /// Most name lookups in flight per session.
    pub dns_per_session: Option<NonZeroU32>,
    /// Seconds before a name lookup is answered as timed out.
    pub dns_timeout: Option<NonZeroU64>,
    /// Addresses/networks of load balancers that must send a PROXY
    /// protocol header (v1 or v2); validated on load.
    pub proxy_protocol_from: Option<Vec<String>>,
}

/// `[client]`: settings of `hytun client`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientConfig {
    /// The server to connect to.
    pub server: Option<Endpoint>,
    /// The client's private key file.
    pub key: Option<PathBuf>,
    /// The server's public key file (pinned).
    pub server_key: Option<PathBuf>,
    /// Local port forwards (`-L`).
    pub forward: Option<Vec<ForwardSpec>>,
    /// SOCKS5 listeners (`-D`).
    pub socks: Option<Vec<ListenSpec>>,
    /// HTTP proxy listeners.
    pub http_proxy: Option<Vec<ListenSpec>>,
    /// Seconds between keepalives.
    pub keepalive_secs: Option<NonZeroU64>,
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
        let base = path.parent().unwrap_or(Path::new(""));
        if let Some(server) = &mut config.server {
            if let Some(patterns) = &server.allow {
                AllowList::parse(patterns).map_err(|e| ConfigError::Invalid {
                    path: path.to_path_buf(),
                    field: "server.allow",
                    message: e.to_string(),
                })?;
            }
            if let Some(nets) = &server.proxy_protocol_from {
                TrustedProxies::parse(nets).map_err(|e| ConfigError::Invalid {
                    path: path.to_path_buf(),
                    field: "server.proxy-protocol-from",
                    message: e.to_string(),
                })?;
            }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
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
        let parts = split_colons(spec).ok_or(err(SpecProblem::Brackets))?;
        let (bind, port) = match parts.as_slice() {
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

/// `HOST:PORT` — a remote endpoint such as the tunnel server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: DestHost,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `HOST:PORT` (IPv6 bracketed).
    ///
    /// # Errors
    /// [`ConfigError::Spec`] saying which part is wrong.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let err = |reason| ConfigError::Spec {
            kind: "endpoint",
            spec: spec.to_string(),
            reason,
        };
        let parts = split_colons(spec).ok_or(err(SpecProblem::Brackets))?;
        let [host, port] = parts.as_slice() else {
            return Err(err(SpecProblem::Shape));
        };
        Ok(Self {
            host: parse_dest_host(host).ok_or(err(SpecProblem::Host))?,
            port: parse_port(port).ok_or(err(SpecProblem::Port))?,
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
spec_conversions!(ListenSpec, ForwardSpec, Endpoint);

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
                    "forward" => "[BIND:]PORT:HOST:PORT",
                    "listen" => "[BIND:]PORT",
                    _ => "HOST:PORT",
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
max-sessions = 256
max-streams-per-session = 1024
handshake-timeout-secs = 10
idle-timeout-secs = 300
handshakes-per-source-per-sec = 20

# client
[client]
server = "tunnel.example.com:7000"
key = "keys/id.key"
server-key = "keys/server.pub"
forward = ["8080:127.0.0.1:80", "[::1]:2222:[fd00::5]:22"]
socks = ["1080"]
http-proxy = ["0.0.0.0:3128"]
keepalive-secs = 15
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
        assert_eq!(server.allow.as_ref().map(Vec::len), Some(2));
        assert_eq!(server.max_sessions.map(NonZeroU32::get), Some(256));
        assert_eq!(
            server.max_streams_per_session.map(NonZeroU32::get),
            Some(1024)
        );
        assert_eq!(server.handshake_timeout_secs.map(NonZeroU64::get), Some(10));
        assert_eq!(server.idle_timeout_secs.map(NonZeroU64::get), Some(300));
        assert_eq!(
            server.handshakes_per_source_per_sec.map(NonZeroU32::get),
            Some(20)
        );

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
        assert_eq!(client.keepalive_secs.map(NonZeroU64::get), Some(15));
    }

    #[test]
    fn empty_file_and_partial_tables() {
        assert_eq!(load("").ok(), Some(Config::default()));
        let c = load("[client]\nkeepalive-secs = 5\n")
            .ok()
            .unwrap_or_default();
        assert!(c.server.is_none());
        assert_eq!(
            c.client.and_then(|c| c.keepalive_secs).map(NonZeroU64::get),
            Some(5)
        );
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = load("[server]\nlisten = \"7000\"\nmax-session = 3\n").unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("/etc/hytun/hytun.toml:3:1: "), "{shown}");
        assert!(shown.contains("max-session"), "{shown}");

        let err = load("[client]\nserver = \"nope\"\n").unwrap_err();
        match &err {
            ConfigError::Parse { line, column, .. } => assert_eq!((*line, *column), (2, 10)),
            other => panic!("unexpected {other}"),
        }
        assert!(
            err.to_string().contains("invalid endpoint spec 'nope'"),
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
        assert!(
            err.to_string().starts_with("/etc/hytun/hytun.toml:2:"),
            "{err}"
        );

        let err = load("[server\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 1, .. }), "{err}");

        let err = load("[server]\nproxy-protocol-from = [\"10.0.0.1/8\"]\n").unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("server.proxy-protocol-from"), "{shown}");
        assert!(shown.contains("host bits"), "{shown}");
        let ok = load("[server]\nproxy-protocol-from = [\"10.0.0.0/8\", \"::1\"]\n").unwrap();
        assert_eq!(
            ok.server
                .and_then(|s| s.proxy_protocol_from)
                .map(|v| v.len()),
            Some(2)
        );
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
        assert!(Endpoint::parse("host").is_err());
        assert!(Endpoint::parse("host:0").is_err());
        assert!(Endpoint::parse("2001:db8::1:7000").is_err());
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncdé f", 8), (2, 5));
        assert_eq!(line_column("", 0), (1, 1));
    }
}
