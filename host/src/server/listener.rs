//! Remote listeners (`-R` on the client): the server-side policy that says
//! where a client key may ask the server to listen ([`PermitListen`],
//! `--permit-listen` and the per-key `permitlisten="..."` option), the
//! mapping of a LISTEN request's address to a socket address, and one
//! bound, registered listener ([`RemoteListener`]) that a session owns
//! until it ends. Accepted connections become server-opened streams in
//! [`super::session`].

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hytun_core::{Destination, Host, ListenErrorCode, ListenId};
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};

use super::budget::Permit;

/// Most listeners one session may hold at once (and LISTEN requests per
/// session: the core's table, PROTOCOL.md §7.15).
pub const MAX_LISTENERS_PER_SESSION: usize = hytun_core::connection::MAX_LISTENERS;

/// One permitted listen address: `HOST:PORT` or `HOST:*`, HOST an IP
/// address (IPv6 in brackets), `localhost` (127.0.0.1) or `*` (any
/// address, including the unspecified 0.0.0.0 / `::`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermitListen {
    /// `None` = any address.
    pub host: Option<IpAddr>,
    /// `None` = any port.
    pub port: Option<u16>,
}

/// A `permit-listen` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermitListenError(pub String);

impl fmt::Display for PermitListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid permit-listen '{}': expected HOST:PORT or HOST:* (HOST an IP address, \
             [IPv6], localhost or *)",
            self.0
        )
    }
}

impl std::error::Error for PermitListenError {}

impl PermitListen {
    /// Parses `HOST:PORT` / `HOST:*`.
    ///
    /// # Errors
    /// [`PermitListenError`] naming the value.
    pub fn parse(s: &str) -> Result<Self, PermitListenError> {
        let bad = || PermitListenError(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = match host {
            "*" => None,
            "localhost" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            h => {
                let inner = match h.strip_prefix('[') {
                    Some(rest) => rest.strip_suffix(']').ok_or_else(bad)?,
                    None if h.contains(':') => return Err(bad()),
                    None => h,
                };
                Some(inner.parse::<IpAddr>().map_err(|_| bad())?)
            }
        };
        let port = match port {
            "*" => None,
            p => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad()),
                Ok(n) => Some(n),
            },
        };
        Ok(PermitListen { host, port })
    }

    /// True if this entry allows listening on `addr`.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.host.is_none_or(|h| h == addr.ip()) && self.port.is_none_or(|p| p == addr.port())
    }
}

impl fmt::Display for PermitListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            None => f.write_str("*")?,
            Some(IpAddr::V6(a)) => write!(f, "[{a}]")?,
            Some(IpAddr::V4(a)) => write!(f, "{a}")?,
        }
        match self.port {
            None => f.write_str(":*"),
            Some(p) => write!(f, ":{p}"),
        }
    }
}

impl TryFrom<String> for PermitListen {
    type Error = PermitListenError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PermitListen::parse(&s)
    }
}

impl std::str::FromStr for PermitListen {
    type Err = PermitListenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PermitListen::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for PermitListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PermitListen::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Where the server lets clients listen: the server-wide list
/// (`--permit-listen`, TOML `permit-listen`) and, per client key, the
/// `permitlisten="..."` entries of its `authorized_keys` options line.
#[derive(Debug, Clone, Default)]
pub struct ListenPolicy {
    /// What every authorized key may ask for (default: nothing).
    pub server: Vec<PermitListen>,
    /// Narrower lists for single keys.
    pub per_key: std::collections::HashMap<hytun_core::KeyId, Vec<PermitListen>>,
}

impl ListenPolicy {
    /// True if `key` may listen on `addr`.
    pub fn allows(&self, key: Option<hytun_core::KeyId>, addr: SocketAddr) -> bool {
        let narrowed = key.and_then(|k| self.per_key.get(&k)).map(Vec::as_slice);
        permitted(&self.server, narrowed, addr)
    }
}

/// The listen policy for one client key: the server-wide list, narrowed by
/// the key's own `permitlisten` entries when it has any (a request must
/// pass both). Empty server list = nothing may be listened on.
pub fn permitted(server: &[PermitListen], key: Option<&[PermitListen]>, addr: SocketAddr) -> bool {
    server.iter().any(|p| p.allows(addr)) && key.is_none_or(|k| k.iter().any(|p| p.allows(addr)))
}

/// The socket address a LISTEN names: IP addresses as given, `localhost`
/// as 127.0.0.1. Other names are refused (the server resolves no name for
/// a listen request).
pub fn bind_addr(bind: &Destination<'_>) -> Result<SocketAddr, ListenErrorCode> {
    let ip = match bind.host {
        Host::Ipv4(a) => IpAddr::from(a),
        Host::Ipv6(a) => IpAddr::from(a),
        Host::Domain(d) if d.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Host::Domain(_) => return Err(ListenErrorCode::AddressUnavailable),
    };
    Ok(SocketAddr::new(ip, bind.port))
}

/// The refusal for a failed bind.
pub fn bind_error_code(e: &io::Error) -> ListenErrorCode {
    match e.kind() {
        io::ErrorKind::AddrInUse => ListenErrorCode::AddressInUse,
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::PermissionDenied => {
            ListenErrorCode::AddressUnavailable
        }
        _ => ListenErrorCode::Other,
    }
}

/// A bound remote listener, registered with its session's event loop. It
/// holds one descriptor permit; dropping it (or [`Self::close`]) closes the
/// socket.
#[derive(Debug)]
pub struct RemoteListener {
    /// The client's listener id.
    pub id: ListenId,
    /// The bound address.
    pub addr: SocketAddr,
    /// The poll token.
    pub token: Token,
    sock: TcpListener,
    _fd: Permit,
}

impl RemoteListener {
    /// Binds `addr` and registers it for accept readiness under `token`.
    ///
    /// # Errors
    /// The bind or registration error.
    pub fn bind(
        id: ListenId,
        addr: SocketAddr,
        registry: &Registry,
        token: Token,
        fd: Permit,
    ) -> io::Result<Self> {
        // std sets SO_REUSEADDR on Unix, so a port freed by an ended
        // session can be bound again at once despite TIME_WAIT.
        let std = std::net::TcpListener::bind(addr)?;
        std.set_nonblocking(true)?;
        let mut sock = TcpListener::from_std(std);
        registry.register(&mut sock, token, Interest::READABLE)?;
        let addr = sock.local_addr()?;
        Ok(RemoteListener {
            id,
            addr,
            token,
            sock,
            _fd: fd,
        })
    }

