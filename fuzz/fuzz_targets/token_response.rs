//! The OAuth token endpoint's answer (`parse_token_response`): never panics, whatever the status
//! and body; a session is only ever built from a 2xx answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner::salesforce::auth::parse_token_response;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = u16::from_le_bytes([data[0], data[1]]);
    if let Ok(_session) = parse_token_response(status, &data[2..], 1) {
        assert!((200..300).contains(&status));
    }
});
