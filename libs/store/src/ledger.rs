//! The fiscal ledger (contract § Fiscal record and ledger): collection `ledger`, one
//! document per numbered invoice, `_id` = `<tenant>:<invoice id>`.
//!
//! Numbering needs no counter and no transaction; two unique indexes do it:
//! - `_id` (one per invoice): an invoice can never get a second record, whatever
//!   retries, redeliveries or instances do — a second try finds the first's record;
//! - `ledger_number`, unique (tenant, series, number): record n+1 can be inserted only
//!   once, by whoever read record n as the series' last and chained to its hash. A
//!   writer that lost the race gets a duplicate-key error, reads the new last record and
//!   chains again. A number exists only as a stored record that links to number − 1, so
//!   a series is 1..N with no gap whatever process dies where (crash analysis in
//!   ARCHITECTURE.md).
//!
//! A batch of invoices of one tenant is chained in one ordered `insert`: one round trip
//! for many numbers, on the head the numbering task remembers; only a failed insert
//! costs the reads of what is stored. An invoice that gives up (retries exhausted) first *voids* its `_id`
//! (a document without a number), so a stalled process that wakes up later cannot give a
//! FAILED invoice a record; a replay (next generation) lifts the void.
//!
//! Reads and writes use majority read and write concern: a record acknowledged here
//! survives a primary failover, and no writer chains to one that could roll back.

use crate::{Store, StoreError};
use domain::fiscal::{Broken, Entry, Head, LedgerRecord, Verifier};
use domain::{InvoiceId, TenantId, Timestamp};
use futures_util::{Stream, TryStreamExt};
use mongodb::{
    bson::{self, doc, Document},
    options::{CollectionOptions, IndexOptions, ReadConcern, WriteConcern},
    Collection, IndexModel,
};
use std::collections::HashMap;

const LEDGER: &str = "ledger";
/// Tries of one batch before the caller is told the series is contended (each lost race
/// costs one re-read; three processors racing on one series lose a few in a row at most).
const CHAIN_TRIES: usize = 50;
/// Records checked per invoice lookup while verifying.
const VERIFY_CHUNK: usize = 256;
/// How long a numbering task keeps the tenant's series before reading it again: a
/// change of the `series` setting applies to records made from this long after it.
pub const SERIES_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// What one numbering task remembers between batches: the tenant's series and the head
/// it last chained to. Hints only — the unique indexes decide.
#[derive(Debug, Default)]
pub struct Chain {
    series: Option<(String, std::time::Instant)>,
    head: Option<(String, Head)>,
}

/// An invoice to number, with the replay generation that asks.
#[derive(Debug, Clone)]
pub struct ToNumber {
    /// The invoice facts the record chains.
    pub entry: Entry,
    /// The invoice's replay generation; a void of the same or a later one refuses a record.
    pub generation: u32,
}

/// What numbering an invoice gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Numbered {
    /// Its record: new, or the one an earlier try stored.
    Record(Box<LedgerRecord>),
    /// The invoice gave up in this generation (it is FAILED): it gets no record.
    Void,
}

/// What voiding an invoice found.
#[derive(Debug, Clone, PartialEq)]
pub enum Voided {
    /// No record can be made for this generation any more.
    Fenced,
    /// The invoice was numbered already: it must complete with this record, not fail.
    HasRecord(Box<LedgerRecord>),
}

/// The answer of `GET /ledger/verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Records that passed.
    pub count: u64,
    /// Number of the last record that passed; 0 if none did.
    pub last_number: u64,
    /// Hash of the last record that passed; empty if none did.
    pub last_hash: String,
    /// The first record that no longer holds; `None`: the series is intact.
    pub first_broken: Option<Broken>,
}

fn record_id(tenant: &TenantId, invoice: InvoiceId) -> String {
    format!("{tenant}:{invoice}")
}

/// A stored ledger document: a record, or the void of an invoice that gave up.
enum Stored {
    Record(Box<LedgerRecord>),
    Void { generation: u32 },
}

