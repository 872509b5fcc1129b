//! What one stream sends: where it resumes, what it replays, and how it keeps its
//! sequence whole while live.
//!
//! Each stream holds a [`Cursor`]: the last position it sent in the user's history, in
//! the broadcast history and in each of its topics'. Every frame's `id:` is the cursor
//! after that frame, so the
//! browser's `Last-Event-ID` is always exactly where to resume. The stream is registered
//! with the hub *before* history is read, so nothing published in between is lost; what
//! arrives twice (in history and live) is dropped by sequence number; a live event that
//! skips ahead (a Pub/Sub message was lost) makes the stream fetch the missing ones from
//! history first. When history cannot fill a gap, the stream says so with a
//! `stream.resync` frame: loss is never silent.

use std::{sync::Arc, time::Duration};

use events::{
    BadCursor, Cursor, Envelope, Payload, Position, Resync, StreamEnded, StreamOpened,
    TopicPosition, event_type,
};
use futures_util::{Stream, StreamExt, stream};

use crate::{
    auth::Credential,
    bus::{Bus, BusError, Feed, HistoryRead},
    clock::now_millis,
    hub::{
        CarrierEnd, Direct, EventStream, Frame, Hub, Notice, Published, Refused, ShardId, Socket,
    },
    metrics::{Metrics, ResumeOutcome},
    readiness::Readiness,
    sequence::{LiveStep, Scope, StreamTopics, live_step, position, position_mut, stream_topics},
};

/// Where a client asks its stream to resume: the `Last-Event-ID` header (sent by the
/// browser's own reconnection), else the `lastEventId` query parameter (for clients that
/// open a new EventSource themselves and so cannot set the header). `None`: start at the
/// head.
pub fn resume_point(
    last_event_id_header: Option<&str>,
    query: &str,
) -> Option<Result<Cursor, BadCursor>> {
    let id = last_event_id_header
        .map(str::to_string)
        .or_else(|| crate::query::param(query, "lastEventId"))?;
    if id.trim().is_empty() {
        return None;
    }
    Some(id.parse())
}

/// Whether a stream's frames carry their `event:` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Naming {
    /// Each frame is named after its event type, for `addEventListener(type, ...)`.
    #[default]
    Named,
    /// No frame has an `event:` field, so an EventSource's `onmessage` receives every
    /// event, of any type (`?unnamed=true`): for clients that cannot list the types they
    /// will get in advance. The envelope's `eventType` still says which it is.
    Unnamed,
}

impl Naming {
    /// `unnamed=true` (or `1`) in the query asks for unnamed frames.
    pub fn from_query(query: &str) -> Self {
        match crate::query::param(query, "unnamed").as_deref() {
            Some("true" | "1") => Self::Unnamed,
            _ => Self::Named,
        }
    }

    fn is_named(self) -> bool {
        self == Self::Named
    }

    fn apply(self, frame: Frame) -> Frame {
        match self {
            Self::Named => frame,
            Self::Unnamed => frame.unnamed(),
        }
    }
}

/// What opening a stream needs of the instance: its registry of streams, its bus and
/// the limits, and nothing of HTTP.
#[derive(Debug, Clone)]
pub struct Streams {
    pub hub: Hub,
    pub bus: Arc<Bus>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// This instance's name, in each stream's `stream.opened`.
    pub server_id: String,
    /// Streams one user may hold on this instance (what a refusal says).
    pub max_streams_per_user: u64,
    /// At most this many events are replayed in one catch-up.
    pub max_replay: u64,
}

/// Why a stream was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The instance is shutting down: the client should reconnect (elsewhere).
    #[error("this instance is shutting down")]
    Draining,
    /// The instance sheds streams to balance the fleet: the client should go elsewhere.
    #[error("this instance holds more than its share of streams")]
    Rebalancing,
    /// The user holds as many streams here as they may.
    #[error("the user holds {limit} streams here already")]
    UserLimit { limit: u64 },
    /// The instance holds as many streams as it may.
    #[error("this instance holds all the streams it may")]
    InstanceFull,
    /// Its history could not be read.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Opens a stream for the user of `credential` and `topics` (valid names, each once, and
