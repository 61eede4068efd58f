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
//! ## Device as server
//!
//! A firmware built with `HYTUN_REVERSE_PORT` ([`crate::serve::LISTEN`])
//! serves instead of fetching (step 3): it asks the server for a remote
//! listener (`LISTEN`), and every connection the server accepts there
//! arrives as an INCOMING stream. Up to [`serve::SLOTS`] are accepted at
//! once (`OPEN_OK`, which grants the stream window), more are refused with
//! `OPEN_FAIL ResourceExhausted`. Each accepted stream's request head is
//! read without being stored ([`serve::RequestHead`]), answered from a
//! fixed buffer with the status page ([`serve::render`]: uptime, tunnel
//! and stream byte counters, a request counter) and `FIN`; the slot is
//! free again once the peer's `FIN` (or `RESET`) has arrived too. After
//! [`serve::REQUESTS`] pages the session is closed with `CLOSE(Normal)`.
//! A refused listener ends the run with its code; the whole serving phase
//! shares the [`EXCHANGE_TIMEOUT_MS`] deadline.
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
    ClientConfig, CloseCode, Connection, ConnectionError, Destination, Event, ListenErrorCode,
    ListenId, PrivateIdentity, PublicIdentity, SessionConfig, StreamError, StreamErrorCode,
    StreamId,
};
use rand_core::CryptoRng;
use static_cell::StaticCell;

use crate::clock;
use crate::error::FirmwareError;
use crate::http::{HttpError, Response};
use crate::keys::Provisioned;
use crate::origin;
use crate::serve::{self, RequestHead, Status};

/// Transmit buffer: the core's minimum (one handshake flight plus the
/// control-frame reserve; the 1 KiB records the server accepts fit).
pub const TX_BUFFER: usize = MIN_TX_BUFFER;
/// Receive buffer: one 1 KiB record plus header and tag (the core's minimum).
pub const RX_BUFFER: usize = MIN_RX_BUFFER;
/// Stream slots: the client opens one stream; a serving device needs one
/// per served stream ([`serve::SLOTS`]) plus room for INCOMING streams it
/// refuses while those are busy. The core fails the session (protocol
/// violation `TooManyStreams`) when the server opens a stream while this
/// many of its streams are live, even though the server only knows its own
/// `max_streams`, so this bounds how many connections at once the remote
/// listener survives (two served, two refused, the fifth ends the session).
pub const STREAMS: usize = serve::SLOTS + 2;
/// The client's connection type.
pub type Conn = Connection<TX_BUFFER, RX_BUFFER, STREAMS>;

/// The connection's home, initialised once by [`start_connection`]. The
/// value itself outlives every stack frame here, but see there for the
/// temporary copy construction still needs.
static CONNECTION: StaticCell<Conn> = StaticCell::new();

/// Bytes read from the UART per `read` call.
const READ_CHUNK: usize = 256;
/// How long the exchange (OPEN to the response's FIN; when serving, the
/// LISTEN to the last page's end) may take after `Connected`. The
/// session's keepalives keep a connection to a live server open forever,
/// so a stalled origin needs its own deadline.
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
    /// Status pages served (device as server).
    pub pages_served: u32,
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
    /// Serving: the listener was requested (device as server).
    Serving(ListenId),
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
    ListenGranted(ListenId),
    ListenRefused(ListenId, ListenErrorCode),
    Incoming(StreamId),
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
    /// The streams being served (device as server).
    slots: &'static mut [Option<Served>; serve::SLOTS],
    /// Status pages rendered so far (the page's request counter).
    pages_rendered: u32,
    /// The listener was requested: stream events belong to served streams.
    serving: bool,
}

/// One stream being served (device as server).
struct Served {
    id: StreamId,
    head: RequestHead,
    /// The rendered response, empty until the head is decided.
    response: serve::Response,
    status: Option<Status>,
    sent: usize,
    fin_sent: bool,
    /// The peer's FIN (or RESET) arrived.
    peer_done: bool,
}

