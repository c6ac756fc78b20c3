//! The delivery rules of the outbox, as pure functions: what an answer to
//! `POST /invoices` means ([`decide`]), when the next attempt may happen ([`backoff`],
//! [`retry_delay`], [`parse_retry_after`]), how long the watcher waits before it
//! reconnects ([`reconnect_delay`]), and which idempotency key an entry gets
//! ([`IdempotencyKey::for_entry`]).
//!
//! No I/O and no clock: `now` and the [`Jitter`] source are passed in, so every rule is
//! unit tested. Data flow: `client` turns an HTTP exchange into an [`Answer`], `sync`
//! asks [`decide`] what it means and records the resulting [`Decision`] in the outbox.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// First retry delay (before jitter); doubles with every failed attempt.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest backoff between two attempts of one entry: long enough not to hammer a
/// struggling ingress, short enough that a terminal back online catches up quickly.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Longest wait between two WebSocket connection attempts.
pub const RECONNECT_CAP: Duration = Duration::from_secs(10);
/// The terminal part of a key is cut to this many characters, so a key is at most
/// 64 + 1 + 8 + 1 + 10 = 84 characters, well inside the contract's 128.
pub const TERMINAL_PART_MAX: usize = 64;
/// Width of the zero-padded local sequence in a key, so keys sort in creation order.
pub const SEQ_WIDTH: usize = 10;
/// Contract § POST /invoices: `idempotencyKey` is 1–128 chars of `[A-Za-z0-9._:-]`.
pub const KEY_MAX_LEN: usize = 128;

/// What came back from one `POST /invoices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<'a> {
    /// The server (or something in front of it) answered with a status.
    Reply {
        status: u16,
        retry_after: Option<Duration>,
        body: &'a str,
    },
    /// No answer at all: refused, reset, DNS failure, timeout, or a body cut off.
    Unreachable,
}

/// What the outbox does with an entry after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The server holds the invoice (202, or 200 `Idempotent-Replayed`).
    Ack,
    /// Try again with the same key and body, not before `after` from now.
    Retry { after: Duration },
    /// The server refused this invoice for good; keep it with the server's error.
    Reject,
    /// The token is refused (401/403): nothing about the invoice is known, stop the run.
    AuthFailed,
}

/// Classifies one answer; `attempt` counts the attempts made so far, this one included.
///
/// Anything the contract does not name (1xx, 3xx, another 2xx) is retried: a retry
/// with the same key and body can never create a second invoice, while a rejection
/// is final, so doubt always resolves towards retrying.
pub fn decide(answer: &Answer<'_>, attempt: u32, jitter: &mut Jitter) -> Decision {
    let retry = |retry_after, jitter: &mut Jitter| Decision::Retry {
        after: retry_delay(attempt, retry_after, jitter),
    };
    match *answer {
        Answer::Unreachable => retry(None, jitter),
        Answer::Reply { status, .. } if status == 200 || status == 202 => Decision::Ack,
        Answer::Reply { status, .. } if status == 401 || status == 403 => Decision::AuthFailed,
        // Contract v1.1 § Idempotency under failure: the server may not know whether it
        // accepted the invoice; the same key converges on one invoice.
        Answer::Reply {
            body, retry_after, ..
        } if outcome_unknown(body) => retry(retry_after, jitter),
        Answer::Reply {
            status,
            retry_after,
            ..
        } => match status {
            408 | 409 | 429 | 500..=599 => retry(retry_after, jitter),
            400..=499 => Decision::Reject,
            _ => retry(retry_after, jitter),
        },
    }
}

/// The backoff ceiling after `attempt` failed attempts: 0.5 s · 2^(attempt−1), capped.
pub fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP)
}

/// Delay before the next attempt: full jitter over the backoff, but never earlier than
/// the server's `Retry-After`.
pub fn retry_delay(attempt: u32, retry_after: Option<Duration>, jitter: &mut Jitter) -> Duration {
    let jittered = jitter.up_to(backoff(attempt));
    retry_after.map_or(jittered, |floor| floor.max(jittered))
}

