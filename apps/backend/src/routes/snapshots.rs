use actix_web::{HttpResponse, web};

use crate::{error::ApiError, routes::extract::AuthenticatedUser, state::AppState};

/// `GET /api/snapshots`: the caller's latest snapshots, newest first.
#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
pub async fn list(
    user: AuthenticatedUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.snapshots(&user.0.user_id).await?))
}
