//! Salesforce OAuth 2.0: minting access tokens with the JWT bearer flow (RS256) or the client
//! credentials flow, and caching the resulting [`Session`] for the REST client and the Pub/Sub
//! subscriber.
//!
//! Salesforce issues no refresh token and no expiry for these flows; a token is used until
//! Salesforce rejects it (REST 401 `INVALID_SESSION_ID`, gRPC `UNAUTHENTICATED`), and the caller
//! then asks for a new one with [`TokenProvider::refresh`], naming the generation it saw fail.
//!
//! Invariants:
//! - Single flight: however many tasks ask at once, at most one token request is in flight, and
//!   a refresh for a generation that has already been replaced returns the newer session without
//!   a request. A failed mint is shared with the tasks that were waiting for it (no stampede of
//!   failed logins).
//! - Generations increase by one per successful mint, starting at 1.
//! - The private key is parsed (and test-signed) in [`TokenProvider::new`]: a bad key is a
//!   config error at start-up, not at the first event.
//! - Tokens, assertions, keys and client secrets never appear in `Debug`, `Display`, errors or
//!   logs. Every token request has a timeout ([`TOKEN_TIMEOUT`]).
//! - No token request storm on rejected credentials (`invalid_grant`, `invalid_client`, …): after
//!   such a rejection, callers get the same error without a request until a capped, growing
//!   delay has passed ([`REJECTED_RETRY_MIN`] doubling up to [`REJECTED_RETRY_MAX`]).

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Classify, ErrorClass},
    ids::SalesforceId,
    net,
};

/// Total timeout of one token request.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// First delay before a token request after Salesforce rejected our credentials.
pub const REJECTED_RETRY_MIN: Duration = Duration::from_secs(5);
/// Longest delay between token requests while Salesforce keeps rejecting our credentials.
pub const REJECTED_RETRY_MAX: Duration = Duration::from_secs(300);
/// Lifetime of a JWT assertion; Salesforce requires `exp` within 3 minutes.
const ASSERTION_LIFETIME_SECS: i64 = 180;
const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How to obtain tokens. `login_url` is e.g. `https://login.salesforce.com` (JWT) or the My
/// Domain URL (client credentials); the token endpoint is `{login_url}/services/oauth2/token`.
#[derive(Clone, Debug)]
pub enum AuthFlow {
    Jwt {
        login_url: String,
        client_id: String,
        username: String,
        private_key_pem: SecretString,
    },
    ClientCredentials {
        login_url: String,
        client_id: String,
        client_secret: SecretString,
    },
}

impl AuthFlow {
    /// The flow the configuration selects.
    pub fn from_config(cfg: &crate::config::SalesforceConfig) -> Self {
        match &cfg.auth {
            crate::config::SalesforceAuth::Jwt {
                username,
                private_key_pem,
            } => Self::Jwt {
                login_url: cfg.login_url.clone(),
                client_id: cfg.client_id.clone(),
                username: username.clone(),
                private_key_pem: private_key_pem.clone(),
            },
            crate::config::SalesforceAuth::ClientCredentials { client_secret } => {
                Self::ClientCredentials {
                    login_url: cfg.login_url.clone(),
                    client_id: cfg.client_id.clone(),
                    client_secret: client_secret.clone(),
                }
            }
        }
    }
}

/// An access token and where to use it.
pub struct Session {
    pub access_token: SecretString,
    /// `https://<MyDomain>.my.salesforce.com`, without a trailing slash.
    pub instance_url: String,
    /// The 18-character org id (Pub/Sub `tenantid`).
    pub org_id: String,
    /// 1 for the first token minted by this provider, +1 per re-mint.
    pub generation: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("access_token", &"[REDACTED]")
            .field("instance_url", &self.instance_url)
            .field("org_id", &self.org_id)
            .field("generation", &self.generation)
            .finish()
    }
}

