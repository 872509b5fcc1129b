use actix_web::{HttpRequest, HttpResponse, web};
use events::{BROADCAST_USER_ID, Envelope, PublishRequest, ValidationError};

use crate::{
    bus::{Guard, Publication},
    error::ApiError,
    routes::extract::Publisher,
    state::AppState,
};

/// `POST /api/publish`: how other services publish an event to a user, or to everyone
/// (`"broadcast": true`). Answers 202 with the event as it will be delivered (its id,
/// epoch, server id and publication time) once it is in the history and on its way.
///
/// With an `Idempotency-Key` header, a retry within ten minutes publishes nothing and
/// answers 202 with the first call's event (and `Idempotent-Replayed: true`).
#[tracing::instrument(skip_all, fields(event_type = %body.event_type))]
pub async fn publish(
    req: HttpRequest,
    _publisher: Publisher,
    state: web::Data<AppState>,
    super::JsonObject(body): super::JsonObject<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    let PublishRequest {
        user_id,
        broadcast,
        event_type,
        data,
    } = body;
    let recipient = match (user_id, broadcast) {
        (Some(_), true) => {
            return Err(invalid(
                "userId",
                "give either userId or broadcast: true, not both",
            ));
        }
        (None, false) => return Err(invalid("userId", "is required (or broadcast: true)")),
        (None, true) => BROADCAST_USER_ID.to_string(),
        // `*` names every user only through `broadcast: true`.
        (Some(user_id), false) if user_id == BROADCAST_USER_ID => {
            return Err(invalid(
                "userId",
                "`*` is not a user id; use broadcast: true",
            ));
        }
        (Some(user_id), false) => user_id,
    };
    state.limits.rules().event(&recipient, &event_type, &data)?;
    let guard = Guard {
        idempotency_key: super::idempotency_key(&req)?,
        version: None,
    };
    let publication = state
        .bus
        .publish_guarded(Envelope::new(recipient, event_type, data), guard)
        .await?;
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
