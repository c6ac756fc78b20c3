//! One live feed per tenant, shared by every socket of that tenant on this instance.
//!
//! The first socket of a tenant starts a reader task: a NATS ordered consumer filtered
//! to `<ns>.events.<tenant>.*`, starting right after the log's last sequence, whose events
//! are serialized once and published on a `tokio::sync::broadcast` channel. Each socket
//! holds a receiver ([`Membership`]); when the last one is dropped the reader is aborted
//! and its consumer expires on the server. So NATS carries each event once per instance,
//! whatever the number of sockets, and a tenant's sockets only ever see its own subjects.
//!
//! A broadcast channel drops the oldest frames for a receiver that falls `capacity`
//! behind (`Lagged`) instead of waiting for it: a slow terminal can never slow the feed
//! or the other terminals. The socket finds out and closes itself (see `replay.rs`).
//!
//! NATS restarts: the ordered consumer lives in server memory and is gone after a
//! restart; the feed (`messaging::feed`) reopens it just after the last delivered
//! sequence once the client library reports the loss (seen after ~15 s), so live events
//! are late, never lost and never repeated.

use crate::{frame::EventFrame, metrics::Metrics};
use domain::TenantId;
use futures_util::StreamExt;
use messaging::{feed::FeedStart, Bus};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};
use tokio::{
    sync::{broadcast, watch},
    task::AbortHandle,
};
use tracing::{info, Instrument};

/// A live event as shared between sockets: one allocation per event, not per socket.
pub type Live = Arc<EventFrame>;

/// Starts the reader of one tenant's live events. It publishes every event on `frames`
/// and, once its consumer exists, the first sequence it will deliver on `live_start`.
pub(crate) type StartReader = Arc<
    dyn Fn(TenantId, broadcast::Sender<Live>, watch::Sender<Option<u64>>) -> AbortHandle
        + Send
        + Sync,
>;

#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("tenants", &self.inner.lock().len())
            .finish()
    }
}

struct HubInner {
    start_reader: StartReader,
    /// Catalog change notices of every tenant (rare): each socket keeps its own tenant's.
    catalog: broadcast::Sender<(TenantId, u64)>,
    /// Broadcast ring size = frames a socket may fall behind (`FANOUT_CLIENT_BUFFER`).
    capacity: usize,
    max_per_tenant: usize,
    metrics: Arc<Metrics>,
    /// A std mutex: it is held only to look up, count and insert, never across an await,
    /// so an async mutex would only add cost.
    tenants: Mutex<HashMap<TenantId, TenantFeed>>,
}

struct TenantFeed {
    frames: broadcast::Sender<Live>,
    live_start: watch::Receiver<Option<u64>>,
    sockets: usize,
    reader: AbortHandle,
}

/// The tenant already has the maximum number of sockets on this instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant} already has {limit} sockets on this instance")]
pub struct TenantFull {
    pub tenant: TenantId,
    pub limit: usize,
}

/// A socket's place in its tenant's feed. Dropping it leaves the feed (and stops the
/// feed if it was the last socket).
pub struct Membership {
    hub: Arc<HubInner>,
    tenant: TenantId,
    frames: broadcast::Receiver<Live>,
    catalog: broadcast::Receiver<(TenantId, u64)>,
    live_start: watch::Receiver<Option<u64>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub whose readers are ordered consumers on `bus`'s events stream.
    pub fn new(bus: Bus, capacity: usize, max_per_tenant: usize, metrics: Arc<Metrics>) -> Self {
        let start_reader: StartReader = Arc::new(move |tenant: TenantId, frames, live_start| {
            let span = tracing::info_span!("tenant_feed", tenant_id = %tenant);
            tokio::spawn(read_live_events(bus.clone(), tenant, frames, live_start).instrument(span))
                .abort_handle()
        });
        Self::with_reader(start_reader, capacity, max_per_tenant, metrics)
    }

