use leptos::prelude::*;

use crate::hooks::ConnectionState;

/// The stream's state, and which backend instance serves it.
#[component]
pub fn ConnectionBadge(
    /// The stream's state.
    state: Signal<ConnectionState>,
    /// The instance holding the stream, once it said so.
    server_id: Signal<Option<String>>,
    /// The last connection problem, if any.
    error: Signal<Option<String>>,
) -> impl IntoView {
    view! {
        <div class="badge" data-testid="badge" data-state=move || state.get().label()>
            <span class="dot"></span>
            <span class="state">{move || state.get().label()}</span>
            <span class="server" data-testid="server-id">
                {move || server_id.get().map(|s| format!("via {s}")).unwrap_or_default()}
            </span>
            {move || error.get().filter(|_| state.get() != ConnectionState::Open).map(|e| view! { <span class="why">{e}</span> })}
        </div>
    }
}
