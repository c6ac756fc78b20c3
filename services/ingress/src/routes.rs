//! The router, built together with the OpenAPI document from the handlers' own
//! declarations (`openapi.rs`): which path goes to which handler.

use crate::AppState;
use axum::{extract::DefaultBodyLimit, routing::get, Router};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

pub mod catalog;
pub mod fiscal;
pub mod health;
pub mod invoices;

/// The routes and their document.
pub fn routes(state: AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    // Everything but /health and the API document goes through the guard.
    let authenticated = OpenApiRouter::new()
        .routes(routes!(invoices::create, invoices::list))
        .routes(routes!(invoices::get))
        .routes(routes!(catalog::put, catalog::get, catalog::delete))
        .routes(routes!(catalog::list))
        .routes(routes!(catalog::get_tenant, catalog::put_tenant))
        .routes(routes!(fiscal::credit))
        .routes(routes!(fiscal::verify))
        .routes(routes!(fiscal::export))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            crate::guard::gate,
        ));
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(health::health))
        .merge(authenticated)
        .split_for_parts()
}

pub fn router(state: AppState) -> Router {
    let (routes, document) = routes(state.clone());
    let document = std::sync::Arc::new(
        document
            .to_json()
            .unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#)),
    );
    routes
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        document.as_str().to_owned(),
                    )
                }
            }),
        )
        .route(
            "/docs",
            get(|| async { axum::response::Html(crate::openapi::DOCS_HTML) }),
        )
        .layer(DefaultBodyLimit::max(crate::extract::MAX_BODY_BYTES))
        .with_state(state)
}
