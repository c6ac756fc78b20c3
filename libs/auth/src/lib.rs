//! JWT authentication and roles, shared by the ingress routes, the fanout upgrade handler
//! and the console's API; [`sign`] makes the dev tokens of `./x jwt` and loadgen.
//!
//! A request's token (`Authorization: Bearer …`, or `?token=` for WebSocket upgrades)
//! goes through [`Verifier::verify`] (HS256 only, `exp` and `sub` required, a tenant safe
//! to put in a subject) into [`Claims`]. The extractor [`Authorized<N>`] does that for a
//! handler — or takes the claims a middleware already verified from the request's
//! extensions — and checks the role the handler declares with `N` (contract § roles:
//! terminal < manager < admin): `401 unauthorized` or `403 forbidden` otherwise.

#![warn(missing_docs)]

use axum::{
    extract::{FromRef, FromRequestParts},
    http::request::Parts,
    response::{IntoResponse, Response},
};
use domain::TenantId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use service_kit::http::{ErrorCode, ErrorResponse};
use std::sync::Arc;

/// Ordered: each role may do all that the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A PoS terminal: creates and reads invoices, reads the catalog and the tenant,
    /// opens the WebSocket.
    Terminal,
    /// A shop manager: also writes the catalog, issues credit notes and reads the ledger.
    Manager,
    /// A tenant administrator: also writes the tenant's settings.
    Admin,
}

impl Role {
    /// Whether a caller of this role may do what `needed` may.
    pub fn includes(self, needed: Role) -> bool {
        self >= needed
    }

    /// The role as the `role` claim spells it: `terminal`, `manager` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Terminal => "terminal",
            Role::Manager => "manager",
            Role::Admin => "admin",
        }
    }
}

/// The least role a route needs, declared as a type: `Authorized<Manager>`.
pub trait Needs: Send + Sync + 'static {
    /// The least role that may call the route.
    const ROLE: Role;
}

/// Any valid token (terminal and up).
#[derive(Debug)]
pub struct AnyRole;
/// Manager or admin.
#[derive(Debug)]
pub struct Manager;
/// Admin only.
#[derive(Debug)]
pub struct Admin;

impl Needs for AnyRole {
    const ROLE: Role = Role::Terminal;
}
impl Needs for Manager {
    const ROLE: Role = Role::Manager;
}
impl Needs for Admin {
    const ROLE: Role = Role::Admin;
}

/// The claims the contract requires. A token missing any of them is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who is calling: the terminal's or the user's id.
    pub sub: String,
    /// The caller's tenant, the only one whose data it may see; a valid
    /// [`domain::TenantId`] (it becomes a NATS subject token), or the token is refused.
    pub tenant: TenantId,
    /// What the caller may do.
    pub role: Role,
    /// Expiry, in seconds since the Unix epoch; refused once past (5 s leeway).
    pub exp: i64,
}

/// Why a caller was refused: `401 unauthorized` or `403 forbidden` as a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in `Authorization: Bearer …` nor in `?token=`.
    #[error("missing bearer token")]
    Missing,
    /// A malformed, badly signed, expired or oversized token, or an unsafe tenant
    /// claim; says which.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A valid token whose role is below the one the route needs.
    #[error("role {have} may not do this; it needs {needs} or above")]
    Forbidden {
        /// The caller's role.
        have: &'static str,
        /// The least role the route needs.
        needs: &'static str,
    },
}

impl AuthError {
    /// The contract's error code: `unauthorized`, or `forbidden` for too low a role.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => ErrorCode::Unauthorized,
            AuthError::Forbidden { .. } => ErrorCode::Forbidden,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        ErrorResponse::new(self.code(), self.to_string()).into_response()
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
    /// Checks tokens signed with `secret` (`JWT_SECRET`): HS256 only, `exp` and `sub`
    /// required, 5 s of clock leeway.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Self {
            key: Arc::new(DecodingKey::from_secret(secret.as_bytes())),
            validation: Arc::new(validation),
        }
    }

    /// Checks a token's signature, expiry and claims. Refuses tokens over
    /// [`MAX_TOKEN_BYTES`] and tenants that could break a NATS subject.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid(format!(
                "token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let claims = jsonwebtoken::decode::<WireClaims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok(Claims {
            sub: claims.sub,
            tenant: TenantId::parse(claims.tenant)
                .map_err(|e| AuthError::Invalid(format!("tenant claim {e}")))?,
            role: claims.role,
            exp: claims.exp,
        })
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
                    .map(std::borrow::ToOwned::to_owned)
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

