//! Stream tickets: how a browser opens its event stream without putting a credential in a
//! URL.
//!
//! A browser's `EventSource` can send neither an `Authorization` header nor a body, only
//! the URL and the origin's cookies. A token in the URL ends up in access and error logs,
//! browser history and `Referer` headers, and lives for as long as the token does. So the
//! page asks for a ticket first (`POST /api/stream-tickets`, its token in the header) and
//! gets two halves: a public handle, which goes in the stream's URL
//! (`/api/events?ticket=<handle>`), and a secret, set as an `HttpOnly` cookie scoped to
//! `/api/events` and named after the handle, which the browser sends with the stream
//! request and no script can read. Redeeming needs both, works once, and only within
//! [`TICKET_TTL`]. A handle seen in a log is worthless without its cookie, and a cookie
//! per handle means two tabs (even of two users) never take each other's ticket.
//!
//! Tickets live in Redis when it is configured, so that any instance redeems what any
//! other issued; in this process's memory (bounded) on a single node.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use fred::{
    clients::Client,
    interfaces::KeysInterface,
    types::{Expiration, SetOptions, scripts::Script},
};
use subtle::ConstantTimeEq;

use crate::{
    auth::{self, AuthError, Credential, Tokens},
    clock,
};

/// How long a ticket can be redeemed after it is issued.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// A ticket's cookie is this followed by its handle.
pub const COOKIE_PREFIX: &str = "st_";

/// The path the ticket's cookie is sent to.
pub const COOKIE_PATH: &str = "/api/events";

/// Tickets waiting to be redeemed on a single node, at most; beyond it the oldest
/// expired ones are swept, and if none are, issuing fails until some expire.
const MEMORY_CAPACITY: usize = 100_000;

/// Tickets one user may be issued per [`TICKET_TTL`]: every tab's every reconnection
/// takes one, so plenty for a person, and one user cannot fill the store for others.
pub const MAX_TICKETS_PER_USER: u64 = 64;

/// Counts a user's tickets in the current window. KEYS[1]: the user's counter.
/// ARGV[1]: the window, ms. Returns the count including this one.
const COUNT_SCRIPT: &str = r#"
local issued = redis.call('INCR', KEYS[1])
if issued == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return issued
"#;

/// An issued ticket: the handle for the URL, the secret for the cookie.
#[derive(Debug)]
pub struct Issued {
    pub handle: String,
    pub secret: String,
    pub expires_at: SystemTime,
}

impl Issued {
    /// The `Set-Cookie` value that hands the secret to the browser.
    pub fn cookie(&self) -> String {
        format!(
            "{COOKIE_PREFIX}{}={}; Path={COOKIE_PATH}; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
            self.handle,
            self.secret,
            TICKET_TTL.as_secs()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("too many stream tickets are waiting to be redeemed")]
    Full,
    #[error("this user was issued {MAX_TICKETS_PER_USER} stream tickets in the last 30 s")]
    UserLimit,
    /// The stream request's credential (token or ticket) was refused.
    #[error("{0}")]
    Refused(#[from] AuthError),
}

#[derive(Debug)]
pub enum Tickets {
    Memory(MemoryTickets),
    Redis(RedisTickets),
}

/// Tickets in Redis: `ticket:<handle>`, and a per-user counter `tickets:{<user>}`.
#[derive(Debug)]
pub struct RedisTickets {
    client: Client,
    count: Script,
}

impl RedisTickets {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            count: Script::from_lua(COUNT_SCRIPT),
        }
    }
}

