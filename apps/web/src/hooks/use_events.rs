//! `use_events`: a user's event stream as reactive signals.
//!
//! The tabs of one browser that show the same user with the same grants share one stream
//! (`sharing::share_name`): they elect one (a Web Lock of that name, or an election on
//! their channel where the browser has no Web Locks), which holds the EventSource and relays every frame and state change to
//! the others over a `BroadcastChannel` (see `leadership`). When that tab goes, the next
//! opens the stream from the last id it was relayed, and `sharing::Shown` drops the
//! frames both holders delivered. With sharing turned off, or a token that is not a JWT,
//! each hook holds its own stream.
//!
//! Topics (`UseEventsOptions::topics`): each hook tells the others which it wants, every
//! hook keeps the lot (`sharing::Roster`), and the holder's stream carries their union;
//! each hook is shown only its own topics' events (and all of its user's and the
//! broadcasts). When the union changes, the holder gets a ticket for the new union and
//! reopens from its last id (state `Reconnecting` meanwhile): topics in both keep their
//! place, so nothing is missed. Each time its stream opens, the holder checks it asked for
//! what the roster wants now, and reopens if not (a change while a ticket was on its way).
//! A tab that takes the stream over calls the roll (`Hello`) and forgets the topics of
//! hooks that do not answer within `ROLL_CALL`. Followers learn what the stream carries
//! from the holder's `Status`. A topic the server refuses (403 `topic_forbidden`, say) is
//! left out, the stream goes on without it, and the hooks that wanted it say why in
//! `topic_refusals`.
//!
//! The stream is closed when the owning component unmounts. Each EventSource is opened
//! with a fresh single-use stream ticket (`POST /api/stream-tickets` with the token in a
//! header; the ticket's secret comes back as an HttpOnly cookie), so
//! the token never appears in a URL. When the EventSource gives up (readyState CLOSED:
//! a 502 or 503 during a deploy, or a 401 because its ticket was used up by an earlier
//! connection), the hook gets a new ticket and opens a new EventSource after a backoff
//! with jitter, passing the last event id as `lastEventId` so the server resumes where
//! the stream stopped. `stream.expired` says the token behind the stream ran out;
//! `stream.disconnected` that the server ended the user's streams: the hook stops;
//! `stream.reconnect` that the instance sheds the stream: the hook resumes at once.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeSet,
    rc::{Rc, Weak},
    time::Duration,
};

use events::{Envelope, Resync, event_type};
use leptos::prelude::*;
use send_wrapper::SendWrapper;
use wasm_bindgen::{JsCast, closure::Closure};
use web_sys::{EventSource, MessageEvent};

use super::{
    credentials::Credentials,
    leadership::Leadership,
    reconnect::{Backoff, ConnectionState, Signal as SourceSignal, events_url, next_state},
    sharing::{
        Roster, Shown, StreamHolder, TabMessage, TopicRefusal, must_reopen, refused_topics,
        share_name,
    },
};

/// An event as the page received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// The SSE `event:` name.
    pub event_type: String,
    pub envelope: Envelope,
    /// The stream's cursor after this event (the SSE `id:`), if it had one.
    pub last_event_id: Option<String>,
    /// When it arrived, in milliseconds since the Unix epoch (the browser's clock).
    pub received_at: f64,
}

impl ReceivedEvent {
    /// The topic the event is about: a topic's event, or a `stream.resync` of one topic
    /// (`scope: "topic"`, the topic in its data). `None` for the user's own events, the
    /// broadcasts, and the stream's other frames.
    pub fn topic(&self) -> Option<String> {
        if let Some(topic) = &self.envelope.topic {
            return Some(topic.clone());
        }
        if self.event_type != event_type::STREAM_RESYNC {
            return None;
        }
        self.envelope.data.parse::<Resync>().ok()?.topic
    }
}

/// How long a tab that takes the stream over waits for the other hooks to say which
/// topics they want, before it forgets the topics of those that did not answer (their tab
/// crashed, or went without a word).
const ROLL_CALL: Duration = Duration::from_secs(1);

/// Options of [`use_events_with_options`].
#[derive(Debug, Clone)]
pub struct UseEventsOptions {
    /// The stream's URL. Default: `/api/events` (same origin).
    pub url: String,
    /// Where stream tickets are issued. Default: `/api/stream-tickets` (same origin).
    pub ticket_url: String,
    /// Backoff for reconnecting after the browser gave up. Default: [`Backoff::default`].
    pub reconnect: Backoff,
    /// Whether the tabs of this origin showing the same user share one stream. Default:
    /// `true`. Needs a token that is a JWT (its `sub` names the user).
    pub share: bool,
    /// The topics (`room:lobby`, ...) whose events this hook wants besides its user's and
    /// the broadcasts; when it changes, the stream follows with nothing missed in the
    /// topics kept. Default: none.
    pub topics: Signal<Vec<String>>,
}

