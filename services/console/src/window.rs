//! The console's view of traffic, built from the event log and nothing else (no I/O
//! here): per-second counts of accepted, completed and failed invoices for the last
//! [`SERIES_SECS`] seconds, acceptance → COMPLETED latencies, and when each terminal was
//! last seen (its newest acceptance). `lib.rs` feeds it every event the log delivers;
//! the overview route takes a [`Traffic`] snapshot.
//!
//! Memory is bounded whatever the rate: [`SERIES_SECS`] buckets of at most
//! [`SAMPLES_PER_SEC`] latency samples each, and at most `max_terminals` terminals (the
//! least recently seen is forgotten first).

use domain::InvoiceState;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};

/// Seconds of history kept (the page's chart).
pub const SERIES_SECS: i64 = 120;
/// Rates are averaged over the last this many whole seconds.
pub const RATE_SECS: i64 = 10;
/// Latency percentiles cover the last this many seconds.
pub const LATENCY_SECS: i64 = 60;
/// Latency samples kept per second (the first ones of that second: at 1 000/s that is
/// every fourth invoice, plenty for a p99 over a minute).
pub const SAMPLES_PER_SEC: usize = 250;

/// One event, reduced to what the window needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub state: InvoiceState,
    pub tenant: String,
    pub terminal: String,
    /// When the state change happened (the invoice's `updatedAt`), ms since the epoch.
    pub at_ms: i64,
    /// When the invoice was accepted (its `createdAt`), ms since the epoch.
    pub accepted_ms: i64,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    sec: i64,
    accepted: u64,
    completed: u64,
    failed: u64,
    latencies_ms: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Seen {
    last_ms: i64,
    invoices: u64,
}

/// Counts since the console started (events it read, backfill included).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub events: u64,
    pub accepted: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug)]
pub struct Window {
    buckets: VecDeque<Bucket>,
    terminals: HashMap<(String, String), Seen>,
    max_terminals: usize,
    totals: Totals,
}

/// One second of the chart.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Unix seconds.
    pub t: i64,
    pub accepted: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: Option<u32>,
    pub p95_ms: Option<u32>,
    pub p99_ms: Option<u32>,
    pub max_ms: Option<u32>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    /// Per second over the last [`RATE_SECS`] whole seconds.
    pub accepted_per_sec: f64,
    pub completed_per_sec: f64,
    pub failed_per_sec: f64,
    /// Finished in the last [`LATENCY_SECS`] seconds (the failure-rate alert's input).
    pub completed_last_minute: u64,
    pub failed_last_minute: u64,
    /// Acceptance → COMPLETED, over the last [`LATENCY_SECS`] seconds.
    pub latency: Latency,
    /// The last [`SERIES_SECS`] seconds, oldest first, one point per second.
    pub series: Vec<Point>,
    pub totals: Totals,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TerminalSeen {
    pub tenant_id: String,
    pub terminal_id: String,
    /// Unix ms of its newest acceptance.
    pub last_seen_ms: i64,
    /// Invoices it sent that the console has seen.
    pub invoices: u64,
}

impl Window {
    pub fn new(max_terminals: usize) -> Self {
        Self {
            buckets: VecDeque::new(),
            terminals: HashMap::new(),
            max_terminals: max_terminals.max(1),
            totals: Totals::default(),
        }
    }

    /// Takes one event; `now_ms` is the wall clock (events older than the window still
    /// update "last seen" and the totals, not the chart).
    pub fn record(&mut self, e: &Observed, now_ms: i64) {
        self.totals.events += 1;
        match e.state {
            InvoiceState::Queued => {
                self.totals.accepted += 1;
                self.seen(e);
            }
            InvoiceState::Completed => self.totals.completed += 1,
            InvoiceState::Failed => self.totals.failed += 1,
            _ => return,
        }
        let sec = e.at_ms.div_euclid(1000);
        let now_sec = now_ms.div_euclid(1000);
        if sec <= now_sec - SERIES_SECS || sec > now_sec + 5 {
            return;
        }
        let b = self.bucket(sec);
        match e.state {
            InvoiceState::Queued => b.accepted += 1,
            InvoiceState::Completed => {
                b.completed += 1;
                if b.latencies_ms.len() < SAMPLES_PER_SEC {
                    let ms = (e.at_ms - e.accepted_ms).clamp(0, i64::from(u32::MAX));
                    b.latencies_ms.push(u32::try_from(ms).unwrap_or(u32::MAX));
                }
            }
            InvoiceState::Failed => b.failed += 1,
            _ => {}
        }
        self.trim(now_sec);
    }

