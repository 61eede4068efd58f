//! Per-stream state: lifecycle flags and flow-control credit.
//!
//! The core keeps no stream payload: received DATA is handed to the driver
//! straight out of the decrypted record, and the driver reports how much it
//! has delivered with `stream_consumed`, which returns credit to the peer.
//! A slow local reader therefore holds back credit and, with it, the remote
//! sender; memory per stream is bounded by the window the receiver granted.
//!
//! The receive window is adaptive (see `connection`'s window tuner): it
//! starts at the configured initial window and may grow, or be cut back by
//! withholding returned credit, while this invariant holds for a stream
//! whose peer is still sending:
//! `recv_window == recv_credit + unconsumed + credit_to_return`.

use crate::wire::frame::{StreamErrorCode, StreamId};

/// Where a stream is in its opening exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenState {
    /// Client: OPEN sent, no answer yet (data may already be sent).
    AwaitingReply,
    /// Server: OPEN received, the driver has not accepted or refused yet.
    AwaitingAccept,
    /// Both sides agree the stream is open.
    Open,
}

/// State of one direction's end marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndState {
    /// Still open.
    Open,
    /// FIN (or RESET / OPEN_FAIL) must be sent.
    Pending,
    /// Ended (sent, or received for the remote side).
    Done,
}

/// One stream's bookkeeping (40 bytes).
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    pub(crate) id: StreamId,
    pub(crate) open: OpenState,
    /// Bytes we may still send (peer's credit to us).
    pub(crate) send_credit: u32,
    /// Bytes the peer may still send before we return credit.
    pub(crate) recv_credit: u32,
    /// Bytes the driver consumed that we have not yet returned as WINDOW
    /// (plus window growth not yet announced).
    pub(crate) credit_to_return: u32,
    /// The stream's current receive window: what the peer may have in
    /// flight plus what is delivered but unconsumed, once all owed credit
    /// is returned.
    pub(crate) recv_window: u32,
    /// Bytes handed to the driver in `Data` events and not yet reported
    /// consumed.
    pub(crate) unconsumed: u32,
    /// Bytes consumed since the current RTT sample started (window tuner).
    pub(crate) sample_consumed: u32,
    /// Our sending side.
    pub(crate) local: EndState,
    /// The peer's sending side.
    pub(crate) remote: EndState,
    /// Reset to send (overrides FIN).
    pub(crate) reset_to_send: Option<StreamErrorCode>,
    /// Server: OPEN_OK / OPEN_FAIL to send.
    pub(crate) reply_to_send: Option<Result<(), StreamErrorCode>>,
    /// In the connection's dirty queue.
    pub(crate) queued: bool,
    /// A send was refused for lack of credit: report `Writable` later.
    pub(crate) blocked_on_credit: bool,
}

impl Stream {
    pub(crate) fn new(id: StreamId, open: OpenState, send_credit: u32, recv_credit: u32) -> Stream {
        Stream {
            id,
            open,
            send_credit,
            recv_credit,
            credit_to_return: 0,
            recv_window: recv_credit,
            unconsumed: 0,
            sample_consumed: 0,
            local: EndState::Open,
            remote: EndState::Open,
            reset_to_send: None,
            reply_to_send: None,
            queued: false,
            blocked_on_credit: false,
        }
    }

    /// True when nothing more will be sent or received on the stream and
    /// no frame for it is waiting to be written: it can be forgotten.
    pub(crate) fn is_finished(&self) -> bool {
        self.local == EndState::Done
            && self.remote == EndState::Done
            && self.reset_to_send.is_none()
            && self.reply_to_send.is_none()
    }

    /// Receive memory this stream commits the connection to: its whole
    /// window while the peer may still send, else what is delivered and
    /// not yet consumed.
    pub(crate) fn recv_committed(&self) -> u64 {
        if self.remote == EndState::Open {
            u64::from(self.recv_window)
        } else {
            u64::from(self.unconsumed)
        }
    }

    /// Receive credit outstanding: granted to the peer and not yet reported
    /// consumed (in flight plus delivered-but-unconsumed).
    pub(crate) fn recv_outstanding(&self) -> u64 {
        if self.remote == EndState::Open {
            u64::from(self.recv_credit) + u64::from(self.unconsumed)
        } else {
            u64::from(self.unconsumed)
        }
    }

    /// True when the tuner may grow this stream's window: open in both
    /// senses (server: accepted; client: OPEN_OK received) and the peer
    /// still sending.
    pub(crate) fn can_grow(&self) -> bool {
        self.open == OpenState::Open && self.remote == EndState::Open
    }

    /// Consumed bytes that make a WINDOW worth sending: a quarter of the
    /// current window, so WINDOW frames stay few as the window grows.
    pub(crate) fn credit_threshold(&self) -> u32 {
        (self.recv_window / 4).max(1)
    }

    /// True when the driver may send data now (credit aside).
    pub(crate) fn can_send(&self) -> bool {
        self.local == EndState::Open
            && self.reset_to_send.is_none()
            && !matches!(self.open, OpenState::AwaitingAccept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_bookkeeping_stays_small() {
        // 1024 slots on a host session: every byte here is 1 KiB there.
        assert!(core::mem::size_of::<Stream>() <= 40);
    }

    #[test]
    fn committed_and_outstanding_follow_the_remote_side() {
        let mut s = Stream::new(StreamId(1), OpenState::Open, 10, 1000);
        s.recv_credit = 600;
        s.unconsumed = 300;
        s.credit_to_return = 100;
        assert_eq!(s.recv_committed(), 1000);
        assert_eq!(s.recv_outstanding(), 900);
        assert_eq!(s.credit_threshold(), 250);
        assert!(s.can_grow());
        s.remote = EndState::Done;
        assert_eq!(s.recv_committed(), 300);
        assert_eq!(s.recv_outstanding(), 300);
        assert!(!s.can_grow());
        let waiting = Stream::new(StreamId(3), OpenState::AwaitingAccept, 10, 1);
        assert!(!waiting.can_grow());
        assert_eq!(waiting.credit_threshold(), 1);
    }
}
