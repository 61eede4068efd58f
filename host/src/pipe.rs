//! [`Pipe`]: one local TCP socket attached to a tunnel stream, and the two
//! copy loops between them.
//!
//! * tunnel → socket: stream data is queued and written once per input
//!   batch; what the socket cannot take now is kept (bounded by the stream
//!   window, because credit is returned to the peer only for bytes the
//!   socket accepted). A FIN from the tunnel becomes `shutdown(Write)` once the
//!   buffer is empty.
//! * socket → tunnel: the socket is read straight into the record being
//!   built (`stream_send_with`), only as far as the stream has credit and
//!   the tunnel has transmit space; otherwise the pipe is marked blocked
//!   and retried when room appears. EOF becomes a stream FIN. A short
//!   read ends the pass (the socket's queue is empty and edge-triggered
//!   readiness reports the next arrival), unless the poll event said the
//!   peer already closed: then the pass reads on to the EOF, which no
//!   later event would announce.
//! * ends: only the peer's authenticated FIN becomes `shutdown(Write)`.
//!   Every other end (a RESET, a lost or closed session, a refusal after
//!   data was accepted) calls [`Pipe::abort`], so closing the socket sends
//!   RST and the application reads `ECONNRESET`, never a clean EOF.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use hytun_core::memory::Memory;
use hytun_core::{Connection, StreamError, StreamId};
use mio::net::TcpStream;
use socket2::SockRef;

/// What a read pass from the socket ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Read until the socket had nothing more (WouldBlock).
    Drained,
    /// Stopped: no stream credit or transmit space; retry later.
    Blocked,
    /// The socket reached EOF; FIN was sent on the stream.
    Eof,
}

/// What one poll event reported for a socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readiness {
    /// Data (or EOF) can be read.
    pub readable: bool,
    /// The socket can take writes (or its write side is closed).
    pub writable: bool,
    /// The peer's FIN or an error is queued: read on to it.
    pub read_closed: bool,
}

/// A local socket bound to a stream.
#[derive(Debug)]
pub struct Pipe {
    /// The socket; `None` while an upstream connect is still pending.
    pub sock: Option<TcpStream>,
    to_sock: Vec<u8>,
    to_sock_off: usize,
    /// Leading bytes of `to_sock` that are local (e.g. a SOCKS reply), not
    /// tunnel data, so they return no credit.
    local_prefix: usize,
    /// The peer finished its side: shut our write side once drained.
    pub tunnel_fin: bool,
    shut_write: bool,
    /// The socket hit EOF (FIN sent on the stream) or the stream can no
    /// longer take data.
    pub sock_eof: bool,
    /// Reading stopped for lack of credit or transmit space.
    pub read_blocked: bool,
    /// A poll event reported the peer's FIN (or an error): read to EOF
    /// instead of stopping at a short read.
    read_closed: bool,
    /// Tunnel bytes written to the socket.
    pub bytes_to_sock: u64,
    /// Socket bytes sent into the tunnel.
    pub bytes_from_sock: u64,
    /// When the buffer last became empty (its capacity is kept until the
    /// idle sweep).
    drained_at: Option<std::time::Instant>,
}

impl Pipe {
    /// A pipe for a connected socket (or `None` until connected).
    pub fn new(sock: Option<TcpStream>) -> Self {
        Pipe {
            sock,
            to_sock: Vec::new(),
            to_sock_off: 0,
            local_prefix: 0,
            tunnel_fin: false,
            shut_write: false,
            sock_eof: false,
            read_blocked: false,
            read_closed: false,
            bytes_to_sock: 0,
            bytes_from_sock: 0,
            drained_at: None,
        }
    }

    /// Gives the buffer's memory back if it has been empty since before
    /// `t` (the driver's idle sweep).
    pub fn release_if_drained_before(&mut self, t: std::time::Instant) {
        if self.buffered() == 0 && self.drained_at.is_some_and(|d| d < t) {
            self.to_sock = Vec::new();
            self.to_sock_off = 0;
            self.drained_at = None;
        }
    }

    /// Bytes waiting for the socket.
    pub fn buffered(&self) -> usize {
        self.to_sock.len() - self.to_sock_off
    }

    /// Heap bytes held by this pipe's buffer.
    pub fn capacity(&self) -> usize {
        self.to_sock.capacity()
    }

    /// True when both directions are finished and nothing is buffered.
    pub fn is_done(&self) -> bool {
        self.sock_eof && self.shut_write && self.buffered() == 0
    }

    /// Makes the eventual close abortive: `SO_LINGER` 0, so dropping the
    /// socket sends RST (the application reads `ECONNRESET`) instead of a
    /// FIN that would look like a complete stream. Buffered bytes are
    /// discarded. Call on every end other than a clean one in both
    /// directions, then drop the pipe (after deregistering the socket).
    pub fn abort(&mut self) {
        self.to_sock = Vec::new();
        self.to_sock_off = 0;
        self.local_prefix = 0;
        if let Some(sock) = self.sock.as_ref() {
            // Fails only for a socket that is already gone; then the close
            // has nothing left to report either way.
            let _ = SockRef::from(sock).set_linger(Some(Duration::ZERO));
        }
    }

