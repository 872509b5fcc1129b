//! How often one user may publish with their own token: a fixed one-second window per
//! user, on this instance. Users publish to topics (a chat room); a script that floods a
//! room is refused with 429 instead of costing every subscriber a frame per message.

use std::{
    num::NonZeroUsize,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use lru::LruCache;

/// Users whose windows are remembered at most; the least recently seen are forgotten
/// first (which only gives them a fresh window).
const USERS: usize = 100_000;

const WINDOW: Duration = Duration::from_secs(1);

/// Publishes per user per second.
#[derive(Debug)]
pub struct Throttle {
    per_second: u64,
    windows: Mutex<LruCache<String, (Instant, u64)>>,
}

impl Throttle {
    pub fn new(per_second: u64) -> Self {
        Self {
            per_second,
            windows: Mutex::new(LruCache::new(
                NonZeroUsize::new(USERS).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Whether `user_id` may publish now (and counts it if so).
    pub fn admit(&self, user_id: &str) -> bool {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let window = windows.get_or_insert_mut(user_id.to_string(), || (now, 0));
        if now.duration_since(window.0) >= WINDOW {
            *window = (now, 0);
        }
        if window.1 >= self.per_second {
            return false;
        }
        window.1 += 1;
        true
    }

    pub fn per_second(&self) -> u64 {
        self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_gets_their_own_window() {
        let throttle = Throttle::new(2);
        assert!(throttle.admit("alice") && throttle.admit("alice"));
        assert!(!throttle.admit("alice"), "the third in a second is refused");
        assert!(throttle.admit("bob"), "bob is not alice");
    }
}
