use leptos::prelude::*;

use crate::{format, hooks::ReceivedEvent};

/// One line of the live event log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Unique within the log.
    pub key: u64,
    pub time: String,
    pub event_type: String,
    pub id: Option<u64>,
    pub server_id: String,
    pub latency_ms: Option<u64>,
    /// The event's `data`, as it was published.
    pub data: String,
}

impl LogEntry {
    pub fn new(key: u64, event: &ReceivedEvent) -> Self {
        Self {
            key,
            time: format::clock_time(event.received_at),
            event_type: event.event_type.clone(),
            id: event.envelope.id,
            server_id: event.envelope.server_id.clone().unwrap_or_default(),
            latency_ms: format::latency_ms(event.envelope.published_at, event.received_at),
            data: event.envelope.data.json().to_string(),
        }
    }
}

/// The events received, newest first, and how many; a line opens to show its data, and
/// a filter keeps the lines whose type contains what is typed.
#[component]
pub fn EventLog(entries: Signal<Vec<LogEntry>>, count: Signal<u64>) -> impl IntoView {
    let filter = RwSignal::new(String::new());
    let shown = move || {
        let filter = filter.get();
        let filter = filter.trim();
        entries
            .get()
            .into_iter()
            .filter(|entry| filter.is_empty() || entry.event_type.contains(filter))
            .collect::<Vec<_>>()
    };
    view! {
        <section class="card log">
            <h2>
                "Live events " <span class="count" data-testid="event-count">{move || count.get()}</span>
            </h2>
            <label class="filter">
                "Type contains "
                <input
                    type="search"
                    placeholder="e.g. orders."
                    data-testid="event-filter"
                    prop:value=move || filter.get()
                    on:input=move |ev| filter.set(event_target_value(&ev))
                />
            </label>
            <Show when=move || !entries.get().is_empty() fallback=|| view! { <p class="hint">"Waiting for events…"</p> }>
                <table data-testid="event-log">
                    <thead>
                        <tr><th>"Time (UTC)"</th><th>"Event"</th><th>"Id"</th><th>"From"</th><th>"Latency"</th></tr>
                    </thead>
                    <For each=shown key=|e| e.key let:entry>
                        <EventRow entry=entry />
                    </For>
                </table>
            </Show>
        </section>
    }
}

/// One event: a line, and its data underneath once opened.
#[component]
fn EventRow(entry: LogEntry) -> impl IntoView {
    let open = RwSignal::new(false);
    view! {
        <tbody class="event" data-event-type=entry.event_type.clone()>
            <tr class="summary" on:click=move |_| open.update(|o| *o = !*o) title="Show the data">
                <td>{entry.time.clone()}</td>
                <td class="type">
                    <span class="toggle">{move || if open.get() { "▾ " } else { "▸ " }}</span>
                    {entry.event_type.clone()}
                </td>
                <td>{entry.id.map(|i| i.to_string()).unwrap_or_default()}</td>
                <td>{entry.server_id.clone()}</td>
                <td>{entry.latency_ms.map(|ms| format!("{ms} ms")).unwrap_or_default()}</td>
            </tr>
            <Show when=move || open.get()>
                <tr class="data">
                    <td colspan="5"><pre data-testid="event-data">{entry.data.clone()}</pre></td>
                </tr>
            </Show>
        </tbody>
    }
}
