//! Connections to Redis: one client for commands and publishing, and a separate
//! subscriber connection (a connection in subscribe mode can issue no other command).

use std::time::Duration;

use fred::{
    clients::{Client, SubscriberClient},
    error::Error,
    interfaces::{ClientLike, EventInterface},
    types::{Builder, config::Config, config::ReconnectPolicy},
};

/// How long a command may wait for Redis before the request fails with 503. Short, so
/// that an outage is reported to publishers instead of hanging their requests.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Events fred buffers per listener (messages, reconnects) before a slow listener lags.
const EVENT_BUFFER: usize = 4096;

#[derive(Clone, Debug)]
pub struct Redis {
    pub client: Client,
    /// Publishes events: `client` itself, or, when publishes wait for replicas
    /// (`WAIT` holds up every command behind it on its connection), a client of its own.
    pub publisher: Client,
    pub subscriber: SubscriberClient,
}

impl Redis {
    /// Connects the clients. Fails if Redis cannot be reached now; once connected, they
    /// reconnect forever with exponential backoff (100 ms doubling to 2 s). The bus's
    /// relay re-subscribes after every reconnection (and then catches streams up).
    /// `url` names one Redis or, with `redis-cluster://`, a cluster.
    pub async fn connect(url: &str, separate_publisher: bool) -> Result<Self, Error> {
        let mut builder = Builder::from_config(Config::from_url(url)?);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = COMMAND_TIMEOUT;
                c.internal_command_timeout = COMMAND_TIMEOUT;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = COMMAND_TIMEOUT;
                p.broadcast_channel_capacity = EVENT_BUFFER;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));

        let client = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        client.init().await?;
        subscriber.init().await?;
        let publisher = if separate_publisher {
            let publisher = builder.build()?;
            publisher.init().await?;
            log_connection_events("publisher", &publisher);
            publisher
        } else {
            client.clone()
        };

        log_connection_events("commands", &client);
        log_connection_events("subscriber", &subscriber);
        Ok(Self {
            client,
            publisher,
            subscriber,
        })
    }

    /// Closes every connection.
    pub async fn quit(&self) {
        let _ = self.subscriber.quit().await;
        let _ = self.publisher.quit().await;
        let _ = self.client.quit().await;
    }
}

/// Logs every connection error and reconnection of `client`, so that an operator can
/// see when events may have been missed.
fn log_connection_events(role: &'static str, client: &impl EventInterface) {
    client.on_error(move |(error, server)| async move {
        let server = server.map(|s| s.to_string()).unwrap_or_default();
        tracing::warn!(role, %error, server, "redis connection error");
        Ok(())
    });
    client.on_reconnect(move |server| async move {
        tracing::info!(role, %server, "redis reconnected");
        Ok(())
    });
}

/// Whether `error` means Redis is away or cannot answer now (a 503: retry, or go
/// elsewhere), as opposed to a command that failed on its own terms (a bug: a 500).
pub fn is_unavailable(error: &Error) -> bool {
    use fred::error::ErrorKind;
    match error.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Cluster
        | ErrorKind::Routing
        | ErrorKind::Sentinel => true,
        // Replies Redis gives while it cannot serve: loading its data, a script still
        // running, a replica without its master, a cluster without a slot's owner.
        _ => {
            let details = error.details();
            [
                "LOADING",
                "BUSY",
                "MASTERDOWN",
                "READONLY",
                "CLUSTERDOWN",
                "TRYAGAIN",
                "NOSCRIPT",
            ]
            .iter()
            .any(|prefix| details.starts_with(prefix))
        }
    }
}