/// allowed to the user: see `topics`), whichever HTTP layer carries it: registers it with
/// the hub, then works out where it starts. Its frames are a `stream.opened` naming this
/// instance; when resuming, every event missed since `resume_from` (or a `stream.resync`
/// when they cannot all be replayed) in each history; then every event published to the
/// user, to its topics or to everyone while it is open; last, when the credential expires
/// or a publisher disconnects the user, a frame that says so. A topic the cursor does not
/// name starts live; one the cursor names and `topics` does not is dropped. Fails while
/// the instance drains or is full, when the user holds too many streams, or when history
/// cannot be read.
///
/// A stream served straight off its `socket` (with its worker's shard) is also written
/// to directly while at rest; its carrier then reports to the returned [`CarrierEnd`].
#[tracing::instrument(skip_all, fields(user_id = %credential.user_id))]
pub async fn open(
    streams: &Streams,
    credential: Credential,
    topics: Vec<String>,
    resume_from: Option<Result<Cursor, BadCursor>>,
    naming: Naming,
    socket: Option<(Arc<tokio::net::TcpStream>, ShardId)>,
) -> Result<(impl Stream<Item = Frame> + use<>, CarrierEnd), OpenError> {
    if streams.readiness.is_draining() {
        return Err(OpenError::Draining);
    }
    if streams.readiness.is_rebalancing() {
        return Err(OpenError::Rebalancing);
    }
    let Credential {
        user_id,
        expires_at,
        ..
    } = credential;
    let topics = stream_topics(&topics);
    // Registered before history is read, so nothing published in between is missed.
    let registered = match socket {
        Some((io, shard)) => {
            let socket = Socket {
                io,
                named: naming.is_named(),
            };
            streams
                .hub
                .open_direct(&user_id, &topics, Direct { socket, shard })
        }
        None => streams.hub.open(&user_id, &topics),
    };
    let notices = registered.map_err(|refused| {
        let (reason, error) = match refused {
            Refused::UserLimit(_) => (
                "user_limit",
                OpenError::UserLimit {
                    limit: streams.max_streams_per_user,
                },
            ),
            Refused::InstanceFull(_) => ("instance_full", OpenError::InstanceFull),
        };
        streams.metrics.stream_refused(reason);
        error
    })?;
    let context = StreamContext {
        bus: streams.bus.clone(),
        metrics: streams.metrics.clone(),
        user_id,
        topics,
        server_id: streams.server_id.clone(),
        max_replay: streams.max_replay,
    };

    let owner = events::owner_tag(&context.user_id);
    let mut opening = Vec::new();
    let (opened_at, cursor, outcome) = match Start::of(resume_from, owner) {
        Start::Fresh => {
            let head = context.head_cursor(owner).await?;
            (head.clone(), head, ResumeOutcome::fresh)
        }
        Start::Resume(requested) => {
            let requested = context.for_topics(requested).await?;
            let mut cursor = requested.clone();
            let mut outcome = ResumeOutcome::up_to_date;
            let mut budget = context.max_replay;
            for scope in context.scopes() {
                let caught_up = context.catch_up(&mut cursor, scope, &mut budget).await?;
                opening.extend(caught_up.frames);
                // The most telling outcome of the histories wins.
                outcome = outcome.max(caught_up.outcome);
            }
            (requested, cursor, outcome)
        }
        Start::Resync(reason) => {
            // Where the client stands is unknown: say so once per history, then send
            // everything still kept, as for a cursor of this user's that history
            // trimmed past.
            let start = Cursor {
                owner,
                topics: context
                    .topics
                    .iter()
                    .map(|(tag, _)| TopicPosition {
                        tag: *tag,
                        at: Position::default(),
                    })
                    .collect(),
                ..Cursor::default()
            };
            let mut cursor = start.clone();
            let mut budget = context.max_replay;
            for scope in context.scopes() {
                let caught_up = context
                    .catch_up_from(&mut cursor, scope, Some(reason), &mut budget)
                    .await?;
                opening.extend(caught_up.frames);
            }
            (start, cursor, ResumeOutcome::resync)
        }
    };
    streams.metrics.resumed(outcome);

    let opened = Envelope {
        server_id: Some(streams.server_id.clone()),
        ..Envelope::new(
            context.user_id.clone(),
            event_type::STREAM_OPENED,
            Payload::of(&StreamOpened {
                server_id: streams.server_id.clone(),
                user_id: context.user_id.clone(),
                topics: context
                    .topics
                    .iter()
                    .map(|(_, name)| name.clone())
                    .collect(),
            })
            .unwrap_or_default(),
        )
    };
    let opened = Published::new(&opened).frame(Some(opened_at.to_string()));
    let lifetime = Duration::from_secs(expires_at.saturating_sub(now_millis() / 1000));
    let carrier = notices.carrier();
    let frames = stream::iter(std::iter::once(opened).chain(opening))
        .chain(context.live(notices, cursor, lifetime))
        .map(move |frame| naming.apply(frame));
    Ok((frames, carrier))
}