fn decode(doc: Document) -> Result<Stored, StoreError> {
    if doc.get_bool("void").unwrap_or(false) {
        let generation = doc.get_i64("replays").unwrap_or(0);
        return Ok(Stored::Void {
            generation: u32::try_from(generation).unwrap_or(u32::MAX),
        });
    }
    bson::from_document(doc)
        .map(|r| Stored::Record(Box::new(r)))
        .map_err(|e| StoreError::Corrupt(format!("ledger record: {e}")))
}

/// A duplicate-key refusal (of a single write or of any write of a batch).
pub(crate) fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|w| w.code == 11000)),
        _ => false,
    }
}

impl Store {
    fn ledger(&self) -> Collection<Document> {
        self.db().collection_with_options(
            LEDGER,
            CollectionOptions::builder()
                .read_concern(ReadConcern::majority())
                .write_concern(WriteConcern::majority())
                .build(),
        )
    }

    pub(crate) async fn ensure_ledger_indexes(&self) -> Result<(), StoreError> {
        let number = IndexModel::builder()
            .keys(doc! { "tenantId": 1, "series": 1, "number": 1 })
            .options(
                IndexOptions::builder()
                    .name("ledger_number".to_owned())
                    .unique(true)
                    // Voids carry no number.
                    .partial_filter_expression(doc! { "number": { "$exists": true } })
                    .build(),
            )
            .build();
        self.ledger().create_index(number).await?;
        Ok(())
    }

    /// The filter of a series' records (`number` repeats the index's partial filter, or
    /// MongoDB cannot use it).
    fn series_filter(tenant: &TenantId, series: &str) -> Document {
        doc! { "tenantId": tenant.as_str(), "series": series, "number": { "$exists": true } }
    }

    /// Numbers `batch` (invoices of `tenant`) in the tenant's current series, in order:
    /// each gets the record an earlier try stored for it, or the next number; one
    /// outcome per invoice, in order.
    ///
    /// The first try is optimistic — one round trip: chain on the head `chain`
    /// remembers and insert. Nothing can be lost by it: an invoice that has a record (a
    /// redelivery) or a void, and a number another writer took, make the insert fail on
    /// a unique index, and the next try reads what is stored and chains again.
    pub async fn number(
        &self,
        tenant: &TenantId,
        batch: &[ToNumber],
        chain: &mut Chain,
    ) -> Result<Vec<Numbered>, StoreError> {
        // Without the unique index nothing stops a second record of a number.
        if !*self.indexed.borrow() {
            return Err(StoreError::Unavailable(
                "the ledger's unique indexes are not created yet".into(),
            ));
        }
        let ids: Vec<String> = batch
            .iter()
            .map(|t| record_id(tenant, t.entry.invoice_id))
            .collect();
        let mut answers: Vec<Option<Numbered>> = vec![None; batch.len()];
        for attempt in 0..CHAIN_TRIES {
            let open: Vec<usize> = (0..batch.len()).filter(|&i| answers[i].is_none()).collect();
            if open.is_empty() {
                break;
            }
            let series = self.series(tenant, chain).await?;
            let cached = chain
                .head
                .take()
                .filter(|(s, _)| *s == series && attempt == 0);
            let mut head = match cached {
                Some((_, head)) => head,
                None => {
                    // What is stored decides: earlier records of these invoices, voids,
                    // and the series' real last record.
                    self.settle_existing(&ids, &open, batch, &mut answers)
                        .await?;
                    self.head(tenant, &series).await?
                }
            };
            let open: Vec<usize> = open.into_iter().filter(|&i| answers[i].is_none()).collect();
            if open.is_empty() {
                break;
            }
            let now = Timestamp::now();
            let mut records = Vec::with_capacity(open.len());
            let mut docs = Vec::with_capacity(open.len());
            for &i in &open {
                let record = head.chain(&batch[i].entry, &series, now);
                let mut doc = bson::to_document(&record)
                    .map_err(|e| StoreError::Corrupt(format!("ledger record: {e}")))?;
                doc.insert("_id", ids[i].as_str());
                docs.push(doc);
                records.push((i, record));
            }
            let inserted = self
                .bounded(async {
                    match self.ledger().insert_many(docs).ordered(true).await {
                        Ok(_) => Ok(true),
                        // Another writer took a number (or one of these invoices has a
                        // record or a void): the next try reads what is stored.
                        Err(e) if is_duplicate(&e) => Ok(false),
                        Err(e) => Err(e.into()),
                    }
                })
                .await?;
            if inserted {
                chain.head = Some((series, head));
                for (i, record) in records {
                    answers[i] = Some(Numbered::Record(Box::new(record)));
                }
                break;
            }
        }
        answers
            .into_iter()
            .map(|a| {
                a.ok_or_else(|| {
                    StoreError::Unavailable(format!(
                        "the series of {tenant} stayed contended for {CHAIN_TRIES} tries"
                    ))
                })
            })
            .collect()
    }

