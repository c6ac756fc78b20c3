//! schemathesis (PyPI) against the OpenAPI document the ingress serves, on a real stack:
//! generated valid and invalid requests to every operation, every check but one (no
//! 5xx, every status and body as documented, auth enforced, invalid input refused). A short seeded run here; the README
//! gives the long one. `SCHEMATHESIS` is the program, installed by `./x test` (xtask).

use crate::support::TestStack;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_response_outside_the_schema() {
    let program = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| {
        panic!("SCHEMATHESIS is not set: run the suite with `./x test` (it installs schemathesis)")
    });
    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "30".into());
    let stack = TestStack::start().await;
    let report = crate::support::infra::tempdir("schemathesis");
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis.toml").to_owned();
    let run = tokio::process::Command::new(&program)
        .args([
            "--config-file",
            &config,
            "run",
            &format!("{}/openapi.json", stack.api.base),
            // The coverage phase crashes inside schemathesis 4.32 on Python 3.11
            // ("AST constructor recursion depth mismatch"); the other three run.
            "--phases",
            "examples,fuzzing,stateful",
            "--header",
            &format!("Authorization: Bearer {}", stack.api.token),
            "--checks",
            "all",
            // A schema cannot state every rule of a valid invoice (taxRate in [0, 1],
            // quantity > 0, discount ≤ gross, a currency's decimal places), so a request
            // valid by the schema may rightly get a 400 naming the field. Every other
            // check stays: no 5xx, statuses/bodies/headers as documented, auth enforced,
            // schema-invalid requests refused.
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            &examples,
            "--seed",
            "20261202",
            // One worker: schemathesis runs workers as threads, and CPython 3.11.7 (the
            // machine's Python) can fail `ast.parse` under threads with "SystemError: AST
            // constructor recursion depth mismatch" (cpython#106905, fixed in 3.11.8):
            // seen here once, as a tool crash in the examples phase.
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--generation-database",
            "none",
            "--no-color",
        ])
        .current_dir(&report)
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finishes within 10 minutes")
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{text}");
    // It really ran the operations (a run that tested nothing also exits 0).
    assert!(text.contains("passed"), "{text}");
    eprintln!(
        "{}",
        text.lines().rev().take(15).collect::<Vec<_>>().join("\n")
    );
}
