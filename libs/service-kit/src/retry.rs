//! The one way a service waits for a dependency: retry with exponential backoff (250 ms
//! doubling to 5 s, with jitter so restarted instances do not retry in step), forever,
//! logging each failure with the delay before the next try.
//!
//! Connecting to NATS, Redis and MongoDB, binding a durable consumer and opening an event
//! feed all go through [`until_ok`] (or [`until_ok_or`] where some errors are final); the
//! event feed's reader, which sleeps inside a stream, takes the same [`delays`]. The one
//! other wait, the processor's for a fiscal number, is not a reconnect: it is bounded by
//! `LEDGER_WAIT_MS` and tells the broker the delivery is in progress between tries.

use backon::{ExponentialBuilder, Retryable};
use std::{fmt::Display, future::Future, time::Duration};
use tracing::warn;

/// 250 ms doubling to 5 s, with jitter, never giving up.
pub fn reconnect_policy() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// The delays of [`reconnect_policy`] one by one, for a loop that sleeps by itself.
pub type Delays = backon::ExponentialBackoff;

/// A fresh sequence of [`reconnect_policy`] delays (start again from 250 ms).
pub fn delays() -> Delays {
    use backon::BackoffBuilder;
    reconnect_policy().build()
}

/// Runs `op` until it succeeds; each failure is logged as `what` (say what is retried and,
/// where it helps, what the operator should check).
pub async fn until_ok<T, E, F, Fut>(what: &str, op: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut op = op;
    loop {
        // The policy never gives up, so this loop only restarts it if it ever did.
        if let Ok(done) = until_ok_or(what, &mut op, |_| false).await {
            return done;
        }
    }
}

/// Runs `op` until it succeeds or fails with an error `is_final` accepts, which is
/// returned (a wrong password does not heal by waiting).
pub async fn until_ok_or<T, E, F, Fut>(
    what: &str,
    op: F,
    is_final: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    op.retry(reconnect_policy())
        .sleep(tokio::time::sleep)
        .when(|e| !is_final(e))
        .notify(|e, delay| {
            warn!(error = %e, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "{what}; retrying");
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn the_policy_doubles_from_a_quarter_second_up_to_five_and_never_ends() {
        let delays: Vec<Duration> = reconnect_policy().build().take(12).collect();
        assert_eq!(delays.len(), 12, "never gives up");
        // Jitter adds up to the delay itself: each lies in [base, 2 × base].
        let bases = [
            250, 500, 1000, 2000, 4000, 5000, 5000, 5000, 5000, 5000, 5000, 5000,
        ];
        for (delay, base) in delays.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *delay >= base && *delay <= base * 2,
                "{delay:?} outside [{base:?}, 2 × {base:?}]"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn until_ok_retries_until_the_operation_succeeds() {
        let calls = AtomicU32::new(0);
        let got = until_ok("flaky", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0..=3 => Err("not yet"),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(got, 4);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_error_stops_the_retries_and_is_returned() {
        let calls = AtomicU32::new(0);
        let got: Result<(), &str> = until_ok_or(
            "login",
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err("unreachable")
                } else {
                    Err("bad password")
                }
            },
            |e| *e == "bad password",
        )
        .await;
        assert_eq!(got, Err("bad password"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