impl Tickets {
    /// A ticket for `credential` and the stream `topics` (checked by the caller),
    /// redeemable once within [`TICKET_TTL`].
    pub async fn issue(
        &self,
        credential: &Credential,
        topics: &[String],
    ) -> Result<Issued, TicketError> {
        let issued = Issued {
            handle: random_hex(1),
            secret: random_hex(2),
            expires_at: SystemTime::now() + TICKET_TTL,
        };
        let record = Record {
            secret: issued.secret.clone(),
            credential: credential.clone(),
            topics: topics.to_vec(),
        };
        match self {
            Self::Memory(tickets) => tickets.insert(&issued.handle, record)?,
            Self::Redis(RedisTickets { client, count }) => {
                let issued_to_user: u64 = count
                    .evalsha_with_reload(
                        client,
                        vec![format!("tickets:{{{}}}", credential.user_id)],
                        vec![TICKET_TTL.as_millis().to_string()],
                    )
                    .await?;
                if issued_to_user > MAX_TICKETS_PER_USER {
                    return Err(TicketError::UserLimit);
                }
                let _: Option<String> = client
                    .set(
                        key(&issued.handle),
                        record.encode(),
                        Some(Expiration::PX(TICKET_TTL.as_millis() as i64)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await?;
            }
        }
        Ok(issued)
    }

    /// The credential behind `handle`, if `secret` is its secret and it was neither
    /// redeemed nor expired; the ticket is used up either way once found.
    pub async fn redeem(
        &self,
        handle: &str,
        secret: &str,
    ) -> Result<Option<(Credential, Vec<String>)>, TicketError> {
        // Anything but a handle this module made is refused before it reaches a key.
        if handle.len() != 32 || !handle.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let record = match self {
            Self::Memory(tickets) => tickets.take(handle),
            Self::Redis(RedisTickets { client, .. }) => {
                let text: Option<String> = client.getdel(key(handle)).await?;
                text.as_deref().and_then(Record::decode)
            }
        };
        Ok(record
            .filter(|record| bool::from(record.secret.as_bytes().ct_eq(secret.as_bytes())))
            .map(|record| (record.credential, record.topics)))
    }
}

/// The credential a stream request carries, for either carrier: a bearer token in the
/// `Authorization` header (for clients that can send one), else a stream ticket (its
/// handle in the query, its secret in the cookie named after it), redeemed here; with the
/// topics the ticket was issued for (none for a token).
pub async fn authenticate_stream(
    tokens: &Tokens,
    tickets: &Tickets,
    authorization: Option<&str>,
    query: &str,
    cookies: Option<&str>,
) -> Result<(Credential, Vec<String>), TicketError> {
    if authorization.is_some() {
        return Ok((auth::authenticate(tokens, authorization)?, Vec::new()));
    }
    let Some(handle) = crate::query::param(query, "ticket") else {
        return Err(if crate::query::param(query, "token").is_some() {
            AuthError::TokenInUrl
        } else {
            AuthError::Missing
        }
        .into());
    };
    let secret = cookies
        .and_then(|cookies| secret_from_cookies(cookies, &handle))
        .ok_or(AuthError::BadTicket)?;
    let (credential, topics) = tickets
        .redeem(&handle, secret)
        .await?
        .ok_or(AuthError::BadTicket)?;
    if credential.expires_at <= clock::epoch_secs(SystemTime::now()) {
        return Err(AuthError::Expired.into());
    }
    Ok((credential, topics))
}

/// The secret of the ticket `handle`, from a `Cookie` header.
pub fn secret_from_cookies<'a>(cookies: &'a str, handle: &str) -> Option<&'a str> {
    cookies.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name.strip_prefix(COOKIE_PREFIX)? == handle).then_some(value.trim())
    })
}

/// What a ticket stands for.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    secret: String,
    credential: Credential,
    /// The topics the stream opened with the ticket carries.
    topics: Vec<String>,
}

impl Record {
    /// `<secret> <expires_at> <user_id> <topics> <publishTopics> <stream topics>`, each
    /// list joined with `,`: user ids, patterns and topic names hold neither spaces nor
    /// commas.
    fn encode(&self) -> String {
        let Credential {
            user_id,
            expires_at,
            topics,
            publish_topics,
        } = &self.credential;
        format!(
            "{} {expires_at} {user_id} {} {} {}",
            self.secret,
            topics.join(","),
            publish_topics.join(","),
            self.topics.join(",")
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(6, ' ');
        let secret = parts.next()?.to_string();
        let expires_at = parts.next()?.parse().ok()?;
        let user_id = parts.next()?.to_string();
        let mut patterns = || -> Vec<String> {
            parts
                .next()
                .unwrap_or_default()
                .split(',')
                .filter(|pattern| !pattern.is_empty())
                .map(str::to_string)
                .collect()
        };
        let topics = patterns();
        let publish_topics = patterns();
        let stream_topics = patterns();
        Some(Self {
            secret,
            credential: Credential {
                user_id,
                expires_at,
                topics,
                publish_topics,
            },
            topics: stream_topics,
        })
    }
}

fn key(handle: &str) -> String {
    format!("ticket:{handle}")
}

/// `words` × 128 random bits, as lowercase hex.
fn random_hex(words: usize) -> String {
    (0..words)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect()
}

/// A single node's tickets.
#[derive(Debug, Default)]
pub struct MemoryTickets {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    tickets: HashMap<String, (Instant, Record)>,
    /// Per user: when their current window began, and how many tickets it issued.
    issued: HashMap<String, (Instant, u64)>,
}

impl MemoryTickets {
    fn insert(&self, handle: &str, record: Record) -> Result<(), TicketError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.tickets.len() >= MEMORY_CAPACITY || state.issued.len() >= MEMORY_CAPACITY {
            state
                .tickets
                .retain(|_, (issued, _)| issued.elapsed() < TICKET_TTL);
            state
                .issued
                .retain(|_, (since, _)| since.elapsed() < TICKET_TTL);
            if state.tickets.len() >= MEMORY_CAPACITY || state.issued.len() >= MEMORY_CAPACITY {
                return Err(TicketError::Full);
            }
        }
        let window = state
            .issued
            .entry(record.credential.user_id.clone())
            .or_insert((Instant::now(), 0));
        if window.0.elapsed() >= TICKET_TTL {
            *window = (Instant::now(), 0);
        }
        if window.1 >= MAX_TICKETS_PER_USER {
            return Err(TicketError::UserLimit);
        }
        window.1 += 1;
        state
            .tickets
            .insert(handle.to_string(), (Instant::now(), record));
        Ok(())
    }

