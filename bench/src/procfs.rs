//! Process accounting from `/proc`: CPU time and resident memory of
//! process trees (a tunnel end may fork, e.g. sshd's per-connection
//! children, so every figure covers a root and all its descendants).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::process::Command;

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`).
pub(crate) fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|hz| *hz > 0.0)
        .unwrap_or(100.0)
}

/// The fields of `/proc/PID/stat` after the command name: index 0 is the
/// state, 1 the parent pid, 11..=14 utime, stime, cutime, cstime.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: cut at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect(),
    )
}

/// Every live pid with its parent.
fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return map;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(f) = stat_fields(pid)
            && f.len() > 1
        {
            map.insert(pid, f[1] as u32);
        }
    }
    map
}

/// `roots` and all their live descendants.
pub(crate) fn tree(roots: &[u32]) -> Vec<u32> {
    let parents = parents();
    let mut keep: HashSet<u32> = roots
        .iter()
        .copied()
        .filter(|p| parents.contains_key(p))
        .collect();
    loop {
        let before = keep.len();
        for (pid, ppid) in &parents {
            if keep.contains(ppid) {
                keep.insert(*pid);
            }
        }
        if keep.len() == before {
            break;
        }
    }
    let mut v: Vec<u32> = keep.into_iter().collect();
    v.sort_unstable();
    v
}

/// User + system CPU ticks of the trees under `roots`, including children
/// they have already reaped.
pub(crate) fn cpu_ticks(roots: &[u32]) -> u64 {
    tree(roots)
        .into_iter()
        .filter_map(stat_fields)
        .filter(|f| f.len() > 14)
        .map(|f| f[11] + f[12] + f[13] + f[14])
        .sum()
}

/// A `/proc/PID/status` field in KiB (e.g. `VmRSS`), summed over the trees.
fn status_kib(roots: &[u32], field: &str) -> u64 {
    let prefix = format!("{field}:");
    tree(roots)
        .into_iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find(|l| l.starts_with(&prefix))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// Resident set size of the trees, KiB.
pub(crate) fn rss_kib(roots: &[u32]) -> u64 {
    status_kib(roots, "VmRSS")
}

/// Peak resident set size of the trees, KiB.
pub(crate) fn peak_rss_kib(roots: &[u32]) -> u64 {
    status_kib(roots, "VmHWM")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_visible() {
        let me = std::process::id();
        assert_eq!(tree(&[me])[0], me);
        assert!(rss_kib(&[me]) > 0);
        assert!(tree(&[u32::MAX]).is_empty());
    }
}
