//! Where accounts and snapshots live: Redis when it is configured, so that any instance
//! serves any user; this process's memory on a single node.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use events::{Account, Snapshot};
use fred::{
    clients::Client,
    interfaces::{HashesInterface, ListInterface},
    types::scripts::Script,
};

/// Adds an account to its user's hash unless the user has `ARGV[3]` already, atomically.
/// KEYS[1]: the user's accounts hash. ARGV[1]: the account id. ARGV[2]: its JSON.
/// KEYS[2], when given: the record of an idempotency key (the id of the account it
/// created), kept ARGV[4] ms; if it names an account, nothing is added.
/// Returns `{1}` when added, `{0}` at the limit, `{2, json}` for a repeated key.
const INSERT_ACCOUNT_SCRIPT: &str = r#"
if KEYS[2] then
  local id = redis.call('GET', KEYS[2])
  local existing = id and redis.call('HGET', KEYS[1], id)
  if existing then
    return {2, existing}
  end
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return {0}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
end
return {1}
"#;

/// How long an account's `Idempotency-Key` is remembered.
pub const ACCOUNT_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// What inserting an account did.
#[derive(Debug, Clone, PartialEq)]
pub enum Insertion {
    Inserted,
    /// The user has as many accounts as allowed: nothing was stored.
    LimitReached,
    /// The idempotency key had created this account already: nothing was stored.
    Replayed(Account),
}

/// Keeps one generation of a user's snapshots unless a generation of this version (its
/// snapshot count) or a newer one was kept already, atomically, so that racing
/// generations never put an older state on top. KEYS[1]: the user's snapshot list.
/// KEYS[2]: the version of the newest generation kept. ARGV[1]: this generation's
/// version. ARGV[2]: how many snapshots are kept. ARGV[3..]: the snapshots' JSON, oldest
/// first (at most ARGV[2] of them). Returns 1 when kept, 0 when superseded.
const INSERT_SNAPSHOTS_SCRIPT: &str = r#"
local newest = redis.call('GET', KEYS[2])
if newest and tonumber(ARGV[1]) <= tonumber(newest) then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1])
if #ARGV > 2 then
  redis.call('LPUSH', KEYS[1], unpack(ARGV, 3))
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
end
return 1
"#;

/// How many snapshots are kept per user, newest first.
pub const SNAPSHOTS_KEPT: usize = 100;

#[derive(Debug)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
}

impl Store {
    /// Stores `account` unless its user has `max_per_user` accounts already, or
    /// `idempotency_key` created one within [`ACCOUNT_KEY_TTL`], atomically.
    pub async fn insert_account(
        &self,
        account: &Account,
        max_per_user: u64,
        idempotency_key: Option<&str>,
    ) -> Result<Insertion, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.insert_account(account, max_per_user, idempotency_key)),
            Self::Redis(store) => {
                store
                    .insert_account(account, max_per_user, idempotency_key)
                    .await
            }
        }
    }

    /// The user's accounts, oldest first.
    pub async fn accounts(&self, user_id: &str) -> Result<Vec<Account>, StoreError> {
        let mut accounts = match self {
            Self::Memory(store) => store.accounts(user_id),
            Self::Redis(store) => store.accounts(user_id).await?,
        };
        accounts.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(accounts)
    }

    /// Keeps `snapshots` (one generation, all of one user), dropping the oldest beyond
    /// [`SNAPSHOTS_KEPT`], unless a generation of `version` or newer was kept already
    /// (another instance's, racing this one). Returns whether they were kept.
    pub async fn insert_snapshots(
        &self,
        user_id: &str,
        snapshots: &[Snapshot],
        version: u64,
    ) -> Result<bool, StoreError> {
        // Only the newest SNAPSHOTS_KEPT can stay.
        let snapshots = &snapshots[snapshots.len().saturating_sub(SNAPSHOTS_KEPT)..];
        match self {
            Self::Memory(store) => Ok(store.insert_snapshots(user_id, snapshots, version)),
            Self::Redis(store) => store.insert_snapshots(user_id, snapshots, version).await,
        }
    }

    /// The user's snapshots, newest first, at most [`SNAPSHOTS_KEPT`].
    pub async fn snapshots(&self, user_id: &str) -> Result<Vec<Snapshot>, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.snapshots(user_id)),
            Self::Redis(store) => store.snapshots(user_id).await,
        }
    }
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    accounts: Mutex<HashMap<String, Owned>>,
    /// The version of the newest generation kept, and the snapshots, newest first.
    snapshots: Mutex<HashMap<String, (u64, Vec<Snapshot>)>>,
}

