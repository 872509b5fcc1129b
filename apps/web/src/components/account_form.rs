use events::{Account, CreateAccountRequest};
use leptos::{prelude::*, task::spawn_local};

use crate::api;

/// Creates an account for the signed-in user, showing the server's validation errors
/// inline and a busy state while the request runs.
#[component]
pub fn AccountForm(
    /// The user's token.
    token: StoredValue<String>,
    /// Called with each account the server created.
    on_created: Callback<Account>,
) -> impl IntoView {
    let name = RwSignal::new(String::new());
    let balance = RwSignal::new(String::from("0"));
    let busy = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    // Names the account being created, so that submitting again after a failure (which
    // may have created it after all) never creates a second: a fresh one after each
    // success, and the form's content is part of the key.
    let attempt = StoredValue::new(fresh_attempt());

    let submit = move || {
        let Ok(amount) = balance.get_untracked().trim().parse::<i64>() else {
            error.set(Some("Balance must be a whole number.".into()));
            return;
        };
        let request = CreateAccountRequest {
            name: name.get_untracked(),
            balance: amount,
        };
        busy.set(true);
        error.set(None);
        let key = format!(
            "account-{}-{:016x}",
            attempt.get_value(),
            events::owner_tag(&format!("{}\n{}", request.name, request.balance))
        );
        spawn_local(async move {
            match api::create_account(&token.get_value(), &request, &key).await {
                Ok(account) => {
                    name.set(String::new());
                    attempt.set_value(fresh_attempt());
                    on_created.run(account);
                }
                Err(failure) => error.set(Some(failure.message)),
            }
            busy.set(false);
        });
    };

    view! {
        <section class="card">
            <h2>"New account"</h2>
            <form
                class="account-form"
                on:submit=move |ev| {
                    ev.prevent_default();
                    submit();
                }
            >
                <label>
                    "Name"
                    <input
                        type="text"
                        data-testid="account-name"
                        placeholder="Savings"
                        prop:value=move || name.get()
                        on:input=move |ev| name.set(event_target_value(&ev))
                    />
                </label>
                <label>
                    "Balance"
                    <input
                        type="number"
                        step="1"
                        min="0"
                        data-testid="account-balance"
                        prop:value=move || balance.get()
                        on:input=move |ev| balance.set(event_target_value(&ev))
                    />
                </label>
                <button type="submit" data-testid="create-account" disabled=move || busy.get() class:busy=move || busy.get()>
                    {move || if busy.get() { "Creating…" } else { "Create account" }}
                </button>
            </form>
            {move || error.get().map(|e| view! { <p class="error" role="alert" data-testid="form-error">{e}</p> })}
        </section>
    }
}

/// A name for the next account creation: random, in the characters an
/// `Idempotency-Key` allows.
fn fresh_attempt() -> String {
    format!(
        "{:013x}",
        (js_sys::Math::random() * (1u64 << 52) as f64) as u64
    )
}
