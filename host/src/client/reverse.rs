//! Reverse forwards (`-R [BIND:]PORT:HOST:PORT`): on every new session the
//! client asks the server to listen on each BIND:PORT (LISTEN), remembers
//! which listener id the server granted for which forward, and connects
//! each stream the server opens for a granted listener (INCOMING) to that
//! forward's HOST:PORT — a target fixed by the client's own command line,
//! whatever the server sends. The stream is accepted (OPEN_OK) only once
//! the target connection is up, and refused with the connect error
//! otherwise. A refused listener ends the client at first contact
//! (retrying cannot fix a port that is taken or not permitted); on a later
//! session it closes that session so the next one asks again.
//!
//! Two halves: [`ReverseListeners`], the listener bookkeeping the tunnel
//! session owns (it is per session), and the target connections, which are
//! local connections and so are carried out on the table of
//! [`Locals`](super::locals::Locals).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use hytun_core::{
    Destination, Host, HostConnection, ListenErrorCode, ListenId, StreamErrorCode, StreamId,
};
use log::{debug, error, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::local::{End, Local, TargetConnect};
use super::locals::Locals;
use super::tunnel::TunnelSession;
use crate::allow::DestHost;
use crate::config::ReverseSpec;
use crate::server::error_code;

/// How long connecting to a reverse forward's target may take.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The reverse forwards and the listeners the current session asked for.
#[derive(Debug, Default)]
pub(super) struct ReverseListeners {
    /// The forwards (`-R`), from the options.
    specs: Vec<ReverseSpec>,
    /// Listener id → index into `specs`.
    requested: HashMap<ListenId, usize>,
    granted: HashMap<ListenId, usize>,
    /// Sessions that asked for listeners so far (1 = first contact).
    sessions: u32,
}

/// What a refused listener means for the session.
pub(super) enum ListenRefusal {
    /// At first contact: the client stops with this message.
    Fatal(String),
    /// On a later session: close it, so the next one asks again.
    Reconnect,
}

fn bind_destination(addr: SocketAddr) -> Destination<'static> {
    let host = match addr.ip() {
        IpAddr::V4(a) => Host::Ipv4(a.octets()),
        IpAddr::V6(a) => Host::Ipv6(a.octets()),
    };
    Destination {
        host,
        port: addr.port(),
    }
}

fn describe(spec: &ReverseSpec) -> String {
    format!("{} -> {}", spec.bind, spec.host.with_port(spec.port))
}

