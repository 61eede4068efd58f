//! One stream's destination socket on the server: name lookup, the
//! non-blocking connect over the candidate addresses, then a [`Pipe`]
//! between the socket and the stream. It holds one descriptor permit from
//! the server budget for as long as it has a socket, and ends either
//! cleanly (both directions finished) or abortively (RST), never by
//! pretending a cut stream ended well.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hytun_core::StreamErrorCode;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::budget::Permit;
use crate::allow::NameDecision;
use crate::pipe::Pipe;
use crate::resolver::Ticket;

/// Where an upstream is in its life.
#[derive(Debug)]
pub enum UpstreamState {
    /// Waiting for a name lookup.
    Resolving,
    /// The socket moves into the pipe only once connected, so no byte is
    /// written to (and no shutdown applied on) a half-open socket.
    Connecting {
        sock: TcpStream,
        rest: Vec<SocketAddr>,
        deadline: Instant,
    },
    /// Connected: the pipe owns the socket.
    Connected,
}

/// What a readiness event on a connecting socket meant.
#[derive(Debug)]
pub enum ConnectProgress {
    /// Still connecting.
    Pending,
    /// Connected; the stream may be accepted.
    Connected,
    /// This address failed and no other is left.
    Failed(io::Error),
}

/// A stream's destination side.
#[derive(Debug)]
pub struct Upstream {
    /// `host:port` as the client named it, for logs.
    pub dest: String,
    /// Lookup, connect or connected.
    pub state: UpstreamState,
    /// The socket ↔ stream copy state.
    pub pipe: Pipe,
    /// The socket's poll token while it has one.
    pub token: Option<Token>,
    /// In the session's flush list.
    pub flush_queued: bool,
    /// The lookup in flight and how the allowlist decided the name.
    pub lookup: Option<(Ticket, NameDecision)>,
    /// The descriptor this upstream holds.
    fd: Option<Permit>,
}

impl Upstream {
    /// An upstream that has yet to be resolved or connected.
    pub fn new(dest: String) -> Self {
        Upstream {
            dest,
            state: UpstreamState::Resolving,
            pipe: Pipe::new(None),
            token: None,
            flush_queued: false,
            lookup: None,
            fd: None,
        }
    }

    /// A connection accepted on a remote listener (`-R`): connected from
    /// the start, registered under `token`, holding descriptor `fd`. Its
    /// stream is opened by the server; the pipe sends nothing until the
    /// client grants credit.
    pub fn accepted(
        dest: String,
        mut sock: TcpStream,
        registry: &Registry,
        token: Token,
        fd: Permit,
    ) -> io::Result<Self> {
        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        let _ = sock.set_nodelay(true);
        Ok(Upstream {
            dest,
            state: UpstreamState::Connected,
            pipe: Pipe::new(Some(sock)),
            token: Some(token),
            flush_queued: false,
            lookup: None,
            fd: Some(fd),
        })
    }

    /// Holds `fd` while a lookup is in flight (the descriptor the connect
    /// will need is reserved with the stream).
    pub fn hold_fd(&mut self, fd: Permit) {
        self.fd = Some(fd);
    }

    /// Takes the held descriptor permit back (to connect with it).
    pub fn release_fd(&mut self) -> Option<Permit> {
        self.fd.take()
    }

    /// True while this upstream holds a descriptor permit.
    pub fn holds_fd(&self) -> bool {
        self.fd.is_some()
    }

    /// True once connected.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, UpstreamState::Connected)
    }

    /// The connect deadline, while connecting.
    pub fn connect_deadline(&self) -> Option<Instant> {
        match self.state {
            UpstreamState::Connecting { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// Starts a non-blocking connect to the first address that accepts
    /// one, registering the socket under `token`. `fd` is the descriptor
    /// permit the socket will hold.
    pub fn connect(
        &mut self,
        registry: &Registry,
        token: Token,
        mut addrs: Vec<SocketAddr>,
        fd: Permit,
        timeout: Duration,
    ) -> io::Result<()> {
        let mut last_err = io::Error::new(io::ErrorKind::NotFound, "no address");
        addrs.reverse();
        while let Some(addr) = addrs.pop() {
            match TcpStream::connect(addr) {
                Ok(mut sock) => {
                    if let Err(e) =
                        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                    {
                        last_err = e;
                        continue;
                    }
                    addrs.reverse();
                    self.token = Some(token);
                    self.fd = Some(fd);
                    self.state = UpstreamState::Connecting {
                        sock,
                        rest: addrs,
                        deadline: Instant::now() + timeout,
                    };
                    return Ok(());
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Handles readiness while connecting: finishes the connect, or moves
    /// on to the next address (same token), or fails.
    pub fn on_connect_event(&mut self, registry: &Registry) -> ConnectProgress {
        let UpstreamState::Connecting { sock, rest, .. } = &mut self.state else {
            return ConnectProgress::Connected;
        };
        let failure = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    return ConnectProgress::Pending;
                }
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failure {
            let _ = registry.deregister(sock);
            let rest = std::mem::take(rest);
            let (Some(token), Some(fd)) = (self.token, self.fd.take()) else {
                return ConnectProgress::Failed(e);
            };
            self.state = UpstreamState::Resolving;
            if rest.is_empty() {
                return ConnectProgress::Failed(e);
            }
            return match self.connect(registry, token, rest, fd, super::UPSTREAM_CONNECT_TIMEOUT) {
                Ok(()) => ConnectProgress::Pending,
                Err(e) => ConnectProgress::Failed(e),
            };
        }
        let _ = sock.set_nodelay(true);
        if let UpstreamState::Connecting { sock, .. } =
            std::mem::replace(&mut self.state, UpstreamState::Connected)
        {
            self.pipe.sock = Some(sock);
        }
        ConnectProgress::Connected
    }

    /// Ends the upstream cleanly (its pipe finished both ways): the socket
    /// is deregistered and closed normally.
    pub fn close(mut self, registry: &Registry) {
        self.deregister(registry);
    }

    /// Ends the upstream abortively: the destination sees a reset
    /// (ECONNRESET), never a clean end of stream, because the stream did
    /// not end with an authenticated FIN.
    pub fn abort(mut self, registry: &Registry) {
        if let Some(sock) = self.pipe.sock.as_ref() {
            abort_on_close(sock);
        }
        if let UpstreamState::Connecting { sock, .. } = &self.state {
            abort_on_close(sock);
        }
        self.deregister(registry);
    }

    fn deregister(&mut self, registry: &Registry) {
        if let Some(sock) = self.pipe.sock.as_mut() {
            let _ = registry.deregister(sock);
        }
        if let UpstreamState::Connecting { sock, .. } = &mut self.state {
            let _ = registry.deregister(sock);
        }
    }
}

/// Makes the socket's close send RST instead of FIN (SO_LINGER 0).
pub fn abort_on_close(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// Maps a connect error to the stream error code the client sees.
pub fn error_code(e: &io::Error) -> StreamErrorCode {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => StreamErrorCode::ConnectionRefused,
        io::ErrorKind::HostUnreachable => StreamErrorCode::HostUnreachable,
        io::ErrorKind::NetworkUnreachable => StreamErrorCode::NetworkUnreachable,
        io::ErrorKind::TimedOut => StreamErrorCode::TimedOut,
        _ => StreamErrorCode::Other,
    }
}