/// Why a token could not be obtained. Messages carry Salesforce's `error` and
/// `error_description`, never a token, an assertion or a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// Our own settings are unusable (bad key, bad login URL).
    #[error("Salesforce auth misconfigured: {0}")]
    Config(&'static str),
    /// The token endpoint answered with an OAuth error object.
    #[error("Salesforce token request rejected (HTTP {status}): {error}: {description}")]
    Rejected {
        status: u16,
        error: String,
        description: String,
    },
    /// The token endpoint answered an error status without an OAuth error object.
    #[error("Salesforce token endpoint returned HTTP {status}")]
    Http { status: u16 },
    /// The request could not be completed (connect, timeout, connection lost).
    #[error("Salesforce token request failed: {message}")]
    Transport { message: String, timeout: bool },
    /// A 2xx answer we could not use.
    #[error("malformed Salesforce token response: {0}")]
    BadResponse(String),
}

/// OAuth `error` values that mean our credentials or app set-up are wrong.
const KNOWN_OAUTH_ERRORS: &[(&str, &str)] = &[
    ("invalid_grant", "SF_AUTH_INVALID_GRANT"),
    ("invalid_client", "SF_AUTH_INVALID_CLIENT"),
    ("invalid_client_id", "SF_AUTH_INVALID_CLIENT_ID"),
    ("invalid_client_credentials", "SF_AUTH_INVALID_CLIENT"),
    ("unsupported_grant_type", "SF_AUTH_UNSUPPORTED_GRANT_TYPE"),
    ("invalid_request", "SF_AUTH_INVALID_REQUEST"),
    ("inactive_user", "SF_AUTH_INACTIVE_USER"),
    ("inactive_org", "SF_AUTH_INACTIVE_ORG"),
    ("invalid_scope", "SF_AUTH_INVALID_SCOPE"),
];

fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

impl AuthError {
    /// HTTP status of the token endpoint's answer, 0 when there was none.
    pub fn status(&self) -> u16 {
        match self {
            Self::Rejected { status, .. } | Self::Http { status } => *status,
            _ => 0,
        }
    }

    fn transport(e: &reqwest::Error) -> Self {
        Self::Transport {
            message: net::describe(e),
            timeout: e.is_timeout(),
        }
    }
}

impl Classify for AuthError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Config(_) => ErrorClass::Config,
            Self::Rejected { status, .. } | Self::Http { status } => {
                if retryable_status(*status) {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Config
                }
            }
            Self::Transport { .. } | Self::BadResponse(_) => ErrorClass::Transient,
        }
    }

    fn code(&self) -> String {
        match self {
            Self::Config(_) => "SF_AUTH_CONFIG",
            Self::Rejected { status, error, .. } => {
                match KNOWN_OAUTH_ERRORS.iter().find(|(e, _)| e == error) {
                    Some((_, code)) => code,
                    None if retryable_status(*status) => "SF_AUTH_UNAVAILABLE",
                    None => "SF_AUTH_REJECTED",
                }
            }
            Self::Http { status } if retryable_status(*status) => "SF_AUTH_UNAVAILABLE",
            Self::Http { .. } => "SF_AUTH_HTTP",
            Self::Transport { timeout: true, .. } => "SF_AUTH_TIMEOUT",
            Self::Transport { .. } => "SF_AUTH_NETWORK",
            Self::BadResponse(_) => "SF_AUTH_BAD_RESPONSE",
        }
        .to_owned()
    }
}

/// The flow with its key parsed and its endpoint resolved.
enum Grant {
    Jwt {
        key: EncodingKey,
        client_id: String,
        username: String,
        audience: String,
    },
    ClientCredentials {
        client_id: String,
        client_secret: SecretString,
    },
}

struct Inner {
    http: reqwest::Client,
    token_url: String,
    grant: Grant,
    cached: Mutex<Option<Arc<Session>>>,
    /// Held while minting; holds the error of the last attempt (shared with its waiters).
    mint: tokio::sync::Mutex<Option<AuthError>>,
    /// Consecutive credential rejections and when the last one happened (read and written
    /// while holding `mint`).
    rejected: Mutex<(u32, Option<std::time::Instant>)>,
    /// Mint attempts finished so far (success or not); bumped while holding `mint`.
    attempts: AtomicU64,
}

