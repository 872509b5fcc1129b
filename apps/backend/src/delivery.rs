//! What one stream sends: where it resumes, what it replays, and how it keeps its
//! sequence whole while live.
//!
//! Each stream holds a [`Cursor`]: the last position it sent in the user's history and in
//! the broadcast history. Every frame's `id:` is the cursor after that frame, so the
//! browser's `Last-Event-ID` is always exactly where to resume. The stream is registered
//! with the hub *before* history is read, so nothing published in between is lost; what
//! arrives twice (in history and live) is dropped by sequence number; a live event that
//! skips ahead (a Pub/Sub message was lost) makes the stream fetch the missing ones from
//! history first. When history cannot fill a gap, the stream says so with a
//! `stream.resync` frame: loss is never silent.

use std::sync::Arc;

use actix_web::web;
use events::{
    BadCursor, Cursor, Envelope, Position, Resync, ResyncScope, StreamOpened, event_type,
};
use futures_util::{Stream, StreamExt, stream};
use serde::Deserialize;

use crate::{
    bus::{Bus, BusError, HistoryRead, Topic, now_millis},
    error::ApiError,
    hub::{Delivery, EventStream, Frame, Published},
    metrics::{Metrics, ResumeOutcome},
    state::AppState,
};

/// Where a client asks its stream to resume: the `Last-Event-ID` header (sent by the
/// browser's own reconnection), else the `lastEventId` query parameter (for clients that
/// open a new EventSource themselves and so cannot set the header). `None`: start at the
/// head.
pub fn resume_point(
    last_event_id_header: Option<&str>,
    query: &str,
) -> Option<Result<Cursor, BadCursor>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ResumeQuery {
        last_event_id: Option<String>,
    }
    let id = last_event_id_header.map(str::to_string).or_else(|| {
        web::Query::<ResumeQuery>::from_query(query)
            .ok()
            .and_then(|q| q.into_inner().last_event_id)
    })?;
    if id.trim().is_empty() {
        return None;
    }
    Some(id.parse())
}

/// Opens a stream for `user_id`, whichever HTTP layer carries it: registers it with the
/// hub, then works out where it starts. Its frames are a `stream.opened` naming this
/// instance; when resuming, every event missed since `resume_from` (or a `stream.resync`
/// when they cannot all be replayed); then every event published to the user or
/// broadcast while it is open. Fails while the instance drains, or when history cannot
/// be read.
#[tracing::instrument(skip_all, fields(user_id = %user_id))]
pub async fn open(
    state: &AppState,
    user_id: String,
    resume_from: Option<Result<Cursor, BadCursor>>,
) -> Result<impl Stream<Item = Frame> + use<>, ApiError> {
    if state.readiness.is_draining() {
        return Err(ApiError::Unavailable(
            "this instance is shutting down; reconnect".into(),
        ));
    }
    // Registered before history is read, so nothing published in between is missed.
    let deliveries = state.hub.open(&user_id);
    let context = StreamContext {
        bus: state.bus.clone(),
        metrics: state.metrics.clone(),
        user_id,
        server_id: state.server_id.clone(),
    };

    let (opened_at, mut cursor, mut opening, resuming) = match resume_from {
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
            context.user_id.clone(),
            event_type::STREAM_OPENED,
            serde_json::to_value(StreamOpened {
                server_id: state.server_id.clone(),
                user_id: context.user_id.clone(),
            })
            .expect("StreamOpened serializes"),
        )
    };
    let opened = Published::new(&opened).frame(Some(opened_at.to_string()));
    Ok(
        stream::iter(std::iter::once(opened).chain(opening))
            .chain(context.live(deliveries, cursor)),
    )
}

/// The context a stream runs in.
#[derive(Debug, Clone)]
pub struct StreamContext {
    pub bus: Arc<Bus>,
    pub metrics: Arc<Metrics>,
    pub user_id: String,
    pub server_id: String,
}

/// The frames that bring a stream up to date, and what kind of catching up it was.
#[derive(Debug)]
pub struct CatchUp {
    pub frames: Vec<Frame>,
    pub outcome: ResumeOutcome,
}

