//! This instance's own presence, as its streams make it: how many streams each user holds
//! here of each topic, which of those users the engine (Redis, or the in-process one) has
//! been told of, and who is within the grace window after their last stream closed. Pure:
//! the worker asks it what to tell the engine, tells it, and says how that went.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

/// A user in a topic: `(topic, user id)`.
pub type Key = (String, String);

/// What the engine must be told about a user in a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// This instance holds them now.
    Enter,
    /// It no longer does.
    Leave,
}

#[derive(Debug, Default)]
struct Entry {
    /// Streams of the topic the user holds here.
    streams: u32,
    /// Whether the engine holds this instance's entry (as far as the last change it was
    /// told says).
    announced: bool,
    /// When the grace window after the last stream closed ends; the user stays present
    /// until then.
    leave_at: Option<Instant>,
}

impl Entry {
    /// Whether the user is present through this instance: a stream open, or the grace
    /// window after the last one still running.
    fn present(&self) -> bool {
        self.streams > 0 || self.leave_at.is_some()
    }
}

/// See the module's documentation. Bounded by the streams open here (times their topics)
/// and the ones that closed within the grace window.
#[derive(Debug)]
pub struct Book {
    entries: HashMap<Key, Entry>,
    /// Entries whose presence may differ from what the engine was told.
    dirty: HashSet<Key>,
    /// Grace windows, in the order they end (the window is one length for all).
    leaving: VecDeque<(Instant, Key)>,
    grace: Duration,
    /// Entries the engine holds.
    announced: usize,
}

