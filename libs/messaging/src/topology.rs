//! Names of everything on the broker, derived from one namespace, and the stream and
//! consumer definitions from `nats/` (embedded at compile time: the JSON files that
//! `nats stream add --config` accepts are the same ones the services apply).
//!
//! The default namespace is `pos`: streams `POS_INVOICES`, `POS_EVENTS`, `POS_DLQ`,
//! subjects `pos.submit.<tenant>.<key token>` (keyless: `pos.submit.<tenant>`),
//! `pos.events.<tenant>.<invoice id>`, `pos.dlq.<tenant>` (raw letters:
//! `pos.dlq._undecodable`), core-NATS `pos.catalog.<tenant>`. Tests use a random namespace
//! each, so they never share a stream.

use async_nats::jetstream::{consumer::pull, stream};
use domain::{IdempotencyKey, InvoiceId, TenantId};
use std::time::Duration;

const INVOICES_JSON: &str = include_str!("../../../nats/streams/invoices.json");
const EVENTS_JSON: &str = include_str!("../../../nats/streams/events.json");
const DLQ_JSON: &str = include_str!("../../../nats/streams/dlq.json");
const PROCESSOR_JSON: &str = include_str!("../../../nats/consumers/processor.json");
const PERSISTER_JSON: &str = include_str!("../../../nats/consumers/persister.json");

/// The namespace the files in `nats/` are written for.
const FILE_NAMESPACE: &str = "pos";

/// Names of every stream, subject and consumer on the broker for one namespace, and
/// their definitions with this deployment's overrides.
#[derive(Debug, Clone)]
pub struct Topology {
    ns: String,
    /// `SUBMIT_DEDUPE_WINDOW_MS`: the submissions stream's dedupe window (tests shorten it).
    pub submit_dedupe_window: Option<Duration>,
    /// `ACK_WAIT_MS` for the processor's consumer (lease): tests shorten it to prove
    /// redelivery.
    pub processor_ack_wait: Option<Duration>,
    /// The persister consumer's ack wait (lease).
    pub persister_ack_wait: Option<Duration>,
    /// Replicas of every stream (`NATS_REPLICAS`); consumers follow their stream's.
    pub replicas: Option<usize>,
    /// `INVOICES_MAX_MSGS` / `EVENTS_MAX_MSGS`: the streams' counts, where overridden.
    pub max_msgs: service_kit::settings::StreamMaxMsgs,
}

/// A file in `nats/` that is not a valid stream or consumer definition.
#[derive(Debug, thiserror::Error)]
#[error("bad definition in nats/{file}: {source}")]
pub struct DefinitionError {
    file: &'static str,
    source: serde_json::Error,
}

impl Topology {
    /// `ns` must be a lower-case subject token (checked by the settings loader).
    pub fn new(ns: impl Into<String>) -> Self {
        Self {
            ns: ns.into(),
            submit_dedupe_window: None,
            processor_ack_wait: None,
            persister_ack_wait: None,
            replicas: None,
            max_msgs: service_kit::settings::StreamMaxMsgs::default(),
        }
    }

    /// The topology every service and `nats-apply` derive alike from the shared settings,
    /// so that whichever creates the streams and consumers creates the same ones.
    pub fn from_infra(infra: &service_kit::settings::Infra) -> Self {
        let mut t = Self::new(&infra.namespace);
        t.submit_dedupe_window = Some(infra.submit_dedupe_window);
        t.processor_ack_wait = Some(infra.ack_wait);
        t.persister_ack_wait = Some(infra.ack_wait);
        t.replicas = Some(infra.stream_replicas);
        t.max_msgs = infra.stream_max_msgs;
        t
    }

