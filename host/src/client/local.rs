//! [`Local`]: one local connection of the client — an application's
//! socket accepted on a `-L`, SOCKS5 or HTTP-proxy listener, or (`-R`) a
//! target socket the client connected for a server-opened stream. It owns
//! the socket's [`Pipe`], the proxy negotiation (the SOCKS5 handshake or
//! the HTTP request parser), its [`Phase`] and deadline, and decides how it
//! ends: the proxy replies it owes the application (success, or the SOCKS5
//! / HTTP failure that matches why the stream failed), the clean close, or
//! the abortive one (RST) with its log line. It holds no stream map and no
//! tunnel: the table ([`super::locals`]) binds it to a stream, and the core
//! connection is lent to it for the calls that move its bytes.
//!
//! A `-R` target starts without a socket while its name is looked up
//! (the ticket of the lookup is kept to match and cancel it), then tries
//! its addresses in order: an attempt that fails (refused, unreachable,
//! or cannot even start) moves on to the next address at once; each
//! attempt gets the connect timeout it was given, and an attempt that
//! times out fails the target (see [`super::reverse`]).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant as StdInstant};

use hytun_core::{HostConnection, StreamErrorCode, StreamId};
use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::{ListenerKind, PENDING_LOCAL_TIMEOUT};
use crate::allow::DestHost;
use crate::pipe::Pipe;
use crate::proxy::http::{HttpProxyParser, ProxyRequest, ProxyStatus};
use crate::proxy::socks5::{self, Socks5Handshake, Socks5Progress, Socks5Reply};
use crate::resolver::Ticket;

/// Where a local connection is in its life.
enum Phase {
    /// Reading the SOCKS / HTTP request.
    Negotiating,
    /// Request known; waiting for the tunnel to open a stream for it.
    WaitingTunnel {
        host: DestHost,
        port: u16,
        early: Vec<u8>,
    },
    /// OPEN sent; waiting for OPENED (SOCKS/CONNECT reply pending).
    Opening(StreamId),
    /// Relaying.
    Streaming(StreamId),
    /// (`-R`) The server opened the stream; the target's name is being
    /// looked up (lookup `ticket`); no socket yet.
    Resolving { id: StreamId, ticket: Ticket },
    /// (`-R`) The server opened the stream; connecting to the target's
    /// address, with the addresses still to try if this attempt fails and
    /// the time each attempt gets.
    Connecting {
        id: StreamId,
        rest: VecDeque<SocketAddr>,
        timeout: Duration,
    },
    /// Closing after a final local reply was flushed.
    Closing,
}

/// How a local connection ends.
pub(super) enum End {
    /// Both directions finished cleanly, or no stream was ever carried.
    Clean,
    /// Anything else: the local socket is reset (RST) and the stream, if
    /// still live, is reset too. The text says why, for the log.
    Abort(String),
}

/// What a local connection did about a failure of (or before) its stream.
pub(super) enum Outcome {
    /// It sent its proxy failure reply and closes once that is written;
    /// the stream it was opening, if any, is no longer its own.
    Answered(Option<StreamId>),
    /// It has no reply to give: it must end abortively, for this reason.
    Abort(String),
}

/// What reading a proxy request came to.
pub(super) enum Negotiation {
    /// The request is not complete yet; nothing more to read now.
    Pending,
    /// The request is known: the connection waits for its stream.
    Request,
    /// The request was refused; the reply closes the connection once it
    /// is written.
    Refused,
    /// The connection ends.
    End(End),
}

/// What a (`-R`) target connect came to.
pub(super) enum TargetConnect {
    /// Still connecting, or not a target that is connecting.
    Pending,
    /// Connected: the stream can be accepted.
    Connected(StreamId),
    /// The connect failed.
    Failed(StreamId, io::Error),
}

/// A parsed proxy request: destination and the payload bytes after it.
type ProxyTarget = (DestHost, u16, Vec<u8>);

/// The protocol a local connection speaks before it is relayed.
enum Proto {
    Forward,
    Socks(Socks5Handshake),
    Http {
        parser: HttpProxyParser,
        connect: bool,
    },
}

/// One local connection.
pub(super) struct Local {
    peer: SocketAddr,
    pipe: Pipe,
    proto: Proto,
    phase: Phase,
    deadline: Option<StdInstant>,
}

