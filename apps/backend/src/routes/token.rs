use actix_web::{HttpResponse, web};
use events::{TokenRequest, TokenResponse, ValidationError};

use crate::{clock, error::ApiError, state::AppState};

/// `POST /api/auth/token`: a development token for any user id, granting the topic
/// patterns asked for (`topics`, `publishTopics`). Off in production
/// (`DEV_TOKENS=false`), where the host application mints tokens with the shared secret.
#[tracing::instrument(skip_all)]
pub async fn issue(
    state: web::Data<AppState>,
    super::JsonObject(body): super::JsonObject<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    if !state.dev_tokens {
        return Err(ApiError::Forbidden(
            "development tokens are disabled on this server",
        ));
    }
    events::validate_user_id(&body.user_id).map_err(|message| ValidationError {
        field: "userId",
        message: message.to_string(),
    })?;
    for pattern in body.topics.iter().chain(&body.publish_topics) {
        if !events::is_topic_pattern(pattern) {
            return Err(ValidationError {
                field: "topics",
                message: format!(
                    "{pattern:?} is not a topic pattern: a topic name, a prefix ending in *, or * alone"
                ),
            }
            .into());
        }
    }
    let (token, expires) = state
        .tokens
        .issue_with(&body.user_id, body.topics, body.publish_topics)
        .ok_or(ApiError::Forbidden(
            "this server verifies tokens with a public key only and cannot mint them",
        ))?;
    Ok(HttpResponse::Ok().json(TokenResponse {
        token,
        expires_at: clock::rfc3339(expires),
    }))
}
