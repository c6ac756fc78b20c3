//! The gate in front of every authenticated route: the token is verified once here, the
//! caller's tenant and terminal are charged against their rates, and the claims travel on
//! in the request's extensions, where [`auth::Authorized`] takes them and checks the
//! role the handler declares. Refused: 401 (token), 429 `rate_limited` with
//! `Retry-After` (rate), before any body is read.

use crate::error::ApiError;
use crate::AppState;
use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota};
use std::{num::NonZeroU32, sync::Arc, time::Duration};

/// A token bucket: `per_second` sustained, `burst` at once. `per_second == 0` is "no
/// limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// `RATE_LIMIT_TENANT` and `RATE_LIMIT_TERMINAL` as `<per second>[/<burst>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Every request of one tenant (default 500/s, burst 1000).
    pub tenant: Rate,
    /// Every request of one `sub` of a tenant (default 50/s, burst 100).
    pub terminal: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            tenant: Rate {
                per_second: 500,
                burst: 1000,
            },
            terminal: Rate {
                per_second: 50,
                burst: 100,
            },
        }
    }
}

impl RateLimits {
    /// No limits (tests and benchmarks that measure something else).
    pub const UNLIMITED: Self = Self {
        tenant: Rate {
            per_second: 0,
            burst: 0,
        },
        terminal: Rate {
            per_second: 0,
            burst: 0,
        },
    };
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (rate, burst) = match s.split_once('/') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        let per_second: u32 = rate
            .trim()
            .parse()
            .map_err(|_| format!("bad rate {rate:?}"))?;
        let burst = match burst {
            Some(b) => b.trim().parse().map_err(|_| format!("bad burst {b:?}"))?,
            None => per_second.saturating_mul(2),
        };
        if per_second > 0 && burst == 0 {
            return Err("burst must be ≥ 1".into());
        }
        Ok(Rate { per_second, burst })
    }
}

type Limiter<K> = DefaultKeyedRateLimiter<K>;

/// The per-tenant and per-terminal buckets of this instance.
#[derive(Clone)]
pub struct Guard {
    tenant: Option<Arc<Limiter<String>>>,
    terminal: Option<Arc<Limiter<(String, String)>>>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(rate: Rate) -> Option<Arc<Limiter<K>>> {
    let per_second = NonZeroU32::new(rate.per_second)?;
    let burst = NonZeroU32::new(rate.burst).unwrap_or(per_second);
    Some(Arc::new(Limiter::keyed(
        Quota::per_second(per_second).allow_burst(burst),
    )))
}

impl Guard {
    pub fn new(limits: RateLimits) -> Self {
        let guard = Self {
            tenant: limiter(limits.tenant),
            terminal: limiter(limits.terminal),
        };
        // Buckets of callers gone quiet are full again and carry no information: drop
        // them so the maps hold only recent callers.
        let sweeper = guard.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Some(l) = &sweeper.tenant {
                    l.retain_recent();
                }
                if let Some(l) = &sweeper.terminal {
                    l.retain_recent();
                }
            }
        });
        guard
    }

    /// Charges one request of (`tenant`, `sub`); the tenant's bucket first, so a
    /// terminal over its own rate does not also drain its tenant's.
    pub fn charge(&self, tenant: &str, sub: &str) -> Result<(), ApiError> {
        fn refused(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> ApiError {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        }
        if let Some(l) = &self.terminal {
            l.check_key(&(tenant.to_owned(), sub.to_owned()))
                .map_err(refused)?;
        }
        if let Some(l) = &self.tenant {
            l.check_key(&tenant.to_owned()).map_err(refused)?;
        }
        Ok(())
    }
}

/// The middleware: verify, charge, hand the claims on.
pub async fn gate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let claims = match state.verifier.verify_parts(&parts) {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(e) = state.guard.charge(claims.tenant.as_str(), &claims.sub) {
        return e.into_response();
    }
    parts.extensions.insert(claims);
    request = Request::from_parts(parts, body);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_and_without_burst() {
        assert_eq!(
            "50/100".parse::<Rate>().unwrap(),
            Rate {
                per_second: 50,
                burst: 100
            }
        );
        assert_eq!("7".parse::<Rate>().unwrap().burst, 14);
        assert_eq!("0".parse::<Rate>().unwrap().per_second, 0);
        assert!("x/1".parse::<Rate>().is_err());
        assert!("5/0".parse::<Rate>().is_err());
    }

    #[tokio::test]
    async fn a_terminal_over_its_burst_is_refused_with_a_wait_and_others_are_not() {
        let guard = Guard::new(RateLimits {
            tenant: Rate {
                per_second: 1000,
                burst: 1000,
            },
            terminal: Rate {
                per_second: 1,
                burst: 3,
            },
        });
        for _ in 0..3 {
            guard.charge("acme", "T1").unwrap();
        }
        match guard.charge("acme", "T1") {
            Err(ApiError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 1),
            other => panic!("{other:?}"),
        }
        guard
            .charge("acme", "T2")
            .expect("another terminal has its own bucket");
        guard
            .charge("other", "T1")
            .expect("another tenant's T1 too");
    }

    #[tokio::test]
    async fn a_tenant_over_its_burst_is_refused_whichever_terminal_asks() {
        let guard = Guard::new(RateLimits {
            tenant: Rate {
                per_second: 1,
                burst: 2,
            },
            terminal: Rate {
                per_second: 0,
                burst: 0,
            },
        });
        guard.charge("acme", "T1").unwrap();
        guard.charge("acme", "T2").unwrap();
        assert!(matches!(
            guard.charge("acme", "T3"),
            Err(ApiError::RateLimited { .. })
        ));
        guard.charge("other", "T1").unwrap();
    }
}
