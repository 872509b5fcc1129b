use actix_web::{HttpResponse, http::header, web};
use events::StreamTicket;

use crate::{clock, error::ApiError, routes::extract::AuthenticatedUser, state::AppState};

/// `POST /api/stream-tickets`: a single-use ticket to open the caller's stream with, for
/// browsers, whose EventSource cannot send the token in a header (see `crate::tickets`).
/// The handle is in the body; its secret in an HttpOnly cookie only `/api/events` gets.
#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
pub async fn issue(
    user: AuthenticatedUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let issued = state.tickets.issue(&user.0).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::SET_COOKIE, issued.cookie()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(StreamTicket {
            ticket: issued.handle,
            expires_at: clock::rfc3339(issued.expires_at),
        }))
}
