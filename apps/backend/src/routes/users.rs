use actix_web::{HttpResponse, web};
use events::{DisconnectRequest, MAX_REASON_CHARS, ValidationError};

use crate::{auth::Publisher, error::ApiError, state::AppState};

/// `POST /api/users/{userId}/disconnect`: ends every open stream of the user, on every
/// instance, each with a `stream.disconnected` frame carrying the reason (logout, ban, a
/// leaked credential). Whoever still holds a valid credential may open a new stream: to
/// keep a user out, the host application stops issuing them tokens as well.
#[tracing::instrument(skip_all, fields(user_id = %path))]
pub async fn disconnect(
    _publisher: Publisher,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Option<super::JsonObject<DisconnectRequest>>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path.into_inner();
    events::validate_user_id(&user_id).map_err(|message| ValidationError {
        field: "userId",
        message: message.to_string(),
    })?;
    let reason = body
        .and_then(|super::JsonObject(body)| body.reason)
        .unwrap_or_else(|| "disconnected by the server".to_string());
    if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(ValidationError {
            field: "reason",
            message: format!(
                "must be at most {MAX_REASON_CHARS} characters, without control characters"
            ),
        }
        .into());
    }
    state.bus.disconnect(&user_id, &reason).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "userId": user_id, "reason": reason })))
}
