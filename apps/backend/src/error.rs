//! Every error a client can see, and the one place that maps it to an HTTP status.
//!
//! What a client reads never carries internals: a dependency that is away is a 503 with a
//! fixed message, and anything unexpected is a 500 with a request id, logged once next to
//! its real cause so that an operator can find it.

use actix_web::{
    HttpResponse, ResponseError,
    error::{JsonPayloadError, PayloadError, QueryPayloadError},
    http::{StatusCode, header},
};
use events::{ErrorBody, ErrorDetail, ValidationError};

use crate::{
    admission::Breach, auth::AuthError, bus::BusError, delivery::OpenError,
    presence::PresenceError, store::StoreError, tickets::TicketError, topics::TopicError,
};

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
    /// The request body did not arrive in time (`REQUEST_BODY_TIMEOUT_SECS`).
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("event data exceeds {limit} bytes")]
    EventTooLarge { limit: u64 },
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no such route")]
    NotFound,
    /// The request has no `Host`, several, or one that is not a host (RFC 9112 §3.2).
    #[error("a request must have exactly one valid Host header")]
    BadHost,
    /// The caller holds as many streams as it may on this instance.
    #[error("too many open streams for this user (at most {limit} per instance)")]
    TooManyStreams { limit: u64 },
    /// The caller was issued as many stream tickets as it may for now.
    #[error("too many stream tickets for this user (at most {limit} per 30 s)")]
    TooManyTickets { limit: u64 },
    /// The user published as often as they may for now (`USER_PUBLISH_RATE`).
    #[error("too many publishes for this user (at most {limit} per second)")]
    TooManyPublishes { limit: u64 },
    /// A per-user limit on stored things was reached.
    #[error("{0}")]
    LimitReached(&'static str),
    /// This instance should not get this traffic now (draining, full, Redis away); the
    /// request may be retried, elsewhere or later. Never carries a dependency's words.
    #[error("{0}")]
    Unavailable(&'static str),
    /// A stream's or a publish's topic is refused: a bad name, too many, or not allowed.
    #[error("{0}")]
    Topic(TopicError),
    /// The topic's presence is not kept (`PRESENCE_TOPICS`).
    #[error("presence is not kept for this topic")]
    PresenceNotKept(String),
    /// Something unexpected; the cause is in the log under `request_id`.
    #[error("internal error (request id {request_id})")]
    Internal { request_id: String },
}

/// What a 503 says when Redis cannot be reached or answer in time.
pub const DEPENDENCY_UNAVAILABLE: &str = "temporarily unavailable; retry";

impl ApiError {
    /// A 500 for `cause`, which is logged (never sent) with a fresh request id that the
    /// response carries, so the two can be matched.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(%request_id, error = %cause, "internal error");
        Self::Internal { request_id }
    }
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidBody(_) => "invalid_body",
            Self::Validation(_) => "validation_failed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::BadHost => "bad_host",
            Self::EventTooLarge { .. } => "event_too_large",
            Self::TooManyStreams { .. } => "too_many_streams",
            Self::TooManyTickets { .. } => "too_many_tickets",
            Self::TooManyPublishes { .. } => "too_many_publishes",
            Self::LimitReached(_) => "limit_reached",
            Self::Unavailable(_) => "unavailable",
            Self::Topic(TopicError::Invalid { .. }) => "invalid_topic",
            Self::Topic(TopicError::TooMany { .. }) => "too_many_topics",
            Self::Topic(TopicError::Forbidden(_)) => "topic_forbidden",
            Self::Topic(TopicError::Unavailable) => "topic_auth_unavailable",
            Self::PresenceNotKept(_) => "presence_not_kept",
            Self::Internal { .. } => "internal",
        }
    }

    /// Maps actix's JSON extractor failures onto ours.
    pub fn from_json_error(err: &JsonPayloadError, limit: usize) -> Self {
        match err {
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                Self::PayloadTooLarge { limit }
            }
            JsonPayloadError::ContentType => Self::UnsupportedMediaType,
            // The deadline `connection::rules` gives every body.
            JsonPayloadError::Payload(PayloadError::Io(io))
                if io.kind() == std::io::ErrorKind::TimedOut =>
            {
                Self::RequestTimeout
            }
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
            Self::MalformedJson(_) | Self::InvalidBody(_) | Self::Validation(_) | Self::BadHost => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge { .. } | Self::EventTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound | Self::PresenceNotKept(_) => StatusCode::NOT_FOUND,
            Self::TooManyStreams { .. }
            | Self::TooManyTickets { .. }
            | Self::TooManyPublishes { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::LimitReached(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) | Self::Topic(TopicError::Unavailable) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Topic(TopicError::Invalid { .. } | TopicError::TooMany { .. }) => {
                StatusCode::BAD_REQUEST
            }
            Self::Topic(TopicError::Forbidden(_)) => StatusCode::FORBIDDEN,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::Unavailable(_) | Self::Topic(TopicError::Unavailable) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            Self::TooManyStreams { .. } | Self::TooManyTickets { .. } => {
                response.insert_header((header::RETRY_AFTER, "5"));
            }
            Self::TooManyPublishes { .. } => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        let topic = match self {
            Self::Topic(TopicError::Forbidden(topic) | TopicError::Invalid { topic, .. })
            | Self::PresenceNotKept(topic) => Some(topic.clone()),
            _ => None,
        };
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
                topic,
            },
        })
    }
}

