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
/// Returns 1 when added, 0 at the limit.
const INSERT_ACCOUNT_SCRIPT: &str = r#"
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
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
    /// Stores `account` unless its user has `max_per_user` accounts already; returns
    /// whether it was stored.
    pub async fn insert_account(
        &self,
        account: &Account,
        max_per_user: u64,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Memory(store) => Ok(store.insert_account(account, max_per_user)),
            Self::Redis(store) => store.insert_account(account, max_per_user).await,
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

    /// Keeps `snapshots` (all of one user), dropping the oldest beyond [`SNAPSHOTS_KEPT`].
    pub async fn insert_snapshots(
        &self,
        user_id: &str,
        snapshots: &[Snapshot],
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => {
                store.insert_snapshots(user_id, snapshots);
                Ok(())
            }
            Self::Redis(store) => store.insert_snapshots(user_id, snapshots).await,
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
    accounts: Mutex<HashMap<String, Vec<Account>>>,
    /// Newest first.
    snapshots: Mutex<HashMap<String, Vec<Snapshot>>>,
}

impl MemoryStore {
    fn insert_account(&self, account: &Account, max_per_user: u64) -> bool {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        let owned = accounts.entry(account.user_id.clone()).or_default();
        if owned.len() as u64 >= max_per_user {
            return false;
        }
        owned.push(account.clone());
        true
    }

    fn accounts(&self, user_id: &str) -> Vec<Account> {
        let accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        accounts.get(user_id).cloned().unwrap_or_default()
    }

    fn insert_snapshots(&self, user_id: &str, snapshots: &[Snapshot]) {
        let mut all = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let kept = all.entry(user_id.to_string()).or_default();
        kept.splice(0..0, snapshots.iter().rev().cloned());
        kept.truncate(SNAPSHOTS_KEPT);
    }

    fn snapshots(&self, user_id: &str) -> Vec<Snapshot> {
        let all = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        all.get(user_id).cloned().unwrap_or_default()
    }
}

/// Accounts in a hash per user (`accounts:{user}`: id → JSON); snapshots in a capped
/// list per user (`snapshots:{user}`, newest first).
#[derive(Debug)]
pub struct RedisStore {
    client: Client,
    insert_account: Script,
}

impl RedisStore {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            insert_account: Script::from_lua(INSERT_ACCOUNT_SCRIPT),
        }
    }

    async fn insert_account(
        &self,
        account: &Account,
        max_per_user: u64,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(account)?;
        let inserted: i64 = self
            .insert_account
            .evalsha_with_reload(
                &self.client,
                vec![accounts_key(&account.user_id)],
                vec![account.id.clone(), json, max_per_user.to_string()],
            )
            .await?;
        Ok(inserted == 1)
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
    ) -> Result<(), StoreError> {
        if snapshots.is_empty() {
            return Ok(());
        }
        let values = snapshots
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        let key = snapshots_key(user_id);
        let _: i64 = self.client.lpush(&key, values).await?;
        let _: () = self
            .client
            .ltrim(&key, 0, SNAPSHOTS_KEPT as i64 - 1)
            .await?;
        Ok(())
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
        assert!(store.insert_account(&account("u", "1"), 2));
        assert!(store.insert_account(&account("u", "2"), 2));
        assert!(!store.insert_account(&account("u", "3"), 2));
        assert!(
            store.insert_account(&account("v", "1"), 2),
            "another user is unaffected"
        );
        assert_eq!(store.accounts("u").len(), 2);
    }

    #[test]
    fn memory_snapshots_are_newest_first_and_capped() {
        let store = MemoryStore::default();
        store.insert_snapshots("u", &[snapshot(1), snapshot(2)]);
        store.insert_snapshots("u", &[snapshot(3)]);
        let ids: Vec<_> = store.snapshots("u").into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["3", "2", "1"]);

        for n in 0..(SNAPSHOTS_KEPT as u32 + 10) {
            store.insert_snapshots("u", &[snapshot(n)]);
        }
        assert_eq!(store.snapshots("u").len(), SNAPSHOTS_KEPT);
    }
}