/// [`Claims`] as a token carries them, the tenant as text: decoding checks the shape,
/// [`TenantId::parse`] the tenant, so a bad one is refused with its own message.
#[derive(Deserialize)]
struct WireClaims {
    sub: String,
    tenant: String,
    role: Role,
    exp: i64,
}

/// Signs tokens: dev tooling, tests and the load generator use it. Any serializable
/// claims, so a test can sign what a forger would (a bad tenant, a missing field); the
/// verifier decides what passes.
pub fn sign(secret: &str, claims: &impl Serialize) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// Largest token accepted: a valid one is a few hundred bytes; verifying is never spent
/// on more.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// A verified caller whose role includes `N`'s. Extracting it is the authentication and
/// authorization of a route: a handler only declares the role it needs.
#[derive(Debug, Clone)]
pub struct Authorized<N: Needs = AnyRole>(Claims, std::marker::PhantomData<N>);

/// Any valid token: the routes every role may call.
pub type Authenticated = Authorized<AnyRole>;

impl<N: Needs> Authorized<N> {
    /// The caller's verified claims.
    pub fn claims(&self) -> &Claims {
        &self.0
    }

    /// The caller's verified claims, by value.
    pub fn into_claims(self) -> Claims {
        self.0
    }

    /// Checks `claims` against `N`.
    pub fn check(claims: Claims) -> Result<Self, AuthError> {
        if claims.role.includes(N::ROLE) {
            Ok(Self(claims, std::marker::PhantomData))
        } else {
            Err(AuthError::Forbidden {
                have: claims.role.as_str(),
                needs: N::ROLE.as_str(),
            })
        }
    }
}