impl ApiError {
    /// A failed Redis command: a 503 when Redis is away or busy, else a 500. `cause` is
    /// what is logged.
    pub fn from_redis(redis: &fred::error::Error, cause: &dyn std::fmt::Display) -> Self {
        if crate::redis::is_unavailable(redis) {
            tracing::warn!(error = %cause, "redis unavailable");
            Self::Unavailable(DEPENDENCY_UNAVAILABLE)
        } else {
            Self::internal(cause)
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::Redis(redis) => Self::from_redis(redis, &err),
            StoreError::Corrupt(_) => Self::internal(&err),
        }
    }
}

impl From<BusError> for ApiError {
    fn from(err: BusError) -> Self {
        match &err {
            BusError::Redis(redis) => Self::from_redis(redis, &err),
            BusError::Reply(_) => Self::internal(&err),
            BusError::Stopping => Self::Unavailable("this instance is shutting down; reconnect"),
            BusError::NotReplicated { .. } => {
                tracing::warn!(error = %err, "publish not acknowledged by enough replicas");
                // The event is in the history already, and is delivered if a replica
                // takes it later: a retry must not publish it twice.
                Self::Unavailable(
                    "replicas did not acknowledge the event in time; it may have been published: \
                     retry with the same Idempotency-Key",
                )
            }
        }
    }
}

impl From<OpenError> for ApiError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::Draining => Self::Unavailable("this instance is shutting down; reconnect"),
            OpenError::Rebalancing => Self::Unavailable(
                "this instance holds more than its share of streams; reconnect (elsewhere)",
            ),
            OpenError::UserLimit { limit } => Self::TooManyStreams { limit },
            OpenError::InstanceFull => {
                Self::Unavailable("this instance holds all the streams it may; try another")
            }
            OpenError::Bus(bus) => Self::from(bus),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::MayNotPublish => Self::Forbidden("this token may not publish"),
            other => Self::Unauthorized(other),
        }
    }
}

impl From<PresenceError> for ApiError {
    fn from(error: PresenceError) -> Self {
        match error {
            PresenceError::NotKept(topic) => Self::PresenceNotKept(topic),
            PresenceError::Bus(bus) => Self::from(bus),
        }
    }
}

impl From<TopicError> for ApiError {
    fn from(error: TopicError) -> Self {
        Self::Topic(error)
    }
}

impl From<Breach> for ApiError {
    fn from(breach: Breach) -> Self {
        match breach {
            Breach::TooLarge { limit } => Self::EventTooLarge { limit },
            _ => Self::Validation(ValidationError {
                field: breach.field(),
                message: breach.to_string(),
            }),
        }
    }
}

impl From<TicketError> for ApiError {
    fn from(error: TicketError) -> Self {
        match &error {
            TicketError::Redis(redis) => Self::from_redis(redis, &error),
            TicketError::Full => Self::Unavailable("too many stream tickets are waiting; retry"),
            TicketError::UserLimit => Self::TooManyTickets {
                limit: crate::tickets::MAX_TICKETS_PER_USER,
            },
            TicketError::Refused(auth) => Self::from(auth.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_of(error: &ApiError) -> String {
        let bytes = error
            .error_response()
            .into_body()
            .try_into_bytes()
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn redis_trouble_is_a_503_that_names_no_internals() {
        let away = fred::error::Error::new(
            fred::error::ErrorKind::IO,
            "Connection reset by 10.0.0.7:6379",
        );
        let error = ApiError::from(BusError::Redis(away));
        assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        let body = body_of(&error);
        assert!(
            !body.contains("10.0.0.7") && !body.contains("reset"),
            "{body}"
        );
    }

    #[test]
    fn a_stopping_instance_is_a_503() {
        let error = ApiError::from(BusError::Stopping);
        assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn a_slot_on_the_move_is_a_503() {
        use fred::error::{Error, ErrorKind};
        for moving in [
            Error::new(ErrorKind::Unknown, "Too many failed write attempts."),
            Error::new(
                ErrorKind::Unknown,
                "TRYAGAIN Multiple keys request during rehashing of slot",
            ),
            Error::new(ErrorKind::Routing, "Too many redirections."),
        ] {
            let error = ApiError::from(BusError::Redis(moving));
            assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }

    #[test]
    fn a_script_error_is_a_500_with_a_request_id_and_no_redis_words() {
        let script = fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            "ERR Invalid stream ID specified as stream command argument script: 3f2a9c",
        );
        let error = ApiError::from(BusError::Redis(script));
        assert_eq!(error.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(&error);
        assert!(body.contains("request id"), "{body}");
        assert!(!body.contains("ERR") && !body.contains("3f2a9c"), "{body}");
        let corrupt = serde_json::from_str::<u8>("x").expect_err("not a number");
        let error = ApiError::from(StoreError::Corrupt(corrupt));
        assert_eq!(error.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
