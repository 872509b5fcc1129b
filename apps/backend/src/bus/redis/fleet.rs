//! The fleet: every instance's stream count, beaten into one Redis hash, so that each
//! instance knows the fleet's size and mean (see `rebalance`).

use fred::{interfaces::HashesInterface, types::scripts::Script};

use super::RedisBus;
use crate::bus::BusError;

/// The hash of the fleet: instance → `<streams> <room> <beat, ms>`. One small key: no
/// hash tag.
const FLEET: &str = "ev:fleet";

/// Beats for ARGV[1] holding ARGV[2] streams with room for ARGV[4] more, drops instances
/// silent for ARGV[3] ms, and returns `{streams, room, ...}` of the instances left (this
/// one included), by the Redis clock.
pub(super) const BEAT_SCRIPT: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[4] .. ' ' .. now)
local fleet = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local streams, room, beat = string.match(all[i + 1], '^(%d+) (%d+) (%d+)$')
  if beat and tonumber(beat) >= now - tonumber(ARGV[3]) then
    fleet[#fleet + 1] = tonumber(streams)
    fleet[#fleet + 1] = tonumber(room)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return fleet
"#;

impl RedisBus {
    /// `instance` holds `streams` and has room for `room` more: the `(streams, room)` of
    /// every instance heard from within `stale_ms`.
    pub(in crate::bus) async fn fleet_beat(
        &self,
        instance: &str,
        (streams, room): (u64, u64),
        stale_ms: u64,
    ) -> Result<Vec<(u64, u64)>, BusError> {
        let fleet: Vec<u64> = self
            .fleet_script
            .evalsha_with_reload(
                &self.client,
                vec![FLEET.to_string()],
                vec![
                    instance.to_string(),
                    streams.to_string(),
                    stale_ms.to_string(),
                    room.to_string(),
                ],
            )
            .await?;
        Ok(fleet
            .chunks_exact(2)
            .map(|pair| (pair[0], pair[1]))
            .collect())
    }

    /// `instance` leaves the fleet (it stops).
    pub(in crate::bus) async fn fleet_leave(&self, instance: &str) -> Result<(), BusError> {
        let _: i64 = self.client.hdel(FLEET, instance).await?;
        Ok(())
    }
}

/// The script, made once.
pub(super) fn script() -> Box<Script> {
    Box::new(Script::from_lua(BEAT_SCRIPT))
}