/// One user's accounts, and the idempotency keys that created some of them (with when,
/// in ms): at most one key per account, so bounded like the accounts.
#[derive(Debug, Default)]
struct Owned {
    accounts: Vec<Account>,
    keys: Vec<(String, usize, u64)>,
}

impl MemoryStore {
    fn insert_account(
        &self,
        account: &Account,
        max_per_user: u64,
        idempotency_key: Option<&str>,
    ) -> Insertion {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        let owned = accounts.entry(account.user_id.clone()).or_default();
        let now = crate::clock::now_millis();
        let ttl = u64::try_from(ACCOUNT_KEY_TTL.as_millis()).unwrap_or(u64::MAX);
        owned
            .keys
            .retain(|(_, _, at)| now.saturating_sub(*at) <= ttl);
        if let Some(key) = idempotency_key
            && let Some((_, index, _)) = owned.keys.iter().find(|(used, _, _)| used == key)
            && let Some(existing) = owned.accounts.get(*index)
        {
            return Insertion::Replayed(existing.clone());
        }
        if owned.accounts.len() as u64 >= max_per_user {
            return Insertion::LimitReached;
        }
        if let Some(key) = idempotency_key {
            owned
                .keys
                .push((key.to_string(), owned.accounts.len(), now));
        }
        owned.accounts.push(account.clone());
        Insertion::Inserted
    }

    fn accounts(&self, user_id: &str) -> Vec<Account> {
        let accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        accounts
            .get(user_id)
            .map(|owned| owned.accounts.clone())
            .unwrap_or_default()
    }

    fn insert_snapshots(&self, user_id: &str, snapshots: &[Snapshot], version: u64) -> bool {
        let mut all = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (newest, kept) = all.entry(user_id.to_string()).or_default();
        if !kept.is_empty() && version <= *newest {
            return false;
        }
        *newest = version;
        kept.splice(0..0, snapshots.iter().rev().cloned());
        kept.truncate(SNAPSHOTS_KEPT);
        true
    }

    fn snapshots(&self, user_id: &str) -> Vec<Snapshot> {
        let all = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        all.get(user_id)
            .map(|(_, kept)| kept.clone())
            .unwrap_or_default()
    }
}

/// Accounts in a hash per user (`accounts:{user}`: id → JSON); snapshots in a capped
/// list per user (`snapshots:{user}`, newest first).
#[derive(Debug)]
pub struct RedisStore {
    client: Client,
    insert_account: Script,
    insert_snapshots: Script,
}

