use actix_web::{HttpResponse, web};
use events::{Health, ReadinessReport};

use crate::state::AppState;

/// `GET /healthz`: the process is up and serving (says nothing of Redis: see `/readyz`).
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        server_id: state.server_id.clone(),
    })
}

/// `GET /readyz`: whether load balancers should send traffic here. 503 while draining,
/// while the Redis subscription probe is not coming back, or while the instance holds all
/// the streams it may.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let check = state.readiness.check().and_then(|()| {
        if state.hub.is_full() {
            Err("holding all the streams it may (MAX_STREAMS)")
        } else {
            Ok(())
        }
    });
    let (mut response, reason) = match check {
        Ok(()) => (HttpResponse::Ok(), None),
        Err(reason) => (HttpResponse::ServiceUnavailable(), Some(reason.to_string())),
    };
    response.json(ReadinessReport {
        ready: reason.is_none(),
        server_id: state.server_id.clone(),
        reason,
    })
}

/// `GET /metrics`: every metric of this instance, in the Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let metrics = &state.metrics;
    metrics
        .probe_round_trip
        .set(state.readiness.probe_round_trip().as_secs_f64());
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.encode())
}
