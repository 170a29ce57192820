//! The WHMCS response decoder (`decode_response`, then `decode_add_order` / `decode_orders`):
//! never panics on any status and body; a success always carries `result = success`, an error
//! message stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner::whmcs::{decode_add_order, decode_orders, decode_response};
use serde_json::Value;

const ACTIONS: [&str; 4] = ["AddOrder", "AcceptOrder", "GetOrders", "GetClientsDetails"];

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    let action = ACTIONS[usize::from(data[2]) % ACTIONS.len()];
    let body = &data[3..];
    match decode_response(status, body, action) {
        Ok(v) => {
            let result = v
                .get("result")
                .and_then(Value::as_str)
                .map(|r| r.trim().to_ascii_lowercase());
            assert_eq!(result.as_deref(), Some("success"));
            let _ = decode_add_order(&v);
            let _ = decode_orders(&v);
        }
        Err(e) => {
            assert!(e.message.chars().count() <= 2000, "unbounded error message");
            let _ = e.to_string();
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(r) = decode_add_order(&v) {
            assert!(r.order_id > 0);
        }
        let _ = decode_orders(&v);
    }
});
