//! The catalog and tenant settings (contract § Catalog and tenant): collections
//! `products` (one document per tenant and sku, unique), `catalog_versions` (one counter
//! per tenant) and `tenants`.
//!
//! A product write allocates the tenant's next catalog version and stores the product
//! under it in **one transaction**. That is what makes `GET /products?since=` a
//! complete delta: two writers cannot commit versions out of order (the second one's
//! increment of the counter conflicts with the first's until it commits, and is
//! retried), so a reader that has seen version n has seen every change up to n. A PUT
//! that changes nothing allocates nothing (same body twice = one version).

use crate::{Store, StoreError};
use domain::{Product, ProductDraft, TenantId, TenantSettings, Timestamp};
use futures_util::TryStreamExt;
use mongodb::{
    bson::{doc, Document},
    options::{IndexOptions, ReturnDocument},
    IndexModel,
};
use serde::{Deserialize, Serialize};

const PRODUCTS: &str = "products";
const VERSIONS: &str = "catalog_versions";
const TENANTS: &str = "tenants";
/// Transactions retried on a write conflict (another catalog write of the tenant).
const TRANSACTION_TRIES: usize = 20;

/// What a product write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductWrite {
    /// A new sku for the tenant (`201`); it got the next catalog version.
    Created,
    /// An existing product changed (`200`); it got the next catalog version.
    Updated,
    /// The stored product already had these values: no new version.
    Unchanged,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredProduct {
    tenant_id: String,
    #[serde(flatten)]
    product: Product,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredTenant {
    #[serde(rename = "_id")]
    id: String,
    #[serde(flatten)]
    settings: TenantSettings,
}

impl Store {
    fn products(&self) -> mongodb::Collection<StoredProduct> {
        self.db().collection(PRODUCTS)
    }

    pub(crate) async fn ensure_catalog_indexes(&self) -> Result<(), StoreError> {
        let unique = IndexModel::builder()
            .keys(doc! { "tenantId": 1, "sku": 1 })
            .options(
                IndexOptions::builder()
                    .name("tenant_sku".to_owned())
                    .unique(true)
                    .build(),
            )
            .build();
        let by_version = IndexModel::builder()
            .keys(doc! { "tenantId": 1, "version": 1 })
            .options(
                IndexOptions::builder()
                    .name("tenant_version".to_owned())
                    .build(),
            )
            .build();
        self.products().create_indexes([unique, by_version]).await?;
        Ok(())
    }

    /// `PUT /products/{sku}`.
    pub async fn put_product(
        &self,
        tenant: &TenantId,
        draft: &ProductDraft,
    ) -> Result<(Product, ProductWrite), StoreError> {
        let written = self
            .bounded(self.change_product(tenant, &draft.sku, |_| Some(draft.clone())))
            .await?;
        // `change` always gives a draft, so there is always a product.
        written.ok_or_else(|| StoreError::Corrupt("no product after a put".into()))
    }

    /// `DELETE /products/{sku}`: the stored product with `active: false`, decided inside
    /// the transaction (a price written meanwhile is kept); `None` if there is none.
    pub async fn deactivate_product(
        &self,
        tenant: &TenantId,
        sku: &str,
    ) -> Result<Option<(Product, ProductWrite)>, StoreError> {
        self.bounded(self.change_product(tenant, sku, |current| {
            current.map(|p| ProductDraft {
                sku: p.sku.clone(),
                name: p.name.clone(),
                unit_price: p.unit_price,
                tax_rate: p.tax_rate,
                active: false,
            })
        }))
        .await
    }

    /// One transaction: read the stored product, let `change` decide the new one
    /// (`None`: nothing to write), and store it under the tenant's next catalog version
    /// unless it equals the stored one.
    async fn change_product(
        &self,
        tenant: &TenantId,
        sku: &str,
        change: impl Fn(Option<&Product>) -> Option<ProductDraft>,
    ) -> Result<Option<(Product, ProductWrite)>, StoreError> {
        let products = self.products();
        let versions = self.db().collection::<Document>(VERSIONS);
        let filter = doc! { "tenantId": tenant.as_str(), "sku": sku };
        let mut last_error = None;
        for _ in 0..TRANSACTION_TRIES {
            let mut session = self.client.start_session().await?;
            session.start_transaction().await?;
            let attempt = async {
                let existing = products
                    .find_one(filter.clone())
                    .session(&mut session)
                    .await?;
                let Some(draft) = change(existing.as_ref().map(|e| &e.product)) else {
                    return Ok(None);
                };
                if let Some(e) = &existing {
                    if e.product.same_as(&draft) {
                        return Ok(Some((e.product.clone(), ProductWrite::Unchanged)));
                    }
                }
                let counter = versions
                    .find_one_and_update(
                        doc! { "_id": tenant.as_str() },
                        doc! { "$inc": { "version": 1_i64 } },
                    )
                    .upsert(true)
                    .return_document(ReturnDocument::After)
                    .session(&mut session)
                    .await?
                    .ok_or_else(|| mongodb::error::Error::custom("no counter after upsert"))?;
                let version = counter.get_i64("version").unwrap_or(1).max(1) as u64;
                let product = Product {
                    sku: draft.sku,
                    name: draft.name,
                    unit_price: draft.unit_price,
                    tax_rate: draft.tax_rate,
                    active: draft.active,
                    version,
                    updated_at: Timestamp::now(),
                };
                products
                    .replace_one(
                        filter.clone(),
                        StoredProduct {
                            tenant_id: tenant.to_string(),
                            product: product.clone(),
                        },
                    )
                    .upsert(true)
                    .session(&mut session)
                    .await?;
                let write = if existing.is_some() {
                    ProductWrite::Updated
                } else {
                    ProductWrite::Created
                };
                Ok::<_, mongodb::error::Error>(Some((product, write)))
            }
            .await;
            match attempt {
                Ok(done @ (None | Some((_, ProductWrite::Unchanged)))) => {
                    let _ = session.abort_transaction().await;
                    return Ok(done);
                }
                Ok(done) => match commit(&mut session).await {
                    Ok(()) => return Ok(done),
                    Err(e) if transient(&e) => last_error = Some(e),
                    Err(e) => return Err(e.into()),
                },
                Err(e) if transient(&e) => {
                    let _ = session.abort_transaction().await;
                    last_error = Some(e);
                }
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    return Err(e.into());
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "catalog write kept conflicting: {}",
            last_error.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// The tenant's product `sku`, active or not; `None` if it never existed.
    pub async fn product(
        &self,
        tenant: &TenantId,
        sku: &str,
    ) -> Result<Option<Product>, StoreError> {
        let filter = doc! { "tenantId": tenant.as_str(), "sku": sku };
        self.bounded(async { Ok(self.products().find_one(filter).await?.map(|p| p.product)) })
            .await
    }

    /// Products changed after catalog version `since`, oldest change first.
    pub async fn products_since(
        &self,
        tenant: &TenantId,
        since: u64,
        limit: u64,
    ) -> Result<Vec<Product>, StoreError> {
        let filter = doc! { "tenantId": tenant.as_str(), "version": { "$gt": since as i64 } };
        self.bounded(async {
            let cursor = self
                .products()
                .find(filter)
                .sort(doc! { "version": 1 })
                .limit(limit as i64)
                .await?;
            let stored: Vec<StoredProduct> = cursor.try_collect().await?;
            Ok(stored.into_iter().map(|p| p.product).collect())
        })
        .await
    }

    /// The active products named by `skus` (the invoice lines to price).
    pub async fn active_products(
        &self,
        tenant: &TenantId,
        skus: &[&str],
    ) -> Result<Vec<Product>, StoreError> {
        let filter = doc! { "tenantId": tenant.as_str(), "sku": { "$in": skus }, "active": true };
        self.bounded(async {
            let stored: Vec<StoredProduct> =
                self.products().find(filter).await?.try_collect().await?;
            Ok(stored.into_iter().map(|p| p.product).collect())
        })
        .await
    }

    /// The tenant's settings, or the defaults if none were ever set.
    pub async fn tenant(&self, tenant: &TenantId) -> Result<TenantSettings, StoreError> {
        self.bounded(async {
            let found = self
                .db()
                .collection::<StoredTenant>(TENANTS)
                .find_one(doc! { "_id": tenant.as_str() })
                .await?;
            Ok(found.map_or_else(|| TenantSettings::defaults(tenant.clone()), |t| t.settings))
        })
        .await
    }

    /// Stores the tenant's settings, replacing any earlier ones.
    pub async fn put_tenant(&self, settings: &TenantSettings) -> Result<(), StoreError> {
        let stored = StoredTenant {
            id: settings.id.to_string(),
            settings: settings.clone(),
        };
        self.bounded(async {
            self.db()
                .collection::<StoredTenant>(TENANTS)
                .replace_one(doc! { "_id": settings.id.as_str() }, stored)
                .upsert(true)
                .await?;
            Ok(())
        })
        .await
    }
}

async fn commit(session: &mut mongodb::ClientSession) -> Result<(), mongodb::error::Error> {
    loop {
        match session.commit_transaction().await {
            Err(e) if e.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT) => {
                continue
            }
            other => return other,
        }
    }
}

fn transient(e: &mongodb::error::Error) -> bool {
    e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
}