impl Default for UseEventsOptions {
    fn default() -> Self {
        Self {
            url: "/api/events".into(),
            ticket_url: "/api/stream-tickets".into(),
            reconnect: Backoff::default(),
            share: true,
            topics: Signal::default(),
        }
    }
}

/// What [`use_events`] returns: read-only signals, and the handle to close or reopen.
#[derive(Clone, Copy)]
pub struct UseEventsReturn {
    pub state: Signal<ConnectionState>,
    pub last_event: Signal<Option<ReceivedEvent>>,
    /// The cursor to resume from (the last SSE `id:` seen).
    pub last_event_id: Signal<Option<String>>,
    pub last_error: Signal<Option<String>>,
    /// The backend instance serving the stream (from its `stream.opened` frame).
    pub server_id: Signal<Option<String>>,
    /// The last `stream.resync`: events may have been missed; refetch derived state.
    pub last_resync: Signal<Option<Resync>>,
    /// Which tab holds the shared stream, once known; `None` while the stream is not
    /// shared (sharing off, or unavailable in this browser).
    pub holder: Signal<Option<StreamHolder>>,
    /// The topics the stream carries (from its last `stream.opened`, or in a tab that does
    /// not hold the stream, from the holder's status): once one of this hook's topics is
    /// here, its events arrive.
    pub stream_topics: Signal<Vec<String>>,
    /// Why some of this hook's topics are not carried: refused by the server (the user may
    /// not have them), or a name that breaks the rule. The stream goes on without them.
    pub topic_refusals: Signal<Vec<TopicRefusal>>,
    handle: StoredValue<SendWrapper<Rc<Connection>>>,
}

impl std::fmt::Debug for UseEventsReturn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UseEventsReturn")
            .field("state", &self.state.get_untracked())
            .finish_non_exhaustive()
    }
}

impl UseEventsReturn {
    /// Closes the stream for good.
    pub fn close(&self) {
        self.handle.with_value(|connection| connection.close());
    }

    /// Opens a new stream now (resuming from the last event id), unless the stream was
    /// closed for good (by [`Self::close`], or by the server's `stream.disconnected`).
    /// In a tab that does not hold the shared stream it does nothing: its holder
    /// reconnects.
    pub fn reconnect(&self) {
        self.handle
            .with_value(|connection| connection.reconnect_now());
    }
}

/// Subscribes to `event_types` on the stream of the credentials' user and calls `on_event` for
/// each event, like the original `useEvents(['snapshots.generated'], handler)`; an empty
/// list means every event, of any type, including types the page has never heard of
/// (the stream is asked for unnamed frames, and the hook filters by the envelope's type).
/// The stream's own `stream.*` events always reach `on_event`. `credentials` is a token
/// (`String`), or [`Credentials::renewing`], a source the hook asks again whenever the
/// token expires or is refused, resuming from its last id. The token is sent in the
/// `Authorization` header for each stream ticket, never in a URL.
pub fn use_events(
    event_types: &[&str],
    credentials: impl Into<Credentials>,
    on_event: impl Fn(&ReceivedEvent) + 'static,
) -> UseEventsReturn {
    use_events_with_options(
        event_types,
        credentials,
        on_event,
        UseEventsOptions::default(),
    )
}

/// [`use_events`], with the stream's URLs, reconnection backoff and sharing set by
/// `options`.
pub fn use_events_with_options(
    event_types: &[&str],
    credentials: impl Into<Credentials>,
    on_event: impl Fn(&ReceivedEvent) + 'static,
    options: UseEventsOptions,
) -> UseEventsReturn {
    let credentials = credentials.into();
    let signals = Signals {
        state: RwSignal::new(ConnectionState::Connecting),
        last_event: RwSignal::new(None),
        last_event_id: RwSignal::new(None),
        last_error: RwSignal::new(None),
        server_id: RwSignal::new(None),
        last_resync: RwSignal::new(None),
        holder: RwSignal::new(None),
        stream_topics: RwSignal::new(Vec::new()),
        topic_refusals: RwSignal::new(Vec::new()),
    };
    let topics = options.topics;
    let wanted = normalized(topics.get_untracked());
    let member = (js_sys::Math::random() * 9_007_199_254_740_991.0) as u64;
    let mut roster = Roster::default();
    roster.set(member, &wanted);
    signals.topic_refusals.set(roster.refusals_of(&wanted));
    let types: Vec<String> = event_types.iter().map(|t| t.to_string()).collect();
    let connection = Rc::new(Connection {
        options,
        token: RefCell::new(match &credentials {
            Credentials::Fixed(token) => Some(token.clone()),
            Credentials::Renewing(_) => None,
        }),
        credentials,
        types,
        on_event: Box::new(on_event),
        signals,
        source: RefCell::new(None),
        listeners: RefCell::new(Vec::new()),
        page: RefCell::new(Vec::new()),
        retry: RefCell::new(None),
        attempt: Cell::new(0),
        opening: Cell::new(0),
        role: Cell::new(Role::Alone),
        leadership: RefCell::new(None),
        shown: RefCell::new(Shown::default()),
        member,
        topics: RefCell::new(wanted),
        roster: RefCell::new(roster),
        carried: RefCell::new(None),
        roll_call: RefCell::new(None),
    });
    connection.start();
    connection.watch_page();

    // The stream follows the hook's topics.
    let weak = SendWrapper::new(Rc::downgrade(&connection));
    Effect::new(move |_| {
        let wanted = topics.get();
        if let Some(connection) = weak.upgrade() {
            connection.set_topics(normalized(wanted));
        }
    });

    // The holder tells the others whenever its connection changes.
    let weak = SendWrapper::new(Rc::downgrade(&connection));
    Effect::new(move |_| {
        let status = signals.status();
        if let Some(connection) = weak.upgrade() {
            connection.relay(&status);
        }
    });

    let handle = StoredValue::new(SendWrapper::new(connection.clone()));
    let cleanup = SendWrapper::new(connection);
    on_cleanup(move || cleanup.close());

    UseEventsReturn {
        state: signals.state.into(),
        last_event: signals.last_event.into(),
        last_event_id: signals.last_event_id.into(),
        last_error: signals.last_error.into(),
        server_id: signals.server_id.into(),
        last_resync: signals.last_resync.into(),
        holder: signals.holder.into(),
        stream_topics: signals.stream_topics.into(),
        topic_refusals: signals.topic_refusals.into(),
        handle,
    }
}

