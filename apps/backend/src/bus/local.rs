use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use events::Envelope;

use crate::hub::Hub;

/// The single-node bus: publishing delivers straight to this instance's hub.
#[derive(Debug)]
pub struct LocalBus {
    hub: Hub,
    /// The last sequence number given to each user's events.
    sequences: Mutex<HashMap<String, u64>>,
}

impl LocalBus {
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            sequences: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn publish(&self, mut envelope: Envelope) -> Envelope {
        // Numbering and delivery happen under one lock, so that concurrent publishers
        // for one user deliver in the order of their sequence numbers.
        let mut sequences = self
            .sequences
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sequence = sequences.entry(envelope.user_id.clone()).or_insert(0);
        *sequence += 1;
        envelope.id = Some(*sequence);
        self.hub.deliver(&envelope);
        envelope
    }
}
