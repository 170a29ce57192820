//! How WHMCS API failures are decoded and classified.
//!
//! WHMCS answers every call with the JSON envelope `{"result":"success"|"error","message":…}`,
//! business errors with HTTP 200 and middleware (auth, IP, permission) failures with 403/400, so
//! the body decides, never the status alone. Classification follows the research notes
//! (`specs/whmcs-and-salesforce-rest.md` A.4): credential/permission/IP failures are
//! [`ErrorClass::Config`] and must never be retried (each retry counts as a failed admin login
//! and can get our IP banned); business errors are [`ErrorClass::Permanent`]; infrastructure
//! failures are [`ErrorClass::Transient`].
//!
//! Invariants: [`decode_response`] never panics on any input; messages are capped at
//! [`MESSAGE_MAX`] characters; an error never carries the request body (which holds the secret).
//! [`WhmcsError::is_ambiguous`] is true whenever WHMCS may have acted on a request whose outcome
//! we did not learn (the caller must reconcile before repeating an `AddOrder`).

use std::fmt;

use serde_json::Value;

use crate::error::{Classify, ErrorClass};

/// Longest message kept from a WHMCS answer, in characters.
pub const MESSAGE_MAX: usize = 1000;

/// What went wrong, as far as the daemon cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhmcsErrorKind {
    /// Credentials, IP restriction, access key, disabled or banned admin (`WHMCS_AUTH`).
    Auth,
    /// The API role lacks the action, or the admin lacks API access (`WHMCS_PERMISSION`).
    Permission,
    /// Unknown or empty action: a bug or a WHMCS version mismatch (`WHMCS_INVALID_ACTION`).
    InvalidAction,
    /// `paymentmethod` is not an active gateway (`WHMCS_PAYMENT_METHOD`).
    PaymentMethod,
    /// The WHMCS client id does not exist (`WHMCS_CLIENT_NOT_FOUND`).
    ClientNotFound,
    /// Nothing orderable (bad pid or no available billing cycle) (`WHMCS_NO_ITEMS`).
    NoItems,
    /// AcceptOrder on an order that is not Pending (already accepted, cancelled, or unknown):
    /// check `GetOrders(id)` (`WHMCS_NOT_PENDING`).
    NotPending,
    /// Any other `result=error` (module/registrar failure text, validation) (`WHMCS_ERROR`).
    Api,
    /// An HTTP error status without a WHMCS envelope (proxy, PHP fatal) (`WHMCS_HTTP`).
    Http { status: u16 },
    /// A body that is not a WHMCS envelope, or lacks a field we need (`WHMCS_BAD_RESPONSE`).
    BadResponse,
    /// No connection could be made; the request was not sent (`WHMCS_CONNECT`).
    Connect,
    /// The request timed out after it was sent (`WHMCS_TIMEOUT`); outcome unknown.
    Timeout,
    /// The connection broke after the request was sent (`WHMCS_CONNECTION_LOST`); outcome
    /// unknown.
    ConnectionLost,
}

/// A failed WHMCS call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct WhmcsError {
    /// The API action, e.g. `AddOrder`.
    pub action: String,
    pub kind: WhmcsErrorKind,
    /// WHMCS's message, or a description of the transport failure.
    pub message: String,
}

impl fmt::Display for WhmcsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WHMCS {} failed ({}): {}",
            self.action,
            self.code(),
            self.message
        )
    }
}

impl WhmcsError {
    /// Whether WHMCS may still be running the call: the daemon stopped waiting (timeout), the
    /// connection broke after the request was sent, or a gateway in front of WHMCS answered for
    /// it (502, 504, Cloudflare's 524). Any other failure is WHMCS's own, final answer, or a
    /// request that was never sent.
    pub fn may_still_run(&self) -> bool {
        matches!(
            self.kind,
            WhmcsErrorKind::Timeout
                | WhmcsErrorKind::ConnectionLost
                | WhmcsErrorKind::Http {
                    status: 502 | 504 | 524
                }
        )
    }

    pub fn new(action: &str, kind: WhmcsErrorKind, message: impl Into<String>) -> Self {
        Self {
            action: action.to_owned(),
            kind,
            message: message.into(),
        }
    }

