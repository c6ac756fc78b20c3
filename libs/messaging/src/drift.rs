//! Where a running broker's stream or consumer settings differ from `nats/`.
//!
//! Services create what is missing at start but never rewrite what exists: an operator's
//! change (replicas, retention, limits) must survive a service restart, and one service's
//! environment must not revert another's. So at start each definition is compared with
//! the server's, and every difference is reported (logged by the caller) for an operator
//! to keep or to overwrite with `./x nats-apply`.
//!
//! Only the settings a definition file names are compared (the server fills in many
//! more, and versions differ in which), after the service's own overrides
//! (`ACK_WAIT_MS`, `SUBMIT_DEDUPE_WINDOW_MS`, ...). Pure: JSON values in, differences out.

use serde_json::Value;
use std::fmt;

/// One setting that differs.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// The stream, or `stream/consumer`.
    pub object: String,
    /// The setting's name as the definition files spell it (`max_age`).
    pub setting: String,
    /// What the server has.
    pub running: Value,
    /// What `nats/` (with this process's overrides) says.
    pub defined: Value,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: running {}, defined {}",
            self.object, self.setting, self.running, self.defined
        )
    }
}

/// The differences between `defined` and `running` in the settings `named`.
///
/// `defined` and `running` are the same configuration type serialised; `named` are the
/// keys of the definition file. A setting the running side lacks counts as a difference
/// unless the definition gives it the serialiser's "nothing" (`null`, empty).
pub fn compare(object: &str, named: &[String], defined: &Value, running: &Value) -> Vec<Drift> {
    named
        .iter()
        .filter_map(|key| {
            let ours = defined.get(key).cloned().unwrap_or(Value::Null);
            let theirs = running.get(key).cloned().unwrap_or(Value::Null);
            (!same(&ours, &theirs)).then(|| Drift {
                object: object.to_owned(),
                setting: key.clone(),
                running: theirs,
                defined: ours,
            })
        })
        .collect()
}

fn same(a: &Value, b: &Value) -> bool {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    a == b || (empty(a) && empty(b))
}

/// The top-level keys of a definition file's JSON object.
pub fn named_settings(definition: &str) -> Vec<String> {
    match serde_json::from_str::<Value>(definition) {
        Ok(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_named_settings_that_differ_are_reported() {
        let named = named_settings(r#"{"name": "S", "max_age": 10, "num_replicas": 1}"#);
        let defined = json!({"name": "S", "max_age": 10, "num_replicas": 1, "max_msgs": -1});
        let running = json!({"name": "S", "max_age": 3600, "num_replicas": 1, "max_msgs": 5,
                             "first_seq": 7});
        let drift = compare("S", &named, &defined, &running);
        assert_eq!(
            drift,
            vec![Drift {
                object: "S".into(),
                setting: "max_age".into(),
                running: json!(3600),
                defined: json!(10),
            }],
            "max_msgs is not named by the file, first_seq not defined at all"
        );
        assert!(drift[0].to_string().contains("max_age"));
    }

    #[test]
    fn a_missing_setting_is_a_difference_unless_both_say_nothing() {
        let named = vec!["description".to_owned(), "subjects".to_owned()];
        let defined = json!({"description": "", "subjects": ["a.>"]});
        let running = json!({});
        let drift = compare("S", &named, &defined, &running);
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].setting, "subjects");
    }
}