impl Local {
    /// A connection accepted on a local listener of `kind`. A `-L`
    /// connection knows its destination at once; a proxy connection first
    /// negotiates it. Either waits at most [`PENDING_LOCAL_TIMEOUT`] for
    /// its stream.
    pub(super) fn accepted(sock: TcpStream, peer: SocketAddr, kind: ListenerKind) -> Local {
        let (proto, phase) = match kind {
            ListenerKind::Forward { host, port } => (
                Proto::Forward,
                Phase::WaitingTunnel {
                    host,
                    port,
                    early: Vec::new(),
                },
            ),
            ListenerKind::Socks => (Proto::Socks(Socks5Handshake::new()), Phase::Negotiating),
            ListenerKind::HttpProxy => (
                Proto::Http {
                    parser: HttpProxyParser::new(),
                    connect: false,
                },
                Phase::Negotiating,
            ),
        };
        Local {
            peer,
            pipe: Pipe::new(Some(sock)),
            proto,
            phase,
            deadline: Some(StdInstant::now() + PENDING_LOCAL_TIMEOUT),
        }
    }

    /// (`-R`) The target of the server-opened stream `id` whose name is
    /// being looked up (lookup `ticket`); `peer` names it in the log until
    /// it connects, and it gives up at `deadline`.
    pub(super) fn resolving(
        peer: SocketAddr,
        id: StreamId,
        ticket: Ticket,
        deadline: StdInstant,
    ) -> Local {
        Local {
            peer,
            pipe: Pipe::new(None),
            proto: Proto::Forward,
            phase: Phase::Resolving { id, ticket },
            deadline: Some(deadline),
        }
    }

    /// (`-R`) Starts connecting the target of stream `id` to the first of
    /// `addrs` that takes a connect attempt, its socket registered under
    /// `t`; the others are kept for [`finish_connect`](Self::finish_connect)
    /// to fall back on. Each attempt gets `timeout`.
    ///
    /// # Errors
    /// No address took an attempt: the last address's error.
    pub(super) fn connect_target(
        registry: &Registry,
        t: Token,
        id: StreamId,
        addrs: Vec<SocketAddr>,
        timeout: Duration,
    ) -> io::Result<Local> {
        let mut l = Local {
            peer: addrs.first().copied().unwrap_or(UNSPECIFIED),
            pipe: Pipe::new(None),
            proto: Proto::Forward,
            phase: Phase::Connecting {
                id,
                rest: addrs.into(),
                timeout,
            },
            deadline: None,
        };
        l.try_next(registry, t, no_address())?;
        Ok(l)
    }

    /// (`-R`) The lookup of a resolving target found `addrs`: starts
    /// connecting as [`connect_target`](Self::connect_target) does.
    ///
    /// # Errors
    /// No address took an attempt (the last one's error), or the target
    /// was not resolving.
    pub(super) fn connect_resolved(
        &mut self,
        registry: &Registry,
        t: Token,
        addrs: Vec<SocketAddr>,
        timeout: Duration,
    ) -> io::Result<()> {
        let Phase::Resolving { id, .. } = self.phase else {
            return Err(io::Error::other("the target is not being looked up"));
        };
        self.phase = Phase::Connecting {
            id,
            rest: addrs.into(),
            timeout,
        };
        self.try_next(registry, t, no_address())
    }

