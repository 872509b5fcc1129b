use events::{Account, Snapshot, event_type};
use leptos::{prelude::*, task::spawn_local};

use super::{
    account_form::AccountForm,
    accounts_panel::AccountsPanel,
    connection_badge::ConnectionBadge,
    event_log::{EventLog, LogEntry},
};
use crate::{
    api,
    hooks::{Credentials, use_events},
    session::Session,
};

/// How many log lines are kept on the page.
const LOG_LINES: usize = 200;

/// Everything about one signed-in user: their stream, accounts, snapshots and events.
#[component]
pub fn Dashboard(session: Session) -> impl IntoView {
    let token = StoredValue::new(session.token.clone());
    let accounts = RwSignal::new(Vec::<Account>::new());
    let snapshots = RwSignal::new(Vec::<Snapshot>::new());
    let log = RwSignal::new(Vec::<LogEntry>::new());
    let count = RwSignal::new(0_u64);

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
    let credentials = Credentials::renewing(move || {
        let first = first.take();
        let user_id = user_id.clone();
        async move {
            match first {
                Some(token) => Ok(token),
                None => api::request_token(&user_id)
                    .await
                    .map(|issued| issued.token)
                    .map_err(|failure| failure.to_string()),
            }
        }
    });
    // Every event of the user, of any type: the log is the place to see what arrives.
    let events = use_events(&[], credentials, move |event| {
        if event.event_type == event_type::STREAM_OPENED {
            return;
        }
        let key = count.get_untracked() + 1;
        count.set(key);
        log.update(|lines| {
            lines.insert(0, LogEntry::new(key, event));
            lines.truncate(LOG_LINES);
        });
        if matches!(
            event.event_type.as_str(),
            event_type::SNAPSHOTS_GENERATED | event_type::STREAM_RESYNC
        ) {
            refresh();
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
            {move || events.last_resync.get().map(|r| view! {
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
        <AccountsPanel accounts=accounts.into() snapshots=snapshots.into() />
        <EventLog entries=log.into() count=count.into() />
    }
}
