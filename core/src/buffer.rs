//! The connection's two byte buffers, of fixed capacity, kept where the
//! connection's [`Memory`](crate::memory::Memory) choice says (inline
//! arrays, or heap taken on use and released when idle): [`TxBuffer`]
//! collects outgoing handshake messages and records, and builds the open
//! record's frames in place so sealing is in place too; [`RxBuffer`]
//! assembles one incoming handshake message or record at a time.

use crate::crypto::{CryptoError, RecordSealer};
use crate::memory::ByteStore;
use crate::wire::WireError;
use crate::wire::frame::{DATA_OVERHEAD, Frame, StreamId, emit_data_header};
use crate::wire::record::{HEADER_LEN as RECORD_HEADER, OVERHEAD, TAG_LEN, header};

/// Bytes kept free in every record for a trailing KEY_UPDATE frame.
pub(crate) const KEY_UPDATE_RESERVE: usize = 2;

/// Outgoing bytes: `[start, sealed)` ready to write, `[open, end)` the
/// record under construction (header placeholder + plaintext frames).
pub(crate) struct TxBuffer<B: ByteStore> {
    buf: B,
    start: usize,
    end: usize,
    open: Option<usize>,
}

impl<B: ByteStore> TxBuffer<B> {
    const N: usize = B::LEN;

    pub(crate) const fn new() -> Self {
        TxBuffer {
            buf: B::EMPTY,
            start: 0,
            end: 0,
            open: None,
        }
    }