/// The serving slots' home: fixed, outside every stack frame.
static SLOTS: StaticCell<[Option<Served>; serve::SLOTS]> = StaticCell::new();

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

    let slots = SLOTS
        .try_init_with(|| [const { None }; serve::SLOTS])
        .ok_or(FirmwareError::BoardTaken)?;
    let mut client = Client::new(origin::EXPECT_BODY.as_bytes(), slots);
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
    // The session's stream limit is the stream table's size (the core
    // applies the smaller of this and the server's limit to both spaces).
    let session = SessionConfig {
        max_streams: STREAMS as u16,
        ..SessionConfig::EMBEDDED
    };
    Ok(Arc::new(ClientConfig::new(identity, server, session)))
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
    fn new(marker: &'m [u8], slots: &'static mut [Option<Served>; serve::SLOTS]) -> Self {
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
            slots,
            pages_rendered: 0,
            serving: false,
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
                    let fed = if self.serving {
                        self.feed_served(id, data);
                        Ok(())
                    } else {
                        self.response.feed(data)
                    };
                    Owned::Data {
                        id,
                        len: data.len(),
                        fed,
                    }
                }
                Event::Connected => Owned::Connected,
                Event::Opened { id } => Owned::Opened(id),
                Event::OpenFailed { id, code } => Owned::OpenFailed(id, code),
                Event::Finished { id } => Owned::Finished(id),
                Event::Reset { id, code } => Owned::Reset(id, code),
                Event::GoAway { code } => Owned::GoAway(code),
                Event::Closed { error } => Owned::Closed(error),
                Event::ListenGranted { id } => Owned::ListenGranted(id),
                Event::ListenRefused { id, code } => Owned::ListenRefused(id, code),
                Event::IncomingStream { id, origin, .. } => {
                    defmt::info!("stream {=u32}: INCOMING from {}", id.0, origin);
                    Owned::Incoming(id)
                }
                // Writable: `progress` retries sends anyway; OpenRequest
                // and ListenRequest only reach servers.
                Event::Writable { .. }
                | Event::OpenRequest { .. }
                | Event::ListenRequest { .. } => Owned::Ignored,
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
            Owned::Finished(id) if self.is_serving() => self.on_served_finished(id),
            Owned::Reset(id, code) if self.is_serving() => self.on_served_reset(id, code),
            Owned::Finished(id) => self.on_finished(conn, id),
            Owned::Reset(id, code) => {
                defmt::error!("stream {=u32} reset by the server: {}", id.0, code);
                self.conclude(conn, Err(FirmwareError::StreamReset(code)));
            }
            Owned::ListenGranted(id) => {
                if let Some(bind) = serve::LISTEN {
                    defmt::info!(
                        "listener {=u32} granted: the server listens on {} for this device",
                        id.0,
                        bind
                    );
                }
            }
            Owned::ListenRefused(id, code) => {
                defmt::error!("listener {=u32} refused by the server: {}", id.0, code);
                self.conclude(conn, Err(FirmwareError::ListenRefused(code)));
            }
            Owned::Incoming(id) => self.on_incoming(conn, id),
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
        if let (Phase::Connected, Some(bind)) = (self.phase, serve::LISTEN) {
            match conn.request_listen(bind) {
                Ok(id) => {
                    defmt::info!("listener {=u32}: LISTEN {}", id.0, bind);
                    self.phase = Phase::Serving(id);
                    self.serving = true;
                }
                Err(StreamError::Blocked) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if let Phase::Serving(_) = self.phase {
            self.serve_progress(conn);
            return Ok(());
        }
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

    fn is_serving(&self) -> bool {
        self.serving
    }

    fn slot(&mut self, id: StreamId) -> Option<&mut Served> {
        self.slots.iter_mut().flatten().find(|s| s.id == id)
    }

    /// An INCOMING stream: accepted into a free slot, refused otherwise
    /// (also when not serving: the core only delivers INCOMING for a
    /// listener it holds, so that cannot happen today).
    fn on_incoming(&mut self, conn: &mut Conn, id: StreamId) {
        let free = self.slots.iter().position(Option::is_none);
        let (Some(free), true) = (free, self.is_serving() && self.outcome.is_none()) else {
            defmt::warn!(
                "stream {=u32}: all {=usize} serving slots busy, refused (ResourceExhausted)",
                id.0,
                serve::SLOTS
            );
            if let Err(e) = conn.refuse_stream(id, StreamErrorCode::ResourceExhausted) {
                defmt::warn!("stream {=u32}: refusal failed: {}", id.0, e);
            }
            return;
        };
        match conn.accept_stream(id) {
            Ok(()) => {
                defmt::info!("stream {=u32}: accepted (slot {=usize})", id.0, free);
                self.slots[free] = Some(Served {
                    id,
                    head: RequestHead::new(),
                    response: serve::Response::new(),
                    status: None,
                    sent: 0,
                    fin_sent: false,
                    peer_done: false,
                });
            }
            Err(e) => defmt::warn!("stream {=u32}: accept failed: {}", id.0, e),
        }
    }

    /// Request bytes on a served stream (bytes after the head are dropped).
    fn feed_served(&mut self, id: StreamId, data: &[u8]) {
        let Some(slot) = self.slot(id) else { return };
        if let Some(status) = slot.head.feed(data) {
            slot.status = Some(status);
        }
    }

    fn on_served_finished(&mut self, id: StreamId) {
        let Some(slot) = self.slot(id) else { return };
        slot.peer_done = true;
        if let Some(status) = slot.head.finish() {
            defmt::warn!("stream {=u32}: request ended inside its head", id.0);
            slot.status = Some(status);
        }
    }

    fn on_served_reset(&mut self, id: StreamId, code: StreamErrorCode) {
        for slot in self.slots.iter_mut() {
            if slot.as_ref().is_some_and(|s| s.id == id) {
                defmt::warn!("stream {=u32}: reset by the server: {}", id.0, code);
                *slot = None;
            }
        }
    }

    /// Renders decided responses, sends them with FIN, frees the slots of
    /// finished streams and closes the session after the last page.
    fn serve_progress(&mut self, conn: &mut Conn) {
        let stats = conn.stats();
        for i in 0..serve::SLOTS {
            let Some(slot) = self.slots[i].as_mut() else {
                continue;
            };
            if let (Some(status), true) = (slot.status, slot.response.is_empty()) {
                if status == Status::Ok {
                    self.pages_rendered += 1;
                }
                let page = serve::PageStats {
                    uptime_ms: clock::millis(),
                    request: self.pages_rendered,
                    tunnel_in: self.report.bytes_received,
                    tunnel_out: self.report.bytes_sent,
                    payload_in: stats.payload_received,
                    payload_out: stats.payload_sent,
                };
                serve::render(status, &page, serve::BOARD, &mut slot.response);
                defmt::info!(
                    "stream {=u32}: request {}, answering {=usize} B (status pages so far: {=u32})",
                    slot.id.0,
                    status,
                    slot.response.len(),
                    self.pages_rendered
                );
            }
            let id = slot.id;
            let sent = if slot.response.is_empty() {
                Ok(())
            } else {
                send_response(conn, slot)
            };
            if let Err(e) = sent {
                // The stream is broken (e.g. reset in the same record):
                // drop it, the session goes on.
                defmt::warn!("stream {=u32}: send failed ({}), reset", id.0, e);
                let _ = conn.stream_reset(id, StreamErrorCode::Cancelled);
                self.slots[i] = None;
                continue;
            }
            if slot.fin_sent && slot.peer_done {
                if slot.status == Some(Status::Ok) {
                    self.report.pages_served += 1;
                }
                defmt::info!(
                    "stream {=u32}: done, pages_served={=u32}",
                    id.0,
                    self.report.pages_served
                );
                self.slots[i] = None;
            }
        }
        if self.report.pages_served >= serve::REQUESTS
            && self.slots.iter().all(Option::is_none)
            && self.outcome.is_none()
        {
            defmt::info!(
                "served {=u32} status pages: closing the session",
                self.report.pages_served
            );
            self.conclude(conn, Ok(()));
        }
    }
}

/// Sends what is left of a slot's response, then its FIN; a full transmit
/// buffer or window leaves the rest for the next pass.
fn send_response(conn: &mut Conn, slot: &mut Served) -> Result<(), StreamError> {
    if slot.sent < slot.response.len() {
        slot.sent += conn.stream_send(slot.id, &slot.response[slot.sent..])?;
    }
    if slot.sent == slot.response.len() && !slot.fin_sent {
        match conn.stream_finish(slot.id) {
            Ok(()) => slot.fin_sent = true,
            Err(StreamError::Blocked) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