    fn seen(&mut self, e: &Observed) {
        let key = (e.tenant.clone(), e.terminal.clone());
        if !self.terminals.contains_key(&key) && self.terminals.len() >= self.max_terminals {
            if let Some(oldest) = self
                .terminals
                .iter()
                .min_by_key(|(_, s)| s.last_ms)
                .map(|(k, _)| k.clone())
            {
                self.terminals.remove(&oldest);
            }
        }
        let s = self.terminals.entry(key).or_insert(Seen {
            last_ms: e.at_ms,
            invoices: 0,
        });
        s.last_ms = s.last_ms.max(e.at_ms);
        s.invoices += 1;
    }

    /// The bucket of `sec`, created in order (buckets stay sorted by second).
    fn bucket(&mut self, sec: i64) -> &mut Bucket {
        let at = self.buckets.partition_point(|b| b.sec < sec);
        if self.buckets.get(at).is_none_or(|b| b.sec != sec) {
            self.buckets.insert(
                at,
                Bucket {
                    sec,
                    ..Bucket::default()
                },
            );
        }
        &mut self.buckets[at]
    }

    fn trim(&mut self, now_sec: i64) {
        while self
            .buckets
            .front()
            .is_some_and(|b| b.sec <= now_sec - SERIES_SECS)
        {
            self.buckets.pop_front();
        }
    }

    /// The figures as of `now_ms`.
    pub fn traffic(&self, now_ms: i64) -> Traffic {
        let now_sec = now_ms.div_euclid(1000);
        let in_last = |secs: i64| {
            // Whole seconds only: the current second is still filling.
            self.buckets
                .iter()
                .filter(move |b| b.sec < now_sec && b.sec >= now_sec - secs)
        };
        let rate = |f: fn(&Bucket) -> u64| {
            in_last(RATE_SECS).map(f).sum::<u64>() as f64 / RATE_SECS as f64
        };
        let mut latencies: Vec<u32> = self
            .buckets
            .iter()
            .filter(|b| b.sec > now_sec - LATENCY_SECS)
            .flat_map(|b| b.latencies_ms.iter().copied())
            .collect();
        latencies.sort_unstable();
        let pct = |p: f64| -> Option<u32> {
            if latencies.is_empty() {
                return None;
            }
            let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            Some(latencies[rank - 1])
        };
        let last_minute = |f: fn(&Bucket) -> u64| {
            self.buckets
                .iter()
                .filter(|b| b.sec > now_sec - LATENCY_SECS)
                .map(f)
                .sum::<u64>()
        };
        let series = (now_sec - SERIES_SECS + 1..=now_sec)
            .map(|t| {
                let b = self.buckets.iter().find(|b| b.sec == t);
                Point {
                    t,
                    accepted: b.map_or(0, |b| b.accepted),
                    completed: b.map_or(0, |b| b.completed),
                    failed: b.map_or(0, |b| b.failed),
                }
            })
            .collect();
        Traffic {
            accepted_per_sec: rate(|b| b.accepted),
            completed_per_sec: rate(|b| b.completed),
            failed_per_sec: rate(|b| b.failed),
            completed_last_minute: last_minute(|b| b.completed),
            failed_last_minute: last_minute(|b| b.failed),
            latency: Latency {
                samples: latencies.len(),
                p50_ms: pct(0.50),
                p95_ms: pct(0.95),
                p99_ms: pct(0.99),
                max_ms: latencies.last().copied(),
            },
            series,
            totals: self.totals,
        }
    }

