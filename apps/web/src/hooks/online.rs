//! Who is online in a topic, as a page keeps it: the server's presence answer, then the
//! `stream.joined` and `stream.left` of the topic after it. No browser API is touched
//! here (see `use_presence` for that), so all of it is unit-tested natively.
//!
//! The answer is asked for once the stream carries the topic, so no arrival or departure
//! falls between the two. It counts every one up to its `head` (the topic's last event
//! when it was read); those heard while it was on its way, and any arriving later, count
//! only if they come after that head. Arrivals and departures are sets besides: an arrival
//! of someone present changes nothing, so a change that carries no place in the topic's
//! sequence is applied as it comes.

use events::{PresentUser, TopicHead};

/// The users present in one topic, earliest arrival first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Online {
    topic: String,
    /// The users the page can name, earliest arrival first.
    named: Vec<PresentUser>,
    /// Users present whom the answer did not name: it lists only the server's first
    /// `PRESENCE_LIST_MAX`. A departure of someone not named is one of them leaving.
    unnamed: u64,
    /// The head of the last answer: the changes up to it are counted. `None` before an
    /// answer, when the list is unknown rather than empty.
    counted_to: Option<TopicHead>,
    /// The ask whose answer is awaited, and the changes heard since it was sent, to be
    /// applied on the answer (those after its head).
    awaited: Option<(u64, Vec<Change>)>,
}

/// One arrival or departure, and its place in the topic's sequence (its envelope's
/// `epoch` and `id`), when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    kind: Kind,
    at: Option<TopicHead>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Joined(PresentUser),
    Left(String),
}

impl Online {
    /// Nobody known yet in `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            named: Vec::new(),
            unnamed: 0,
            counted_to: None,
            awaited: None,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The list was asked for (`ask` names the request): from now on, changes are kept to
    /// be applied on its answer. Only the latest ask's answer counts.
    pub fn asking(&mut self, ask: u64) {
        self.awaited = Some((ask, Vec::new()));
    }

    /// The answer to `ask`: `users` (at most the server's limit, earliest first) of `count`
    /// present, counting every change up to `head`. Returns `false`, changing nothing, for
    /// an answer no longer awaited.
    pub fn answered(
        &mut self,
        ask: u64,
        users: Vec<PresentUser>,
        count: u64,
        head: TopicHead,
    ) -> bool {
        let Some(heard) = self.take_awaited(ask) else {
            return false;
        };
        self.unnamed = count.saturating_sub(users.len() as u64);
        self.named = Vec::with_capacity(users.len());
        for user in users {
            self.join(user);
        }
        self.counted_to = Some(head);
        for change in heard {
            self.apply(change);
        }
        true
    }

    /// `ask` failed: what is known stays. Returns whether it was the one awaited (a retry
    /// is worth it), rather than one a newer ask replaced.
    pub fn unanswered(&mut self, ask: u64) -> bool {
        self.take_awaited(ask).is_some()
    }

    /// `user` arrived (`stream.joined`, at `at` in the topic's sequence): nothing changes
    /// if they are here already, or the answer counted it.
    pub fn joined(&mut self, user: PresentUser, at: Option<TopicHead>) {
        self.heard(Change {
            kind: Kind::Joined(user),
            at,
        });
    }

    /// `user_id` left (`stream.left`, at `at` in the topic's sequence): nothing changes if
    /// they are gone already, or the answer counted it.
    pub fn left(&mut self, user_id: &str, at: Option<TopicHead>) {
        self.heard(Change {
            kind: Kind::Left(user_id.to_string()),
            at,
        });
    }

    /// Whether an answer came, so that the list says who is here.
    pub fn is_known(&self) -> bool {
        self.counted_to.is_some()
    }

    /// The users present the page can name, earliest arrival first.
    pub fn named(&self) -> &[PresentUser] {
        &self.named
    }

    /// How many are present but not named.
    pub fn unnamed(&self) -> u64 {
        self.unnamed
    }

    /// How many are present.
    pub fn count(&self) -> u64 {
        self.named.len() as u64 + self.unnamed
    }

    fn take_awaited(&mut self, ask: u64) -> Option<Vec<Change>> {
        match &self.awaited {
            Some((awaited, _)) if *awaited == ask => self.awaited.take().map(|(_, heard)| heard),
            _ => None,
        }
    }

    fn heard(&mut self, change: Change) {
        if let Some((_, heard)) = &mut self.awaited {
            heard.push(change.clone());
        }
        self.apply(change);
    }

    /// Whether the last answer counted a change at `at`: one of the same epoch at or
    /// before its head. A change of another epoch (the topic's history started over) is
    /// applied, and the resync that comes with a new epoch asks again.
    fn counted(&self, at: Option<TopicHead>) -> bool {
        match (self.counted_to, at) {
            (Some(head), Some(at)) => at.epoch == head.epoch && at.id <= head.id,
            _ => false,
        }
    }

    fn apply(&mut self, change: Change) {
        if self.counted(change.at) {
            return;
        }
        match change.kind {
            Kind::Joined(user) => self.join(user),
            Kind::Left(user_id) => {
                if let Some(at) = self.named.iter().position(|u| u.user_id == user_id) {
                    self.named.remove(at);
                } else {
                    self.unnamed = self.unnamed.saturating_sub(1);
                }
            }
        }
    }

