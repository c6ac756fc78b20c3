//! Request extractors that answer in the contract's error shape: a JSON body
//! (415 when not JSON, 413 over the limit, 400 naming the path of a malformed value)
//! and query parameters (400); and [`DecimalText`], a decimal kept as the literal text
//! the client sent.

use crate::error::ApiError;
use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;

/// Largest accepted body (contract: 256 KiB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(MAX_BODY_BYTES)
            } else {
                ApiError::field("body", rejection.body_text())
            }
        })?;
        decode(&bytes).map(JsonBody)
    }
}

/// Decodes JSON, naming the path of the first value of the wrong type.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::field("body", format!("is not valid JSON: {inner}"))
        } else {
            let path = if path == "." { "body".to_owned() } else { path };
            // serde's message names the Rust type; keep only its first clause.
            let message = inner.to_string();
            let message = message
                .split(" at line")
                .next()
                .unwrap_or(&message)
                .to_owned();
            ApiError::field(&path, message)
        }
    })
}

/// Query parameters; a malformed query string is a 400.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded_deserializer(query);
        de.map(QueryParams)
    }
}

fn serde_urlencoded_deserializer<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| ApiError::field("query", "is malformed"))?,
    )
    .map(|q| q.0)
    .map_err(|e| ApiError::field("query", e.body_text()))
}

/// A decimal as the client wrote it: a JSON string or number literal, kept as text so
/// it can be parsed exactly (no float ever sees it).
#[derive(Debug)]
pub struct DecimalText(Box<serde_json::value::RawValue>);

impl<'de> serde::Deserialize<'de> for DecimalText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <Box<serde_json::value::RawValue> as serde::Deserialize>::deserialize(d).map(DecimalText)
    }
}

/// Either JSON form the contract accepts; the document says so.
impl utoipa::PartialSchema for DecimalText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^-?[0-9]+(\.[0-9]+)?$"))
                    .examples(["3.50"]),
            )
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .description(Some(
                "an exact decimal, as a JSON string or number literal (parsed from its text)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for DecimalText {}

impl DecimalText {
    /// The literal's text; `None` (so the domain says "must be a decimal number") for
    /// anything but a string or a number.
    pub fn text(&self) -> String {
        let raw = self.0.get();
        match serde_json::from_str::<String>(raw) {
            Ok(s) => s,
            Err(_) if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => raw.to_owned(),
            Err(_) => format!("<{raw}>"),
        }
    }
}

/// Query parameters read one at a time, every problem collected and answered together:
/// `let mut q = Params::new(map); let n = q.number(…); q.finish(&known)?`.
pub struct Params {
    map: std::collections::BTreeMap<String, String>,
    details: Vec<domain::FieldError>,
}

impl Params {
    pub fn new(map: std::collections::BTreeMap<String, String>) -> Self {
        Self {
            map,
            details: Vec::new(),
        }
    }

    /// A whole number in `min..=max`, `default` when absent.
    pub fn number(&mut self, name: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.map.get(name).map(|v| v.parse::<u64>()) {
            None => default,
            Some(Ok(n)) if (min..=max).contains(&n) => n,
            Some(_) => {
                self.problem(name, format!("must be a whole number from {min} to {max}"));
                default
            }
        }
    }

    /// `parse` of the parameter, its error message recorded under its name.
    pub fn parsed<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.map.get(name)?;
        match parse(value) {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(name, message);
                None
            }
        }
    }

    pub fn problem(&mut self, name: &str, message: impl Into<String>) {
        self.details.push(domain::FieldError::new(name, message));
    }

    /// Refuses unknown parameters; a 400 naming every problem, if any.
    pub fn finish(mut self, known: &[&str]) -> Result<(), ApiError> {
        let unknown: Vec<String> = self
            .map
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for name in unknown {
            self.problem(&name, "is not a known parameter");
        }
        if self.details.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.details))
        }
    }
}