    /// Accepts one pending connection.
    ///
    /// # Errors
    /// `WouldBlock` when none is pending, or the accept error.
    pub fn accept(&self) -> io::Result<(mio::net::TcpStream, SocketAddr)> {
        self.sock.accept()
    }

    /// Deregisters and closes the listener.
    pub fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.sock);
    }
}

/// The origin of an accepted connection, as INCOMING carries it.
pub fn origin(peer: SocketAddr) -> Destination<'static> {
    let host = match peer.ip() {
        IpAddr::V4(a) => Host::Ipv4(a.octets()),
        IpAddr::V6(a) => Host::Ipv6(a.octets()),
    };
    // Port 0 cannot be encoded; an accepted TCP peer never has it.
    Destination {
        host,
        port: peer.port().max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn permit_listen_parses_hosts_and_wildcards() {
        let p = PermitListen::parse("127.0.0.1:8080").unwrap();
        assert!(p.allows(sa("127.0.0.1:8080")));
        assert!(!p.allows(sa("127.0.0.1:8081")));
        assert!(!p.allows(sa("0.0.0.0:8080")));
        let p = PermitListen::parse("localhost:*").unwrap();
        assert!(p.allows(sa("127.0.0.1:1")));
        assert!(!p.allows(sa("127.0.0.2:1")));
        let p = PermitListen::parse("[::1]:22").unwrap();
        assert!(p.allows(sa("[::1]:22")));
        assert_eq!(p.to_string(), "[::1]:22");
        let p = PermitListen::parse("*:9000").unwrap();
        assert!(p.allows(sa("0.0.0.0:9000")) && p.allows(sa("[::1]:9000")));
        for bad in [
            "",
            "8080",
            "host:80",
            "127.0.0.1:0",
            "::1:80",
            "[::1:80",
            "1.2.3.4:x",
        ] {
            let e = PermitListen::parse(bad).unwrap_err();
            assert!(e.to_string().contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn key_entries_narrow_the_server_list() {
        let server = [PermitListen::parse("127.0.0.1:*").unwrap()];
        let key = [PermitListen::parse("127.0.0.1:8080").unwrap()];
        assert!(permitted(&server, None, sa("127.0.0.1:9999")));
        assert!(permitted(&server, Some(&key), sa("127.0.0.1:8080")));
        assert!(!permitted(&server, Some(&key), sa("127.0.0.1:9999")));
        // A key entry cannot widen the server's list.
        let wide = [PermitListen::parse("*:*").unwrap()];
        assert!(!permitted(&server, Some(&wide), sa("0.0.0.0:80")));
        // Default: nothing.
        assert!(!permitted(&[], None, sa("127.0.0.1:8080")));
    }

    #[test]
    fn bind_addresses_and_errors() {
        let d = Destination {
            host: Host::Domain("LocalHost"),
            port: 80,
        };
        assert_eq!(bind_addr(&d), Ok(sa("127.0.0.1:80")));
        let d = Destination {
            host: Host::Domain("example.com"),
            port: 80,
        };
        assert_eq!(bind_addr(&d), Err(ListenErrorCode::AddressUnavailable));
        let e = io::Error::from(io::ErrorKind::AddrInUse);
        assert_eq!(bind_error_code(&e), ListenErrorCode::AddressInUse);
        assert_eq!(origin(sa("[::1]:5")).to_string(), "[0:0:0:0:0:0:0:1]:5");
    }
}
