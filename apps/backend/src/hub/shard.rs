//! A worker thread's streams, and the one task on that thread that writes broadcasts
//! and keep-alives to them.
//!
//! Each HTTP worker starts a shard ([`super::Hub::start_shard`]) and the streams it
//! serves directly join it. A broadcast reaches a shard as one message; its dispatcher
//! offers it to each stream in turn, writing straight to the sockets of the streams at
//! rest (`outlet`), on the thread that owns those sockets, both workers in parallel.
//! Keep-alives come from one timer per shard rather than one per stream: every quarter
//! of the keep-alive interval it writes a comment to each resting stream that has been
//! quiet for three quarters of the interval, so none is silent for longer than it.
//!
//! A dispatcher's queue of broadcasts is bounded, as each stream's is. A worker that
//! falls that far behind (more broadcasts than its CPU can write) drops the broadcasts
//! that do not fit and, once it has caught up with the rest, tells every stream of the
//! shard to catch up from history: nothing is lost, and memory stays bounded.
//!
//! The hub's own shard has no dispatcher: streams that cannot be written to directly
//! (those actix-web carries) are in it, and it is offered broadcasts where they are
//! delivered.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::outlet::{Notice, Offering, Outlet, offer_each};
use crate::{frame::Published, metrics::Metrics};

#[derive(Debug)]
pub struct Shard {
    members: Mutex<HashMap<u64, Arc<Outlet>>>,
    /// Where its work goes; none for the hub's own shard.
    dispatcher: Option<mpsc::Sender<Work>>,
    /// A broadcast did not fit in the dispatcher's queue: its streams must catch up.
    lagged: AtomicBool,
}

/// What a dispatcher does for its shard.
#[derive(Debug)]
pub enum Work {
    /// Offer a broadcast to every member.
    Broadcast(Arc<Published>),
    /// Offer a notice to these members (this worker's share of a user's or a topic's
    /// streams).
    Offer(Notice, Vec<(u64, Arc<Outlet>)>),
}

impl Shard {
    pub fn new(dispatcher: Option<mpsc::Sender<Work>>) -> Self {
        Self {
            members: Mutex::default(),
            dispatcher,
            lagged: AtomicBool::new(false),
        }
    }

    fn members(&self) -> MutexGuard<'_, HashMap<u64, Arc<Outlet>>> {
        // Inserts and removals only: a poisoned lock is whole.
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn join(&self, id: u64, outlet: Arc<Outlet>) {
        self.members().insert(id, outlet);
    }

    pub fn leave(&self, id: u64) {
        self.members().remove(&id);
    }

    /// Hands a broadcast to the dispatcher, or offers it here and now.
    pub fn broadcast(&self, published: &Arc<Published>, offering: &Offering<'_>) {
        match &self.dispatcher {
            Some(dispatcher) => match dispatcher.try_send(Work::Broadcast(published.clone())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !self.lagged.swap(true, Ordering::AcqRel) {
                        tracing::warn!(
                            "a worker fell behind its broadcasts; its streams will catch up from history"
                        );
                    }
                }
                // Its worker stopped: so did its streams.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            },
            None => self.offer(&Notice::Event(published.clone()), offering, &mut Vec::new()),
        }
    }

    /// Hands `notice` for `members` (of this shard) to the dispatcher; false when it has
    /// none, or cannot take it now (the caller offers it itself, nothing is lost).
    pub fn hand_over(&self, notice: &Notice, members: Vec<(u64, Arc<Outlet>)>) -> bool {
        self.dispatcher.as_ref().is_some_and(|dispatcher| {
            dispatcher
                .try_send(Work::Offer(notice.clone(), members))
                .is_ok()
        })
    }

    /// Offers `notice` to every member. The members are taken out of the lock first
    /// (into `members`, kept by the caller from one round to the next): writing to a
    /// socket is a system call, and streams joining and leaving the shard must not wait
    /// for a round over thousands of them.
    fn offer(
        &self,
        notice: &Notice,
        offering: &Offering<'_>,
        members: &mut Vec<(u64, Arc<Outlet>)>,
    ) {
        members.extend(
            self.members()
                .iter()
                .map(|(id, outlet)| (*id, outlet.clone())),
        );
        // Members that are full or gone leave when their registration drops.
        offer_each(
            members.iter().map(|(id, outlet)| (*id, &**outlet)),
            notice,
            offering,
        );
        members.clear();
    }

    fn keep_alive(
        &self,
        quiet_since: Instant,
        now: Instant,
        members: &mut Vec<(u64, Arc<Outlet>)>,
    ) {
        members.extend(
            self.members()
                .iter()
                .map(|(id, outlet)| (*id, outlet.clone())),
        );
        for (_, outlet) in members.iter() {
            outlet.keep_alive(quiet_since, now);
        }
        members.clear();
    }
}

/// What a dispatcher works with.
#[derive(Debug)]
pub struct Dispatcher {
    pub shard: Arc<Shard>,
    pub broadcasts: mpsc::Receiver<Work>,
    pub metrics: Arc<Metrics>,
    pub queue_size: usize,
    pub keep_alive: Duration,
    /// Cancelled when the hub closes every stream.
    pub stopped: CancellationToken,
    /// Held only for its `Drop`: tells the hub if this dispatcher ends while the
    /// instance still serves.
    pub _lifeline: Lifeline,
}

/// Held by a dispatcher for as long as it runs: if it ends (returns, panics, or its
/// worker's runtime drops it) before the instance began to stop, the hub learns that a
/// worker's streams no longer get broadcasts, and the instance stops rather than serve
/// them silence (see `Hub::dispatcher_lost`).
#[derive(Debug)]
pub struct Lifeline {
    pub stopping: Arc<AtomicBool>,
    pub lost: CancellationToken,
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        if !self.stopping.load(Ordering::Acquire) {
            tracing::error!("a worker's broadcast dispatcher ended while the instance serves");
            self.lost.cancel();
        }
    }
}

impl Dispatcher {
    /// Writes each broadcast and the keep-alives of the shard's streams, until the hub
    /// closes or its worker's runtime stops.
    pub async fn run(mut self) {
        let tick = self.keep_alive / 4;
        let mut sweep = tokio::time::interval(tick);
        // The shard's members during a round, kept for the next one.
        let mut members = Vec::new();
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stopped.cancelled() => return,
                work = self.broadcasts.recv() => {
                    let Some(work) = work else { return };
                    let offering = Offering {
                        queue_size: self.queue_size,
                        metrics: &self.metrics,
                        now: Instant::now(),
                    };
                    match work {
                        Work::Broadcast(published) => {
                            self.shard.offer(&Notice::Event(published), &offering, &mut members);
                        }
                        // Members full or gone leave when their registration drops.
                        Work::Offer(notice, share) => {
                            offer_each(share.iter().map(|(id, outlet)| (*id, &**outlet)), &notice, &offering);
                        }
                    }
                    // Caught up with what was queued: now repair what was dropped.
                    if self.broadcasts.is_empty() && self.shard.lagged.swap(false, Ordering::AcqRel) {
                        self.shard.offer(&Notice::CatchUp, &offering, &mut members);
                    }
                }
                _ = sweep.tick() => {
                    let now = Instant::now();
                    let quiet_since = now.checked_sub(self.keep_alive - tick).unwrap_or(now);
                    self.shard.keep_alive(quiet_since, now, &mut members);
                }
            }
        }
    }
}
