//! The server's destination allowlist, plus the [`DestHost`] type that names a
//! destination throughout the host crate (SOCKS5, HTTP proxy and `-L` specs).
//!
//! Patterns are `HOST:PORT` where `PORT` is a number or `*`, and `HOST` is:
//! an exact domain (`example.com`), a subdomain wildcard (`*.example.com`,
//! any depth, but *not* the bare `example.com`), an IPv4 address or CIDR
//! (`127.0.0.1`, `10.0.0.0/8`), a bracketed IPv6 address or CIDR (`[::1]`,
//! `[fd00::]/8`), or `*` for any host. The pattern `*` alone allows
//! everything public; [`AllowList::allows_all`] reports it so the caller can
//! warn. An empty list allows nothing. Domain matching is case-insensitive
//! and ignores one trailing dot. IPv4-mapped IPv6 destinations
//! (`::ffff:a.b.c.d`) are matched as the IPv4 address they reach. CIDR
//! patterns with host bits set (`127.0.0.1/8`) are accepted and masked.
//!
//! Special addresses: loopback, link-local (`169.254.0.0/16` with the cloud
//! metadata service `169.254.169.254`, `fe80::/10`), unspecified (`0.0.0.0/8`,
//! `::`), multicast, broadcast, the AWS IPv6 metadata address `fd00:ec2::254`,
//! and the IPv4-mapped (`::ffff:127.0.0.1`) or IPv4-compatible (`::127.0.0.1`)
//! forms of the IPv4 ones (see [`special_address_class`]). They are reached
//! only through an IP/CIDR pattern that contains them: never through a
//! domain pattern (whatever the name resolves to) and never through the
//! any-host `*`.
//!
//! Domain destinations are decided in two steps, so that a name no rule can
//! match never reaches DNS:
//! 1. Before any lookup, [`AllowList::decide_name`] returns a
//!    [`NameDecision`]: [`Allowed`](NameDecision::Allowed) (a domain pattern
//!    or `*` matches the name), [`NeedsAddressCheck`](NameDecision::NeedsAddressCheck)
//!    (no domain pattern matches, but an IP/CIDR pattern exists for the port,
//!    so the resolved addresses may still qualify), or
//!    [`Refused`](NameDecision::Refused) (refuse without a lookup).
//! 2. After the lookup, [`AllowList::connectable`] (or
//!    [`AllowList::filter_resolved`]) keeps only the addresses the decision
//!    admits. So `10.0.0.0/8:*` admits `intranet.local` if it resolves into
//!    10/8, while a domain pattern admits its domain's public addresses
//!    whatever they are (the operator trusts that domain's DNS) but not a
//!    special address. The caller must check every address it actually
//!    connects to, never connect to an address that was not checked.
//!
//! Existence of names: a refused name is refused before any lookup, so the
//! answer is the same whether or not it exists. For a `NeedsAddressCheck`
//! name the caller must also answer a failed lookup like a refusal
//! ([`NameDecision::may_reveal_lookup_errors`]), or the server becomes a probe
//! of its DNS.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A destination host as requested by a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DestHost {
    /// A literal IP address.
    Ip(IpAddr),
    /// A hostname, validated by [`DestHost::parse`]; resolved by the server.
    Domain(String),
}

impl DestHost {
    /// The core's (wire) form of this host with `port`: an OPEN's
    /// destination. A domain's trailing dot is dropped.
    pub fn destination(&self, port: u16) -> hytun_core::Destination<'_> {
        let host = match self {
            DestHost::Ip(IpAddr::V4(a)) => hytun_core::Host::Ipv4(a.octets()),
            DestHost::Ip(IpAddr::V6(a)) => hytun_core::Host::Ipv6(a.octets()),
            DestHost::Domain(d) => hytun_core::Host::Domain(d.trim_end_matches('.')),
        };
        hytun_core::Destination { host, port }
    }

    /// Parses a host: an IPv4 address, an IPv6 address (bare or in
    /// brackets), or a hostname of letters, digits, `-` and `_` labels
    /// (at most 253 bytes, labels 1..=63 bytes, optional trailing dot).
    /// Returns `None` for anything else, including names whose last label is
    /// numeric (`1.2.3`, `0x7f`), which resolvers would treat as IPv4.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']')?;
            return inner
                .parse::<Ipv6Addr>()
                .ok()
                .map(|ip| Self::Ip(IpAddr::V6(ip)));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Some(Self::Ip(ip));
        }
        is_valid_hostname(s).then(|| Self::Domain(s.to_string()))
    }

    /// Formats `host:port`, bracketing IPv6 addresses (`[::1]:80`).
    #[must_use]
    pub fn with_port(&self, port: u16) -> String {
        match self {
            Self::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            other => format!("{other}:{port}"),
        }
    }
}

