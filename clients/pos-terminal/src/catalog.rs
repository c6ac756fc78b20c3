//! The terminal's offline copy of its tenant's catalog (contract § Catalog and tenant),
//! and selling from it.
//!
//! `catalog sync` asks `GET /products?since=<the copy's version>` until nothing is newer
//! and stores each page in one SQLite transaction (next to the outbox, in
//! `<POS_TERMINAL_DB>-catalog`), so an interrupted sync resumes where it stopped and the
//! copy is never half a page. `sell` prices each line from the copy and writes name,
//! unitPrice and taxRate into the body: the till charges what it showed, online or not,
//! and the server keeps those values (a line with its own values is not re-priced).

use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog copy {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the server answered {status} to the catalog sync: {body}")]
    Refused { status: u16, body: String },
    #[error("cannot reach the server for the catalog sync: {0}")]
    Network(String),
    #[error("{0}")]
    Sell(String),
}

/// One product as `GET /products` sends it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub unit_price: String,
    pub tax_rate: String,
    pub active: bool,
    pub version: u64,
}

#[derive(Debug, Deserialize)]
struct Page {
    data: Vec<Product>,
    next: u64,
}

/// Where the copy lives, beside the outbox file.
pub fn path_for(outbox: &Path) -> PathBuf {
    let mut p = outbox.as_os_str().to_owned();
    p.push("-catalog");
    PathBuf::from(p)
}

pub struct LocalCatalog {
    conn: Connection,
    path: PathBuf,
}

impl LocalCatalog {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        let path = path.as_ref().to_owned();
        let db = |source| CatalogError::Db {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS products (
                 sku TEXT PRIMARY KEY, name TEXT NOT NULL, unit_price TEXT NOT NULL,
                 tax_rate TEXT NOT NULL, active INTEGER NOT NULL, version INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )
        .map_err(db)?;
        Ok(Self { conn, path })
    }

    fn db(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// The catalog version the copy is complete up to.
    pub fn version(&self) -> Result<u64, CatalogError> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'version'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.db(e))?;
        Ok(v.unwrap_or(0).max(0) as u64)
    }

    /// Stores one page and the version it reaches, atomically.
    pub fn apply(&mut self, products: &[Product], next: u64) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let db = |source| CatalogError::Db {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(db)?;
        for p in products {
            tx.execute(
                "INSERT INTO products (sku, name, unit_price, tax_rate, active, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(sku) DO UPDATE SET name = ?2, unit_price = ?3, tax_rate = ?4,
                     active = ?5, version = ?6 WHERE version < ?6",
                params![
                    p.sku,
                    p.name,
                    p.unit_price,
                    p.tax_rate,
                    p.active,
                    p.version as i64
                ],
            )
            .map_err(db)?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('version', ?1)
             ON CONFLICT(key) DO UPDATE SET value = max(value, ?1)",
            params![next as i64],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// The active product `sku`, if the copy has one.
    pub fn active(&self, sku: &str) -> Result<Option<Product>, CatalogError> {
        self.conn
            .query_row(
                "SELECT sku, name, unit_price, tax_rate, active, version FROM products
                 WHERE sku = ?1 AND active = 1",
                params![sku],
                |r| {
                    Ok(Product {
                        sku: r.get(0)?,
                        name: r.get(1)?,
                        unit_price: r.get(2)?,
                        tax_rate: r.get(3)?,
                        active: r.get(4)?,
                        version: r.get::<_, i64>(5)? as u64,
                    })
                },
            )
            .optional()
            .map_err(|e| self.db(e))
    }

    /// An invoice body for `lines` (sku, quantity), priced from the copy.
    pub fn sell_body(
        &self,
        terminal_id: &str,
        currency: Option<&str>,
        lines: &[(String, String)],
        payments: &[(String, String)],
    ) -> Result<String, CatalogError> {
        let mut items = Vec::new();
        for (sku, quantity) in lines {
            let p = self.active(sku)?.ok_or_else(|| {
                CatalogError::Sell(format!(
                    "sku {sku} is not in the catalog copy (run `pos-terminal catalog sync`)"
                ))
            })?;
            items.push(serde_json::json!({
                "sku": p.sku, "name": p.name, "quantity": quantity,
                "unitPrice": p.unit_price, "taxRate": p.tax_rate,
            }));
        }
        let mut body = serde_json::json!({
            "terminalId": terminal_id,
            "issuedAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "items": items,
            "payments": payments.iter().map(|(method, amount)| serde_json::json!({ "method": method, "amount": amount })).collect::<Vec<_>>(),
        });
        if let Some(c) = currency {
            body["currency"] = c.into();
        }
        Ok(body.to_string())
    }
}

/// Pulls every change since the copy's version; returns (products received, version).
pub async fn sync(
    client: &crate::client::Client,
    catalog: &mut LocalCatalog,
) -> Result<(usize, u64), CatalogError> {
    let mut received = 0;
    loop {
        let since = catalog.version()?;
        let reply = client
            .get_products(since, 500)
            .await
            .map_err(|e| CatalogError::Network(crate::client::error_chain(&e)))?;
        if reply.status != 200 {
            return Err(CatalogError::Refused {
                status: reply.status,
                body: reply.body,
            });
        }
        let page: Page = serde_json::from_str(&reply.body).map_err(|e| CatalogError::Refused {
            status: reply.status,
            body: format!("not a product page ({e})"),
        })?;
        if page.data.is_empty() {
            return Ok((received, since));
        }
        received += page.data.len();
        catalog.apply(&page.data, page.next)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(sku: &str, price: &str, active: bool, version: u64) -> Product {
        Product {
            sku: sku.into(),
            name: format!("{sku} name"),
            unit_price: price.into(),
            tax_rate: "0.10".into(),
            active,
            version,
        }
    }

    #[test]
    fn pages_apply_in_order_and_an_older_copy_never_overwrites_a_newer() {
        let dir = crate::test_support::TempDb::new();
        let mut c = LocalCatalog::open(path_for(&dir.0)).unwrap();
        assert_eq!(c.version().unwrap(), 0);
        c.apply(
            &[product("A", "1.00", true, 1), product("B", "2.00", true, 2)],
            2,
        )
        .unwrap();
        c.apply(&[product("A", "1.50", true, 3)], 3).unwrap();
        // A page replayed late (an interrupted sync) changes nothing.
        c.apply(&[product("A", "1.00", true, 1)], 1).unwrap();
        assert_eq!(c.active("A").unwrap().unwrap().unit_price, "1.50");
        assert_eq!(c.version().unwrap(), 3);
        c.apply(&[product("B", "2.00", false, 4)], 4).unwrap();
        assert!(c.active("B").unwrap().is_none(), "deactivated");
        let body: serde_json::Value = serde_json::from_str(
            &c.sell_body("T1", Some("EUR"), &[("A".into(), "2".into())], &[])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(body["items"][0]["unitPrice"], "1.50");
        assert_eq!(body["items"][0]["name"], "A name");
        assert!(c
            .sell_body("T1", None, &[("B".into(), "1".into())], &[])
            .is_err());
    }
}
