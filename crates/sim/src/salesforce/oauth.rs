//! The simulator's OAuth 2.0 side: the token endpoint (client credentials, with the secret in a
//! Basic header or the form, and the RS256 JWT bearer flow), and the identity and userinfo
//! resources a token can read.
//!
//! Invariants:
//! * Errors use OAuth's object shape `{"error","error_description"}` with Salesforce's codes.
//! * An issued token is valid for every REST call until the control API revokes it.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use rand::Rng;
use serde_json::json;

use super::{bearer, json_response, not_found, oauth_error};
use crate::Simulator;

#[derive(serde::Deserialize)]
struct Claims {
    exp: u64,
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

pub(super) async fn token(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inner = &sim.0;
    inner.lock().totals.token_requests += 1;
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let cfg = &inner.cfg;
    match get("grant_type") {
        "client_credentials" => {
            let (id, secret) = basic_credentials(&headers)
                .unwrap_or_else(|| (get("client_id").to_owned(), get("client_secret").to_owned()));
            if id != cfg.client_id {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client_id",
                    "client identifier invalid",
                );
            }
            if secret != cfg.client_secret {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client",
                    "invalid client credentials",
                );
            }
            issue_token(&sim)
        }
        "urn:ietf:params:oauth:grant-type:jwt-bearer" => match verify_jwt(&sim, get("assertion")) {
            Ok(()) => issue_token(&sim),
            Err((error, description)) => oauth_error(StatusCode::BAD_REQUEST, error, &description),
        },
        "" => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant type not supported",
        ),
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant type not supported",
        ),
    }
}

fn verify_jwt(sim: &Simulator, assertion: &str) -> Result<(), (&'static str, String)> {
    use jsonwebtoken::errors::ErrorKind;
    use jsonwebtoken::{Algorithm, Validation, decode};
    let inner = &sim.0;
    let Some(key) = &inner.jwt_key else {
        return Err((
            "invalid_grant",
            "the JWT bearer flow is not enabled for this client".into(),
        ));
    };
    if assertion.is_empty() {
        return Err(("invalid_grant", "invalid assertion".into()));
    }
    let mut v = Validation::new(Algorithm::RS256);
    let aud = inner.http_url.as_str();
    v.set_audience(&[aud.to_owned(), format!("{aud}/")]);
    v.set_issuer(&[inner.cfg.client_id.as_str()]);
    v.sub = Some(inner.cfg.username.clone());
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    v.leeway = 30;
    match decode::<Claims>(assertion, key, &v) {
        Ok(data) => {
            let now = jsonwebtoken::get_current_timestamp();
            if data.claims.exp > now + 300 + v.leeway {
                Err((
                    "invalid_grant",
                    "expiration time is too far in the future".into(),
                ))
            } else {
                Ok(())
            }
        }
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidIssuer => ("invalid_client_id", "client identifier invalid".into()),
            ErrorKind::InvalidAudience => ("invalid_grant", "audience is invalid".into()),
            ErrorKind::InvalidSubject => {
                ("invalid_grant", "user hasn't approved this consumer".into())
            }
            ErrorKind::ExpiredSignature => ("invalid_grant", "expired authorization code".into()),
            ErrorKind::MissingRequiredClaim(c) => {
                ("invalid_grant", format!("invalid assertion: missing {c}"))
            }
            _ => ("invalid_grant", "invalid assertion".into()),
        }),
    }
}

fn issue_token(sim: &Simulator) -> Response {
    let inner = &sim.0;
    let secret: String = rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(56)
        .map(char::from)
        .collect();
    let token = format!("{}!{secret}", &inner.cfg.org_id[..15]);
    inner.lock().tokens.insert(token.clone());
    let issued_at = chrono::Utc::now().timestamp_millis().to_string();
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "instance_url": inner.http_url,
            "id": format!("{}/id/{}/{}", inner.http_url, inner.cfg.org_id, inner.user_id),
            "token_type": "Bearer",
            "scope": "api",
            "issued_at": issued_at,
            "signature": "c2ltdWxhdG9yLXNpZ25hdHVyZQ==",
        }),
    )
}

pub(super) async fn userinfo(State(sim): State<Simulator>, headers: HeaderMap) -> Response {
    let inner = &sim.0;
    let ok = bearer(&headers).is_some_and(|t| inner.lock().tokens.contains(t));
    if !ok {
        return json_response(StatusCode::FORBIDDEN, &json!({"error": "Bad_OAuth_Token"}));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "sub": format!("{}/id/{}/{}", inner.http_url, inner.cfg.org_id, inner.user_id),
            "user_id": inner.user_id.as_str(),
            "organization_id": inner.cfg.org_id,
            "preferred_username": inner.cfg.username,
        }),
    )
}

pub(super) async fn identity(
    State(sim): State<Simulator>,
    Path((org, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let inner = &sim.0;
    let ok = bearer(&headers).is_some_and(|t| inner.lock().tokens.contains(t));
    if !ok {
        return json_response(StatusCode::FORBIDDEN, &json!({"error": "Bad_OAuth_Token"}));
    }
    if org != inner.cfg.org_id || user != inner.user_id.as_str() {
        return not_found().await;
    }
    json_response(
        StatusCode::OK,
        &json!({
            "id": format!("{}/id/{}/{}", inner.http_url, org, user),
            "organization_id": org,
            "user_id": user,
            "username": inner.cfg.username,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_decodes() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "Basic dXNlcjpwYXNz".parse().expect("header"),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(("user".to_owned(), "pass".to_owned()))
        );
    }
}