impl fmt::Display for DestHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Domain(d) => f.write_str(d),
        }
    }
}

/// Whether `s` is an acceptable hostname (see [`DestHost::parse`]).
#[must_use]
pub fn is_valid_hostname(s: &str) -> bool {
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    labels_ok && !last_label_is_numeric(name)
}

/// True when the last label would make a resolver parse the name as IPv4.
fn last_label_is_numeric(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || last.bytes().all(|b| b.is_ascii_digit())
}

/// Splits `host:port` where an IPv6 host must be bracketed (`[::1]:80`).
/// The returned host keeps its brackets (feed it to [`DestHost::parse`]).
/// Returns `None` if there is no port separator or an IPv6 host is unbracketed.
#[must_use]
pub fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if s.starts_with('[') {
        let end = s.find(']')?;
        let port = s[end + 1..].strip_prefix(':')?;
        return Some((&s[..=end], port));
    }
    let (host, port) = s.rsplit_once(':')?;
    (!host.contains(':')).then_some((host, port))
}

/// Parses a decimal TCP port in 1..=65535 (digits only, no sign).
#[must_use]
pub fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// A parsed destination allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    host: HostPattern,
    port: Option<u16>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// Lowercased, without trailing dot.
    Exact(String),
    /// Matches strict subdomains of this lowercased base.
    Subdomains(String),
    /// Network address (host bits cleared) and prefix length.
    Net(IpAddr, u8),
}

