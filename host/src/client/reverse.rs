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

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant as StdInstant};

use hytun_core::{
    CloseCode, Destination, Host, ListenErrorCode, ListenId, StreamErrorCode, StreamId,
};
use log::{debug, error, info, warn};
use mio::Interest;
use mio::net::TcpStream;

use super::{Client, ClientError, End, Local, Phase, Proto, Tunnel};
use crate::allow::DestHost;
use crate::config::ReverseSpec;
use crate::pipe::Pipe;
use crate::server::error_code;

/// How long connecting to a reverse forward's target may take.
pub(super) const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The listeners of the current session.
#[derive(Debug, Default)]
pub(super) struct ReverseState {
    /// Listener id → index into the options' reverse forwards.
    requested: HashMap<ListenId, usize>,
    granted: HashMap<ListenId, usize>,
    /// Sessions that asked for listeners so far (1 = first contact).
    sessions: u32,
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

impl Client {
    /// A session is up: asks the server for every reverse forward.
    pub(super) fn request_listeners(&mut self) {
        self.reverse.requested.clear();
        self.reverse.granted.clear();
        if self.opts.reverse.is_empty() {
            return;
        }
        self.reverse.sessions += 1;
        let Tunnel::Up { conn, .. } = &mut self.tunnel else {
            return;
        };
        for (i, spec) in self.opts.reverse.iter().enumerate() {
            match conn.request_listen(bind_destination(spec.bind)) {
                Ok(id) => {
                    debug!("asking the server to listen: {}", describe(spec));
                    self.reverse.requested.insert(id, i);
                }
                Err(e) => warn!("cannot ask for reverse forward {}: {e}", describe(spec)),
            }
        }
    }

    pub(super) fn on_listen_granted(&mut self, id: ListenId) {
        let Some(i) = self.reverse.requested.remove(&id) else {
            return;
        };
        self.reverse.granted.insert(id, i);
        if let Some(spec) = self.opts.reverse.get(i) {
            info!("reverse forward up: server listens on {}", describe(spec));
        }
    }

    pub(super) fn on_listen_refused(&mut self, id: ListenId, code: ListenErrorCode) {
        let Some(i) = self.reverse.requested.remove(&id) else {
            return;
        };
        let Some(spec) = self.opts.reverse.get(i) else {
            return;
        };
        let msg = format!("server refused reverse forward {}: {code}", describe(spec));
        if self.reverse.sessions <= 1 {
            // First contact: a taken or forbidden port stays so; say why
            // and stop instead of retrying forever.
            error!("{msg}");
            if self.fatal.is_none() {
                self.fatal = Some(ClientError::ReverseRefused(msg));
            }
            return;
        }
        // A later session (e.g. the server has not yet noticed that our
        // previous session died and still holds the port): start over.
        warn!("{msg}; reconnecting to ask again");
        if let Tunnel::Up { conn, .. } = &mut self.tunnel {
            conn.close(CloseCode::Normal);
        }
    }

    /// The server opened stream `id` for a connection accepted on listener
    /// `listen`: connect it to that forward's target.
    pub(super) fn on_incoming(&mut self, id: StreamId, listen: ListenId, origin: String) {
        let spec = self
            .reverse
            .granted
            .get(&listen)
            .and_then(|&i| self.opts.reverse.get(i))
            .cloned();
        let Some(spec) = spec else {
            // The core only reports streams for granted listeners.
            self.refuse_incoming(id, StreamErrorCode::Other);
            return;
        };
        let target = spec.host.with_port(spec.port);
        let sock = resolve(&spec.host, spec.port).and_then(TcpStream::connect);
        let mut sock = match sock {
            Ok(s) => s,
            Err(e) => {
                info!("{origin}: reverse stream {id} to {target} failed: {e}");
                self.refuse_incoming(id, error_code(&e));
                return;
            }
        };
        let t = self.token();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, t, Interest::READABLE | Interest::WRITABLE)
        {
            warn!("{origin}: cannot register the target socket: {e}");
            self.refuse_incoming(id, StreamErrorCode::Other);
            return;
        }
        info!(
            "{origin}: reverse stream {id} via {} to {target}",
            spec.bind
        );
        let peer = sock.peer_addr().unwrap_or(spec.bind);
        self.locals.insert(
            t,
            Local {
                peer,
                pipe: Pipe::new(Some(sock)),
                proto: Proto::Forward,
                phase: Phase::Connecting(id),
                deadline: Some(StdInstant::now() + TARGET_CONNECT_TIMEOUT),
            },
        );
        self.streams.insert(id, t);
    }

    fn refuse_incoming(&mut self, id: StreamId, code: StreamErrorCode) {
        if let Tunnel::Up { conn, .. } = &mut self.tunnel {
            let _ = conn.refuse_stream(id, code);
        }
    }

    /// Readiness on a target socket that is still connecting: accept the
    /// stream once connected, refuse it with the connect error otherwise.
    pub(super) fn finish_target_connect(&mut self, t: mio::Token) {
        let Some(l) = self.locals.get_mut(&t) else {
            return;
        };
        let Phase::Connecting(id) = l.phase else {
            return;
        };
        let Some(sock) = l.pipe.sock.as_ref() else {
            return;
        };
        let failure = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match sock.peer_addr() {
                Ok(addr) => {
                    l.peer = addr;
                    None
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failure {
            self.fail_target(t, id, error_code(&e), &format!("connect failed: {e}"));
            return;
        }
        let _ = sock.set_nodelay(true);
        l.phase = Phase::Streaming(id);
        l.deadline = None;
        debug!("{}: reverse stream {id} connected", l.peer);
        if let Tunnel::Up { conn, .. } = &mut self.tunnel
            && conn.accept_stream(id).is_err()
        {
            // The server reset the stream meanwhile.
            self.end_local(
                t,
                End::Abort("stream gone before the target connected".into()),
            );
            return;
        }
        self.touched_locals.insert(t);
    }

    /// A target connection that never came up: the stream is refused (the
    /// server resets the accepted connection) and the socket dropped.
    pub(super) fn fail_target(
        &mut self,
        t: mio::Token,
        id: StreamId,
        code: StreamErrorCode,
        why: &str,
    ) {
        if let Some(mut l) = self.locals.remove(&t) {
            if let Some(sock) = l.pipe.sock.as_mut() {
                let _ = self.poll.registry().deregister(sock);
            }
            info!("{}: reverse stream {id} refused: {why}", l.peer);
        }
        self.streams.remove(&id);
        self.refuse_incoming(id, code);
    }
}