    pub(crate) fn with_reader(
        start_reader: StartReader,
        capacity: usize,
        max_per_tenant: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(HubInner {
                start_reader,
                catalog: broadcast::channel(256).0,
                capacity: capacity.max(1),
                max_per_tenant,
                metrics,
                tenants: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Subscribes a new socket to `tenant`'s live events, starting the tenant's reader
    /// if this is its first socket. The receiver exists from this call on, so a caller
    /// that reads the log afterwards cannot miss an event between the two.
    pub fn join(&self, tenant: &TenantId) -> Result<Membership, TenantFull> {
        let mut tenants = self.inner.lock();
        if tenants
            .get(tenant)
            .is_some_and(|feed| feed.sockets >= self.inner.max_per_tenant)
        {
            return Err(TenantFull {
                tenant: tenant.clone(),
                limit: self.inner.max_per_tenant,
            });
        }
        let feed = tenants.entry(tenant.clone()).or_insert_with(|| {
            let (frames, _) = broadcast::channel(self.inner.capacity);
            let (start_tx, live_start) = watch::channel(None);
            let reader = (self.inner.start_reader)(tenant.clone(), frames.clone(), start_tx);
            self.inner.metrics.feed_started();
            info!(tenant_id = %tenant, "tenant feed started");
            TenantFeed {
                frames,
                live_start,
                sockets: 0,
                reader,
            }
        });
        feed.sockets += 1;
        Ok(Membership {
            hub: self.inner.clone(),
            tenant: tenant.clone(),
            frames: feed.frames.subscribe(),
            catalog: self.inner.catalog.subscribe(),
            live_start: feed.live_start.clone(),
        })
    }

    /// Sockets of `tenant` on this instance.
    pub fn sockets(&self, tenant: &TenantId) -> usize {
        self.inner.lock().get(tenant).map_or(0, |f| f.sockets)
    }
}

impl HubInner {
    fn lock(&self) -> MutexGuard<'_, HashMap<TenantId, TenantFeed>> {
        // No code path panics while holding the lock; if one ever did, the map is still
        // consistent (every mutation is a single insert / remove / counter change).
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn leave(&self, tenant: &TenantId) {
        let mut tenants = self.lock();
        let Some(feed) = tenants.get_mut(tenant) else {
            return;
        };
        feed.sockets = feed.sockets.saturating_sub(1);
        if feed.sockets == 0 {
            if let Some(feed) = tenants.remove(tenant) {
                feed.reader.abort();
                self.metrics.feed_stopped();
                info!(tenant_id = %tenant, "tenant feed stopped (last socket left)");
            }
        }
    }
}

/// What a socket's producer waits for.
pub enum Next {
    Live(Result<Live, broadcast::error::RecvError>),
    /// The tenant's catalog is now at this version.
    Catalog(u64),
}

impl Hub {
    /// Hands a catalog change notice to the tenant's sockets on this instance.
    pub fn catalog_changed(&self, tenant: TenantId, version: u64) {
        // No receiver (no socket at all) is not an error.
        let _ = self.inner.catalog.send((tenant, version));
    }
}

impl Membership {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The next live frame or catalog notice of this socket's tenant.
    pub async fn next(&mut self) -> Next {
        loop {
            tokio::select! {
                live = self.frames.recv() => return Next::Live(live),
                notice = self.catalog.recv() => match notice {
                    Ok((tenant, version)) if tenant == self.tenant => return Next::Catalog(version),
                    // Another tenant's, or notices missed while busy: a terminal that
                    // misses one still syncs on its next `since=` request.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                },
            }
        }
    }

    /// The next live frame; `Lagged` when more than the buffer was missed.
    pub async fn recv(&mut self) -> Result<Live, broadcast::error::RecvError> {
        self.frames.recv().await
    }

    /// Drops whatever is buffered and continues with frames published from now on.
    pub fn resubscribe(&mut self) {
        self.frames = self.frames.resubscribe();
    }

    /// Resolves once this socket has fallen a whole ring behind: its next `recv` would
    /// report frames lost. Polled, since broadcast receivers have no such notification.
    pub async fn overflowed(&self) {
        while self.frames.len() < self.hub.capacity {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The first sequence the tenant's live feed delivers, once its consumer exists
    /// (waits while NATS is unreachable). `None` if the reader is gone.
    pub async fn live_start(&mut self) -> Option<u64> {
        self.live_start
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|start| *start)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.tenant);
    }
}

/// The reader task of one tenant: open the ordered consumer (retrying while NATS is
/// down), announce where it starts, then publish every event until aborted.
async fn read_live_events(
    bus: Bus,
    tenant: TenantId,
    frames: broadcast::Sender<Live>,
    live_start: watch::Sender<Option<u64>>,
) {
    let mut feed = service_kit::retry::until_ok("cannot open the tenant's live feed", || {
        bus.event_feed(&tenant, FeedStart::New)
    })
    .await;
    live_start.send_replace(Some(feed.start_seq()));
    while let Some(event) = feed.next().await {
        // An error only means no socket is subscribed at this instant; the feed stays
        // until the hub stops it.
        tracing::debug!(
            request_id = event.request_id.as_deref().unwrap_or(""),
            invoice_id = %event.envelope.invoice.id(),
            seq = event.seq,
            "event to the tenant's sockets"
        );
        let _ = frames.send(Arc::new(EventFrame::from_event(&event)));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// What a fake reader was handed: `.1` publishes live frames, `.2` announces the start.
    pub(crate) type FakeReader = (
        TenantId,
        broadcast::Sender<Live>,
        watch::Sender<Option<u64>>,
        AbortHandle,
    );

    /// Readers that publish nothing by themselves: tests push frames through the senders.
    pub(crate) struct FakeReaders {
        pub started: AtomicUsize,
        pub senders: Mutex<Vec<FakeReader>>,
    }

    pub(crate) fn fake_hub(capacity: usize, max_per_tenant: usize) -> (Hub, Arc<FakeReaders>) {
        let fakes = Arc::new(FakeReaders {
            started: AtomicUsize::new(0),
            senders: Mutex::new(Vec::new()),
        });
        let f = fakes.clone();
        let start: StartReader = Arc::new(move |tenant, frames, live_start| {
            f.started.fetch_add(1, Ordering::SeqCst);
            let handle = tokio::spawn(std::future::pending::<()>()).abort_handle();
            f.senders
                .lock()
                .unwrap()
                .push((tenant, frames, live_start, handle.clone()));
            handle
        });
        (
            Hub::with_reader(
                start,
                capacity,
                max_per_tenant,
                Arc::new(Metrics::default()),
            ),
            fakes,
        )
    }

    fn tenant(t: &str) -> TenantId {
        TenantId::parse(t).unwrap()
    }

    #[tokio::test]
    async fn one_reader_per_tenant_started_by_the_first_socket_and_stopped_by_the_last() {
        let (hub, fakes) = fake_hub(8, 10);
        let a1 = hub.join(&tenant("acme")).unwrap();
        let a2 = hub.join(&tenant("acme")).unwrap();
        let b1 = hub.join(&tenant("bolt")).unwrap();
        assert_eq!(fakes.started.load(Ordering::SeqCst), 2);
        assert_eq!(hub.sockets(&tenant("acme")), 2);
        assert_eq!(hub.inner.metrics.snapshot().tenant_feeds, 2);
        drop(a1);
        let acme_reader = fakes.senders.lock().unwrap()[0].3.clone();
        tokio::task::yield_now().await;
        assert!(
            !acme_reader.is_finished(),
            "one socket left: the reader keeps going"
        );
        drop(a2);
        tokio::task::yield_now().await;
        assert!(
            acme_reader.is_finished(),
            "last socket left: the reader is aborted"
        );
        assert_eq!(hub.sockets(&tenant("acme")), 0);
        assert_eq!(hub.inner.metrics.snapshot().tenant_feeds, 1);
        let _a3 = hub.join(&tenant("acme")).unwrap();
        assert_eq!(
            fakes.started.load(Ordering::SeqCst),
            3,
            "a new first socket starts a new reader"
        );
        drop(b1);
    }

    #[tokio::test]
    async fn the_per_tenant_limit_refuses_only_that_tenant() {
        let (hub, _fakes) = fake_hub(8, 2);
        let _a1 = hub.join(&tenant("acme")).unwrap();
        let a2 = hub.join(&tenant("acme")).unwrap();
        let full = hub.join(&tenant("acme")).unwrap_err();
        assert_eq!(
            full,
            TenantFull {
                tenant: tenant("acme"),
                limit: 2
            }
        );
        assert!(
            hub.join(&tenant("bolt")).is_ok(),
            "other tenants are unaffected"
        );
        drop(a2);
        assert!(
            hub.join(&tenant("acme")).is_ok(),
            "a freed slot can be taken again"
        );
    }

    #[tokio::test]
    async fn sockets_of_a_tenant_share_its_frames_and_never_see_another_tenants() {
        let (hub, fakes) = fake_hub(8, 10);
        let mut a1 = hub.join(&tenant("acme")).unwrap();
        let mut a2 = hub.join(&tenant("acme")).unwrap();
        let mut b1 = hub.join(&tenant("bolt")).unwrap();
        let invoice = crate::frame::tests::invoice("acme", "T1", domain::InvoiceState::Queued);
        let frame = Arc::new(EventFrame::invoice_state(7, invoice.updated_at(), &invoice));
        {
            let senders = fakes.senders.lock().unwrap();
            let (t, acme, _, _) = &senders[0];
            assert_eq!(t.as_str(), "acme");
            acme.send(frame.clone()).unwrap();
        }
        assert_eq!(a1.recv().await.unwrap().seq, 7);
        assert_eq!(a2.recv().await.unwrap().seq, 7);
        assert!(matches!(
            b1.frames.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
    }
}
