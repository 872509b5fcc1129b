//! Connections to Redis (one node or a Cluster): a client for commands, a client of its
//! own for publishing when publishes wait for replicas, and a subscriber (a connection
//! in subscribe mode can issue no other command); each kept connected for good.

use std::{collections::HashMap, time::Duration};

use fred::{
    clients::{Client, SubscriberClient},
    error::Error,
    interfaces::{ClientLike, EventInterface, PubsubInterface},
    types::{Builder, ConnectHandle, config::Config, config::ReconnectPolicy},
    util::redis_keyslot,
};
use futures_util::future::join_all;

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
        supervise("commands", client.clone(), client.init().await?, None);
        let connection = subscriber.init().await?;
        supervise(
            "subscriber",
            subscriber.clone(),
            connection,
            Some(subscriber.clone()),
        );
        let publisher = if separate_publisher {
            let publisher = builder.build()?;
            let connection = publisher.init().await?;
            supervise("publisher", publisher.clone(), connection, None);
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
        if self.publisher.id() != self.client.id() {
            let _ = self.publisher.quit().await;
        }
        let _ = self.client.quit().await;
    }
}

/// Keeps `client` connected for good. fred's reconnection policy covers lost
/// connections, but its routing task ends for good when it fails otherwise: fred 10.1
/// gives up on a command redirected (`ASK`) while a cluster slot migrates by ending that
/// task, after which every command of the client times out. So when the task ends other
/// than by `QUIT`, a new one is started (a subscriber then subscribes again; its probes
/// going stale meanwhile make the relay catch every stream up when they return).
fn supervise<C>(
    role: &'static str,
    client: C,
    mut connection: ConnectHandle,
    resubscribe: Option<SubscriberClient>,
) where
    C: ClientLike + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            let ended = connection.await;
            let quit = match &ended {
                Ok(Ok(())) => true,
                Ok(Err(error)) => error.is_canceled(),
                // The task panicked or was aborted: nothing to resume.
                Err(_) => true,
            };
            if quit {
                return;
            }
            tracing::error!(role, error = ?ended, "redis client stopped; starting it again");
            tokio::time::sleep(Duration::from_millis(100)).await;
            connection = client.connect();
            if client.wait_for_connect().await.is_ok()
                && let Some(subscriber) = &resubscribe
                && let Err(error) = self::resubscribe(subscriber).await
            {
                tracing::error!(role, %error, "could not subscribe again");
            }
        }
    });
}

/// Subscribes again to every channel `subscriber` tracks, shard channels where their
/// slots are now (one command per slot). Not fred's `resubscribe_all`, which also sends
/// a `PSUBSCRIBE` with no pattern, which Redis refuses, and so gives up before the shard
/// channels.
pub async fn resubscribe(subscriber: &SubscriberClient) -> Result<(), Error> {
    let channels: Vec<String> = subscriber
        .tracked_channels()
        .iter()
        .map(|channel| channel.to_string())
        .collect();
    if !channels.is_empty() {
        subscriber.subscribe(channels).await?;
    }
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for channel in subscriber.tracked_shard_channels() {
        by_slot
            .entry(redis_keyslot(channel.as_bytes()))
            .or_default()
            .push(channel.to_string());
    }
    let subscribed = join_all(
        by_slot
            .into_values()
            .map(|channels| subscriber.ssubscribe(channels)),
    )
    .await;
    subscribed.into_iter().collect()
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
        // running, a replica without its master, a cluster without a slot's owner or with
        // a slot half migrated. And fred giving up on a command it could not get through
        // (retries while a slot moves), which it reports as of no particular kind.
        _ => {
            let details = error.details();
            if details.starts_with("Too many failed write attempts") {
                return true;
            }
            [
                "LOADING",
                "BUSY",
                "MASTERDOWN",
                "READONLY",
                "CLUSTERDOWN",
                "TRYAGAIN",
                "ASK",
                "MOVED",
                "NOSCRIPT",
            ]
            .iter()
            .any(|prefix| details.starts_with(prefix))
        }
    }
}
