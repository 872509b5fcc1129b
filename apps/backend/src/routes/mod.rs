//! HTTP handlers: thin, each extracting what it needs and delegating to the domain.

mod accounts;
pub mod extract;
mod health;
mod presence;
mod publish;
mod snapshots;
mod stream;
mod tickets;
mod token;
mod users;

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use events::ValidationError;

use crate::error::ApiError;

pub use health::{healthz, metrics, readyz};

/// Mounts everything under `/api`.
pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/token", web::post().to(token::issue))
        .route("/accounts", web::post().to(accounts::create))
        .route("/accounts", web::get().to(accounts::list))
        .route("/snapshots", web::get().to(snapshots::list))
        .route("/events", web::get().to(stream::open))
        .route("/stream-tickets", web::post().to(tickets::issue))
        .route("/publish", web::post().to(publish::publish))
        .route(
            "/topics/{topic}/presence",
            web::get().to(presence::presence),
        )
        .route(
            "/users/{user_id}/disconnect",
            web::post().to(users::disconnect),
        );
}

/// A JSON request body that must be an object. serde reads a struct from an array too
/// (`["Savings",100]` would make an account), so the body is first taken as raw JSON
/// (through `web::Json`, with its size limit and error mapping), checked to be an
/// object, then read into `T`.
#[derive(Debug)]
pub struct JsonObject<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonObject<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let raw = web::Json::<Box<RawValue>>::from_request(req, payload);
        Box::pin(async move {
            let raw = raw.await?.into_inner();
            if !raw.get().trim_start().starts_with('{') {
                return Err(ApiError::InvalidBody("the body must be a JSON object".into()).into());
            }
            serde_json::from_str::<T>(raw.get())
                .map(JsonObject)
                .map_err(|error| ApiError::InvalidBody(error.to_string()).into())
        })
    }
}

/// `body` as a JSON object of type `T` (see [`JsonObject`]), for handlers whose body is
/// optional and so read as bytes.
pub fn json_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let raw: Box<RawValue> =
        serde_json::from_slice(body).map_err(|error| ApiError::MalformedJson(error.to_string()))?;
    if !raw.get().trim_start().starts_with('{') {
        return Err(ApiError::InvalidBody(
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_str::<T>(raw.get()).map_err(|error| ApiError::InvalidBody(error.to_string()))
}

/// The header that marks an answer replayed for a repeated `Idempotency-Key`.
pub const REPLAYED: (&str, &str) = ("idempotent-replayed", "true");

/// The longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 100;

/// The request's `Idempotency-Key`: 1 to 100 characters from `A-Z a-z 0-9 _ - . :`
/// (a UUID, say), as it becomes part of a Redis key. Publishes and account creations
/// take one, so that a retry after an unanswered request acts at most once.
pub fn idempotency_key(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.chars().all(allowed) {
        return Err(ValidationError {
            field: "Idempotency-Key",
            message: "must be 1 to 100 characters from A-Z a-z 0-9 _ - . :".into(),
        }
        .into());
    }
    Ok(Some(key))
}
