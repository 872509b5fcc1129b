use events::{Envelope, USER_EVENTS_CHANNEL};
use fred::{
    clients::{Client, SubscriberClient},
    interfaces::{EventInterface, PubsubInterface},
    types::{Message, scripts::Script},
};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::BusError;
use crate::{hub::Hub, redis::Redis};

/// Numbers an event in its user's sequence and publishes it, in one round trip and
/// atomically, so that every instance sees each user's events in sequence order.
///
/// KEYS[1]: the user's sequence counter. ARGV[1]: the envelope as JSON, without `id`.
/// ARGV[2]: the channel. The id is spliced in after the opening brace rather than by
/// re-encoding with cjson, which would turn an empty array in `data` into an object.
const PUBLISH_SCRIPT: &str = r#"
local id = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[2], '{"id":' .. id .. ',' .. string.sub(ARGV[1], 2))
return id
"#;

/// The multi-instance bus: Redis Pub/Sub on the `user-events` channel.
#[derive(Debug)]
pub struct RedisBus {
    client: Client,
    publish_script: Script,
}

impl RedisBus {
    pub fn new(redis: &Redis) -> Self {
        Self {
            client: redis.client.clone(),
            publish_script: Script::from_lua(PUBLISH_SCRIPT),
        }
    }

    pub(super) async fn publish(&self, mut envelope: Envelope) -> Result<Envelope, BusError> {
        let json = serde_json::to_string(&envelope).expect("an Envelope always serializes");
        let id: u64 = self
            .publish_script
            .evalsha_with_reload(
                &self.client,
                sequence_key(&envelope.user_id),
                vec![json, USER_EVENTS_CHANNEL.to_string()],
            )
            .await?;
        envelope.id = Some(id);
        Ok(envelope)
    }
}

/// The Redis key of a user's sequence counter. The braces are a hash tag, keeping all of
/// one user's keys on one Redis Cluster slot.
fn sequence_key(user_id: &str) -> String {
    format!("events:{{{user_id}}}:seq")
}

/// Subscribes to `user-events` and starts relaying every message on it to `hub`, until
/// `shutdown` fires. Returns once the subscription is confirmed, so that no event
/// published after this returns can be missed.
pub async fn start_relay(
    subscriber: SubscriberClient,
    hub: Hub,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    // Taken before subscribing, so the first message cannot slip past.
    let messages = subscriber.message_rx();
    subscriber.subscribe(USER_EVENTS_CHANNEL).await?;
    Ok(tokio::spawn(relay(messages, subscriber, hub, shutdown)))
}

async fn relay(
    mut messages: tokio::sync::broadcast::Receiver<Message>,
    subscriber: SubscriberClient,
    hub: Hub,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            // Shutdown was requested: stop relaying and leave the channel.
            () = shutdown.cancelled() => break,
            received = messages.recv() => match received {
                Ok(message) => relay_one(&message, &hub),
                // We fell behind fred's buffer: those events are gone for live delivery.
                Err(RecvError::Lagged(skipped)) => {
                    tracing::error!(skipped, "relay fell behind redis; events were skipped");
                }
                // The client was dropped: nothing more will arrive.
                Err(RecvError::Closed) => break,
            },
        }
    }
    let _ = subscriber.unsubscribe(USER_EVENTS_CHANNEL).await;
    tracing::info!("relay stopped");
}

fn relay_one(message: &Message, hub: &Hub) {
    let Some(bytes) = message.value.as_bytes() else {
        tracing::warn!(channel = %message.channel, "ignored a non-text message");
        return;
    };
    match serde_json::from_slice::<Envelope>(bytes) {
        Ok(envelope) if events::validate_user_id(&envelope.user_id).is_ok() => {
            hub.deliver(&envelope);
        }
        Ok(envelope) => {
            tracing::warn!(user_id = %envelope.user_id, "ignored a message with an invalid userId");
        }
        Err(error) => tracing::warn!(%error, "ignored a message that is not an Envelope"),
    }
}
