//! Latency histograms and their percentiles (hdrhistogram: fixed memory and constant
//! time per sample however long the run, 3 significant digits), plus the small
//! text-table helper every mode prints with.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::time::Duration;

/// Latencies in microseconds, from 1 µs up to an hour (longer ones count as an hour).
#[derive(Debug, Clone)]
pub struct Samples(Histogram<u64>);

impl Default for Samples {
    fn default() -> Self {
        // 1 µs … 1 h at 3 significant digits: ~200 KiB, fixed.
        Self(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Samples {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    /// Adds `other`'s samples to these (`other` is left empty).
    pub fn append(&mut self, other: &mut Samples) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
        other.0.reset();
    }

    pub fn summary(&self) -> Summary {
        if self.0.is_empty() {
            return Summary::default();
        }
        let at = |q: f64| self.0.value_at_quantile(q) as f64 / 1000.0;
        Summary {
            count: usize::try_from(self.0.len()).unwrap_or(usize::MAX),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: self.0.max() as f64 / 1000.0,
        }
    }
}

impl Summary {
    pub fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "p50": round2(self.p50),
            "p90": round2(self.p90),
            "p99": round2(self.p99),
            "max": round2(self.max),
        })
    }

    /// `p50 12.3  p90 40.1  p99 88.0  max 120.4 ms (n=1234)`
    pub fn line(self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} ms  (n={})",
            self.p50, self.p90, self.p99, self.max, self.count
        )
    }
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Two-column table: the label column padded to the longest label.
pub fn table(title: &str, rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = format!("\n{title}\n{}\n", "-".repeat(title.len()));
    for (k, v) in rows {
        out.push_str(&format!("  {k:<width$}  {v}\n"));
    }
    out
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat`
/// (Linux; `None` elsewhere). Assumes the usual 100 clock ticks per second.
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds("self")
}

/// The same for process `proc` (a pid, or `self`): `None` if it is gone or not Linux.
pub fn cpu_seconds(proc: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{proc}/stat")).ok()?;
    // the command name may contain spaces; fields are counted after its closing paren
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_within_the_histograms_precision() {
        let mut s = Samples::default();
        for ms in 1..=100u64 {
            s.record(Duration::from_millis(ms));
        }
        let mut other = Samples::default();
        other.record(Duration::from_secs(2));
        s.append(&mut other);
        let sum = s.summary();
        assert_eq!(sum.count, 101);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001;
        assert!(close(sum.p50, 51.0), "{sum:?}");
        assert!(close(sum.p90, 91.0), "{sum:?}");
        assert!(close(sum.p99, 100.0), "{sum:?}");
        assert!(close(sum.max, 2000.0), "{sum:?}");
        assert_eq!(other.summary().count, 0, "appending empties the source");
        assert_eq!(Samples::default().summary().count, 0);
    }

    #[test]
    fn own_cpu_time_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(own_cpu_seconds().is_some());
        }
    }
}