/// The target's first address (names resolved by the system resolver).
fn resolve(host: &DestHost, port: u16) -> io::Result<SocketAddr> {
    match host {
        DestHost::Ip(ip) => Ok(SocketAddr::new(*ip, port)),
        DestHost::Domain(name) => (name.as_str(), port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name has no address")),
    }
}

impl ReverseListeners {
    /// The forwards to ask for on every session.
    pub(super) fn new(specs: Vec<ReverseSpec>) -> Self {
        ReverseListeners {
            specs,
            ..ReverseListeners::default()
        }
    }

    /// A session is up: forgets the last session's listeners and asks the
    /// server on `conn` for every reverse forward.
    pub(super) fn request_all(&mut self, conn: &mut HostConnection) {
        if !self.new_session() {
            return;
        }
        for (i, spec) in self.specs.iter().enumerate() {
            match conn.request_listen(bind_destination(spec.bind)) {
                Ok(id) => {
                    debug!("asking the server to listen: {}", describe(spec));
                    self.requested.insert(id, i);
                }
                Err(e) => warn!("cannot ask for reverse forward {}: {e}", describe(spec)),
            }
        }
    }

    /// Forgets the last session's listeners; false when there are no
    /// forwards to ask for (and so no session counted).
    fn new_session(&mut self) -> bool {
        self.requested.clear();
        self.granted.clear();
        if self.specs.is_empty() {
            return false;
        }
        self.sessions += 1;
        true
    }

    pub(super) fn on_granted(&mut self, id: ListenId) {
        let Some(i) = self.requested.remove(&id) else {
            return;
        };
        self.granted.insert(id, i);
        if let Some(spec) = self.specs.get(i) {
            info!("reverse forward up: server listens on {}", describe(spec));
        }
    }

    /// The server refused listener `id`; `None` for an id we did not ask
    /// for in this session.
    pub(super) fn on_refused(
        &mut self,
        id: ListenId,
        code: ListenErrorCode,
    ) -> Option<ListenRefusal> {
        let i = self.requested.remove(&id)?;
        let spec = self.specs.get(i)?;
        let msg = format!("server refused reverse forward {}: {code}", describe(spec));
        if self.sessions <= 1 {
            // First contact: a taken or forbidden port stays so; say why
            // and stop instead of retrying forever.
            error!("{msg}");
            return Some(ListenRefusal::Fatal(msg));
        }
        // A later session (e.g. the server has not yet noticed that our
        // previous session died and still holds the port): start over.
        warn!("{msg}; reconnecting to ask again");
        Some(ListenRefusal::Reconnect)
    }

    /// The forward whose granted listener is `listen`.
    pub(super) fn target(&self, listen: ListenId) -> Option<&ReverseSpec> {
        self.granted.get(&listen).and_then(|&i| self.specs.get(i))
    }
}

impl Locals {
    /// The server opened stream `id` for a connection accepted on the
    /// listener of `spec`: connect it to that forward's target.
    pub(super) fn connect_target(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        id: StreamId,
        spec: &ReverseSpec,
        origin: &str,
    ) {
        let target = spec.host.with_port(spec.port);
        let sock = resolve(&spec.host, spec.port).and_then(TcpStream::connect);
        let mut sock = match sock {
            Ok(s) => s,
            Err(e) => {
                info!("{origin}: reverse stream {id} to {target} failed: {e}");
                tunnel.refuse_incoming(id, error_code(&e));
                return;
            }
        };
        let t = self.next_token();
        if let Err(e) = registry.register(&mut sock, t, Interest::READABLE | Interest::WRITABLE) {
            warn!("{origin}: cannot register the target socket: {e}");
            tunnel.refuse_incoming(id, StreamErrorCode::Other);
            return;
        }
        info!(
            "{origin}: reverse stream {id} via {} to {target}",
            spec.bind
        );
        let peer = sock.peer_addr().unwrap_or(spec.bind);
        self.insert(t, Local::target(sock, peer, id, TARGET_CONNECT_TIMEOUT));
        tunnel.bind_stream(id, t);
    }

    /// Readiness on a target socket that is still connecting: accept the
    /// stream once connected, refuse it with the connect error otherwise.
    pub(super) fn finish_target_connect(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        t: Token,
    ) {
        let Some(l) = self.get_mut(t) else {
            return;
        };
        match l.finish_connect() {
            TargetConnect::Pending => {}
            TargetConnect::Failed(id, e) => self.fail_target(
                registry,
                tunnel,
                t,
                id,
                error_code(&e),
                &format!("connect failed: {e}"),
            ),
            TargetConnect::Connected(id) => {
                if let Some(conn) = tunnel.conn_mut()
                    && conn.accept_stream(id).is_err()
                {
                    // The server reset the stream meanwhile.
                    self.end(
                        registry,
                        tunnel,
                        t,
                        End::Abort("stream gone before the target connected".into()),
                    );
                    return;
                }
                self.touch(t);
            }
        }
    }

    /// A target connection that never came up: the stream is refused (the
    /// server resets the accepted connection) and the socket dropped.
    pub(super) fn fail_target(
        &mut self,
        registry: &Registry,
        tunnel: &mut TunnelSession,
        t: Token,
        id: StreamId,
        code: StreamErrorCode,
        why: &str,
    ) {
        if let Some(l) = self.remove(t) {
            info!("{}: reverse stream {id} refused: {why}", l.peer());
            l.discard(registry);
        }
        tunnel.forget_stream(id);
        tunnel.refuse_incoming(id, code);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn forwards() -> ReverseListeners {
        ReverseListeners::new(vec![ReverseSpec {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            host: DestHost::Ip(Ipv4Addr::LOCALHOST.into()),
            port: 80,
        }])
    }

    /// As `request_all` leaves a new session once LISTEN `id` is sent.
    fn asked(l: &mut ReverseListeners, id: ListenId) {
        assert!(l.new_session());
        l.requested.insert(id, 0);
    }

    #[test]
    fn a_refused_listener_stops_the_client_at_first_contact_and_reconnects_later() {
        let mut l = forwards();
        asked(&mut l, ListenId(1));
        let Some(ListenRefusal::Fatal(msg)) =
            l.on_refused(ListenId(1), ListenErrorCode::AddressInUse)
        else {
            panic!("first contact is final");
        };
        assert_eq!(
            msg,
            "server refused reverse forward 127.0.0.1:8080 -> 127.0.0.1:80: address already in use on the server"
        );
        // An answer to a listener this session did not ask for is ignored.
        assert!(l.on_refused(ListenId(1), ListenErrorCode::Other).is_none());

        asked(&mut l, ListenId(2));
        assert!(matches!(
            l.on_refused(ListenId(2), ListenErrorCode::AddressInUse),
            Some(ListenRefusal::Reconnect)
        ));
    }

    #[test]
    fn without_forwards_no_session_is_counted() {
        let mut l = ReverseListeners::new(Vec::new());
        assert!(!l.new_session());
        assert_eq!(l.sessions, 0);
    }

    #[test]
    fn only_a_granted_listener_has_a_target() {
        let mut l = forwards();
        asked(&mut l, ListenId(1));
        assert!(l.target(ListenId(1)).is_none(), "asked, not granted");
        l.on_granted(ListenId(7));
        assert!(l.target(ListenId(7)).is_none(), "never asked for");
        l.on_granted(ListenId(1));
        assert_eq!(l.target(ListenId(1)).map(|s| s.port), Some(80));
        // Granted listeners do not outlive their session.
        asked(&mut l, ListenId(1));
        assert!(l.target(ListenId(1)).is_none());
    }
}
