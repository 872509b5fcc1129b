use leptos::prelude::*;

use crate::{format, hooks::Online};

/// Who is online in a room: how many, and who, earliest arrival first, with the signed-in
/// user marked; live as they arrive and leave.
#[component]
pub fn OnlineList(
    /// The signed-in user, marked in the list.
    me: String,
    /// Who is in the room; `None` until the stream carries it.
    online: Signal<Option<Online>>,
    /// Why the list cannot be told, or may be out of date.
    error: Signal<Option<String>>,
) -> impl IntoView {
    let me = StoredValue::new(me);
    let known = move || online.with(|o| o.as_ref().is_some_and(Online::is_known));
    let count = move || {
        online.with(|o| {
            o.as_ref()
                .filter(|o| o.is_known())
                .map(|o| o.count().to_string())
        })
    };
    let named = move || online.with(|o| o.as_ref().map(|o| o.named().to_vec()).unwrap_or_default());
    let unnamed = move || online.with(|o| o.as_ref().map_or(0, Online::unnamed));
    view! {
        <div class="online" data-testid="room-online" data-known=move || known().to_string()>
            <h3>
                "Online " <span class="count" data-testid="online-count">{move || count().unwrap_or_else(|| "…".into())}</span>
            </h3>
            <Show
                when=known
                fallback=move || error.get().is_none().then(|| view! { <p class="hint">"Asking who is here…"</p> })
            >
                <ul class="people" data-testid="online-users">
                    <For each=named key=|u| (u.user_id.clone(), u.since) let:user>
                        {
                            let mine = me.with_value(|me| *me == user.user_id);
                            view! {
                                <li
                                    data-user=user.user_id.clone()
                                    class:me=mine
                                    title=format!("here since {} UTC", format::clock_time(user.since as f64))
                                >
                                    {user.user_id.clone()}
                                    {mine.then(|| view! { <span class="you">" (you)"</span> })}
                                </li>
                            }
                        }
                    </For>
                </ul>
                {move || (unnamed() > 0).then(|| view! { <p class="hint">"and " {unnamed()} " more"</p> })}
            </Show>
            {move || error.get().map(|e| view! { <p class="error" role="alert" data-testid="online-error">{e}</p> })}
        </div>
    }
}
