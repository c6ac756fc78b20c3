//! When the console raises an alarm, as a pure function of the figures (no I/O): the
//! backlog, the oldest unacknowledged message, the failure rate of the last minute, the
//! dead letters, and figures gone stale (the broker stopped answering). `lib.rs`
//! evaluates them every second, shows them on the page and sets
//! `pos_console_alert_firing{alert}` so Prometheus can page someone too.

use serde::Serialize;
use std::time::Duration;

/// `ALERT_*` settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `ALERT_BACKLOG` (default 10 000): messages outstanding on the processor and the
    /// persister together.
    pub backlog: u64,
    /// `ALERT_OLDEST_UNACKED_MS` (default 60 s): age of the oldest message either
    /// consumer has not finished.
    pub oldest_unacked: Duration,
    /// `ALERT_FAILURE_RATE` (default 0.05): FAILED / finished over the last minute ...
    pub failure_rate: f64,
    /// ... once at least `ALERT_MIN_FINISHED` (default 20) invoices finished in it.
    pub min_finished: u64,
    /// `ALERT_DEAD_LETTERS` (default 1): dead letters waiting for an operator.
    pub dead_letters: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            backlog: 10_000,
            oldest_unacked: Duration::from_secs(60),
            failure_rate: 0.05,
            min_finished: 20,
            dead_letters: 1,
        }
    }
}

/// What the alerts are judged on. `None`: not known (the broker never answered).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Inputs {
    pub backlog: Option<u64>,
    pub oldest_unacked: Option<Duration>,
    pub dead_letters: Option<u64>,
    pub completed_last_minute: u64,
    pub failed_last_minute: u64,
    /// Age of the newest broker figures (`None`: none yet).
    pub figures_age: Option<Duration>,
}

/// The name of every alert, in the order they are shown (the metric's label values).
pub const NAMES: [&str; 5] = [
    "backlog",
    "oldest_unacked",
    "failure_rate",
    "dead_letters",
    "stale_figures",
];

/// Figures older than this mean the broker has stopped answering the console.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub name: &'static str,
    pub firing: bool,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
}

/// Every alert of [`NAMES`], firing or not.
pub fn evaluate(t: &Thresholds, i: &Inputs) -> Vec<Alert> {
    let backlog = i.backlog.unwrap_or(0);
    let oldest = i.oldest_unacked.unwrap_or_default();
    let dead = i.dead_letters.unwrap_or(0);
    let finished = i.completed_last_minute + i.failed_last_minute;
    let rate = if finished == 0 {
        0.0
    } else {
        i.failed_last_minute as f64 / finished as f64
    };
    let age = i.figures_age;
    vec![
        Alert {
            name: "backlog",
            firing: backlog >= t.backlog,
            value: backlog as f64,
            threshold: t.backlog as f64,
            message: format!("{backlog} messages outstanding (processor + persister)"),
        },
        Alert {
            name: "oldest_unacked",
            firing: oldest >= t.oldest_unacked,
            value: oldest.as_secs_f64(),
            threshold: t.oldest_unacked.as_secs_f64(),
            message: format!(
                "the oldest unfinished message is {:.1} s old",
                oldest.as_secs_f64()
            ),
        },
        Alert {
            name: "failure_rate",
            firing: finished >= t.min_finished && rate >= t.failure_rate,
            value: rate,
            threshold: t.failure_rate,
            message: format!(
                "{} of {finished} invoices finished in the last minute FAILED",
                i.failed_last_minute
            ),
        },
        Alert {
            name: "dead_letters",
            firing: t.dead_letters > 0 && dead >= t.dead_letters,
            value: dead as f64,
            threshold: t.dead_letters as f64,
            message: format!("{dead} dead letters wait for an operator"),
        },
        Alert {
            name: "stale_figures",
            firing: age.is_none_or(|a| a >= STALE_AFTER),
            value: age.map_or(-1.0, |a| a.as_secs_f64()),
            threshold: STALE_AFTER.as_secs_f64(),
            message: match age {
                None => "no figures from the broker yet".to_owned(),
                Some(a) => format!("the broker's figures are {:.0} s old", a.as_secs_f64()),
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Inputs {
        Inputs {
            backlog: Some(10),
            oldest_unacked: Some(Duration::from_millis(200)),
            dead_letters: Some(0),
            completed_last_minute: 1_000,
            failed_last_minute: 3,
            figures_age: Some(Duration::from_secs(1)),
        }
    }

    fn firing(i: &Inputs) -> Vec<&'static str> {
        evaluate(&Thresholds::default(), i)
            .into_iter()
            .filter(|a| a.firing)
            .map(|a| a.name)
            .collect()
    }

    #[test]
    fn a_healthy_pipeline_raises_nothing_and_every_alert_is_listed() {
        assert_eq!(firing(&healthy()), Vec::<&str>::new());
        let names: Vec<_> = evaluate(&Thresholds::default(), &healthy())
            .iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, NAMES);
    }

    #[test]
    fn each_alert_fires_at_its_threshold() {
        let t = Thresholds::default();
        let cases: [(&str, Inputs); 5] = [
            (
                "backlog",
                Inputs {
                    backlog: Some(t.backlog),
                    ..healthy()
                },
            ),
            (
                "oldest_unacked",
                Inputs {
                    oldest_unacked: Some(t.oldest_unacked),
                    ..healthy()
                },
            ),
            (
                "failure_rate",
                Inputs {
                    completed_last_minute: 95,
                    failed_last_minute: 5,
                    ..healthy()
                },
            ),
            (
                "dead_letters",
                Inputs {
                    dead_letters: Some(1),
                    ..healthy()
                },
            ),
            (
                "stale_figures",
                Inputs {
                    figures_age: Some(STALE_AFTER),
                    ..healthy()
                },
            ),
        ];
        for (name, inputs) in cases {
            assert_eq!(firing(&inputs), [name], "{inputs:?}");
        }
    }

    #[test]
    fn a_few_failures_in_a_quiet_minute_are_not_a_failure_rate() {
        let quiet = Inputs {
            completed_last_minute: 5,
            failed_last_minute: 5,
            ..healthy()
        };
        assert_eq!(firing(&quiet), Vec::<&str>::new());
    }

    #[test]
    fn no_figures_at_all_is_itself_an_alert() {
        let unknown = Inputs {
            figures_age: None,
            ..Inputs::default()
        };
        assert_eq!(firing(&unknown), ["stale_figures"]);
    }
}