/// Topics each once, in the order given.
fn normalized(topics: Vec<String>) -> Vec<String> {
    let mut once = Vec::with_capacity(topics.len());
    for topic in topics {
        if !once.contains(&topic) {
            once.push(topic);
        }
    }
    once
}

#[derive(Clone, Copy)]
struct Signals {
    state: RwSignal<ConnectionState>,
    last_event: RwSignal<Option<ReceivedEvent>>,
    last_event_id: RwSignal<Option<String>>,
    last_error: RwSignal<Option<String>>,
    server_id: RwSignal<Option<String>>,
    last_resync: RwSignal<Option<Resync>>,
    holder: RwSignal<Option<StreamHolder>>,
    stream_topics: RwSignal<Vec<String>>,
    topic_refusals: RwSignal<Vec<TopicRefusal>>,
}

impl Signals {
    /// The connection's status as the holder tells the other tabs (tracked, but for the
    /// last id, which changes with every frame and travels with each).
    fn status(&self) -> TabMessage {
        TabMessage::Status {
            state: self.state.get(),
            server_id: self.server_id.get(),
            error: self.last_error.get(),
            last_event_id: self.last_event_id.get_untracked(),
            stream_topics: self.stream_topics.get(),
        }
    }
}

type Listener = Closure<dyn FnMut(web_sys::Event)>;

/// This hook's part in its user's shared stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// It holds its own stream (sharing off or unavailable, or closed).
    Alone,
    /// It holds the stream and relays it to the other tabs.
    Holder,
    /// Another tab holds the stream (or will): this one shows what it relays.
    Follower,
}

/// The stream of one mounted hook and everything that must die with it.
struct Connection {
    options: UseEventsOptions,
    /// The token in hand; `None` once it is known to be dead (expired or refused).
    token: RefCell<Option<String>>,
    credentials: Credentials,
    types: Vec<String>,
    on_event: Box<dyn Fn(&ReceivedEvent)>,
    signals: Signals,
    source: RefCell<Option<EventSource>>,
    /// Kept alive as long as the EventSource may call them.
    listeners: RefCell<Vec<Listener>>,
    /// The window's `offline`/`online` and the document's `freeze`/`resume` listeners,
    /// removed by `close`.
    page: RefCell<Vec<(web_sys::EventTarget, &'static str, Listener)>>,
    retry: RefCell<Option<TimeoutHandle>>,
    /// Failed reconnections in a row, for the backoff.
    attempt: Cell<u32>,
    /// Counts calls to `open`, so that a ticket that arrives after a newer `open` (or a
    /// `close`) is dropped.
    opening: Cell<u64>,
    role: Cell<Role>,
    /// The seat among the user's tabs, while sharing.
    leadership: RefCell<Option<Leadership>>,
    /// What was shown, so that no event is shown twice across a change of holder.
    shown: RefCell<Shown>,
    /// Names this hook among those sharing the stream, for its [`TabMessage::Topics`].
    member: u64,
    /// The topics this hook wants: their events are shown, other topics' are not.
    topics: RefCell<Vec<String>>,
    /// The topics of every hook sharing the stream, and what the server refused.
    roster: RefCell<Roster>,
    /// The topics of the stream this hook holds or is opening; `None` while it holds none
    /// (a follower, or not started), when a change of topics waits for the next `open`.
    carried: RefCell<Option<Vec<String>>>,
    /// The hooks that answered since this one took the stream over, and the timer that
    /// ends the roll call (see [`ROLL_CALL`]).
    roll_call: RefCell<Option<(BTreeSet<u64>, TimeoutHandle)>>,
}

impl Connection {
    /// Joins the user's other tabs when sharing (the token names the user), or opens a
    /// stream of its own.
    fn start(self: &Rc<Self>) {
        if !self.options.share {
            self.open();
            return;
        }
        let weak = Rc::downgrade(self);
        let token = self.token_in_hand();
        leptos::task::spawn_local(async move {
            let token = token.await.ok();
            let Some(connection) = weak.upgrade().filter(|c| !c.is_closed()) else {
                return;
            };
            if let Some(token) = &token {
                *connection.token.borrow_mut() = Some(token.clone());
            }
            let name = token.and_then(|token| share_name(&connection.options.url, &token));
            // `open` reports a missing credential, and retries.
            if !name.is_some_and(|name| connection.join(&name)) {
                connection.open();
            }
        });
    }

