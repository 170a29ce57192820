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
