//! Record ids as the simulated org mints and accepts them.
//!
//! The simulator checks ids the way Salesforce does, independently of the daemon's own parser:
//! 15 case-sensitive alphanumerics, or 18 with a 3-character suffix that encodes, for each
//! 5-character chunk, which letters are upper case. A [`RecordId`] always holds the 18-character
//! spelling, so both spellings of one record find the same record.

use std::fmt;

/// A record id of the simulated org (18-character form).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RecordId(String);

/// Not a 15- or 18-character record id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a 15- or 18-character Salesforce id")]
pub struct BadId;

/// The 3-character case suffix of a 15-character id.
fn case_suffix(id15: &str) -> String {
    id15.as_bytes()
        .chunks(5)
        .map(|chunk| {
            let mask = chunk
                .iter()
                .rev()
                .fold(0u8, |m, c| (m << 1) | u8::from(c.is_ascii_uppercase()));
            char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"[usize::from(mask)])
        })
        .collect()
}

impl RecordId {
    /// Accepts either spelling of an id; the 18-character one must carry the right suffix.
    pub fn parse(s: &str) -> Result<Self, BadId> {
        if !matches!(s.len(), 15 | 18) || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(BadId);
        }
        let suffix = case_suffix(&s[..15]);
        if s.len() == 18 && !s[15..].eq_ignore_ascii_case(&suffix) {
            return Err(BadId);
        }
        Ok(Self(format!("{}{suffix}", &s[..15])))
    }

    /// Mints the `n`th id of an object with the given 3-character key prefix.
    pub fn mint(prefix: &str, n: u64) -> Self {
        let body: String = format!("{prefix:0<3.3}{n:0>12}").chars().take(15).collect();
        let suffix = case_suffix(&body);
        Self(body + &suffix)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-sensitive 15-character spelling.
    pub fn short(&self) -> &str {
        &self.0[..15]
    }
}

impl AsRef<str> for RecordId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({})", self.0)
    }
}

impl TryFrom<String> for RecordId {
    type Error = BadId;
    fn try_from(s: String) -> Result<Self, BadId> {
        Self::parse(&s)
    }
}

impl From<RecordId> for String {
    fn from(id: RecordId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_are_one_record() {
        let long = RecordId::parse("001A0000006Vm9rIAC").expect("18");
        let short = RecordId::parse("001A0000006Vm9r").expect("15");
        assert_eq!(long, short);
        assert!(RecordId::parse("001A0000006Vm9rXYZ").is_err());
        assert!(RecordId::parse("001A0000006Vm9'").is_err());
    }

    #[test]
    fn minted_ids_parse() {
        let id = RecordId::mint("801", 42);
        assert_eq!(id.as_str(), "801000000000042AAA");
        assert_eq!(RecordId::parse(id.as_str()), Ok(id));
    }
}
