//! One tunnel session carrying one stream, for `hytun fetch`: no local
//! listener, no client loop. The session is set up with retries (a busy or
//! rate-limiting server is retried with backoff until the fetch's deadline;
//! key errors and an unreachable server end it at once), then a single
//! stream is driven directly and its end reported exactly: an
//! authenticated FIN, a RESET, a refusal, or the loss of the session.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use hytun_core::{
    AlertReason, CloseCode, ConnectionError, Destination, Event, HandshakeError, HostConnection,
    StreamError, StreamErrorCode, StreamId,
};
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::backoff::Backoff;
use crate::client::{ClientOptions, describe_failure};
use crate::runtime::{Clock, os_rng, random_u64};

const SOCK: Token = Token(0);
const READ_CHUNK: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no session could be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupError {
    /// The server cannot be reached at all (refused, unresolvable, …).
    Unreachable(String),
    /// The server refused our key or does not hold the pinned key.
    Authentication(String),
    /// The server stayed busy (or rate-limited us) until the deadline.
    Busy(String),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Unreachable(m) | SetupError::Authentication(m) | SetupError::Busy(m) => {
                f.write_str(m)
            }
        }
    }
}

/// How the stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server sent an authenticated FIN: the origin closed cleanly.
    Fin,
    /// The consumer said it has everything it needs.
    Satisfied,
    /// The server could not connect the stream.
    Refused(StreamErrorCode),
    /// The server reset the stream (the origin reset its connection, or
    /// the server failed it).
    Reset(StreamErrorCode),
    /// The session ended while the stream was open.
    Lost(ConnectionError),
    /// The session would not open the stream (e.g. the server is going
    /// away).
    CannotOpen(StreamError),
}

/// What the consumer of stream data wants next.
pub enum Flow {
    /// Keep delivering.
    More,
    /// Enough: end the stream and the session.
    Done,
}

/// One established session.
pub struct Session {
    poll: Poll,
    sock: TcpStream,
    conn: Box<HostConnection>,
    clock: Clock,
    scratch: Vec<u8>,
    rx_off: usize,
    rx_len: usize,
    eof: bool,
}

/// True for handshake failures a retry cannot fix.
fn is_key_error(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::Handshake(
            HandshakeError::PeerAlert(AlertReason::UnknownServerKey | AlertReason::Unauthorized, _)
                | HandshakeError::ServerAuthenticationFailed
                | HandshakeError::UnknownServerKey(_)
        )
    )
}

enum Attempt {
    Up(Session),
    /// Worth retrying (busy, rate limited, silent close, timeout).
    Retry(String),
    Fatal(SetupError),
}

impl Session {
    /// Sets up a session, retrying a busy server until `deadline`.
    pub fn establish(opts: &ClientOptions, deadline: StdInstant) -> Result<Session, SetupError> {
        let server = opts.server.to_string();
        let addr = (opts.server.host.to_string().as_str(), opts.server.port)
            .to_socket_addrs()
            .map_err(|e| {
                SetupError::Unreachable(format!(
                    "cannot establish a tunnel to {server}: cannot resolve it: {e}"
                ))
            })?
            .next()
            .ok_or_else(|| {
                SetupError::Unreachable(format!(
                    "cannot establish a tunnel to {server}: it resolved to no address"
                ))
            })?;
        let mut backoff = Backoff::new();
        loop {
            match Self::attempt(opts, addr, deadline) {
                Attempt::Up(s) => return Ok(s),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Retry(why) => {
                    let delay = backoff.next_delay(random_u64());
                    if StdInstant::now() + delay >= deadline {
                        return Err(SetupError::Busy(format!(
                            "cannot establish a tunnel to {server}: {why}; gave up after {} attempts",
                            backoff.attempts()
                        )));
                    }
                    warn!("{why}; retrying in {} ms", delay.as_millis());
                    thread::sleep(delay);
                }
            }
        }
    }

