//! `SalesforceId::parse`, the gate every id passes before it reaches a query, a URL or the
//! ledger: never panics; accepts exactly 15/18 alphanumerics; the result is the 18-character
//! form, stable under re-parsing of either spelling.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner::ids::SalesforceId;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match SalesforceId::parse(s) {
        Ok(id) => {
            assert!(s.len() == 15 || s.len() == 18);
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(id.as_str().len(), 18);
            assert_eq!(&id.as_str()[..15], &s[..15]);
            assert_eq!(SalesforceId::parse(id.as_str()).as_ref(), Ok(&id));
            assert_eq!(SalesforceId::parse(id.short()).as_ref(), Ok(&id));
        }
        Err(_) => {
            assert!(
                !(s.len() == 15 && s.bytes().all(|b| b.is_ascii_alphanumeric())),
                "a 15-character alphanumeric id was rejected: {s:?}"
            );
        }
    }
});
