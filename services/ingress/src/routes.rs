//! The router: which path goes to which handler.

use crate::AppState;
use axum::{
    extract::DefaultBodyLimit,
    routing::{get, post},
    Router,
};

pub mod health;
pub mod invoices;

pub fn router(state: AppState) -> Router {
    // Everything but /health and the API document goes through the guard.
    let authenticated = Router::new()
        .route("/invoices", post(invoices::create).get(invoices::list))
        .route("/invoices/{id}", get(invoices::get))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::guard::gate,
        ));
    Router::new()
        .route("/health", get(health::health))
        .route("/openapi.json", get(openapi))
        .merge(authenticated)
        .layer(DefaultBodyLimit::max(crate::extract::MAX_BODY_BYTES))
        .with_state(state)
}

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
}
