//! The OpenAPI document, generated from the code: each handler's `#[utoipa::path]`
//! (next to the handler), the request and representation types' derived schemas, and
//! the error body's schema from the one `ErrorCode` table. The router is built from the
//! same declarations (`routes.rs`, `utoipa_axum::routes!`), so a route without a
//! document entry, or the reverse, cannot be written. Served at `/openapi.json`, read
//! with Redoc at `/docs`.

use service_kit::http::ErrorBody;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "PoS invoice backend — ingress",
        version = "1.1.0",
        description = "REST API for PoS terminals (contract v1.1, shared/contract/api.md). \
            Every error has the body {error:{code,message,details?}}; no request gets a 500. \
            Limits: 256 KiB bodies, 16 KiB headers (431), 500 items, 100 payments, \
            per-tenant and per-terminal rates (429 with Retry-After)."
    ),
    servers((url = "http://localhost:3000")),
    modifiers(&Bearer),
    tags((name = "invoices"), (name = "catalog"), (name = "fiscal"), (name = "operations"))
)]
pub struct ApiDoc;

/// The errors every authenticated route can answer, whatever it does: listed once and
/// named in each route's `responses(…)`.
#[derive(IntoResponses)]
#[allow(dead_code)] // a document, never built
pub enum Guarded {
    /// No valid bearer token.
    #[response(status = 401, description = "unauthorized")]
    Unauthorized(ErrorBody),
    /// The whole request took longer than the server's deadline.
    #[response(status = 408, description = "request_timeout")]
    Timeout(ErrorBody),
    /// Over the tenant's or the terminal's rate (with `Retry-After`).
    #[response(status = 429, description = "rate_limited")]
    RateLimited(ErrorBody),
    /// A dependency is down (with `Retry-After`).
    #[response(status = 503, description = "unavailable")]
    Unavailable(ErrorBody),
}

/// The errors of a route that reads a JSON body, besides [`Guarded`]'s.
#[derive(IntoResponses)]
#[allow(dead_code)] // a document, never built
pub enum WithBody {
    /// Over the 256 KiB body limit.
    #[response(status = 413, description = "payload_too_large")]
    TooLarge(ErrorBody),
    /// Not `application/json`.
    #[response(status = 415, description = "unsupported_media_type")]
    NotJson(ErrorBody),
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT with sub, tenant, role (terminal | manager | admin), exp",
                    ))
                    .build(),
            ),
        );
    }
}

/// `/docs`: Redoc reading `/openapi.json` (the script comes from Redoc's CDN; the
/// document itself is always served locally).
pub const DOCS_HTML: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>PoS ingress API</title></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script>
</body></html>
"#;
