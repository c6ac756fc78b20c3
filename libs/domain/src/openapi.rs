//! JSON Schemas of the scalar types (ids, timestamps, currency) for the OpenAPI document
//! ingress generates (feature `openapi`). The structs derive theirs next to their
//! definition; these types serialize as strings through hand-written serde impls, so
//! their schema is written here, next to nothing else.

use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{KnownFormat, RefOr};

fn string(description: &str, format: Option<SchemaFormat>, max: Option<usize>) -> RefOr<Schema> {
    let mut b = ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(1));
    if let Some(f) = format {
        b = b.format(Some(f));
    }
    b = b.max_length(max);
    RefOr::T(Schema::Object(b.build()))
}

macro_rules! string_schema {
    ($t:ty, $description:expr, $format:expr, $max:expr) => {
        impl utoipa::PartialSchema for $t {
            fn schema() -> RefOr<Schema> {
                string($description, $format, $max)
            }
        }
        impl utoipa::ToSchema for $t {}
    };
}

string_schema!(
    crate::InvoiceId,
    "UUIDv7 (time-ordered)",
    Some(SchemaFormat::Custom("uuid".into())),
    None
);
string_schema!(
    crate::TenantId,
    "tenant id: A-Z a-z 0-9 _ -",
    None,
    Some(crate::TenantId::MAX_LEN)
);
string_schema!(
    crate::TerminalId,
    "the terminal's own id",
    None,
    Some(crate::TerminalId::MAX_LEN)
);
string_schema!(
    crate::IdempotencyKey,
    "the client's idempotency key: A-Z a-z 0-9 . _ : -",
    None,
    Some(crate::IdempotencyKey::MAX_LEN)
);
string_schema!(
    crate::Timestamp,
    "RFC 3339, UTC, milliseconds",
    Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)),
    None
);
string_schema!(
    crate::IssuedAt,
    "RFC 3339, the terminal's clock, kept exactly as sent",
    Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)),
    None
);
impl utoipa::PartialSchema for crate::Currency {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("ISO 4217 alpha code"))
            .enum_values(Some(crate::Currency::codes()))
            .into()
    }
}
impl utoipa::ToSchema for crate::Currency {}
