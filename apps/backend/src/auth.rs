//! Who is calling: user tokens (HS256 JWTs) and publisher credentials.

use std::{
    future::{Ready, ready},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::{config::Secret, error::ApiError, state::AppState};

/// The claims of every token this system signs or accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
    /// Whether the bearer may publish events to any user through `POST /api/publish`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish: bool,
}

/// Why a credential was refused. Deliberately coarse: a client learns no more than it must.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token has expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// Signs and verifies tokens with one shared HS256 secret, so that any instance (and the
/// host application, which holds the same secret) can check a token any other minted.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(secret: &str, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            ttl,
        }
    }

    /// Mints a user token; returns it with its expiry.
    pub fn issue(&self, user_id: &str) -> (String, SystemTime) {
        let now = SystemTime::now();
        let expires = now + self.ttl;
        let claims = Claims {
            sub: user_id.to_string(),
            exp: epoch_secs(expires),
            iat: epoch_secs(now),
            publish: false,
        };
        (self.sign(&claims), expires)
    }

    /// Signs arbitrary claims (used by tests and tools that mint publisher tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        events::validate_user_id(&data.claims.sub).map_err(|_| AuthError::Invalid)?;
        Ok(data.claims)
    }
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The token from `Authorization: Bearer ...`, else from `?token=` (EventSource cannot
/// send headers).
fn bearer_token(req: &HttpRequest) -> Option<String> {
    bearer_token_of(authorization(req), req.query_string())
}

/// The `Authorization` header's value; `Some("")` when it is not readable text.
fn authorization(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default())
}

/// [`bearer_token`] from the raw `Authorization` value (`Some("")` when unreadable) and
/// query string, for requests that are not actix's.
fn bearer_token_of(authorization: Option<&str>, query: &str) -> Option<String> {
    if let Some(value) = authorization {
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some(token.trim().to_string());
    }
    #[derive(Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    web::Query::<TokenQuery>::from_query(query)
        .ok()
        .and_then(|q| q.into_inner().token)
}

/// The user a request's token names (see [`bearer_token_of`] for where it is looked
/// for): what [`AuthenticatedUser`] does, for requests that are not actix's.
pub fn authenticate(
    tokens: &Tokens,
    authorization: Option<&str>,
    query: &str,
) -> Result<String, ApiError> {
    let token = bearer_token_of(authorization, query).ok_or(AuthError::Missing)?;
    Ok(tokens.verify(&token)?.sub)
}

fn state(req: &HttpRequest) -> &AppState {
    req.app_data::<web::Data<AppState>>()
        .expect("AppState is registered on the App")
}

/// The user a valid token names. Extracting it answers 401 for a missing, forged or
/// expired token.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser(pub String);

impl FromRequest for AuthenticatedUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let result = authenticate(&state(req).tokens, authorization(req), req.query_string())
            .map(AuthenticatedUser);
        ready(result)
    }
}

/// A caller allowed to publish: it presented the publish API key, or a token whose
/// `publish` claim is true.
#[derive(Debug, Clone)]
pub struct Publisher;

impl FromRequest for Publisher {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = state(req);
        let result = match bearer_token(req) {
            None => Err(ApiError::from(AuthError::Missing)),
            Some(token) if matches_key(&token, state.publish_key.as_ref()) => Ok(Publisher),
            Some(token) => match state.tokens.verify(&token) {
                Ok(claims) if claims.publish => Ok(Publisher),
                Ok(_) => Err(ApiError::Forbidden("this token may not publish")),
                Err(e) => Err(e.into()),
            },
        };
        ready(result)
    }
}

fn matches_key(candidate: &str, key: Option<&Secret>) -> bool {
    key.is_some_and(|key| bool::from(candidate.as_bytes().ct_eq(key.expose().as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_name_their_user() {
        let tokens = Tokens::new("secret", Duration::from_secs(60));
        let (token, _) = tokens.issue("alice");
        assert_eq!(
            tokens.verify(&token).map(|c| c.sub),
            Ok("alice".to_string())
        );
    }

    #[test]
    fn forged_and_expired_tokens_are_refused() {
        let ours = Tokens::new("secret", Duration::from_secs(60));
        let theirs = Tokens::new("other secret", Duration::from_secs(60));
        let (forged, _) = theirs.issue("alice");
        assert_eq!(ours.verify(&forged).map(|c| c.sub), Err(AuthError::Invalid));

        let expired = ours.sign(&Claims {
            sub: "alice".into(),
            exp: epoch_secs(SystemTime::now()) - 120,
            iat: 0,
            publish: false,
        });
        assert_eq!(
            ours.verify(&expired).map(|c| c.sub),
            Err(AuthError::Expired)
        );
        assert_eq!(
            ours.verify("not.a.jwt").map(|c| c.sub),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn publish_key_comparison() {
        let key = Secret::new("pk");
        assert!(matches_key("pk", Some(&key)));
        assert!(!matches_key("pk2", Some(&key)));
        assert!(!matches_key("pk", None));
    }
}
