//! Headless Chromium driven over the DevTools protocol, for the console's browser test:
//! launch (`POS_CHROMIUM_BIN`, else `/usr/bin/chromium`; `./x test` installs Debian's),
//! open a page, evaluate JavaScript in it, take a screenshot. A few dozen lines over the
//! WebSocket client the suite already has, instead of a WebDriver stack.
//!
//! Flow: chromium prints `DevTools listening on ws://…` on stderr → one WebSocket to the
//! browser → `Target.createTarget` + `Target.attachToTarget` (flattened session) → every
//! later command carries that `sessionId`; a reader task hands each answer to the command
//! waiting for its `id`, and drops events.

use super::{eventually, infra::tempdir};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::{mpsc, oneshot},
};
use tokio_tungstenite::tungstenite::Message;

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Browser {
    _child: tokio::process::Child,
    out: mpsc::UnboundedSender<String>,
    waiting: Waiting,
    next_id: AtomicU64,
}

pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
}

fn chromium() -> String {
    std::env::var("POS_CHROMIUM_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

impl Browser {
    pub async fn launch() -> Self {
        let bin = chromium();
        let profile = tempdir("chromium");
        let mut child = tokio::process::Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1400,1100",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} ({e}): ./x test installs Debian's chromium; or set POS_CHROMIUM_BIN")
            });
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium exited without a DevTools address");
        })
        .await
        .expect("chromium printed its DevTools address within 30 s");
        // Keep draining stderr: a full pipe would stall the browser.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools WebSocket");
        let (mut sink, mut stream) = socket.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = outgoing.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        });
        let waiting: Waiting = Arc::default();
        let w = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = w.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        Self {
            _child: child,
            out,
            waiting,
            next_id: AtomicU64::new(1),
        }
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, tx);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.out.send(message.to_string()).expect("DevTools writer");
        let answer = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"))
            .expect("DevTools reader");
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Opens `url` in a new tab.
    pub async fn open(&self, url: &str) -> Page<'_> {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let session = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Page {
            browser: self,
            session,
        }
    }
}

impl Page<'_> {
    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&self, expression: &str) -> Value {
        let r = self
            .browser
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expression} threw: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// The text of the element `id` (`null` while it does not exist).
    pub async fn text(&self, id: &str) -> Value {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById({id:?}); return e ? e.textContent : null; }})()"
        ))
        .await
    }

    /// Polls `expression` until it is truthy; returns that value. A throw counts as "not
    /// yet" (the page may still be loading).
    pub async fn wait_for(&self, what: &str, timeout: Duration, expression: &str) -> Value {
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        );
        eventually(what, timeout, || async {
            let v = self.eval(&guarded).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            truthy.then_some(v)
        })
        .await
    }

    /// A PNG of the page as it is rendered now.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let r = self
            .browser
            .call(
                Some(&self.session),
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("image data"))
            .expect("base64 PNG")
    }
}
