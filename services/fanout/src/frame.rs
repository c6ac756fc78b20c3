//! The text frames a terminal receives (contract § WebSocket), serialized once per event
//! and shared by every socket of the tenant.

use axum::extract::ws::Utf8Bytes;
use domain::{Invoice, InvoiceId, InvoiceState, TenantId, TerminalId, Timestamp};
use messaging::feed::LoggedEvent;
use serde::Serialize;

/// One event, ready to send: its seq and terminal (to filter by) plus the JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFrame {
    pub seq: u64,
    pub terminal_id: TerminalId,
    /// `Utf8Bytes` is reference-counted: every socket sends the same bytes.
    pub text: Utf8Bytes,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InvoiceStateFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    tenant_id: &'a TenantId,
    invoice_id: &'a InvoiceId,
    terminal_id: &'a TerminalId,
    state: InvoiceState,
    at: Timestamp,
    invoice: &'a Invoice,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResyncFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    reason: &'a str,
    first_seq: u64,
}

impl EventFrame {
    /// `{"type":"invoice.state","seq",…,"at":<updatedAt>,"invoice":{…}}`.
    pub fn invoice_state(seq: u64, at: Timestamp, invoice: &Invoice) -> Self {
        let frame = InvoiceStateFrame {
            kind: "invoice.state",
            seq,
            tenant_id: invoice.tenant_id(),
            invoice_id: &invoice.id(),
            terminal_id: invoice.terminal_id(),
            state: invoice.state(),
            at,
            invoice,
        };
        Self {
            seq,
            terminal_id: invoice.terminal_id().clone(),
            text: to_text(&frame),
        }
    }

    pub fn from_event(event: &LoggedEvent) -> Self {
        Self::invoice_state(event.seq, event.at, &event.envelope.invoice)
    }
}

/// `{"type":"resync","reason":…,"firstSeq":F}`: the events after the client's `since`
/// are no longer all in the log; what follows starts at `firstSeq`.
pub fn resync(reason: &str, first_seq: u64) -> Utf8Bytes {
    to_text(&ResyncFrame {
        kind: "resync",
        reason,
        first_seq,
    })
}

fn to_text(frame: &impl Serialize) -> Utf8Bytes {
    // Plain data with string keys: serialization cannot fail.
    serde_json::to_string(frame).unwrap_or_default().into()
}

/// `{"type":"catalog.changed","version":n}`: the tenant's catalog changed; a terminal
/// syncs with `GET /products?since=<its version>`.
pub fn catalog_changed(version: u64) -> axum::extract::ws::Utf8Bytes {
    serde_json::json!({ "type": "catalog.changed", "version": version })
        .to_string()
        .into()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An invoice as the pipeline carries it (built from its contract JSON, so the test
    /// needs no money types).
    pub(crate) fn invoice(tenant: &str, terminal: &str, state: InvoiceState) -> Invoice {
        serde_json::from_value(serde_json::json!({
            "id": InvoiceId::generate().to_string(), "tenantId": tenant, "terminalId": terminal,
            "idempotencyKey": null, "state": state, "currency": "EUR", "taxInclusive": false,
            "issuedAt": "2026-11-25T10:00:00Z", "createdAt": "2026-11-25T10:00:00.000Z",
            "updatedAt": "2026-11-25T10:00:00.123Z", "customer": null,
            "items": [{ "sku": "COFFEE-L", "name": "Coffee large", "quantity": "2", "unitPrice": "3.50",
                        "discount": "0.00", "taxRate": "0.10", "net": null, "tax": null, "total": null }],
            "payments": [], "totals": null, "attempts": 0, "error": null
        }))
        .unwrap()
    }

    #[test]
    fn an_invoice_state_frame_has_exactly_the_contract_fields() {
        let invoice = invoice("acme", "T7", InvoiceState::Completed);
        let frame = EventFrame::invoice_state(4711, invoice.updated_at(), &invoice);
        assert_eq!(frame.seq, 4711);
        assert_eq!(frame.terminal_id.as_str(), "T7");
        let json: serde_json::Value = serde_json::from_str(&frame.text).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = [
            "type",
            "seq",
            "tenantId",
            "invoiceId",
            "terminalId",
            "state",
            "at",
            "invoice",
        ];
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(json["type"], "invoice.state");
        assert_eq!(json["seq"], 4711);
        assert_eq!(json["tenantId"], "acme");
        assert_eq!(json["invoiceId"], invoice.id().to_string());
        assert_eq!(json["terminalId"], "T7");
        assert_eq!(json["state"], "COMPLETED");
        assert_eq!(json["at"], "2026-11-25T10:00:00.123Z");
        assert_eq!(
            json["invoice"],
            serde_json::to_value(&invoice).unwrap(),
            "the invoice representation, unchanged"
        );
        assert!(
            frame
                .text
                .starts_with(r#"{"type":"invoice.state","seq":4711,"#),
            "type and seq lead: {}",
            frame.text.as_str()
        );
    }

    #[test]
    fn a_resync_frame_names_the_first_stored_seq() {
        let text = resync("since is older than the retention window", 42);
        assert_eq!(
            text.as_str(),
            r#"{"type":"resync","reason":"since is older than the retention window","firstSeq":42}"#
        );
    }
}
