//! What handlers extract from a request before they run: the caller, authenticated
//! (`auth` decides; this only reads the `Authorization` header and answers for it).

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};

use crate::{
    auth::{self, Credential},
    error::ApiError,
    state::AppState,
};

fn state(req: &HttpRequest) -> Result<&AppState, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .map(|data| data.get_ref())
        .ok_or_else(|| ApiError::internal(&"AppState is not registered on the App"))
}

/// The `Authorization` header's value; `Some("")` when it is not readable text.
pub fn authorization(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default())
}

/// The user a valid token in the `Authorization` header names. Extracting it answers 401
/// for a missing, forged or expired token.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser(pub Credential);

impl FromRequest for AuthenticatedUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(state(req).and_then(|state| {
            auth::authenticate(&state.tokens, authorization(req))
                .map(AuthenticatedUser)
                .map_err(ApiError::from)
        }))
    }
}

/// A caller of the publish API and what it may publish: anything, with the publish API
/// key or a token whose `publish` claim is true; the topics of its `publishTopics` claim,
/// with another user's token (401 without a valid credential).
#[derive(Debug, Clone)]
pub struct Publisher(pub auth::PublishRight);

impl FromRequest for Publisher {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(state(req).and_then(|state| {
            auth::authorize_publisher(
                &state.tokens,
                state.publish_key.as_ref(),
                authorization(req),
            )
            .map(Publisher)
            .map_err(ApiError::from)
        }))
    }
}

/// A service: the publish API key, or a token whose `publish` claim is true (401 without
/// a valid credential, 403 with a user's, whatever its `publishTopics`).
#[derive(Debug, Clone)]
pub struct Service;

impl FromRequest for Service {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(state(req).and_then(|state| {
            match auth::authorize_publisher(
                &state.tokens,
                state.publish_key.as_ref(),
                authorization(req),
            )? {
                auth::PublishRight::Any => Ok(Service),
                auth::PublishRight::Topics { .. } => Err(auth::AuthError::MayNotPublish.into()),
            }
        }))
    }
}

/// Any authenticated caller: a service or a user (401 without a valid credential).
#[derive(Debug, Clone)]
pub struct Caller(pub auth::Caller);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(state(req).and_then(|state| {
            auth::identify(
                &state.tokens,
                state.publish_key.as_ref(),
                authorization(req),
            )
            .map(Caller)
            .map_err(ApiError::from)
        }))
    }
}
