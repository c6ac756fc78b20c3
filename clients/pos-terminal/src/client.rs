//! HTTP to the ingress: `POST /invoices` with a stored body, and
//! `GET /invoices/{id}` for a state the WebSocket did not deliver.
//!
//! Data flow: `sync` hands over the exact stored text; the answer comes back as a
//! [`Reply`] with the raw headers the policy reads (`Retry-After`, `Date`); anything
//! short of a whole answer (refused, reset, timeout, a body cut off) is an `Err`, which
//! the policy treats as "no answer".

use crate::config::Token;
use reqwest::header::{HeaderMap, CONTENT_TYPE, DATE, RETRY_AFTER};
use std::time::Duration;

/// Per-request deadline of a POST: a black-holed link must not hold an entry's slot
/// (or the run) for longer than this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to establish the TCP connection; short, because a down ingress refuses fast
/// and a dropped SYN would otherwise eat most of [`REQUEST_TIMEOUT`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Per-request deadline of a state refresh (`GET /invoices/{id}`).
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {0}")]
    Build(reqwest::Error),
}

/// A whole HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub date: Option<String>,
    pub body: String,
}

/// The ingress client; cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    invoices_url: String,
    products_url: String,
    token: Token,
}

impl Client {
    /// `api` is the ingress base URL without a trailing `/`.
    pub fn new(api: &str, token: Token) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // A redirected POST would turn into a GET; the contract has no redirects.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pos-terminal/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Build)?;
        Ok(Self {
            http,
            invoices_url: format!("{api}/invoices"),
            products_url: format!("{api}/products"),
            token,
        })
    }

    /// `POST /invoices` with `body` exactly as given.
    pub async fn post_invoice(&self, body: &str) -> Result<Reply, reqwest::Error> {
        let response = self
            .http
            .post(&self.invoices_url)
            .bearer_auth(self.token.expose())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .send()
            .await?;
        into_reply(response).await
    }

    /// `GET /products?since=&limit=`.
    pub async fn get_products(&self, since: u64, limit: u32) -> Result<Reply, reqwest::Error> {
        let response = self
            .http
            .get(format!("{}?since={since}&limit={limit}", self.products_url))
            .bearer_auth(self.token.expose())
            .send()
            .await?;
        into_reply(response).await
    }

    /// `GET /invoices/{id}`.
    pub async fn get_invoice(&self, invoice_id: &str) -> Result<Reply, reqwest::Error> {
        let url = format!("{}/{}", self.invoices_url, encode_component(invoice_id));
        let response = self
            .http
            .get(url)
            .bearer_auth(self.token.expose())
            .timeout(REFRESH_TIMEOUT)
            .send()
            .await?;
        into_reply(response).await
    }
}

async fn into_reply(response: reqwest::Response) -> Result<Reply, reqwest::Error> {
    let status = response.status().as_u16();
    let headers = response.headers();
    let retry_after = header_text(headers, RETRY_AFTER);
    let date = header_text(headers, DATE);
    let body = response.text().await?;
    Ok(Reply {
        status,
        retry_after,
        date,
        body,
    })
}

fn header_text(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `Display` of an error and its causes, `a: b: c` (reqwest's own message alone says
/// only "error sending request").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors (tungstenite's Io) repeat their cause in their own message.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode_component("0193b7c2-aa_b.c~"), "0193b7c2-aa_b.c~");
        assert_eq!(encode_component("a/b?c d"), "a%2Fb%3Fc%20d");
    }
}
