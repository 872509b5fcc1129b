//! Server-Sent Events read off an HTTP response, frame by frame.

use std::{pin::Pin, time::Duration};

use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::PATIENCE;

/// One SSE frame: an event, a bare `retry:`, or a comment (parsed by the same code the
/// load generator and the carrier tests use).
pub use raw_sse::Fields as Frame;

/// A frame's data as JSON.
pub trait FrameJson {
    fn json(&self) -> Value;
}

impl FrameJson for Frame {
    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("frame has data"))
            .expect("frame data is JSON")
    }
}

/// Reads frames off a `text/event-stream` response.
pub struct SseStream {
    pub headers: reqwest::header::HeaderMap,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    /// Everything read so far, verbatim.
    pub raw: String,
}

impl SseStream {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            headers: response.headers().clone(),
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            raw: String::new(),
        }
    }

    /// The next frame of any kind; `None` when the server ended the stream.
    pub async fn next_frame_within(&mut self, wait: Duration) -> Option<Option<Frame>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(Some(Frame::parse(&block)));
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(None),
                Ok(Some(Ok(chunk))) => {
                    let text = std::str::from_utf8(&chunk).expect("stream is UTF-8");
                    self.raw.push_str(text);
                    self.buffer.push_str(text);
                }
            }
        }
    }

    /// The next frame that carries data, skipping comments and `retry:`; panics if none
    /// arrives in time or the stream ends.
    pub async fn next_event(&mut self) -> Frame {
        loop {
            match self.next_frame_within(PATIENCE).await {
                None => panic!("no event within {PATIENCE:?}; read so far:\n{}", self.raw),
                Some(None) => panic!("stream ended; read so far:\n{}", self.raw),
                Some(Some(frame)) if frame.data.is_some() => return frame,
                Some(Some(_)) => continue,
            }
        }
    }

    /// Asserts that no event arrives for `wait`.
    pub async fn expect_no_event(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame_within(left).await {
                None => return,
                Some(Some(frame)) if frame.data.is_some() => {
                    panic!("unexpected event: {frame:?}")
                }
                Some(Some(_)) => continue,
                Some(None) => panic!("stream ended"),
            }
        }
    }

    /// Waits for the server to end the stream; panics if it does not in time.
    pub async fn expect_end(&mut self) {
        loop {
            match self.next_frame_within(PATIENCE).await {
                None => panic!("stream still open after {PATIENCE:?}"),
                Some(None) => return,
                Some(Some(_)) => continue,
            }
        }
    }
}
