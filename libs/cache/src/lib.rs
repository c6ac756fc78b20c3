//! Redis: the fast path, never the truth. The only crate that names redis, among the libs
//! and services.
//!
//! Job state `<ns>:job:<tenant>:<id>` → the envelope ingress accepted (QUEUED), written
//! only forward (a Lua script compares versions), so `GET /invoices/{id}` right after the
//! 202 and the processor's "already done?" check on a first delivery are answered without
//! MongoDB or the event log. Later states are not written here (the event log has them
//! the moment they are acked; writing them too cost two round trips per invoice). A job
//! state is needed only until MongoDB holds the invoice's final state: the persister
//! [`Cache::settle`]s it to a short TTL then, so Redis' memory follows the invoices in
//! flight, not the daily volume. The long default TTL is the fallback for a persister
//! that cannot reach Redis.
//!
//! Idempotency keys are not kept here: the broker's per-key submission subject is their
//! record (see `messaging::Bus::publish_submission`), so nothing Redis forgets or holds
//! on to can double or block a key.
//!
//! Every call is bounded by a short timeout and fails with [`CacheError`]; callers fall
//! back to MongoDB and JetStream. Losing Redis makes the system slower, never wrong.

#![warn(missing_docs)]

use domain::{InvoiceId, TenantId};
use messaging::{Encoded, Envelope};
use redis::{aio::ConnectionManager, AsyncCommands, Script};
use std::{sync::Arc, time::Duration};
use tokio::sync::OnceCell;
use tracing::{info, warn};

/// Default of `JOB_TTL_MS`: job state of an invoice the persister has not settled.
pub const DEFAULT_JOB_TTL: Duration = Duration::from_secs(3600);
/// What is left of a job state once MongoDB holds the invoice's final state: a margin
/// for requests already past their Redis read, nothing more.
pub const SETTLED_TTL: Duration = Duration::from_secs(5);

/// Longest a request waits on Redis before treating it as down.
const OP_TIMEOUT: Duration = Duration::from_millis(250);

/// Why a Redis call failed; callers fall back to MongoDB and JetStream.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// `REDIS_URL` does not parse; only [`Cache::connect`] returns it.
    #[error("REDIS_URL is not a valid Redis URL: {0}")]
    BadUrl(String),
    /// Redis is not connected yet, failed the call, or did not answer within 250 ms.
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
}

/// The Redis job-state cache of in-flight invoices. Cheap to clone; clones share one
/// connection.
#[derive(Clone)]
pub struct Cache {
    conn: Arc<OnceCell<ConnectionManager>>,
    ns: Arc<str>,
    job_ttl: Duration,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("connected", &self.conn.initialized())
            .finish()
    }
}

/// Sets the job key only if the stored version is lower (the value is `version|json`).
/// An existing key keeps its TTL: one the persister already settled stays short.
const PUT_FORWARD: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '^(%d+)|'))
  if v and v >= tonumber(ARGV[1]) then return 0 end
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'KEEPTTL')
  return 1
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// What MongoDB now holds of one invoice, for [`Cache::settle`].
#[derive(Debug, Clone)]
pub struct Stored<'a> {
    /// The invoice's tenant.
    pub tenant: &'a TenantId,
    /// The invoice whose final state MongoDB now holds.
    pub id: InvoiceId,
}

impl Cache {
    /// Validates the URL at once, then connects in the background (retrying with logged
    /// backoff): a service starts and serves, slower, while Redis is down.
    pub fn connect(url: &str, namespace: &str, job_ttl: Duration) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(|e| CacheError::BadUrl(e.to_string()))?;
        let cache = Self {
            conn: Arc::new(OnceCell::new()),
            ns: namespace.into(),
            job_ttl,
        };
        let cell = cache.conn.clone();
        let url = url.to_owned();
        tokio::spawn(async move {
            let what = format!("Redis at {url} unreachable (serving without the cache meanwhile)");
            let conn = service_kit::retry::until_ok(&what, || {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)));
                ConnectionManager::new_with_config(client.clone(), config)
            })
            .await;
            let _ = cell.set(conn);
            info!(%url, "connected to Redis");
        });
        Ok(cache)
    }

    fn conn(&self) -> Result<ConnectionManager, CacheError> {
        self.conn
            .get()
            .cloned()
            .ok_or_else(|| CacheError::Unavailable("not connected yet".into()))
    }

    async fn run<T>(
        &self,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        match tokio::time::timeout(OP_TIMEOUT, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CacheError::Unavailable(e.to_string())),
            Err(_) => Err(CacheError::Unavailable("timed out".into())),
        }
    }

    fn job_key(&self, tenant: &TenantId, id: InvoiceId) -> String {
        format!("{}:job:{tenant}:{id}", self.ns)
    }

    /// Whether Redis answers a `PING` in time, for health checks; never errs.
    pub async fn ping(&self) -> bool {
        let Ok(mut c) = self.conn() else { return false };
        self.run(async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .is_ok()
    }

    /// Shortens the job states of invoices whose final state MongoDB now holds to
    /// [`SETTLED_TTL`] (never lengthens one): one round trip for the lot.
    pub async fn settle(&self, stored: &[Stored<'_>]) -> Result<(), CacheError> {
        if stored.is_empty() {
            return Ok(());
        }
        let mut c = self.conn()?;
        let ttl = SETTLED_TTL.as_millis() as u64;
        let mut pipe = redis::pipe();
        for s in stored {
            pipe.cmd("PEXPIRE")
                .arg(self.job_key(s.tenant, s.id))
                .arg(ttl)
                .arg("LT")
                .ignore();
        }
        self.run(pipe.query_async::<()>(&mut c)).await
    }

    /// Records the latest state of an in-flight invoice, never going backwards.
    pub async fn put_job(&self, message: &Encoded<'_>) -> Result<(), CacheError> {
        let mut c = self.conn()?;
        let inv = &message.envelope.invoice;
        let key = self.job_key(inv.tenant_id(), inv.id());
        let script = Script::new(PUT_FORWARD);
        let mut inv_script = script.key(key);
        inv_script
            .arg(inv.version().as_i64())
            .arg(message.bytes.as_ref())
            .arg(self.job_ttl.as_millis() as u64);
        self.run(inv_script.invoke_async::<i64>(&mut c))
            .await
            .map(|_| ())
    }

    /// Drops the job state of an invoice that was never accepted.
    pub async fn forget_job(&self, tenant: &TenantId, id: InvoiceId) -> Result<(), CacheError> {
        let mut c = self.conn()?;
        self.run(c.del::<_, ()>(self.job_key(tenant, id))).await
    }

    /// The latest job state of an in-flight invoice; `None` when Redis has none (never put,
    /// expired or settled) or holds one that does not decode.
    pub async fn job(
        &self,
        tenant: &TenantId,
        id: InvoiceId,
    ) -> Result<Option<Envelope>, CacheError> {
        let mut c = self.conn()?;
        let raw: Option<String> = self.run(c.get(self.job_key(tenant, id))).await?;
        Ok(raw.and_then(|r| {
            r.split_once('|')
                .and_then(|(_, json)| Envelope::decode(json.as_bytes()).ok())
        }))
    }
}
