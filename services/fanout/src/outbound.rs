//! What a socket's producer (`replay.rs`) hands its writer (`socket.rs`): frames to
//! send and the close that ends the socket. Its own module so that the two depend on it
//! and not on each other.

use axum::extract::ws::Utf8Bytes;

/// What the writer is asked to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// An `invoice.state` frame.
    Event { seq: u64, text: Utf8Bytes },
    /// A frame without a seq (`resync`).
    Notice(Utf8Bytes),
}

/// A close code and the first part of its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub why: &'static str,
}

impl Closing {
    pub const SLOW_CONSUMER: Self = Self {
        code: 4008,
        why: "slow consumer",
    };
    pub const LOG_UNAVAILABLE: Self = Self {
        code: 1013,
        why: "event log unavailable",
    };
    pub const SHUTDOWN: Self = Self {
        code: 1001,
        why: "server shutting down",
    };
    pub const IDLE: Self = Self {
        code: 1000,
        why: "idle timeout",
    };
    pub const FEED_LOST: Self = Self {
        code: 1011,
        why: "live feed lost",
    };
    pub const TOKEN_EXPIRED: Self = Self {
        code: 4001,
        why: "token expired",
    };

    /// `slow consumer; reconnect with since=4711` (well under the 123-byte limit).
    pub fn reason(&self, last_sent: Option<u64>) -> String {
        match last_sent {
            Some(seq) => format!("{}; reconnect with since={seq}", self.why),
            None => format!("{}; reconnect", self.why),
        }
    }
}
