use actix_web::{HttpResponse, web};
use events::DisconnectRequest;

use crate::{error::ApiError, routes::extract::Service, state::AppState};

/// `POST /api/users/{userId}/disconnect`: ends every open stream of the user, on every
/// instance, each with a `stream.disconnected` frame carrying the reason (logout, ban, a
/// leaked credential). Whoever still holds a valid credential may open a new stream: to
/// keep a user out, the host application stops issuing them tokens as well.
#[tracing::instrument(skip_all, fields(user_id = %path))]
pub async fn disconnect(
    _service: Service,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: Option<super::JsonObject<DisconnectRequest>>,
) -> Result<HttpResponse, ApiError> {
    let user_id = path.into_inner();
    let reason = body
        .and_then(|super::JsonObject(body)| body.reason)
        .unwrap_or_else(|| "disconnected by the server".to_string());
    state.limits.rules().disconnect(&user_id, &reason)?;
    state.bus.disconnect(&user_id, &reason).await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "userId": user_id, "reason": reason })))
}