impl StreamContext {
    fn topic(&self, scope: ResyncScope) -> Topic {
        match scope {
            ResyncScope::User => Topic::User(self.user_id.clone()),
            ResyncScope::Broadcast => Topic::Broadcast,
        }
    }

    /// At most this many events are read from history at once: all that is kept.
    fn read_limit(&self) -> usize {
        usize::try_from(self.bus.retention().max_len).unwrap_or(usize::MAX)
    }

    /// Brings `cursor`'s position in `scope` up to the head of that history, returning
    /// the frames to send on the way (a resync, replayed events), each carrying the
    /// cursor as it stands after it.
    pub async fn catch_up(
        &self,
        cursor: &mut Cursor,
        scope: ResyncScope,
    ) -> Result<CatchUp, BusError> {
        let topic = self.topic(scope);
        let at = position(cursor, scope);
        let mut step = reconcile(at, &self.bus.read(&topic, at.seq, self.read_limit()).await?);
        if step.reread_from_start {
            let again = reconcile(step.to, &self.bus.read(&topic, 0, self.read_limit()).await?);
            step = Step {
                resync: step.resync.or(again.resync),
                ..again
            };
        }

        let mut frames = Vec::with_capacity(step.replay.len() + 1);
        if let Some(reason) = step.resync {
            *position_mut(cursor, scope) = step.resync_to;
            frames.push(self.resync_frame(scope, reason, cursor));
            tracing::info!(user_id = %self.user_id, ?scope, reason, "stream resynchronised");
        }
        for envelope in &step.replay {
            if let Some(p) = envelope.position() {
                *position_mut(cursor, scope) = p;
                frames.push(Published::new(envelope).frame(Some(cursor.to_string())));
                self.delivered(&envelope.event_type);
            }
        }
        *position_mut(cursor, scope) = step.to;
        let outcome = if step.resync.is_some() {
            ResumeOutcome::resync
        } else if step.replay.is_empty() {
            ResumeOutcome::up_to_date
        } else {
            ResumeOutcome::replayed
        };
        Ok(CatchUp { frames, outcome })
    }

    fn delivered(&self, event_type: &str) {
        self.metrics
            .events_delivered
            .get_or_create(&self.metrics.event_labels(event_type))
            .inc();
    }

    /// Counts a live event on its way to the connection, with its delivery latency.
    fn delivered_live(&self, published: &Published) {
        match &published.delivered {
            Some(counter) => {
                counter.inc();
            }
            None => self.delivered(&published.event_type),
        }
        if let Some(at) = published.published_at {
            let latency_ms = now_millis().saturating_sub(at);
            self.metrics
                .delivery_latency
                .observe(latency_ms as f64 / 1000.0);
        }
    }

    /// The head of `scope`'s history: where a stream that asks for nothing starts.
    pub async fn head(&self, scope: ResyncScope) -> Result<Position, BusError> {
        Ok(self.bus.read(&self.topic(scope), u64::MAX, 0).await?.head)
    }

    pub fn resync_frame(&self, scope: ResyncScope, reason: &str, cursor: &Cursor) -> Frame {
        let data = Resync {
            scope,
            reason: reason.to_string(),
        };
        let envelope = Envelope {
            server_id: Some(self.server_id.clone()),
            ..Envelope::new(
                self.user_id.clone(),
                event_type::STREAM_RESYNC,
                serde_json::to_value(data).expect("Resync serializes"),
            )
        };
        Published::new(&envelope).frame(Some(cursor.to_string()))
    }

