//! Ingress's routes called in-process with `tower::ServiceExt::oneshot`: no TCP, no HTTP
//! server layers, one request in, one response out. The quick net under the route table,
//! the extractors and the error mapping (auth → 401/403, body → 400 naming each field,
//! unknown id → 404, a round trip through the real broker and stores → 202 then 200);
//! the same cases over real HTTP are in `http_contract.rs` and `hostile.rs`.

use crate::support::{invoice_body, stack::token_as, unique, TestStack};
use axum::{
    body::Body,
    http::{header, Method, Request, StatusCode},
};
use serde_json::Value;
use tower::ServiceExt;

/// Sends one request through the router and returns its status and JSON body.
async fn call(
    stack: &TestStack,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = match body {
        Some(b) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = stack.ingress_router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_or_with_too_small_a_role_the_routes_answer_401_and_403() {
    let stack = TestStack::start().await;
    let (status, body) = call(&stack, Method::GET, "/invoices", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let terminal = token_as(&unique("shop"), auth::Role::Terminal);
    let product = serde_json::json!({ "name": "Tea", "unitPrice": "2.00", "taxRate": "0.10" });
    let (status, body) = call(
        &stack,
        Method::PUT,
        "/products/TEA",
        Some(&terminal),
        Some(&product),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_body_gets_400_naming_every_failing_field() {
    let stack = TestStack::start().await;
    let token = token_as(&unique("shop"), auth::Role::Terminal);
    let mut body = invoice_body(Some(&unique("k-")), "T1");
    body["currency"] = "XXX1".into();
    body["items"][0]["quantity"] = "-1".into();
    let (status, answer) = call(&stack, Method::POST, "/invoices", Some(&token), Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "validation_failed");
    let fields: Vec<&str> = answer["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    assert!(fields.contains(&"currency"), "{answer}");
    assert!(fields.contains(&"items[0].quantity"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_invoice_is_replayed_by_its_key_and_an_unknown_id_is_404() {
    let stack = TestStack::start().await;
    let token = token_as(&unique("shop"), auth::Role::Terminal);
    let body = invoice_body(Some(&unique("k-")), "T1");
    let (status, first) = call(&stack, Method::POST, "/invoices", Some(&token), Some(&body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again) = call(&stack, Method::POST, "/invoices", Some(&token), Some(&body)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    let id = first["id"].as_str().unwrap();
    let (status, read) = call(
        &stack,
        Method::GET,
        &format!("/invoices/{id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["id"], id);
    let unknown = uuid::Uuid::now_v7();
    let (status, missing) = call(
        &stack,
        Method::GET,
        &format!("/invoices/{unknown}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    assert_eq!(missing["error"]["code"], "not_found");
}
