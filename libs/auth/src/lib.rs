//! JWT authentication shared by the ingress routes and the fanout upgrade handler.
//!
//! A request's token (`Authorization: Bearer …`, or `?token=` for WebSocket upgrades)
//! goes through [`Verifier::verify`] (HS256, `exp` required) into [`Claims`]; the axum
//! extractor [`Authenticated`] does that for a handler and answers `401 unauthorized`
//! in the contract's error shape otherwise.

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{request::Parts, StatusCode},
    response::{IntoResponse, Response},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use service_kit::http::ErrorResponse;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Terminal,
    Manager,
    Admin,
}

/// The claims the contract requires. A token missing any of them is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub role: Role,
    pub exp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        ErrorResponse::new(StatusCode::UNAUTHORIZED, "unauthorized", self.to_string())
            .into_response()
    }
}

/// Verifies HS256 tokens. The key is never printed.
#[derive(Clone)]
pub struct Verifier {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(HS256, key hidden)")
    }
}

impl Verifier {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Self {
            key: Arc::new(DecodingKey::from_secret(secret.as_bytes())),
            validation: Arc::new(validation),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if domain_safe_tenant(&claims.tenant) {
            Ok(claims)
        } else {
            Err(AuthError::Invalid(
                "tenant claim must be 1–64 of A-Z a-z 0-9 _ -".into(),
            ))
        }
    }

    /// Reads the token from `Authorization: Bearer …` or, failing that, `?token=`.
    pub fn verify_parts(&self, parts: &Parts) -> Result<Claims, AuthError> {
        let from_header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let from_query = || {
            parts.uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|pair| pair.strip_prefix("token="))
                    .map(|t| t.to_owned())
            })
        };
        match from_header {
            Some(t) => self.verify(t),
            None => match from_query() {
                Some(t) => self.verify(&t),
                None => Err(AuthError::Missing),
            },
        }
    }
}

fn domain_safe_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Signs tokens: dev tooling, tests and the load generator use it.
pub fn sign(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// A verified caller. Extracting it is the authentication of a route.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

impl<S> FromRequestParts<S> for Authenticated
where
    Verifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Verifier::from_ref(state)
            .verify_parts(parts)
            .map(Authenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_offset: i64) -> Claims {
        Claims {
            sub: "T1".into(),
            tenant: "acme".into(),
            role: Role::Terminal,
            exp: chrono::Utc::now().timestamp() + exp_offset,
        }
    }

    #[test]
    fn a_signed_token_verifies_and_a_tampered_one_does_not() {
        let v = Verifier::new("s3cret");
        let token = sign("s3cret", &claims(60));
        assert_eq!(v.verify(&token).unwrap().tenant, "acme");
        assert!(v.verify(&sign("other", &claims(60))).is_err());
        assert!(v.verify(&sign("s3cret", &claims(-60))).is_err(), "expired");
        assert!(v.verify("not.a.jwt").is_err());
    }

    #[test]
    fn tokens_without_required_claims_are_refused() {
        #[derive(Serialize)]
        struct NoExp {
            sub: &'static str,
            tenant: &'static str,
            role: &'static str,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp {
                sub: "x",
                tenant: "acme",
                role: "terminal",
            },
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert!(Verifier::new("k").verify(&token).is_err());
        let mut bad_role = serde_json::to_value(claims(60)).unwrap();
        bad_role["role"] = "root".into();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &bad_role,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert!(Verifier::new("k").verify(&token).is_err());
    }
}
