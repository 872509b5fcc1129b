use leptos::{prelude::*, task::spawn_local};

use super::online_list::OnlineList;
use crate::{
    api, format,
    hooks::{Online, ReceivedEvent, TopicRefusal},
    session::room_topic,
};

/// The event type of a message posted in a room; its data is `{"text": "..."}`.
pub const CHAT_MESSAGE: &str = "chat.message";

/// One message of the room, as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomMessage {
    /// Unique within the room's list.
    pub key: u64,
    /// Who posted it (the event's `publisherId`); `None` for a message a service published.
    pub publisher: Option<String>,
    pub text: String,
    pub time: String,
}

impl RoomMessage {
    /// The message `event` carries, if it is one (a `chat.message` with a `text`).
    pub fn new(key: u64, event: &ReceivedEvent) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Chat {
            text: String,
        }
        if event.event_type != CHAT_MESSAGE {
            return None;
        }
        let chat: Chat = event.envelope.data.parse().ok()?;
        Some(Self {
            key,
            publisher: event.envelope.publisher_id.clone(),
            text: chat.text,
            time: format::clock_time(event.received_at),
        })
    }
}

/// Where the page stands with the room it asked for.
#[derive(Debug, Clone, PartialEq)]
enum Standing {
    /// No room asked for.
    Outside,
    /// Asked for; the stream does not carry it yet.
    Joining(String),
    /// The stream carries it: its messages arrive.
    In(String),
    /// The stream will not carry it.
    Refused(TopicRefusal),
}

/// A chat room: join one by name (the topic `room:<name>`), see who is online and its
/// messages live with who posted them, and post to it with the user's own token. Says so
/// plainly when the user may not have the room.
#[component]
pub fn RoomPanel(
    /// The user's token, to post with.
    token: StoredValue<String>,
    /// The room's topic, once one was joined.
    room: Signal<Option<String>>,
    /// Called with the topic to join, or `None` to leave.
    on_join: Callback<Option<String>>,
    /// The room's messages, oldest first.
    messages: Signal<Vec<RoomMessage>>,
    /// The topics the stream carries.
    stream_topics: Signal<Vec<String>>,
    /// Why the stream does not carry some of the topics asked for.
    refusals: Signal<Vec<TopicRefusal>>,
    /// Why some of the room's messages may be missing (the room's `stream.resync`), since
    /// it was joined.
    gap: Signal<Option<String>>,
    /// The signed-in user.
    me: String,
    /// Who is online in the room, once the stream carries it.
    online: Signal<Option<Online>>,
    /// Why who is online cannot be told.
    online_error: Signal<Option<String>>,
) -> impl IntoView {
    let name = RwSignal::new(String::new());
    let text = RwSignal::new(String::new());
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);

    let standing = Memo::new(move |_| {
        let Some(topic) = room.get() else {
            return Standing::Outside;
        };
        if let Some(refusal) = refusals.get().into_iter().find(|r| r.topic == topic) {
            return Standing::Refused(refusal);
        }
        if stream_topics.get().contains(&topic) {
            Standing::In(topic)
        } else {
            Standing::Joining(topic)
        }
    });
    let joined = move || matches!(standing.get(), Standing::In(_));

    let join = move || {
        let typed = name.get_untracked();
        error.set(None);
        if typed.trim().is_empty() {
            error.set(Some("Enter a room name.".into()));
            return;
        }
        on_join.run(Some(room_topic(&typed)));
    };

    let send = move || {
        let (Some(topic), said) = (room.get_untracked(), text.get_untracked()) else {
            return;
        };
        if said.trim().is_empty() {
            return;
        }
        busy.set(true);
        error.set(None);
        let data = serde_json::json!({ "text": said }).into();
        let key = format!("chat-{}", fresh_key());
        spawn_local(async move {
            match api::publish_to_topic(&token.get_value(), &topic, CHAT_MESSAGE, data, &key).await
            {
                Ok(_) => text.set(String::new()),
                Err(failure) => error.set(Some(failure.message)),
            }
            busy.set(false);
        });
    };

    view! {
        <section class="card room" data-testid="room">
            <h2>"Room"</h2>
            <form
                class="row"
                on:submit=move |ev| {
                    ev.prevent_default();
                    join();
                }
            >
                <input
                    type="text"
                    data-testid="room-name"
                    placeholder="room name, e.g. lobby"
                    maxlength="123"
                    prop:value=move || name.get()
                    on:input=move |ev| name.set(event_target_value(&ev))
                />
                <button type="submit" data-testid="join-room">"Join"</button>
                <Show when=move || room.get().is_some()>
                    <button type="button" class="secondary" data-testid="leave-room" on:click=move |_| on_join.run(None)>
                        "Leave"
                    </button>
                </Show>
            </form>
            <p
                class="hint"
                data-testid="room-status"
                data-joined=move || joined().to_string()
                data-stream-topics=move || stream_topics.get().join(" ")
            >
                {move || match standing.get() {
                    Standing::Outside => "Join a room to chat.".to_string(),
                    Standing::Joining(topic) => format!("Joining {topic}…"),
                    Standing::In(topic) => format!("In {topic}"),
                    Standing::Refused(_) => String::new(),
                }}
            </p>
            {move || match standing.get() {
                Standing::Refused(refusal) => Some(view! {
                    <p class="error" role="alert" data-testid="room-error" title=refusal.reason.clone()>
                        {if refusal.is_forbidden() {
                            format!("You are not allowed in {}", refusal.topic)
                        } else {
                            format!("{} cannot be joined: {}", refusal.topic, refusal.reason)
                        }}
                    </p>
                }),
                _ => None,
            }}
            {move || gap.get().map(|reason| view! {
                <p class="warning" data-testid="room-resync">
                    "Some messages of this room may be missing (" {reason} ")."
                </p>
            })}
            <Show when=joined>
                <OnlineList me=me.clone() online=online error=online_error />
                <ul class="messages" data-testid="room-messages">
                    <For each=move || messages.get() key=|m| m.key let:message>
                        <li data-publisher=message.publisher.clone().unwrap_or_default()>
                            <time>{message.time.clone()}</time>
                            <strong class="who">{message.publisher.clone().unwrap_or_else(|| "service".into())}</strong>
                            <span class="text">{message.text.clone()}</span>
                        </li>
                    </For>
                </ul>
                <form
                    class="row"
                    on:submit=move |ev| {
                        ev.prevent_default();
                        send();
                    }
                >
                    <input
                        type="text"
                        data-testid="room-message"
                        placeholder="say something"
                        prop:value=move || text.get()
                        on:input=move |ev| text.set(event_target_value(&ev))
                    />
                    <button type="submit" data-testid="send-message" disabled=move || busy.get()>
                        "Send"
                    </button>
                </form>
            </Show>
            {move || error.get().map(|e| view! { <p class="error" role="alert" data-testid="room-send-error">{e}</p> })}
        </section>
    }
}

/// A name for one posting, in the characters an `Idempotency-Key` allows.
fn fresh_key() -> String {
    let part = || (js_sys::Math::random() * (1u64 << 52) as f64) as u64;
    format!("{:013x}{:013x}", part(), part())
}
