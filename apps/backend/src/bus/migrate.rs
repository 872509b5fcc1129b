//! Moving what was kept under the partition tags of earlier versions (`{p0}`…`{p127}`,
//! which CRC16 spread unevenly over a cluster's masters) to today's (see `keys`): a
//! one-off, `backend --migrate-partitions`, run with the fleet stopped (see the README's
//! "Upgrading"). A feed keeps its partition number (`crc16(name) % 128` then as now), so
//! each key moves by its tag alone: `ev:{p17}:…` to `ev:{<TAGS[17]>}:…`. Histories (meta
//! hash and stream) and idempotency records are copied (`DUMP`/`RESTORE`, their TTL kept)
//! only where today's layout holds nothing for them yet, so what an instance of this
//! version wrote is never overwritten, and running it twice copies nothing twice.

use fred::{
    clients::Client,
    interfaces::{ClientLike, KeysInterface},
    types::{Key, Value},
};
use futures_util::TryStreamExt;

use super::{BusError, keys};

/// What a migration did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Histories copied to today's keys.
    pub copied: u64,
    /// Histories left where they were: today's layout had one already.
    pub kept: u64,
    /// Idempotency records copied.
    pub records: u64,
}

/// Copies everything kept under the earlier tags to today's keys (see the module).
pub async fn migrate_partitions(client: &Client) -> Result<Migrated, BusError> {
    let pattern = "ev:{p*}:*";
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
    for key in &found {
        let Some(old) = key.as_str() else { continue };
        let Some(new) = keys::migrated(old) else {
            continue;
        };
        if keys::legacy_meta(old).is_some() {
            // A history: its stream first, as the meta hash is what makes it exist.
            let exists: u64 = client.exists(new.as_str()).await?;
            let (old_log, new_log) = (
                old.replacen(":meta:", ":log:", 1),
                new.replacen(":meta:", ":log:", 1),
            );
            if exists == 0
                && copy(client, &old_log, &new_log).await?
                && copy(client, old, &new).await?
            {
                migrated.copied += 1;
            } else {
                migrated.kept += 1;
            }
        } else if old.contains("}:idem:") && copy(client, old, &new).await? {
            migrated.records += 1;
        }
    }
    Ok(migrated)
}

/// Copies `from` to `to` with its time to live, unless `to` exists (then false). A
/// missing `from` (never there, or expired meanwhile) copies nothing and counts as copied.
async fn copy(client: &Client, from: &str, to: &str) -> Result<bool, BusError> {
    let dump: Value = client.dump(from).await?;
    if dump.is_null() {
        return Ok(true);
    }
    // -1: no expiry (0 to RESTORE); -2: gone since the DUMP.
    let ttl: i64 = client.pttl(from).await?;
    if ttl == -2 {
        return Ok(true);
    }
    let restored: Result<Value, _> = client
        .restore(to, ttl.max(0), dump, false, false, None, None)
        .await;
    match restored {
        Ok(_) => Ok(true),
        Err(error) if error.details().contains("BUSYKEY") => Ok(false),
        Err(error) => Err(error.into()),
    }
}
