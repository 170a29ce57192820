//! The `OrderProvisionRequested__e` platform event: its Avro schema, encoding (used by the
//! simulator, as Salesforce would) and validating decode (used by the subscriber).
//!
//! Invariants: decoding never panics on hostile bytes; an event that cannot be decoded or lacks
//! a well-formed `OrderId__c` is a [`Poison`] with a reason, never a partially filled request.

use apache_avro::{Schema, types::Value};

use crate::ids::SalesforceId;

/// Largest allocation the Avro decoder may make for one value (platform events are ≤ 1 MB).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Avro schema of the platform event as Salesforce publishes it: system fields plus nullable
/// custom fields (`["null", T]` unions).
pub const EVENT_SCHEMA_JSON: &str = r#"{
  "name": "OrderProvisionRequested__e",
  "namespace": "com.sforce.eventbus",
  "doc": "65.0",
  "type": "record",
  "fields": [
    {"name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime"},
    {"name": "CreatedById", "type": "string", "doc": "CreatedBy:EntityId"},
    {"name": "OrderId__c", "type": ["null", "string"], "doc": "Data:Text:18", "default": null},
    {"name": "IdemKey__c", "type": ["null", "string"], "doc": "Data:Text", "default": null},
    {"name": "CorrelationId__c", "type": ["null", "string"], "doc": "Data:Text", "default": null},
    {"name": "RequestedBy__c", "type": ["null", "string"], "doc": "Data:Text:80", "default": null},
    {"name": "Version__c", "type": ["null", "double"], "doc": "Data:Double", "default": null}
  ]
}"#;

/// API names of the event's custom fields (configurable; defaults match the contract).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct EventFields {
    pub order_id: String,
    pub idem_key: String,
    pub correlation_id: String,
    pub requested_by: String,
}

impl Default for EventFields {
    fn default() -> Self {
        Self {
            order_id: "OrderId__c".into(),
            idem_key: "IdemKey__c".into(),
            correlation_id: "CorrelationId__c".into(),
            requested_by: "RequestedBy__c".into(),
        }
    }
}

/// A decoded, validated provisioning request.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionRequest {
    pub order_id: SalesforceId,
    pub idem_key: Option<String>,
    pub correlation_id: Option<String>,
    pub requested_by: Option<String>,
    /// Event `CreatedDate`, epoch milliseconds.
    pub created_date_ms: i64,
    pub created_by_id: String,
}

/// The raw field values an event carries, before validation. The simulator encodes these.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventPayload {
    pub created_date_ms: i64,
    pub created_by_id: String,
    pub order_id: Option<String>,
    pub idem_key: Option<String>,
    pub correlation_id: Option<String>,
    pub requested_by: Option<String>,
    pub version: Option<f64>,
}

/// Why an event was skipped as poison.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("payload is not a valid Avro datum for schema {schema_id}: {detail}")]
    Undecodable { schema_id: String, detail: String },
    #[error("schema {0} is unknown to the Pub/Sub API")]
    UnknownSchema(String),
    #[error("schema {0} is not an Avro record schema")]
    BadSchema(String),
    #[error("field {0} is missing or null")]
    MissingOrderId(String),
    #[error("field {field} is not a 15/18-character Salesforce Id")]
    MalformedOrderId { field: String },
}

impl Poison {
    /// Short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Poison::Undecodable { .. } => "undecodable",
            Poison::UnknownSchema(_) => "unknown_schema",
            Poison::BadSchema(_) => "bad_schema",
            Poison::MissingOrderId(_) => "missing_order_id",
            Poison::MalformedOrderId { .. } => "malformed_order_id",
        }
    }
}

fn opt_string(v: &Option<String>) -> Value {
    match v {
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

/// Encodes a payload as a raw Avro datum (no container header), as the Pub/Sub API delivers it.
pub fn encode(schema: &Schema, p: &EventPayload) -> apache_avro::AvroResult<Vec<u8>> {
    let record = Value::Record(vec![
        ("CreatedDate".into(), Value::Long(p.created_date_ms)),
        ("CreatedById".into(), Value::String(p.created_by_id.clone())),
        ("OrderId__c".into(), opt_string(&p.order_id)),
        ("IdemKey__c".into(), opt_string(&p.idem_key)),
        ("CorrelationId__c".into(), opt_string(&p.correlation_id)),
        ("RequestedBy__c".into(), opt_string(&p.requested_by)),
        (
            "Version__c".into(),
            match p.version {
                Some(v) => Value::Union(1, Box::new(Value::Double(v))),
                None => Value::Union(0, Box::new(Value::Null)),
            },
        ),
    ]);
    apache_avro::to_avro_datum(schema, record)
}

fn field<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

fn as_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Union(_, inner) => as_string(Some(inner)),
        _ => None,
    }
}

fn as_long(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Long(n) => Some(*n),
        Value::Int(n) => Some(i64::from(*n)),
        Value::TimestampMillis(n) => Some(*n),
        Value::Union(_, inner) => as_long(Some(inner)),
        _ => None,
    }
}

