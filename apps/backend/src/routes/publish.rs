use actix_web::{HttpRequest, HttpResponse, web};
use events::{BROADCAST_USER_ID, Envelope, PublishRequest, ValidationError};

use crate::{
    auth::PublishRight,
    bus::{Guard, Publication},
    error::ApiError,
    routes::extract::Publisher,
    state::AppState,
    topics::TopicError,
};

/// `POST /api/publish`: how other services publish an event to a user, to a topic's
/// subscribers (`topic`), or to everyone (`"broadcast": true`); and how a user publishes
/// to a topic their token's `publishTopics` claim allows (the event then names them in
/// `publisherId`). Answers 202 with the event as it will be delivered (its id, epoch,
/// server id and publication time) once it is in the history and on its way.
///
/// With an `Idempotency-Key` header, a retry within ten minutes publishes nothing and
/// answers 202 with the first call's event (and `Idempotent-Replayed: true`).
#[tracing::instrument(skip_all, fields(event_type = %body.event_type))]
pub async fn publish(
    req: HttpRequest,
    Publisher(right): Publisher,
    state: web::Data<AppState>,
    super::JsonObject(body): super::JsonObject<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    let PublishRequest {
        user_id,
        topic,
        broadcast,
        event_type,
        data,
    } = body;
    let one_of = "give exactly one of userId, topic and broadcast: true";
    let envelope = match (user_id, topic, broadcast) {
        (None, None, false) => return Err(invalid("userId", one_of)),
        (Some(_), Some(_), _) | (Some(_), _, true) | (_, Some(_), true) => {
            return Err(invalid("userId", one_of));
        }
        (None, None, true) => Envelope::new(BROADCAST_USER_ID, event_type, data),
        // `*` names every user only through `broadcast: true`.
        (Some(user_id), None, false) if user_id == BROADCAST_USER_ID => {
            return Err(invalid(
                "userId",
                "`*` is not a user id; use broadcast: true",
            ));
        }
        (Some(user_id), None, false) => Envelope::new(user_id, event_type, data),
        (None, Some(topic), false) => {
            events::validate_topic(&topic).map_err(|rule| TopicError::Invalid {
                topic: topic.chars().take(events::MAX_TOPIC_CHARS).collect(),
                rule,
            })?;
            Envelope::to_topic(topic, event_type, data)
        }
    };
    let envelope = match (right, &envelope.topic) {
        (PublishRight::Any, _) => envelope,
        (PublishRight::Topics { .. }, None) => {
            return Err(crate::auth::AuthError::MayNotPublish.into());
        }
        (PublishRight::Topics { user_id, patterns }, Some(topic)) => {
            if !events::patterns_allow(&patterns, topic) {
                return Err(TopicError::Forbidden(topic.clone()).into());
            }
            Envelope {
                publisher_id: Some(user_id),
                ..envelope
            }
        }
    };
    state.limits.rules().envelope(&envelope)?;
    let key = super::idempotency_key(&req)?;
    // A user's keys are their own: two users of one topic never replay (or block) each
    // other's publish with the same key.
    let user_key = envelope
        .publisher_id
        .as_ref()
        .zip(key)
        .map(|(user, key)| format!("u:{user}:{key}"));
    if let Some(user) = &envelope.publisher_id
        && !state.user_publishes.admit(user)
    {
        return Err(ApiError::TooManyPublishes {
            limit: state.user_publishes.per_second(),
        });
    }
    let guard = Guard {
        idempotency_key: user_key.as_deref().or(key),
        version: None,
    };
    let publication = state.bus.publish_guarded(envelope, guard).await?;
    match publication {
        Publication::New(envelope) => Ok(HttpResponse::Accepted().json(envelope)),
        Publication::Replayed(envelope) => Ok(HttpResponse::Accepted()
            .insert_header(super::REPLAYED)
            .json(envelope)),
        Publication::Superseded => Err(ApiError::internal(
            &"a publish without a version was superseded",
        )),
    }
}

fn invalid(field: &'static str, message: &str) -> ApiError {
    ValidationError {
        field,
        message: message.to_string(),
    }
    .into()
}
