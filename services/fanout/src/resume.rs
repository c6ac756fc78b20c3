//! The pure part of resuming a socket at `since` (contract § WebSocket), with no I/O:
//! what the socket asked for ([`Resume`]), what to replay and whether to send a resync
//! frame first ([`ResumePlan`]), when a replay is done ([`replay_done`]), and the gate
//! that lets only increasing sequences through ([`SeqGate`]). `replay.rs` drives these
//! over the event log and the hub; see its docs for why the hand-over has no gap.

use domain::TerminalId;
use messaging::feed::LogBounds;
/// Lets a sequence through only if it is above every sequence let through before: the
/// per-socket guarantee that `seq` strictly increases, and the de-duplication between
/// the replay and the live feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqGate {
    last: Option<u64>,
}

impl SeqGate {
    /// A gate for a socket that already has everything up to `since`.
    pub fn after(since: Option<u64>) -> Self {
        Self { last: since }
    }

    /// Whether `seq` is new for this socket; if so it becomes the new floor.
    pub fn admit(&mut self, seq: u64) -> bool {
        if self.last.is_some_and(|last| seq <= last) {
            return false;
        }
        self.last = Some(seq);
        true
    }

    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// Moves the floor, also downwards: only after a resync frame told the client that
    /// its `since` does not belong to this log.
    pub fn restart_after(&mut self, floor: u64) {
        self.last = Some(floor);
    }
}

/// Why a `since` cannot be honoured exactly; sent as a `resync` frame before the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// Events after `since` were already discarded by the stream's limits (`max_msgs`).
    Expired { first_seq: u64 },
    /// `since` is beyond the end of the log: the events stream was recreated, or the
    /// client made the number up. What the log holds is sent from its start.
    AheadOfLog { first_seq: u64 },
}

impl Resync {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Expired { .. } => "since is older than the retention window",
            Self::AheadOfLog { .. } => "since is ahead of the event log",
        }
    }

    pub fn first_seq(self) -> u64 {
        match self {
            Self::Expired { first_seq } | Self::AheadOfLog { first_seq } => first_seq,
        }
    }
}

/// What to do for `since`, given the log's bounds and the live feed's first sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePlan {
    pub resync: Option<Resync>,
    /// Sequences at or below this were already seen by the client.
    pub floor: u64,
    /// Read `from..=through` from the log; `None` when nothing there can be new.
    pub replay: Option<(u64, u64)>,
}

impl ResumePlan {
    pub fn new(since: u64, log: LogBounds, live_start: u64) -> Self {
        // A stream that never held a message reports first_seq 0; its first will be 1.
        let first = log.first_seq.max(1);
        // Events up to here are either in the log now or older than the live feed.
        let end = log.last_seq.max(live_start.saturating_sub(1));
        let (resync, floor) = if since > end {
            (Some(Resync::AheadOfLog { first_seq: first }), first - 1)
        } else if since.saturating_add(1) < first {
            (Some(Resync::Expired { first_seq: first }), since)
        } else {
            (None, since)
        };
        let from = (floor + 1).max(first);
        Self {
            resync,
            floor,
            replay: (from <= end).then_some((from, end)),
        }
    }
}

/// Whether the replayed event `seq` (with `pending` matching events still after it) ends
/// the replay whose range ends at `through`.
pub fn replay_done(seq: u64, pending: u64, through: u64) -> bool {
    seq >= through || pending == 0
}

/// What a socket asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// `?since=`: the last seq the terminal saw.
    pub since: Option<u64>,
    /// `?terminalId=`: only this terminal's invoices.
    pub terminal: Option<TerminalId>,
}

impl Resume {
    pub(crate) fn wants(&self, terminal: &TerminalId) -> bool {
        self.terminal.as_ref().is_none_or(|t| t == terminal)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn bounds(first_seq: u64, last_seq: u64) -> LogBounds {
        LogBounds {
            first_seq,
            last_seq,
        }
    }

    #[test]
    fn the_gate_lets_only_increasing_sequences_through() {
        let mut gate = SeqGate::after(Some(10));
        assert!(!gate.admit(9));
        assert!(!gate.admit(10), "the client already has since itself");
        assert!(gate.admit(12));
        assert!(!gate.admit(11), "older than the last one sent");
        assert!(!gate.admit(12), "a duplicate");
        assert!(gate.admit(13));
        assert_eq!(gate.last(), Some(13));
        let mut fresh = SeqGate::after(None);
        assert!(fresh.admit(1));
        assert!(!fresh.admit(1));
    }

    #[test]
    fn since_within_the_log_replays_up_to_the_later_of_log_end_and_live_start() {
        let plan = ResumePlan::new(5, bounds(1, 20), 21);
        assert_eq!(
            plan,
            ResumePlan {
                resync: None,
                floor: 5,
                replay: Some((6, 20))
            }
        );
        // The live feed started after the bounds were read: its earlier events come from the log.
        assert_eq!(ResumePlan::new(5, bounds(1, 20), 31).replay, Some((6, 30)));
    }

    #[test]
    fn since_at_the_end_of_the_log_replays_nothing() {
        assert_eq!(
            ResumePlan::new(20, bounds(1, 20), 21),
            ResumePlan {
                resync: None,
                floor: 20,
                replay: None
            }
        );
        assert_eq!(
            ResumePlan::new(0, bounds(0, 0), 1),
            ResumePlan {
                resync: None,
                floor: 0,
                replay: None
            }
        );
    }

    #[test]
    fn since_older_than_the_retention_window_resyncs_then_sends_what_is_left() {
        let plan = ResumePlan::new(3, bounds(10, 20), 21);
        assert_eq!(plan.resync, Some(Resync::Expired { first_seq: 10 }));
        assert_eq!(
            plan.resync.unwrap().reason(),
            "since is older than the retention window"
        );
        assert_eq!(plan.replay, Some((10, 20)));
        // since + 1 == first_seq: nothing was lost, no resync.
        assert_eq!(ResumePlan::new(9, bounds(10, 20), 21).resync, None);
        // Everything expired (an emptied stream reports first = last + 1).
        let emptied = ResumePlan::new(3, bounds(21, 20), 21);
        assert_eq!(emptied.resync, Some(Resync::Expired { first_seq: 21 }));
        assert_eq!(emptied.replay, None);
    }

    #[test]
    fn since_beyond_the_log_resyncs_and_starts_from_the_log_start() {
        let plan = ResumePlan::new(500, bounds(1, 20), 21);
        assert_eq!(
            plan,
            ResumePlan {
                resync: Some(Resync::AheadOfLog { first_seq: 1 }),
                floor: 0,
                replay: Some((1, 20))
            }
        );
        let empty = ResumePlan::new(7, bounds(0, 0), 1);
        assert_eq!(
            empty,
            ResumePlan {
                resync: Some(Resync::AheadOfLog { first_seq: 1 }),
                floor: 0,
                replay: None
            }
        );
        assert_eq!(
            ResumePlan::new(u64::MAX, bounds(1, 20), 21).floor,
            0,
            "no overflow"
        );
    }

    #[test]
    fn the_replay_ends_at_its_range_end_or_when_nothing_is_pending() {
        assert!(!replay_done(6, 3, 20));
        assert!(replay_done(20, 5, 20));
        assert!(replay_done(25, 5, 20));
        assert!(replay_done(8, 0, 20), "caught up: later events are live");
    }
}