    /// The tenant's series, re-read once [`SERIES_TTL`] has passed.
    async fn series(&self, tenant: &TenantId, chain: &mut Chain) -> Result<String, StoreError> {
        if let Some((series, at)) = &chain.series {
            if at.elapsed() < SERIES_TTL {
                return Ok(series.clone());
            }
        }
        let series = self.tenant(tenant).await?.series;
        chain.series = Some((series.clone(), std::time::Instant::now()));
        Ok(series)
    }

    /// Answers the invoices among `open` that have a record (or a void of their
    /// generation) already, and lifts the voids of earlier generations.
    async fn settle_existing(
        &self,
        ids: &[String],
        open: &[usize],
        batch: &[ToNumber],
        answers: &mut [Option<Numbered>],
    ) -> Result<(), StoreError> {
        let wanted: Vec<&str> = open.iter().map(|&i| ids[i].as_str()).collect();
        let found = self
            .bounded(async {
                let docs: Vec<Document> = self
                    .ledger()
                    .find(doc! { "_id": { "$in": wanted } })
                    .await?
                    .try_collect()
                    .await?;
                Ok(docs)
            })
            .await?;
        for doc in found {
            let Ok(id) = doc.get_str("_id").map(str::to_owned) else {
                continue;
            };
            let Some(i) = open.iter().copied().find(|&i| ids[i] == id) else {
                continue;
            };
            match decode(doc)? {
                Stored::Record(r) => answers[i] = Some(Numbered::Record(r)),
                Stored::Void { generation } if generation >= batch[i].generation => {
                    answers[i] = Some(Numbered::Void);
                }
                // An earlier generation gave up; this one (a replay) may be numbered.
                Stored::Void { generation } => {
                    self.bounded(async {
                        self.ledger()
                            .delete_one(
                                doc! { "_id": id, "void": true, "replays": i64::from(generation) },
                            )
                            .await?;
                        Ok(())
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// The last record of a series (the empty head if it has none).
    async fn head(&self, tenant: &TenantId, series: &str) -> Result<Head, StoreError> {
        self.bounded(async {
            let last = self
                .ledger()
                .find_one(Self::series_filter(tenant, series))
                .sort(doc! { "number": -1 })
                .await?;
            match last.map(decode).transpose()? {
                Some(Stored::Record(r)) => Ok(Head::of(&r)),
                _ => Ok(Head::empty()),
            }
        })
        .await
    }

    /// Makes sure `invoice` gets no record in `generation` (it is about to be FAILED),
    /// unless it has one already.
    pub async fn void(
        &self,
        tenant: &TenantId,
        invoice: InvoiceId,
        generation: u32,
    ) -> Result<Voided, StoreError> {
        let id = record_id(tenant, invoice);
        for _ in 0..CHAIN_TRIES {
            let void = doc! {
                "_id": id.as_str(), "tenantId": tenant.as_str(), "invoiceId": invoice.to_string(),
                "void": true, "replays": i64::from(generation),
            };
            let inserted = self
                .bounded(async {
                    match self.ledger().insert_one(void).await {
                        Ok(_) => Ok(true),
                        Err(e) if is_duplicate(&e) => Ok(false),
                        Err(e) => Err(e.into()),
                    }
                })
                .await?;
            if inserted {
                return Ok(Voided::Fenced);
            }
            let existing = self
                .bounded(async { Ok(self.ledger().find_one(doc! { "_id": id.as_str() }).await?) })
                .await?;
            match existing.map(decode).transpose()? {
                Some(Stored::Record(r)) => return Ok(Voided::HasRecord(r)),
                Some(Stored::Void { generation: g }) if g >= generation => {
                    return Ok(Voided::Fenced)
                }
                Some(Stored::Void { generation: g }) => {
                    self.bounded(async {
                        self.ledger()
                            .update_one(
                                doc! { "_id": id.as_str(), "void": true, "replays": i64::from(g) },
                                doc! { "$set": { "replays": i64::from(generation) } },
                            )
                            .await?;
                        Ok(())
                    })
                    .await?;
                }
                // Deleted meanwhile (a replay lifting an older void): insert again.
                None => {}
            }
        }
        Err(StoreError::Unavailable(format!(
            "the ledger entry of {invoice} stayed contended"
        )))
    }

    /// The records of a series from number `from` on, in number order, read as they are
    /// consumed (a series is never loaded whole).
    pub async fn records(
        &self,
        tenant: &TenantId,
        series: &str,
        from: u64,
    ) -> Result<impl Stream<Item = Result<LedgerRecord, StoreError>> + Send + 'static, StoreError>
    {
        let mut filter = Self::series_filter(tenant, series);
        filter.insert(
            "number",
            doc! { "$exists": true, "$gte": i64::try_from(from).unwrap_or(i64::MAX) },
        );
        let cursor = self
            .bounded(async {
                Ok(self
                    .ledger()
                    .find(filter)
                    .sort(doc! { "number": 1 })
                    .batch_size(VERIFY_CHUNK as u32)
                    .await?)
            })
            .await?;
        let timeout = self.op_timeout;
        Ok(futures_util::stream::try_unfold(
            cursor,
            move |mut cursor| async move {
                let next = tokio::time::timeout(timeout, cursor.try_next())
                    .await
                    .map_err(|_| StoreError::Unavailable("the ledger cursor stalled".into()))??;
                match next.map(decode).transpose()? {
                    Some(Stored::Record(r)) => Ok(Some((*r, cursor))),
                    Some(Stored::Void { .. }) => {
                        Err(StoreError::Corrupt("a void in a series".into()))
                    }
                    None => Ok(None),
                }
            },
        ))
    }

    /// Walks a series against its hashes, its links and the stored invoices, and names
    /// the first record that no longer holds.
    pub async fn verify(
        &self,
        tenant: &TenantId,
        series: &str,
    ) -> Result<Verification, StoreError> {
        let mut verifier = Verifier::default();
        let records = self.records(tenant, series, 1).await?;
        let mut chunks = std::pin::pin!(records.try_chunks(VERIFY_CHUNK));
        let mut first_broken = None;
        'walk: while let Some(chunk) = chunks
            .try_next()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
        {
            let ids: Vec<InvoiceId> = chunk.iter().map(|r| r.invoice_id).collect();
            let invoices: HashMap<InvoiceId, domain::Invoice> = self
                .find_many(tenant, &ids)
                .await?
                .into_iter()
                .map(|i| (i.id(), i))
                .collect();
            for record in &chunk {
                // An invoice stored before its COMPLETED event arrived is checked later.
                let stored = invoices
                    .get(&record.invoice_id)
                    .filter(|i| i.state() == domain::InvoiceState::Completed);
                if let Err(b) = verifier.check(record, stored) {
                    first_broken = Some(b);
                    break 'walk;
                }
            }
        }
        if first_broken.is_none() {
            let highest = self.highest_number_on_invoices(tenant, series).await?;
            first_broken = verifier.finish(highest).err();
        }
        Ok(Verification {
            count: verifier.count(),
            last_number: verifier.head().number,
            last_hash: verifier.head().hash.clone(),
            first_broken,
        })
    }
}
