//! The `OrderProvisionRequested__e` platform event as the simulated org publishes it: the Avro
//! schema `GetSchema` serves and the binary datum each `ConsumerEvent` carries.
//!
//! The encoder is the simulator's own (serde into apache-avro's value model, resolved against
//! the schema), written apart from the daemon's decoder so that a codec bug on either side shows
//! up in tests instead of cancelling out.

use apache_avro::Schema;
use serde::Serialize;

/// The event's Avro schema: system fields plus nullable custom fields (`["null", T]` unions).
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

/// The field values of one published event. `None` publishes a null (as a Flow that leaves a
/// field empty would).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct EventPayload {
    pub created_date_ms: i64,
    pub created_by_id: String,
    pub order_id: Option<String>,
    pub idem_key: Option<String>,
    pub correlation_id: Option<String>,
    pub requested_by: Option<String>,
    pub version: Option<f64>,
}

/// The record under the platform event's API field names.
#[derive(Serialize)]
struct Record<'a> {
    #[serde(rename = "CreatedDate")]
    created_date: i64,
    #[serde(rename = "CreatedById")]
    created_by_id: &'a str,
    #[serde(rename = "OrderId__c")]
    order_id: Option<&'a str>,
    #[serde(rename = "IdemKey__c")]
    idem_key: Option<&'a str>,
    #[serde(rename = "CorrelationId__c")]
    correlation_id: Option<&'a str>,
    #[serde(rename = "RequestedBy__c")]
    requested_by: Option<&'a str>,
    #[serde(rename = "Version__c")]
    version: Option<f64>,
}

/// Encodes a payload as a raw Avro datum (no container header), as the Pub/Sub API delivers it.
pub fn encode(schema: &Schema, p: &EventPayload) -> apache_avro::AvroResult<Vec<u8>> {
    let value = apache_avro::to_value(Record {
        created_date: p.created_date_ms,
        created_by_id: &p.created_by_id,
        order_id: p.order_id.as_deref(),
        idem_key: p.idem_key.as_deref(),
        correlation_id: p.correlation_id.as_deref(),
        requested_by: p.requested_by.as_deref(),
        version: p.version,
    })?;
    apache_avro::to_avro_datum(schema, value)
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;

    use super::*;

    #[test]
    fn round_trips_through_the_schema() {
        let schema = Schema::parse_str(EVENT_SCHEMA_JSON).expect("schema");
        let p = EventPayload {
            created_date_ms: 1_700_000_000_000,
            created_by_id: "005000000000001AAA".into(),
            order_id: Some("801000000000001AAA".into()),
            idem_key: None,
            correlation_id: Some("c-1".into()),
            requested_by: None,
            version: Some(1.0),
        };
        let bytes = encode(&schema, &p).expect("encode");
        let back = apache_avro::from_avro_datum(&schema, &mut &bytes[..], None).expect("decode");
        let Value::Record(fields) = back else {
            panic!("not a record: {back:?}");
        };
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("CreatedDate"), Some(Value::Long(1_700_000_000_000)));
        assert_eq!(
            get("OrderId__c"),
            Some(Value::Union(
                1,
                Box::new(Value::String("801000000000001AAA".into()))
            ))
        );
        assert_eq!(
            get("IdemKey__c"),
            Some(Value::Union(0, Box::new(Value::Null)))
        );
        assert_eq!(
            get("Version__c"),
            Some(Value::Union(1, Box::new(Value::Double(1.0))))
        );
    }
}