    /// Queues local (non-tunnel) bytes ahead of tunnel data.
    pub fn queue_local(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.buffered(), self.local_prefix);
        self.to_sock.extend_from_slice(bytes);
        self.local_prefix += bytes.len();
    }

    /// Queues tunnel data for the socket. The driver flushes once per batch
    /// of input (all records of one socket read), so several records become
    /// one `write` — fewer syscalls and fewer wake-ups of the reader. Memory
    /// stays bounded by the stream window: credit returns only on flush.
    pub fn queue_tunnel(&mut self, data: &[u8]) {
        self.to_sock.extend_from_slice(data);
    }

    /// Writes buffered bytes; returns the tunnel bytes among them (to report
    /// as consumed). Applies a pending shutdown once empty.
    pub fn flush(&mut self) -> io::Result<usize> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(0);
        };
        let mut tunnel_bytes = 0;
        while self.to_sock_off < self.to_sock.len() {
            match sock.write(&self.to_sock[self.to_sock_off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let local = n.min(self.local_prefix);
                    self.local_prefix -= local;
                    tunnel_bytes += n - local;
                    self.bytes_to_sock += (n - local) as u64;
                    self.to_sock_off += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.to_sock_off == self.to_sock.len() {
            // Keep the capacity while the stream is busy: freeing it after
            // every batch made each batch grow a fresh (multi-MiB, with
            // grown windows) buffer again, with its copies and page faults
            // (16 % of the server's time in a profile). Idle buffers are
            // given back by `release_if_drained_before`.
            self.to_sock.clear();
            self.to_sock_off = 0;
            self.drained_at = Some(std::time::Instant::now());
            if self.tunnel_fin && !self.shut_write {
                self.shut_write = true;
                // ENOTCONN here means the peer is gone already; the read side
                // will report it.
                let _ = sock.shutdown(Shutdown::Write);
            }
        }
        Ok(tunnel_bytes)
    }

    /// Notes what a poll event said: `read_closed` means the peer's FIN or
    /// an error is already queued behind any data.
    pub fn note_event(&mut self, read_closed: bool) {
        self.read_closed |= read_closed;
    }

    /// Reads from the socket into the stream while credit and space last.
    pub fn read_into<const TX: usize, const RX: usize, const S: usize, M: Memory>(
        &mut self,
        conn: &mut Connection<TX, RX, S, M>,
        id: StreamId,
    ) -> io::Result<ReadOutcome> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(ReadOutcome::Drained);
        };
        if self.sock_eof {
            return Ok(ReadOutcome::Eof);
        }
        loop {
            let cap = conn.stream_send_capacity(id);
            if cap == 0 {
                self.read_blocked = true;
                return Ok(ReadOutcome::Blocked);
            }
            let mut eof = false;
            let mut would_block = false;
            let mut error = None;
            // One call fills as many records as credit and the transmit
            // buffer allow (`cap` spans them), one socket read per record,
            // and the tunnel is written once afterwards.
            let stop_at_short_read = !self.read_closed;
            let sent = conn.stream_send_with(id, cap, |buf| {
                loop {
                    match sock.read(buf) {
                        Ok(0) => {
                            eof = true;
                            return 0;
                        }
                        Ok(n) => {
                            // A short read empties the socket's queue; with
                            // edge-triggered readiness the next arrival is
                            // reported again, so reading once more would
                            // only return EAGAIN.
                            if n < buf.len() && stop_at_short_read {
                                would_block = true;
                            }
                            return n;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            would_block = true;
                            return 0;
                        }
                        Err(e) => {
                            error = Some(e);
                            return 0;
                        }
                    }
                }
            });
            match sent {
                Ok(0) if !eof && !would_block && error.is_none() => {
                    // No room after all (e.g. control frames took it).
                    self.read_blocked = true;
                    return Ok(ReadOutcome::Blocked);
                }
                Ok(n) => self.bytes_from_sock += n as u64,
                Err(StreamError::NotWritable | StreamError::UnknownStream) => {
                    // The stream ended under us (reset by the peer).
                    self.sock_eof = true;
                    return Ok(ReadOutcome::Eof);
                }
                Err(e) => return Err(io::Error::other(e)),
            }
            if let Some(e) = error {
                return Err(e);
            }
            if eof {
                self.sock_eof = true;
                self.read_blocked = false;
                // The stream may already be finished/reset; nothing to do then.
                let _ = conn.stream_finish(id);
                return Ok(ReadOutcome::Eof);
            }
            if would_block {
                self.read_blocked = false;
                return Ok(ReadOutcome::Drained);
            }
        }
    }
}