/// Cached, single-flight source of Salesforce sessions. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct TokenProvider {
    inner: Arc<Inner>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = match self.inner.grant {
            Grant::Jwt { .. } => "jwt",
            Grant::ClientCredentials { .. } => "client_credentials",
        };
        f.debug_struct("TokenProvider")
            .field("token_url", &self.inner.token_url)
            .field("flow", &flow)
            .field("generation", &self.current().map(|s| s.generation))
            .finish()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
}

fn sign_assertion(
    key: &EncodingKey,
    client_id: &str,
    username: &str,
    audience: &str,
    now: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = Claims {
        iss: client_id,
        sub: username,
        aud: audience,
        exp: now + ASSERTION_LIFETIME_SECS,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
}

/// `https://host[/path]` without a trailing slash, or a config error.
fn base_url(raw: &str) -> Result<String, AuthError> {
    let trimmed = raw.trim().trim_end_matches('/');
    match url::Url::parse(trimmed) {
        Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() => {
            Ok(trimmed.to_owned())
        }
        _ => Err(AuthError::Config("SF_LOGIN_URL is not an http(s) URL")),
    }
}

impl TokenProvider {
    /// Prepares the flow. For JWT the PEM is parsed and a test assertion signed now, so an
    /// unusable key fails here with a config error.
    pub fn new(http: reqwest::Client, flow: AuthFlow) -> Result<Self, AuthError> {
        let (login_url, grant) = match flow {
            AuthFlow::Jwt {
                login_url,
                client_id,
                username,
                private_key_pem,
            } => {
                let login_url = base_url(&login_url)?;
                let key = EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes())
                    .map_err(|_| {
                        AuthError::Config("SF private key is not an RSA private key in PEM form")
                    })?;
                sign_assertion(&key, &client_id, &username, &login_url, 0).map_err(|_| {
                    AuthError::Config("SF private key cannot sign RS256 (need RSA, >= 2048 bits)")
                })?;
                let grant = Grant::Jwt {
                    key,
                    client_id,
                    username,
                    audience: login_url.clone(),
                };
                (login_url, grant)
            }
            AuthFlow::ClientCredentials {
                login_url,
                client_id,
                client_secret,
            } => (
                base_url(&login_url)?,
                Grant::ClientCredentials {
                    client_id,
                    client_secret,
                },
            ),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                token_url: format!("{login_url}/services/oauth2/token"),
                grant,
                cached: Mutex::new(None),
                mint: tokio::sync::Mutex::new(None),
                rejected: Mutex::new((0, None)),
                attempts: AtomicU64::new(0),
            }),
        })
    }

    /// The cached session; the first call mints one.
    pub async fn session(&self) -> Result<Arc<Session>, AuthError> {
        match self.current() {
            Some(s) => Ok(s),
            None => self.mint_unless_newer(None).await,
        }
    }

    /// Replaces the session of generation `stale_generation` (rejected by Salesforce). If the
    /// cache already holds another generation, that one is returned without a request.
    pub async fn refresh(&self, stale_generation: u64) -> Result<Arc<Session>, AuthError> {
        match self.current() {
            Some(s) if s.generation != stale_generation => Ok(s),
            _ => self.mint_unless_newer(Some(stale_generation)).await,
        }
    }

    /// The cached session, without any request.
    pub fn current(&self) -> Option<Arc<Session>> {
        self.inner
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Mints under the single-flight lock unless, once we hold it, the cache already has a usable
    /// session (`stale == None`: any; `Some(g)`: any other than generation `g`), or an attempt
    /// finished while we waited and failed (its error is returned).
    async fn mint_unless_newer(&self, stale: Option<u64>) -> Result<Arc<Session>, AuthError> {
        let finished_before = self.inner.attempts.load(Ordering::Acquire);
        let mut last_error = self.inner.mint.lock().await;
        if let Some(s) = self.current() {
            if stale != Some(s.generation) {
                return Ok(s);
            }
        }
        if self.inner.attempts.load(Ordering::Acquire) != finished_before {
            if let Some(e) = last_error.as_ref() {
                return Err(e.clone());
            }
        }
        if let Some(e) = last_error
            .as_ref()
            .filter(|e| e.class() == ErrorClass::Config)
        {
            let (n, at) = *self
                .inner
                .rejected
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let wait = REJECTED_RETRY_MIN
                .saturating_mul(1u32 << n.saturating_sub(1).min(16))
                .min(REJECTED_RETRY_MAX);
            if at.is_some_and(|t| t.elapsed() < wait) {
                return Err(e.clone());
            }
        }
        let generation = self.current().map_or(1, |s| s.generation + 1);
        let minted = self.request_token(generation).await;
        self.inner.attempts.fetch_add(1, Ordering::AcqRel);
        {
            let mut rejected = self
                .inner
                .rejected
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *rejected = match &minted {
                Err(e) if e.class() == ErrorClass::Config => {
                    tracing::error!(error.code = %e.code(), error.message = %e, retry_in_secs = REJECTED_RETRY_MIN.saturating_mul(1u32 << rejected.0.min(16)).min(REJECTED_RETRY_MAX).as_secs(), "Salesforce rejected our credentials; no token request until the retry delay has passed");
                    (
                        rejected.0.saturating_add(1),
                        Some(std::time::Instant::now()),
                    )
                }
                _ => (0, None),
            };
        }
        match minted {
            Ok(session) => {
                let session = Arc::new(session);
                *self
                    .inner
                    .cached
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(session.clone());
                *last_error = None;
                tracing::info!(
                    sf.org_id = %session.org_id,
                    sf.token_generation = generation,
                    "Salesforce access token minted"
                );
                Ok(session)
            }
            Err(e) => {
                *last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn request_token(&self, generation: u64) -> Result<Session, AuthError> {
        let inner = &*self.inner;
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::with_capacity(1024));
            match &inner.grant {
                Grant::Jwt {
                    key,
                    client_id,
                    username,
                    audience,
                } => {
                    let now = chrono::Utc::now().timestamp();
                    let assertion = sign_assertion(key, client_id, username, audience, now)
                        .map_err(|_| AuthError::Config("signing the JWT assertion failed"))?;
                    form.append_pair("grant_type", JWT_GRANT)
                        .append_pair("assertion", &assertion);
                }
                Grant::ClientCredentials {
                    client_id,
                    client_secret,
                } => {
                    form.append_pair("grant_type", "client_credentials")
                        .append_pair("client_id", client_id)
                        .append_pair("client_secret", client_secret.expose_secret());
                }
            }
            form.finish()
        };
        let response = inner
            .http
            .post(&inner.token_url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(body)
            .timeout(TOKEN_TIMEOUT)
            .send()
            .await
            .map_err(|e| AuthError::transport(&e))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| AuthError::transport(&e))?;
        parse_token_response(status, &body, generation)
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    instance_url: String,
    id: String,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// At most `max` characters of `s`.
fn clip(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// Turns the token endpoint's answer into a [`Session`] of the given generation.
pub fn parse_token_response(
    status: u16,
    body: &[u8],
    generation: u64,
) -> Result<Session, AuthError> {
    if !(200..300).contains(&status) {
        return Err(match serde_json::from_slice::<OAuthErrorBody>(body) {
            Ok(e) => AuthError::Rejected {
                status,
                error: clip(&e.error, 64).to_owned(),
                description: clip(e.error_description.as_deref().unwrap_or(""), 300).to_owned(),
            },
            Err(_) => AuthError::Http { status },
        });
    }
    // serde_json messages can quote offending values; report only where parsing failed.
    let t: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        AuthError::BadResponse(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if t.access_token.expose_secret().is_empty() {
        return Err(AuthError::BadResponse("empty access_token".into()));
    }
    let instance_url = base_url(&t.instance_url)
        .map_err(|_| AuthError::BadResponse("instance_url is not an http(s) URL".into()))?;
    // The access token travels to instance_url with every REST call: never in clear text to a
    // host that is not loopback.
    if !url::Url::parse(&instance_url).is_ok_and(|u| crate::net::is_secure_or_loopback(&u)) {
        return Err(AuthError::BadResponse(
            "instance_url must be https:// (http:// only for a loopback host)".into(),
        ));
    }
    Ok(Session {
        access_token: t.access_token,
        instance_url,
        org_id: org_id_from_identity_url(&t.id)?,
        generation,
    })
}

/// The org id in an identity URL `https://login.salesforce.com/id/{orgId}/{userId}`.
fn org_id_from_identity_url(id: &str) -> Result<String, AuthError> {
    let bad = || AuthError::BadResponse("`id` is not an identity URL with an org id".into());
    let url = url::Url::parse(id).map_err(|_| bad())?;
    let mut segments = url
        .path_segments()
        .ok_or_else(bad)?
        .filter(|s| !s.is_empty());
    let org = segments.by_ref().rev().nth(1).ok_or_else(bad)?;
    SalesforceId::parse(org)
        .map(String::from)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Throw-away RSA key pair, used only by tests (and the simulator); never a real credential.
    const TEST_KEY: &str = include_str!("../../tests/fixtures/sf_test_key.pem");
    const TEST_PUBLIC_KEY: &str = include_str!("../../tests/fixtures/sf_test_key.pub.pem");
    const ORG: &str = "00Dxx0000001gPLEAY";

    fn jwt_flow(pem: &str) -> AuthFlow {
        AuthFlow::Jwt {
            login_url: "https://login.salesforce.com/".into(),
            client_id: "3MVG9consumerkey".into(),
            username: "integration@example.com".into(),
            private_key_pem: SecretString::from(pem),
        }
    }

    fn ok_body(token: &str) -> String {
        format!(
            r#"{{"access_token":"{token}","scope":"api","instance_url":"https://acme.my.salesforce.com/",
               "id":"https://login.salesforce.com/id/{ORG}/005xx000001SwiUAAS","token_type":"Bearer",
               "issued_at":"1700000000000","signature":"abc"}}"#
        )
    }

    #[test]
    fn org_id_is_second_to_last_segment() {
        let org = SalesforceId::parse(ORG).expect("valid sample org id");
        let s = parse_token_response(200, ok_body("00D!tok").as_bytes(), 3).expect("session");
        assert_eq!(s.org_id, org.as_str());
        assert_eq!(s.instance_url, "https://acme.my.salesforce.com");
        assert_eq!(s.generation, 3);
        assert_eq!(s.access_token.expose_secret(), "00D!tok");
        // Trailing slash tolerated.
        let body = ok_body("t").replace("SwiUAAS\"", "SwiUAAS/\"");
        assert!(parse_token_response(200, body.as_bytes(), 1).is_ok());
    }

    #[test]
    fn plain_http_instance_url_is_refused_unless_loopback() {
        let body = ok_body("t").replace(
            "https://acme.my.salesforce.com/",
            "http://acme.my.salesforce.com/",
        );
        let e = parse_token_response(200, body.as_bytes(), 1).expect_err("http:// instance_url");
        assert_eq!(e.code(), "SF_AUTH_BAD_RESPONSE");
        assert!(e.to_string().contains("instance_url"), "{e}");
        let body =
            ok_body("t").replace("https://acme.my.salesforce.com/", "http://127.0.0.1:7000/");
        let s =
            parse_token_response(200, body.as_bytes(), 1).expect("loopback http:// is accepted");
        assert_eq!(s.instance_url, "http://127.0.0.1:7000");
    }

    #[test]
    fn malformed_success_is_transient() {
        for body in [
            "not json",
            r#"{"instance_url":"https://x","id":"https://l/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS"}"#,
            r#"{"access_token":"t","instance_url":"https://x","id":"https://l/id/nope/005"}"#,
            r#"{"access_token":"t","instance_url":"ftp://x","id":"https://l/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS"}"#,
            r#"{"access_token":"","instance_url":"https://x","id":"https://l/id/00Dxx0000001gPLEAY/005xx000001SwiUAAS"}"#,
        ] {
            let e = parse_token_response(200, body.as_bytes(), 1).expect_err(body);
            assert_eq!(e.class(), ErrorClass::Transient, "{body}");
            assert_eq!(e.code(), "SF_AUTH_BAD_RESPONSE");
        }
    }

    #[test]
    fn error_classification() {
        let cases: &[(u16, &str, ErrorClass, &str)] = &[
            (
                400,
                r#"{"error":"invalid_grant","error_description":"user hasn't approved this consumer"}"#,
                ErrorClass::Config,
                "SF_AUTH_INVALID_GRANT",
            ),
            (
                400,
                r#"{"error":"invalid_client_id","error_description":"client identifier invalid"}"#,
                ErrorClass::Config,
                "SF_AUTH_INVALID_CLIENT_ID",
            ),
            (
                401,
                r#"{"error":"invalid_client","error_description":"invalid client credentials"}"#,
                ErrorClass::Config,
                "SF_AUTH_INVALID_CLIENT",
            ),
            (
                400,
                r#"{"error":"unsupported_grant_type","error_description":"grant type not supported"}"#,
                ErrorClass::Config,
                "SF_AUTH_UNSUPPORTED_GRANT_TYPE",
            ),
            (
                400,
                r#"{"error":"something_new"}"#,
                ErrorClass::Config,
                "SF_AUTH_REJECTED",
            ),
            (
                503,
                "<html>down</html>",
                ErrorClass::Transient,
                "SF_AUTH_UNAVAILABLE",
            ),
            (
                500,
                r#"{"error":"server_error"}"#,
                ErrorClass::Transient,
                "SF_AUTH_UNAVAILABLE",
            ),
            (429, "", ErrorClass::Transient, "SF_AUTH_UNAVAILABLE"),
            (404, "<html>no</html>", ErrorClass::Config, "SF_AUTH_HTTP"),
        ];
        for (status, body, class, code) in cases {
            let e = parse_token_response(*status, body.as_bytes(), 1).expect_err(body);
            assert_eq!(e.class(), *class, "{status} {body}");
            assert_eq!(e.code(), *code, "{status} {body}");
            assert_eq!(e.status(), *status);
        }
        let e = parse_token_response(400, cases[0].1.as_bytes(), 1).expect_err("rejected");
        assert_eq!(
            e.to_string(),
            "Salesforce token request rejected (HTTP 400): invalid_grant: user hasn't approved this consumer"
        );
        let t = AuthError::Transport {
            message: "request timed out".into(),
            timeout: true,
        };
        assert_eq!(
            (t.class(), t.code().as_str()),
            (ErrorClass::Transient, "SF_AUTH_TIMEOUT")
        );
    }

    #[test]
    fn bad_key_is_config_error() {
        let http = reqwest::Client::new();
        for pem in [
            "",
            "not a pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let e = TokenProvider::new(http.clone(), jwt_flow(pem)).expect_err("bad key");
            assert_eq!(e.class(), ErrorClass::Config);
            assert_eq!(e.code(), "SF_AUTH_CONFIG");
        }
        let e = TokenProvider::new(
            http,
            AuthFlow::ClientCredentials {
                login_url: "login.salesforce.com".into(),
                client_id: "id".into(),
                client_secret: SecretString::from("s3cr3t"),
            },
        )
        .expect_err("no scheme");
        assert_eq!(e.class(), ErrorClass::Config);
    }

    #[test]
    fn assertion_claims() {
        let provider =
            TokenProvider::new(reqwest::Client::new(), jwt_flow(TEST_KEY)).expect("good key");
        assert_eq!(
            provider.inner.token_url,
            "https://login.salesforce.com/services/oauth2/token"
        );
        let Grant::Jwt {
            key,
            client_id,
            username,
            audience,
        } = &provider.inner.grant
        else {
            panic!("jwt grant");
        };
        let jwt = sign_assertion(key, client_id, username, audience, 1_700_000_000).expect("sign");
        assert_eq!(
            jsonwebtoken::decode_header(&jwt).expect("header").alg,
            Algorithm::RS256
        );
        let public = jsonwebtoken::DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes())
            .expect("public key");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.set_audience(&["https://login.salesforce.com"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(&jwt, &public, &validation)
            .expect("signature verifies")
            .claims;
        assert_eq!(claims["iss"], "3MVG9consumerkey");
        assert_eq!(claims["sub"], "integration@example.com");
        assert_eq!(claims["aud"], "https://login.salesforce.com");
        assert_eq!(claims["exp"], 1_700_000_180);
    }

    /// A provider whose token endpoint refuses connections (nothing listens there).
    fn unreachable_provider() -> TokenProvider {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        TokenProvider::new(
            reqwest::Client::new(),
            AuthFlow::ClientCredentials {
                login_url: format!("http://127.0.0.1:{port}"),
                client_id: "id".into(),
                client_secret: SecretString::from("s"),
            },
        )
        .expect("provider")
    }

    fn seed(provider: &TokenProvider, generation: u64) {
        let session =
            parse_token_response(200, ok_body("tok").as_bytes(), generation).expect("session");
        *provider.inner.cached.lock().expect("lock") = Some(Arc::new(session));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_failed_attempt() {
        let provider = unreachable_provider();
        let results = futures::future::join_all((0..16).map(|_| provider.session())).await;
        assert_eq!(provider.inner.attempts.load(Ordering::Acquire), 1);
        for r in results {
            let e = r.expect_err("unreachable");
            assert_eq!(
                (e.class(), e.code().as_str()),
                (ErrorClass::Transient, "SF_AUTH_NETWORK")
            );
        }
        // A later call tries again.
        assert!(provider.session().await.is_err());
        assert_eq!(provider.inner.attempts.load(Ordering::Acquire), 2);
    }

    #[tokio::test]
    async fn rejected_credentials_are_not_retried_before_the_delay() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let served = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::AcqRel);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#;
                let resp = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let provider = TokenProvider::new(
            reqwest::Client::new(),
            AuthFlow::ClientCredentials {
                login_url: format!("http://127.0.0.1:{port}"),
                client_id: "id".into(),
                client_secret: SecretString::from("s"),
            },
        )
        .expect("provider");
        for _ in 0..10 {
            let e = provider.session().await.expect_err("rejected");
            assert_eq!(e.code(), "SF_AUTH_INVALID_GRANT");
        }
        assert_eq!(
            served.load(Ordering::Acquire),
            1,
            "one token request, not ten"
        );
    }

    #[tokio::test]
    async fn refresh_only_replaces_the_stale_generation() {
        let provider = unreachable_provider();
        assert!(provider.current().is_none());
        seed(&provider, 2);
        // Cached session served without any request.
        assert_eq!(provider.session().await.expect("cached").generation, 2);
        // Generation 1 was already replaced: the newer one is returned, no request.
        assert_eq!(provider.refresh(1).await.expect("newer").generation, 2);
        assert_eq!(provider.inner.attempts.load(Ordering::Acquire), 0);
        // Generation 2 is the stale one: a mint is attempted (and fails here).
        assert!(provider.refresh(2).await.is_err());
        assert_eq!(provider.inner.attempts.load(Ordering::Acquire), 1);
        // The failed mint keeps the old session in place.
        assert_eq!(provider.current().expect("kept").generation, 2);
    }

    #[test]
    fn secrets_absent_from_debug_and_display() {
        let token = "00Dxx!SUPERSECRETTOKEN";
        let s = parse_token_response(200, ok_body(token).as_bytes(), 1).expect("session");
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("SUPERSECRET"), "{dbg}");
        assert!(dbg.contains("REDACTED"));

        let flow = AuthFlow::ClientCredentials {
            login_url: "https://acme.my.salesforce.com".into(),
            client_id: "id".into(),
            client_secret: SecretString::from("CLIENTSECRET42"),
        };
        assert!(!format!("{flow:?}").contains("CLIENTSECRET42"));
        let provider = TokenProvider::new(reqwest::Client::new(), flow).expect("provider");
        assert!(!format!("{provider:?}").contains("CLIENTSECRET42"));

        let jwt = jwt_flow(TEST_KEY);
        let dbg = format!("{jwt:?}");
        assert!(
            !dbg.contains("PRIVATE KEY") && !dbg.contains(&TEST_KEY[40..80]),
            "{dbg}"
        );

        // A token-shaped value in a malformed response must not be echoed by the error.
        let body = format!(r#"{{"access_token":"{token}","instance_url":7,"id":"x"}}"#);
        let e = parse_token_response(200, body.as_bytes(), 1).expect_err("bad");
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains("SUPERSECRET"), "{text}");
        }
    }
}
