//! What a process costs while idle, from Linux's `/proc`: CPU, wake-ups and
//! RSS of a process and every descendant (the app's webview processes), for
//! the engine's idle bench (`benches/balancer.rs`, section 10) and the app's
//! (`src-tauri/benches/idle.rs`). On macOS the same figures come from
//! `top -stats pid,cpu,idlew,mem` (see the README's performance section).
#![allow(dead_code)] // each bench uses its own part

use std::collections::HashMap;
use std::time::Duration;

/// What a process and its descendants have used so far: CPU seconds (user +
/// system, all threads), voluntary context switches (each one a wake-up
/// after sleeping; summed over every thread), RSS in KiB, and how many
/// processes that is.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub cpu_s: f64,
    pub wakeups: u64,
    pub rss_kb: u64,
    pub processes: usize,
    /// Wake-ups so far of each thread (by thread id), with its name as
    /// `process/thread`: what tells who wakes.
    pub threads: HashMap<u32, (String, u64)>,
}

/// `root` and its descendants, by parent pid.
fn family(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the name (which may hold spaces): state, then ppid.
            let ppid = stat
                .rfind(')')
                .and_then(|at| stat[at + 2..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(parent) && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        i += 1;
    }
    pids
}

fn status_field(path: String, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn usage(root: u32) -> Usage {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut u = Usage::default();
    for pid in family(root) {
        u.processes += 1;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some(at) = stat.rfind(')') {
            // After the name: state is field 3; utime and stime are 14, 15.
            let f: Vec<&str> = stat[at + 2..].split_whitespace().collect();
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            u.cpu_s += (t(11) + t(12)) / ticks;
        }
        u.rss_kb += status_field(format!("/proc/{pid}/status"), "VmRSS:");
        let process = comm(&format!("/proc/{pid}"));
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = t.path();
            let woke = status_field(
                format!("{}/status", path.display()),
                "voluntary_ctxt_switches:",
            );
            u.wakeups += woke;
            if let Some(tid) = t.file_name().to_str().and_then(|n| n.parse().ok()) {
                let name = format!("{process}/{}", comm(&path.display().to_string()));
                u.threads.insert(tid, (name, woke));
            }
        }
    }
    u
}

/// A process's or thread's name (`comm`) under a `/proc` path.
fn comm(dir: &str) -> String {
    std::fs::read_to_string(format!("{dir}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Over `window`: CPU (% of one core) and wake-ups per second of `pid` and
/// its descendants, and at the end their RSS (MB) and how many they are.
#[derive(Clone, Debug)]
pub struct Idle {
    pub cpu_pct: f64,
    pub wakeups_per_s: f64,
    pub rss_mb: f64,
    pub processes: usize,
    /// The threads that woke most, with their wake-ups per second, those
    /// of one name added up (threads that ended in the window are not
    /// counted).
    pub busiest: Vec<(String, f64)>,
}

impl Idle {
    /// The busiest threads as one line: `name 0.40/s, name 0.20/s`.
    pub fn busiest_line(&self) -> String {
        self.busiest
            .iter()
            .map(|(name, rate)| format!("{name} {rate:.2}/s"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub async fn idle(pid: u32, window: Duration) -> Idle {
    let a = usage(pid);
    tokio::time::sleep(window).await;
    let b = usage(pid);
    let s = window.as_secs_f64();
    // Threads of one pool share a name: added up, with how many there are.
    let mut by_name: std::collections::BTreeMap<&str, (f64, usize)> = Default::default();
    for (tid, (name, woke)) in &b.threads {
        let before = a.threads.get(tid).map_or(0, |(_, w)| *w);
        let e = by_name.entry(name).or_default();
        e.0 += woke.saturating_sub(before) as f64 / s;
        e.1 += 1;
    }
    let mut busiest: Vec<(String, f64)> = by_name
        .into_iter()
        .filter(|(_, (rate, _))| *rate > 0.0)
        .map(|(name, (rate, n))| match n {
            1 => (name.to_string(), rate),
            n => (format!("{name} (x{n})"), rate),
        })
        .collect();
    busiest.sort_by(|x, y| y.1.total_cmp(&x.1));
    busiest.truncate(5);
    Idle {
        cpu_pct: (b.cpu_s - a.cpu_s) / s * 100.0,
        // A process that ended in the window would make this negative.
        wakeups_per_s: b.wakeups.saturating_sub(a.wakeups) as f64 / s,
        rss_mb: b.rss_kb as f64 / 1024.0,
        processes: b.processes,
        busiest,
    }
}
