//! Property tests of every decoder that reads bytes from Salesforce or WHMCS: none may panic on
//! any input, and the lenient readers must round-trip the values they are meant to accept. The
//! Avro event decoder must round-trip well-formed events and turn everything else (truncated,
//! padded, mutated payloads, bad order ids) into poison; `SalesforceId::parse` accepts exactly
//! the 15/18-character ids. Regressions found by these tests or by `fuzz/` close the file.

use proptest::prelude::*;
use provisioner::{
    error::{Classify, ErrorClass},
    lenient,
    salesforce::{
        auth::parse_token_response,
        rest::{classify, parse_error_body, parse_limit_info, truncate_for_field},
    },
    whmcs::{
        decode_add_order, decode_orders, decode_response,
        error::{MESSAGE_MAX, WhmcsErrorKind},
    },
};
use serde_json::{Value, json};

/// Arbitrary JSON, biased towards the shapes the decoders look at.
fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("result".to_owned()),
        Just("message".to_owned()),
        Just("orderid".to_owned()),
        Just("serviceids".to_owned()),
        Just("invoiceid".to_owned()),
        Just("orders".to_owned()),
        Just("order".to_owned()),
        Just("id".to_owned()),
        Just("lineitems".to_owned()),
        Just("lineitem".to_owned()),
        Just("relid".to_owned()),
        Just("type".to_owned()),
        Just("totalresults".to_owned()),
        Just("errorCode".to_owned()),
        "[a-z]{1,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        Just(json!("success")),
        Just(json!("error")),
        Just(json!("")),
        Just(json!("1,2,x,,3")),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn whmcs_decode_response_never_panics(status in any::<u16>(), body in prop::collection::vec(any::<u8>(), 0..256), action in ".{0,16}") {
        let _ = decode_response(status, &body, &action);
    }

    #[test]
    fn whmcs_decode_response_on_json(status in any::<u16>(), v in arb_json()) {
        let body = serde_json::to_vec(&v).expect("serialize");
        match decode_response(status, &body, "AddOrder") {
            Ok(ok) => {
                let result = ok.get("result").and_then(Value::as_str).map(|r| r.trim().to_ascii_lowercase());
                prop_assert_eq!(result.as_deref(), Some("success"));
                let _ = decode_add_order(&ok);
                let _ = decode_orders(&ok);
            }
            Err(e) => {
                prop_assert!(e.message.chars().count() <= MESSAGE_MAX.max(64));
                let _ = (e.class(), e.code(), e.is_ambiguous(), e.to_string());
            }
        }
        let _ = decode_add_order(&v);
        let _ = decode_orders(&v);
    }

    #[test]
    fn whmcs_error_envelope_is_classified(status in 0u16..500, message in ".{0,2000}") {
        let body = json!({"result": "error", "message": message}).to_string();
        let e = decode_response(status, body.as_bytes(), "GetOrders").expect_err("error envelope");
        let envelope_kind = !matches!(e.kind, WhmcsErrorKind::Http { .. } | WhmcsErrorKind::BadResponse);
        prop_assert!(envelope_kind, "kind {:?}", e.kind);
        prop_assert!(e.class() != ErrorClass::Transient);
        prop_assert!(e.message.chars().count() <= MESSAGE_MAX);
    }

    #[test]
    fn sf_parse_error_body_never_panics(status in any::<u16>(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let e = parse_error_body(status, &body);
        prop_assert_eq!(e.status, status);
        prop_assert!(!e.code.is_empty() && e.code.len() <= 64);
        prop_assert!(e.code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
        prop_assert_eq!(e.class, classify(status, &e.code));
    }

    #[test]
    fn sf_parse_error_body_on_json(status in any::<u16>(), v in arb_json()) {
        let body = serde_json::to_vec(&v).expect("serialize");
        let e = parse_error_body(status, &body);
        prop_assert!(!e.message.is_empty());
        prop_assert_eq!(e.class, classify(status, &e.code));
    }

    #[test]
    fn sf_error_codes_are_kept(status in 400u16..600, code in "[A-Z][A-Z_]{0,40}", message in ".{0,80}") {
        let body = json!([{"message": message, "errorCode": code, "fields": []}]).to_string();
        let e = parse_error_body(status, body.as_bytes());
        prop_assert_eq!(&e.code, &code);
        if status >= 500 {
            prop_assert_eq!(e.class, ErrorClass::Transient);
        }
    }

    #[test]
    fn sf_token_response_never_panics(status in any::<u16>(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_token_response(status, &body, 1);
    }

    #[test]
    fn limit_info_never_panics(header in ".{0,64}") {
        let _ = parse_limit_info(&header);
    }

    #[test]
    fn limit_info_round_trips(used in any::<u64>(), limit in any::<u64>(), bursts in any::<u32>()) {
        prop_assert_eq!(parse_limit_info(&format!("api-usage={used}/{limit}")), Some((used, limit)));
        prop_assert_eq!(
            parse_limit_info(&format!("per-app-api-usage=1/2(appName=x), api-usage={used}/{limit}, api-bursts={bursts}/750")),
            Some((used, limit))
        );
    }

    #[test]
    fn lenient_u64_round_trips(n in any::<u64>()) {
        prop_assert_eq!(lenient::u64_of(&json!(n)), Some(n));
        prop_assert_eq!(lenient::u64_of(&json!(n.to_string())), Some(n));
        prop_assert_eq!(lenient::u64_of(&json!(format!(" {n} "))), Some(n));
        prop_assert_eq!(lenient::string_of(&json!(n)), Some(n.to_string()));
        prop_assert_eq!(lenient::id_list(&json!(format!("{n},{n}"))), vec![n, n]);
    }

    #[test]
    fn lenient_exact_floats_round_trip(n in 0u64..=(1u64 << 53)) {
        let f = n as f64;
        prop_assert_eq!(lenient::u64_of(&json!(f)), Some(n));
        prop_assert_eq!(lenient::string_of(&json!(f)), Some(n.to_string()));
        prop_assert_eq!(lenient::f64_of(&json!(n.to_string())), Some(f));
    }

    #[test]
    fn lenient_readers_never_panic(v in arb_json()) {
        let _ = lenient::u64_of(&v);
        let _ = lenient::f64_of(&v);
        let _ = lenient::string_of(&v);
        let _ = lenient::id_list(&v);
        let _ = lenient::list(Some(&v), "order");
    }

    #[test]
    fn truncation_fits_salesforce_text_255(s in ".{0,400}") {
        let cut = truncate_for_field(&s, 255);
        prop_assert!(s.starts_with(cut));
        prop_assert!(cut.encode_utf16().count() <= 255);
        if s.encode_utf16().count() <= 255 {
            prop_assert_eq!(cut, s.as_str());
        } else {
            // Maximal: the next character would not fit.
            let next = s[cut.len()..].chars().next().expect("longer");
            prop_assert!(cut.encode_utf16().count() + next.len_utf16() > 255);
        }
    }
}

// ── Avro event decoding and Salesforce ids ──────────────────────────────────────────────────

mod event_and_ids {
    use std::sync::LazyLock;

    use apache_avro::Schema;
    use proptest::prelude::*;
    use provisioner::{
        ids::SalesforceId,
        salesforce::event::{EVENT_SCHEMA_JSON, EventFields, EventPayload, Poison, decode, encode},
    };

    static SCHEMA: LazyLock<Schema> =
        LazyLock::new(|| Schema::parse_str(EVENT_SCHEMA_JSON).expect("the event schema parses"));

    /// A 15-character id: 3-character key prefix and 12 alphanumerics of any case.
    fn id15() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]{15}"
    }

    fn payload(order_id: Option<String>) -> impl Strategy<Value = EventPayload> {
        (
            any::<i64>(),
            ".{0,20}",
            proptest::option::of(".{0,40}"),
            proptest::option::of(".{0,40}"),
            proptest::option::of(".{0,80}"),
            proptest::option::of(any::<f64>()),
        )
            .prop_map(
                move |(created, by, idem, corr, req, version)| EventPayload {
                    created_date_ms: created,
                    created_by_id: by,
                    order_id: order_id.clone(),
                    idem_key: idem,
                    correlation_id: corr,
                    requested_by: req,
                    version,
                },
            )
    }

    fn decode_bytes(
        bytes: &[u8],
    ) -> Result<provisioner::salesforce::event::ProvisionRequest, Poison> {
        decode(&SCHEMA, "schema-id", bytes, &EventFields::default())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn event_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(req) = decode_bytes(&bytes) {
                // Whatever decodes carries a valid, normalised id.
                prop_assert_eq!(req.order_id.as_str().len(), 18);
                prop_assert_eq!(SalesforceId::parse(req.order_id.as_str()), Ok(req.order_id.clone()));
            }
        }

        #[test]
        fn event_round_trips(id in id15(), p in payload(None)) {
            let p = EventPayload { order_id: Some(id.clone()), ..p };
            let bytes = encode(&SCHEMA, &p).expect("encode");
            let req = decode_bytes(&bytes).expect("a well-formed event decodes");
            prop_assert_eq!(req.order_id.short(), id.as_str());
            prop_assert_eq!(req.created_date_ms, p.created_date_ms);
            prop_assert_eq!(&req.created_by_id, &p.created_by_id);
            prop_assert_eq!(&req.idem_key, &p.idem_key);
            prop_assert_eq!(&req.correlation_id, &p.correlation_id);
            prop_assert_eq!(&req.requested_by, &p.requested_by);
            // The 18-character spelling decodes to the same request.
            let long = EventPayload { order_id: Some(req.order_id.as_str().to_owned()), ..p };
            let again = decode_bytes(&encode(&SCHEMA, &long).expect("encode")).expect("decode");
            prop_assert_eq!(again.order_id, req.order_id);
        }

        #[test]
        fn truncated_or_padded_events_are_undecodable(id in id15(), p in payload(None), cut in any::<prop::sample::Index>(), extra in prop::collection::vec(any::<u8>(), 1..16)) {
            let p = EventPayload { order_id: Some(id), ..p };
            let bytes = encode(&SCHEMA, &p).expect("encode");
            let short = &bytes[..cut.index(bytes.len())];
            let is_undecodable = matches!(decode_bytes(short), Err(Poison::Undecodable { .. }));
            prop_assert!(is_undecodable);
            let mut long = bytes.clone();
            long.extend_from_slice(&extra);
            let is_undecodable = matches!(decode_bytes(&long), Err(Poison::Undecodable { .. }));
            prop_assert!(is_undecodable);
        }

        #[test]
        fn mutated_events_never_panic(id in id15(), p in payload(None), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
            let mut bytes = encode(&SCHEMA, &EventPayload { order_id: Some(id), ..p }).expect("encode");
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= b;
            }
            let _ = decode_bytes(&bytes);
        }

        #[test]
        fn events_without_a_valid_order_id_are_poison(raw in proptest::option::of(".{0,30}"), p in payload(None)) {
            prop_assume!(raw.as_deref().is_none_or(|s| SalesforceId::parse(s.trim()).is_err()));
            let bytes = encode(&SCHEMA, &EventPayload { order_id: raw.clone(), ..p }).expect("encode");
            match decode_bytes(&bytes) {
                Err(Poison::MissingOrderId(f)) => {
                    prop_assert_eq!(f, "OrderId__c");
                    prop_assert!(raw.as_deref().is_none_or(|s| s.trim().is_empty()));
                }
                Err(Poison::MalformedOrderId { field }) => prop_assert_eq!(field, "OrderId__c"),
                other => prop_assert!(false, "expected poison, got {:?}", other),
            }
        }

        #[test]
        fn salesforce_id_parse_never_panics(s in ".{0,40}") {
            if let Ok(id) = SalesforceId::parse(&s) {
                prop_assert_eq!(id.as_str().len(), 18);
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
                prop_assert_eq!(SalesforceId::parse(id.as_str()), Ok(id.clone()));
                prop_assert_eq!(SalesforceId::parse(id.short()), Ok(id.clone()));
            }
        }

        #[test]
        fn salesforce_ids_normalise_to_18_characters(id in id15()) {
            let parsed = SalesforceId::parse(&id).expect("15 alphanumerics");
            prop_assert_eq!(parsed.short(), id.as_str());
            prop_assert_eq!(&parsed.as_str()[..15], id.as_str());
            // The checksum suffix is case-insensitive.
            let lower = format!("{}{}", id, parsed.as_str()[15..].to_ascii_lowercase());
            prop_assert_eq!(SalesforceId::parse(&lower), Ok(parsed.clone()));
            // Any other suffix is rejected.
            for suffix in ["999", "AA6"] {
                let other = format!("{id}{suffix}");
                prop_assert_eq!(SalesforceId::parse(&other).is_ok(), suffix.eq_ignore_ascii_case(&parsed.as_str()[15..]));
            }
        }

        #[test]
        fn ids_differing_only_in_case_stay_distinct(id in id15(), flip in any::<prop::sample::Index>()) {
            let i = flip.index(15);
            let c = id.as_bytes()[i];
            prop_assume!(c.is_ascii_alphabetic());
            let mut other = id.clone().into_bytes();
            other[i] ^= 0x20;
            let other = String::from_utf8(other).expect("ascii");
            let (a, b) = (SalesforceId::parse(&id).expect("id"), SalesforceId::parse(&other).expect("id"));
            prop_assert!(!a.as_str().eq_ignore_ascii_case(b.as_str()));
        }

        #[test]
        fn non_ids_are_rejected(s in "[a-zA-Z0-9]{0,14}|[a-zA-Z0-9]{16,17}|[a-zA-Z0-9]{19,30}|[a-zA-Z0-9]{0,14}[^a-zA-Z0-9][a-zA-Z0-9]{0,3}") {
            prop_assert!(SalesforceId::parse(&s).is_err());
        }
    }
}