    /// Gets in line for the user's shared stream; `false` where the browser cannot share.
    fn join(self: &Rc<Self>, name: &str) -> bool {
        let listen = Rc::downgrade(self);
        let Some(leadership) = Leadership::join(
            name,
            self.weakly(|connection| connection.lead()),
            self.weakly(|connection| connection.step_down()),
            move |message| {
                if let Some(connection) = listen.upgrade() {
                    connection.on_tab_message(message);
                }
            },
        ) else {
            return false;
        };
        self.role.set(Role::Follower);
        leadership.post(&TabMessage::Hello);
        *self.leadership.borrow_mut() = Some(leadership);
        self.announce_topics();
        true
    }

    /// This tab was given the stream: it opens it from the last id it showed.
    fn lead(self: &Rc<Self>) {
        if self.is_closed() {
            if let Some(leadership) = self.leadership.borrow().as_ref() {
                leadership.resign();
            }
            return;
        }
        self.role.set(Role::Holder);
        self.signals.holder.set(Some(StreamHolder::ThisTab));
        if self.signals.state.get_untracked() != ConnectionState::Connecting {
            self.signals.state.set(ConnectionState::Reconnecting);
        }
        self.open();
        self.call_the_roll();
    }

    /// Asks every hook sharing the stream which topics it wants; after [`ROLL_CALL`], the
    /// topics of those that did not answer are forgotten (a crashed tab says no goodbye).
    /// The stream opens at once with what the roster held; a reopen follows if it shrank.
    fn call_the_roll(self: &Rc<Self>) {
        self.end_roll_call();
        match self.leadership.borrow().as_ref() {
            Some(leadership) => leadership.post(&TabMessage::Hello),
            None => return,
        }
        let finish = self.weakly(|connection| connection.finish_roll_call());
        if let Ok(timer) = set_timeout_with_handle(finish, ROLL_CALL) {
            *self.roll_call.borrow_mut() = Some((BTreeSet::from([self.member]), timer));
        }
    }

    fn finish_roll_call(self: &Rc<Self>) {
        let Some((answered, _)) = self.roll_call.borrow_mut().take() else {
            return;
        };
        if self.role.get() != Role::Holder {
            return;
        }
        let changed = self.roster.borrow_mut().keep_only(&answered);
        if changed {
            self.follow_roster();
        }
    }

    /// Stops a roll call under way (the stream was handed on, or the hook is closing).
    fn end_roll_call(&self) {
        if let Some((_, timer)) = self.roll_call.borrow_mut().take() {
            timer.clear();
        }
    }

    /// Hands the stream to the next tab in line and gets back in line behind it: the
    /// page is being frozen (a background tab the browser suspends), and a frozen holder
    /// would silence every tab; or, in the fallback election, another tab took over.
    fn step_down(&self) {
        if self.role.get() != Role::Holder {
            return;
        }
        self.cancel_retry();
        self.forget_opening();
        self.drop_source();
        self.end_roll_call();
        *self.carried.borrow_mut() = None;
        self.role.set(Role::Follower);
        self.signals.holder.set(None);
        if let Some(leadership) = self.leadership.borrow().as_ref() {
            leadership.resign();
            leadership.get_in_line();
        }
    }

    /// What another tab of the user posted.
    fn on_tab_message(self: &Rc<Self>, message: TabMessage) {
        match (self.role.get(), message) {
            (role, TabMessage::Hello) => {
                // The newcomer learns every hook's topics, and what was refused.
                self.announce_topics();
                if role == Role::Holder {
                    self.relay(&untrack(|| self.signals.status()));
                    self.relay_refusals();
                }
            }
            (_, TabMessage::Topics { member, topics }) => {
                if let Some((answered, _)) = self.roll_call.borrow_mut().as_mut() {
                    answered.insert(member);
                }
                self.roster.borrow_mut().set(member, &topics);
                self.follow_roster();
            }
            (Role::Follower, TabMessage::Refusals { refused }) => {
                self.roster.borrow_mut().set_refusals(refused);
                self.show_refusals();
            }
            (Role::Follower, TabMessage::Frame { id, data }) => {
                self.signals.holder.set(Some(StreamHolder::AnotherTab));
                self.on_frame(id, &data);
            }
            (
                Role::Follower,
                TabMessage::Status {
                    state,
                    server_id,
                    error,
                    last_event_id,
                    stream_topics,
                },
            ) => {
                self.signals.holder.set(Some(StreamHolder::AnotherTab));
                self.signals.state.set(state);
                self.signals.server_id.set(server_id);
                self.signals.last_error.set(error);
                if last_event_id.is_some() {
                    self.signals.last_event_id.set(last_event_id);
                }
                // A topic the stream carries already is carried for this tab at once: no
                // `stream.opened` comes when joining it leaves the union as it was.
                if self.signals.stream_topics.get_untracked() != stream_topics {
                    self.signals.stream_topics.set(stream_topics);
                }
            }
            _ => {}
        }
    }