    /// Drops everything (for a connection restarted in place).
    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.open = None;
    }

    /// Sealed bytes waiting for the transport.
    pub(crate) fn sealed(&self) -> &[u8] {
        &self.buf[self.start..self.open.unwrap_or(self.end)]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        let sealed_end = self.open.unwrap_or(self.end);
        self.start = (self.start + n).min(sealed_end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.open = None;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub(crate) fn has_open_record(&self) -> bool {
        self.open.is_some()
    }

    /// Gives the storage back when nothing is buffered (heap storage is
    /// taken again on the next write).
    pub(crate) fn release_if_empty(&mut self) {
        if self.start == self.end && self.open.is_none() {
            self.start = 0;
            self.end = 0;
            self.buf.release();
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.heap_bytes()
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            if let Some(o) = self.open.as_mut() {
                *o -= self.start;
            }
            self.start = 0;
        }
    }

    /// Space for raw (handshake) bytes at the tail.
    pub(crate) fn raw_tail(&mut self) -> &mut [u8] {
        self.compact();
        &mut self.buf[self.end..]
    }

    pub(crate) fn commit_raw(&mut self, n: usize) {
        self.end = (self.end + n).min(Self::N);
    }

    /// Plaintext bytes in the open record (0 if none).
    fn open_len(&self) -> usize {
        self.open.map_or(0, |o| self.end - o - RECORD_HEADER)
    }

    /// How many plaintext bytes can still be appended, opening a new record
    /// if needed, while leaving `reserve` bytes of the buffer unused.
    pub(crate) fn room(&self, max_plain: usize, reserve: usize) -> usize {
        let free = (Self::N - self.end + self.start).saturating_sub(reserve);
        let limit = max_plain - KEY_UPDATE_RESERVE;
        if self.open.is_some() {
            let in_record = limit.saturating_sub(self.open_len());
            in_record.min(free.saturating_sub(TAG_LEN + KEY_UPDATE_RESERVE))
        } else {
            limit.min(free.saturating_sub(OVERHEAD + KEY_UPDATE_RESERVE))
        }
    }

    /// Stream payload bytes the buffer can take now as DATA frames: the
    /// rest of the open record plus as many new records as fit, each with
    /// its header, tag and DATA frame header. Never more than
    /// [`Self::push_data_with`] will accept in a row, and nonzero whenever
    /// it can accept a byte, so a driver can size one socket read (or a
    /// run of them) to fill several records before one write.
    pub(crate) fn data_room(&self, max_plain: usize, reserve: usize) -> usize {
        let limit = max_plain - KEY_UPDATE_RESERVE;
        let mut free = (Self::N - self.end + self.start).saturating_sub(reserve);
        let mut total = 0;
        if self.open.is_some() {
            let in_record = limit
                .saturating_sub(self.open_len())
                .min(free.saturating_sub(TAG_LEN + KEY_UPDATE_RESERVE));
            if in_record > DATA_OVERHEAD {
                total += in_record - DATA_OVERHEAD;
                free -= in_record;
            }
            // Sealing the open record adds its tag.
            free = free.saturating_sub(TAG_LEN);
        }
        while free > OVERHEAD + KEY_UPDATE_RESERVE + DATA_OVERHEAD {
            let plain = limit.min(free - OVERHEAD - KEY_UPDATE_RESERVE);
            total += plain - DATA_OVERHEAD;
            free -= plain + OVERHEAD;
        }
        total
    }

    /// Makes sure the open record can take `len` more plaintext bytes,
    /// sealing the current record and opening a new one if needed.
    fn reserve_in_record(
        &mut self,
        len: usize,
        max_plain: usize,
        reserve: usize,
        seal: &mut dyn FnMut(&mut Self) -> Result<(), CryptoError>,
    ) -> Result<bool, CryptoError> {
        if self.open.is_some() && self.room(max_plain, reserve) < len {
            seal(self)?;
        }
        if self.room(max_plain, reserve) < len {
            return Ok(false);
        }
        if self.open.is_none() {
            self.compact();
            self.open = Some(self.end);
            self.end += RECORD_HEADER;
        }
        Ok(true)
    }

    /// Appends one frame to the open record. `Ok(false)` means no room.
    pub(crate) fn push_frame(
        &mut self,
        frame: &Frame<'_>,
        max_plain: usize,
        reserve: usize,
        seal: &mut dyn FnMut(&mut Self) -> Result<(), CryptoError>,
    ) -> Result<bool, CryptoError> {
        let len = frame.encoded_len();
        if !self.reserve_in_record(len, max_plain, reserve, seal)? {
            return Ok(false);
        }
        match frame.emit(&mut self.buf[self.end..]) {
            Ok(n) => {
                self.end += n;
                Ok(true)
            }
            // Unreachable: space was reserved and frames are validated by
            // the connection before they get here.
            Err(WireError::BufferTooSmall { .. }) | Err(_) => Ok(false),
        }
    }

    /// Appends a DATA frame whose payload `fill` writes in place; returns
    /// the payload length (0 if there was no room or `fill` wrote nothing).
    pub(crate) fn push_data_with(
        &mut self,
        id: StreamId,
        max_payload: usize,
        max_plain: usize,
        reserve: usize,
        seal: &mut dyn FnMut(&mut Self) -> Result<(), CryptoError>,
        fill: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> Result<usize, CryptoError> {
        if max_payload == 0
            || !self.reserve_in_record(DATA_OVERHEAD + 1, max_plain, reserve, seal)?
        {
            return Ok(0);
        }
        let room = self.room(max_plain, reserve) - DATA_OVERHEAD;
        let want = room.min(max_payload).min(usize::from(u16::MAX));
        let payload_at = self.end + DATA_OVERHEAD;
        let n = fill(&mut self.buf[payload_at..payload_at + want]).min(want);
        if n == 0 {
            // Drop an empty record we may just have opened.
            if self.open_len() == 0 {
                self.end -= RECORD_HEADER;
                self.open = None;
            }
            return Ok(0);
        }
        let mut hdr = [0u8; DATA_OVERHEAD];
        emit_data_header(id, n as u16, &mut hdr);
        self.buf[self.end..payload_at].copy_from_slice(&hdr);
        self.end = payload_at + n;
        Ok(n)
    }

    /// Appends a frame in the space kept for KEY_UPDATE (used right before
    /// sealing, so it is always the record's last frame).
    pub(crate) fn push_final_frame(&mut self, frame: &Frame<'_>) -> bool {
        if self.open.is_none() || Self::N - self.end < frame.encoded_len() + TAG_LEN {
            return false;
        }
        match frame.emit(&mut self.buf[self.end..]) {
            Ok(n) => {
                self.end += n;
                true
            }
            Err(_) => false,
        }
    }

    /// Seals the open record in place (no-op if none or empty).
    pub(crate) fn seal(&mut self, sealer: &mut RecordSealer) -> Result<bool, CryptoError> {
        let Some(open) = self.open else {
            return Ok(false);
        };
        let plain_len = self.end - open - RECORD_HEADER;
        if plain_len == 0 {
            self.end = open;
            self.open = None;
            return Ok(false);
        }
        let hdr = header(plain_len);
        self.buf[open..open + RECORD_HEADER].copy_from_slice(&hdr);
        let tag = sealer.seal(&hdr, &mut self.buf[open + RECORD_HEADER..self.end])?;
        self.buf[self.end..self.end + TAG_LEN].copy_from_slice(&tag);
        self.end += TAG_LEN;
        self.open = None;
        Ok(true)
    }
}

/// One incoming unit (handshake message or record) being assembled, and —
/// after a record is opened — the cursor over its frames.
pub(crate) struct RxBuffer<B: ByteStore> {
    pub(crate) buf: B,
    pub(crate) len: usize,
    /// `(next frame, end of plaintext)` while a record's frames are drained.
    pub(crate) frames: Option<(usize, usize)>,
}

impl<B: ByteStore> RxBuffer<B> {
    pub(crate) const fn new() -> Self {
        RxBuffer {
            buf: B::EMPTY,
            len: 0,
            frames: None,
        }
    }

    /// Drops the unit being assembled (for a restarted connection).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.frames = None;
    }

    /// Gives the storage back when no unit is being assembled or read.
    pub(crate) fn release_if_empty(&mut self) {
        if self.len == 0 && self.frames.is_none() {
            self.buf.release();
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.heap_bytes()
    }

    /// Copies input until `self.len == target`; returns bytes taken.
    pub(crate) fn fill_to(&mut self, target: usize, input: &[u8]) -> usize {
        let take = target.saturating_sub(self.len).min(input.len());
        if take == 0 {
            // Touching the store would allocate released heap storage.
            return 0;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&input[..take]);
        self.len += take;
        take
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::InlineBytes;

    type Tx = TxBuffer<InlineBytes<N>>;

    const N: usize = 4096;
    const MAX_PLAIN: usize = 1024;

    fn no_seal(t: &mut Tx) -> Result<(), CryptoError> {
        // Stands in for sealing: closes the record and appends a tag.
        if let Some(open) = t.open.take() {
            if t.end == open + RECORD_HEADER {
                t.end = open;
            } else {
                t.end += TAG_LEN;
            }
        }
        Ok(())
    }

    /// Pushes stream data until the buffer refuses; returns the total.
    fn fill_all(t: &mut Tx, reserve: usize) -> usize {
        let mut total = 0;
        loop {
            let n = t
                .push_data_with(
                    StreamId(1),
                    usize::MAX,
                    MAX_PLAIN,
                    reserve,
                    &mut no_seal,
                    &mut |b| b.len(),
                )
                .unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    }

    #[test]
    fn data_room_spans_records_and_matches_what_fits() {
        for reserve in [0, 100, 300] {
            for prefix in [0, 1, 7, 8, 500, 1000, 1017, 3000] {
                let mut t = Tx::new();
                if prefix > 0 {
                    let n = t
                        .push_data_with(
                            StreamId(3),
                            prefix,
                            MAX_PLAIN,
                            reserve,
                            &mut no_seal,
                            &mut |b| b.len(),
                        )
                        .unwrap();
                    assert!(n > 0);
                }
                let room = t.data_room(MAX_PLAIN, reserve);
                let took = fill_all(&mut t, reserve);
                assert!(
                    room <= took,
                    "reserve {reserve} prefix {prefix}: room {room} > {took}"
                );
                assert_eq!(room == 0, took == 0, "reserve {reserve} prefix {prefix}");
                // Several records' worth, not just the open one.
                if prefix == 0 && reserve == 0 {
                    assert!(room > 3 * MAX_PLAIN, "room {room}");
                }
                assert_eq!(t.data_room(MAX_PLAIN, reserve), 0);
            }
        }
    }
}
