use actix_web::{HttpRequest, HttpResponse, web};
use events::{BROADCAST_USER_ID, Envelope, PublishRequest, ValidationError, event_type};

use crate::{auth::Publisher, error::ApiError, state::AppState};

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
        (Some(user_id), false) => {
            events::validate_user_id(&user_id).map_err(|message| invalid("userId", message))?;
            user_id
        }
    };
    if u64::try_from(data.json().len()).unwrap_or(u64::MAX) > state.limits.max_event_bytes {
        return Err(ApiError::EventTooLarge {
            limit: state.limits.max_event_bytes,
        });
    }
    if data.depth() > events::MAX_PAYLOAD_DEPTH {
        return Err(invalid(
            "data",
            &format!(
                "nests arrays and objects more than {} deep",
                events::MAX_PAYLOAD_DEPTH
            ),
        ));
    }
    if !event_type::is_publishable(&event_type) {
        return Err(invalid(
            "eventType",
            "must be lowercase dot-separated segments like `orders.shipped`, at most 64 bytes, \
             outside the reserved `stream.` domain",
        ));
    }
    let key = idempotency_key(&req)?;
    let publication = state
        .bus
        .publish_once(Envelope::new(recipient, event_type, data), key)
        .await?;
    let mut response = HttpResponse::Accepted();
    if publication.replayed {
        response.insert_header(("idempotent-replayed", "true"));
    }
    Ok(response.json(publication.envelope))
}

/// The longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 100;

/// The request's `Idempotency-Key`: 1 to 100 characters from `A-Z a-z 0-9 _ - . :`
/// (a UUID, say), as it becomes part of a Redis key.
fn idempotency_key(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
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

fn invalid(field: &'static str, message: &str) -> ApiError {
    ValidationError {
        field,
        message: message.to_string(),
    }
    .into()
}
