//! The firmware's application: a hytun tunnel client that fetches one page.
//!
//! [`run`] receives the byte transport (UART0 under QEMU, connected to the
//! hytun server), the boot-seeded CSPRNG and the provisioned keys, and:
//!
//! 1. parses the device's PKCS#8 key and the pinned server SPKI key into a
//!    [`ClientConfig`] with [`SessionConfig::EMBEDDED`] (1 KiB records and
//!    stream windows), shared through an `Arc` as the core expects;
//! 2. starts a [`Connection`] sized by [`TX_BUFFER`], [`RX_BUFFER`] and
//!    [`STREAMS`] (the core's minimums and one stream slot; 4448 B in the
//!    static [`CONNECTION`]) and drives it until `Event::Connected`;
//! 3. opens one stream to the build-time origin ([`crate::origin`]), sends
//!    `GET <path> HTTP/1.0`, half-closes, and checks the response as it
//!    streams in ([`crate::http`]): status `HTTP/1.x 200`, the expected
//!    marker somewhere in the body;
//! 4. closes the session with `CLOSE(Normal)`, flushes, and returns a
//!    [`Report`]; every failure maps to its own [`FirmwareError`] (exit code).
//!
//! ## Driving the core
//!
//! One loop ([`drive`]), following the contract in `hytun_core::connection`:
//! write all of `transmit_pending()` whenever `wants_transmit()`; run
//! `handle_timeout` once `poll_timeout()` has passed; otherwise, if the UART
//! holds received bytes, read up to [`READ_CHUNK`] of them and feed them
//! with `handle_input` — which consumes at most one record per call —
//! draining `poll_event` after every call. The UART driver's `read` blocks,
//! so the loop only reads after `read_ready` says a byte is waiting; while
//! nothing arrives it spins, checking the timers (the core's handshake,
//! keepalive and idle timers, and [`EXCHANGE_TIMEOUT_MS`]). Timeouts
//! therefore fire on time as long as the CPU is not inside a long core call:
//! during the client's RSA operations (≈90 M instructions) nothing else
//! runs, and a real device would want its watchdog period above that.
//!
//! ## Measurements
//!
//! Every call into the core (and the application's handling of its events)
//! is timed with [`clock::ticks`]; the sum is the client's CPU cost, free of
//! the time spent waiting for the server. Under QEMU `-icount shift=0` the
//! virtual nanoseconds the log prints are exact instruction counts.

use alloc::sync::Arc;

use defmt::Display2Format;
use embedded_io::{Read, ReadReady, Write};
use hytun_core::connection::{MIN_RX_BUFFER, MIN_TX_BUFFER};
use hytun_core::{
    ClientConfig, CloseCode, Connection, ConnectionError, Destination, Event, PrivateIdentity,
    PublicIdentity, SessionConfig, StreamError, StreamErrorCode, StreamId,
};
use rand_core::CryptoRng;
use static_cell::StaticCell;

use crate::clock;
use crate::error::FirmwareError;
use crate::http::{HttpError, Response};
use crate::keys::Provisioned;
use crate::origin;

/// Transmit buffer: the core's minimum (one handshake flight plus the
/// control-frame reserve; the 1 KiB records the server accepts fit).
pub const TX_BUFFER: usize = MIN_TX_BUFFER;
/// Receive buffer: one 1 KiB record plus header and tag (the core's minimum).
pub const RX_BUFFER: usize = MIN_RX_BUFFER;
/// Stream slots: the client opens one stream.
pub const STREAMS: usize = 1;
/// The client's connection type.
pub type Conn = Connection<TX_BUFFER, RX_BUFFER, STREAMS>;

/// The connection's home, initialised once by [`start_connection`]. The
/// value itself outlives every stack frame here, but see there for the
/// temporary copy construction still needs.
static CONNECTION: StaticCell<Conn> = StaticCell::new();

/// Bytes read from the UART per `read` call.
const READ_CHUNK: usize = 256;
/// How long the exchange (OPEN to the response's FIN) may take after
/// `Connected`. The session's keepalives keep a connection to a live server
/// open forever, so a stalled origin needs its own deadline.
const EXCHANGE_TIMEOUT_MS: u64 = 60_000;
/// Body bytes shown in the log.
const BODY_PREFIX_LOG: usize = 48;

