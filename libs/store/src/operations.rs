//! What the operator console reads and writes in the system of record: how many invoices
//! are in each state, and the audit log of operator actions (collection `audit`, one
//! document per action: who, what, when, and — once known — how it ended).
//!
//! An action is logged *before* it is carried out ([`Store::audit_begin`]) and its outcome
//! written after ([`Store::audit_finish`]): an action whose intent cannot be logged is not
//! carried out, and one whose process dies midway stays in the log without an outcome.

use crate::{bounded_by, Store, StoreError};
use domain::Timestamp;
use futures_util::TryStreamExt;
use mongodb::{
    bson::{self, doc, Document},
    options::{FindOptions, IndexOptions},
    IndexModel,
};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};

const AUDIT: &str = "audit";

/// One operator action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// The action's id, unique; what [`Store::audit_finish`] names it by.
    #[serde(rename = "_id")]
    pub id: String,
    /// When the action was asked for.
    pub at: Timestamp,
    /// The token's `sub` and `tenant`: who did it.
    pub actor: String,
    /// The acting token's tenant.
    pub actor_tenant: String,
    /// What was done (`dlq.replay`) and to what (the request's selector).
    pub action: String,
    /// The request's selector: what the action was aimed at.
    pub target: serde_json::Value,
    /// The `X-Request-Id` of the console request, to follow it through the logs.
    pub request_id: Option<String>,
    /// `None` until the action ended (or forever, if its process died meanwhile); not
    /// written while `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<serde_json::Value>,
    /// When the outcome was written; `None` until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

impl Store {
    fn audit(&self) -> mongodb::Collection<Document> {
        self.db().collection(AUDIT)
    }

    pub(crate) async fn ensure_audit_indexes(&self) -> Result<(), StoreError> {
        self.audit()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "at": -1 })
                    .options(IndexOptions::builder().name("at".to_owned()).build())
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Invoices per state across every tenant (`QUEUED` → n, …), within `limit`: a
    /// scan of the collection, so the console asks every few seconds, never per request.
    pub async fn count_by_state(
        &self,
        limit: Duration,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let pipeline = [doc! { "$group": { "_id": "$state", "n": { "$sum": 1 } } }];
        let run = async {
            let cursor = self.invoices.aggregate(pipeline).max_time(limit).await?;
            let groups: Vec<Document> = cursor.try_collect().await?;
            let mut counts = BTreeMap::new();
            for g in groups {
                let state = g.get_str("_id").unwrap_or("unknown").to_owned();
                let n = match g.get("n") {
                    Some(bson::Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
                    Some(bson::Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                };
                counts.insert(state, n);
            }
            Ok(counts)
        };
        // The server stops at `limit` (max_time); a stalled one is cut a second later.
        bounded_by(limit + Duration::from_secs(1), run).await
    }

    /// Logs the intent of an action (its `outcome` is `None`: not known yet).
    pub async fn audit_begin(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let doc = bson::to_document(entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.bounded(async { Ok(self.audit().insert_one(doc).await.map(|_| ())?) })
            .await
    }

    /// Records how the action `id` ended.
    pub async fn audit_finish(
        &self,
        id: &str,
        outcome: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let outcome = bson::to_bson(outcome).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let finished =
            bson::to_bson(&Timestamp::now()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.bounded(async {
            Ok(self
                .audit()
                .update_one(
                    doc! { "_id": id },
                    doc! { "$set": { "outcome": outcome, "finishedAt": finished } },
                )
                .await
                .map(|_| ())?)
        })
        .await
    }

    /// The newest `limit` actions, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        self.bounded(async {
            let cursor = self
                .audit()
                .find(doc! {})
                .with_options(
                    FindOptions::builder()
                        .sort(doc! { "at": -1 })
                        .limit(limit)
                        .build(),
                )
                .await?;
            let docs: Vec<Document> = cursor.try_collect().await?;
            docs.into_iter()
                .map(|d| bson::from_document(d).map_err(|e| StoreError::Corrupt(e.to_string())))
                .collect()
        })
        .await
    }
}