/// Where a stream starts, from what its client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// No cursor: at the head of both histories.
    Fresh,
    /// From the client's own cursor: what came after it is replayed.
    Resume(Cursor),
    /// At the head, after telling the client (in both histories) that its state is of
    /// unknown age, for this reason.
    Resync(&'static str),
}

impl Start {
    fn of(resume_from: Option<Result<Cursor, BadCursor>>, owner: u64) -> Self {
        match resume_from {
            None => Self::Fresh,
            Some(Ok(cursor)) if cursor.owner == owner => Self::Resume(cursor),
            // An id written for another user's stream (a page that signed one user out
            // and another in, say): a position in someone else's histories.
            Some(Ok(_)) => Self::Resync("Last-Event-ID of another user's stream"),
            // An id we did not write.
            Some(Err(_)) => Self::Resync("unreadable Last-Event-ID"),
        }
    }
}

/// The context a stream runs in.
#[derive(Debug, Clone)]
pub struct StreamContext {
    pub bus: Arc<Bus>,
    pub metrics: Arc<Metrics>,
    pub user_id: String,
    /// The stream's topics: each one's tag (as its cursor names it) and name.
    pub topics: StreamTopics,
    pub server_id: String,
    /// At most this many events are replayed in one catch-up.
    pub max_replay: u64,
}

/// The frames that bring a stream up to date, and what kind of catching up it was.
#[derive(Debug)]
pub struct CaughtUp {
    pub frames: Vec<Frame>,
    pub outcome: ResumeOutcome,
}

impl StreamContext {
    /// The feed of `scope`; `None` for a topic the stream does not carry.
    fn feed(&self, scope: Scope) -> Option<Feed> {
        match scope {
            Scope::User => Some(Feed::User(self.user_id.clone())),
            Scope::Broadcast => Some(Feed::Broadcast),
            Scope::Topic(tag) => self
                .topic_name(tag)
                .map(|name| Feed::Topic(name.to_string())),
        }
    }

    fn topic_name(&self, tag: u64) -> Option<&str> {
        self.topics
            .iter()
            .find(|(known, _)| *known == tag)
            .map(|(_, name)| name.as_str())
    }

    /// Every history the stream reads: its user's, the broadcasts', each topic's.
    fn scopes(&self) -> Vec<Scope> {
        let topics = self.topics.iter().map(|(tag, _)| Scope::Topic(*tag));
        [Scope::User, Scope::Broadcast]
            .into_iter()
            .chain(topics)
            .collect()
    }