    /// The namespace everything is named from, e.g. `pos`.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn stream_name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.ns.to_uppercase())
    }

    /// The stream of submissions, `<NS>_INVOICES`, read by the processor.
    pub fn invoices_stream(&self) -> String {
        self.stream_name("INVOICES")
    }
    /// The lifecycle event log, `<NS>_EVENTS`, read by the persister and fanout.
    pub fn events_stream(&self) -> String {
        self.stream_name("EVENTS")
    }
    /// The dead-letter stream, `<NS>_DLQ`, that operators replay from.
    pub fn dlq_stream(&self) -> String {
        self.stream_name("DLQ")
    }

    /// Where a submission is published. A keyed submission has a subject of its own,
    /// `<ns>.submit.<tenant>.<key>`: the broker then holds every key's first submission
    /// (published only if the subject is still empty), which makes it the durable judge of
    /// whether a key is new. Unkeyed submissions share `<ns>.submit.<tenant>`.
    pub fn submit_subject(&self, tenant: &TenantId, key: Option<&IdempotencyKey>) -> String {
        match key {
            Some(k) => format!("{}.submit.{tenant}.{}", self.ns, key_token(k)),
            None => format!("{}.submit.{tenant}", self.ns),
        }
    }
    /// One subject per invoice, `<ns>.events.<tenant>.<id>`: the last message on it is the
    /// invoice's latest state, which the broker can answer by id (read-your-writes
    /// without Redis).
    pub fn event_subject(&self, tenant: &TenantId, id: InvoiceId) -> String {
        format!("{}.events.{tenant}.{id}", self.ns)
    }
    /// Every event of one tenant (fanout's per-tenant feed).
    pub fn tenant_events(&self, tenant: &TenantId) -> String {
        format!("{}.events.{tenant}.*", self.ns)
    }
    /// Every tenant's events (the operator console's feed).
    pub fn all_events(&self) -> String {
        format!("{}.events.>", self.ns)
    }
    /// Core NATS (no stream): "the tenant's catalog changed", for caches and terminals.
    pub fn catalog_subject(&self, tenant: &TenantId) -> String {
        format!("{}.catalog.{tenant}", self.ns)
    }
    /// Every tenant's catalog change notices (`<ns>.catalog.*`).
    pub fn catalog_changes(&self) -> String {
        format!("{}.catalog.*", self.ns)
    }
    /// Where a tenant's dead letters are published, `<ns>.dlq.<tenant>`.
    pub fn dlq_subject(&self, tenant: &TenantId) -> String {
        format!("{}.dlq.{tenant}", self.ns)
    }
    /// Request/reply admin endpoints live under this prefix (`pos.admin.dlq.replay`).
    pub fn admin_prefix(&self) -> String {
        format!("{}.admin", self.ns)
    }

    /// Rewrites a definition written for the `pos` namespace into this one.
    fn localize(&self, text: &str) -> String {
        text.replace("\"POS_", &format!("\"{}_", self.ns.to_uppercase()))
            .replace(&format!("\"{FILE_NAMESPACE}."), &format!("\"{}.", self.ns))
    }

    fn stream(&self, file: &'static str, text: &str) -> Result<stream::Config, DefinitionError> {
        serde_json::from_str(&self.localize(text))
            .map_err(|source| DefinitionError { file, source })
    }

    fn consumer(&self, file: &'static str, text: &str) -> Result<pull::Config, DefinitionError> {
        serde_json::from_str(&self.localize(text))
            .map_err(|source| DefinitionError { file, source })
    }

    /// The invoices, events and dead-letter stream configs from `nats/streams/`, in that
    /// order, with the dedupe window, count and replica overrides applied.
    pub fn stream_configs(&self) -> Result<Vec<stream::Config>, DefinitionError> {
        let mut invoices = self.stream("streams/invoices.json", INVOICES_JSON)?;
        if let Some(w) = self.submit_dedupe_window {
            invoices.duplicate_window = w;
        }
        let mut events = self.stream("streams/events.json", EVENTS_JSON)?;
        for (stream, kept) in [
            (&mut invoices, self.max_msgs.invoices),
            (&mut events, self.max_msgs.events),
        ] {
            if let Some(n) = kept {
                stream.max_messages = i64::from(n);
            }
        }
        let dlq = self.stream("streams/dlq.json", DLQ_JSON)?;
        let mut all = vec![invoices, events, dlq];
        if let Some(r) = self.replicas {
            for s in &mut all {
                s.num_replicas = r;
            }
        }
        Ok(all)
    }

    /// Every stream, with the settings its file names (what [`crate::drift`] compares).
    pub fn stream_definitions(
        &self,
    ) -> Result<Vec<(stream::Config, Vec<String>)>, DefinitionError> {
        let named = [INVOICES_JSON, EVENTS_JSON, DLQ_JSON].map(crate::drift::named_settings);
        Ok(self.stream_configs()?.into_iter().zip(named).collect())
    }

    /// Every durable consumer: its stream, its config, the settings its file names.
    pub fn consumer_definitions(
        &self,
    ) -> Result<Vec<(String, pull::Config, Vec<String>)>, DefinitionError> {
        Ok(vec![
            (
                self.invoices_stream(),
                self.processor_consumer()?,
                crate::drift::named_settings(PROCESSOR_JSON),
            ),
            (
                self.events_stream(),
                self.persister_consumer()?,
                crate::drift::named_settings(PERSISTER_JSON),
            ),
        ])
    }

    /// The processor's durable consumer on the invoices stream, with the ack-wait override.
    pub fn processor_consumer(&self) -> Result<pull::Config, DefinitionError> {
        let mut c = self.consumer("consumers/processor.json", PROCESSOR_JSON)?;
        if let Some(w) = self.processor_ack_wait {
            c.ack_wait = w;
        }
        Ok(c)
    }

    /// The persister's durable consumer on the events stream, with the ack-wait override.
    pub fn persister_consumer(&self) -> Result<pull::Config, DefinitionError> {
        let mut c = self.consumer("consumers/persister.json", PERSISTER_JSON)?;
        if let Some(w) = self.persister_ack_wait {
            c.ack_wait = w;
        }
        Ok(c)
    }
}

