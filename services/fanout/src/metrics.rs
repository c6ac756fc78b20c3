//! This instance's socket figures: shown as JSON under `metrics` in `GET /health`, and
//! kept in step as Prometheus series (`pos_fanout_*`) for `GET /metrics`.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Plain atomics: each figure is independent, and a snapshot that is a few increments
/// stale is fine for a dashboard.
#[derive(Debug, Default)]
pub struct Metrics {
    connected_sockets: AtomicU64,
    tenant_feeds: AtomicU64,
    frames_sent: AtomicU64,
    slow_client_disconnects: AtomicU64,
    refused_connections: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSnapshot {
    /// Open WebSockets on this instance.
    pub connected_sockets: u64,
    /// Tenants with at least one socket here, i.e. shared ordered consumers running.
    pub tenant_feeds: u64,
    /// Text frames written to sockets (invoice.state and resync) since start.
    pub frames_sent: u64,
    /// Sockets closed with 4008 because they fell a full buffer behind.
    pub slow_client_disconnects: u64,
    /// Upgrades refused because the tenant was at its connection limit.
    pub refused_connections: u64,
}

impl Metrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            connected_sockets: self.connected_sockets.load(Relaxed),
            tenant_feeds: self.tenant_feeds.load(Relaxed),
            frames_sent: self.frames_sent.load(Relaxed),
            slow_client_disconnects: self.slow_client_disconnects.load(Relaxed),
            refused_connections: self.refused_connections.load(Relaxed),
        }
    }

    pub fn connected_sockets(&self) -> u64 {
        self.connected_sockets.load(Relaxed)
    }

    pub(crate) fn socket_opened(&self) {
        self.connected_sockets.fetch_add(1, Relaxed);
        metrics::gauge!("pos_fanout_sockets").increment(1.0);
    }
    pub(crate) fn socket_closed(&self) {
        self.connected_sockets.fetch_sub(1, Relaxed);
        metrics::gauge!("pos_fanout_sockets").decrement(1.0);
    }
    pub(crate) fn feed_started(&self) {
        self.tenant_feeds.fetch_add(1, Relaxed);
        metrics::gauge!("pos_fanout_tenant_feeds").increment(1.0);
    }
    pub(crate) fn feed_stopped(&self) {
        self.tenant_feeds.fetch_sub(1, Relaxed);
        metrics::gauge!("pos_fanout_tenant_feeds").decrement(1.0);
    }
    pub(crate) fn frame_sent(&self) {
        self.frames_sent.fetch_add(1, Relaxed);
        metrics::counter!("pos_fanout_frames_sent_total").increment(1);
    }
    pub(crate) fn slow_client(&self) {
        self.slow_client_disconnects.fetch_add(1, Relaxed);
        metrics::counter!("pos_fanout_slow_client_disconnects_total").increment(1);
    }
    pub(crate) fn refused(&self) {
        self.refused_connections.fetch_add(1, Relaxed);
        metrics::counter!("pos_fanout_refused_connections_total").increment(1);
    }
}