impl Book {
    pub fn new(grace: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            dirty: HashSet::new(),
            leaving: VecDeque::new(),
            grace,
            announced: 0,
        }
    }

    /// A stream of `topic` opened for `user_id`. Returns whether there is something to
    /// tell the engine now.
    pub fn opened(&mut self, topic: &str, user_id: &str) -> bool {
        let key = (topic.to_string(), user_id.to_string());
        let entry = self.entries.entry(key.clone()).or_default();
        entry.streams += 1;
        // A reopening within the grace window: still present, nothing to say.
        entry.leave_at = None;
        !entry.announced && self.dirty.insert(key)
    }

    /// A stream of `topic` of `user_id` closed at `now`. Their last one starts the grace
    /// window: see [`Book::due`].
    pub fn closed(&mut self, topic: &str, user_id: &str, now: Instant) {
        let key = (topic.to_string(), user_id.to_string());
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        entry.streams = entry.streams.saturating_sub(1);
        if entry.streams == 0 {
            let at = now + self.grace;
            entry.leave_at = Some(at);
            self.leaving.push_back((at, key));
        }
    }

    /// When the next grace window ends, if any runs.
    pub fn next_due(&self) -> Option<Instant> {
        self.leaving.front().map(|(at, _)| *at)
    }

    /// Ends the grace windows over by `now`: those users leave, unless they came back.
    pub fn due(&mut self, now: Instant) {
        while let Some((at, _)) = self.leaving.front() {
            if *at > now {
                break;
            }
            let Some((at, key)) = self.leaving.pop_front() else {
                break;
            };
            // An entry reopened since (and maybe closed again, with a later window) is
            // not this window's.
            if let Some(entry) = self.entries.get_mut(&key)
                && entry.streams == 0
                && entry.leave_at == Some(at)
            {
                entry.leave_at = None;
                self.dirty.insert(key);
            }
        }
    }

    /// What the engine must be told now, each user in a topic once. Entries that never
    /// reached the engine and are gone already are forgotten. Every change taken must be
    /// reported to [`Book::settle`].
    pub fn take(&mut self) -> Vec<(Key, Change)> {
        let mut changes = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            match (entry.present(), entry.announced) {
                (true, false) => changes.push((key, Change::Enter)),
                (false, true) => changes.push((key, Change::Leave)),
                (false, false) => {
                    self.entries.remove(&key);
                }
                (true, true) => {}
            }
        }
        changes
    }

    /// How `changes` (from [`Book::take`]) went: made, or not (they are taken again next
    /// time). A user whose streams changed meanwhile is marked to be looked at again.
    pub fn settle(&mut self, changes: &[(Key, Change)], made: bool) {
        for (key, change) in changes {
            let Some(entry) = self.entries.get_mut(key) else {
                continue;
            };
            if made {
                let announced = *change == Change::Enter;
                if entry.announced != announced {
                    entry.announced = announced;
                    if announced {
                        self.announced += 1;
                    } else {
                        self.announced -= 1;
                    }
                }
            }
            match (entry.present(), entry.announced) {
                (false, false) => {
                    self.entries.remove(key);
                }
                (present, announced) if present != announced => {
                    self.dirty.insert(key.clone());
                }
                _ => {}
            }
        }
    }

    /// Every user in a topic the engine holds, to leave at once (the instance is
    /// stopping); settle them like any change.
    pub fn leave_all(&mut self) -> Vec<(Key, Change)> {
        self.dirty.clear();
        self.leaving.clear();
        for entry in self.entries.values_mut() {
            entry.streams = 0;
            entry.leave_at = None;
        }
        self.entries
            .iter()
            .filter(|(_, entry)| entry.announced)
            .map(|(key, _)| (key.clone(), Change::Leave))
            .collect()
    }

    /// The users in topics the engine holds.
    pub fn announced(&self) -> impl Iterator<Item = &Key> {
        self.entries
            .iter()
            .filter(|(_, entry)| entry.announced)
            .map(|(key, _)| key)
    }

    /// How many users in topics the engine holds.
    pub fn announced_count(&self) -> usize {
        self.announced
    }

    /// Marks every user in a topic the engine holds as no longer held (it lost them:
    /// Redis restarted empty, a failover lost writes, or another instance swept this one
    /// as dead): the next [`Book::take`] enters them again.
    /// Returns them.
    pub fn forget_announced(&mut self, which: impl Fn(&Key) -> bool) -> Vec<Key> {
        let mut forgotten = Vec::new();
        for (key, entry) in &mut self.entries {
            if entry.announced && which(key) {
                entry.announced = false;
                self.announced -= 1;
                self.dirty.insert(key.clone());
                forgotten.push(key.clone());
            }
        }
        forgotten
    }

    /// Whether the engine holds this user in this topic (as far as the book knows).
    pub fn is_announced(&self, key: &Key) -> bool {
        self.entries.get(key).is_some_and(|entry| entry.announced)
    }

    /// Whether some change awaits [`Book::take`].
    pub fn has_pending(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Whether nothing is held, pending or in a grace window.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(2);

    fn key(topic: &str, user: &str) -> Key {
        (topic.to_string(), user.to_string())
    }

    /// Takes the changes and reports them made.
    fn made(book: &mut Book) -> Vec<(Key, Change)> {
        let mut changes = book.take();
        book.settle(&changes, true);
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        changes
    }

    #[test]
    fn a_users_tabs_enter_once_and_leave_once_after_the_grace_window() {
        let mut book = Book::new(GRACE);
        let start = Instant::now();
        assert!(book.opened("room", "alice"));
        assert!(!book.opened("room", "alice"), "a second tab: nothing new");
        assert_eq!(made(&mut book), vec![(key("room", "alice"), Change::Enter)]);
        assert_eq!(book.announced_count(), 1);
        book.closed("room", "alice", start);
        book.closed("room", "alice", start);
        book.due(start + GRACE / 2);
        assert!(made(&mut book).is_empty(), "within the grace window");
        assert_eq!(book.next_due(), Some(start + GRACE));
        book.due(start + GRACE);
        assert_eq!(made(&mut book), vec![(key("room", "alice"), Change::Leave)]);
        assert_eq!(book.announced_count(), 0);
        assert!(book.is_empty(), "nothing kept of a user who left");
    }

    #[test]
    fn a_reload_within_the_grace_window_says_nothing() {
        let mut book = Book::new(GRACE);
        let start = Instant::now();
        book.opened("room", "alice");
        made(&mut book);
        book.closed("room", "alice", start);
        assert!(!book.opened("room", "alice"));
        book.due(start + GRACE * 3);
        assert!(made(&mut book).is_empty());
        // Closed again later: a window of its own, not the first one's.
        book.closed("room", "alice", start + GRACE);
        book.due(start + GRACE + GRACE / 2);
        assert!(made(&mut book).is_empty());
        book.due(start + GRACE * 2);
        assert_eq!(made(&mut book), vec![(key("room", "alice"), Change::Leave)]);
    }

    #[test]
    fn a_stream_gone_before_the_engine_heard_of_it_is_forgotten_quietly() {
        let mut book = Book::new(Duration::ZERO);
        let now = Instant::now();
        book.opened("room", "alice");
        book.closed("room", "alice", now);
        book.due(now);
        assert!(made(&mut book).is_empty());
        assert!(book.is_empty());
    }

    #[test]
    fn a_change_that_failed_is_taken_again_and_one_overtaken_is_corrected() {
        let mut book = Book::new(Duration::ZERO);
        let now = Instant::now();
        book.opened("room", "alice");
        let changes = book.take();
        book.settle(&changes, false);
        assert_eq!(book.announced_count(), 0);
        let changes = book.take();
        assert_eq!(changes, vec![(key("room", "alice"), Change::Enter)]);
        // While the enter is on its way, the stream closes and its window ends.
        book.closed("room", "alice", now);
        book.due(now);
        book.settle(&changes, true);
        assert!(book.has_pending(), "the worker is told to come back");
        assert_eq!(made(&mut book), vec![(key("room", "alice"), Change::Leave)]);
        assert!(book.is_empty());
    }

    #[test]
    fn what_the_engine_lost_is_entered_again() {
        let mut book = Book::new(GRACE);
        book.opened("a", "alice");
        book.opened("b", "bob");
        made(&mut book);
        assert_eq!(
            book.forget_announced(|(topic, _)| topic == "a"),
            vec![key("a", "alice")]
        );
        assert!(!book.is_announced(&key("a", "alice")));
        assert!(book.is_announced(&key("b", "bob")));
        assert_eq!(book.announced_count(), 1);
        assert_eq!(made(&mut book), vec![(key("a", "alice"), Change::Enter)]);
        let mut all = book.leave_all();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            all,
            vec![
                (key("a", "alice"), Change::Leave),
                (key("b", "bob"), Change::Leave)
            ]
        );
        book.settle(&all, true);
        assert!(book.is_empty());
    }
}
