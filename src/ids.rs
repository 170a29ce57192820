//! Salesforce record ids. Every id that reaches a SOQL query, a URL or the ledger passes through
//! [`SalesforceId::parse`], so no caller-supplied text is ever spliced into a query unchecked.
//!
//! Ids are 15-character case-sensitive or 18-character case-insensitive-safe; the 18-character
//! form adds a 3-character checksum over the case of the first 15. [`SalesforceId`] always holds
//! the 18-character form, so both spellings of one record compare equal.

use std::fmt;

/// A validated Salesforce record id, normalised to 18 characters and held inline (ASCII
/// alphanumerics only), so copying one never allocates.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SalesforceId([u8; 18]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a 15- or 18-character Salesforce Id")]
pub struct InvalidId;

const SUFFIX_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

fn checksum(id15: &[u8]) -> [u8; 3] {
    let mut out = [0u8; 3];
    for (chunk_index, chunk) in id15.chunks(5).enumerate() {
        let mut bits = 0usize;
        for (i, c) in chunk.iter().enumerate() {
            if c.is_ascii_uppercase() {
                bits |= 1 << i;
            }
        }
        out[chunk_index] = SUFFIX_ALPHABET[bits];
    }
    out
}

impl SalesforceId {
    /// Accepts a 15- or 18-character alphanumeric id; rejects anything else.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let b = s.as_bytes();
        if !(b.len() == 15 || b.len() == 18) || !b.iter().all(u8::is_ascii_alphanumeric) {
            return Err(InvalidId);
        }
        let sum = checksum(&b[..15]);
        if b.len() == 18 && !b[15..].eq_ignore_ascii_case(&sum) {
            return Err(InvalidId);
        }
        // Keep the case of the first 15, canonical suffix.
        Ok(Self::assemble(&b[..15], sum))
    }

    /// The id whose first 15 characters are `id15` (15 ASCII alphanumerics) and whose suffix
    /// is `sum`, their [`checksum`] (computed once by the caller).
    fn assemble(id15: &[u8], sum: [u8; 3]) -> Self {
        let mut full = [0u8; 18];
        full[..15].copy_from_slice(id15);
        full[15..].copy_from_slice(&sum);
        Self(full)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics are ever stored (`parse`), so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The case-sensitive 15-character form.
    pub fn short(&self) -> &str {
        &self.as_str()[..15]
    }

    /// Builds a valid 18-character id from a 3-character key prefix and a number
    /// (used by the simulator and tests to mint record ids).
    pub fn synthesize(prefix: &str, n: u64) -> Self {
        // Anything but an ASCII alphanumeric in the prefix becomes `0`.
        let mut id15 = [b'0'; 15];
        for (to, from) in id15
            .iter_mut()
            .zip(format!("{prefix:0<3.3}{n:0>12}").bytes())
        {
            if from.is_ascii_alphanumeric() {
                *to = from;
            }
        }
        Self::assemble(&id15, checksum(&id15))
    }
}

impl AsRef<str> for SalesforceId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for SalesforceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SalesforceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SalesforceId({})", self.as_str())
    }
}

impl TryFrom<String> for SalesforceId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SalesforceId> for String {
    fn from(id: SalesforceId) -> Self {
        id.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifteen_and_eighteen_are_equal() {
        let long = SalesforceId::parse("001A0000006Vm9rIAC").expect("18");
        let short = SalesforceId::parse("001A0000006Vm9r").expect("15");
        assert_eq!(long, short);
        assert_eq!(short.as_str(), "001A0000006Vm9rIAC");
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "",
            "abc",
            "001A0000006Vm9rXYZ",
            "001A0000006Vm9'",
            "001A0000006Vm9rIAC1",
        ] {
            assert!(SalesforceId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn synthesized_ids_parse() {
        let id = SalesforceId::synthesize("801", 42);
        assert_eq!(SalesforceId::parse(id.as_str()), Ok(id.clone()));
        assert_eq!(id.as_str().len(), 18);
    }
}