impl AllowList {
    /// Parses allowlist patterns (see the module docs for the syntax).
    ///
    /// # Errors
    /// The first invalid pattern, named in the error with the reason.
    pub fn parse(patterns: &[String]) -> Result<Self, AllowError> {
        let rules = patterns
            .iter()
            .map(|p| parse_rule(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    /// True if some pattern allows every host on every port (`*` or `*:*`).
    /// Even then special addresses (see the module docs) need an IP/CIDR
    /// pattern.
    #[must_use]
    pub fn allows_all(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.host == HostPattern::Any && r.port.is_none())
    }

    /// True if the list holds no pattern (so nothing is allowed).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `host:port` is allowed before any name resolution: an IP
    /// destination by the IP rules (an IP/CIDR pattern containing it, or `*`
    /// if it is not special), a domain destination by a domain pattern or
    /// `*`. For domains prefer [`decide_name`](Self::decide_name), which also
    /// tells whether the resolved addresses could qualify.
    #[must_use]
    pub fn allows(&self, host: &DestHost, port: u16) -> bool {
        match host {
            DestHost::Ip(ip) => self.allows_ip(*ip, port),
            DestHost::Domain(name) => match name.parse::<IpAddr>() {
                Ok(ip) => self.allows_ip(ip, port),
                Err(_) => self.domain_rule_matches(name, port),
            },
        }
    }

    /// Decides, before any lookup, what the domain destination `name:port`
    /// may reach (see [`NameDecision`]). `name` is compared
    /// case-insensitively, one trailing dot ignored.
    ///
    /// - A name that is not a valid host name ([`is_valid_hostname`]: this
    ///   includes numeric forms such as `2130706433` or `127.1` that a
    ///   resolver would read as IPv4) is [`Refused`](NameDecision::Refused).
    /// - An IP literal written as a name (`127.0.0.1`) is judged as that
    ///   address: [`NeedsAddressCheck`](NameDecision::NeedsAddressCheck) if
    ///   the IP rules allow it (resolving a literal makes no DNS query, and
    ///   the check keeps just that address), else `Refused`.
    /// - A name matched on `port` by an exact pattern, a `*.suffix` pattern
    ///   or the any-host `*` is [`Allowed`](NameDecision::Allowed).
    ///   `*` (and `*:PORT`) thus admits every valid name, but like a domain
    ///   pattern it reaches no special address of it: those need an IP/CIDR
    ///   pattern, exactly as when the client names the address itself.
    /// - Otherwise, if some IP/CIDR pattern covers `port`, the name is
    ///   `NeedsAddressCheck`; if none does, it is `Refused`.
    #[must_use]
    pub fn decide_name(&self, name: &str, port: u16) -> NameDecision {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return if self.allows_ip(ip, port) {
                NameDecision::NeedsAddressCheck
            } else {
                NameDecision::Refused
            };
        }
        if !is_valid_hostname(name) {
            return NameDecision::Refused;
        }
        if self.domain_rule_matches(name, port) {
            return NameDecision::Allowed;
        }
        let ip_rule_for_port = self
            .rules
            .iter()
            .any(|r| matches!(r.host, HostPattern::Net(..)) && port_matches(r.port, port));
        if ip_rule_for_port {
            NameDecision::NeedsAddressCheck
        } else {
            NameDecision::Refused
        }
    }

    /// Whether a name decided as `decision` (by [`decide_name`](Self::decide_name)
    /// for the same `port`) may connect to its resolved address `addr`:
    ///
    /// - `Allowed`: any address that is not special, and a special one only
    ///   if an IP/CIDR pattern contains it for `port`;
    /// - `NeedsAddressCheck`: only addresses the IP rules allow (an IP/CIDR
    ///   pattern containing it; `*` for a non-special one);
    /// - `Refused`: none.
    #[must_use]
    pub fn connectable(&self, decision: NameDecision, addr: IpAddr, port: u16) -> bool {
        match decision {
            NameDecision::Allowed => {
                special_address_class(addr).is_none() || self.net_rule_allows(addr, port)
            }
            NameDecision::NeedsAddressCheck => self.allows_ip(addr, port),
            NameDecision::Refused => false,
        }
    }

    /// The addresses of `addrs` that [`connectable`](Self::connectable)
    /// admits for `decision` (each judged with its own port), in order.
    #[must_use]
    pub fn filter_resolved(
        &self,
        decision: NameDecision,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Vec<SocketAddr> {
        addrs
            .into_iter()
            .filter(|a| self.connectable(decision, a.ip(), a.port()))
            .collect()
    }

    /// Whether connecting to `resolved` for the request `host:port` is
    /// allowed. For an IP destination that is [`allows`](Self::allows) (the
    /// destination is judged on itself); for a domain it is
    /// [`connectable`](Self::connectable) under
    /// [`decide_name`](Self::decide_name), so a domain pattern never admits a
    /// special address that no IP/CIDR pattern allows.
    #[must_use]
    pub fn check_resolved(&self, host: &DestHost, port: u16, resolved: IpAddr) -> bool {
        match host {
            DestHost::Ip(_) => self.allows(host, port),
            DestHost::Domain(name) => {
                self.connectable(self.decide_name(name, port), resolved, port)
            }
        }
    }

    /// The IP rules: an IP/CIDR pattern containing `ip`, or the any-host
    /// `*` when `ip` is not special.
    fn allows_ip(&self, ip: IpAddr, port: u16) -> bool {
        self.net_rule_allows(ip, port)
            || (special_address_class(ip).is_none()
                && self
                    .rules
                    .iter()
                    .any(|r| r.host == HostPattern::Any && port_matches(r.port, port)))
    }

    /// Whether an IP/CIDR pattern for `port` contains `ip` (IPv4-mapped
    /// addresses are matched as IPv4).
    fn net_rule_allows(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        self.rules.iter().any(|r| {
            port_matches(r.port, port)
                && match &r.host {
                    HostPattern::Net(net, prefix) => in_network(ip, *net, *prefix),
                    HostPattern::Any | HostPattern::Exact(_) | HostPattern::Subdomains(_) => false,
                }
        })
    }

    /// Whether an exact, `*.suffix` or any-host pattern for `port` matches
    /// the name.
    fn domain_rule_matches(&self, name: &str, port: u16) -> bool {
        let name = normalize_domain(name);
        self.rules.iter().any(|r| {
            port_matches(r.port, port)
                && match &r.host {
                    HostPattern::Any => true,
                    HostPattern::Exact(d) => *d == name,
                    HostPattern::Subdomains(base) => name
                        .strip_suffix(base.as_str())
                        .is_some_and(|head| !head.is_empty()),
                    HostPattern::Net(..) => false,
                }
        })
    }
}

/// What a domain destination may reach, decided from the allowlist before
/// any lookup ([`AllowList::decide_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameDecision {
    /// A domain pattern (or `*`) allows the name itself: resolve it and
    /// connect to its addresses, minus special ones no IP/CIDR pattern
    /// allows.
    Allowed,
    /// No domain pattern matches, but an IP/CIDR pattern exists for the
    /// port: resolve it and keep only the addresses the IP rules allow.
    NeedsAddressCheck,
    /// No rule could admit the name: refuse it without a lookup.
    Refused,
}

impl NameDecision {
    /// Whether the name may be looked up at all.
    #[must_use]
    pub fn needs_lookup(self) -> bool {
        self != Self::Refused
    }

