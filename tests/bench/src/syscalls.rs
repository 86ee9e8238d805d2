//! System calls of the daemon under test, counted by `strace -f -c` attached for one run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The calls reported one by one, per message, each with the variants counted under it.
pub const NAMED: [(&str, &[&str]); 5] = [
    ("fsync", &["fsync", "fdatasync"]),
    ("openat", &["openat", "open", "openat2"]),
    ("rename", &["rename", "renameat", "renameat2"]),
    ("unlink", &["unlink", "unlinkat"]),
    ("futex", &["futex"]),
];

/// Calls of `name`'s group per message.
pub fn per_message(calls: &BTreeMap<String, u64>, group: &[&str], messages: f64) -> f64 {
    group
        .iter()
        .map(|k| calls.get(*k).copied().unwrap_or(0))
        .sum::<u64>() as f64
        / messages
}

/// Whether `strace` can be run; with `install`, tries `apt-get install -y strace` first.
pub fn available(install: bool) -> bool {
    let found = || {
        Command::new("strace")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found() {
        return true;
    }
    if install {
        eprintln!("mailer-bench: strace is missing; apt-get install -y strace");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "strace"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
    found()
}

/// A running `strace -f -c` attached to some processes.
pub struct Tracer {
    child: Child,
    output: PathBuf,
}

impl Tracer {
    /// Attaches to `pids` (and, with -f, to every thread and child they start).
    pub fn attach(pids: &[u32], output: &Path) -> Result<Tracer, String> {
        let mut cmd = Command::new("strace");
        cmd.arg("-f").arg("-c").arg("-o").arg(output);
        for p in pids {
            cmd.arg("-p").arg(p.to_string());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start strace: {e}"))?;
        // strace attaches to each thread in turn; give it a moment before the load starts.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Tracer {
            child,
            output: output.to_path_buf(),
        })
    }

    /// Detaches (SIGINT makes strace write its summary) and returns calls by name.
    pub fn finish(mut self) -> Result<BTreeMap<String, u64>, String> {
        self.interrupt();
        let summary = std::fs::read_to_string(&self.output)
            .map_err(|e| format!("strace summary {}: {e}", self.output.display()))?;
        Ok(parse_summary(&summary))
    }

    fn interrupt(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.interrupt();
        }
    }
}

/// Parses strace's `-c` table: `% time  seconds  usecs/call  calls  [errors]  syscall`.
fn parse_summary(text: &str) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[0].parse::<f64>().is_err() {
            continue;
        }
        let name = f[f.len() - 1];
        if name == "total" {
            continue;
        }
        if let Ok(n) = f[3].parse::<u64>() {
            *calls.entry(name.to_string()).or_insert(0) += n;
        }
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_table_is_parsed_by_name_without_the_total() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.006000         300        20           fsync
 30.00    0.003000          15       200        12 futex
 10.00    0.001000          10       100         4 openat
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000          31       320        16 total
";
        let c = parse_summary(text);
        assert_eq!(c.get("fsync"), Some(&20));
        assert_eq!(c.get("futex"), Some(&200));
        assert_eq!(c.get("openat"), Some(&100));
        assert_eq!(c.values().sum::<u64>(), 320);
    }
}