    /// Starts a non-blocking connect to the next address left that takes
    /// one, registered under `t`, and restarts the attempt's deadline.
    /// `last` is the error to report if none is left.
    fn try_next(&mut self, registry: &Registry, t: Token, mut last: io::Error) -> io::Result<()> {
        let Phase::Connecting { id, rest, timeout } = &mut self.phase else {
            return Err(last);
        };
        while let Some(addr) = rest.pop_front() {
            let attempt = TcpStream::connect(addr).and_then(|mut sock| {
                registry.register(&mut sock, t, Interest::READABLE | Interest::WRITABLE)?;
                Ok(sock)
            });
            match attempt {
                Ok(sock) => {
                    self.pipe.sock = Some(sock);
                    self.peer = addr;
                    self.deadline = Some(StdInstant::now() + *timeout);
                    return Ok(());
                }
                Err(e) => {
                    debug!("reverse stream {id}: cannot connect to {addr}: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// The application's (or target's) address, for the log.
    pub(super) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// When it gives up waiting (for its stream or its target), if it waits.
    pub(super) fn deadline(&self) -> Option<StdInstant> {
        self.deadline
    }

    /// The stream this connection holds a place in the stream map for.
    pub(super) fn stream(&self) -> Option<StreamId> {
        match self.phase {
            Phase::Streaming(id)
            | Phase::Opening(id)
            | Phase::Resolving { id, .. }
            | Phase::Connecting { id, .. } => Some(id),
            _ => None,
        }
    }

    /// (`-R`) The stream whose target is still connecting, if so.
    pub(super) fn connecting(&self) -> Option<StreamId> {
        match self.phase {
            Phase::Connecting { id, .. } => Some(id),
            _ => None,
        }
    }

    /// (`-R`) The stream whose target's name is being looked up, and the
    /// lookup's ticket, if so.
    pub(super) fn lookup(&self) -> Option<(StreamId, Ticket)> {
        match self.phase {
            Phase::Resolving { id, ticket } => Some((id, ticket)),
            _ => None,
        }
    }

    /// True while it reads a proxy request.
    pub(super) fn is_negotiating(&self) -> bool {
        matches!(self.phase, Phase::Negotiating)
    }

    /// True while its request waits for a stream.
    pub(super) fn is_waiting(&self) -> bool {
        matches!(self.phase, Phase::WaitingTunnel { .. })
    }

    /// The destination and early bytes of a request that waits for a
    /// stream.
    pub(super) fn request(&self) -> Option<(&DestHost, u16, &[u8])> {
        match &self.phase {
            Phase::WaitingTunnel { host, port, early } => Some((host, *port, early.as_slice())),
            _ => None,
        }
    }

    /// True when reading stopped for lack of credit or transmit space.
    pub(super) fn read_blocked(&self) -> bool {
        self.pipe.read_blocked
    }

    /// A poll event reported the peer's FIN or an error.
    pub(super) fn note_read_closed(&mut self) {
        self.pipe.note_event(true);
    }

    /// Gives the pipe's buffer back if it has been empty since before `t`.
    pub(super) fn release_if_drained_before(&mut self, t: StdInstant) {
        self.pipe.release_if_drained_before(t);
    }

    /// Stream data from the tunnel, written with the next flush.
    pub(super) fn queue_tunnel(&mut self, data: &[u8]) {
        self.pipe.queue_tunnel(data);
    }

    /// The server finished the stream: shut the socket's write side once
    /// everything is written.
    pub(super) fn tunnel_finished(&mut self) {
        self.pipe.tunnel_fin = true;
    }

    /// Sends a proxy's own answer (a SOCKS5 failure, an HTTP error) and
    /// closes cleanly once it is written: no stream carries this
    /// connection any more.
    fn answer_and_close(&mut self, reply: &[u8]) {
        self.pipe.queue_local(reply);
        self.pipe.tunnel_fin = true;
        self.pipe.sock_eof = true;
        self.phase = Phase::Closing;
        self.deadline = None;
    }

    /// OPEN for the waiting request went out as stream `id`, with `sent`
    /// of its early bytes. Early bytes beyond the initial credit are rare
    /// (a client pipelining a big body before the reply) and end the
    /// connection (the error); otherwise it relays at once (`-L`, plain
    /// http://) or waits for OPENED to answer its proxy client.
    pub(super) fn stream_opened(&mut self, id: StreamId, sent: usize) -> Result<(), End> {
        let Phase::WaitingTunnel { host, port, early } = &self.phase else {
            return Ok(());
        };
        debug!("{}: stream {id} to {}", self.peer, host.with_port(*port));
        let excess = early.len() - sent;
        // What went is part of what the application sent (for a plain
        // http:// request: the rewritten request head).
        self.pipe.bytes_from_sock += sent as u64;
        if excess > 0 {
            self.phase = Phase::Opening(id);
            return Err(End::Abort(format!(
                "{excess} early bytes exceed the initial stream window"
            )));
        }
        self.phase = match self.proto {
            Proto::Forward | Proto::Http { connect: false, .. } => Phase::Streaming(id),
            _ => Phase::Opening(id),
        };
        if matches!(self.phase, Phase::Streaming(_)) {
            self.deadline = None;
        }
        Ok(())
    }

    /// The server connected stream `id`: a proxy client gets its success
    /// reply, and relaying starts.
    pub(super) fn on_opened(&mut self, id: StreamId) {
        match &self.proto {
            Proto::Socks(_) => self
                .pipe
                .queue_local(&socks5::reply(Socks5Reply::Succeeded, None)),
            Proto::Http { connect: true, .. } => self
                .pipe
                .queue_local(&ProxyStatus::Established.response("")),
            _ => {}
        }
        self.phase = Phase::Streaming(id);
        self.deadline = None;
    }

    /// A failure of this connection's stream. A SOCKS5 / HTTP CONNECT
    /// client whose reply is still pending gets a failure reply and a
    /// normal close; everything else is aborted.
    pub(super) fn fail(&mut self, reason: String) -> Outcome {
        let reply = match (&self.proto, &self.phase) {
            (Proto::Socks(_), Phase::Opening(_) | Phase::WaitingTunnel { .. }) => {
                Some(socks5::reply(Socks5Reply::GeneralFailure, None))
            }
            (Proto::Http { .. }, Phase::Opening(_) | Phase::WaitingTunnel { .. }) => {
                Some(ProxyStatus::BadGateway.response(&reason))
            }
            _ => None,
        };
        let Some(reply) = reply else {
            return Outcome::Abort(reason);
        };
        let stream = match self.phase {
            Phase::Opening(id) => {
                debug!(
                    "{}: stream {id} failed before the reply: {reason}",
                    self.peer
                );
                Some(id)
            }
            _ => None,
        };
        self.answer_and_close(&reply);
        Outcome::Answered(stream)
    }

    /// The server refused the stream (OPEN_FAIL): a proxy client gets the
    /// matching failure reply; a `-L` connection, whose application may
    /// already have sent data, is reset.
    pub(super) fn refuse(&mut self, code: StreamErrorCode) -> Outcome {
        let reply = match &self.proto {
            Proto::Socks(_) => Some(socks5::reply(socks_code(code), None)),
            Proto::Http { .. } => Some(http_status(code).response(&code.to_string())),
            Proto::Forward => None,
        };
        let Some(reply) = reply else {
            return Outcome::Abort(format!("refused by server: {code}"));
        };
        let stream = match self.phase {
            Phase::Opening(id) | Phase::Streaming(id) => {
                debug!("{}: stream {id} refused by server: {code}", self.peer);
                Some(id)
            }
            _ => None,
        };
        self.answer_and_close(&reply);
        Outcome::Answered(stream)
    }

    /// The deadline passed without a stream: a proxy client with a known
    /// request is told so (the stream it was opening, returned, must be
    /// cancelled at the server, which may still connect it); a `-L`
    /// application may have sent data already, so no clean end for it.
    pub(super) fn expire(&mut self) -> Outcome {
        warn!(
            "{}: tunnel not available in time; closing local connection",
            self.peer
        );
        let reply = match &self.proto {
            Proto::Socks(_) if !matches!(self.phase, Phase::Negotiating) => {
                Some(socks5::reply(Socks5Reply::GeneralFailure, None))
            }
            Proto::Http { .. } if !matches!(self.phase, Phase::Negotiating) => {
                Some(ProxyStatus::GatewayTimeout.response("tunnel unavailable"))
            }
            _ => None,
        };
        let Some(reply) = reply else {
            return Outcome::Abort("tunnel not available in time".into());
        };
        let stream = match self.phase {
            Phase::Opening(id) => Some(id),
            _ => None,
        };
        self.answer_and_close(&reply);
        Outcome::Answered(stream)
    }

    /// How it ends when the client stops: a connection that carries no
    /// stream closes cleanly; one whose stream is cut is aborted.
    pub(super) fn end_on_stop(&self) -> End {
        if matches!(self.phase, Phase::Negotiating | Phase::Closing) {
            End::Clean
        } else {
            End::Abort("client stopping".into())
        }
    }

    /// Reads a SOCKS5 / HTTP proxy request from the socket.
    pub(super) fn negotiate(&mut self) -> Negotiation {
        let mut buf = [0u8; 4096];
        loop {
            let Some(sock) = self.pipe.sock.as_mut() else {
                return Negotiation::Pending;
            };
            let n = match sock.read(&mut buf) {
                Ok(0) => {
                    debug!("{}: closed during negotiation", self.peer);
                    return Negotiation::End(End::Clean);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Negotiation::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Negotiation::End(End::Abort(format!("local read failed: {e}")));
                }
            };
            match self.parse_request(&buf[..n]) {
                Ok(None) => {}
                Ok(Some((host, port, early))) => {
                    self.phase = Phase::WaitingTunnel { host, port, early };
                    return Negotiation::Request;
                }
                Err(reply) => {
                    self.answer_and_close(&reply);
                    return Negotiation::Refused;
                }
            }
        }
    }

    /// Feeds request bytes to the proxy parser: the request once complete,
    /// or the error reply to send.
    fn parse_request(&mut self, input: &[u8]) -> Result<Option<ProxyTarget>, Vec<u8>> {
        match &mut self.proto {
            Proto::Socks(hs) => match hs.feed(input) {
                Ok(Socks5Progress::NeedMore { output, .. }) => {
                    self.pipe.queue_local(&output);
                    Ok(None)
                }
                Ok(Socks5Progress::Request {
                    consumed,
                    output,
                    host,
                    port,
                }) => {
                    self.pipe.queue_local(&output);
                    Ok(Some((host, port, input[consumed..].to_vec())))
                }
                Err(e) => {
                    debug!("{}: SOCKS5 error: {e}", self.peer);
                    Err(e.output().to_vec())
                }
            },
            Proto::Http { parser, connect } => match parser.feed(input) {
                Ok(None) => Ok(None),
                Ok(Some(ProxyRequest::Connect {
                    host,
                    port,
                    consumed,
                })) => {
                    *connect = true;
                    Ok(Some((host, port, input[consumed..].to_vec())))
                }
                Ok(Some(ProxyRequest::Forward {
                    host,
                    port,
                    head,
                    consumed,
                })) => {
                    let mut early = head;
                    early.extend_from_slice(&input[consumed..]);
                    Ok(Some((host, port, early)))
                }
                Err(e) => {
                    debug!("{}: HTTP proxy error: {e}", self.peer);
                    Err(e.response())
                }
            },
            Proto::Forward => Ok(None),
        }
    }

    /// (`-R`) Readiness on a target socket (registered under `t`) that is
    /// still connecting: once connected it relays (the stream is to be
    /// accepted); if this address failed, the next one is tried under the
    /// same token, and only when none is left does the connect fail.
    pub(super) fn finish_connect(&mut self, registry: &Registry, t: Token) -> TargetConnect {
        let Phase::Connecting { id, .. } = self.phase else {
            return TargetConnect::Pending;
        };
        let Some(sock) = self.pipe.sock.as_ref() else {
            return TargetConnect::Pending;
        };
        let failure = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match sock.peer_addr() {
                Ok(addr) => {
                    self.peer = addr;
                    None
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    return TargetConnect::Pending;
                }
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failure {
            debug!("{}: reverse stream {id}: connect failed: {e}", self.peer);
            if let Some(mut sock) = self.pipe.sock.take() {
                let _ = registry.deregister(&mut sock);
            }
            return match self.try_next(registry, t, e) {
                Ok(()) => TargetConnect::Pending,
                Err(e) => TargetConnect::Failed(id, e),
            };
        }
        if let Some(sock) = self.pipe.sock.as_ref() {
            let _ = sock.set_nodelay(true);
        }
        self.phase = Phase::Streaming(id);
        self.deadline = None;
        debug!("{}: reverse stream {id} connected", self.peer);
        TargetConnect::Connected(id)
    }

    /// Moves bytes: writes what the tunnel delivered (returning its credit
    /// on `conn`), and reads the socket into the stream. The end it comes
    /// to, if any, is returned for the table to carry out.
    pub(super) fn service(&mut self, mut conn: Option<&mut HostConnection>) -> Option<End> {
        if matches!(
            self.phase,
            Phase::Resolving { .. } | Phase::Connecting { .. }
        ) {
            // Nothing is written to (or shut down on) a socket that is
            // still connecting; the stream is not accepted yet.
            return None;
        }
        let id = match self.phase {
            Phase::Streaming(id) | Phase::Opening(id) => Some(id),
            _ => None,
        };
        match self.pipe.flush() {
            Ok(n) => {
                if let (Some(id), Some(conn)) = (id, conn.as_deref_mut())
                    && n > 0
                {
                    conn.stream_consumed(id, n);
                }
            }
            Err(e) => return Some(End::Abort(local_failure("write to", &e))),
        }
        if matches!(self.phase, Phase::Closing) {
            return (self.pipe.buffered() == 0).then_some(End::Clean);
        }
        if let (Phase::Streaming(id), Some(conn)) = (&self.phase, conn) {
            if let Err(e) = self.pipe.read_into(conn, *id) {
                return Some(End::Abort(local_failure("read from", &e)));
            }
            if self.pipe.is_done() {
                return Some(End::Clean);
            }
        }
        None
    }

    /// Closes the connection, its stream already unmapped. A clean end
    /// closes the socket normally (its FIN was already sent by the pipe);
    /// an abort resets the stream on `conn` if it is still live and closes
    /// the socket with RST.
    pub(super) fn close(
        mut self,
        registry: &Registry,
        conn: Option<&mut HostConnection>,
        end: End,
    ) {
        if let Some(sock) = self.pipe.sock.as_mut() {
            let _ = registry.deregister(sock);
        }
        let id = self.stream();
        let peer = self.peer;
        let (sent, received) = (self.pipe.bytes_from_sock, self.pipe.bytes_to_sock);
        match (end, id) {
            (End::Clean, Some(id)) => {
                debug!("{peer}: stream {id} closed ({sent} bytes sent, {received} received)")
            }
            (End::Clean, None) => debug!("{peer}: local connection closed"),
            (End::Abort(reason), Some(id)) => {
                if let Some(conn) = conn {
                    // Fails harmlessly when the stream or session is gone.
                    let _ = conn.stream_reset(id, StreamErrorCode::Cancelled);
                }
                self.pipe.abort();
                debug!(
                    "{peer}: stream {id} aborted ({reason}; {sent} bytes sent, {received} received)"
                );
            }
            (End::Abort(reason), None) => {
                self.pipe.abort();
                debug!("{peer}: local connection aborted ({reason})");
            }
        }
        // Dropping `self` closes the socket (with RST after `abort`).
    }

    /// Drops a (`-R`) target whose connect never came up: deregistered and
    /// closed without a stream to end.
    pub(super) fn discard(mut self, registry: &Registry) {
        if let Some(sock) = self.pipe.sock.as_mut() {
            let _ = registry.deregister(sock);
        }
    }
}

/// The peer a target has before any address is known (never connected to).
const UNSPECIFIED: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// The error of a target with no address to try.
fn no_address() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no address to connect to")
}

/// A local socket error as an abort reason.
fn local_failure(what: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "local application reset the connection".into(),
        io::ErrorKind::BrokenPipe => "local application closed the connection".into(),
        _ => format!("{what} the local application failed: {e}"),
    }
}

/// The SOCKS5 reply for a stream the server refused.
fn socks_code(code: StreamErrorCode) -> Socks5Reply {
    match code {
        StreamErrorCode::NotAllowed => Socks5Reply::NotAllowed,
        StreamErrorCode::ConnectionRefused => Socks5Reply::ConnectionRefused,
        StreamErrorCode::HostUnreachable => Socks5Reply::HostUnreachable,
        StreamErrorCode::NetworkUnreachable => Socks5Reply::NetworkUnreachable,
        StreamErrorCode::TimedOut => Socks5Reply::TtlExpired,
        _ => Socks5Reply::GeneralFailure,
    }
}

/// The HTTP status for a stream the server refused.
fn http_status(code: StreamErrorCode) -> ProxyStatus {
    match code {
        StreamErrorCode::NotAllowed => ProxyStatus::Forbidden,
        StreamErrorCode::TimedOut => ProxyStatus::GatewayTimeout,
        StreamErrorCode::ResourceExhausted | StreamErrorCode::SessionClosing => {
            ProxyStatus::Unavailable
        }
        _ => ProxyStatus::BadGateway,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::thread::sleep;

    use super::*;

    /// A local connection's socket (ours, non-blocking) and the
    /// application's end of it, over loopback.
    fn pair() -> (TcpStream, std::net::TcpStream, SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let app = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        app.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (ours, peer) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (TcpStream::from_std(ours), app, peer)
    }

    /// Negotiates until the request bytes the application sent have
    /// arrived and been parsed (bounded: loopback delivers at once).
    fn negotiate(l: &mut Local) -> Negotiation {
        for _ in 0..500 {
            match l.negotiate() {
                Negotiation::Pending => sleep(Duration::from_millis(2)),
                done => return done,
            }
        }
        panic!("the request never arrived");
    }

    /// Everything the application reads until the connection's end, and
    /// how it ended (`Ok` for a clean EOF).
    fn read_to_end(app: &mut std::net::TcpStream) -> (Vec<u8>, io::Result<()>) {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match app.read(&mut buf) {
                Ok(0) => return (got, Ok(())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return (got, Err(e)),
            }
        }
    }

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn a_socks_client_whose_stream_is_refused_gets_the_matching_reply_and_a_clean_close() {
        let (sock, mut app, peer) = pair();
        let mut l = Local::accepted(sock, peer, ListenerKind::Socks);
        assert!(l.is_negotiating());
        // Greeting (no auth), then CONNECT 127.0.0.1:80.
        app.write_all(&[5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80])
            .unwrap();
        assert!(matches!(negotiate(&mut l), Negotiation::Request));
        let (host, port, early) = l.request().unwrap();
        assert_eq!((host, port, early), (&DestHost::Ip(LOOPBACK), 80, &[][..]));

        let id = StreamId(1);
        assert!(l.stream_opened(id, 0).is_ok());
        assert_eq!(l.stream(), Some(id));
        // The reply waits for OPENED, so the deadline still runs.
        assert!(l.deadline().is_some());

        let Outcome::Answered(stream) = l.refuse(StreamErrorCode::ConnectionRefused) else {
            panic!("a SOCKS client is answered");
        };
        assert_eq!(stream, Some(id));
        assert_eq!(l.stream(), None);
        assert!(l.deadline().is_none());
        assert!(matches!(l.service(None), Some(End::Clean)));
        let registry = mio::Poll::new().unwrap();
        l.close(registry.registry(), None, End::Clean);

        let mut want = vec![5, 0];
        want.extend_from_slice(&socks5::reply(Socks5Reply::ConnectionRefused, None));
        let (got, end) = read_to_end(&mut app);
        assert_eq!(got, want);
        assert!(end.is_ok(), "a clean close, not a reset: {end:?}");
    }

    #[test]
    fn a_malformed_request_is_answered_and_its_deadline_cleared() {
        let (sock, mut app, peer) = pair();
        let mut l = Local::accepted(sock, peer, ListenerKind::HttpProxy);
        assert!(l.deadline().is_some());
        app.write_all(b"NOT-HTTP\r\n\r\n").unwrap();
        assert!(matches!(negotiate(&mut l), Negotiation::Refused));
        // Answered: no "tunnel not available in time" later, however long
        // the application takes to read the answer.
        assert!(l.deadline().is_none());
        assert!(matches!(l.service(None), Some(End::Clean)));
        let registry = mio::Poll::new().unwrap();
        l.close(registry.registry(), None, End::Clean);
        let (got, end) = read_to_end(&mut app);
        assert!(
            got.starts_with(b"HTTP/1.1 400"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert!(end.is_ok(), "a clean close, not a reset: {end:?}");
    }

    #[test]
    fn an_http_connect_whose_stream_fails_before_the_reply_gets_a_502() {
        let (sock, mut app, peer) = pair();
        let mut l = Local::accepted(sock, peer, ListenerKind::HttpProxy);
        app.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            .unwrap();
        assert!(matches!(negotiate(&mut l), Negotiation::Request));
        let id = StreamId(3);
        assert!(l.stream_opened(id, 0).is_ok());
        assert_eq!(l.stream(), Some(id), "CONNECT waits for OPENED");

        let Outcome::Answered(stream) = l.fail("reset by the server: refused".into()) else {
            panic!("a CONNECT client is answered");
        };
        assert_eq!(stream, Some(id));
        assert!(matches!(l.service(None), Some(End::Clean)));
        drop(l);

        let (got, end) = read_to_end(&mut app);
        let got = String::from_utf8(got).unwrap();
        assert!(got.starts_with("HTTP/1.1 502 "), "{got}");
        assert!(got.contains("reset by the server: refused"), "{got}");
        assert!(end.is_ok(), "{end:?}");
    }

    #[test]
    fn a_forward_connection_has_no_answer_to_give_so_it_is_reset() {
        let (sock, mut app, peer) = pair();
        let kind = ListenerKind::Forward {
            host: DestHost::Ip(LOOPBACK),
            port: 9,
        };
        let mut l = Local::accepted(sock, peer, kind);
        assert!(l.is_waiting());
        assert!(
            matches!(l.refuse(StreamErrorCode::NotAllowed), Outcome::Abort(r) if r.starts_with("refused by server: "))
        );
        assert!(matches!(l.expire(), Outcome::Abort(r) if r == "tunnel not available in time"));
        assert!(matches!(l.fail("tunnel lost".into()), Outcome::Abort(r) if r == "tunnel lost"));
        assert!(matches!(l.end_on_stop(), End::Abort(_)));
        let registry = mio::Poll::new().unwrap();
        l.close(registry.registry(), None, End::Abort("test".into()));

        let (got, end) = read_to_end(&mut app);
        assert!(got.is_empty());
        let e = end.expect_err("an abort must not look like a clean end");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn early_bytes_beyond_the_initial_credit_end_the_connection() {
        let request = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n";
        for sent_all in [false, true] {
            let (sock, mut app, peer) = pair();
            let mut l = Local::accepted(sock, peer, ListenerKind::HttpProxy);
            app.write_all(request).unwrap();
            assert!(matches!(negotiate(&mut l), Negotiation::Request));
            let early = l.request().unwrap().2.len();
            assert!(early > 0, "the rewritten request head goes as early bytes");
            let id = StreamId(5);
            if sent_all {
                // A plain http:// request relays at once.
                assert!(l.stream_opened(id, early).is_ok());
                assert!(l.deadline().is_none());
            } else {
                let Err(End::Abort(reason)) = l.stream_opened(id, early - 1) else {
                    panic!("the excess must end the connection");
                };
                assert_eq!(reason, "1 early bytes exceed the initial stream window");
            }
            assert_eq!(l.stream(), Some(id));
        }
    }

    #[test]
    fn a_stop_closes_a_connection_without_a_stream_cleanly() {
        let (sock, _app, peer) = pair();
        let l = Local::accepted(sock, peer, ListenerKind::Socks);
        assert!(matches!(l.end_on_stop(), End::Clean));
    }

    /// Drives a connecting target until it connects or fails (bounded:
    /// loopback answers at once).
    fn drive_connect(l: &mut Local, poll: &mut mio::Poll, t: Token) -> TargetConnect {
        let mut events = mio::Events::with_capacity(8);
        let until = StdInstant::now() + Duration::from_secs(30);
        loop {
            assert!(StdInstant::now() < until, "the connect never finished");
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            if events.iter().any(|e| e.token() == t) {
                match l.finish_connect(poll.registry(), t) {
                    TargetConnect::Pending => {}
                    done => return done,
                }
            }
        }
    }

    /// A loopback port nothing listens on (bound, then released).
    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn a_target_tries_its_addresses_in_order_until_one_connects() {
        let mut poll = mio::Poll::new().unwrap();
        let t = Token(7);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        // Refused asynchronously (a closed port), then at once or
        // asynchronously (IPv6 loopback without a listener on that port,
        // or no IPv6 at all), then the address that listens.
        let v6 = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), open.port());
        let addrs = vec![closed_port(), v6, open];
        let id = StreamId(3);
        let mut l =
            Local::connect_target(poll.registry(), t, id, addrs, Duration::from_secs(10)).unwrap();
        assert_eq!(l.connecting(), Some(id));
        assert!(l.deadline().is_some());
        assert!(matches!(
            drive_connect(&mut l, &mut poll, t),
            TargetConnect::Connected(got) if got == id
        ));
        assert_eq!(l.peer(), open, "connected to the address that listens");
        assert_eq!(l.stream(), Some(id));
        assert!(l.deadline().is_none(), "a connected target has no deadline");
        let (_conn, from) = listener.accept().unwrap();
        assert_eq!(
            Some(from),
            l.pipe.sock.as_ref().and_then(|s| s.local_addr().ok())
        );
    }

    #[test]
    fn a_target_whose_every_address_refuses_fails_with_the_last_error() {
        let mut poll = mio::Poll::new().unwrap();
        let t = Token(8);
        let addrs = vec![closed_port(), closed_port()];
        let mut l = Local::connect_target(
            poll.registry(),
            t,
            StreamId(5),
            addrs,
            Duration::from_secs(10),
        )
        .unwrap();
        let TargetConnect::Failed(id, e) = drive_connect(&mut l, &mut poll, t) else {
            panic!("no address listens");
        };
        assert_eq!(id, StreamId(5));
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        // Nothing to try at all is an error at once, not a hang.
        let e = Local::connect_target(poll.registry(), t, id, Vec::new(), Duration::from_secs(1))
            .err()
            .expect("no address");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_resolving_target_has_its_stream_and_lookup_but_no_socket_yet() {
        let mut poll = mio::Poll::new().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let (pool, ticket) = {
            // A real ticket, from a pool whose lookup answers at once.
            let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), Token(0)).unwrap());
            let pool = crate::resolver::ResolverPool::with_lookup(
                crate::resolver::ResolverConfig::default(),
                |_: &str, _: u16| Ok(Vec::new()),
            )
            .unwrap();
            let lookups = pool.attach::<()>(waker);
            let ticket = lookups.submit(1, (), "target.test", 80).unwrap();
            (pool, ticket)
        };
        let id = StreamId(9);
        let deadline = StdInstant::now() + Duration::from_secs(10);
        let mut l = Local::resolving(open, id, ticket, deadline);
        assert_eq!(l.lookup(), Some((id, ticket)));
        assert_eq!(l.stream(), Some(id));
        assert_eq!(l.connecting(), None);
        assert_eq!(l.deadline(), Some(deadline));
        assert!(
            l.service(None).is_none(),
            "nothing to move before it connects"
        );
        assert!(matches!(l.end_on_stop(), End::Abort(_)));
        let t = Token(9);
        l.connect_resolved(poll.registry(), t, vec![open], Duration::from_secs(10))
            .unwrap();
        assert_eq!(l.lookup(), None, "the lookup is done");
        assert_eq!(l.connecting(), Some(id));
        assert!(matches!(
            drive_connect(&mut l, &mut poll, t),
            TargetConnect::Connected(_)
        ));
        // Only a resolving target takes addresses.
        assert!(
            l.connect_resolved(poll.registry(), t, vec![open], Duration::from_secs(1))
                .is_err()
        );
        drop(pool);
    }

    #[test]
    fn refusal_codes_map_to_socks_replies_and_http_statuses() {
        use StreamErrorCode as C;
        let cases = [
            (
                C::NotAllowed,
                Socks5Reply::NotAllowed,
                ProxyStatus::Forbidden,
            ),
            (
                C::ConnectionRefused,
                Socks5Reply::ConnectionRefused,
                ProxyStatus::BadGateway,
            ),
            (
                C::HostUnreachable,
                Socks5Reply::HostUnreachable,
                ProxyStatus::BadGateway,
            ),
            (
                C::NetworkUnreachable,
                Socks5Reply::NetworkUnreachable,
                ProxyStatus::BadGateway,
            ),
            (
                C::TimedOut,
                Socks5Reply::TtlExpired,
                ProxyStatus::GatewayTimeout,
            ),
            (
                C::ResourceExhausted,
                Socks5Reply::GeneralFailure,
                ProxyStatus::Unavailable,
            ),
            (
                C::SessionClosing,
                Socks5Reply::GeneralFailure,
                ProxyStatus::Unavailable,
            ),
            (
                C::Other,
                Socks5Reply::GeneralFailure,
                ProxyStatus::BadGateway,
            ),
        ];
        for (code, socks, http) in cases {
            assert_eq!(socks_code(code), socks, "{code}");
            assert_eq!(http_status(code), http, "{code}");
        }
    }
}