/// What a successful run did.
#[derive(Debug, Clone, Copy, Default, defmt::Format)]
pub struct Report {
    /// Bytes written to the transport.
    pub bytes_sent: u32,
    /// Bytes read from the transport.
    pub bytes_received: u32,
    /// CPU cost of parsing the keys, in virtual ns (= instructions under
    /// `-icount shift=0`).
    pub key_setup_instructions: u64,
    /// CPU cost of the client's side of the handshake (ClientHello to
    /// Connected), in virtual ns (= instructions under `-icount shift=0`).
    pub handshake_instructions: u64,
    /// Handshake wall time (virtual), including the server's work and I/O.
    pub handshake_ms: u64,
    /// Response body bytes received.
    pub body_len: u32,
    /// Virtual time from the first response byte to the stream's FIN, ns.
    pub transfer_ns: u64,
    /// CPU cost of the client over the same span, virtual ns.
    pub transfer_cpu_ns: u64,
}

/// Where the exchange stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `Connected`.
    Handshake,
    /// Connected; the stream is not open yet (or OPEN did not fit).
    Connected,
    /// The stream is open: request going out, response coming in.
    Exchange(StreamId),
    /// The outcome is decided and `close` was called.
    Closing,
}

/// An [`Event`] after its data was consumed: no borrow of the connection.
#[derive(Clone, Copy)]
enum Owned {
    Connected,
    Opened(StreamId),
    OpenFailed(StreamId, StreamErrorCode),
    Data {
        id: StreamId,
        len: usize,
        fed: Result<(), HttpError>,
    },
    Finished(StreamId),
    Reset(StreamId, StreamErrorCode),
    GoAway(CloseCode),
    Closed(ConnectionError),
    Ignored,
}

/// The application's state, separate from the connection so event handling
/// can borrow both.
struct Client<'m> {
    phase: Phase,
    request_sent: usize,
    fin_sent: bool,
    response: Response<'m>,
    /// Set once the run's result is known; the session is then closed.
    outcome: Option<Result<(), FirmwareError>>,
    report: Report,
    /// Ticks spent in core calls and event handling.
    busy: u64,
    handshake_start: u64,
    /// When the exchange must be complete (ms), set at `Connected`.
    exchange_deadline: Option<u64>,
    /// Non-empty transport reads so far.
    reads: u32,
    /// (ticks, busy, reads) at the first response byte.
    first_data: Option<(u64, u64, u32)>,
}

/// Runs the client over `transport` until the page is fetched or it fails.
pub fn run<T: Read + ReadReady + Write>(
    transport: &mut T,
    rng: &mut impl CryptoRng,
    keys: &Provisioned,
) -> Result<Report, FirmwareError> {
    let setup_start = clock::ticks();
    let config = load_config(keys, rng)?;
    let setup_ticks = clock::ticks() - setup_start;
    defmt::info!(
        "key_setup_instructions={=u64}",
        clock::ticks_to_ns(setup_ticks)
    );

    let mut client = Client::new(origin::EXPECT_BODY.as_bytes());
    client.report.key_setup_instructions = clock::ticks_to_ns(setup_ticks);
    client.handshake_start = clock::ticks();
    let conn = start_connection(config, rng)?;
    client.busy += clock::ticks() - client.handshake_start;
    defmt::info!(
        "connection: {=usize} B in a static (TX {=usize}, RX {=usize}, {=usize} stream slot); ClientHello queued",
        core::mem::size_of::<Conn>(),
        TX_BUFFER,
        RX_BUFFER,
        STREAMS
    );
    drive(&mut client, conn, transport, rng)?;

    match client.outcome {
        Some(Ok(())) => Ok(client.report),
        Some(Err(e)) => Err(e),
        // `drive` only returns once Closed was seen, which sets the outcome.
        None => Err(FirmwareError::SessionClosed(
            conn.error().unwrap_or(ConnectionError::Truncated),
        )),
    }
}

// The steps below are `#[inline(never)]` on purpose: inlined into one
// function, their locals (RSA and X25519 temporaries, the response buffer)
// share one large frame that stays allocated for the whole run; apart, each
// frame exists only while its step runs, which keeps the stack peak low.