    /// Posts `message` to the other tabs, if this one holds the shared stream.
    fn relay(&self, message: &TabMessage) {
        if self.role.get() != Role::Holder {
            return;
        }
        if let Some(leadership) = self.leadership.borrow().as_ref() {
            leadership.post(message);
        }
    }

    /// This hook wants `topics` now: the others are told, and the stream follows.
    fn set_topics(self: &Rc<Self>, topics: Vec<String>) {
        if *self.topics.borrow() == topics {
            return;
        }
        self.roster.borrow_mut().set(self.member, &topics);
        *self.topics.borrow_mut() = topics;
        self.announce_topics();
        self.follow_roster();
    }

    /// Tells the other hooks sharing the stream which topics this one wants.
    fn announce_topics(&self) {
        let topics = self.topics.borrow().clone();
        if let Some(leadership) = self.leadership.borrow().as_ref() {
            leadership.post(&TabMessage::Topics {
                member: self.member,
                topics,
            });
        }
    }

    /// Tells the others this hook wants nothing any more (it is going).
    fn announce_leaving(&self) {
        if let Some(leadership) = self.leadership.borrow().as_ref() {
            leadership.post(&TabMessage::Topics {
                member: self.member,
                topics: Vec::new(),
            });
        }
    }

    /// The roster changed: the refusals shown follow, and a stream this hook holds is
    /// reopened (a new ticket, from the last id) when it should carry other topics. A
    /// stream on its way back (a retry, offline) picks the new topics up when it opens.
    fn follow_roster(self: &Rc<Self>) {
        self.show_refusals();
        let carried = self.carried.borrow().clone();
        let Some(carried) = carried else {
            return;
        };
        if self.role.get() == Role::Follower
            || carried == self.roster.borrow().stream_topics()
            || !matches!(
                self.signals.state.get_untracked(),
                ConnectionState::Open | ConnectionState::Connecting
            )
        {
            return;
        }
        self.cancel_retry();
        // Truthful while the new ticket is on its way: events pause until it opens.
        self.signals.state.set(ConnectionState::Reconnecting);
        self.open();
    }

    /// This hook's refusals, from the roster.
    fn show_refusals(&self) {
        let refusals = self.roster.borrow().refusals_of(&self.topics.borrow());
        if self.signals.topic_refusals.get_untracked() != refusals {
            self.signals.topic_refusals.set(refusals);
        }
    }

    /// The holder tells the others every refusal it knows of.
    fn relay_refusals(&self) {
        let refused = self.roster.borrow().refusals().to_vec();
        self.relay(&TabMessage::Refusals { refused });
    }

    fn is_closed(&self) -> bool {
        // The owner may be gone (unmounted), its signals with it.
        self.signals
            .state
            .try_get_untracked()
            .is_none_or(|state| state == ConnectionState::Closed)
    }

    /// `act` on this connection for as long as it lives, for a callback that must not keep
    /// it alive.
    fn weakly<F: Fn(&Rc<Self>)>(self: &Rc<Self>, act: F) -> impl Fn() + use<F> {
        let weak = Rc::downgrade(self);
        move || {
            if let Some(connection) = weak.upgrade() {
                act(&connection);
            }
        }
    }

    /// The token in hand, or (with none) a fresh one from a renewing source.
    fn token_in_hand(&self) -> impl std::future::Future<Output = Result<String, String>> + use<> {
        let in_hand = self.token.borrow().clone();
        let credentials = self.credentials.clone();
        async move {
            match (in_hand, credentials) {
                (Some(token), _) => Ok(token),
                (None, Credentials::Renewing(fetch)) => fetch().await,
                (None, Credentials::Fixed(_)) => Err("the credential is no longer valid".into()),
            }
        }
    }

    fn cancel_retry(&self) {
        if let Some(timer) = self.retry.borrow_mut().take() {
            timer.clear();
        }
    }

    /// Makes any `open` still waiting for its ticket drop it when it arrives; returns the
    /// number of the next `open`.
    fn forget_opening(&self) -> u64 {
        let next = self.opening.get().wrapping_add(1);
        self.opening.set(next);
        next
    }

