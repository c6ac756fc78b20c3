//! The Redis job-state cache against a real Redis: what its callers rely on. The state
//! of an invoice only moves forward whatever order the writes arrive in; settling
//! shortens a key's life and a later write cannot lengthen it again; namespaces keep
//! tests and deployments apart; a Redis that is not there costs a bounded wait, never
//! an error a caller cannot fall back from.

use crate::support::{unique, Infra};
use cache::{Cache, CacheError, Stored};
use domain::{InvoiceState, TenantId};
use std::time::{Duration, Instant};

/// A cache on a namespace of its own, once its background connection is up.
async fn connected(namespace: &str) -> Cache {
    let cache = Cache::connect(
        &Infra::from_env().redis_url,
        namespace,
        Duration::from_secs(600),
    )
    .unwrap();
    crate::support::eventually("Redis to answer", Duration::from_secs(20), || async {
        cache.ping().await.then_some(())
    })
    .await;
    cache
}

/// The remaining time to live of a key, in milliseconds.
async fn pttl(key: &str) -> i64 {
    crate::support::pttl(&Infra::from_env(), key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_state_only_moves_forward_whatever_order_its_writes_arrive_in() {
    let cache = connected(&unique("c")).await;
    let tenant = TenantId::parse(unique("shop")).unwrap();
    let [queued, processing, completed]: [_; 3] =
        crate::store::lifecycle(&tenant).try_into().unwrap();
    let id = queued.invoice.id();
    assert!(cache.job(&tenant, id).await.unwrap().is_none());

    // COMPLETED first (the processor's write), then the older states arrive late.
    cache.put_job(&completed.encoded()).await.unwrap();
    cache.put_job(&queued.encoded()).await.unwrap();
    cache.put_job(&processing.encoded()).await.unwrap();
    let held = cache.job(&tenant, id).await.unwrap().expect("a job state");
    assert_eq!(held.invoice.state(), InvoiceState::Completed);
    assert_eq!(held.invoice, completed.invoice);

    cache.forget_job(&tenant, id).await.unwrap();
    assert!(cache.job(&tenant, id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_shortens_a_job_state_and_a_later_write_keeps_it_short() {
    let namespace = unique("c");
    let cache = connected(&namespace).await;
    let tenant = TenantId::parse(unique("shop")).unwrap();
    let events = crate::store::lifecycle(&tenant);
    let id = events[0].invoice.id();
    let key = format!("{namespace}:job:{tenant}:{id}");
    let settled_now = [Stored {
        tenant: &tenant,
        id,
    }];

    cache.put_job(&events[1].encoded()).await.unwrap();
    let fresh = pttl(&key).await;
    assert!(
        fresh > 590_000,
        "JOB_TTL applies to a new state: {fresh} ms"
    );

    cache.settle(&settled_now).await.unwrap();
    let settled = pttl(&key).await;
    assert!(
        (1..=5_000).contains(&settled),
        "settled to SETTLED_TTL: {settled} ms"
    );
    // A late write of a newer state replaces the value but keeps the short life.
    cache.put_job(&events[2].encoded()).await.unwrap();
    let after = pttl(&key).await;
    assert!((1..=5_000).contains(&after), "still short: {after} ms");
    // Settling never lengthens a key either.
    cache.settle(&settled_now).await.unwrap();
    assert!(pttl(&key).await <= after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_never_see_each_others_job_states() {
    let (a, b) = (connected(&unique("c")).await, connected(&unique("c")).await);
    let tenant = TenantId::parse(unique("shop")).unwrap();
    let events = crate::store::lifecycle(&tenant);
    a.put_job(&events[0].encoded()).await.unwrap();
    let id = events[0].invoice.id();
    assert!(a.job(&tenant, id).await.unwrap().is_some());
    assert!(b.job(&tenant, id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_redis_every_call_fails_at_once_with_unavailable() {
    // Nothing listens there: the background connection keeps retrying meanwhile.
    let port = crate::support::infra::free_port();
    let cache = Cache::connect(
        &format!("redis://127.0.0.1:{port}"),
        &unique("c"),
        Duration::from_secs(600),
    )
    .unwrap();
    let tenant = TenantId::parse(unique("shop")).unwrap();
    let events = crate::store::lifecycle(&tenant);
    let started = Instant::now();
    assert!(!cache.ping().await);
    assert!(matches!(
        cache.put_job(&events[0].encoded()).await,
        Err(CacheError::Unavailable(_))
    ));
    assert!(matches!(
        cache.job(&tenant, events[0].invoice.id()).await,
        Err(CacheError::Unavailable(_))
    ));
    // Each call is bounded by the cache's 250 ms; not connected, it does not even wait.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    assert!(matches!(
        Cache::connect("not a url", "x", Duration::from_secs(1)),
        Err(CacheError::BadUrl(_))
    ));
}