/// Delay before WebSocket connection attempt number `failures + 1`: between half and all
/// of 0.5 s · 2^(failures−1) (capped at 10 s), never under 0.5 s. Half is kept fixed so a
/// terminal whose socket keeps failing never reconnects in a tight loop.
pub fn reconnect_delay(failures: u32, jitter: &mut Jitter) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << doublings)
        .min(RECONNECT_CAP);
    let floor = (ceiling / 2).max(BACKOFF_BASE);
    floor + jitter.up_to(ceiling.saturating_sub(floor))
}

/// `Retry-After` as delta-seconds or as an HTTP date (RFC 9110 § 10.2.3). A date in
/// the past means "now"; garbage means no hint.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(value)?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// An HTTP date (`Date`, `Retry-After`): IMF-fixdate, which RFC 2822 parsing covers.
pub fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(value.trim())
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// Server time − local time in ms, from an answer's `Date` header received at
/// `received_at` (ms since the epoch). `Date` has whole seconds, so this is good to
/// about a second: enough for support to spot a till whose clock is off.
pub fn clock_offset_ms(date: Option<&str>, received_at: i64) -> Option<i64> {
    let server = parse_http_date(date?)?;
    Some(server.timestamp_millis() - received_at)
}

/// Whether a body says `"outcome": "unknown"`, at the top level or inside `error`.
pub fn outcome_unknown(body: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let says_unknown =
        |v: &serde_json::Value| v.get("outcome").and_then(|o| o.as_str()) == Some("unknown");
    says_unknown(&value) || value.get("error").is_some_and(says_unknown)
}

/// The error kept with a rejected entry: the server's JSON body as it came, or, when a
/// proxy answered with something that is not JSON, an error body of the contract's
/// shape carrying that text, so `status --json` always has an `error` object to show.
pub fn rejection_record(status: u16, body: &str) -> String {
    if serde_json::from_str::<serde_json::Value>(body).is_ok_and(|v| v.is_object()) {
        return body.to_owned();
    }
    let message: String = body.trim().chars().take(1000).collect();
    serde_json::json!({ "error": { "code": format!("http_{status}"), "message": message } })
        .to_string()
}

/// A small deterministic PRNG (SplitMix64) for jitter: statistical quality does not
/// matter here, only that terminals retrying at once spread out, and that tests can
/// fix the sequence with a seed.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniformly drawn duration in `[0, max]`, in whole milliseconds.
    pub fn up_to(&mut self, max: Duration) -> Duration {
        let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        if max_ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.next_u64() % max_ms.saturating_add(1))
    }
}

