//! Hostile requests and peers (contract § Limits, abuse and roles). The first two are
//! cases tried against the release build that failed: one POST of ~87 000 empty items
//! froze a tokio worker for minutes, and 20 000 half-sent request heads without a token
//! were held forever until `/health` stopped answering.

use crate::support::{stack::Options, TestStack};
use reqwest::StatusCode;
use service_kit::server::ServerLimits;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn port_of(stack: &TestStack) -> u16 {
    stack
        .api
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the base URL")
}

/// Half a request head: the request line and one header, never the blank line.
async fn half_head(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"POST /invoices HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    s
}

/// Whether the server closed `s` within `within` (EOF or reset on read).
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue, // a 408 or the like before the close
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_of_87000_empty_items_is_refused_at_once_and_health_keeps_answering() {
    let stack = TestStack::start().await;
    let items = vec!["{}"; 87_000].join(",");
    let body = format!(r#"{{"terminalId":"T1","currency":"EUR","items":[{items}]}}"#);
    assert!(body.len() <= 256 * 1024, "inside the body limit");
    // Three at once: before the fix each held a worker at 100 % for minutes.
    let started = std::time::Instant::now();
    let posts: Vec<_> = (0..3)
        .map(|_| {
            let api = stack.api.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let token = api.token.clone();
                let a = api.post_raw("application/json", body, Some(&token)).await;
                (a, started.elapsed())
            })
        })
        .collect();
    let health = stack
        .api
        .http
        .get(format!("{}/health", stack.api.base))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("/health answers while the big POSTs are in");
    let health_after = started.elapsed();
    assert!(health.status().is_success() || health.status() == 503);
    for post in posts {
        let (a, took) = tokio::time::timeout(Duration::from_secs(20), post)
            .await
            .expect("the big POST is answered, not left running")
            .unwrap();
        // A figure, not an assertion: the machine is shared and noisy.
        println!(
            "87 000-item POST answered 400 after {took:?}; /health answered after {health_after:?}"
        );
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
        assert_eq!(a.error_code(), "validation_failed");
        let details = a.body["error"]["details"].as_array().unwrap();
        assert_eq!(details.len(), 1, "the count alone: {details:?}");
        assert_eq!(details[0]["path"], "items");
        assert!(details[0]["message"].as_str().unwrap().contains("87000"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_heads_are_closed_and_a_normal_request_is_served_meanwhile() {
    let stack = TestStack::with(Options {
        http: ServerLimits {
            header_read_timeout: Duration::from_secs(2),
            ..ServerLimits::default()
        },
        ..Options::default()
    })
    .await;
    let port = port_of(&stack);
    // 2 000 rather than 20 000: the test process holds both ends within its fd limit.
    let mut held = Vec::new();
    for _ in 0..2_000 {
        held.push(half_head(port).await);
    }
    let a = stack.api.get("/invoices?limit=1").await;
    assert_eq!(a.status, StatusCode::OK, "served beside 2 000 half heads");
    let closes = futures_util::future::join_all(
        held.iter_mut()
            .map(|s| closed_by_server(s, Duration::from_secs(20))),
    )
    .await;
    let still_open = closes.iter().filter(|c| !**c).count();
    assert_eq!(still_open, 0, "every half head is closed by the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_and_frees_as_idle_connections_time_out() {
    let stack = TestStack::with(Options {
        http: ServerLimits {
            header_read_timeout: Duration::from_secs(2),
            max_connections: 20,
            ..ServerLimits::default()
        },
        ..Options::default()
    })
    .await;
    let port = port_of(&stack);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(half_head(port).await);
    }
    // The 21st is connected by the kernel but not served while 20 are open...
    let quick = reqwest::Client::new()
        .get(format!("{}/health", stack.api.base))
        .timeout(Duration::from_millis(800))
        .send()
        .await;
    assert!(quick.is_err(), "over the cap, no connection is served");
    // ...and is served once the header deadline has closed the half heads.
    let later = stack
        .api
        .http
        .get(format!("{}/health", stack.api.base))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("served after the idle ones were closed");
    assert!(later.status().is_success() || later.status() == 503);
    for s in &mut held {
        assert!(closed_by_server(s, Duration::from_secs(1)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_deadline() {
    let stack = TestStack::with(Options {
        http: ServerLimits {
            header_read_timeout: Duration::from_secs(1),
            ..ServerLimits::default()
        },
        ..Options::default()
    })
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", port_of(&stack)))
        .await
        .unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 "));
    assert!(
        closed_by_server(&mut s, Duration::from_secs(10)).await,
        "the kept-alive connection is closed once idle past the deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_16_kib_get_431_and_just_under_are_served() {
    let stack = TestStack::start().await;
    let send = |size: usize| {
        let api = stack.api.clone();
        async move {
            api.http
                .get(format!("{}/invoices?limit=1", api.base))
                .bearer_auth(&api.token)
                .header("x-padding", "a".repeat(size))
                .send()
                .await
                .map(|r| r.status())
        }
    };
    assert_eq!(send(15 * 1024).await.unwrap(), StatusCode::OK);
    assert_eq!(
        send(17 * 1024).await.unwrap(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_answer_the_json_error_body() {
    let stack = TestStack::start().await;
    let a = stack.api.get("/no/such/path").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error_code(), "not_found");
    let r = stack
        .api
        .http
        .delete(format!("{}/invoices", stack.api.base))
        .bearer_auth(&stack.api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.headers().contains_key("allow"), "Allow is kept");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_echoed_when_valid_and_replaced_when_not() {
    let stack = TestStack::start().await;
    let with_id = |id: String| {
        let api = stack.api.clone();
        async move {
            let r = api
                .http
                .get(format!("{}/health", api.base))
                .header("x-request-id", id)
                .send()
                .await
                .unwrap();
            r.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(with_id("req-42".into()).await, "req-42");
    let long = "x".repeat(129);
    let replaced = with_id(long.clone()).await;
    assert_ne!(replaced, long);
    assert!(service_kit::server::is_valid_request_id(
        replaced.as_bytes()
    ));
    let spaced = with_id("has space".into()).await;
    assert_ne!(spaced, "has space");
}

fn token_of(tenant: &str, sub: &str) -> String {
    crate::support::stack::signed(tenant, sub, auth::Role::Terminal, 600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_over_its_rate_gets_429_with_retry_after_and_its_neighbours_do_not() {
    use ingress::guard::{Rate, RateLimits};
    let stack = TestStack::with(Options {
        rate_limits: RateLimits {
            tenant: Rate {
                per_second: 1000,
                burst: 1000,
            },
            terminal: Rate {
                per_second: 1,
                burst: 3,
            },
        },
        ..Options::default()
    })
    .await;
    let get = |token: String| {
        let api = stack.api.clone();
        async move {
            api.http
                .get(format!("{}/invoices?limit=1", api.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    let greedy = token_of(&stack.tenant, "T-greedy");
    for _ in 0..3 {
        assert_eq!(get(greedy.clone()).await.status(), StatusCode::OK);
    }
    let refused = get(greedy.clone()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // The POST path is guarded the same way, before the body is read.
    let post = stack
        .api
        .post_raw(
            "application/json",
            crate::support::invoice_body(None, "T1").to_string(),
            Some(&greedy),
        )
        .await;
    assert_eq!(post.status, StatusCode::TOO_MANY_REQUESTS);
    let neighbour = token_of(&stack.tenant, "T-calm");
    assert_eq!(get(neighbour).await.status(), StatusCode::OK);
    // After the advertised wait the greedy terminal is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(get(greedy).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_get_401_and_nothing_reaches_nats() {
    let stack = TestStack::start().await;
    let b64 = |v: serde_json::Value| {
        use std::fmt::Write;
        // base64url without padding, by hand: the test crate has no base64 dependency.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                let _ = write!(out, "{}", A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let claims = serde_json::json!({
        "sub": "T1", "tenant": stack.tenant, "role": "admin",
        "exp": chrono::Utc::now().timestamp() + 600
    });
    let valid = token_of(&stack.tenant, "T1");
    let signature = valid.rsplit('.').next().unwrap();
    let forged = [
        format!(
            "{}.{}.",
            b64(serde_json::json!({"alg":"none"})),
            b64(claims.clone())
        ),
        // A real signature pasted onto other claims.
        format!(
            "{}.{}.{signature}",
            b64(serde_json::json!({"alg":"HS256","typ":"JWT"})),
            b64(claims.clone())
        ),
        format!(
            "{}.{}.{signature}",
            b64(serde_json::json!({"alg":"RS256"})),
            b64(claims)
        ),
        auth::sign(
            "another-secret-0123456789",
            &auth::Claims {
                sub: "T1".into(),
                tenant: domain::TenantId::parse(stack.tenant.as_str()).unwrap(),
                role: auth::Role::Admin,
                exp: chrono::Utc::now().timestamp() + 600,
            },
        ),
        format!("{valid}{}", "A".repeat(10 * 1024)),
        // Signed with the real secret, but naming tenants that would break a subject.
        auth::sign(
            crate::support::stack::SECRET,
            &serde_json::json!({"sub": "T1", "tenant": "shop.*", "role": "terminal", "exp": chrono::Utc::now().timestamp() + 600}),
        ),
        auth::sign(
            crate::support::stack::SECRET,
            &serde_json::json!({"sub": "T1", "tenant": "a b", "role": "terminal", "exp": chrono::Utc::now().timestamp() + 600}),
        ),
    ];
    for token in &forged {
        let a = stack
            .api
            .post_raw(
                "application/json",
                crate::support::invoice_body(Some(&crate::support::unique("k-")), "T1").to_string(),
                Some(token),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "{token:.60}: {}",
            a.body
        );
        assert_eq!(a.error_code(), "unauthorized");
    }
    let js = async_nats::jetstream::new(stack.nats().await);
    let mut stream = js
        .get_stream(format!("{}_INVOICES", stack.namespace.to_uppercase()))
        .await
        .unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        0,
        "no forged request reached the broker"
    );
    // The same count does see a genuine one.
    let genuine = stack
        .api
        .post(&crate::support::invoice_body(None, "T1"))
        .await;
    assert_eq!(genuine.status, StatusCode::ACCEPTED);
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_closed_with_4001_when_its_token_expires() {
    let stack = TestStack::start().await;
    let fanout = stack.start_fanout(&[]).await;
    let token = crate::support::stack::token(&stack.tenant, 2);
    let (mut ws, _) = tokio_tungstenite::connect_async(fanout.ws_url_with_token(&token, ""))
        .await
        .unwrap();
    let ended = loop {
        match crate::support::stack::next_frame(&mut ws, Duration::from_secs(15)).await {
            Some(crate::support::stack::Received::Closed(c)) => break c,
            Some(_) => continue,
            None => panic!("still open 15 s after the token expired"),
        }
    };
    let (code, reason) = ended.expect("a close frame");
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.starts_with("token expired"), "{reason}");
}

/// Whether a JetStream publish by `client` on `subject` was stored (an ack within 2 s).
async fn stored(client: &async_nats::Client, subject: String) -> bool {
    let js = async_nats::jetstream::new(client.clone());
    match tokio::time::timeout(Duration::from_secs(2), async {
        js.publish(subject, "forged".into()).await?.await
    })
    .await
    {
        Ok(Ok(_)) => true,
        Ok(Err(_)) | Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_user_is_refused_outside_its_nats_permissions() {
    let stack = TestStack::start().await;
    let infra = &stack.infra;
    if matches!(
        infra.nats_auth("ingress"),
        service_kit::settings::NatsAuth::Anonymous
    ) {
        panic!("the shared nats-server runs without users: start it with `./x test` (xtask stack)");
    }
    let ns = &stack.namespace;
    let tenant = &stack.tenant;
    let url = &infra.nats_url;
    let (ingress, persister, fanout, operator) = (
        infra.nats_as("ingress", url).await,
        infra.nats_as("persister", url).await,
        infra.nats_as("fanout", url).await,
        infra.operator_nats().await,
    );
    // What each may do, as a baseline the refusals are measured against.
    assert!(stored(&ingress, format!("{ns}.submit.{tenant}.k-ok")).await);
    assert!(stored(&operator, format!("{ns}.events.{tenant}.e-ok")).await);
    // What each may not.
    assert!(
        !stored(&persister, format!("{ns}.submit.{tenant}.k-1")).await,
        "persister forged a submission"
    );
    assert!(
        !stored(&fanout, format!("{ns}.events.{tenant}.e-1")).await,
        "fanout forged an event"
    );
    assert!(
        !stored(&ingress, format!("{ns}.dlq.{tenant}")).await,
        "ingress wrote a dead letter"
    );
    // No service user may call the admin endpoints (DLQ list and replay).
    let admin = tokio::time::timeout(
        Duration::from_secs(2),
        ingress.request(format!("{ns}.admin.dlq.list"), "{}".into()),
    )
    .await;
    assert!(
        !matches!(admin, Ok(Ok(_))),
        "ingress listed the dead letters"
    );
    // Nor delete or purge a stream.
    let js = async_nats::jetstream::new(fanout.clone());
    let invoices = format!("{}_INVOICES", ns.to_uppercase());
    let deleted = tokio::time::timeout(Duration::from_secs(2), js.delete_stream(&invoices)).await;
    assert!(!matches!(deleted, Ok(Ok(_))), "fanout deleted a stream");
    // Nor read another tenant's events off the raw subjects.
    let mut sniff = ingress.subscribe(format!("{ns}.events.>")).await.unwrap();
    ingress.flush().await.unwrap();
    assert!(stored(&operator, format!("{ns}.events.{tenant}.e-2")).await);
    let sniffed = tokio::time::timeout(
        Duration::from_millis(500),
        futures_util::StreamExt::next(&mut sniff),
    )
    .await;
    assert!(!matches!(sniffed, Ok(Some(_))), "ingress read events");
    // The streams are intact, holding only what was allowed.
    let ojs = async_nats::jetstream::new(operator);
    let mut s = ojs.get_stream(&invoices).await.unwrap();
    assert_eq!(s.info().await.unwrap().state.messages, 1);
    // A wrong password is refused at connect.
    let wrong =
        async_nats::ConnectOptions::with_user_and_password("ingress".into(), "wrong".into())
            .connect(url.as_str())
            .await;
    assert!(wrong.is_err(), "a wrong password connected");
}

/// The served OpenAPI document and the router agree: every documented operation is
/// routed (answers neither 405 nor the router's own 404), undocumented methods on a
/// documented path are 405, and the error codes it lists are the services' own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_and_the_routes_agree() {
    let stack = TestStack::start().await;
    let doc: serde_json::Value = reqwest::get(format!("{}/openapi.json", stack.api.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "put", "delete", "patch"] {
            let concrete = path.replace("{id}", "01a23456-0000-7000-8000-000000000000");
            let url = format!("{}{concrete}", stack.api.base);
            let request = stack
                .api
                .http
                .request(method.to_uppercase().parse().unwrap(), &url)
                .bearer_auth(&stack.api.token)
                .header("content-type", "application/json")
                .body("{}");
            let r = request.send().await.unwrap();
            let status = r.status();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            let routed = status != StatusCode::METHOD_NOT_ALLOWED
                && body["error"]["message"] != "no such resource";
            assert_eq!(
                routed,
                item.get(method).is_some(),
                "{method} {path}: {status} {body} (documented: {})",
                item.get(method).is_some()
            );
            if routed {
                documented.push(format!("{method} {path}"));
            }
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "delete /products/{sku}",
            "get /health",
            "get /invoices",
            "get /invoices/{id}",
            "get /ledger/export",
            "get /ledger/verify",
            "get /products",
            "get /products/{sku}",
            "get /tenant",
            "post /invoices",
            "post /invoices/{id}/credit-notes",
            "put /products/{sku}",
            "put /tenant"
        ]
    );
    let codes: std::collections::BTreeSet<&str> = doc["components"]["schemas"]["ErrorBody"]
        ["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let ours: std::collections::BTreeSet<&str> = service_kit::http::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(codes, ours);
    let docs = reqwest::get(format!("{}/docs", stack.api.base))
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("/openapi.json"));
}
