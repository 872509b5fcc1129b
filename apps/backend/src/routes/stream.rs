use actix_web::{
    HttpRequest, HttpResponse, Responder, ResponseError,
    http::{ConnectionType, Version, header},
    web,
};
use actix_web_lab::sse::{self, Sse};
use futures_util::StreamExt;

use crate::{
    carrier::StreamRequest, error::ApiError, frame::Frame, metrics::Carrier, state::AppState,
};

/// `GET /api/events`: the caller's event stream (`text/event-stream`), when actix-web
/// carries it.
///
/// Most streams never get here: a fresh connection whose first request is this one is
/// served straight off the socket by [`crate::direct`]. This handler serves the rest (a
/// stream asked for on a connection that already carried other requests, or a request
/// head too large to be peeked), with the same headers and the same frames: `retry:`,
/// then those of `delivery::open`; idle streams get a keep-alive comment at the
/// configured interval. `sse_streams_carried_total{carrier}` counts which layer served.
///
/// One difference remains, below the handler's reach: on HTTP/1.1 the body is chunked.
/// A client that closes its side (FIN) has left, on either carrier; a stalled client is
/// cut off by the hub when its queue fills.
pub async fn open(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let mut response = match stream(&req, &state).await {
        Ok(response) => response,
        Err(error) => error.error_response(),
    };
    // A stream's connection is never reused, whether the stream was refused or ends:
    // the connection closes with it, so shutdown does not wait for idle keep-alive
    // connections and the client reconnects at once (as the direct carrier does).
    response
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    // HTTP/1.0 has no chunked coding (RFC 9112 §7): its body ends with the connection,
    // as every direct stream's does.
    if req.version() < Version::HTTP_11 {
        response.head_mut().no_chunking(true);
    }
    response
}

async fn stream(req: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    let (frames, _) = StreamRequest::of(req).open(state, None).await?;
    state.metrics.stream_carried(Carrier::actix);

    let frames = frames.filter(|frame| std::future::ready(frame.is_framable()));
    let mut response = Sse::from_infallible_stream(frames.map(sse_event))
        .with_keep_alive(state.keep_alive)
        .with_retry_duration(state.sse_retry)
        .respond_to(req)
        .map_into_boxed_body();
    // Tells nginx (and similar proxies) not to buffer the stream.
    response.headers_mut().insert(
        header::HeaderName::from_static("x-accel-buffering"),
        header::HeaderValue::from_static("no"),
    );
    Ok(response)
}

fn sse_event(frame: Frame) -> sse::Event {
    let data = sse::Data::new(frame.data);
    let data = match frame.event {
        Some(event) => data.event(event),
        None => data,
    };
    match frame.id {
        Some(id) => data.id(id).into(),
        None => data.into(),
    }
}
