//! Which topics a stream may carry: the names a request asks for, and whether its user
//! may have them, by the token's `topics` claim or, for what the claim does not allow,
//! by asking the host application (`TOPIC_AUTH_URL`).
//!
//! The host application is asked only about the topics the claim leaves out, at most once
//! per user and topic per `TOPIC_AUTH_CACHE_SECS` (both answers are cached), and within
//! a deadline: when it fails, is slow or answers nonsense, the stream is refused with a
//! 503. Never "allowed" by default.

use std::{
    num::NonZeroUsize,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use lru::LruCache;
use serde::{Deserialize, Serialize};

use crate::{auth::Credential, throttle::Throttle};

/// Answers of the host application kept at most (users × topics).
const CACHE_CAPACITY: usize = 100_000;

/// Questions one user may make the host application answer per second, on one
/// instance: beyond them (a user cycling through names nobody cached), 503 too, so that
/// one user cannot turn the instance into a flood against the host application.
const QUESTIONS_PER_USER_PER_SEC: u64 = 5;

/// The longest answer read from the host application.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a stream's topics were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {topic:?}: {rule}")]
    Invalid { topic: String, rule: &'static str },
    #[error("a stream carries at most {limit} topics")]
    TooMany { limit: usize },
    #[error("topic {0:?} is not allowed to this user")]
    Forbidden(String),
    /// The host application could not say in time whether the user may have a topic.
    #[error("topic authorization is unavailable; retry")]
    Unavailable,
}

/// The topics a stream asks for (`topic`, repeated in its query, and its ticket's), each
/// once, in order: 400 for a name that breaks the rule, or for more than `limit`.
pub fn named(
    asked: impl IntoIterator<Item = String>,
    limit: usize,
) -> Result<Vec<String>, TopicError> {
    let mut topics: Vec<String> = Vec::new();
    for topic in asked {
        events::validate_topic(&topic).map_err(|rule| TopicError::Invalid {
            topic: topic.chars().take(events::MAX_TOPIC_CHARS).collect(),
            rule,
        })?;
        // A cursor names a topic by its tag: two of one tag in one stream would share a
        // position. (Names that collide can be made on purpose; such a pair is refused.)
        let tag = events::topic_tag(&topic);
        if topics
            .iter()
            .any(|known| *known != topic && events::topic_tag(known) == tag)
        {
            return Err(TopicError::Invalid {
                topic,
                rule: "its tag is another topic's of this stream; open it on a stream of its own",
            });
        }
        if !topics.contains(&topic) {
            if topics.len() == limit {
                return Err(TopicError::TooMany { limit });
            }
            topics.push(topic);
        }
    }
    Ok(topics)
}

/// Decides whether a user may subscribe to topics.
#[derive(Debug)]
pub struct TopicAccess {
    hook: Option<Hook>,
}

/// The host application's say on topics its tokens' claims leave out.
#[derive(Debug)]
struct Hook {
    url: reqwest::Url,
    client: reqwest::Client,
    ttl: Duration,
    /// Questions per user and second.
    questions: Throttle,
    /// `(user, topic)` → allowed?, and until when the answer holds.
    cache: Mutex<LruCache<(String, String), (bool, Instant)>>,
}

/// What the host application is asked: may `userId` subscribe to these `topics`?
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Question<'a> {
    user_id: &'a str,
    topics: &'a [String],
}

/// Its answer: the ones it allows (any others are refused).
#[derive(Debug, Deserialize)]
struct Answer {
    topics: Vec<String>,
}

impl TopicAccess {
    /// Claims only.
    pub fn claims_only() -> Self {
        Self { hook: None }
    }

    /// Claims, then the host application at `url`, whose answers are kept for `ttl` and
    /// awaited for at most `timeout`.
    pub fn with_hook(url: reqwest::Url, ttl: Duration, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            hook: Some(Hook {
                url,
                client,
                ttl,
                questions: Throttle::new(QUESTIONS_PER_USER_PER_SEC),
                cache: Mutex::new(LruCache::new(
                    NonZeroUsize::new(CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN),
                )),
            }),
        })
    }

    /// Whether the user of `credential` may subscribe to every one of `topics`: 403
    /// naming the first that is not allowed, 503 when the host application cannot say.
    pub async fn authorize(
        &self,
        credential: &Credential,
        topics: &[String],
    ) -> Result<(), TopicError> {
        let left: Vec<String> = topics
            .iter()
            .filter(|topic| !events::patterns_allow(&credential.topics, topic))
            .cloned()
            .collect();
        let Some(first) = left.first() else {
            return Ok(());
        };
        let Some(hook) = &self.hook else {
            return Err(TopicError::Forbidden(first.clone()));
        };
        let allowed = hook.ask(&credential.user_id, &left).await?;
        match left.into_iter().find(|topic| !allowed.contains(topic)) {
            Some(refused) => Err(TopicError::Forbidden(refused)),
            None => Ok(()),
        }
    }
}

