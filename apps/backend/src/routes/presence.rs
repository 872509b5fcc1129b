use actix_web::{HttpResponse, http::header, web};

use crate::{
    auth::Caller as Who, error::ApiError, routes::extract::Caller, state::AppState,
    topics::TopicError,
};

/// `GET /api/topics/{topic}/presence`: every user holding a stream of the topic on any
/// instance, each once (`count` exact, `users` the first `PRESENCE_LIST_MAX` to arrive).
/// For a service, or a user whose token (or the host application) allows the topic: the
/// same rule as subscribing to it.
#[tracing::instrument(skip_all)]
pub async fn presence(
    Caller(caller): Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let topic = path.into_inner();
    events::validate_topic(&topic).map_err(|rule| TopicError::Invalid {
        topic: topic.chars().take(events::MAX_TOPIC_CHARS).collect(),
        rule,
    })?;
    if let Who::User(credential) = &caller {
        state
            .topics
            .authorize(credential, std::slice::from_ref(&topic))
            .await?;
    }
    let presence = state.presence.of(&topic).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(presence))
}
