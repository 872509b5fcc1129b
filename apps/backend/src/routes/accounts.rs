use actix_web::{HttpResponse, web};
use events::{Account, CreateAccountRequest};

use crate::{auth::AuthenticatedUser, clock, error::ApiError, state::AppState};

/// `POST /api/accounts`: creates an account for the caller, then asks the snapshot
/// service (asynchronously) to snapshot the caller's accounts.
#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
pub async fn create(
    user: AuthenticatedUser,
    state: web::Data<AppState>,
    super::JsonObject(body): super::JsonObject<CreateAccountRequest>,
) -> Result<HttpResponse, ApiError> {
    body.validate()?;
    let account = Account {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: user.0.user_id,
        name: body.name.trim().to_string(),
        balance: body.balance,
        created_at: clock::now_rfc3339(),
    };
    let inserted = state
        .store
        .insert_account(&account, state.limits.max_accounts_per_user)
        .await?;
    if !inserted {
        return Err(ApiError::LimitReached(
            "this user has as many accounts as allowed (MAX_ACCOUNTS_PER_USER)",
        ));
    }
    state.snapshots.request(&account.user_id).await;
    Ok(HttpResponse::Created().json(account))
}

/// `GET /api/accounts`: the caller's accounts, oldest first.
#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
pub async fn list(
    user: AuthenticatedUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.accounts(&user.0.user_id).await?))
}