impl<S, N> FromRequestParts<S> for Authorized<N>
where
    Verifier: FromRef<S>,
    S: Send + Sync,
    N: Needs,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let claims = match parts.extensions.get::<Claims>() {
            Some(c) => c.clone(),
            None => Verifier::from_ref(state).verify_parts(parts)?,
        };
        Self::check(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_offset: i64) -> Claims {
        Claims {
            sub: "T1".into(),
            tenant: TenantId::parse("acme").unwrap(),
            role: Role::Terminal,
            exp: chrono::Utc::now().timestamp() + exp_offset,
        }
    }

    #[test]
    fn a_signed_token_verifies_and_a_tampered_one_does_not() {
        let v = Verifier::new("s3cret");
        let token = sign("s3cret", &claims(60));
        assert_eq!(v.verify(&token).unwrap().tenant.as_str(), "acme");
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

    /// `header.payload.signature` with a chosen header, signed by `alg` and `secret`
    /// (or unsigned): the tokens an attacker would forge.
    fn forge(header: serde_json::Value, payload: serde_json::Value, sig: Option<&[u8]>) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signing_input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(payload.to_string())
        );
        let signature = match sig {
            Some(secret) => jsonwebtoken::crypto::sign(
                signing_input.as_bytes(),
                &EncodingKey::from_secret(secret),
                Algorithm::HS256,
            )
            .unwrap(),
            None => String::new(),
        };
        format!("{signing_input}.{signature}")
    }

    /// The claims of a valid token with any text as its tenant (a forger's).
    fn payload(tenant: &str) -> serde_json::Value {
        let mut claims = serde_json::to_value(claims(600)).unwrap();
        claims["tenant"] = tenant.into();
        claims
    }

    const KEY: &[u8] = b"the-real-secret-0123456789";

    #[test]
    fn forged_tokens_are_all_refused() {
        let v = Verifier::new(std::str::from_utf8(KEY).unwrap());
        // Sanity: the forging helper makes a token the verifier accepts.
        let good = forge(
            serde_json::json!({"alg":"HS256","typ":"JWT"}),
            payload("acme"),
            Some(KEY),
        );
        assert!(v.verify(&good).is_ok());
        let attacks = [
            (
                "alg none, no signature",
                forge(serde_json::json!({"alg":"none"}), payload("acme"), None),
            ),
            (
                "alg none with a signature",
                forge(
                    serde_json::json!({"alg":"none"}),
                    payload("acme"),
                    Some(KEY),
                ),
            ),
            (
                "HS256 with another key",
                forge(
                    serde_json::json!({"alg":"HS256"}),
                    payload("acme"),
                    Some(b"another-key"),
                ),
            ),
            (
                "RS256 header, HMAC signature with the secret (key confusion)",
                forge(
                    serde_json::json!({"alg":"RS256"}),
                    payload("acme"),
                    Some(KEY),
                ),
            ),
            (
                "HS512 header",
                forge(
                    serde_json::json!({"alg":"HS512"}),
                    payload("acme"),
                    Some(KEY),
                ),
            ),
            (
                "no exp",
                forge(
                    serde_json::json!({"alg":"HS256"}),
                    serde_json::json!({"sub":"T1","tenant":"acme","role":"terminal"}),
                    Some(KEY),
                ),
            ),
            (
                "expired",
                sign(std::str::from_utf8(KEY).unwrap(), &claims(-3600)),
            ),
            (
                "exp as a string",
                forge(
                    serde_json::json!({"alg":"HS256"}),
                    serde_json::json!({"sub":"T1","tenant":"acme","role":"terminal","exp":"9999999999"}),
                    Some(KEY),
                ),
            ),
            ("10 KiB token", {
                let mut p = payload("acme");
                p["pad"] = "x".repeat(10 * 1024).into();
                forge(serde_json::json!({"alg":"HS256"}), p, Some(KEY))
            }),
            ("empty", String::new()),
            ("garbage", "a.b.c".into()),
        ];
        for (what, token) in attacks {
            assert!(v.verify(&token).is_err(), "{what} was accepted");
        }
        for tenant in ["a.b", "a*", ">", "a b", "", "x".repeat(65).as_str(), "ñ"] {
            let t = forge(
                serde_json::json!({"alg":"HS256"}),
                payload(tenant),
                Some(KEY),
            );
            assert!(v.verify(&t).is_err(), "tenant {tenant:?} was accepted");
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.includes(Role::Manager));
        assert!(Role::Manager.includes(Role::Terminal));
        assert!(Role::Manager.includes(Role::Manager));
        assert!(!Role::Terminal.includes(Role::Manager));
        assert!(!Role::Manager.includes(Role::Admin));
    }

    #[tokio::test]
    async fn a_route_declares_its_role_and_other_roles_get_403() {
        use axum::{body::Body, http::Request, routing::get, Router};
        use tower::ServiceExt;
        let secret = "s3cret-0123456789abcdef";
        let app = Router::new()
            .route("/any", get(|_: Authenticated| async { "ok" }))
            .route("/manager", get(|_: Authorized<Manager>| async { "ok" }))
            .route("/admin", get(|_: Authorized<Admin>| async { "ok" }))
            .with_state(Verifier::new(secret));
        let call = |path: &'static str, role: Option<Role>| {
            let app = app.clone();
            async move {
                let mut req = Request::get(path);
                if let Some(role) = role {
                    let token = sign(
                        secret,
                        &Claims {
                            role,
                            ..claims(600)
                        },
                    );
                    req = req.header("authorization", format!("Bearer {token}"));
                }
                app.oneshot(req.body(Body::empty()).unwrap())
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        let (terminal, manager, admin) = (Role::Terminal, Role::Manager, Role::Admin);
        let expect = [
            ("/any", None, 401),
            ("/any", Some(terminal), 200),
            ("/manager", Some(terminal), 403),
            ("/manager", Some(manager), 200),
            ("/manager", Some(admin), 200),
            ("/admin", Some(manager), 403),
            ("/admin", Some(admin), 200),
            ("/admin", None, 401),
        ];
        for (path, role, status) in expect {
            assert_eq!(call(path, role).await, status, "{path} as {role:?}");
        }
    }
}