    /// The `n` terminals seen most recently, newest first.
    pub fn terminals(&self, n: usize) -> Vec<TerminalSeen> {
        let mut all: Vec<TerminalSeen> = self
            .terminals
            .iter()
            .map(|((tenant, terminal), s)| TerminalSeen {
                tenant_id: tenant.clone(),
                terminal_id: terminal.clone(),
                last_seen_ms: s.last_ms,
                invoices: s.invoices,
            })
            .collect();
        all.sort_by_key(|t| std::cmp::Reverse(t.last_seen_ms));
        all.truncate(n);
        all
    }

    /// How many terminals are remembered.
    pub fn terminal_count(&self) -> usize {
        self.terminals.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn ev(state: InvoiceState, terminal: &str, at_ms: i64, accepted_ms: i64) -> Observed {
        Observed {
            state,
            tenant: "acme".into(),
            terminal: terminal.into(),
            at_ms,
            accepted_ms,
        }
    }

    #[test]
    fn rates_count_whole_seconds_of_the_last_ten() {
        let mut w = Window::new(10);
        // 30 completions spread over the 10 whole seconds before NOW, 5 in the current one.
        for i in 0..30 {
            let at = NOW - 10_000 + i * 333;
            w.record(&ev(InvoiceState::Completed, "T1", at, at - 40), NOW);
        }
        for _ in 0..5 {
            w.record(&ev(InvoiceState::Completed, "T1", NOW + 10, NOW), NOW);
        }
        let t = w.traffic(NOW);
        assert!((t.completed_per_sec - 3.0).abs() < 1e-9, "{t:?}");
        assert_eq!(t.totals.completed, 35);
        assert_eq!(t.completed_last_minute, 35);
        assert_eq!(t.series.len(), SERIES_SECS as usize);
        assert_eq!(t.series.last().unwrap().completed, 5);
    }

    #[test]
    fn latency_percentiles_are_of_acceptance_to_completion() {
        let mut w = Window::new(10);
        for ms in 1..=100 {
            w.record(
                &ev(InvoiceState::Completed, "T1", NOW - 2_000, NOW - 2_000 - ms),
                NOW,
            );
        }
        let l = w.traffic(NOW).latency;
        assert_eq!(l.samples, 100);
        assert_eq!(
            (l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms),
            (Some(50), Some(95), Some(99), Some(100))
        );
        assert_eq!(Window::new(1).traffic(NOW).latency.p99_ms, None);
    }

    #[test]
    fn old_events_update_last_seen_and_totals_but_not_the_chart() {
        let mut w = Window::new(10);
        let old = NOW - (SERIES_SECS + 5) * 1000;
        w.record(&ev(InvoiceState::Queued, "T9", old, old), NOW);
        let t = w.traffic(NOW);
        assert_eq!(t.totals.accepted, 1);
        assert!(t.series.iter().all(|p| p.accepted == 0));
        assert_eq!(w.terminals(5)[0].last_seen_ms, old);
    }

    #[test]
    fn terminals_are_bounded_and_newest_first() {
        let mut w = Window::new(2);
        w.record(&ev(InvoiceState::Queued, "A", NOW - 3_000, 0), NOW);
        w.record(&ev(InvoiceState::Queued, "B", NOW - 2_000, 0), NOW);
        w.record(&ev(InvoiceState::Queued, "B", NOW - 1_500, 0), NOW);
        w.record(&ev(InvoiceState::Queued, "C", NOW - 1_000, 0), NOW);
        let seen = w.terminals(10);
        let names: Vec<&str> = seen.iter().map(|t| t.terminal_id.as_str()).collect();
        assert_eq!(
            names,
            ["C", "B"],
            "A, the least recently seen, was forgotten"
        );
        assert_eq!(seen[1].invoices, 2);
        assert_eq!(w.terminal_count(), 2);
    }

    #[test]
    fn the_chart_never_holds_more_than_its_seconds() {
        let mut w = Window::new(10);
        for s in 0..1_000 {
            let now = NOW + s * 1000;
            w.record(&ev(InvoiceState::Queued, "T1", now, now), now);
        }
        assert!(w.buckets.len() <= SERIES_SECS as usize);
        let t = w.traffic(NOW + 999_000);
        assert_eq!(
            t.series.iter().map(|p| p.accepted).sum::<u64>(),
            SERIES_SECS as u64
        );
    }
}
