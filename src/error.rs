//! How every external failure is classified. Each client (`salesforce`, `whmcs`) maps its own
//! errors to an [`ErrorClass`]; the worker and the subscriber decide what to do from the class
//! alone: retry transient ones with bounded backoff, fail permanent ones with their code, and
//! stop (loudly, never in a hot loop) on config ones.

use serde::Serialize;

/// What a failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Worth retrying with backoff: network errors, timeouts, 5xx, row locks, rate limits.
    Transient,
    /// Retrying the same request cannot succeed: a business or validation error.
    Permanent,
    /// The service is misconfigured (credentials, permissions, endpoints): needs an operator.
    Config,
}

/// Implemented by every client error.
pub trait Classify {
    fn class(&self) -> ErrorClass;
    /// Short, stable error code for Salesforce `Activation_Error_Code__c` and metrics labels.
    fn code(&self) -> String;
}

/// `"<error>: <cause>: <cause>"` like anyhow's `{:#}`, but a cause whose text the previous
/// message already contains is left out: many errors print their source inside their own
/// message, and an operator should read each sentence once.
pub fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !previous.is_empty() && previous.contains(text.as_str()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    out
}

#[cfg(test)]
mod chain_tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("IO error: {0}")]
    struct Wraps(#[source] std::io::Error);

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = anyhow::Error::new(Wraps(io)).context("connecting to Redis (REDIS_URL)");
        assert_eq!(
            format!("{e:#}"),
            "connecting to Redis (REDIS_URL): IO error: connection refused: connection refused"
        );
        assert_eq!(
            chain(&e),
            "connecting to Redis (REDIS_URL): IO error: connection refused"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(chain(&plain), "outer: inner");
    }
}