/// Whether `value` holds a null where `schema` has no null type.
fn null_where_schema_has_none(value: &Value, schema: &Schema) -> bool {
    match (value, schema) {
        (Value::Null, Schema::Null) => false,
        (Value::Null, _) => true,
        (Value::Union(i, inner), Schema::Union(u)) => u
            .variants()
            .get(*i as usize)
            .is_none_or(|s| null_where_schema_has_none(inner, s)),
        (Value::Record(fields), Schema::Record(r)) => fields
            .iter()
            .zip(&r.fields)
            .any(|((_, v), f)| null_where_schema_has_none(v, &f.schema)),
        (Value::Array(items), Schema::Array(a)) => items
            .iter()
            .any(|v| null_where_schema_has_none(v, &a.items)),
        (Value::Map(m), Schema::Map(t)) => {
            m.values().any(|v| null_where_schema_has_none(v, &t.types))
        }
        _ => false,
    }
}

/// Decodes one event payload with its writer schema and validates the order id.
pub fn decode(
    schema: &Schema,
    schema_id: &str,
    payload: &[u8],
    names: &EventFields,
) -> Result<ProvisionRequest, Poison> {
    let mut reader = payload;
    let value = apache_avro::from_avro_datum(schema, &mut reader, None).map_err(|e| {
        Poison::Undecodable {
            schema_id: schema_id.to_owned(),
            detail: e.to_string(),
        }
    })?;
    if !reader.is_empty() {
        return Err(Poison::Undecodable {
            schema_id: schema_id.to_owned(),
            detail: format!("{} trailing bytes", reader.len()),
        });
    }
    // apache-avro reads a datum that ends early inside a string or boolean as null, and right
    // before a union's index as the union's first variant, instead of failing; a cut-off payload
    // would pass with fields missing. The first shows as a null the schema does not allow, the
    // second because a genuine datum never re-encodes to more bytes than it was read from (only
    // overlong varints or extra blocks make an encoding longer than the canonical one).
    // The null check runs first: apache-avro logs a value it cannot validate at error level.
    let cut_off = null_where_schema_has_none(&value, schema)
        || !apache_avro::to_avro_datum(schema, value.clone())
            .is_ok_and(|canonical| canonical.len() <= payload.len());
    if cut_off {
        return Err(Poison::Undecodable {
            schema_id: schema_id.to_owned(),
            detail: "payload ends before the datum does".into(),
        });
    }
    let Value::Record(fields) = value else {
        return Err(Poison::BadSchema(schema_id.to_owned()));
    };
    let raw_id = as_string(field(&fields, &names.order_id))
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| Poison::MissingOrderId(names.order_id.clone()))?;
    let order_id = SalesforceId::parse(raw_id.trim()).map_err(|_| Poison::MalformedOrderId {
        field: names.order_id.clone(),
    })?;
    Ok(ProvisionRequest {
        order_id,
        idem_key: as_string(field(&fields, &names.idem_key)),
        correlation_id: as_string(field(&fields, &names.correlation_id)),
        requested_by: as_string(field(&fields, &names.requested_by)),
        created_date_ms: as_long(field(&fields, "CreatedDate")).unwrap_or_default(),
        created_by_id: as_string(field(&fields, "CreatedById")).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::parse_str(EVENT_SCHEMA_JSON).expect("schema")
    }

    #[test]
    fn round_trip() {
        let s = schema();
        let p = EventPayload {
            created_date_ms: 1_700_000_000_000,
            created_by_id: "005000000000001AAA".into(),
            order_id: Some("801000000000001AAA".into()),
            idem_key: Some("k1".into()),
            correlation_id: Some("c1".into()),
            requested_by: None,
            version: Some(1.0),
        };
        let bytes = encode(&s, &p).expect("encode");
        let r = decode(&s, "sid", &bytes, &EventFields::default()).expect("decode");
        assert_eq!(r.order_id.as_str(), "801000000000001AAA");
        assert_eq!(r.idem_key.as_deref(), Some("k1"));
        assert_eq!(r.created_date_ms, 1_700_000_000_000);
    }

    #[test]
    fn poison_kinds() {
        let s = schema();
        let names = EventFields::default();
        assert!(matches!(
            decode(&s, "sid", &[0xff, 0xff, 0xff], &names),
            Err(Poison::Undecodable { .. })
        ));
        let missing = encode(&s, &EventPayload::default()).expect("encode");
        assert_eq!(
            decode(&s, "sid", &missing, &names),
            Err(Poison::MissingOrderId("OrderId__c".into()))
        );
        let bad = encode(
            &s,
            &EventPayload {
                order_id: Some("801'; DROP".into()),
                ..Default::default()
            },
        )
        .expect("encode");
        assert!(matches!(
            decode(&s, "sid", &bad, &names),
            Err(Poison::MalformedOrderId { .. })
        ));
    }
}
