//! Resident memory and CPU time of a process, from /proc.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcStats {
    pub rss_kib: u64,
    /// User plus system CPU time, in seconds.
    pub cpu_secs: f64,
}

/// Reads `/proc/<pid>`; `None` if the process is gone.
pub fn read(pid: u32) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, hence the last ')').
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ProcStats {
        rss_kib,
        cpu_secs: ticks as f64 / 100.0,
    })
}

/// The sum over `pids` (missing processes count as zero).
pub fn total(pids: &[u32]) -> ProcStats {
    pids.iter()
        .filter_map(|&pid| read(pid))
        .fold(ProcStats::default(), |a, b| ProcStats {
            rss_kib: a.rss_kib + b.rss_kib,
            cpu_secs: a.cpu_secs + b.cpu_secs,
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_process() {
        let me = super::read(std::process::id()).expect("own /proc entry");
        assert!(me.rss_kib > 0);
        assert!(super::read(u32::MAX).is_none());
    }
}