    /// Whether a failed lookup (no such name, DNS failure, timeout) may be
    /// reported to the client as such. Only for [`Allowed`](Self::Allowed):
    /// the operator listed that name. For any other decision the client
    /// named no allowed host, so whether the name exists is none of its
    /// business; the caller answers exactly as for a refused name.
    #[must_use]
    pub fn may_reveal_lookup_errors(self) -> bool {
        self == Self::Allowed
    }
}

/// The class of a special address (see the module docs), or `None` for an
/// ordinary one: `"loopback"`, `"link-local"`, `"cloud metadata"`,
/// `"unspecified"`, `"multicast"` or `"broadcast"`. IPv4-mapped
/// (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) IPv6 addresses are
/// classed as the IPv4 address they embed.
#[must_use]
pub fn special_address_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4_class(v4),
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                return Some("loopback");
            }
            if v6.is_unspecified() {
                return Some("unspecified");
            }
            if let Some(v4) = embedded_v4(v6) {
                return special_v4_class(v4);
            }
            let first = v6.segments()[0];
            if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xff00 == 0xff00 {
                Some("multicast")
            } else if v6 == AWS_METADATA_V6 {
                Some("cloud metadata")
            } else {
                None
            }
        }
    }
}

/// The AWS instance metadata service's IPv6 address.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