/// Parses the provisioned keys into the client configuration.
#[inline(never)]
fn load_config(
    keys: &Provisioned,
    rng: &mut impl CryptoRng,
) -> Result<Arc<ClientConfig>, FirmwareError> {
    let identity =
        PrivateIdentity::from_pkcs8_der(keys.device_key_pkcs8_der, rng).map_err(|e| {
            defmt::error!("device key: {}", e);
            FirmwareError::DeviceKey
        })?;
    let server = PublicIdentity::from_spki_der(keys.server_spki_der).map_err(|e| {
        defmt::error!("server key: {}", e);
        FirmwareError::ServerKey
    })?;
    defmt::info!(
        "keys: device {} RSA-{=usize}, pinned server {} RSA-{=usize}",
        Display2Format(&identity.public().id()),
        identity.public().ciphertext_len() * 8,
        Display2Format(&server.id()),
        server.ciphertext_len() * 8
    );
    Ok(Arc::new(ClientConfig::new(
        identity,
        server,
        SessionConfig::EMBEDDED,
    )))
}

/// Builds the client connection in [`CONNECTION`]; the `ClientHello`
/// (X25519 share, RSA-OAEP secret to the server) is queued at once.
#[inline(never)]
fn start_connection(
    config: Arc<ClientConfig>,
    rng: &mut impl CryptoRng,
) -> Result<&'static mut Conn, FirmwareError> {
    // `Connection::client` returns the value, so one temporary copy of it
    // still lands on this frame (the core has no in-place constructor).
    CONNECTION
        .try_init_with(|| Conn::client(config, clock::instant(), rng))
        .ok_or(FirmwareError::BoardTaken)
}

/// The I/O loop: runs until the session is closed and its last bytes are
/// written. Not inlined, so its frame stays small and separate from the
/// connection's.
#[inline(never)]
fn drive<T: Read + ReadReady + Write>(
    client: &mut Client<'_>,
    conn: &mut Conn,
    transport: &mut T,
    rng: &mut impl CryptoRng,
) -> Result<(), FirmwareError> {
    let mut buf = [0u8; READ_CHUNK];
    loop {
        // `wants_transmit` is a cheap check; `transmit_pending` would also
        // try to seal, which must not run (and be counted) on every spin.
        if conn.wants_transmit() {
            client.write_pending(transport, conn)?;
        }
        if conn.is_closed() {
            // Closed was drained and the CLOSE (if any) is written.
            break;
        }
        let now = clock::instant();
        if conn.poll_timeout().is_some_and(|deadline| now >= deadline) {
            client.timed(|| conn.handle_timeout(now));
            client.drain(conn);
            client.progress(conn);
            client.drain(conn);
            continue;
        }
        if client
            .exchange_deadline
            .is_some_and(|t| now.as_millis() >= t)
            && client.outcome.is_none()
        {
            defmt::error!(
                "no complete response within {=u64} ms of the handshake",
                EXCHANGE_TIMEOUT_MS
            );
            client.conclude(conn, Err(FirmwareError::ExchangeTimeout));
            client.drain(conn);
            continue;
        }
        if !transport.read_ready().map_err(FirmwareError::transport)? {
            core::hint::spin_loop();
            continue;
        }
        let n = transport.read(&mut buf).map_err(FirmwareError::transport)?;
        client.report.bytes_received = client.report.bytes_received.saturating_add(n as u32);
        client.reads = client.reads.wrapping_add(u32::from(n > 0));
        if n == 0 {
            conn.handle_eof();
        }
        let mut off = 0;
        while off < n {
            off += client.timed(|| conn.handle_input(&buf[off..n], now, rng));
            client.drain(conn);
        }
        client.drain(conn);
        client.progress(conn);
        client.drain(conn);
    }
    transport.flush().map_err(FirmwareError::transport)
}

impl<'m> Client<'m> {
    fn new(marker: &'m [u8]) -> Self {
        Self {
            phase: Phase::Handshake,
            request_sent: 0,
            fin_sent: false,
            response: Response::new(marker),
            outcome: None,
            report: Report::default(),
            busy: 0,
            handshake_start: 0,
            exchange_deadline: None,
            reads: 0,
            first_data: None,
        }
    }

