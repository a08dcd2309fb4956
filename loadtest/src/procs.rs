//! Sampling the system under test from /proc: CPU seconds and resident memory of given pids,
//! their threads and the CPUs they may run on.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Sample {
    /// utime + stime of all pids, in seconds.
    pub cpu_seconds: f64,
    /// Sum of VmRSS of all pids, in bytes.
    pub rss_bytes: u64,
}

/// Clock ticks per second for /proc/<pid>/stat (100 on Linux x86_64 and arm64).
const TICKS: f64 = 100.0;

pub fn sample(pids: &[u32]) -> Sample {
    let mut s = Sample::default();
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command name, which is in parentheses and may contain spaces.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
                    + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
                s.cpu_seconds += ticks as f64 / TICKS;
            }
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            s.rss_bytes += kb * 1024;
        }
    }
    s
}

/// Pids from `--pids 1,2` and from `--pidfile` files (one pid per line, or several per line).
pub fn collect(pids: &[u32], pidfiles: &[String]) -> Vec<u32> {
    let mut out = pids.to_vec();
    for file in pidfiles {
        if let Ok(text) = std::fs::read_to_string(file) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Samples during a run: the first, the last, and the peak RSS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    pub pids: Vec<u32>,
    pub start: Sample,
    pub end: Sample,
    pub peak_rss_bytes: u64,
}

/// Threads of `pid` (entries of /proc/<pid>/task).
pub fn threads(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count() as u64)
}

/// The CPUs `pid` may run on, as /proc shows them (`0`, `0-1`…).
pub fn affinity(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}
