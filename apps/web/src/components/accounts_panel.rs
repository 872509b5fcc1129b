use events::{Account, Snapshot};
use leptos::prelude::*;

use crate::format;

/// The user's accounts and their latest snapshots.
#[component]
pub fn AccountsPanel(
    accounts: Signal<Vec<Account>>,
    snapshots: Signal<Vec<Snapshot>>,
) -> impl IntoView {
    view! {
        <section class="card">
            <h2>"Accounts"</h2>
            <Show when=move || !accounts.get().is_empty() fallback=|| view! { <p class="hint">"No accounts yet."</p> }>
                <ul class="accounts" data-testid="accounts">
                    <For each=move || accounts.get() key=|a| a.id.clone() let:account>
                        <li>
                            <span class="name">{account.name.clone()}</span>
                            <span class="amount">{format::balance(account.balance)}</span>
                        </li>
                    </For>
                </ul>
            </Show>
            <h3>"Latest snapshots"</h3>
            <Show when=move || !snapshots.get().is_empty() fallback=|| view! { <p class="hint">"Snapshots appear when an account is created."</p> }>
                <ul class="snapshots" data-testid="snapshots">
                    <For each=move || snapshots.get().into_iter().take(10) key=|s| s.id.clone() let:snapshot>
                        <li>
                            <span class="name">{snapshot.name.clone()}</span>
                            <span class="amount">{format::balance(snapshot.balance)}</span>
                            <time>{snapshot.taken_at.clone()}</time>
                        </li>
                    </For>
                </ul>
            </Show>
        </section>
    }
}
