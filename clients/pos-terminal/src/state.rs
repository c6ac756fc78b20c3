//! The server's invoice states as the terminal tracks them, and the one rule for
//! accepting news about them (contract § Lifecycle): states only move forward,
//! `QUEUED < PROCESSING < COMPLETED | FAILED`, except an operator's replay, which moves
//! `FAILED → QUEUED` and grows the invoice's `replays`.
//!
//! News comes from three places that can race each other: the `POST` answer, the
//! WebSocket frames and `GET /invoices/{id}`. Each one is turned into an [`Observed`]
//! and offered to [`advance`]; the outbox stores whatever it returns, so a late `202`
//! saying `QUEUED` never overwrites a `COMPLETED` the socket already delivered.

use serde_json::Value;

/// An invoice state as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerState {
    Queued,
    Processing,
    Completed,
    Failed,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "QUEUED" => Some(Self::Queued),
            "PROCESSING" => Some(Self::Processing),
            "COMPLETED" => Some(Self::Completed),
            "FAILED" => Some(Self::Failed),
            _ => None,
        }
    }

    /// Nothing changes after this unless an operator replays a failed invoice.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }

    /// Position in the lifecycle; the two final states share a rank, so neither
    /// replaces the other.
    fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Processing => 1,
            Self::Completed | Self::Failed => 2,
        }
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One piece of news about an invoice's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub state: ServerState,
    /// The invoice's `replays` counter, when the message carried one.
    pub replays: Option<u32>,
}

impl Observed {
    /// Reads `state` and `replays` from an invoice representation.
    pub fn from_invoice(invoice: &Value) -> Option<Self> {
        let state = ServerState::parse(invoice.get("state")?.as_str()?)?;
        let replays = invoice
            .get("replays")
            .and_then(Value::as_u64)
            .and_then(|r| u32::try_from(r).ok());
        Some(Self { state, replays })
    }
}

/// What the outbox knows about an invoice's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub state: ServerState,
    /// The highest replay generation seen (0 when never replayed or never reported).
    pub replays: u32,
}

/// The state to store after `news`, or `None` when the news is stale or changes nothing.
///
/// A message that carries `replays` is ordered by (replay generation, lifecycle rank),
/// which tells a real replay (`FAILED → QUEUED`, generation grown) from a stale `QUEUED`
/// answer that lost a race with the socket. A message without it can only be ordered
/// by rank, so `FAILED → QUEUED` is then taken as the contract's one backward move.
pub fn advance(known: Option<Known>, news: Observed) -> Option<Known> {
    let Some(known) = known else {
        return Some(Known {
            state: news.state,
            replays: news.replays.unwrap_or(0),
        });
    };
    let forward = news.state.rank() > known.state.rank();
    let accepted = match news.replays {
        Some(replays) if replays != known.replays => replays > known.replays,
        Some(_) => forward,
        None => {
            forward || (known.state == ServerState::Failed && news.state == ServerState::Queued)
        }
    };
    accepted.then_some(Known {
        state: news.state,
        replays: news.replays.unwrap_or(known.replays),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServerState::*;

    fn known(state: ServerState, replays: u32) -> Option<Known> {
        Some(Known { state, replays })
    }

    fn news(state: ServerState, replays: Option<u32>) -> Observed {
        Observed { state, replays }
    }

    #[test]
    fn states_move_forward_only() {
        assert!(advance(known(Queued, 0), news(Processing, None)).is_some());
        assert!(advance(known(Processing, 0), news(Completed, None)).is_some());
        assert!(advance(known(Processing, 0), news(Failed, Some(0))).is_some());
        assert!(advance(known(Processing, 0), news(Queued, None)).is_none());
        assert!(advance(known(Completed, 0), news(Processing, None)).is_none());
        assert!(advance(known(Completed, 0), news(Failed, None)).is_none());
        assert!(advance(known(Failed, 0), news(Completed, Some(0))).is_none());
        assert!(
            advance(known(Queued, 0), news(Queued, None)).is_none(),
            "no change"
        );
    }

    #[test]
    fn anything_is_news_when_nothing_is_known() {
        assert_eq!(advance(None, news(Completed, Some(2))), known(Completed, 2));
    }

    #[test]
    fn an_operator_replay_moves_failed_back_to_queued() {
        assert_eq!(
            advance(known(Failed, 0), news(Queued, None)),
            known(Queued, 0)
        );
        assert_eq!(
            advance(known(Failed, 0), news(Queued, Some(1))),
            known(Queued, 1)
        );
        // and the replayed invoice then moves on as usual
        assert_eq!(
            advance(known(Queued, 1), news(Completed, Some(1))),
            known(Completed, 1)
        );
    }

    #[test]
    fn a_stale_queued_of_the_same_generation_never_undoes_a_failure() {
        assert!(advance(known(Failed, 0), news(Queued, Some(0))).is_none());
        assert!(advance(known(Completed, 1), news(Queued, Some(0))).is_none());
    }

    #[test]
    fn a_newer_generation_wins_and_an_older_one_loses() {
        assert_eq!(
            advance(known(Completed, 0), news(Processing, Some(1))),
            known(Processing, 1)
        );
        assert!(advance(known(Queued, 2), news(Completed, Some(1))).is_none());
    }

    #[test]
    fn observed_reads_state_and_replays_from_an_invoice() {
        let invoice = serde_json::json!({ "id": "x", "state": "FAILED", "replays": 3 });
        assert_eq!(
            Observed::from_invoice(&invoice),
            Some(news(Failed, Some(3)))
        );
        let invoice = serde_json::json!({ "state": "QUEUED" });
        assert_eq!(Observed::from_invoice(&invoice), Some(news(Queued, None)));
        assert_eq!(
            Observed::from_invoice(&serde_json::json!({ "state": "LOST" })),
            None
        );
    }
}