impl RedisStore {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            insert_account: Script::from_lua(INSERT_ACCOUNT_SCRIPT),
            insert_snapshots: Script::from_lua(INSERT_SNAPSHOTS_SCRIPT),
        }
    }

    async fn insert_account(
        &self,
        account: &Account,
        max_per_user: u64,
        idempotency_key: Option<&str>,
    ) -> Result<Insertion, StoreError> {
        let json = serde_json::to_string(account)?;
        let mut keys = vec![accounts_key(&account.user_id)];
        if let Some(key) = idempotency_key {
            keys.push(format!("{}:idem:{key}", keys[0]));
        }
        let reply: Vec<fred::types::Value> = self
            .insert_account
            .evalsha_with_reload(
                &self.client,
                keys,
                vec![
                    account.id.clone(),
                    json,
                    max_per_user.to_string(),
                    ACCOUNT_KEY_TTL.as_millis().to_string(),
                ],
            )
            .await?;
        match reply.first().and_then(fred::types::Value::as_u64) {
            Some(1) => Ok(Insertion::Inserted),
            Some(2) => {
                let existing = reply.get(1).and_then(fred::types::Value::as_bytes);
                Ok(Insertion::Replayed(serde_json::from_slice(
                    existing.unwrap_or_default(),
                )?))
            }
            _ => Ok(Insertion::LimitReached),
        }
    }

    async fn accounts(&self, user_id: &str) -> Result<Vec<Account>, StoreError> {
        let values: Vec<String> = self.client.hvals(accounts_key(user_id)).await?;
        Ok(values
            .iter()
            .map(|v| serde_json::from_str(v))
            .collect::<Result<_, _>>()?)
    }

    async fn insert_snapshots(
        &self,
        user_id: &str,
        snapshots: &[Snapshot],
        version: u64,
    ) -> Result<bool, StoreError> {
        let mut args = vec![version.to_string(), SNAPSHOTS_KEPT.to_string()];
        for snapshot in snapshots {
            args.push(serde_json::to_string(snapshot)?);
        }
        let key = snapshots_key(user_id);
        let kept: i64 = self
            .insert_snapshots
            .evalsha_with_reload(
                &self.client,
                vec![key.clone(), format!("{key}:version")],
                args,
            )
            .await?;
        Ok(kept == 1)
    }

    async fn snapshots(&self, user_id: &str) -> Result<Vec<Snapshot>, StoreError> {
        let values: Vec<String> = self
            .client
            .lrange(snapshots_key(user_id), 0, SNAPSHOTS_KEPT as i64 - 1)
            .await?;
        Ok(values
            .iter()
            .map(|v| serde_json::from_str(v))
            .collect::<Result<_, _>>()?)
    }
}

fn accounts_key(user_id: &str) -> String {
    format!("accounts:{{{user_id}}}")
}

fn snapshots_key(user_id: &str) -> String {
    format!("snapshots:{{{user_id}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(n: u32) -> Snapshot {
        Snapshot {
            id: n.to_string(),
            account_id: "a".into(),
            user_id: "u".into(),
            name: "n".into(),
            balance: i64::from(n),
            taken_at: format!("2025-01-01T00:00:{n:02}.000Z"),
        }
    }

    #[test]
    fn memory_accounts_stop_at_the_limit_per_user() {
        let store = MemoryStore::default();
        let account = |user: &str, id: &str| Account {
            id: id.into(),
            user_id: user.into(),
            name: "n".into(),
            balance: 0,
            created_at: "2025-01-01T00:00:00.000Z".into(),
        };
        assert_eq!(
            store.insert_account(&account("u", "1"), 2, None),
            Insertion::Inserted
        );
        assert_eq!(
            store.insert_account(&account("u", "2"), 2, Some("k")),
            Insertion::Inserted
        );
        assert_eq!(
            store.insert_account(&account("u", "3"), 2, Some("k")),
            Insertion::Replayed(account("u", "2")),
            "a repeated key answers with its account, even at the limit"
        );
        assert_eq!(
            store.insert_account(&account("u", "3"), 2, None),
            Insertion::LimitReached
        );
        assert_eq!(
            store.insert_account(&account("v", "1"), 2, Some("k")),
            Insertion::Inserted,
            "another user is unaffected"
        );
        assert_eq!(store.accounts("u").len(), 2);
    }

    #[test]
    fn memory_snapshots_are_newest_first_and_capped() {
        let store = MemoryStore::default();
        assert!(store.insert_snapshots("u", &[snapshot(1), snapshot(2)], 2));
        assert!(store.insert_snapshots("u", &[snapshot(3)], 3));
        assert!(
            !store.insert_snapshots("u", &[snapshot(9)], 3),
            "a generation no newer than the last is not kept"
        );
        let ids: Vec<_> = store.snapshots("u").into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["3", "2", "1"]);

        for n in 0..(SNAPSHOTS_KEPT as u32 + 10) {
            store.insert_snapshots("u", &[snapshot(n)], u64::from(n) + 4);
        }
        assert_eq!(store.snapshots("u").len(), SNAPSHOTS_KEPT);
    }
}