    /// Runs `f`, adding its duration to the busy counter.
    fn timed<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let start = clock::ticks();
        let r = f();
        self.busy += clock::ticks() - start;
        r
    }

    /// Writes everything the connection has to send.
    fn write_pending<T: Write>(&mut self, t: &mut T, conn: &mut Conn) -> Result<(), FirmwareError> {
        loop {
            let start = clock::ticks();
            let pending = conn.transmit_pending();
            self.busy += clock::ticks() - start;
            if pending.is_empty() {
                return Ok(());
            }
            let n = t.write(pending).map_err(FirmwareError::transport)?;
            conn.transmit_done(n);
            self.report.bytes_sent = self.report.bytes_sent.saturating_add(n as u32);
        }
    }

    /// Decides the run's result (first decision wins) and closes the session.
    fn conclude(&mut self, conn: &mut Conn, outcome: Result<(), FirmwareError>) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
        if !conn.is_closed() {
            conn.close(if outcome.is_ok() {
                CloseCode::Normal
            } else {
                CloseCode::Other
            });
        }
        self.phase = Phase::Closing;
    }

    /// Drains the connection's events.
    fn drain(&mut self, conn: &mut Conn) {
        loop {
            let start = clock::ticks();
            let Some(event) = conn.poll_event() else {
                self.busy += clock::ticks() - start;
                return;
            };
            // Data borrows the record being read: feed it to the response
            // checker here, then continue with a borrow-free event.
            let event = match event {
                Event::Data { id, data } => {
                    if self.first_data.is_none() {
                        self.first_data = Some((start, self.busy, self.reads));
                    }
                    Owned::Data {
                        id,
                        len: data.len(),
                        fed: self.response.feed(data),
                    }
                }
                Event::Connected => Owned::Connected,
                Event::Opened { id } => Owned::Opened(id),
                Event::OpenFailed { id, code } => Owned::OpenFailed(id, code),
                Event::Finished { id } => Owned::Finished(id),
                Event::Reset { id, code } => Owned::Reset(id, code),
                Event::GoAway { code } => Owned::GoAway(code),
                Event::Closed { error } => Owned::Closed(error),
                // Writable: `progress` retries sends anyway; OpenRequest
                // and ListenRequest only reach servers. The firmware asks
                // for no listener, so the core never grants one and closes
                // the session on an INCOMING (no stream arrives here).
                Event::Writable { .. }
                | Event::OpenRequest { .. }
                | Event::ListenRequest { .. }
                | Event::ListenGranted { .. }
                | Event::ListenRefused { .. }
                | Event::IncomingStream { .. } => Owned::Ignored,
            };
            if let Owned::Data { id, len, .. } = event {
                conn.stream_consumed(id, len);
            }
            self.busy += clock::ticks() - start;
            self.on_event(conn, event);
        }
    }

    fn on_event(&mut self, conn: &mut Conn, event: Owned) {
        match event {
            Owned::Connected => {
                let now = clock::ticks();
                self.report.handshake_instructions = clock::ticks_to_ns(self.busy);
                self.report.handshake_ms =
                    clock::ticks_to_ns(now - self.handshake_start) / 1_000_000;
                defmt::info!(
                    "connected: handshake done, handshake_instructions={=u64} wall_ms={=u64} suite={}",
                    self.report.handshake_instructions,
                    self.report.handshake_ms,
                    conn.suite()
                );
                if self.phase == Phase::Handshake {
                    self.phase = Phase::Connected;
                    self.exchange_deadline = Some(clock::millis() + EXCHANGE_TIMEOUT_MS);
                }
            }
            Owned::Opened(id) => defmt::info!("stream {=u32} opened", id.0),
            Owned::OpenFailed(id, code) => {
                defmt::error!("stream {=u32} refused by the server: {}", id.0, code);
                self.conclude(conn, Err(FirmwareError::StreamRefused(code)));
            }
            Owned::Data { fed: Err(_), .. } => {
                defmt::error!(
                    "response headers do not fit in {=usize} bytes",
                    crate::http::KEEP
                );
                self.conclude(conn, Err(FirmwareError::MalformedResponse));
            }
            Owned::Finished(id) => self.on_finished(conn, id),
            Owned::Reset(id, code) => {
                defmt::error!("stream {=u32} reset by the server: {}", id.0, code);
                self.conclude(conn, Err(FirmwareError::StreamReset(code)));
            }
            Owned::GoAway(code) => defmt::warn!("server going away: {}", code),
            Owned::Closed(error) => self.on_closed(error),
            Owned::Data { fed: Ok(()), .. } | Owned::Ignored => {}
        }
    }

    fn on_finished(&mut self, conn: &mut Conn, id: StreamId) {
        let end = clock::ticks();
        let mut reads = 0;
        if let Some((start, busy_start, reads_start)) = self.first_data {
            self.report.transfer_ns = clock::ticks_to_ns(end - start);
            self.report.transfer_cpu_ns = clock::ticks_to_ns(self.busy - busy_start);
            reads = self.reads - reads_start;
        }
        let body_len = self.response.body_len();
        self.report.body_len = u32::try_from(body_len).unwrap_or(u32::MAX);
        defmt::info!(
            "stream {=u32} finished: status line `{=[u8]:a}`",
            id.0,
            self.response.status_line()
        );
        defmt::info!(
            "body: {=usize} bytes, starts `{=[u8]:a}`",
            body_len,
            self.response.body_prefix(BODY_PREFIX_LOG)
        );
        if body_len > 0 {
            let per_kib = |ns: u64| ns.saturating_mul(1024) / body_len as u64;
            defmt::info!(
                "transfer: {=u32} B in {=u64} us virtual ({=u64} us/KiB), transfer_instructions_per_kib={=u64}, uart_reads={=u32}",
                self.report.body_len,
                self.report.transfer_ns / 1000,
                per_kib(self.report.transfer_ns) / 1000,
                per_kib(self.report.transfer_cpu_ns),
                reads
            );
        }
        let result = match self.response.finish() {
            Ok(()) => {
                defmt::info!("body contains `{=str}`: ok", origin::EXPECT_BODY);
                Ok(())
            }
            Err(HttpError::BadStatus) => {
                defmt::error!("unexpected status (want HTTP/1.x 200)");
                Err(FirmwareError::BadStatus)
            }
            Err(HttpError::MarkerMissing) => {
                defmt::error!("body does not contain `{=str}`", origin::EXPECT_BODY);
                Err(FirmwareError::BodyMismatch)
            }
            Err(HttpError::Malformed) => {
                defmt::error!("response ended inside its header block");
                Err(FirmwareError::MalformedResponse)
            }
        };
        self.conclude(conn, result);
    }

    fn on_closed(&mut self, error: ConnectionError) {
        match (self.outcome, self.phase) {
            (Some(Ok(())), _) if error == ConnectionError::LocallyClosed(CloseCode::Normal) => {
                defmt::info!("session closed (CLOSE Normal sent)");
            }
            (Some(_), _) => defmt::warn!("session closed: {}", Display2Format(&error)),
            (None, Phase::Handshake) => {
                defmt::error!("handshake failed: {} [{}]", Display2Format(&error), error);
                self.outcome = Some(Err(FirmwareError::Handshake(error)));
            }
            (None, _) => {
                defmt::error!(
                    "session closed early: {} [{}]",
                    Display2Format(&error),
                    error
                );
                self.outcome = Some(Err(FirmwareError::SessionClosed(error)));
            }
        }
        self.phase = Phase::Closing;
    }

    /// Moves the exchange forward: opens the stream, sends the request,
    /// half-closes. Calls the core refuses for lack of room are retried on
    /// the next pass.
    fn progress(&mut self, conn: &mut Conn) {
        let start = clock::ticks();
        let result = self.try_progress(conn);
        self.busy += clock::ticks() - start;
        if let Err(e) = result {
            defmt::error!("stream call refused: {}", e);
            self.conclude(conn, Err(FirmwareError::Stream(e)));
        }
    }

    fn try_progress(&mut self, conn: &mut Conn) -> Result<(), StreamError> {
        if self.phase == Phase::Connected {
            let dest = Destination {
                host: origin::HOST,
                port: origin::PORT,
            };
            match conn.open_stream(dest) {
                Ok(id) => {
                    defmt::info!("stream {=u32}: OPEN {}", id.0, dest);
                    self.phase = Phase::Exchange(id);
                }
                Err(StreamError::Blocked) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        let Phase::Exchange(id) = self.phase else {
            return Ok(());
        };
        let request = origin::REQUEST.as_bytes();
        if self.request_sent < request.len() {
            self.request_sent += conn.stream_send(id, &request[self.request_sent..])?;
        }
        if self.request_sent == request.len() && !self.fin_sent {
            conn.stream_finish(id)?;
            self.fin_sent = true;
            defmt::info!(
                "stream {=u32}: sent `GET {=str} HTTP/1.0` ({=usize} B) and FIN",
                id.0,
                origin::PATH,
                request.len()
            );
        }
        Ok(())
    }
}
