use actix_web::{HttpResponse, http::header, web};
use events::{StreamTicket, StreamTicketRequest};

use crate::{clock, error::ApiError, routes::extract::AuthenticatedUser, state::AppState, topics};

/// `POST /api/stream-tickets`: a single-use ticket to open the caller's stream with, for
/// browsers, whose EventSource cannot send the token in a header (see `crate::tickets`).
/// The handle is in the body; its secret in an HttpOnly cookie only `/api/events` gets.
/// An optional body `{"topics": [...]}` names the topics the stream will carry: checked
/// here, so that a page learns of a refusal (403 `topic_forbidden`) in words, which an
/// EventSource never shows it.
#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
pub async fn issue(
    user: AuthenticatedUser,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let asked = if body.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        let request: StreamTicketRequest = super::json_object(&body)?;
        request.topics
    };
    let limit = usize::try_from(state.limits.max_topics_per_stream).unwrap_or(usize::MAX);
    let topics = topics::named(asked, limit)?;
    state.topics.authorize(&user.0, &topics).await?;
    let issued = state.tickets.issue(&user.0, &topics).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::SET_COOKIE, issued.cookie()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(StreamTicket {
            ticket: issued.handle,
            expires_at: clock::rfc3339(issued.expires_at),
        }))
}
