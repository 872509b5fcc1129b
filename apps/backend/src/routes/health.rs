use actix_web::{HttpResponse, web};
use events::Health;

use crate::state::AppState;

/// `GET /healthz`: the process is up and serving.
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        server_id: state.server_id.clone(),
    })
}