    /// True when WHMCS may have carried out the request although we saw no success: timeouts
    /// and broken connections always, and for `AddOrder` also 5xx answers and unreadable bodies
    /// (a PHP fatal after the order was inserted). Reconcile with `GetOrders` before retrying.
    pub fn is_ambiguous(&self) -> bool {
        match self.kind {
            WhmcsErrorKind::Timeout | WhmcsErrorKind::ConnectionLost => true,
            WhmcsErrorKind::Http { status } => status >= 500 && self.is_add_order(),
            WhmcsErrorKind::BadResponse => self.is_add_order(),
            _ => false,
        }
    }

    /// What this failure tells the WHMCS breaker: credentials rejected, an outage, or an
    /// answer (business and validation errors: WHMCS is up).
    pub fn breaker_result(&self) -> crate::deps::CallResult {
        use WhmcsErrorKind::*;
        match self.kind {
            Auth => crate::deps::CallResult::AuthFailed(self.to_string()),
            Connect | Timeout | ConnectionLost | BadResponse => {
                crate::deps::CallResult::Outage(self.to_string())
            }
            Http { status } if status >= 500 || status == 429 || status == 408 => {
                crate::deps::CallResult::Outage(self.to_string())
            }
            _ => crate::deps::CallResult::Answered,
        }
    }

    fn is_add_order(&self) -> bool {
        self.action.eq_ignore_ascii_case("AddOrder")
    }

    /// Replaces every occurrence of `secret` in the message (defence in depth: WHMCS should
    /// never echo credentials, but a proxy error page might).
    pub(crate) fn scrub(&mut self, secret: &str) {
        if secret.len() >= 4 && self.message.contains(secret) {
            self.message = self.message.replace(secret, "[REDACTED]");
        }
    }
}

impl Classify for WhmcsError {
    fn class(&self) -> ErrorClass {
        use WhmcsErrorKind::*;
        match self.kind {
            Auth | Permission | InvalidAction | PaymentMethod => ErrorClass::Config,
            ClientNotFound | NoItems | NotPending | Api => ErrorClass::Permanent,
            // A missing endpoint is a wrong WHMCS_API_URL, not a passing fault.
            Http { status: 404 | 405 } => ErrorClass::Config,
            Http { .. } | BadResponse | Connect | Timeout | ConnectionLost => ErrorClass::Transient,
        }
    }

    fn code(&self) -> String {
        use WhmcsErrorKind::*;
        match self.kind {
            Auth => "WHMCS_AUTH",
            Permission => "WHMCS_PERMISSION",
            InvalidAction => "WHMCS_INVALID_ACTION",
            PaymentMethod => "WHMCS_PAYMENT_METHOD",
            ClientNotFound => "WHMCS_CLIENT_NOT_FOUND",
            NoItems => "WHMCS_NO_ITEMS",
            NotPending => "WHMCS_NOT_PENDING",
            Api => "WHMCS_ERROR",
            Http { .. } => "WHMCS_HTTP",
            BadResponse => "WHMCS_BAD_RESPONSE",
            Connect => "WHMCS_CONNECT",
            Timeout => "WHMCS_TIMEOUT",
            ConnectionLost => "WHMCS_CONNECTION_LOST",
        }
        .to_owned()
    }
}

/// Message prefixes (case-insensitive) and what they mean.
const KNOWN_MESSAGES: &[(&str, WhmcsErrorKind)] = &[
    ("Authentication Failed", WhmcsErrorKind::Auth),
    ("Invalid or missing credentials", WhmcsErrorKind::Auth),
    ("Invalid IP", WhmcsErrorKind::Auth),
    ("Invalid Access Key", WhmcsErrorKind::Auth),
    ("Administrator Account Disabled", WhmcsErrorKind::Auth),
    ("Invalid administrative identifier", WhmcsErrorKind::Auth),
    ("Invalid password provided", WhmcsErrorKind::Auth),
    ("IP Banned", WhmcsErrorKind::Auth),
    ("Invalid Permissions", WhmcsErrorKind::Permission),
    ("Access Denied", WhmcsErrorKind::Permission),
    ("Invalid API Action", WhmcsErrorKind::InvalidAction),
    ("Empty action request", WhmcsErrorKind::InvalidAction),
    ("Command Not Found", WhmcsErrorKind::InvalidAction),
    ("Invalid Payment Method", WhmcsErrorKind::PaymentMethod),
    ("Client ID Not Found", WhmcsErrorKind::ClientNotFound),
    ("Client Not Found", WhmcsErrorKind::ClientNotFound),
    ("No items added to cart", WhmcsErrorKind::NoItems),
    ("No items remain in the cart", WhmcsErrorKind::NoItems),
    (
        "Order ID not found or Status not Pending",
        WhmcsErrorKind::NotPending,
    ),
];

