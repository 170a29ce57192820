//! The Salesforce REST error parser and the `Sforce-Limit-Info` reader: never panic; the error
//! code is always a short upper-case token and the classification follows from status + code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner::salesforce::rest::{classify, parse_error_body, parse_limit_info};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    let body = &data[2..];
    let e = parse_error_body(status, body);
    assert_eq!(e.status, status);
    assert!(
        !e.code.is_empty() && e.code.len() <= 64,
        "code {:?}",
        e.code
    );
    assert!(
        e.code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
        "code {:?}",
        e.code
    );
    assert_eq!(e.class, classify(status, &e.code));
    assert!(!e.message.is_empty());
    if let Ok(header) = std::str::from_utf8(body) {
        let _ = parse_limit_info(header);
    }
});