    /// The live part of a stream: every delivery from the hub, deduplicated and made
    /// contiguous against `cursor`. Ends when the hub closes the stream, or when history
    /// is needed but cannot be read (the client then resumes from its last id).
    pub fn live(
        self,
        mut deliveries: EventStream,
        mut cursor: Cursor,
    ) -> impl Stream<Item = Frame> {
        async_stream::stream! {
            while let Some(delivery) = deliveries.next().await {
                // Past this match only the rare paths remain: catching up from history.
                let scopes = match &delivery {
                    Delivery::CatchUp => vec![ResyncScope::User, ResyncScope::Broadcast],
                    Delivery::Event(published) => {
                        let scope = if published.broadcast { ResyncScope::Broadcast } else { ResyncScope::User };
                        match published.position {
                            // Bypassed the backend: no position, delivered as it is.
                            None => {
                                self.delivered_live(published);
                                yield published.frame(None);
                                continue;
                            }
                            Some(p) => match arrival(position(&cursor, scope), p) {
                                // Already sent (from history, at the seam).
                                Arrival::Duplicate => continue,
                                Arrival::Next => {
                                    *position_mut(&mut cursor, scope) = p;
                                    self.delivered_live(published);
                                    yield published.frame(Some(cursor.to_string()));
                                    continue;
                                }
                                // History has what is missing, this event included.
                                Arrival::Gap => vec![scope],
                            },
                        }
                    }
                };
                for scope in scopes {
                    // Boxed: its reads are large futures, and a stream keeps its state
                    // for as long as it lives, while catching up is rare.
                    match Box::pin(self.catch_up(&mut cursor, scope)).await {
                        Ok(caught_up) => for frame in caught_up.frames { yield frame; },
                        Err(error) => {
                            tracing::warn!(user_id = %self.user_id, %error, "cannot read history; closing the stream so the client resumes");
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn position(cursor: &Cursor, scope: ResyncScope) -> Position {
    match scope {
        ResyncScope::User => cursor.user,
        ResyncScope::Broadcast => cursor.broadcast,
    }
}

fn position_mut(cursor: &mut Cursor, scope: ResyncScope) -> &mut Position {
    match scope {
        ResyncScope::User => &mut cursor.user,
        ResyncScope::Broadcast => &mut cursor.broadcast,
    }
}

/// How a live event at `p` relates to a stream at `at` in the same history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// Sent already.
    Duplicate,
    /// The very next one: send it.
    Next,
    /// Events are missing before it, or the history restarted.
    Gap,
}

/// Pure, like [`reconcile`], and with its notion of one history's life: a stream that
/// opened before anything was published (at the default position) is in the life of
/// whatever epoch comes first, so the first event ever published reaches it directly
/// instead of sending every open stream to history at once.
fn arrival(at: Position, p: Position) -> Arrival {
    let same_life = p.epoch == at.epoch || at == Position::default();
    if !same_life {
        Arrival::Gap
    } else if p.seq <= at.seq {
        Arrival::Duplicate
    } else if p.seq == at.seq + 1 {
        Arrival::Next
    } else {
        Arrival::Gap
    }
}

/// One step from a position towards the head of a history.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    /// Why events between the position and the head cannot all be replayed.
    resync: Option<&'static str>,
    /// Where the position stands right after the resync frame, if any.
    resync_to: Position,
    /// Events to send, in order.
    replay: Vec<Envelope>,
    /// Where the position stands after the replay.
    to: Position,
    /// The history is of another epoch: read it again from its start, from `to`.
    reread_from_start: bool,
}

/// Decides how a stream at `at` reaches the head of `read`, a read of the history after
/// `at.seq`. Pure, so every case is tested below.
fn reconcile(at: Position, read: &HistoryRead) -> Step {
    let head = read.head;
    let done = |resync: Option<&'static str>, to: Position| Step {
        resync,
        resync_to: to,
        replay: Vec::new(),
        to,
        reread_from_start: false,
    };
    if head.epoch == 0 {
        // Nothing has been published, or the history is gone.
        let lost = at.seq > 0;
        return done(lost.then_some("history lost"), Position::default());
    }
    let same_life = at.epoch == head.epoch || at == Position::default();
    if !same_life {
        let start = Position::new(head.epoch, 0);
        return Step {
            reread_from_start: true,
            ..done(Some("history restarted"), start)
        };
    }
    let at = Position::new(head.epoch, at.seq);
    if at.seq > head.seq {
        return done(Some("cursor is ahead of the history"), head);
    }
    if at.seq == head.seq {
        return done(None, at);
    }
    if read.oldest == 0 || read.oldest > at.seq + 1 {
        return done(Some("history trimmed past the requested position"), head);
    }
    let replay: Vec<Envelope> = read
        .events
        .iter()
        .filter(|e| e.id.is_some_and(|id| id > at.seq && id <= head.seq))
        .cloned()
        .collect();
    let to = replay.last().and_then(Envelope::position).unwrap_or(at);
    Step {
        resync: None,
        resync_to: at,
        replay,
        to,
        reread_from_start: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const E: u64 = 1_000;

    fn history(epoch: u64, oldest: u64, head: u64, after: u64) -> HistoryRead {
        HistoryRead {
            head: Position::new(epoch, head),
            oldest,
            events: (oldest.max(after + 1)..=head)
                .filter(|_| oldest > 0)
                .map(|id| Envelope {
                    id: Some(id),
                    epoch: Some(epoch),
                    ..Envelope::new("u", "a.b", Value::Null)
                })
                .collect(),
        }
    }

    fn ids(step: &Step) -> Vec<u64> {
        step.replay.iter().filter_map(|e| e.id).collect()
    }

    #[test]
    fn replays_what_was_missed_in_order() {
        let step = reconcile(Position::new(E, 3), &history(E, 1, 6, 3));
        assert_eq!(step.resync, None);
        assert_eq!(ids(&step), [4, 5, 6]);
        assert_eq!(step.to, Position::new(E, 6));
    }

    #[test]
    fn an_up_to_date_cursor_replays_nothing() {
        let step = reconcile(Position::new(E, 6), &history(E, 1, 6, 6));
        assert_eq!(
            (step.resync, ids(&step), step.to),
            (None, vec![], Position::new(E, 6))
        );
    }

    #[test]
    fn a_cursor_from_before_any_history_replays_it_all() {
        let step = reconcile(Position::default(), &history(E, 1, 2, 0));
        assert_eq!((step.resync, ids(&step)), (None, vec![1, 2]));
    }

    #[test]
    fn trimmed_history_means_resync_at_the_head() {
        let step = reconcile(Position::new(E, 2), &history(E, 5, 9, 2));
        assert_eq!(
            step.resync,
            Some("history trimmed past the requested position")
        );
        assert!(step.replay.is_empty());
        assert_eq!(step.to, Position::new(E, 9));

        let expired = HistoryRead {
            head: Position::new(E, 9),
            oldest: 0,
            events: vec![],
        };
        assert!(reconcile(Position::new(E, 2), &expired).resync.is_some());
    }

    #[test]
    fn another_epoch_means_resync_then_the_new_history_from_its_start() {
        let step = reconcile(Position::new(E, 40), &history(E + 1, 1, 3, 40));
        assert_eq!(step.resync, Some("history restarted"));
        assert!(step.reread_from_start);
        assert_eq!(step.to, Position::new(E + 1, 0));
        let again = reconcile(step.to, &history(E + 1, 1, 3, 0));
        assert_eq!(ids(&again), [1, 2, 3]);
    }

    #[test]
    fn lost_history_means_resync() {
        let step = reconcile(Position::new(E, 4), &HistoryRead::default());
        assert_eq!(step.resync, Some("history lost"));
        assert_eq!(step.to, Position::default());
        assert_eq!(
            reconcile(Position::default(), &HistoryRead::default()).resync,
            None
        );
    }

    #[test]
    fn live_events_are_sent_in_sequence_and_gaps_go_to_history() {
        let at = Position::new(E, 5);
        assert_eq!(arrival(at, Position::new(E, 4)), Arrival::Duplicate);
        assert_eq!(arrival(at, Position::new(E, 5)), Arrival::Duplicate);
        assert_eq!(arrival(at, Position::new(E, 6)), Arrival::Next);
        assert_eq!(arrival(at, Position::new(E, 8)), Arrival::Gap);
        // The history restarted: what this stream missed of the old one is unknown.
        assert_eq!(arrival(at, Position::new(E + 1, 1)), Arrival::Gap);
    }

    #[test]
    fn the_first_event_ever_reaches_streams_opened_before_it_directly() {
        let never = Position::default();
        assert_eq!(arrival(never, Position::new(E, 1)), Arrival::Next);
        assert_eq!(arrival(never, Position::new(E, 3)), Arrival::Gap);
    }

    #[test]
    fn a_cursor_ahead_of_the_history_means_resync() {
        let step = reconcile(Position::new(E, 10), &history(E, 1, 4, 10));
        assert_eq!(step.resync, Some("cursor is ahead of the history"));
        assert_eq!(step.to, Position::new(E, 4));
    }
}