fn known_kind(message: &str) -> Option<WhmcsErrorKind> {
    KNOWN_MESSAGES.iter().find_map(|(prefix, kind)| {
        message
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
            .then_some(*kind)
    })
}

fn clip(s: &str) -> &str {
    s.char_indices()
        .nth(MESSAGE_MAX)
        .map_or(s, |(i, _)| &s[..i])
}

/// Decodes a WHMCS answer of any HTTP status: the envelope when `result` is `success`, else a
/// classified [`WhmcsError`]. Never panics.
pub fn decode_response(status: u16, body: &[u8], action: &str) -> Result<Value, WhmcsError> {
    // Redirects are not followed (crate::net): a 3xx is an HTTP error like a 4xx.
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        let kind = if status == 401 || status == 403 {
            WhmcsErrorKind::Auth
        } else if status >= 300 {
            WhmcsErrorKind::Http { status }
        } else {
            WhmcsErrorKind::BadResponse
        };
        return Err(WhmcsError::new(
            action,
            kind,
            format!("HTTP {status}, body is not JSON ({} bytes)", body.len()),
        ));
    };
    let result = v.get("result").and_then(Value::as_str).map(str::trim);
    if result.is_some_and(|r| r.eq_ignore_ascii_case("success")) {
        return Ok(v);
    }
    let message = v.get("message").and_then(Value::as_str).map(str::trim);
    if result.is_some_and(|r| r.eq_ignore_ascii_case("error")) {
        let message = message.unwrap_or("");
        let kind = match known_kind(message) {
            Some(kind) => kind,
            None if status >= 500 => WhmcsErrorKind::Http { status },
            None => WhmcsErrorKind::Api,
        };
        let text = if message.is_empty() {
            "WHMCS returned an error without a message"
        } else {
            clip(message)
        };
        return Err(WhmcsError::new(action, kind, text));
    }
    let kind = if status == 401 || status == 403 {
        // The middleware refused us (IP restriction, credentials) without a WHMCS envelope.
        WhmcsErrorKind::Auth
    } else if status >= 300 {
        WhmcsErrorKind::Http { status }
    } else {
        WhmcsErrorKind::BadResponse
    };
    Err(WhmcsError::new(
        action,
        kind,
        format!("HTTP {status}, JSON body without a WHMCS result"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, body: &str, action: &str) -> WhmcsError {
        decode_response(status, body.as_bytes(), action).expect_err(body)
    }

    #[test]
    fn classification_table() {
        use ErrorClass::*;
        let cases: &[(u16, &str, ErrorClass, &str)] = &[
            (403, "Authentication Failed", Config, "WHMCS_AUTH"),
            (403, "Invalid or missing credentials", Config, "WHMCS_AUTH"),
            (403, "Invalid IP 203.0.113.9", Config, "WHMCS_AUTH"),
            (403, "Invalid Access Key", Config, "WHMCS_AUTH"),
            (403, "Administrator Account Disabled", Config, "WHMCS_AUTH"),
            (403, "IP Banned", Config, "WHMCS_AUTH"),
            (
                403,
                r#"Invalid Permissions: API action \"addorder\" is not allowed"#,
                Config,
                "WHMCS_PERMISSION",
            ),
            (403, "Access Denied", Config, "WHMCS_PERMISSION"),
            (
                403,
                r#"Invalid API Action: \"x\" is not a valid API action"#,
                Config,
                "WHMCS_INVALID_ACTION",
            ),
            (400, "Empty action request", Config, "WHMCS_INVALID_ACTION"),
            (
                200,
                "Invalid Payment Method. Valid options include mailin",
                Config,
                "WHMCS_PAYMENT_METHOD",
            ),
            (
                200,
                "Client ID Not Found",
                Permanent,
                "WHMCS_CLIENT_NOT_FOUND",
            ),
            (
                200,
                "No items added to cart so order cannot proceed",
                Permanent,
                "WHMCS_NO_ITEMS",
            ),
            (
                200,
                "No items remain in the cart. Order cannot proceed.",
                Permanent,
                "WHMCS_NO_ITEMS",
            ),
            (
                200,
                "Order ID not found or Status not Pending",
                Permanent,
                "WHMCS_NOT_PENDING",
            ),
            (
                200,
                "Unable to add order when client status is Closed",
                Permanent,
                "WHMCS_ERROR",
            ),
            (
                200,
                "cPanel: Username already taken",
                Permanent,
                "WHMCS_ERROR",
            ),
            (500, "Something exploded", Transient, "WHMCS_HTTP"),
        ];
        for (status, message, class, code) in cases {
            let body = format!(r#"{{"result":"error","message":"{message}"}}"#);
            let e = err(*status, &body, "AddOrder");
            assert_eq!(e.class(), *class, "{message}");
            assert_eq!(e.code(), *code, "{message}");
        }
        let e = err(
            200,
            r#"{"result":"error","message":"Order ID not found or Status not Pending"}"#,
            "AcceptOrder",
        );
        assert_eq!(e.kind, WhmcsErrorKind::NotPending);
        assert!(!e.is_ambiguous());
    }

    #[test]
    fn infrastructure_failures_are_transient() {
        for (status, body) in [
            (502, "<html>Bad Gateway</html>"),
            (500, ""),
            (200, "<?php fatal"),
            (200, r#"{"no":"envelope"}"#),
            (503, r#"{"message":"busy"}"#),
            (200, "[1,2]"),
        ] {
            let e = err(status, body, "GetOrders");
            assert_eq!(e.class(), ErrorClass::Transient, "{status} {body}");
            assert!(
                !e.is_ambiguous(),
                "GetOrders is never ambiguous for {status}"
            );
        }
        let e = err(404, "<html>Not Found</html>", "GetOrders");
        assert_eq!(
            (e.class(), e.code().as_str()),
            (ErrorClass::Config, "WHMCS_HTTP")
        );
    }

    #[test]
    fn ambiguity() {
        assert!(err(504, "gateway timeout", "AddOrder").is_ambiguous());
        assert!(err(200, "<html>", "AddOrder").is_ambiguous());
        assert!(
            !err(
                403,
                r#"{"result":"error","message":"Authentication Failed"}"#,
                "AddOrder"
            )
            .is_ambiguous()
        );
        assert!(
            !err(
                200,
                r#"{"result":"error","message":"Client ID Not Found"}"#,
                "AddOrder"
            )
            .is_ambiguous()
        );
        for kind in [WhmcsErrorKind::Timeout, WhmcsErrorKind::ConnectionLost] {
            let e = WhmcsError::new("AddOrder", kind, "x");
            assert!(e.is_ambiguous());
            assert_eq!(e.class(), ErrorClass::Transient);
        }
        let e = WhmcsError::new("AddOrder", WhmcsErrorKind::Connect, "refused");
        assert!(!e.is_ambiguous());
        assert_eq!(e.class(), ErrorClass::Transient);
    }

    #[test]
    fn success_any_status_and_case() {
        assert!(decode_response(200, br#"{"result":"success","orderid":"1"}"#, "AddOrder").is_ok());
        assert!(decode_response(200, br#"{"result":"Success"}"#, "AcceptOrder").is_ok());
    }

    #[test]
    fn messages_are_capped_and_scrubbed() {
        let long = "x".repeat(5000);
        let e = err(
            200,
            &format!(r#"{{"result":"error","message":"{long}"}}"#),
            "AddOrder",
        );
        assert_eq!(e.message.chars().count(), MESSAGE_MAX);
        let mut e = WhmcsError::new("AddOrder", WhmcsErrorKind::Api, "echo: hunter2-secret!");
        e.scrub("hunter2-secret");
        assert_eq!(e.message, "echo: [REDACTED]!");
        assert_eq!(
            e.to_string(),
            "WHMCS AddOrder failed (WHMCS_ERROR): echo: [REDACTED]!"
        );
    }
}