    fn attempt(opts: &ClientOptions, addr: SocketAddr, deadline: StdInstant) -> Attempt {
        let server = &opts.server;
        let unreachable = |e: io::Error| {
            Attempt::Fatal(SetupError::Unreachable(format!(
                "cannot establish a tunnel to {server}: server {addr} unreachable: {e}"
            )))
        };
        let setup = || -> io::Result<(Poll, TcpStream)> {
            let poll = Poll::new()?;
            let mut sock = TcpStream::connect(addr)?;
            poll.registry()
                .register(&mut sock, SOCK, Interest::READABLE | Interest::WRITABLE)?;
            Ok((poll, sock))
        };
        let (mut poll, sock) = match setup() {
            Ok(v) => v,
            Err(e) => return unreachable(e),
        };
        // Wait for the TCP connect.
        let connect_deadline = (StdInstant::now() + CONNECT_TIMEOUT).min(deadline);
        let mut events = Events::with_capacity(8);
        loop {
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => return unreachable(e),
                Ok(None) => {}
            }
            match sock.peer_addr() {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return unreachable(e),
            }
            let left = connect_deadline.saturating_duration_since(StdInstant::now());
            if left.is_zero() {
                return unreachable(io::ErrorKind::TimedOut.into());
            }
            if let Err(e) = poll.poll(&mut events, Some(left))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return unreachable(e);
            }
        }
        let _ = sock.set_nodelay(true);
        let clock = Clock::default();
        let conn = Box::new(HostConnection::client(
            opts.core.clone(),
            clock.now(),
            &mut os_rng(),
        ));
        let mut s = Session {
            poll,
            sock,
            conn,
            clock,
            scratch: vec![0; READ_CHUNK],
            rx_off: 0,
            rx_len: 0,
            eof: false,
        };
        let started = StdInstant::now();
        loop {
            while let Some(ev) = s.conn.poll_event() {
                match ev {
                    Event::Connected => {
                        info!(
                            "tunnel up to {addr} (server key {}, handshake {} ms)",
                            s.conn.peer_key().map(|k| k.to_string()).unwrap_or_default(),
                            started.elapsed().as_millis()
                        );
                        return Attempt::Up(s);
                    }
                    Event::Closed { error } => {
                        s.flush_close();
                        return classify(server, &opts.core.server.id().to_string(), error);
                    }
                    _ => {}
                }
            }
            if StdInstant::now() >= deadline {
                return Attempt::Retry(format!("no handshake with {server} before the deadline"));
            }
            s.turn();
        }
    }

    /// Opens one stream to `dest`, sends `request` on it, and passes every
    /// byte of the answer to `on_data` until the stream ends or `on_data`
    /// returns [`Flow::Done`].
    pub fn exchange(
        &mut self,
        dest: Destination<'_>,
        request: &[u8],
        on_data: &mut dyn FnMut(&[u8]) -> Flow,
    ) -> StreamEnd {
        let id: StreamId = match self.conn.open_stream(dest) {
            Ok(id) => id,
            Err(e) => return StreamEnd::CannotOpen(e),
        };
        let mut sent = 0;
        loop {
            while sent < request.len() {
                match self.conn.stream_send(id, &request[sent..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sent += n,
                }
            }
            while let Some(ev) = self.conn.poll_event() {
                match ev {
                    Event::Data { id: sid, data } if sid == id => {
                        let n = data.len();
                        let flow = on_data(data);
                        self.conn.stream_consumed(id, n);
                        if let Flow::Done = flow {
                            return StreamEnd::Satisfied;
                        }
                    }
                    Event::Finished { id: sid } if sid == id => return StreamEnd::Fin,
                    Event::Reset { id: sid, code } if sid == id => return StreamEnd::Reset(code),
                    Event::OpenFailed { id: sid, code } if sid == id => {
                        return StreamEnd::Refused(code);
                    }
                    Event::Closed { error } => {
                        self.flush_close();
                        return StreamEnd::Lost(error);
                    }
                    _ => {}
                }
            }
            self.turn();
        }
    }

    /// Ends the session with an authenticated CLOSE (best effort).
    pub fn close(mut self) {
        if !self.conn.is_closed() {
            self.conn.close(CloseCode::Normal);
        }
        while self.conn.poll_event().is_some() {}
        self.flush_close();
    }

    /// One loop turn: write what is pending, then feed one record's worth
    /// of input (already read bytes first, else one socket read, else wait
    /// for the socket or a timer). The caller drains events after each turn,
    /// as the core asks.
    fn turn(&mut self) {
        self.write_pending();
        if self.conn.is_closed() {
            return;
        }
        if self.rx_off < self.rx_len {
            self.feed();
            return;
        }
        if !self.eof {
            match self.sock.read(&mut self.scratch) {
                Ok(0) => {
                    self.eof = true;
                    self.conn.handle_eof();
                    return;
                }
                Ok(n) => {
                    self.rx_off = 0;
                    self.rx_len = n;
                    self.feed();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
                Err(e) => {
                    debug!("tunnel read error: {e}");
                    self.eof = true;
                    self.conn.handle_eof();
                    return;
                }
            }
        }
        let timeout = self
            .conn
            .poll_timeout()
            .map_or(Duration::from_secs(1), |t| self.clock.until(t));
        let mut events = Events::with_capacity(8);
        match self.poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Without a working poll the session cannot go on.
                warn!("event loop failed: {e}");
                self.eof = true;
                self.conn.handle_eof();
                return;
            }
        }
        let now = self.clock.now();
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
    }

    /// Feeds buffered input to the core (it stops after one record).
    fn feed(&mut self) {
        let now = self.clock.now();
        let used =
            self.conn
                .handle_input(&self.scratch[self.rx_off..self.rx_len], now, &mut os_rng());
        self.rx_off = if used == 0 {
            self.rx_len
        } else {
            self.rx_off + used
        };
    }

    fn write_pending(&mut self) {
        loop {
            let pending = self.conn.transmit_pending();
            if pending.is_empty() {
                return;
            }
            match self.sock.write(pending) {
                Ok(n) => self.conn.transmit_done(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!("tunnel write error: {e}");
                    self.eof = true;
                    self.conn.handle_eof();
                    return;
                }
            }
        }
    }

    /// Best effort: send a final CLOSE that is already queued.
    fn flush_close(&mut self) {
        let pending = self.conn.transmit_pending().to_vec();
        let _ = self.sock.write(&pending);
    }
}

fn classify(server: &crate::config::Endpoint, pinned: &str, error: ConnectionError) -> Attempt {
    if is_key_error(&error) {
        let hint = match error {
            ConnectionError::Handshake(HandshakeError::PeerAlert(
                AlertReason::UnknownServerKey,
                _,
            )) => format!("; we pinned server key {pinned} but the server holds a different key"),
            ConnectionError::Handshake(HandshakeError::PeerAlert(AlertReason::Unauthorized, _)) => {
                "; add our public key to the server's authorized_keys".into()
            }
            _ => String::new(),
        };
        return Attempt::Fatal(SetupError::Authentication(format!(
            "{}{hint}",
            describe_failure(server, &error)
        )));
    }
    match error {
        ConnectionError::Handshake(HandshakeError::PeerAlert(AlertReason::Busy, _)) => {
            Attempt::Retry(format!("server {server} is busy"))
        }
        ConnectionError::Truncated => Attempt::Retry(format!(
            "server {server} closed the connection before the handshake (busy or rate limiting)"
        )),
        e => Attempt::Retry(describe_failure(server, &e)),
    }
}
