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
        }
    }
}

/// The events received, newest first, and how many.
#[component]
pub fn EventLog(entries: Signal<Vec<LogEntry>>, count: Signal<u64>) -> impl IntoView {
    view! {
        <section class="card log">
            <h2>
                "Live events " <span class="count" data-testid="event-count">{move || count.get()}</span>
            </h2>
            <Show when=move || !entries.get().is_empty() fallback=|| view! { <p class="hint">"Waiting for events…"</p> }>
                <table data-testid="event-log">
                    <thead>
                        <tr><th>"Time (UTC)"</th><th>"Event"</th><th>"Id"</th><th>"From"</th><th>"Latency"</th></tr>
                    </thead>
                    <tbody>
                        <For each=move || entries.get() key=|e| e.key let:entry>
                            <tr data-event-type=entry.event_type.clone()>
                                <td>{entry.time.clone()}</td>
                                <td class="type">{entry.event_type.clone()}</td>
                                <td>{entry.id.map(|i| i.to_string()).unwrap_or_default()}</td>
                                <td>{entry.server_id.clone()}</td>
                                <td>{entry.latency_ms.map(|ms| format!("{ms} ms")).unwrap_or_default()}</td>
                            </tr>
                        </For>
                    </tbody>
                </table>
            </Show>
        </section>
    }
}
