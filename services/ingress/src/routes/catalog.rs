//! `PUT/GET/DELETE /products/{sku}`, `GET /products?since=&limit=`, `GET/PUT /tenant`
//! (contract § Catalog and tenant). Writes need a manager (products) or an admin
//! (tenant), declared by the extractor; each change is announced on
//! `<ns>.catalog.<tenant>` so every ingress drops its cached copy at once.

use crate::{
    error::ApiError,
    extract::{DecimalText, JsonBody, Params, QueryParams},
    AppState,
};
use auth::{Admin, Authenticated, Authorized, Manager};
use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use domain::{Product, ProductDraft, TenantId, TenantSettings};
use serde::Deserialize;
use service_kit::http::ErrorBody;
use std::collections::BTreeMap;
use store::ProductWrite;

fn unavailable(e: store::StoreError) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProductRequest {
    #[schema(required = true, nullable = false, min_length = 1, max_length = 200)]
    name: Option<String>,
    #[schema(required = true, nullable = false)]
    unit_price: Option<DecimalText>,
    #[schema(required = true, nullable = false)]
    tax_rate: Option<DecimalText>,
    #[schema(nullable = false)]
    active: Option<bool>,
}

/// One page of `GET /products`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ProductPage {
    data: Vec<Product>,
    /// The `since` of the next request.
    next: u64,
}

/// A change makes every ingress drop its cached copy (this one at once) and reaches
/// the tenant's terminals.
async fn announce(state: &AppState, tenant: &TenantId, product: &Product, written: ProductWrite) {
    if written != ProductWrite::Unchanged {
        state.catalog.invalidate(tenant);
        state
            .bus
            .catalog_changed(tenant, Some(product.version))
            .await;
    }
}

/// PUT /products/{sku}
#[utoipa::path(put, path = "/products/{sku}", tag = "catalog",
    params(("sku" = String, Path, min_length = 1, max_length = 64)),
    request_body(content = ProductRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "created", body = Product),
        (status = 200, description = "updated, or unchanged (same values: no new version)", body = Product),
        (status = 400, description = "validation_failed", body = ErrorBody),
        (status = 403, description = "forbidden: needs manager", body = ErrorBody),
        crate::openapi::Guarded,
        crate::openapi::WithBody,
    ))]
pub async fn put(
    State(state): State<AppState>,
    caller: Authorized<Manager>,
    Path(sku): Path<String>,
    JsonBody(request): JsonBody<ProductRequest>,
) -> Result<Response, ApiError> {
    let tenant = caller.claims().tenant.clone();
    let draft = ProductDraft::parse(
        &sku,
        request.name.as_deref(),
        request.unit_price.map(|d| d.text()).as_deref(),
        request.tax_rate.map(|d| d.text()).as_deref(),
        request.active,
    )
    .map_err(ApiError::validation)?;
    let (product, written) = state
        .store
        .put_product(&tenant, &draft)
        .await
        .map_err(unavailable)?;
    announce(&state, &tenant, &product, written).await;
    let status = if written == ProductWrite::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(product)).into_response())
}

/// GET /products/{sku}
#[utoipa::path(get, path = "/products/{sku}", tag = "catalog",
    params(("sku" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the product (also when deactivated)", body = Product),
        (status = 404, description = "not_found", body = ErrorBody),
        crate::openapi::Guarded,
    ))]
pub async fn get(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = caller.claims().tenant.clone();
    match state
        .store
        .product(&tenant, &sku)
        .await
        .map_err(unavailable)?
    {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError::NotFound),
    }
}

/// DELETE /products/{sku}: deactivates (kept for history and delta sync).
#[utoipa::path(delete, path = "/products/{sku}", tag = "catalog",
    params(("sku" = String, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "deactivated", body = Product),
        (status = 403, description = "forbidden: needs manager", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        crate::openapi::Guarded,
    ))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Authorized<Manager>,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = caller.claims().tenant.clone();
    let Some((product, written)) = state
        .store
        .deactivate_product(&tenant, &sku)
        .await
        .map_err(unavailable)?
    else {
        return Err(ApiError::NotFound);
    };
    announce(&state, &tenant, &product, written).await;
    Ok(Json(product).into_response())
}

/// GET /products?since=&limit=
#[utoipa::path(get, path = "/products", tag = "catalog",
    params(
        ("since" = Option<u64>, Query, description = "the last catalog version the caller has (default 0)"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 500),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "every product changed after since, oldest change first", body = ProductPage),
        (status = 400, description = "validation_failed", body = ErrorBody),
        crate::openapi::Guarded,
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
    QueryParams(params): QueryParams<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let tenant = caller.claims().tenant.clone();
    let mut q = Params::new(params);
    let since = q.number("since", 0, 0, i64::MAX as u64);
    let limit = q.number("limit", 100, 1, 500);
    q.finish(&["since", "limit"])?;
    let data = state
        .store
        .products_since(&tenant, since, limit)
        .await
        .map_err(unavailable)?;
    let next = data.last().map_or(since, |p| p.version);
    Ok(Json(ProductPage { data, next }).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantRequest {
    #[schema(nullable = false, min_length = 1, max_length = 200)]
    name: Option<String>,
    #[schema(max_length = 64)]
    issuer_tax_id: Option<String>,
    #[schema(value_type = Option<domain::Currency>)]
    default_currency: Option<String>,
    #[schema(nullable = false, pattern = "^[A-Za-z0-9_-]{1,16}$")]
    series: Option<String>,
}

/// GET /tenant
#[utoipa::path(get, path = "/tenant", tag = "catalog",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the settings, or the defaults if never set", body = TenantSettings),
        crate::openapi::Guarded,
    ))]
pub async fn get_tenant(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Response, ApiError> {
    let tenant = caller.claims().tenant.clone();
    let settings = state.store.tenant(&tenant).await.map_err(unavailable)?;
    Ok(Json(settings).into_response())
}

/// PUT /tenant: sets every field (an absent one takes its default).
#[utoipa::path(put, path = "/tenant", tag = "catalog",
    request_body(content = TenantRequest, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "stored", body = TenantSettings),
        (status = 400, description = "validation_failed", body = ErrorBody),
        (status = 403, description = "forbidden: needs admin", body = ErrorBody),
        crate::openapi::Guarded,
        crate::openapi::WithBody,
    ))]
pub async fn put_tenant(
    State(state): State<AppState>,
    caller: Authorized<Admin>,
    JsonBody(request): JsonBody<TenantRequest>,
) -> Result<Response, ApiError> {
    let tenant = caller.claims().tenant.clone();
    let settings = TenantSettings::parse(
        tenant.clone(),
        request.name.as_deref(),
        request.issuer_tax_id.as_deref(),
        request.default_currency.as_deref(),
        request.series.as_deref(),
    )
    .map_err(ApiError::validation)?;
    state
        .store
        .put_tenant(&settings)
        .await
        .map_err(unavailable)?;
    state.catalog.invalidate(&tenant);
    state.bus.catalog_changed(&tenant, None).await;
    Ok(Json(settings).into_response())
}