impl Hook {
    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<(String, String), (bool, Instant)>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Which of `topics` `user_id` may have: cached answers, then one question for the rest.
    async fn ask(&self, user_id: &str, topics: &[String]) -> Result<Vec<String>, TopicError> {
        let now = Instant::now();
        let mut allowed = Vec::new();
        let mut unknown = Vec::new();
        {
            let mut cache = self.cache();
            for topic in topics {
                match cache.get(&(user_id.to_string(), topic.clone())) {
                    Some((yes, until)) if *until > now => {
                        if *yes {
                            allowed.push(topic.clone());
                        }
                    }
                    _ => unknown.push(topic.clone()),
                }
            }
        }
        if unknown.is_empty() {
            return Ok(allowed);
        }
        if !self.questions.admit(user_id) {
            tracing::debug!(user_id, "too many topic questions for this user; refused");
            return Err(TopicError::Unavailable);
        }
        let answer = self.question(user_id, &unknown).await.map_err(|error| {
            tracing::warn!(%error, url = %self.url, "topic authorization failed");
            TopicError::Unavailable
        })?;
        let until = Instant::now() + self.ttl;
        let mut cache = self.cache();
        for topic in unknown {
            let yes = answer.topics.contains(&topic);
            cache.put((user_id.to_string(), topic.clone()), (yes, until));
            if yes {
                allowed.push(topic);
            }
        }
        Ok(allowed)
    }

    async fn question(&self, user_id: &str, topics: &[String]) -> anyhow::Result<Answer> {
        let mut response = self
            .client
            .post(self.url.clone())
            .json(&Question { user_id, topics })
            .send()
            .await?
            .error_for_status()?;
        let mut body: Vec<u8> = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
            anyhow::ensure!(
                body.len() <= MAX_ANSWER_BYTES,
                "answer over {MAX_ANSWER_BYTES} bytes"
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requested(query: &str, limit: usize) -> Result<Vec<String>, TopicError> {
        named(crate::query::params(query, "topic"), limit)
    }

    #[test]
    fn a_request_asks_for_valid_names_each_once_and_not_too_many() {
        assert_eq!(
            requested("topic=a&topic=b%3A1&x=1&topic=a", 8),
            Ok(vec!["a".to_string(), "b:1".to_string()])
        );
        assert_eq!(requested("", 8), Ok(vec![]));
        assert!(matches!(
            requested("topic=a%20b", 8),
            Err(TopicError::Invalid { .. })
        ));
        assert!(matches!(
            requested("topic=", 8),
            Err(TopicError::Invalid { .. })
        ));
        assert_eq!(
            requested("topic=a&topic=b&topic=c", 2),
            Err(TopicError::TooMany { limit: 2 })
        );
    }

    fn user(patterns: &[&str]) -> Credential {
        Credential {
            user_id: "alice".into(),
            expires_at: u64::MAX,
            topics: patterns.iter().map(|p| p.to_string()).collect(),
            publish_topics: Vec::new(),
        }
    }

    #[tokio::test]
    async fn claims_allow_exact_names_and_prefixes_and_nothing_else() {
        let access = TopicAccess::claims_only();
        let topics = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let alice = user(&["chat:room-7", "orders:*"]);
        assert_eq!(
            access
                .authorize(&alice, &topics(&["chat:room-7", "orders:42"]))
                .await,
            Ok(())
        );
        assert_eq!(
            access
                .authorize(&alice, &topics(&["orders:1", "orderz:1"]))
                .await,
            Err(TopicError::Forbidden("orderz:1".into()))
        );
        assert_eq!(
            access.authorize(&user(&[]), &topics(&["a"])).await,
            Err(TopicError::Forbidden("a".into()))
        );
        assert_eq!(
            access
                .authorize(&user(&["*"]), &topics(&["any:thing"]))
                .await,
            Ok(())
        );
    }
}
