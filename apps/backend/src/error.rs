//! Every error a client can see, and the one place that maps it to an HTTP status.

use actix_web::{
    HttpResponse, ResponseError,
    error::{JsonPayloadError, QueryPayloadError},
    http::{StatusCode, header},
};
use events::{ErrorBody, ErrorDetail, ValidationError};

use crate::{auth::AuthError, bus::BusError, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON of the wrong shape: missing, unknown or mistyped fields.
    #[error("invalid body: {0}")]
    InvalidBody(String),
    /// The body has the right shape but a value breaks a rule.
    #[error("{0}")]
    Validation(#[from] ValidationError),
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no such route")]
    NotFound,
    /// A dependency (Redis) cannot be reached; the request may be retried.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidBody(_) => "invalid_body",
            Self::Validation(_) => "validation_failed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// Maps actix's JSON extractor failures onto ours.
    pub fn from_json_error(err: &JsonPayloadError, limit: usize) -> Self {
        match err {
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                Self::PayloadTooLarge { limit }
            }
            JsonPayloadError::ContentType => Self::UnsupportedMediaType,
            JsonPayloadError::Deserialize(e) if e.is_syntax() || e.is_eof() => {
                Self::MalformedJson(e.to_string())
            }
            JsonPayloadError::Deserialize(e) => Self::InvalidBody(e.to_string()),
            other => Self::MalformedJson(other.to_string()),
        }
    }

    pub fn from_query_error(err: &QueryPayloadError) -> Self {
        Self::InvalidBody(err.to_string())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::InvalidBody(_) | Self::Validation(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::Unavailable(_) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        tracing::warn!(error = %err, "store unavailable");
        Self::Unavailable(err.to_string())
    }
}

impl From<BusError> for ApiError {
    fn from(err: BusError) -> Self {
        tracing::warn!(error = %err, "bus unavailable");
        Self::Unavailable(err.to_string())
    }
}