    fn join(&mut self, user: PresentUser) {
        if !self.named.iter().any(|u| u.user_id == user.user_id) {
            self.named.push(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, since: u64) -> PresentUser {
        PresentUser {
            user_id: id.into(),
            since,
        }
    }

    /// The place of event `id` in epoch 7 of the topic.
    fn at(id: u64) -> Option<TopicHead> {
        Some(TopicHead { epoch: 7, id })
    }

    fn head(id: u64) -> TopicHead {
        TopicHead { epoch: 7, id }
    }

    fn names(online: &Online) -> Vec<&str> {
        online.named().iter().map(|u| u.user_id.as_str()).collect()
    }

    #[test]
    fn the_answer_says_who_is_here_and_changes_after_it_follow() {
        let mut online = Online::new("room:a");
        assert!(!online.is_known(), "unknown, not empty, before an answer");
        online.asking(1);
        let users = vec![user("alice", 10), user("bob", 20)];
        assert!(online.answered(1, users, 2, head(2)));
        assert!(online.is_known());
        assert_eq!((names(&online), online.count()), (vec!["alice", "bob"], 2));
        online.joined(user("carol", 30), at(3));
        online.left("alice", at(4));
        assert_eq!((names(&online), online.count()), (vec!["bob", "carol"], 2));
        assert_eq!(online.topic(), "room:a");
    }

    #[test]
    fn an_arrival_or_departure_seen_twice_changes_nothing() {
        let mut online = Online::new("room:a");
        online.asking(1);
        online.answered(1, vec![user("alice", 10)], 1, head(1));
        online.joined(user("alice", 99), None);
        assert_eq!(
            online.named(),
            [user("alice", 10)],
            "still since her first arrival"
        );
        online.joined(user("bob", 20), at(2));
        online.joined(user("bob", 20), at(2));
        online.left("bob", at(3));
        online.left("bob", at(3));
        assert_eq!((names(&online), online.count()), (vec!["alice"], 1));
    }

    #[test]
    fn changes_heard_while_the_answer_was_on_its_way_count_after_its_head() {
        // Bob arrived (5) and left (6) before the list was read at 6; carol arrived (7)
        // after: only her arrival is applied on the answer.
        let mut online = Online::new("room:a");
        online.asking(1);
        online.joined(user("bob", 20), at(5));
        online.left("bob", at(6));
        online.joined(user("carol", 30), at(7));
        assert!(online.answered(1, vec![user("alice", 10)], 1, head(6)));
        assert_eq!(
            (names(&online), online.count()),
            (vec!["alice", "carol"], 2)
        );

        // Read at 5, the answer names bob: his departure at 6, heard before the answer
        // came, is not undone by it.
        let mut online = Online::new("room:a");
        online.asking(1);
        online.left("bob", at(6));
        online.answered(1, vec![user("alice", 10), user("bob", 20)], 2, head(5));
        assert_eq!((names(&online), online.count()), (vec!["alice"], 1));
    }

    #[test]
    fn a_change_the_answer_counted_is_not_counted_again_beyond_the_list() {
        // Five present, two named: a departure the answer counted, arriving after it, must
        // not take one more from those not named.
        let mut online = Online::new("room:big");
        online.asking(1);
        let users = vec![user("alice", 10), user("bob", 20)];
        online.answered(1, users, 5, head(10));
        assert_eq!((online.count(), online.unnamed()), (5, 3));
        online.left("someone", at(9));
        online.joined(user("another", 1), at(10));
        assert_eq!((online.count(), names(&online)), (5, vec!["alice", "bob"]));
        online.left("someone", at(11));
        assert_eq!((online.count(), online.unnamed()), (4, 2));
        online.joined(user("zed", 50), at(12));
        assert_eq!(names(&online), ["alice", "bob", "zed"]);
        assert_eq!(online.count(), 5);
        for n in 0..5 {
            online.left(&format!("gone-{n}"), at(13 + n));
        }
        assert_eq!(online.count(), 3, "never below those named");
    }

    #[test]
    fn a_change_of_another_epoch_or_without_a_place_is_applied() {
        let mut online = Online::new("room:a");
        online.asking(1);
        online.answered(1, vec![user("alice", 10)], 1, head(50));
        online.joined(user("bob", 20), Some(TopicHead { epoch: 8, id: 1 }));
        online.joined(user("carol", 30), None);
        assert_eq!(names(&online), ["alice", "bob", "carol"]);
        // Before the topic's first event the head is 0 in epoch 0.
        let mut online = Online::new("room:new");
        online.asking(1);
        online.answered(1, Vec::new(), 0, TopicHead::default());
        online.joined(user("alice", 10), at(1));
        assert_eq!(names(&online), ["alice"]);
    }

    #[test]
    fn only_the_latest_ask_is_answered() {
        let mut online = Online::new("room:a");
        online.asking(1);
        online.asking(2);
        online.joined(user("bob", 20), at(2));
        assert!(
            !online.answered(1, vec![user("alice", 10)], 1, head(1)),
            "replaced"
        );
        assert!(!online.is_known());
        assert!(online.answered(2, vec![user("alice", 10)], 1, head(1)));
        assert_eq!(names(&online), ["alice", "bob"]);
        assert!(
            !online.answered(2, Vec::new(), 0, head(9)),
            "answered already"
        );
        assert_eq!(names(&online), ["alice", "bob"]);
    }

    #[test]
    fn a_failed_ask_keeps_what_was_known_and_says_whether_to_retry() {
        let mut online = Online::new("room:a");
        online.asking(1);
        online.answered(1, vec![user("alice", 10)], 1, head(1));
        online.asking(2);
        online.asking(3);
        assert!(!online.unanswered(2), "replaced by a newer ask: no retry");
        assert!(online.unanswered(3));
        assert!(!online.unanswered(3), "once");
        online.joined(user("bob", 20), at(2));
        assert!(online.is_known());
        assert_eq!((names(&online), online.count()), (vec!["alice", "bob"], 2));
    }
}
