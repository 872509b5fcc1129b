use events::{Account, Resync, Snapshot, event_type};
use leptos::{prelude::*, task::spawn_local};

use super::{
    account_form::AccountForm,
    accounts_panel::AccountsPanel,
    connection_badge::ConnectionBadge,
    event_log::{EventLog, LogEntry},
    room_panel::{RoomMessage, RoomPanel},
};
use crate::{
    api,
    hooks::{Credentials, UseEventsOptions, use_events_with_options, use_presence},
    session::Session,
};

/// How many log lines are kept on the page.
const LOG_LINES: usize = 200;
/// How many messages of the room are kept on the page.
const ROOM_LINES: usize = 200;

/// Everything about one signed-in user: their stream, accounts, snapshots, events and the
/// room they are in.
#[component]
pub fn Dashboard(session: Session) -> impl IntoView {
    let token = StoredValue::new(session.token.clone());
    let accounts = RwSignal::new(Vec::<Account>::new());
    let snapshots = RwSignal::new(Vec::<Snapshot>::new());
    let log = RwSignal::new(Vec::<LogEntry>::new());
    let count = RwSignal::new(0_u64);
    // The room's topic, and its messages since it was joined.
    let room = RwSignal::new(None::<String>);
    let messages = RwSignal::new(Vec::<RoomMessage>::new());
    let posted = StoredValue::new(0_u64);
    // Why some of the room's messages may be missing (its last `stream.resync`).
    let room_gap = RwSignal::new(None::<String>);
    // The last resync of the user's own events or the broadcasts.
    let resync = RwSignal::new(None::<Resync>);
    // Who is online in the room.
    let presence = use_presence(token);

    // Accounts and snapshots are fetched, not pushed: on mount, and whenever an event
    // says they changed (or a resync says we may have missed that).
    let refresh = move || {
        spawn_local(async move {
            let token = token.get_value();
            if let Ok(list) = api::accounts(&token).await {
                accounts.set(list);
            }
            if let Ok(list) = api::snapshots(&token).await {
                snapshots.set(list);
            }
        });
    };
    refresh();

    // The token the user signed in with, then a fresh one whenever it expires: the
    // stream resumes from its last id with it, missing nothing.
    let first = std::cell::Cell::new(Some(session.token.clone()));
    let user_id = session.user_id.clone();
    let rooms = session.rooms.clone();
    let credentials = Credentials::renewing(move || {
        let first = first.take();
        let (user_id, rooms) = (user_id.clone(), rooms.clone());
        async move {
            match first {
                Some(token) => Ok(token),
                None => api::request_token(&user_id, &rooms)
                    .await
                    .map(|issued| issued.token)
                    .map_err(|failure| failure.to_string()),
            }
        }
    });
    // Every event of the user, of any type: the log is the place to see what arrives. The
    // room's go to the room, as the hook hands them over: it passes only the topics this
    // page asked for.
    let options = UseEventsOptions {
        topics: Signal::derive(move || room.get().into_iter().collect()),
        ..UseEventsOptions::default()
    };
    let events = use_events_with_options(
        &[],
        credentials,
        move |event| {
            if event.event_type == event_type::STREAM_OPENED {
                return;
            }
            if event.topic().is_some() {
                // Arrivals and departures keep the room's online list; a resync has it
                // asked for again.
                presence.hear(event);
                if event.event_type == event_type::STREAM_RESYNC {
                    // The room's history cannot be replayed: say so in the room; the
                    // user's own state is not concerned.
                    let reason = event.envelope.data.parse::<Resync>().map(|r| r.reason);
                    room_gap.set(Some(reason.unwrap_or_default()));
                    return;
                }
                let key = posted.get_value() + 1;
                if let Some(message) = RoomMessage::new(key, event) {
                    posted.set_value(key);
                    messages.update(|list| {
                        list.push(message);
                        let extra = list.len().saturating_sub(ROOM_LINES);
                        list.drain(..extra);
                    });
                }
                return;
            }
            let key = count.get_untracked() + 1;
            count.set(key);
            log.update(|lines| {
                lines.insert(0, LogEntry::new(key, event));
                lines.truncate(LOG_LINES);
            });
            if event.event_type == event_type::STREAM_RESYNC {
                resync.set(event.envelope.data.parse::<Resync>().ok());
            }
            if matches!(
                event.event_type.as_str(),
                event_type::SNAPSHOTS_GENERATED | event_type::STREAM_RESYNC
            ) {
                refresh();
            }
        },
        options,
    );
    // Who is online is asked for once the stream carries the room: from then on its
    // arrivals and departures reach the page, so none falls between the answer and them.
    let carried = Memo::new(move |_| {
        room.get()
            .filter(|topic| events.stream_topics.get().contains(topic))
    });
    Effect::new(move |_| presence.follow(carried.get()));
    let join = Callback::new(move |topic: Option<String>| {
        if room.get_untracked() != topic {
            messages.set(Vec::new());
            room_gap.set(None);
            room.set(topic);
        }
    });

    view! {
        <section class="card status">
            <h2>"Stream"</h2>
            <ConnectionBadge state=events.state server_id=events.server_id error=events.last_error holder=events.holder />
            <p class="hint cursor">
                "Resume position: "
                <code data-testid="last-event-id">{move || events.last_event_id.get().unwrap_or_else(|| "—".into())}</code>
            </p>
            {move || resync.get().map(|r| view! {
                <p class="warning" data-testid="resync">"Resynchronised (" {r.reason} "): state was refetched."</p>
            })}
        </section>
        <AccountForm token=token on_created=Callback::new(move |account: Account| {
            accounts.update(|list| {
                if !list.iter().any(|a| a.id == account.id) {
                    list.push(account);
                }
            });
        }) />
        <RoomPanel
            token=token
            room=room.into()
            on_join=join
            messages=messages.into()
            stream_topics=events.stream_topics
            refusals=events.topic_refusals
            gap=room_gap.into()
            me=session.user_id.clone()
            online=presence.online
            online_error=presence.error
        />
        <AccountsPanel accounts=accounts.into() snapshots=snapshots.into() />
        <EventLog entries=log.into() count=count.into() />
    }
}
