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
    pub async fn queue_stats(&self) -> Result<QueueStats, crate::BusError> {
        let err = |e: &dyn std::fmt::Display| crate::BusError::Request(e.to_string());
        let t = self.topology();
        let mut invoices = self.stream(&t.invoices_stream()).await?;
        let stored = invoices.info().await.map_err(|e| err(&e))?.state.messages;
        let mut dlq = self.stream(&t.dlq_stream()).await?;
        let failed = dlq.info().await.map_err(|e| err(&e))?.state.messages;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = invoices
            .get_consumer("processor")
            .await
            .map_err(|e| err(&e))?;
        let info = consumer.info().await.map_err(|e| err(&e))?;
        let pending = info.num_pending;
        let ack_pending = info.num_ack_pending as u64;
        Ok(QueueStats {
            pending,
            ack_pending,
            redelivered: info.num_redelivered as u64,
            failed,
            completed: stored.saturating_sub(pending + ack_pending + failed),
        })
    }
}
