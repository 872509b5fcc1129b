use leptos::prelude::*;

use crate::hooks::{ConnectionState, StreamHolder};

/// The stream's state, which backend instance serves it, and which tab holds it.
#[component]
pub fn ConnectionBadge(
    /// The stream's state.
    state: Signal<ConnectionState>,
    /// The instance holding the stream, once it said so.
    server_id: Signal<Option<String>>,
    /// The last connection problem, if any.
    error: Signal<Option<String>>,
    /// The tab holding the stream this tab shows, once known.
    holder: Signal<Option<StreamHolder>>,
) -> impl IntoView {
    view! {
        <div class="badge" data-testid="badge" data-state=move || state.get().label()>
            <span class="dot"></span>
            <span class="state">{move || state.get().label()}</span>
            <span class="server" data-testid="server-id">
                {move || server_id.get().map(|s| format!("via {s}")).unwrap_or_default()}
            </span>
            <span class="holder" data-testid="stream-holder" data-holder=move || holder.get().map(StreamHolder::label)>
                {move || holder.get().map(|h| format!("held by {}", h.label())).unwrap_or_default()}
            </span>
            {move || error.get().filter(|_| state.get() != ConnectionState::Open).map(|e| view! { <span class="why">{e}</span> })}
        </div>
    }
}