    fn take(&self, handle: &str) -> Option<Record> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (issued, record) = state.tickets.remove(handle)?;
        (issued.elapsed() < TICKET_TTL).then_some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Credential {
        Credential {
            user_id: "alice".into(),
            expires_at: 1_900_000_000,
            ..Credential::default()
        }
    }

    #[tokio::test]
    async fn a_ticket_is_redeemed_once_and_only_with_its_secret() {
        let tickets = Tickets::Memory(MemoryTickets::default());
        let issued = tickets.issue(&alice(), &[]).await.expect("issued");
        assert_eq!(issued.handle.len(), 32);
        let wrong = tickets
            .redeem(&issued.handle, "guess")
            .await
            .expect("no error");
        assert_eq!(wrong, None, "a wrong secret redeems nothing");
        let issued = tickets.issue(&alice(), &[]).await.expect("issued");
        let first = tickets
            .redeem(&issued.handle, &issued.secret)
            .await
            .expect("no error");
        assert_eq!(first, Some((alice(), Vec::new())));
        let again = tickets
            .redeem(&issued.handle, &issued.secret)
            .await
            .expect("no error");
        assert_eq!(again, None, "single use");
        assert_eq!(
            tickets.redeem("../../etc", "x").await.expect("no error"),
            None
        );
    }

    #[tokio::test]
    async fn one_user_cannot_take_every_ticket() {
        let tickets = Tickets::Memory(MemoryTickets::default());
        for _ in 0..MAX_TICKETS_PER_USER {
            tickets
                .issue(&alice(), &[])
                .await
                .expect("within the limit");
        }
        assert!(matches!(
            tickets.issue(&alice(), &[]).await,
            Err(TicketError::UserLimit)
        ));
        let bob = Credential {
            user_id: "bob".into(),
            ..alice()
        };
        tickets
            .issue(&bob, &[])
            .await
            .expect("another user is unaffected");
    }

    #[test]
    fn the_cookie_is_http_only_scoped_and_found_again_by_its_handle() {
        let issued = Issued {
            handle: "ab".repeat(16),
            secret: "s3cr3t".into(),
            expires_at: SystemTime::now(),
        };
        let cookie = issued.cookie();
        for attribute in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/api/events",
            "Max-Age=30",
        ] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        let header = format!(
            "theme=dark; {}; st_other=x",
            cookie.split(';').next().unwrap_or_default()
        );
        assert_eq!(secret_from_cookies(&header, &issued.handle), Some("s3cr3t"));
        assert_eq!(secret_from_cookies(&header, "other"), Some("x"));
        assert_eq!(secret_from_cookies("theme=dark", &issued.handle), None);
    }

    #[test]
    fn records_round_trip() {
        let record = Record {
            secret: "abc".into(),
            credential: Credential {
                user_id: "user:42@example.com".into(),
                expires_at: 7,
                ..Credential::default()
            },
            topics: Vec::new(),
        };
        assert_eq!(Record::decode(&record.encode()), Some(record.clone()));
        let granted = Record {
            credential: Credential {
                topics: vec!["chat:*".into(), "orders:42".into()],
                publish_topics: vec!["chat:room-7".into()],
                ..record.credential.clone()
            },
            topics: vec!["chat:room-7".into(), "orders:42".into()],
            ..record
        };
        assert_eq!(Record::decode(&granted.encode()), Some(granted));
        assert_eq!(Record::decode("abc notanumber u"), None);
    }
}
