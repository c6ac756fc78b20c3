//! The invoice lifecycle: `QUEUED → PROCESSING → COMPLETED | FAILED`, and the one way
//! back (`FAILED → QUEUED`, an operator's replay).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where an invoice is in its lifecycle; serialised as `QUEUED`, `PROCESSING`, …
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InvoiceState {
    /// Accepted and waiting for a processor.
    Queued,
    /// A processor is computing it (retries stay here).
    Processing,
    /// Computed and given its fiscal record. Final.
    Completed,
    /// Refused for good or out of retries; `error` says why. Final, except for an
    /// operator's replay.
    Failed,
}

impl InvoiceState {
    /// Every state, in lifecycle order.
    pub const ALL: [InvoiceState; 4] = [
        Self::Queued,
        Self::Processing,
        Self::Completed,
        Self::Failed,
    ];

    /// The contract's name of the state (`QUEUED`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }

    /// The state for its contract name (`COMPLETED`); `None` for anything else, lower
    /// case included.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Position in the lifecycle; the two final states share the last step.
    fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Processing => 1,
            Self::Completed | Self::Failed => 2,
        }
    }

    /// Whether the state is COMPLETED or FAILED.
    pub fn is_final(self) -> bool {
        self.rank() == 2
    }

    /// Whether `self → next` is a forward move within one processing generation.
    /// Staying in PROCESSING is allowed (a retry is a new attempt, not a new state);
    /// a final state never changes except by replay, which starts a new generation.
    pub fn can_advance_to(self, next: InvoiceState) -> bool {
        matches!(
            (self, next),
            (
                Self::Queued | Self::Processing,
                Self::Processing | Self::Completed | Self::Failed
            )
        )
    }
}

impl fmt::Display for InvoiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A total order over every state an invoice passes through, including replays:
/// `(replay generation, lifecycle step, attempt)`. Writers keep the highest version
/// they have seen and ignore anything lower, so a redelivered or reordered message can
/// never move an invoice backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The replay generation: how many times an operator replayed the invoice.
    pub replays: u32,
    /// Lifecycle step: 0 QUEUED, 1 PROCESSING, 2 COMPLETED or FAILED.
    pub step: u8,
    /// Processing attempts within the generation.
    pub attempts: u32,
}

impl Version {
    /// The version of an invoice in `state` after `attempts` and `replays`.
    pub fn of(state: InvoiceState, attempts: u32, replays: u32) -> Self {
        Self {
            replays,
            step: state.rank(),
            attempts,
        }
    }

    /// One sortable integer, for stores that compare numbers (MongoDB's `$lt`).
    pub fn as_i64(&self) -> i64 {
        (i64::from(self.replays) << 32)
            | (i64::from(self.step) << 24)
            | i64::from(self.attempts.min(0x00FF_FFFF))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InvoiceState::*;

    #[test]
    fn states_only_move_forward() {
        assert!(Queued.can_advance_to(Processing));
        assert!(Processing.can_advance_to(Processing));
        assert!(Processing.can_advance_to(Completed));
        assert!(Processing.can_advance_to(Failed));
        assert!(!Processing.can_advance_to(Queued));
        assert!(!Completed.can_advance_to(Processing));
        assert!(!Completed.can_advance_to(Failed));
        assert!(
            !Failed.can_advance_to(Queued),
            "only a replay leaves FAILED"
        );
    }

    #[test]
    fn versions_order_replays_then_steps_then_attempts() {
        let v = |s, a, r| Version::of(s, a, r);
        assert!(v(Queued, 0, 0) < v(Processing, 1, 0));
        assert!(v(Processing, 1, 0) < v(Processing, 2, 0));
        assert!(v(Processing, 4, 0) < v(Completed, 1, 0));
        assert!(
            v(Failed, 4, 0) < v(Queued, 0, 1),
            "a replay outranks the failure"
        );
        let ordered = [
            v(Queued, 0, 0),
            v(Processing, 3, 0),
            v(Failed, 4, 0),
            v(Queued, 0, 1),
            v(Completed, 1, 1),
        ];
        for w in ordered.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].as_i64() < w[1].as_i64());
        }
    }

    #[test]
    fn state_names_round_trip() {
        for s in InvoiceState::ALL {
            assert_eq!(InvoiceState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(InvoiceState::parse("queued"), None);
    }
}
