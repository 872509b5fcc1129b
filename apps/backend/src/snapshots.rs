//! The snapshot service: consumes the internal `snapshots.generate` event and publishes
//! `snapshots.generated` to the user.

use std::{sync::Arc, time::Duration};

use events::{Envelope, Snapshot, SnapshotsGenerated, event_type};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{Bus, Guard, Publication},
    clock,
    store::Store,
};

/// The internal `snapshots.generate` event: take a snapshot of each of a user's accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateSnapshots {
    pub user_id: String,
}

/// The sending side of the in-process channel that carries `snapshots.generate`, the role
/// the original design's event emitter played. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SnapshotRequests(mpsc::Sender<GenerateSnapshots>);

impl SnapshotRequests {
    /// Queues a generation for `user_id`; waits if the service is behind.
    pub async fn request(&self, user_id: &str) {
        let event = GenerateSnapshots {
            user_id: user_id.to_string(),
        };
        if self.0.send(event).await.is_err() {
            tracing::warn!(user_id, "snapshot service has stopped; generation skipped");
        }
    }
}

/// The channel between account creation and the snapshot service.
pub fn channel(capacity: usize) -> (SnapshotRequests, mpsc::Receiver<GenerateSnapshots>) {
    let (tx, rx) = mpsc::channel(capacity);
    (SnapshotRequests(tx), rx)
}

/// The service's state: where it reads accounts and writes snapshots, and how it publishes.
#[derive(Debug)]
pub struct SnapshotService {
    pub store: Arc<Store>,
    pub bus: Arc<Bus>,
    pub server_id: String,
}

/// Attempts per generation before it is given up (Redis may be briefly unreachable).
const ATTEMPTS: u32 = 3;

impl SnapshotService {
    /// Handles requests one at a time, in arrival order, until `shutdown`; then finishes
    /// those already queued, so that an accepted account still gets its snapshots.
    pub async fn run(
        self,
        mut requests: mpsc::Receiver<GenerateSnapshots>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                biased;
                // Stop taking new requests; drain what is queued below.
                () = shutdown.cancelled() => break,
                request = requests.recv() => match request {
                    Some(request) => self.handle(&request).await,
                    // Every sender is gone: the server has stopped.
                    None => return,
                },
            }
        }
        requests.close();
        while let Some(request) = requests.recv().await {
            self.handle(&request).await;
        }
    }

    async fn handle(&self, request: &GenerateSnapshots) {
        for attempt in 1..=ATTEMPTS {
            match self.generate(&request.user_id).await {
                Ok(count) => {
                    tracing::info!(user_id = %request.user_id, count, "snapshots generated");
                    return;
                }
                Err(error) if attempt < ATTEMPTS => {
                    tracing::warn!(user_id = %request.user_id, %error, attempt, "snapshot generation failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(error) => {
                    tracing::error!(user_id = %request.user_id, %error, "snapshot generation failed; giving up");
                }
            }
        }
    }

    /// Takes one snapshot of each of the user's accounts (so the cost grows with that
    /// user's accounts only), stores them, and tells the user.
    async fn generate(&self, user_id: &str) -> anyhow::Result<usize> {
        let taken_at = clock::now_rfc3339();
        let snapshots: Vec<Snapshot> = self
            .store
            .accounts(user_id)
            .await?
            .into_iter()
            .map(|account| Snapshot {
                id: uuid::Uuid::new_v4().to_string(),
                account_id: account.id,
                user_id: account.user_id,
                name: account.name,
                balance: account.balance,
                taken_at: taken_at.clone(),
            })
            .collect();
        // Accounts are only ever added, so the count orders the generations: one that
        // read fewer accounts (on another instance, or a retried request's) is neither
        // kept on top of a newer one nor reported after it.
        let version = snapshots.len() as u64;
        if !self
            .store
            .insert_snapshots(user_id, &snapshots, version)
            .await?
        {
            tracing::debug!(
                user_id,
                version,
                "a newer generation of snapshots was kept already"
            );
            return Ok(snapshots.len());
        }

        let generated = SnapshotsGenerated {
            snapshot_count: snapshots.len() as u64,
            timestamp: taken_at,
            server_id: self.server_id.clone(),
        };
        let data = events::Payload::of(&generated)?;
        // Stored first, then published: the publish is guarded by the same version, as
        // two kept generations may still publish in either order.
        let guard = Guard {
            version: Some(version),
            ..Guard::default()
        };
        let event = Envelope::new(user_id, event_type::SNAPSHOTS_GENERATED, data);
        if self.bus.publish_guarded(event, guard).await? == Publication::Superseded {
            tracing::debug!(user_id, "a newer snapshot count was published already");
        }
        Ok(snapshots.len())
    }
}