    /// Gets a token if it has none, then a stream ticket for the roster's topics, then
    /// opens the EventSource.
    fn open(self: &Rc<Self>) {
        self.drop_source();
        let attempt = self.forget_opening();
        let weak = Rc::downgrade(self);
        let ticket_url = self.options.ticket_url.clone();
        let topics = self.roster.borrow().stream_topics();
        *self.carried.borrow_mut() = Some(topics.clone());
        let token = self.token_in_hand();
        // Whether this is still the latest `open` of a hook that is not closed.
        let current = move |connection: &Connection| {
            connection.opening.get() == attempt
                && connection.signals.state.get_untracked() != ConnectionState::Closed
        };
        leptos::task::spawn_local(async move {
            let token = token.await;
            let Some(connection) = weak.upgrade().filter(|c| current(c)) else {
                return;
            };
            let token = match token {
                Ok(token) => token,
                Err(failure) => {
                    connection
                        .signals
                        .last_error
                        .set(Some(format!("cannot get a credential: {failure}")));
                    connection.schedule_reconnect();
                    return;
                }
            };
            *connection.token.borrow_mut() = Some(token.clone());
            let ticket = crate::api::stream_ticket(&ticket_url, &token, &topics).await;
            let Some(connection) = weak.upgrade().filter(|c| current(c)) else {
                return;
            };
            let refused = ticket.as_ref().err().and_then(|failure| {
                refused_topics(
                    failure.code.as_deref()?,
                    &failure.message,
                    failure.topic.as_deref(),
                    &topics,
                )
            });
            if let Some(refused) = refused {
                // Not worth a retry: the stream opens at once without them (a strictly
                // smaller set each time), and whoever wanted them is told why.
                connection.roster.borrow_mut().refuse(refused);
                connection.show_refusals();
                connection.relay_refusals();
                connection.open();
                return;
            }
            match ticket {
                Ok(ticket) => connection.open_source(&ticket.ticket),
                Err(failure) if failure.status == 401 => {
                    connection.credential_dead("the credential was refused");
                }
                Err(failure) => {
                    connection
                        .signals
                        .last_error
                        .set(Some(format!("cannot get a stream ticket: {failure}")));
                    connection.schedule_reconnect();
                }
            }
        });
    }

    /// The token in hand expired or was refused: a renewing source is asked for a fresh
    /// one (after the backoff, so a source that keeps handing out dead tokens is not
    /// hammered); a token given once means the stream is over for good.
    fn credential_dead(self: &Rc<Self>, why: &str) {
        *self.token.borrow_mut() = None;
        self.signals.last_error.set(Some(why.to_string()));
        if self.credentials.renews() {
            // The browser would retry with a spent ticket: this one resumes instead.
            self.drop_source();
            self.signals.state.set(ConnectionState::Reconnecting);
            self.schedule_reconnect();
        } else {
            self.end(SourceSignal::ClosedByServer);
        }
    }

    /// Ends the stream for good from inside a listener (not `close`: the listener must
    /// outlive its own call).
    fn end(&self, signal: SourceSignal) {
        self.cancel_retry();
        self.forget_opening();
        self.drop_source();
        self.apply(signal);
        // A follower leaves the line, so that it never reopens what the server ended. The
        // holder keeps the lock until its page goes, so that no tab that has not yet seen
        // the end takes the stream over meanwhile.
        if self.role.get() == Role::Follower
            && let Some(leadership) = self.leadership.borrow().as_ref()
        {
            leadership.leave();
        }
    }

    fn open_source(self: &Rc<Self>, ticket: &str) {
        let resume_from = self.signals.last_event_id.get_untracked();
        let url = events_url(&self.options.url, ticket, resume_from.as_deref());
        let source = match EventSource::new(&url) {
            Ok(source) => source,
            Err(error) => {
                self.signals
                    .last_error
                    .set(Some(format!("cannot open the stream: {error:?}")));
                self.schedule_reconnect();
                return;
            }
        };
        let mut listeners = Vec::new();
        let weak = Rc::downgrade(self);
        listeners.push(listen(&source, "open", weak.clone(), |c, _| c.on_open()));
        listeners.push(listen(&source, "error", weak.clone(), |c, _| c.on_error()));
        // Unnamed frames: every event arrives as a `message`, whatever its type.
        listeners.push(listen(&source, "message", weak.clone(), |c, event| {
            if let Some(message) = event.dyn_ref::<MessageEvent>() {
                c.on_message(message);
            }
        }));
        *self.listeners.borrow_mut() = listeners;
        *self.source.borrow_mut() = Some(source);
    }

