use leptos::{prelude::*, task::spawn_local};

use crate::{
    api, format,
    session::{Session, room_patterns},
};

/// The rooms a new user may join and post to, unless they say otherwise.
const DEFAULT_ROOMS: &str = "room:*";

/// Enter (or generate) a user id and the rooms they may use (topic patterns: `room:*`, or
/// `room:lobby, room:dev`; none for no room) and get a token for them; once signed in, who
/// it is and a way out.
///
/// `on_session` receives the user and their token once the server has issued it; the form
/// then gives way to "Signed in as …" and a Disconnect button, which calls `on_sign_out`
/// (the dashboard, and with it the stream, goes) and brings the form back.
#[component]
pub fn UserBox(on_session: Callback<Session>, on_sign_out: Callback<()>) -> impl IntoView {
    let user_id = RwSignal::new(String::new());
    let rooms = RwSignal::new(String::from(DEFAULT_ROOMS));
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let current = RwSignal::new(None::<String>);

    let connect = move || {
        let id = user_id.get_untracked().trim().to_string();
        if id.is_empty() {
            error.set(Some("Enter a user id, or generate one.".into()));
            return;
        }
        let patterns = room_patterns(&rooms.get_untracked());
        busy.set(true);
        error.set(None);
        spawn_local(async move {
            match api::request_token(&id, &patterns).await {
                Ok(token) => {
                    current.set(Some(id.clone()));
                    on_session.run(Session {
                        user_id: id,
                        token: token.token,
                        rooms: patterns,
                    });
                }
                Err(failure) => error.set(Some(failure.message)),
            }
            busy.set(false);
        });
    };

    let disconnect = move |_| {
        current.set(None);
        on_sign_out.run(());
    };

    view! {
        <section class="card user-box">
            <h2>"User"</h2>
            {move || match current.get() {
                Some(id) => view! {
                    <div class="row signed-in">
                        <p class="hint">"Signed in as " <strong data-testid="current-user">{id}</strong></p>
                        <button type="button" class="secondary" data-testid="disconnect" on:click=disconnect>
                            "Disconnect"
                        </button>
                    </div>
                }
                .into_any(),
                None => view! {
                    <form
                        class="row"
                        on:submit=move |ev| {
                            ev.prevent_default();
                            connect();
                        }
                    >
                        <input
                            type="text"
                            data-testid="user-id"
                            placeholder="user id, e.g. alice"
                            maxlength="128"
                            prop:value=move || user_id.get()
                            on:input=move |ev| user_id.set(event_target_value(&ev))
                        />
                        <button
                            type="button"
                            class="secondary"
                            on:click=move |_| user_id.set(format::generated_user_id(js_sys::Math::random()))
                        >
                            "Generate"
                        </button>
                        <label class="rooms" title="Topic patterns the token allows, e.g. room:* or room:lobby, room:dev">
                            "Rooms "
                            <input
                                type="text"
                                data-testid="rooms"
                                placeholder="none"
                                prop:value=move || rooms.get()
                                on:input=move |ev| rooms.set(event_target_value(&ev))
                            />
                        </label>
                        <button type="submit" data-testid="connect" disabled=move || busy.get()>
                            {move || if busy.get() { "Connecting…" } else { "Connect" }}
                        </button>
                    </form>
                }
                .into_any(),
            }}
            {move || error.get().map(|e| view! { <p class="error" data-testid="user-error">{e}</p> })}
        </section>
    }
}
