//! Avro decoding and validation of `OrderProvisionRequested__e` payloads with the real schema:
//! never panics; whatever is accepted carries a valid, normalised order id and re-encodes to an
//! event that decodes to the same request.
#![no_main]

use std::sync::LazyLock;

use apache_avro::Schema;
use libfuzzer_sys::fuzz_target;
use provisioner::{
    ids::SalesforceId,
    salesforce::event::{EVENT_SCHEMA_JSON, EventFields, EventPayload, decode, encode},
};

static SCHEMA: LazyLock<Schema> =
    LazyLock::new(|| Schema::parse_str(EVENT_SCHEMA_JSON).expect("the event schema parses"));

fuzz_target!(|data: &[u8]| {
    let names = EventFields::default();
    let Ok(req) = decode(&SCHEMA, "fuzz", data, &names) else {
        return;
    };
    assert_eq!(req.order_id.as_str().len(), 18);
    assert_eq!(
        SalesforceId::parse(req.order_id.as_str()).as_ref(),
        Ok(&req.order_id)
    );
    let again = EventPayload {
        created_date_ms: req.created_date_ms,
        created_by_id: req.created_by_id.clone(),
        order_id: Some(req.order_id.to_string()),
        idem_key: req.idem_key.clone(),
        correlation_id: req.correlation_id.clone(),
        requested_by: req.requested_by.clone(),
        version: None,
    };
    let bytes = encode(&SCHEMA, &again).expect("a decoded event re-encodes");
    assert_eq!(decode(&SCHEMA, "fuzz", &bytes, &names).as_ref(), Ok(&req));
});