    /// Follows the browser's `offline` and `online` events (offline, the badge says so
    /// and nothing is retried; back online, the stream reconnects at once), and the page's
    /// `freeze` (see `step_down`) and `resume`.
    fn watch_page(self: &Rc<Self>) {
        let Some(window) = web_sys::window() else {
            return;
        };
        let mut listeners = Vec::new();
        for (name, signal) in [
            ("offline", SourceSignal::WentOffline),
            ("online", SourceSignal::CameOnline),
        ] {
            let weak = Rc::downgrade(self);
            listeners.push(listen_on(&window, name, move |_| {
                let Some(connection) = weak.upgrade() else {
                    return;
                };
                // A follower's state is its holder's.
                if connection.role.get() != Role::Follower && connection.apply(signal) {
                    connection.cancel_retry();
                    connection.open();
                }
            }));
        }
        if let Some(document) = window.document() {
            let step_down = self.weakly(|connection| connection.step_down());
            listeners.push(listen_on(&document, "freeze", move |_| step_down()));
            // A page going away (or into the back-forward cache) takes its topics along,
            // and brings them back if it returns.
            let leaving = self.weakly(|connection| connection.announce_leaving());
            listeners.push(listen_on(&window, "pagehide", move |_| leaving()));
            let back = self.weakly(|connection| connection.announce_topics());
            listeners.push(listen_on(&window, "pageshow", move |_| back()));
            let weak = Rc::downgrade(self);
            listeners.push(listen_on(&document, "resume", move |_| {
                if let Some(connection) = weak.upgrade()
                    && connection.role.get() == Role::Follower
                    && let Some(leadership) = connection.leadership.borrow().as_ref()
                {
                    leadership.post(&TabMessage::Hello);
                    // A holder's roll call while this page was frozen forgot its topics.
                    connection.announce_topics();
                }
            }));
        }
        *self.page.borrow_mut() = listeners;
    }

    fn on_open(&self) {
        self.attempt.set(0);
        self.signals.last_error.set(None);
        self.apply(SourceSignal::Opened);
    }

    fn on_error(self: &Rc<Self>) {
        let gave_up = self
            .source
            .borrow()
            .as_ref()
            .is_some_and(|s| s.ready_state() == EventSource::CLOSED);
        if gave_up {
            self.signals.last_error.set(Some(
                "the server refused or ended the stream; retrying".into(),
            ));
            if self.apply(SourceSignal::GaveUp) {
                self.drop_source();
                self.schedule_reconnect();
            }
        } else {
            self.signals
                .last_error
                .set(Some("connection lost; reconnecting".into()));
            self.apply(SourceSignal::Interrupted);
        }
    }

    fn on_message(self: &Rc<Self>, message: &MessageEvent) {
        let id = message.last_event_id();
        let id = (!id.is_empty()).then_some(id);
        let Some(data) = message.data().as_string() else {
            return;
        };
        // Relayed first: handling the frame may end the stream.
        self.relay(&TabMessage::Frame {
            id: id.clone(),
            data: data.clone(),
        });
        self.on_frame(id, &data);
    }

    /// One frame of the stream, from this tab's EventSource or relayed by the holder.
    fn on_frame(self: &Rc<Self>, id: Option<String>, data: &str) {
        // How the server ends the stream, if this frame does: disconnected (with why).
        let mut disconnected = None;
        let mut expired = false;
        // Whether the stream that just opened carries other topics than the roster wants.
        let mut stale = false;
        let envelope: Envelope = match serde_json::from_str(data) {
            Ok(envelope) => envelope,
            Err(error) => {
                if id.is_some() {
                    self.signals.last_event_id.set(id);
                }
                self.signals
                    .last_error
                    .set(Some(format!("unreadable event: {error}")));
                return;
            }
        };
        if !self.shown.borrow_mut().first_time(&envelope) {
            return;
        }
        if id.is_some() {
            self.signals.last_event_id.set(id.clone());
        }
        // The topic the frame is about, if any: a topic's event, or a topic's resync.
        let mut about_topic = envelope.topic.clone();
        let event = ReceivedEvent {
            event_type: envelope.event_type.clone(),
            envelope,
            last_event_id: id,
            received_at: js_sys::Date::now(),
        };
        match event.event_type.as_str() {
            event_type::STREAM_OPENED => {
                let opened = event.envelope.data.parse::<events::StreamOpened>().ok();
                let (server, topics) = match opened {
                    Some(opened) => (Some(opened.server_id), opened.topics),
                    None => (None, Vec::new()),
                };
                self.signals.server_id.set(server);
                self.signals.stream_topics.set(topics);
                if self.role.get() != Role::Follower {
                    self.apply(SourceSignal::Opened);
                    // The roster may have changed while the ticket was on its way (a
                    // reconnection, or a hand-over with a closing tab's topics dropped late).
                    stale = self.carried.borrow().as_ref().is_some_and(|carried| {
                        must_reopen(carried, &self.roster.borrow().stream_topics())
                    });
                }
            }
            event_type::STREAM_RESYNC => {
                let resync = event.envelope.data.parse::<Resync>().ok();
                about_topic = resync.as_ref().and_then(|r| r.topic.clone());
                // A topic's resync concerns the hooks of that topic only.
                if about_topic.as_deref().is_none_or(|t| self.wants_topic(t)) {
                    self.signals.last_resync.set(resync);
                }
            }
            event_type::STREAM_EXPIRED => expired = true,
            // The instance sheds the stream to balance the fleet: resume at once (from
            // the cursor, served elsewhere), not after the back-off of a lost stream.
            event_type::STREAM_RECONNECT => stale = self.role.get() != Role::Follower,
            event_type::STREAM_DISCONNECTED => {
                let ended = event.envelope.data.parse::<events::StreamEnded>();
                disconnected = Some(ended.ok().map(|ended| ended.reason));
            }
            _ => {}
        }
        let wanted = self.types.is_empty()
            || self.types.contains(&event.event_type)
            || event.event_type.starts_with("stream.");
        // Another hook's topic shares the stream, not this hook's page.
        let mine = about_topic.as_deref().is_none_or(|t| self.wants_topic(t));
        if !wanted || !mine {
            return;
        }
        (self.on_event)(&event);
        self.signals.last_event.set(Some(event));
        if let Some(reason) = disconnected {
            // The server ended every stream of this user (a sign-out, say): stay closed,
            // in every tab.
            self.end(SourceSignal::ClosedByServer);
            self.signals.last_error.set(reason);
        } else if expired && self.role.get() != Role::Follower {
            // The holder renews the credential; the other tabs just see it happen.
            self.credential_dead("the stream's credential expired");
        } else if stale {
            self.cancel_retry();
            self.signals.state.set(ConnectionState::Reconnecting);
            self.open();
        }
    }