/// Regressions found by the property tests and the fuzz targets.
mod regressions {
    use apache_avro::Schema;
    use provisioner::salesforce::event::{
        EVENT_SCHEMA_JSON, EventFields, EventPayload, Poison, decode, encode,
    };

    fn schema() -> Schema {
        Schema::parse_str(EVENT_SCHEMA_JSON).expect("schema")
    }

    /// apache-avro decodes a datum cut off before a union index as null: an event truncated
    /// right after `OrderId__c` used to be accepted with its other fields silently dropped.
    #[test]
    fn event_cut_after_the_order_id_is_undecodable() {
        let s = schema();
        let p = EventPayload {
            order_id: Some("A00AAaAAAAAaAaA".into()),
            idem_key: Some("idem".into()),
            ..EventPayload::default()
        };
        let bytes = encode(&s, &p).expect("encode");
        assert!(decode(&s, "sid", &bytes, &EventFields::default()).is_ok());
        // [CreatedDate, CreatedById, OrderId__c union + string] = 2 + 2 + 15 bytes.
        for cut in 19..bytes.len() {
            let r = decode(&s, "sid", &bytes[..cut], &EventFields::default());
            assert!(
                matches!(r, Err(Poison::Undecodable { .. })),
                "cut at {cut}: {r:?}"
            );
        }
    }

    /// ... and a string cut short as null: a truncated order id was reported as missing.
    #[test]
    fn event_cut_inside_the_order_id_is_undecodable() {
        let s = schema();
        let bytes = encode(
            &s,
            &EventPayload {
                order_id: Some("A00AAaAAAAAaAaA".into()),
                ..EventPayload::default()
            },
        )
        .expect("encode");
        for cut in 4..19 {
            let r = decode(&s, "sid", &bytes[..cut], &EventFields::default());
            assert!(
                matches!(r, Err(Poison::Undecodable { .. })),
                "cut at {cut}: {r:?}"
            );
        }
    }
}
