//! Property tests of every decoder that reads bytes from Salesforce or WHMCS: none may panic on
//! any input, and the lenient readers must round-trip the values they are meant to accept.

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
