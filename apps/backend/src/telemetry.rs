//! Log output: every line carries this instance's server id, in text or JSON.

use std::{fmt, time::Duration};

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

use crate::{
    config::LogFormat,
    metrics::{HttpLabels, Metrics},
};

/// Installs the global subscriber. Verbosity comes from `RUST_LOG` (default `info`).
pub fn init(server_id: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder
            .event_format(Tagged {
                server_id: server_id.to_string(),
                json: false,
                inner: tracing_subscriber::fmt::format().compact(),
            })
            .try_init(),
        LogFormat::Json => builder
            .event_format(Tagged {
                server_id: serde_json::to_string(server_id).expect("a string serializes"),
                json: true,
                inner: tracing_subscriber::fmt::format().json(),
            })
            .try_init(),
    };
}

/// Wraps a line format to add the server id: a `server=` prefix in text, a `serverId`
/// key in JSON.
struct Tagged<F> {
    /// Already JSON-quoted when `json` is set.
    server_id: String,
    json: bool,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for Tagged<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if !self.json {
            write!(writer, "server={} ", self.server_id)?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"serverId\":{},{rest}", self.server_id),
            None => writer.write_str(&line),
        }
    }
}

/// Records one answered request: counted in `http_requests` by route pattern and status,
/// and logged with its path (never the query, which may hold a token) and its time to
/// the response head.
pub fn request_served(
    metrics: &Metrics,
    method: &str,
    path: &str,
    route: &str,
    status: u16,
    elapsed: Duration,
) {
    let method = crate::metrics::method_label(method);
    let labels = HttpLabels {
        method: method.to_string(),
        route: route.to_string(),
        status,
    };
    metrics.http_requests.get_or_create(&labels).inc();
    tracing::info!(
        method,
        path,
        status,
        elapsed_ms = elapsed.as_millis() as u64,
        "request"
    );
}
