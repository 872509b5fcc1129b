use actix_web::{HttpResponse, web};
use events::{Envelope, PublishRequest, ValidationError, event_type};

use crate::{auth::Publisher, error::ApiError, state::AppState};

/// `POST /api/publish`: how other services publish an event to a user. Answers 202 with
/// the event as it will be delivered (its id, server id and publication time).
#[tracing::instrument(skip_all, fields(user_id = %body.user_id, event_type = %body.event_type))]
pub async fn publish(
    _publisher: Publisher,
    state: web::Data<AppState>,
    body: web::Json<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    let PublishRequest {
        user_id,
        event_type,
        data,
    } = body.into_inner();
    events::validate_user_id(&user_id).map_err(|message| ValidationError {
        field: "userId",
        message: message.to_string(),
    })?;
    if !event_type::is_publishable(&event_type) {
        return Err(ValidationError {
            field: "eventType",
            message: "must be lowercase dot-separated segments like `orders.shipped`, at most \
                      64 bytes, outside the reserved `stream.` domain"
                .into(),
        }
        .into());
    }
    let envelope = state
        .bus
        .publish(Envelope::new(user_id, event_type, data), &state.server_id)
        .await?;
    Ok(HttpResponse::Accepted().json(envelope))
}