    fn wants_topic(&self, topic: &str) -> bool {
        self.topics.borrow().iter().any(|t| t == topic)
    }

    /// Moves the state machine; returns whether the hook must reconnect by itself.
    fn apply(&self, signal: SourceSignal) -> bool {
        let (state, reconnect) = next_state(self.signals.state.get_untracked(), signal);
        self.signals.state.set(state);
        reconnect
    }

    fn schedule_reconnect(self: &Rc<Self>) {
        // Offline, a retry can only fail: `online` reopens the stream.
        if self.signals.state.get_untracked() == ConnectionState::Offline {
            return;
        }
        let delay = self
            .options
            .reconnect
            .delay(self.attempt.get(), js_sys::Math::random());
        self.attempt.set(self.attempt.get().saturating_add(1));
        let weak = Rc::downgrade(self);
        let handle = set_timeout_with_handle(
            move || {
                if let Some(connection) = weak.upgrade()
                    && !matches!(
                        connection.signals.state.get_untracked(),
                        ConnectionState::Closed | ConnectionState::Offline
                    )
                {
                    connection.open();
                }
            },
            delay,
        );
        *self.retry.borrow_mut() = handle.ok();
    }

    fn reconnect_now(self: &Rc<Self>) {
        if self.signals.state.get_untracked() == ConnectionState::Closed
            || self.role.get() == Role::Follower
        {
            return;
        }
        self.cancel_retry();
        self.signals.state.set(ConnectionState::Reconnecting);
        self.open();
    }

    fn close(&self) {
        self.cancel_retry();
        // A ticket still on its way is dropped when it arrives.
        self.forget_opening();
        self.drop_source();
        self.end_roll_call();
        self.listeners.borrow_mut().clear();
        *self.carried.borrow_mut() = None;
        // The next tab in line takes the stream over, without this hook's topics; this
        // one's last state is not relayed.
        self.announce_leaving();
        if let Some(leadership) = self.leadership.borrow_mut().take() {
            leadership.leave();
        }
        self.role.set(Role::Alone);
        for (target, name, listener) in self.page.borrow_mut().drain(..) {
            let _ =
                target.remove_event_listener_with_callback(name, listener.as_ref().unchecked_ref());
        }
        // The owner may already be gone (unmounting): its signals with it.
        let _ = self.signals.state.try_update(|state| {
            *state = next_state(*state, SourceSignal::ClosedByOwner).0;
        });
    }

    /// Closes the EventSource. Its listeners stay until the next `open` or `close`
    /// replaces them: this may run inside one of them, which must not be freed mid-call.
    fn drop_source(&self) {
        if let Some(source) = self.source.borrow_mut().take() {
            source.close();
        }
    }
}

/// Adds `handler` as the `event_type` listener of `target`, which keeps it until `close`.
fn listen_on(
    target: &web_sys::EventTarget,
    event_type: &'static str,
    handler: impl FnMut(web_sys::Event) + 'static,
) -> (web_sys::EventTarget, &'static str, Listener) {
    let closure = Closure::<dyn FnMut(web_sys::Event)>::new(handler);
    let _ = target.add_event_listener_with_callback(event_type, closure.as_ref().unchecked_ref());
    (target.clone(), event_type, closure)
}

fn listen(
    source: &EventSource,
    event_type: &str,
    connection: Weak<Connection>,
    handler: impl Fn(&Rc<Connection>, &web_sys::Event) + 'static,
) -> Listener {
    let closure = Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
        if let Some(connection) = connection.upgrade() {
            handler(&connection, &event);
        }
    });
    // Cannot fail for an EventSource and a function.
    let _ = source.add_event_listener_with_callback(event_type, closure.as_ref().unchecked_ref());
    closure
}
