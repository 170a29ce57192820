//! Lenient readers for JSON produced by PHP (WHMCS) and by Salesforce text/number fields.
//!
//! Hand-written because PHP's JSON (WHMCS) breaks serde's typing rules in ways no crate models:
//! the same field is a number, a string or `""` depending on the row.
//!
//! Owns the "numbers may be strings, empty lists may be `""`, lists may be a lone object" rules
//! shared by both HTTP clients, so each client decodes its responses the same way.
//!
//! Invariants: every function is total (never panics, whatever the input) and returns `None` /
//! an empty result instead of guessing; an integer written as a number or as a decimal string
//! reads back as the same `u64` ([`u64_of`]), which the property tests check.

use serde_json::Value;

/// A non-negative integer from a JSON number (`7`, `7.0`) or a string (`"7"`, `" 7 "`, `"7.0"`).
/// Anything else (negative, fractional, empty, non-numeric, out of range) is `None`.
pub fn u64_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().and_then(f64_to_u64)),
        Value::String(s) => str_to_u64(s),
        _ => None,
    }
}

/// [`u64_of`] for text: `"42"`, `" 42 "`, `"42.0"`.
pub fn str_to_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.parse::<u64>()
        .ok()
        .or_else(|| s.parse::<f64>().ok().and_then(f64_to_u64))
}

/// An `f64` that is an exact non-negative integer small enough to be represented exactly.
fn f64_to_u64(f: f64) -> Option<u64> {
    // 2^53: above it not every integer is representable, so the value may already be rounded.
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0;
    if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= MAX_EXACT {
        // The checks above make the cast exact.
        Some(f as u64)
    } else {
        None
    }
}

/// A finite number from a JSON number or a numeric string.
pub fn f64_of(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    f.is_finite().then_some(f)
}

/// Text from a string or a number (Salesforce may return a WHMCS id kept in a Number field as
/// `42.0`, which reads as `"42"`). Empty or whitespace-only strings and `null` are `None`.
pub fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            let t = s.trim();
            (!t.is_empty()).then(|| t.to_owned())
        }
        Value::Number(n) if n.is_f64() => Some(
            n.as_f64()
                .and_then(f64_to_u64)
                .map_or_else(|| n.to_string(), |i| i.to_string()),
        ),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The items of a PHP-style list `{"<item>": [...]}`. Also accepts `""`, `null`, `{}`, a missing
/// key, or a lone object where a one-element array was expected.
pub fn list<'a>(v: Option<&'a Value>, item: &str) -> &'a [Value] {
    match v.and_then(|w| w.get(item)) {
        Some(Value::Array(items)) => items,
        Some(one @ Value::Object(_)) => std::slice::from_ref(one),
        _ => &[],
    }
}

/// Ids from a comma-separated string (`"1,2"`), a single number, or an array of either.
/// Empty and non-numeric parts are skipped.
pub fn id_list(v: &Value) -> Vec<u64> {
    match v {
        Value::String(s) => s.split(',').filter_map(str_to_u64).collect(),
        Value::Array(items) => items.iter().filter_map(u64_of).collect(),
        other => u64_of(other).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_as_numbers_or_strings() {
        assert_eq!(u64_of(&json!(7)), Some(7));
        assert_eq!(u64_of(&json!("7")), Some(7));
        assert_eq!(u64_of(&json!(" 7 ")), Some(7));
        assert_eq!(u64_of(&json!(7.0)), Some(7));
        assert_eq!(u64_of(&json!("7.0")), Some(7));
        assert_eq!(u64_of(&json!(u64::MAX)), Some(u64::MAX));
        for bad in [
            json!(-1),
            json!(1.5),
            json!(""),
            json!("x"),
            json!(null),
            json!([]),
            json!("1e400"),
        ] {
            assert_eq!(u64_of(&bad), None, "{bad}");
        }
    }

    #[test]
    fn strings_from_numbers() {
        assert_eq!(string_of(&json!(42.0)).as_deref(), Some("42"));
        assert_eq!(string_of(&json!(42)).as_deref(), Some("42"));
        assert_eq!(string_of(&json!(4.5)).as_deref(), Some("4.5"));
        assert_eq!(string_of(&json!(" 42 ")).as_deref(), Some("42"));
        assert_eq!(string_of(&json!("")), None);
        assert_eq!(string_of(&json!(null)), None);
    }

    #[test]
    fn php_lists() {
        let orders = json!({"order": [{"id": 1}, {"id": 2}]});
        assert_eq!(list(Some(&orders), "order").len(), 2);
        assert_eq!(list(Some(&json!("")), "order").len(), 0);
        assert_eq!(list(Some(&json!({"order": {"id": 1}})), "order").len(), 1);
        assert_eq!(list(None, "order").len(), 0);
        assert_eq!(list(Some(&json!({"order": ""})), "order").len(), 0);
    }

    #[test]
    fn id_lists() {
        assert_eq!(id_list(&json!("1,2, 3")), vec![1, 2, 3]);
        assert_eq!(id_list(&json!("")), Vec::<u64>::new());
        assert_eq!(id_list(&json!(5)), vec![5]);
        assert_eq!(id_list(&json!(["5", 6])), vec![5, 6]);
        assert_eq!(id_list(&json!(null)), Vec::<u64>::new());
    }
}
