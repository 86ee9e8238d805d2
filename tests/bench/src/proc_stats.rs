//! What a process (or a process tree) costs, from /proc (Linux): CPU time, peak RSS, PSS.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    // Field 3 (the state letter) is not a number; keep it as 0 so indexes stay proc(5)'s - 3.
    Some(
        after
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

fn ticks_to_duration(ticks: u64) -> Option<Duration> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&t| t > 0)?;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// User plus system CPU time the process has used so far, with that of its children it
/// has waited for (utime + stime + cutime + cstime, fields 14–17 of proc(5)).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let f = stat_fields(pid)?;
    ticks_to_duration(f.get(11)? + f.get(12)? + f.get(13)? + f.get(14)?)
}

fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?
        .get(1)
        .and_then(|&p| u32::try_from(p).ok())
}

/// `root` and every live descendant of it.
pub fn tree(root: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                if let Some(ppid) = parent(pid) {
                    all.push((pid, ppid));
                }
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(all.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    out
}

/// CPU time of a process tree: every live member's own time plus the root's reaped
/// children. A member that exits between two readings moves from its own line to the
/// root's cutime/cstime (all of a Postfix master's children are reaped by the master), so
/// the difference of two readings is what the tree used in between.
pub fn tree_cpu_time(root: u32) -> Option<Duration> {
    let mut total = cpu_time(root)?;
    for pid in tree(root).into_iter().skip(1) {
        if let Some(f) = stat_fields(pid) {
            // A child's own waited-for children are in its cutime/cstime.
            let t = f.get(11).copied().unwrap_or(0)
                + f.get(12).copied().unwrap_or(0)
                + f.get(13).copied().unwrap_or(0)
                + f.get(14).copied().unwrap_or(0);
            total += ticks_to_duration(t).unwrap_or_default();
        }
    }
    Some(total)
}

/// Peak resident set size (VmHWM) in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/status"), "VmHWM:").map(|kib| kib * 1024)
}

/// Proportional set size now, in bytes (shared pages split between the processes mapping them).
pub fn pss(pid: u32) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:").map(|kib| kib * 1024)
}

fn rss(pid: u32) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:").map(|kib| kib * 1024)
}

fn kib_field(path: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Peaks of the sums over a process tree, sampled while a run goes on.
#[derive(Default, Clone, Copy)]
pub struct MemoryPeaks {
    pub pss: u64,
    pub rss: u64,
}

/// Samples the PSS and RSS sums of `root`'s tree every 50 ms until stopped.
pub struct MemorySampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<MemoryPeaks>>,
    thread: Option<JoinHandle<()>>,
}

impl MemorySampler {
    pub fn start(root: u32) -> MemorySampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new(MemoryPeaks::default()));
        let thread = {
            let (stop, peaks) = (stop.clone(), peaks.clone());
            std::thread::spawn(move || {
                let mut members = tree(root);
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    // Walking all of /proc is dear; refresh the member list every 500 ms.
                    if n.is_multiple_of(10) {
                        members = tree(root);
                    }
                    n += 1;
                    let pss: u64 = members.iter().filter_map(|&p| pss(p)).sum();
                    let rss: u64 = members.iter().filter_map(|&p| rss(p)).sum();
                    let mut p = peaks.lock().expect("the sampler never panics holding it");
                    p.pss = p.pss.max(pss);
                    p.rss = p.rss.max(rss);
                    drop(p);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        MemorySampler {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> MemoryPeaks {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self
            .peaks
            .lock()
            .expect("the sampler never panics holding it")
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_time_a_peak_rss_and_a_pss() {
        let pid = std::process::id();
        // Burn a little CPU so the count is above zero even with 10 ms ticks.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_time(pid).is_some_and(|t| t > Duration::ZERO));
        assert!(tree_cpu_time(pid).is_some_and(|t| t > Duration::ZERO));
        assert!(peak_rss(pid).is_some_and(|b| b > 1024 * 1024));
        assert!(pss(pid).is_some_and(|b| b > 0));
        assert_eq!(tree(pid)[0], pid);
    }
}
