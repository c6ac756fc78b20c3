//! `GET /health`: dependencies this service needs, and the processing queue's figures.

use crate::AppState;
use axum::{extract::State, response::IntoResponse};
use service_kit::http::Health;

#[utoipa::path(get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "every dependency answers", body = Health),
        (status = 503, description = "a dependency is down (named in checks)", body = Health),
    ))]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let (redis, mongo, queue) = tokio::join!(
        state.cache.ping(),
        state.store.ping(),
        state.bus.queue_stats()
    );
    let nats = state.bus.is_connected() && queue.is_ok();
    let mut health = Health::new(
        "ingress",
        [("nats", nats), ("redis", redis), ("mongo", mongo)],
    );
    health.queue = queue.ok().and_then(|q| serde_json::to_value(q).ok());
    health
}