/// An idempotency key as one subject token. Keys are `[A-Za-z0-9._:-]`; only `.` would
/// split the token, and `~` (never in a key) stands for it, so the mapping is one to one.
fn key_token(key: &IdempotencyKey) -> String {
    key.as_str().replace('.', "~")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_file_parses() {
        let t = Topology::new("pos");
        let streams = t.stream_configs().unwrap();
        assert_eq!(streams.len(), 3);
        assert_eq!(streams[0].name, "POS_INVOICES");
        assert_eq!(streams[0].subjects, vec!["pos.submit.>".to_string()]);
        assert_eq!(streams[0].duplicate_window, Duration::from_secs(120));
        assert_eq!(
            (streams[0].max_messages, streams[1].max_messages),
            (1_000_000, 2_000_000)
        );
        let p = t.processor_consumer().unwrap();
        assert_eq!(p.durable_name.as_deref(), Some("processor"));
        assert_eq!(
            p.max_deliver, -1,
            "the attempt budget is the app's: a failed dead-lettering must be retried"
        );
        assert!(
            p.backoff.is_empty(),
            "backoff breaks delayed naks on 2.9.10"
        );
        assert_eq!(t.persister_consumer().unwrap().max_deliver, -1);
    }

    #[test]
    fn a_namespace_renames_streams_and_subjects_consistently() {
        let mut t = Topology::new("t0abc");
        t.submit_dedupe_window = Some(Duration::from_secs(1));
        t.max_msgs.events = Some(5_000);
        let s = t.stream_configs().unwrap();
        assert_eq!((s[0].max_messages, s[1].max_messages), (1_000_000, 5_000));
        assert_eq!(s[1].name, "T0ABC_EVENTS");
        assert_eq!(s[1].subjects, vec!["t0abc.events.>".to_string()]);
        assert_eq!(s[0].duplicate_window, Duration::from_secs(1));
        assert_eq!(
            t.processor_consumer().unwrap().filter_subject,
            "t0abc.submit.>"
        );
        assert_eq!(
            t.persister_consumer().unwrap().filter_subject,
            "t0abc.events.>"
        );
        let tenant = TenantId::parse("acme").unwrap();
        let id = InvoiceId::generate();
        assert_eq!(
            t.event_subject(&tenant, id),
            format!("t0abc.events.acme.{id}")
        );
        assert_eq!(t.tenant_events(&tenant), "t0abc.events.acme.*");
    }

    #[test]
    fn every_key_gets_a_subject_token_of_its_own() {
        let t = Topology::new("pos");
        let tenant = TenantId::parse("acme").unwrap();
        let key = |k: &str| IdempotencyKey::parse(k).unwrap();
        assert_eq!(
            t.submit_subject(&tenant, Some(&key("T7.0001:a-b_c"))),
            "pos.submit.acme.T7~0001:a-b_c"
        );
        // Distinct keys, distinct subjects (the token is one to one).
        assert_ne!(
            t.submit_subject(&tenant, Some(&key("a.b"))),
            t.submit_subject(&tenant, Some(&key("a_b")))
        );
        assert_eq!(t.submit_subject(&tenant, None), "pos.submit.acme");
    }
}
