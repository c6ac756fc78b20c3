//! The tenants' catalogs and settings as ingress needs them on the hot path: pricing
//! sku-only invoice lines and defaulting the currency without a MongoDB round trip per
//! request. Per tenant, the products asked for so far (found or not) and the settings,
//! dropped when a catalog change notice for the tenant arrives (`<ns>.catalog.<tenant>`,
//! sent by whichever ingress instance made the change) and, as a net under a lost
//! notice, after [`CACHE_TTL`].

use domain::{Product, TenantId, TenantSettings};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Store, StoreError};

/// Longest a cached entry is trusted without a notice (core NATS may drop one).
pub const CACHE_TTL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Entry {
    loaded: Option<Instant>,
    products: HashMap<String, Option<Product>>,
    settings: Option<TenantSettings>,
}

#[derive(Clone)]
pub struct Catalog {
    store: Store,
    tenants: Arc<Mutex<HashMap<TenantId, Entry>>>,
    /// Bumped by every invalidation: a lookup that read MongoDB while one happened does
    /// not cache what it read (it may be the value the change replaced).
    epoch: Arc<AtomicU64>,
}

impl Catalog {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            tenants: Arc::default(),
            epoch: Arc::default(),
        }
    }

    /// Follows the change notices for as long as the bus lives.
    pub async fn follow(&self, bus: &messaging::Bus) -> Result<(), messaging::BusError> {
        use futures_util::StreamExt;
        let notices = bus.catalog_notices().await?;
        let me = self.clone();
        tokio::spawn(async move {
            let mut notices = std::pin::pin!(notices);
            while let Some((tenant, _version)) = notices.next().await {
                me.invalidate(&tenant);
            }
        });
        Ok(())
    }

    pub fn invalidate(&self, tenant: &TenantId) {
        let mut tenants = self.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        tenants.remove(tenant);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Entry>> {
        // A panic while holding it leaves only a cache behind: take it anyway.
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fresh(entry: &Entry) -> bool {
        entry.loaded.is_some_and(|at| at.elapsed() < CACHE_TTL)
    }

    /// The active products among `skus`.
    pub async fn products(
        &self,
        tenant: &TenantId,
        skus: &[&str],
    ) -> Result<HashMap<String, Product>, StoreError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let mut tenants = self.lock();
            let entry = tenants.entry(tenant.clone()).or_default();
            if !Self::fresh(entry) {
                *entry = Entry::default();
            }
            for sku in skus {
                match entry.products.get(*sku) {
                    Some(Some(p)) => {
                        found.insert((*sku).to_owned(), p.clone());
                    }
                    Some(None) => {}
                    None => missing.push(*sku),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let fetched = self.store.active_products(tenant, &missing).await?;
        let mut tenants = self.lock();
        if self.epoch.load(Ordering::SeqCst) != epoch {
            found.extend(fetched.into_iter().map(|p| (p.sku.clone(), p)));
            return Ok(found);
        }
        let entry = tenants.entry(tenant.clone()).or_default();
        entry.loaded.get_or_insert_with(Instant::now);
        for sku in missing {
            let product = fetched.iter().find(|p| p.sku == sku).cloned();
            if let Some(p) = &product {
                found.insert(sku.to_owned(), p.clone());
            }
            entry.products.insert(sku.to_owned(), product);
        }
        Ok(found)
    }

    pub async fn settings(&self, tenant: &TenantId) -> Result<TenantSettings, StoreError> {
        {
            let tenants = self.lock();
            if let Some(s) = tenants
                .get(tenant)
                .filter(|e| Self::fresh(e))
                .and_then(|e| e.settings.clone())
            {
                return Ok(s);
            }
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let settings = self.store.tenant(tenant).await?;
        let mut tenants = self.lock();
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return Ok(settings);
        }
        let entry = tenants.entry(tenant.clone()).or_default();
        if !Self::fresh(entry) {
            *entry = Entry::default();
            entry.loaded = Some(Instant::now());
        }
        entry.settings = Some(settings.clone());
        Ok(settings)
    }
}