fn special_v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("cloud metadata")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.octets()[0] == 0 {
        // 0.0.0.0/8 "this network": Linux connects 0.0.0.0 to the host itself.
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else {
        None
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`) or
/// IPv4-compatible (`::a.b.c.d`, high 96 bits zero) IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    u32::try_from(u128::from(ip)).ok().map(Ipv4Addr::from)
}

impl fmt::Display for AllowList {
    /// Lists the patterns as given, comma-separated (`(nothing)` if empty).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rules.is_empty() {
            return f.write_str("(nothing)");
        }
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&r.text)?;
        }
        Ok(())
    }
}

fn port_matches(pattern: Option<u16>, port: u16) -> bool {
    pattern.is_none_or(|p| p == port)
}

fn normalize_domain(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => mask_v4(a, prefix) == n,
        (IpAddr::V6(a), IpAddr::V6(n)) => mask_v6(a, prefix) == n,
        _ => false,
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0);
    Ipv6Addr::from(bits & mask)
}

fn parse_rule(raw: &str) -> Result<Rule, AllowError> {
    let pattern = raw.trim();
    let err = |make: MakeError| make(raw.to_string());
    if pattern == "*" {
        return Ok(Rule {
            host: HostPattern::Any,
            port: None,
            text: pattern.to_string(),
        });
    }
    let (host, port) = if let Some(rest) = pattern.strip_prefix('[') {
        let end = rest.find(']').ok_or(err(AllowError::UnclosedBracket))?;
        let addr = rest[..end]
            .parse::<Ipv6Addr>()
            .map_err(|_| err(AllowError::BadIpv6))?;
        let after = &rest[end + 1..];
        let (prefix, port) = match after.strip_prefix('/') {
            Some(p) => p.split_once(':').ok_or(err(AllowError::MissingPort))?,
            None => (
                "128",
                after
                    .strip_prefix(':')
                    .ok_or(err(AllowError::MissingPort))?,
            ),
        };
        let prefix = parse_prefix(prefix, 128).ok_or(err(AllowError::BadPrefix))?;
        (
            HostPattern::Net(IpAddr::V6(mask_v6(addr, prefix)), prefix),
            port,
        )
    } else {
        let (host, port) = pattern
            .rsplit_once(':')
            .ok_or(err(AllowError::MissingPort))?;
        if host.contains(':') {
            return Err(err(AllowError::UnbracketedIpv6));
        }
        (parse_host_pattern(host).map_err(err)?, port)
    };
    let port = match port {
        "*" => None,
        p => Some(parse_port(p).ok_or(err(AllowError::BadPort))?),
    };
    Ok(Rule {
        host,
        port,
        text: pattern.to_string(),
    })
}

/// Builds an [`AllowError`] from the offending pattern.
type MakeError = fn(String) -> AllowError;

fn parse_host_pattern(host: &str) -> Result<HostPattern, MakeError> {
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some((addr, prefix)) = host.split_once('/') {
        let addr = addr
            .parse::<Ipv4Addr>()
            .map_err(|_| AllowError::BadIpv4 as MakeError)?;
        let prefix = parse_prefix(prefix, 32).ok_or(AllowError::BadPrefix as MakeError)?;
        return Ok(HostPattern::Net(IpAddr::V4(mask_v4(addr, prefix)), prefix));
    }
    if let Ok(addr) = host.parse::<Ipv4Addr>() {
        return Ok(HostPattern::Net(IpAddr::V4(addr), 32));
    }
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(base) => (true, base),
        None => (false, host),
    };
    if name.contains('*') {
        return Err(AllowError::MisplacedWildcard);
    }
    if !is_valid_hostname(name) {
        return Err(AllowError::BadDomain);
    }
    let name = normalize_domain(name);
    Ok(if wildcard {
        HostPattern::Subdomains(format!(".{name}"))
    } else {
        HostPattern::Exact(name)
    })
}

fn parse_prefix(s: &str, max: u8) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u8>().ok().filter(|&p| p <= max)
}

/// An invalid allowlist pattern; each variant holds the pattern as given.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllowError {
    /// No `:PORT` part.
    MissingPort(String),
    /// The port is not `*` or a number in 1..=65535.
    BadPort(String),
    /// An IPv6 address without brackets.
    UnbracketedIpv6(String),
    /// `[` without `]`.
    UnclosedBracket(String),
    /// The bracketed text is not an IPv6 address.
    BadIpv6(String),
    /// The address before `/` is not an IPv4 address.
    BadIpv4(String),
    /// The CIDR prefix length is not a number within the address size.
    BadPrefix(String),
    /// `*` used other than as the whole host or a leading `*.` label.
    MisplacedWildcard(String),
    /// The host is not a valid domain name.
    BadDomain(String),
}

impl AllowError {
    /// The offending pattern.
    #[must_use]
    pub fn pattern(&self) -> &str {
        match self {
            Self::MissingPort(p)
            | Self::BadPort(p)
            | Self::UnbracketedIpv6(p)
            | Self::UnclosedBracket(p)
            | Self::BadIpv6(p)
            | Self::BadIpv4(p)
            | Self::BadPrefix(p)
            | Self::MisplacedWildcard(p)
            | Self::BadDomain(p) => p,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::MissingPort(_) => "missing ':PORT' (write HOST:* to allow any port)",
            Self::BadPort(_) => "the port must be '*' or a number from 1 to 65535",
            Self::UnbracketedIpv6(_) => "IPv6 addresses must be in brackets, e.g. [::1]:80",
            Self::UnclosedBracket(_) => "'[' without a matching ']'",
            Self::BadIpv6(_) => "the text in brackets is not an IPv6 address",
            Self::BadIpv4(_) => "the address before '/' is not an IPv4 address",
            Self::BadPrefix(_) => "the prefix length must be 0-32 for IPv4 or 0-128 for IPv6",
            Self::MisplacedWildcard(_) => {
                "'*' may only be the whole host or a leading '*.' (as in *.example.com)"
            }
            Self::BadDomain(_) => "not a valid host name, IPv4 address or CIDR",
        }
    }
}

impl fmt::Display for AllowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid allow pattern '{}': {}",
            self.pattern(),
            self.reason()
        )
    }
}

impl std::error::Error for AllowError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> AllowList {
        let owned: Vec<String> = patterns.iter().map(|s| (*s).to_string()).collect();
        match AllowList::parse(&owned) {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        }
    }

    fn ip(s: &str) -> DestHost {
        match s.parse() {
            Ok(a) => DestHost::Ip(a),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn dom(s: &str) -> DestHost {
        DestHost::Domain(s.to_string())
    }

    /// Asserts that `pattern` is rejected with the error `make` builds.
    fn rejects(pattern: &str, make: fn(String) -> AllowError) {
        match AllowList::parse(&[pattern.to_string()]) {
            Err(e) => {
                assert_eq!(e, make(pattern.to_string()));
                assert_eq!(e.pattern(), pattern);
                let shown = e.to_string();
                assert!(shown.starts_with(&format!("invalid allow pattern '{pattern}': ")));
            }
            Ok(_) => panic!("{pattern} should be rejected"),
        }
    }

    #[test]
    fn empty_list_allows_nothing() {
        let l = list(&[]);
        assert!(l.is_empty());
        assert!(!l.allows(&ip("127.0.0.1"), 80));
        assert!(!l.allows(&dom("example.com"), 80));
        assert!(!l.check_resolved(&dom("example.com"), 80, "127.0.0.1".parse().unwrap()));
        assert_eq!(l.to_string(), "(nothing)");
    }

    #[test]
    fn star_allows_everything() {
        for p in ["*", "*:*"] {
            let l = list(&[p]);
            assert!(l.allows_all());
            assert!(l.allows(&ip("10.1.2.3"), 1));
            assert!(l.allows(&dom("anything.test"), 65535));
        }
        let l = list(&["*:443"]);
        assert!(!l.allows_all());
        assert!(l.allows(&dom("x.test"), 443));
        assert!(!l.allows(&dom("x.test"), 80));
    }

    #[test]
    fn exact_host_and_port() {
        let l = list(&["example.com:443", "127.0.0.1:80", "[::1]:8080"]);
        assert!(l.allows(&dom("example.com"), 443));
        assert!(l.allows(&dom("EXAMPLE.Com."), 443));
        assert!(!l.allows(&dom("example.com"), 80));
        assert!(!l.allows(&dom("www.example.com"), 443));
        assert!(l.allows(&ip("127.0.0.1"), 80));
        assert!(!l.allows(&ip("127.0.0.2"), 80));
        assert!(l.allows(&ip("::1"), 8080));
        assert!(!l.allows(&ip("::1"), 80));
        // A domain string holding an IP literal is treated as that IP.
        assert!(l.allows(&dom("127.0.0.1"), 80));
        assert!(!l.allows(&ip("127.0.0.1"), 443));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let l = list(&["*.example.com:443"]);
        assert!(l.allows(&dom("a.example.com"), 443));
        assert!(l.allows(&dom("a.b.c.Example.COM."), 443));
        assert!(!l.allows(&dom("example.com"), 443));
        assert!(!l.allows(&dom("badexample.com"), 443));
        assert!(!l.allows(&dom("a.example.com.evil"), 443));
        assert!(!l.allows(&dom("a.example.com"), 80));
    }

    #[test]
    fn cidr_patterns() {
        let l = list(&[
            "127.0.0.0/8:*",
            "[fd00::]/8:22",
            "[::1]/128:8080",
            "10.1.2.3/8:5",
        ]);
        assert!(l.allows(&ip("127.255.0.1"), 1));
        assert!(!l.allows(&ip("128.0.0.1"), 1));
        assert!(l.allows(&ip("fd12::1"), 22));
        assert!(!l.allows(&ip("fe80::1"), 22));
        assert!(l.allows(&ip("::1"), 8080));
        assert!(l.allows(&ip("10.200.0.1"), 5), "host bits are masked");
        // IPv4-mapped IPv6 is matched as IPv4.
        assert!(l.allows(&ip("::ffff:127.0.0.1"), 9));
        // A /0 allows the whole family only.
        let all_v4 = list(&["0.0.0.0/0:80"]);
        assert!(all_v4.allows(&ip("8.8.8.8"), 80));
        assert!(!all_v4.allows(&ip("2001:db8::1"), 80));
    }

    #[test]
    fn resolved_address_can_satisfy_ip_patterns() {
        let l = list(&["10.0.0.0/8:*", "example.com:80"]);
        let internal: IpAddr = "10.1.1.1".parse().unwrap();
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        assert!(!l.allows(&dom("intranet.local"), 443));
        assert!(l.check_resolved(&dom("intranet.local"), 443, internal));
        assert!(!l.check_resolved(&dom("intranet.local"), 443, public));
        // A matching domain pattern allows whatever the name resolves to.
        assert!(l.check_resolved(&dom("example.com"), 80, public));
        // An IP destination is judged on itself, not on a "resolved" address.
        assert!(!l.check_resolved(&ip("192.168.1.1"), 80, internal));
    }

    fn addr(s: &str) -> IpAddr {
        match s.parse() {
            Ok(a) => a,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn decide_name_refuses_without_lookup_when_no_rule_can_match() {
        let l = list(&["example.com:443", "*.corp.test:*", "10.0.0.0/8:22"]);
        assert_eq!(l.decide_name("example.com", 443), NameDecision::Allowed);
        assert_eq!(l.decide_name("EXAMPLE.com.", 443), NameDecision::Allowed);
        assert_eq!(l.decide_name("a.b.Corp.Test", 9), NameDecision::Allowed);
        // Wrong port for the domain rule, and no IP rule on that port.
        assert_eq!(l.decide_name("example.com", 80), NameDecision::Refused);
        assert_eq!(l.decide_name("corp.test", 80), NameDecision::Refused);
        assert_eq!(l.decide_name("unknown.test", 80), NameDecision::Refused);
        // No domain rule, but 10/8 covers port 22: resolve and check.
        assert_eq!(
            l.decide_name("unknown.test", 22),
            NameDecision::NeedsAddressCheck
        );
        assert!(NameDecision::NeedsAddressCheck.needs_lookup());
        assert!(!NameDecision::Refused.needs_lookup());
        assert!(NameDecision::Allowed.may_reveal_lookup_errors());
        assert!(!NameDecision::NeedsAddressCheck.may_reveal_lookup_errors());
        assert!(!NameDecision::Refused.may_reveal_lookup_errors());
        // The empty list refuses every name.
        assert_eq!(
            list(&[]).decide_name("example.com", 443),
            NameDecision::Refused
        );
    }

    #[test]
    fn decide_name_refuses_invalid_and_numeric_names() {
        let l = list(&["*", "10.0.0.0/8:*"]);
        for bad in [
            "",
            "a..b",
            "-a.b",
            "2130706433",
            "127.1",
            "a.0x7f",
            "a b.c",
            ".",
        ] {
            assert_eq!(l.decide_name(bad, 80), NameDecision::Refused, "{bad:?}");
        }
        // An IP literal in name form is judged as that address.
        assert_eq!(
            l.decide_name("10.1.2.3", 80),
            NameDecision::NeedsAddressCheck
        );
        assert_eq!(
            l.decide_name("8.8.8.8", 80),
            NameDecision::NeedsAddressCheck
        );
        assert_eq!(l.decide_name("127.0.0.1", 80), NameDecision::Refused);
        let only_dom = list(&["example.com:*"]);
        assert_eq!(only_dom.decide_name("10.1.2.3", 80), NameDecision::Refused);
    }

    #[test]
    fn star_admits_every_valid_name_but_no_special_address() {
        let l = list(&["*"]);
        assert_eq!(l.decide_name("anything.test", 1), NameDecision::Allowed);
        assert!(l.connectable(NameDecision::Allowed, addr("93.184.216.34"), 1));
        assert!(l.connectable(NameDecision::Allowed, addr("10.0.0.1"), 1));
        for special in [
            "127.0.0.1",
            "169.254.169.254",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(
                !l.connectable(NameDecision::Allowed, addr(special), 1),
                "{special}"
            );
            // The same address named directly is refused as well.
            assert!(!l.allows(&ip(special), 1), "{special}");
        }
        let port_only = list(&["*:443"]);
        assert_eq!(port_only.decide_name("x.test", 443), NameDecision::Allowed);
        assert_eq!(port_only.decide_name("x.test", 80), NameDecision::Refused);
        // An explicit IP rule next to `*` opens its special addresses.
        let with_lo = list(&["*", "127.0.0.1:8080"]);
        assert!(with_lo.allows(&ip("127.0.0.1"), 8080));
        assert!(!with_lo.allows(&ip("127.0.0.1"), 8081));
        assert!(with_lo.connectable(NameDecision::Allowed, addr("127.0.0.1"), 8080));
    }

    #[test]
    fn domain_pattern_never_reaches_special_addresses() {
        let l = list(&["*.example.com:*"]);
        let d = l.decide_name("evil.example.com", 80);
        assert_eq!(d, NameDecision::Allowed);
        assert!(l.connectable(d, addr("93.184.216.34"), 80));
        assert!(l.connectable(d, addr("2001:db8::1"), 80));
        for special in [
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "fd00:ec2::254",
            // IPv4-mapped and IPv4-compatible forms of special IPv4.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.1",
            "::ffff:255.255.255.255",
            "::127.0.0.1",
            "::169.254.169.254",
        ] {
            assert!(!l.connectable(d, addr(special), 80), "{special}");
            assert!(!l.check_resolved(&dom("evil.example.com"), 80, addr(special)));
        }
        // Mapped ordinary addresses stay ordinary.
        assert!(l.connectable(d, addr("::ffff:93.184.216.34"), 80));
        assert!(!l.connectable(NameDecision::Refused, addr("93.184.216.34"), 80));
    }

    #[test]
    fn ip_rule_opens_a_special_address_for_domain_names() {
        let l = list(&["localhost:*", "127.0.0.1:8080", "[::1]/128:9000"]);
        let d = l.decide_name("localhost", 8080);
        assert_eq!(d, NameDecision::Allowed);
        assert!(l.connectable(d, addr("127.0.0.1"), 8080));
        assert!(
            l.connectable(d, addr("::ffff:127.0.0.1"), 8080),
            "mapped = IPv4"
        );
        assert!(
            !l.connectable(d, addr("127.0.0.1"), 8081),
            "rule is for 8080"
        );
        assert!(!l.connectable(d, addr("::1"), 8080));
        assert!(l.connectable(l.decide_name("localhost", 9000), addr("::1"), 9000));
        // The compatible form is not the IPv4 address for the rules: refused.
        assert!(!l.connectable(d, addr("::127.0.0.1"), 8080));
        let v4 = "127.0.0.1:8080".parse::<SocketAddr>().unwrap();
        let v6 = "[::1]:8080".parse::<SocketAddr>().unwrap();
        let public = "93.184.216.34:8080".parse::<SocketAddr>().unwrap();
        assert_eq!(l.filter_resolved(d, [v6, v4, public]), vec![v4, public]);
    }

    #[test]
    fn address_check_keeps_only_ip_rule_matches() {
        let l = list(&["10.0.0.0/8:*", "[fd00::]/8:*"]);
        let d = l.decide_name("intranet.test", 443);
        assert_eq!(d, NameDecision::NeedsAddressCheck);
        assert!(l.connectable(d, addr("10.1.1.1"), 443));
        assert!(l.connectable(d, addr("::ffff:10.1.1.1"), 443));
        assert!(l.connectable(d, addr("fd12::1"), 443));
        assert!(!l.connectable(d, addr("93.184.216.34"), 443));
        assert!(!l.connectable(d, addr("127.0.0.1"), 443));
        assert!(!l.connectable(d, addr("::ffff:127.0.0.1"), 443));
        assert!(
            l.filter_resolved(d, ["[::1]:443".parse().unwrap()])
                .is_empty()
        );
    }

    #[test]
    fn special_address_classes() {
        let class = |s: &str| special_address_class(addr(s));
        assert_eq!(class("127.0.0.1"), Some("loopback"));
        assert_eq!(class("::1"), Some("loopback"));
        assert_eq!(class("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(class("::127.0.0.1"), Some("loopback"));
        assert_eq!(class("169.254.169.254"), Some("cloud metadata"));
        assert_eq!(class("::ffff:169.254.169.254"), Some("cloud metadata"));
        assert_eq!(class("fd00:ec2::254"), Some("cloud metadata"));
        assert_eq!(class("169.254.0.1"), Some("link-local"));
        assert_eq!(class("fe80::1"), Some("link-local"));
        assert_eq!(class("0.0.0.0"), Some("unspecified"));
        assert_eq!(class("::"), Some("unspecified"));
        assert_eq!(class("::ffff:0.0.0.0"), Some("unspecified"));
        assert_eq!(class("224.0.0.1"), Some("multicast"));
        assert_eq!(class("ff02::1"), Some("multicast"));
        assert_eq!(class("255.255.255.255"), Some("broadcast"));
        for ordinary in [
            "8.8.8.8",
            "10.0.0.1",
            "fd00::1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(class(ordinary), None, "{ordinary}");
        }
    }

    #[test]
    fn invalid_patterns_name_the_reason() {
        rejects("example.com", AllowError::MissingPort);
        rejects("example.com:0", AllowError::BadPort);
        rejects("example.com:65536", AllowError::BadPort);
        rejects("example.com:+80", AllowError::BadPort);
        rejects("::1:80", AllowError::UnbracketedIpv6);
        rejects("[::1:80", AllowError::UnclosedBracket);
        rejects("[example.com]:80", AllowError::BadIpv6);
        rejects("[::1]", AllowError::MissingPort);
        rejects("[::1]/129:80", AllowError::BadPrefix);
        rejects("10.0.0.0/33:80", AllowError::BadPrefix);
        rejects("10.0.0/8:80", AllowError::BadIpv4);
        rejects("a.*.com:80", AllowError::MisplacedWildcard);
        rejects("*example.com:80", AllowError::MisplacedWildcard);
        rejects("exa mple.com:80", AllowError::BadDomain);
        rejects("300.1.1.1:80", AllowError::BadDomain);
        rejects(":80", AllowError::BadDomain);
    }

    #[test]
    fn dest_host_parsing_and_formatting() {
        assert_eq!(DestHost::parse("[::1]"), Some(ip("::1")));
        assert_eq!(DestHost::parse("::1"), Some(ip("::1")));
        assert_eq!(DestHost::parse("1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(
            DestHost::parse("my_host.example."),
            Some(dom("my_host.example."))
        );
        assert_eq!(DestHost::parse("[example.com]"), None);
        assert_eq!(DestHost::parse(""), None);
        assert_eq!(DestHost::parse("a..b"), None);
        assert_eq!(DestHost::parse("-a.b"), None);
        assert_eq!(DestHost::parse("2130706433"), None);
        assert_eq!(DestHost::parse("a.0x7f"), None);
        assert_eq!(DestHost::parse("héllo.com"), None);
        assert_eq!(DestHost::parse(&"a".repeat(64)), None);
        assert_eq!(ip("::1").with_port(80), "[::1]:80");
        assert_eq!(dom("a.b").with_port(443), "a.b:443");
        assert_eq!(ip("10.0.0.1").with_port(1), "10.0.0.1:1");
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(split_host_port("a.b:80"), Some(("a.b", "80")));
        assert_eq!(split_host_port("[::1]:80"), Some(("[::1]", "80")));
        assert_eq!(split_host_port("::1:80"), None);
        assert_eq!(split_host_port("[::1]80"), None);
        assert_eq!(split_host_port("a.b"), None);
        assert_eq!(parse_port("65535"), Some(65535));
        assert_eq!(parse_port("0"), None);
        assert_eq!(parse_port("080"), Some(80));
        assert_eq!(parse_port("-1"), None);
    }

    #[test]
    fn display_lists_patterns() {
        assert_eq!(list(&["a.b:1", " *:2 "]).to_string(), "a.b:1, *:2");
    }
}
