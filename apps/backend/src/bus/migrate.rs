//! Moving histories kept under the partition tags of earlier versions (`{p0}`…`{p127}`,
//! which CRC16 spread unevenly over a cluster's masters) to today's (see `keys`): a
//! one-off, `backend --migrate-partitions`, run with the fleet stopped (see the README's
//! "Upgrading"). Each history is copied (`DUMP`/`RESTORE`, its TTL kept) only where
//! today's layout holds nothing for it yet, so a history an instance of this version has
//! written to is never overwritten, and running it twice copies nothing twice.

use fred::{
    clients::Client,
    error::ErrorKind,
    interfaces::{ClientLike, KeysInterface},
    types::{Key, Value},
};
use futures_util::TryStreamExt;

use super::{BusError, Feed, keys};

/// What a migration did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Histories copied to today's keys.
    pub copied: u64,
    /// Histories left where they were: today's layout had one already.
    pub kept: u64,
}

/// Copies every history under the earlier tags to today's keys (see the module).
pub async fn migrate_partitions(client: &Client) -> Result<Migrated, BusError> {
    let pattern = "ev:{p*}:meta:*";
    let found: Vec<Key> = if client.is_clustered() {
        client
            .scan_cluster_buffered(pattern, Some(1000), None)
            .try_collect()
            .await?
    } else {
        client
            .scan_buffered(pattern, Some(1000), None)
            .try_collect()
            .await?
    };
    let mut migrated = Migrated::default();
    for key in found {
        let Some(old_meta) = key.as_str() else {
            continue;
        };
        let Some((partition, name)) = keys::legacy_meta(old_meta) else {
            continue;
        };
        let [new_meta, new_log] = keys::history(&Feed::from_key_name(name));
        let exists: u64 = client.exists(new_meta.as_str()).await?;
        if exists > 0 {
            migrated.kept += 1;
            continue;
        }
        // The stream first: the meta hash is what makes a history exist.
        let old_log = keys::legacy_log(partition, name);
        let copied =
            copy(client, &old_log, &new_log).await? && copy(client, old_meta, &new_meta).await?;
        if copied {
            migrated.copied += 1;
        } else {
            migrated.kept += 1;
        }
    }
    Ok(migrated)
}

/// Copies `from` to `to` with its time to live, unless `to` exists (then false). A
/// missing `from` copies nothing, and counts as copied.
async fn copy(client: &Client, from: &str, to: &str) -> Result<bool, BusError> {
    let dump: Value = client.dump(from).await?;
    if dump.is_null() {
        return Ok(true);
    }
    let ttl: i64 = client.pttl(from).await?;
    let restored: Result<Value, _> = client
        .restore(to, ttl.max(0), dump, false, false, None, None)
        .await;
    match restored {
        Ok(_) => Ok(true),
        Err(error)
            if error.kind() == &ErrorKind::Unknown && error.details().contains("BUSYKEY") =>
        {
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}
