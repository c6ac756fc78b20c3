//! Queue figures for `/health`, read from JetStream consumer and stream info.

use crate::Bus;
use serde::Serialize;

/// The contract's `queue` object.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// Submissions not yet delivered to any processor.
    pub pending: u64,
    /// Delivered, not yet acknowledged (being processed, or waiting for a retry).
    pub ack_pending: u64,
    /// Deliveries that were redeliveries.
    pub redelivered: u64,
    /// Messages in the dead-letter stream.
    pub failed: u64,
    /// Submissions the processor has finished with (stored, minus still pending or in
    /// flight, minus dead-lettered).
    pub completed: u64,
}

impl Bus {
    /// The `queue` figures of `/health`, from the processor's consumer and the dead-letter
    /// stream.
    pub async fn queue_stats(&self) -> Result<QueueStats, crate::BusError> {
        let invoices = self.stream(&self.topology().invoices_stream()).await?;
        let stored = invoices.cached_info().state.messages;
        let failed = self.dead_letters().await?;
        let processor = self.backlog(&invoices, "processor").await?;
        Ok(QueueStats {
            pending: processor.pending,
            ack_pending: processor.ack_pending,
            redelivered: processor.redelivered,
            failed,
            completed: stored.saturating_sub(processor.outstanding() + failed),
        })
    }
}
