//! HTTP handlers: thin, each extracting what it needs and delegating to the domain.

mod accounts;
mod health;
mod publish;
mod snapshots;
mod stream;
mod tickets;
mod token;
mod users;

use actix_web::web;

pub use health::{healthz, metrics, readyz};

/// Mounts everything under `/api`.
pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/token", web::post().to(token::issue))
        .route("/accounts", web::post().to(accounts::create))
        .route("/accounts", web::get().to(accounts::list))
        .route("/snapshots", web::get().to(snapshots::list))
        .route("/events", web::get().to(stream::open))
        .route("/stream-tickets", web::post().to(tickets::issue))
        .route("/publish", web::post().to(publish::publish))
        .route(
            "/users/{user_id}/disconnect",
            web::post().to(users::disconnect),
        );
}