    /// `requested` for this stream's topics: the positions of the topics it names kept,
    /// the topics it does not name at their heads (they start live), the rest dropped.
    async fn for_topics(&self, requested: Cursor) -> Result<Cursor, BusError> {
        let new: Vec<Feed> = self
            .topics
            .iter()
            .filter(|(tag, _)| requested.topic(*tag).is_none())
            .map(|(_, name)| Feed::Topic(name.clone()))
            .collect();
        let mut heads = self.bus.heads(&new).await?.into_iter();
        let topics = self
            .topics
            .iter()
            .map(|(tag, _)| TopicPosition {
                tag: *tag,
                at: requested
                    .topic(*tag)
                    .or_else(|| heads.next())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Cursor {
            topics,
            ..requested
        })
    }

    /// At most this many events are read from history at once: all that is kept, or the
    /// replay limit if that is smaller.
    fn read_limit(&self) -> u64 {
        self.bus.retention().max_len.min(self.max_replay).max(1)
    }

    /// Brings `cursor`'s position in `scope` up to the head of that history, returning
    /// the frames to send on the way (a resync, replayed events), each carrying the
    /// cursor as it stands after it. Replays at most `budget` events, and takes those it
    /// replays from it: one opening (or one catch-up) of a stream of many topics replays
    /// `MAX_REPLAY` events in all, not per history, and resyncs the rest.
    pub async fn catch_up(
        &self,
        cursor: &mut Cursor,
        scope: Scope,
        budget: &mut u64,
    ) -> Result<CaughtUp, BusError> {
        self.catch_up_from(cursor, scope, None, budget).await
    }

    /// [`StreamContext::catch_up`], resyncing for `unknown` (why the client's own
    /// position cannot be trusted) even where the history alone would not: exactly one
    /// `stream.resync`, then every kept event after the cursor.
    async fn catch_up_from(
        &self,
        cursor: &mut Cursor,
        scope: Scope,
        unknown: Option<&'static str>,
        budget: &mut u64,
    ) -> Result<CaughtUp, BusError> {
        let (Some(topic), Some(at)) = (self.feed(scope), position(cursor, scope)) else {
            return Ok(CaughtUp {
                frames: Vec::new(),
                outcome: ResumeOutcome::up_to_date,
            });
        };
        let limit = self.read_limit().min(*budget);
        let read_limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut step = reconcile(at, &self.bus.read(&topic, at.seq, read_limit).await?, limit);
        if let Some(from) = step.reread_from {
            let again = reconcile(
                from,
                &self.bus.read(&topic, from.seq, read_limit).await?,
                limit,
            );
            step = Step {
                resync: step.resync.or(again.resync),
                resync_to: from,
                ..again
            };
        }
        if step.resync.is_none() {
            step.resync = unknown;
        }
        *budget = budget.saturating_sub(step.replay.len() as u64);

        let mut frames = Vec::with_capacity(step.replay.len() + 1);
        let move_to = |cursor: &mut Cursor, p: Position| {
            if let Some(at) = position_mut(cursor, scope) {
                *at = p;
            }
        };
        if let Some(reason) = step.resync {
            move_to(cursor, step.resync_to);
            frames.push(self.resync_frame(scope, reason, cursor));
            tracing::info!(user_id = %self.user_id, ?scope, reason, "stream resynchronised");
        }
        for envelope in &step.replay {
            if let Some(p) = envelope.position() {
                move_to(cursor, p);
                frames.push(Published::new(envelope).frame(Some(cursor.to_string())));
                self.delivered(&envelope.event_type);
            }
        }
        move_to(cursor, step.to);
        let outcome = if step.resync.is_some() {
            ResumeOutcome::resync
        } else if step.replay.is_empty() {
            ResumeOutcome::up_to_date
        } else {
            ResumeOutcome::replayed
        };
        Ok(CaughtUp { frames, outcome })
    }

    fn delivered(&self, event_type: &str) {
        self.metrics
            .events_delivered
            .get_or_create(&self.metrics.event_labels(event_type))
            .inc();
    }

    /// The cursor at the head of every history of the stream, owned by `owner`: the
    /// user's and the topics' heads in as few reads as the bus allows, the broadcast head
    /// in a read shared with the streams opening meanwhile, both at once.
    async fn head_cursor(&self, owner: u64) -> Result<Cursor, BusError> {
        let feeds: Vec<Feed> = std::iter::once(Feed::User(self.user_id.clone()))
            .chain(
                self.topics
                    .iter()
                    .map(|(_, name)| Feed::Topic(name.clone())),
            )
            .collect();
        let (heads, broadcast) =
            futures_util::future::try_join(self.bus.heads(&feeds), self.bus.broadcast_head())
                .await?;
        let mut heads = heads.into_iter();
        let user = heads.next().unwrap_or_default();
        let topics = self
            .topics
            .iter()
            .zip(heads)
            .map(|((tag, _), at)| TopicPosition { tag: *tag, at })
            .collect();
        Ok(Cursor {
            user,
            broadcast,
            owner,
            topics,
        })
    }

    pub fn resync_frame(&self, scope: Scope, reason: &str, cursor: &Cursor) -> Frame {
        let topic = match scope {
            Scope::Topic(tag) => self.topic_name(tag).map(str::to_string),
            Scope::User | Scope::Broadcast => None,
        };
        let data = Resync {
            scope: scope.resync_scope(),
            topic,
            reason: reason.to_string(),
        };
        self.server_frame(event_type::STREAM_RESYNC, Payload::of(&data), cursor)
    }

    /// The last frame of a stream the server ends: `stream.expired` or
    /// `stream.disconnected`, carrying the cursor so the client resumes from it.
    fn ended_frame(&self, event_type: &str, reason: &str, cursor: &Cursor) -> Frame {
        let data = StreamEnded {
            reason: reason.to_string(),
        };
        self.server_frame(event_type, Payload::of(&data), cursor)
    }

    fn server_frame(
        &self,
        event_type: &str,
        data: serde_json::Result<Payload>,
        cursor: &Cursor,
    ) -> Frame {
        let envelope = Envelope {
            server_id: Some(self.server_id.clone()),
            ..Envelope::new(self.user_id.clone(), event_type, data.unwrap_or_default())
        };
        Published::new(&envelope).frame(Some(cursor.to_string()))
    }

    /// The live part of a stream: every notice from the hub, deduplicated and made
    /// contiguous against `cursor`. Ends when the hub closes the stream, when history is
    /// needed but cannot be read (the client then resumes from its last id), or, with a
    /// last frame that says why, when `lifetime` (the credential's) is over or the user
    /// is disconnected.
    ///
    /// While it waits for a notice, the hub may write events to the stream directly
    /// (`hub::outlet`), moving the cursor it keeps for the stream: so the cursor is handed
    /// to the hub before each wait and taken back after it (moved, not copied: a cursor
    /// with topics is a heap allocation, and one per stream is enough).
    pub fn live(
        self,
        mut notices: EventStream,
        mut cursor: Cursor,
        lifetime: Duration,
    ) -> impl Stream<Item = Frame> {
        enum Next {
            Notice(Notice),
            Closed,
            Expired,
        }
        async_stream::stream! {
            // Boxed: a timer is not small, and the stream keeps it for as long as it lives.
            let mut expiry = Box::pin(tokio::time::sleep(lifetime));
            loop {
                notices.set_cursor(std::mem::take(&mut cursor));
                let next = tokio::select! {
                    biased;
                    notice = notices.next() => notice.map_or(Next::Closed, Next::Notice),
                    () = &mut expiry => Next::Expired,
                };
                cursor = notices.hold();
                let notice = match next {
                    Next::Notice(notice) => notice,
                    Next::Closed => return,
                    Next::Expired => {
                        yield self.ended_frame(event_type::STREAM_EXPIRED, "the stream's credential expired; resume with a fresh one", &cursor);
                        return;
                    }
                };
                // Past this match only the rare paths remain: catching up from history.
                let scopes = match &notice {
                    Notice::Disconnect(reason) => {
                        yield self.ended_frame(event_type::STREAM_DISCONNECTED, reason, &cursor);
                        return;
                    }
                    Notice::Reconnect(reason) => {
                        yield self.ended_frame(event_type::STREAM_RECONNECT, reason, &cursor);
                        return;
                    }
                    Notice::CatchUp => self.scopes(),
                    Notice::CatchUpIn(scope) => vec![*scope],
                    Notice::Event(published) => match live_step(&mut cursor, published) {
                        LiveStep::Skip => continue,
                        LiveStep::Send { with_id } => {
                            published.count_delivered(&self.metrics, 1);
                            yield published.frame(with_id.then(|| cursor.to_string()));
                            continue;
                        }
                        LiveStep::Repair(scope) => vec![scope],
                    },
                };
                let mut budget = self.max_replay;
                for scope in scopes {
                    // Boxed: its reads are large futures, and a stream keeps its state
                    // for as long as it lives, while catching up is rare.
                    match Box::pin(self.catch_up(&mut cursor, scope, &mut budget)).await {
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
    /// What should be replayed is not in this read: read again after this position
    /// (another epoch, or more missed than is replayed at once).
    reread_from: Option<Position>,
}

/// Decides how a stream at `at` reaches the head of `read`, a read of at most `limit`
/// events of the history after `at.seq`. Where events were lost (trimmed, or of a
/// history that restarted) or are too many to replay, it resyncs, then replays what is
/// still kept after the resync point (the latest `limit` at most). Pure, so every case is
/// tested below.
fn reconcile(at: Position, read: &HistoryRead, limit: u64) -> Step {
    let head = read.head;
    let done = |resync: Option<&'static str>, to: Position| Step {
        resync,
        resync_to: to,
        replay: Vec::new(),
        to,
        reread_from: None,
    };
    if head.epoch == 0 {
        // Nothing has been published, or the history is gone.
        let lost = at.seq > 0;
        return done(lost.then_some("history lost"), Position::default());
    }
    // Before this position, nothing can be replayed: trimmed away, or over the limit.
    let trimmed_to = if read.oldest == 0 {
        head.seq
    } else {
        read.oldest - 1
    };
    let start = Position::new(head.epoch, trimmed_to.max(head.seq.saturating_sub(limit)));
    let same_life = at.epoch == head.epoch || at == Position::default();
    if !same_life {
        return Step {
            reread_from: Some(start),
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
    let (resync, from) = if at.seq >= start.seq {
        (None, at)
    } else if at.seq < trimmed_to {
        (Some("history trimmed past the requested position"), start)
    } else {
        (Some("more events missed than a stream replays"), start)
    };
    // The read began at the oldest kept event after `at`: if the replay must begin
    // further on, it is not all in this read.
    if from.seq > trimmed_to && from != at {
        return Step {
            reread_from: Some(from),
            ..done(resync, from)
        };
    }
    let replay: Vec<Envelope> = read
        .events
        .iter()
        .filter(|e| e.id.is_some_and(|id| id > from.seq && id <= head.seq))
        .cloned()
        .collect();
    let to = replay.last().and_then(Envelope::position).unwrap_or(from);
    // Entries the rules left out of the read are events this stream will never get: say
    // so rather than step over their numbers in silence.
    let resync =
        resync.or((read.skipped > 0).then_some("history holds entries that break the rules"));
    Step {
        resync,
        resync_to: from,
        replay,
        to,
        reread_from: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const E: u64 = 1_000;
    /// A replay limit that never binds.
    const ALL: u64 = 1_000_000;

    fn history(epoch: u64, oldest: u64, head: u64, after: u64) -> HistoryRead {
        HistoryRead {
            skipped: 0,
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
        let step = reconcile(Position::new(E, 3), &history(E, 1, 6, 3), ALL);
        assert_eq!(step.resync, None);
        assert_eq!(ids(&step), [4, 5, 6]);
        assert_eq!(step.to, Position::new(E, 6));
    }

    #[test]
    fn an_up_to_date_cursor_replays_nothing() {
        let step = reconcile(Position::new(E, 6), &history(E, 1, 6, 6), ALL);
        assert_eq!(
            (step.resync, ids(&step), step.to),
            (None, vec![], Position::new(E, 6))
        );
    }

    #[test]
    fn a_cursor_from_before_any_history_replays_it_all() {
        let step = reconcile(Position::default(), &history(E, 1, 2, 0), ALL);
        assert_eq!((step.resync, ids(&step)), (None, vec![1, 2]));
    }

    #[test]
    fn trimmed_history_means_resync_then_every_event_still_kept() {
        let step = reconcile(Position::new(E, 2), &history(E, 5, 9, 2), ALL);
        assert_eq!(
            step.resync,
            Some("history trimmed past the requested position")
        );
        assert_eq!(step.resync_to, Position::new(E, 4));
        assert_eq!(ids(&step), [5, 6, 7, 8, 9]);
        assert_eq!(step.to, Position::new(E, 9));

        let expired = HistoryRead {
            skipped: 0,
            head: Position::new(E, 9),
            oldest: 0,
            events: vec![],
        };
        assert!(
            reconcile(Position::new(E, 2), &expired, ALL)
                .resync
                .is_some()
        );
    }

    #[test]
    fn another_epoch_means_resync_then_the_new_history_from_its_start() {
        let step = reconcile(Position::new(E, 40), &history(E + 1, 1, 3, 40), ALL);
        assert_eq!(step.resync, Some("history restarted"));
        assert_eq!(step.reread_from, Some(Position::new(E + 1, 0)));
        let again = reconcile(
            step.reread_from.expect("reads again"),
            &history(E + 1, 1, 3, 0),
            ALL,
        );
        assert_eq!(ids(&again), [1, 2, 3]);
    }

    #[test]
    fn lost_history_means_resync() {
        let step = reconcile(Position::new(E, 4), &HistoryRead::default(), ALL);
        assert_eq!(step.resync, Some("history lost"));
        assert_eq!(step.to, Position::default());
        assert_eq!(
            reconcile(Position::default(), &HistoryRead::default(), ALL).resync,
            None
        );
    }

    #[test]
    fn more_missed_than_the_replay_limit_means_resync_then_the_latest() {
        // 3 missed, 2 replayed at most: the first read (after 1) is not the right one.
        let step = reconcile(Position::new(E, 1), &history(E, 1, 4, 1), 2);
        assert_eq!(
            step.resync,
            Some("more events missed than a stream replays")
        );
        assert_eq!(step.reread_from, Some(Position::new(E, 2)));
        let again = reconcile(Position::new(E, 2), &history(E, 1, 4, 2), 2);
        assert_eq!((again.resync, ids(&again)), (None, vec![3, 4]));
        // Within the limit, nothing changes.
        let step = reconcile(Position::new(E, 2), &history(E, 1, 4, 2), 2);
        assert_eq!((step.resync, ids(&step)), (None, vec![3, 4]));
    }

    proptest::proptest! {
        /// Whatever the cursor and the history, a step never panics, never replays more
        /// than the limit, never goes past the head, replays in order from right after
        /// where it stands, and is silent about a jump only when nothing was skipped.
        #[test]
        fn every_step_is_bounded_ordered_and_never_silently_skips(
            at_epoch in proptest::prop_oneof![proptest::strategy::Just(0u64), proptest::strategy::Just(E), proptest::strategy::Just(E + 1), proptest::num::u64::ANY],
            at_seq in proptest::prop_oneof![0u64..40, proptest::num::u64::ANY],
            oldest in 0u64..30,
            head in 0u64..30,
            limit in 1u64..40,
        ) {
            let oldest = if head == 0 { 0 } else { oldest.min(head) };
            let head_epoch = if head == 0 { 0 } else { E };
            let at = Position::new(at_epoch, at_seq);
            let read = history(head_epoch, oldest, head, at_seq.min(1_000));
            let mut step = reconcile(at, &read, limit);
            if let Some(from) = step.reread_from {
                let again = reconcile(from, &history(head_epoch, oldest, head, from.seq), limit);
                proptest::prop_assert!(again.reread_from.is_none(), "a second read always suffices");
                step = Step { resync: step.resync.or(again.resync), resync_to: from, ..again };
            }
            let replayed = ids(&step);
            proptest::prop_assert!(replayed.len() as u64 <= limit);
            proptest::prop_assert!(step.to.seq <= head);
            let expected: Vec<u64> = (1..=replayed.len() as u64).map(|i| step.resync_to.seq + i).collect();
            proptest::prop_assert_eq!(&replayed, &expected, "contiguous from the resync point");
            let continues = at_epoch == head_epoch || at == Position::default();
            if step.resync.is_none() && head > 0 {
                proptest::prop_assert!(continues && step.resync_to.seq == at_seq, "no resync only when nothing is skipped");
            }
        }
    }

    #[test]
    fn entries_left_out_by_the_rules_mean_resync_then_the_rest() {
        let mut read = history(E, 1, 6, 3);
        read.events.retain(|e| e.id != Some(5));
        read.skipped = 1;
        let step = reconcile(Position::new(E, 3), &read, ALL);
        assert_eq!(
            step.resync,
            Some("history holds entries that break the rules")
        );
        assert_eq!(ids(&step), [4, 6]);
        assert_eq!(step.to, Position::new(E, 6));
    }

    #[test]
    fn a_cursor_ahead_of_the_history_means_resync() {
        let step = reconcile(Position::new(E, 10), &history(E, 1, 4, 10), ALL);
        assert_eq!(step.resync, Some("cursor is ahead of the history"));
        assert_eq!(step.to, Position::new(E, 4));
    }
}
