//! Per-stream state: lifecycle flags and flow-control credit.
//!
//! The core keeps no stream payload: received DATA is handed to the driver
//! straight out of the decrypted record, and the driver reports how much it
//! has delivered with `stream_consumed`, which returns credit to the peer.
//! A slow local reader therefore holds back credit and, with it, the remote
//! sender; memory per stream is bounded by the window the receiver granted.

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

/// One stream's bookkeeping (about 48 bytes).
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    pub(crate) id: StreamId,
    pub(crate) open: OpenState,
    /// Bytes we may still send (peer's credit to us).
    pub(crate) send_credit: u64,
    /// Bytes the peer may still send before we return credit.
    pub(crate) recv_credit: u64,
    /// Bytes the driver consumed that we have not yet returned as WINDOW.
    pub(crate) credit_to_return: u64,
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
            send_credit: u64::from(send_credit),
            recv_credit: u64::from(recv_credit),
            credit_to_return: 0,
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

    /// True when the driver may send data now (credit aside).
    pub(crate) fn can_send(&self) -> bool {
        self.local == EndState::Open
            && self.reset_to_send.is_none()
            && !matches!(self.open, OpenState::AwaitingAccept)
    }
}