/// An idempotency key the contract accepts (1–128 chars of `[A-Za-z0-9._:-]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// `<terminal>.<outbox id>.<seq zero-padded to 10>`. The random outbox id keeps a
    /// reinstalled terminal, whose sequence restarts at 1, from reusing a key (which the
    /// server would answer with another invoice or a 422).
    pub fn for_entry(terminal_id: &str, outbox_id: &str, seq: u64) -> Self {
        let terminal: String = sanitise(terminal_id).take(TERMINAL_PART_MAX).collect();
        let outbox: String = sanitise(outbox_id).take(TERMINAL_PART_MAX).collect();
        Self(format!("{terminal}.{outbox}.{seq:0SEQ_WIDTH$}"))
    }

    /// Accepts only text the contract allows as a key.
    pub fn parse(text: &str) -> Option<Self> {
        is_valid_key(text).then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Contract § POST /invoices: 1–128 chars of `[A-Za-z0-9._:-]`.
pub fn is_valid_key(text: &str) -> bool {
    (1..=KEY_MAX_LEN).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Every char outside `[A-Za-z0-9_-]` becomes `_`; `.` is replaced too because it
/// separates the parts of a key.
fn sanitise(text: &str) -> impl Iterator<Item = char> + '_ {
    text.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, retry_after: Option<u64>, body: &str) -> Answer<'_> {
        Answer::Reply {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            body,
        }
    }

    fn decide_once(answer: &Answer<'_>, attempt: u32) -> Decision {
        decide(answer, attempt, &mut Jitter::new(7))
    }

    fn is_retry(decision: Decision) -> bool {
        matches!(decision, Decision::Retry { .. })
    }

    #[test]
    fn accepted_and_replayed_answers_acknowledge_the_entry() {
        assert_eq!(decide_once(&reply(202, None, "{}"), 1), Decision::Ack);
        assert_eq!(decide_once(&reply(200, None, "{}"), 3), Decision::Ack);
    }

    #[test]
    fn transient_answers_and_network_errors_are_retried() {
        for status in [408, 409, 429, 500, 502, 503, 504, 599] {
            assert!(
                is_retry(decide_once(&reply(status, None, "{}"), 1)),
                "{status}"
            );
        }
        assert!(is_retry(decide_once(&Answer::Unreachable, 1)));
    }

    #[test]
    fn answers_outside_the_contract_are_retried_never_rejected() {
        for status in [100, 201, 204, 301, 302, 307] {
            assert!(
                is_retry(decide_once(&reply(status, None, ""), 1)),
                "{status}"
            );
        }
    }

    #[test]
    fn a_refused_token_stops_the_run_instead_of_touching_the_invoice() {
        assert_eq!(
            decide_once(&reply(401, None, "{}"), 1),
            Decision::AuthFailed
        );
        assert_eq!(
            decide_once(&reply(403, None, "{}"), 1),
            Decision::AuthFailed
        );
    }

    #[test]
    fn other_client_errors_reject_the_entry() {
        for status in [400, 404, 405, 413, 415, 422, 431] {
            assert_eq!(
                decide_once(&reply(status, None, "{}"), 1),
                Decision::Reject,
                "{status}"
            );
        }
    }

    #[test]
    fn an_unknown_outcome_is_retried_at_the_top_level_or_inside_error() {
        let top = r#"{"outcome":"unknown","error":{"code":"unavailable","message":"x"}}"#;
        let inside = r#"{"error":{"code":"unavailable","message":"x","outcome":"unknown"}}"#;
        assert!(outcome_unknown(top));
        assert!(outcome_unknown(inside));
        assert!(!outcome_unknown(r#"{"error":{"code":"unavailable"}}"#));
        assert!(!outcome_unknown("not json"));
        assert!(is_retry(decide_once(&reply(503, Some(1), inside), 1)));
        // Even under a status that would otherwise reject: the invoice may exist.
        assert!(is_retry(decide_once(&reply(400, None, top), 1)));
    }

    #[test]
    fn retry_after_is_never_undercut_by_jitter() {
        for seed in 0..500 {
            let mut jitter = Jitter::new(seed);
            for attempt in 1..12 {
                let answer = reply(503, Some(3), "{}");
                let Decision::Retry { after } = decide(&answer, attempt, &mut jitter) else {
                    panic!("503 must be retried");
                };
                assert!(
                    after >= Duration::from_secs(3),
                    "seed {seed} attempt {attempt}: {after:?}"
                );
                assert!(after <= Duration::from_secs(30));
            }
        }
    }

    #[test]
    fn a_long_backoff_wins_over_a_short_retry_after() {
        // attempt 7: the backoff ceiling is 30 s; some draws land above Retry-After.
        let above = (0..200).any(|seed| {
            retry_delay(7, Some(Duration::from_secs(1)), &mut Jitter::new(seed))
                > Duration::from_secs(1)
        });
        assert!(above);
    }

    #[test]
    fn backoff_doubles_from_half_a_second_and_is_capped_at_thirty() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(6), Duration::from_secs(16));
        assert_eq!(backoff(7), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
        assert_eq!(backoff(0), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_within_the_backoff_and_spreads_out() {
        let mut jitter = Jitter::new(42);
        let draws: Vec<Duration> = (0..1000)
            .map(|_| retry_delay(4, None, &mut jitter))
            .collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_secs(4)));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(
            distinct.len() > 500,
            "full jitter spreads retries: {}",
            distinct.len()
        );
    }

    #[test]
    fn jitter_is_deterministic_for_a_seed() {
        let a: Vec<_> = (0..10)
            .map(|_| 0)
            .scan(Jitter::new(9), |j, _| Some(j.up_to(Duration::from_secs(9))))
            .collect();
        let b: Vec<_> = (0..10)
            .map(|_| 0)
            .scan(Jitter::new(9), |j, _| Some(j.up_to(Duration::from_secs(9))))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn reconnect_delay_stays_between_half_a_second_and_ten() {
        let mut jitter = Jitter::new(1);
        for failures in 0..40 {
            let delay = reconnect_delay(failures, &mut jitter);
            assert!(delay >= Duration::from_millis(500), "{failures}: {delay:?}");
            assert!(delay <= Duration::from_secs(10), "{failures}: {delay:?}");
        }
        assert!(reconnect_delay(30, &mut jitter) >= Duration::from_secs(5));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 10:00:07 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn the_clock_offset_is_server_minus_local() {
        let local = DateTime::parse_from_rfc3339("2026-11-25T10:00:02.500Z")
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            clock_offset_ms(Some("Wed, 25 Nov 2026 10:00:00 GMT"), local),
            Some(-2500)
        );
        assert_eq!(clock_offset_ms(None, local), None);
        assert_eq!(clock_offset_ms(Some("yesterday"), local), None);
    }

    #[test]
    fn keys_follow_terminal_outbox_and_padded_sequence() {
        let key = IdempotencyKey::for_entry("T7", "0a1b2c3d", 42);
        assert_eq!(key.as_str(), "T7.0a1b2c3d.0000000042");
    }

    #[test]
    fn keys_replace_foreign_characters_and_cut_the_terminal_to_64() {
        let key = IdempotencyKey::for_entry("caja 3/norte.ñ", "0a1b2c3d", 1);
        assert_eq!(key.as_str(), "caja_3_norte__.0a1b2c3d.0000000001");
        let long = "x".repeat(200);
        let key = IdempotencyKey::for_entry(&long, "0a1b2c3d", 1);
        assert_eq!(
            key.as_str(),
            format!("{}.0a1b2c3d.0000000001", "x".repeat(64))
        );
    }

    #[test]
    fn every_built_key_is_a_valid_contract_key() {
        let terminals = [
            "",
            "T7",
            "ünïcödé ☕",
            "a.b:c",
            &"é".repeat(300),
            "tab\there",
            "-_-",
        ];
        for terminal in terminals {
            for seq in [1, 9_999_999_999, u64::MAX] {
                let key = IdempotencyKey::for_entry(terminal, "ffffffff", seq);
                assert!(is_valid_key(key.as_str()), "{key}");
                assert_eq!(IdempotencyKey::parse(key.as_str()), Some(key));
            }
        }
    }

    #[test]
    fn key_validation_follows_the_contract() {
        assert!(is_valid_key("T7-20261125-000123"));
        assert!(is_valid_key("a:b.c_d-e"));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key(&"a".repeat(129)));
        assert!(is_valid_key(&"a".repeat(128)));
        assert!(!is_valid_key("a b"));
        assert!(!is_valid_key("a/b"));
    }

    #[test]
    fn a_rejection_keeps_the_json_body_or_wraps_foreign_text() {
        let body = r#"{"error":{"code":"validation_failed","message":"bad"}}"#;
        assert_eq!(rejection_record(400, body), body);
        let wrapped: serde_json::Value =
            serde_json::from_str(&rejection_record(413, "<html>too big</html>")).unwrap();
        assert_eq!(wrapped["error"]["code"], "http_413");
        assert_eq!(wrapped["error"]["message"], "<html>too big</html>");
    }
}
