use actix_web::{
    HttpRequest, HttpResponse, Responder,
    http::{ConnectionType, header},
    web,
};
use actix_web_lab::sse::Sse;
use events::{Envelope, StreamOpened, event_type};
use futures_util::{StreamExt, stream};

use crate::{auth::AuthenticatedUser, hub, state::AppState};

/// `GET /api/events`: the caller's event stream (`text/event-stream`).
///
/// It starts with `retry:`, then a `stream.opened` frame naming the instance that holds
/// it, then every event published to the user while it is open. Idle streams get a
/// keep-alive comment at the configured interval.
#[tracing::instrument(skip_all, fields(user_id = %user.0))]
pub async fn open(
    req: HttpRequest,
    user: AuthenticatedUser,
    state: web::Data<AppState>,
) -> HttpResponse {
    let events = state.hub.open(&user.0);
    let opened = StreamOpened {
        server_id: state.server_id.clone(),
        user_id: user.0.clone(),
    };
    let opened = Envelope {
        server_id: Some(state.server_id.clone()),
        ..Envelope::new(
            user.0,
            event_type::STREAM_OPENED,
            serde_json::to_value(opened).expect("StreamOpened serializes"),
        )
    };
    let frames = stream::once(async move { hub::encode(&opened) }).chain(events);

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
    response
}
