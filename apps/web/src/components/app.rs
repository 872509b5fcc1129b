use leptos::prelude::*;

use super::{dashboard::Dashboard, user_box::UserBox};
use crate::session::Session;

/// The whole page: pick a user, then watch their events.
#[component]
pub fn App() -> impl IntoView {
    let session = RwSignal::new(None::<Session>);
    view! {
        <header class="top">
            <h1>"Live events"</h1>
            <p class="tagline">
                "Server-Sent Events, fanned out through Redis to whichever backend holds your stream."
            </p>
        </header>
        <main class="page">
            <UserBox
                on_session=Callback::new(move |s| session.set(Some(s)))
                on_sign_out=Callback::new(move |()| session.set(None))
            />
            // Keyed on the session: a new user gets a new dashboard, and so a new stream.
            {move || session.get().map(|s| view! { <Dashboard session=s /> })}
        </main>
    }
}
