use actix_web::{
    HttpRequest, HttpResponse, Responder,
    http::{ConnectionType, header},
    web,
};
use actix_web_lab::sse::Sse;
use events::{Cursor, Envelope, ResyncScope, StreamOpened, event_type};
use futures_util::{StreamExt, stream};
use serde::Deserialize;

use crate::{
    auth::AuthenticatedUser, delivery::StreamContext, error::ApiError, hub::Published,
    metrics::ResumeOutcome, state::AppState,
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResumeQuery {
    /// For clients that open a new EventSource themselves and so cannot set the
    /// `Last-Event-ID` header.
    last_event_id: Option<String>,
}

/// `GET /api/events`: the caller's event stream (`text/event-stream`).
///
/// It starts with `retry:`, then a `stream.opened` frame naming the instance that holds
/// it; then, when resuming (`Last-Event-ID` header or `lastEventId` query parameter),
/// every event missed since that id, or a `stream.resync` frame when they cannot all be
/// replayed; then every event published to the user or broadcast while it is open. Idle
/// streams get a keep-alive comment at the configured interval.
#[tracing::instrument(skip_all, fields(user_id = %user.0))]
pub async fn open(
    req: HttpRequest,
    user: AuthenticatedUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.readiness.is_draining() {
        return Err(ApiError::Unavailable(
            "this instance is shutting down; reconnect".into(),
        ));
    }
    let requested = requested_cursor(&req);
    // Registered before history is read, so nothing published in between is missed.
    let deliveries = state.hub.open(&user.0);
    let context = StreamContext {
        bus: state.bus.clone(),
        metrics: state.metrics.clone(),
        user_id: user.0.clone(),
        server_id: state.server_id.clone(),
    };

    let (opened_at, mut cursor, mut opening, resuming) = match requested {
        Some(Ok(requested)) => (requested, requested, Vec::new(), true),
        unknown => {
            let head = Cursor {
                user: context.head(ResyncScope::User).await?,
                broadcast: context.head(ResyncScope::Broadcast).await?,
            };
            let mut frames = Vec::new();
            if unknown.is_some() {
                // An id we did not write: the client's state is of unknown age.
                frames.push(context.resync_frame(
                    ResyncScope::User,
                    "unreadable Last-Event-ID",
                    &head,
                ));
            }
            (head, head, frames, false)
        }
    };
    let mut outcome = if opening.is_empty() {
        ResumeOutcome::fresh
    } else {
        ResumeOutcome::resync
    };
    if resuming {
        outcome = ResumeOutcome::up_to_date;
        for scope in [ResyncScope::User, ResyncScope::Broadcast] {
            let caught_up = context.catch_up(&mut cursor, scope).await?;
            opening.extend(caught_up.frames);
            // The most telling outcome of the two histories wins.
            outcome = outcome.max(caught_up.outcome);
        }
    }
    state.metrics.resumed(outcome);

    let opened = Envelope {
        server_id: Some(state.server_id.clone()),
        ..Envelope::new(
            user.0.clone(),
            event_type::STREAM_OPENED,
            serde_json::to_value(StreamOpened {
                server_id: state.server_id.clone(),
                user_id: user.0,
            })
            .expect("StreamOpened serializes"),
        )
    };
    let opened = Published::new(&opened).frame(Some(opened_at.to_string()));
    let frames = stream::iter(std::iter::once(opened).chain(opening))
        .chain(context.live(deliveries, cursor));

    let mut response = Sse::from_infallible_stream(frames)
        .with_keep_alive(state.keep_alive)
        .with_retry_duration(state.sse_retry)
        .respond_to(&req)
        .map_into_boxed_body();
    // Tells nginx (and similar proxies) not to buffer the stream.
    response.headers_mut().insert(
        header::HeaderName::from_static("x-accel-buffering"),
        header::HeaderValue::from_static("no"),
    );
    // A stream's connection is never reused: when the server ends the stream (at
    // shutdown, or for a slow client), the connection closes with it, so shutdown does
    // not wait for idle keep-alive connections and the client reconnects at once.
    response
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    Ok(response)
}

/// The cursor the client resumes from: the `Last-Event-ID` header (sent by the
/// browser's own reconnection), else the `lastEventId` query parameter.
fn requested_cursor(req: &HttpRequest) -> Option<Result<Cursor, events::BadCursor>> {
    let header = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let id = header.or_else(|| {
        web::Query::<ResumeQuery>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.into_inner().last_event_id)
    })?;
    if id.trim().is_empty() {
        return None;
    }
    Some(id.parse())
}
