use actix_web::{HttpRequest, HttpResponse, web};
use events::{Account, CreateAccountRequest};

use crate::{
    clock, error::ApiError, routes::extract::AuthenticatedUser, state::AppState, store::Insertion,
};

/// `POST /api/accounts`: creates an account for the caller, then asks the snapshot
/// service (asynchronously) to snapshot the caller's accounts.
///
/// With an `Idempotency-Key` header, a retry within ten minutes creates nothing and
/// answers 201 with the account the first call created (and `Idempotent-Replayed: true`).
#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
pub async fn create(
    req: HttpRequest,
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
    let key = super::idempotency_key(&req)?;
    let insertion = state
        .store
        .insert_account(&account, state.limits.max_accounts_per_user, key)
        .await?;
    let mut response = HttpResponse::Created();
    let account = match insertion {
        Insertion::Inserted => account,
        Insertion::LimitReached => {
            return Err(ApiError::LimitReached(
                "this user has as many accounts as allowed (MAX_ACCOUNTS_PER_USER)",
            ));
        }
        // The first call may have stored it and then failed (Redis answered too late),
        // before asking for snapshots: ask now. A generation that adds nothing new is
        // not published (see the snapshot service).
        Insertion::Replayed(existing) => {
            response.insert_header(super::REPLAYED);
            existing
        }
    };
    state.snapshots.request(&account.user_id).await;
    Ok(response.json(account))
}

/// `GET /api/accounts`: the caller's accounts, oldest first.
#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
pub async fn list(
    user: AuthenticatedUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.accounts(&user.0.user_id).await?))
}
