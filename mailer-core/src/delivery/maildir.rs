//! Delivery to a Maildir (<https://cr.yp.to/proto/maildir.html>): the message is written to
//! `tmp/` under a unique name, fsynced, then linked into `new/`, whose directory is fsynced
//! too, so a reader sees either the whole message or nothing. Line ends become LF, as mutt
//! and Dovecot expect.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::delivery::mbox::{
    chown_if_root, create_missing_dirs, io_failure, sync_dir, write_lf, FailAfter,
};
use crate::delivery::Failure;

/// Deliveries made by this process, for unique names within one microsecond.
static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Attempts at a fresh name when one is taken (only a clock step back could cause it).
const NAME_ATTEMPTS: usize = 8;

/// How to deliver to a Maildir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaildirOptions {
    /// `(uid, gid)` given to created directories and the message file when running as root.
    pub owner: Option<(u32, u32)>,
    /// This host's name, part of every file name.
    pub hostname: String,
    /// Test hook: fail the write after this many bytes.
    #[doc(hidden)]
    pub fail_after: Option<u64>,
}

impl MaildirOptions {
    pub fn new(hostname: impl Into<String>) -> MaildirOptions {
        MaildirOptions {
            owner: None,
            hostname: hostname.into(),
            fail_after: None,
        }
    }
}

/// Delivers `message` (CRLF line ends) into the Maildir `dir`, creating `dir` and its `tmp/`,
/// `new/` and `cur/` (0700) if missing. Returns the path of the file in `new/`. Every failure
/// is temporary and names the file; nothing is left in `tmp/`.
pub fn deliver_maildir(
    dir: &Path,
    message: &[u8],
    opts: &MaildirOptions,
) -> Result<PathBuf, Failure> {
    for sub in ["tmp", "new", "cur"] {
        let d = dir.join(sub);
        create_missing_dirs(&d, opts.owner)
            .map_err(|e| io_failure(&d, "cannot create directory", &e))?;
    }
    let host = escape_hostname(&opts.hostname);
    let (tmp_path, name, file) = create_tmp(dir, &host)?;
    if let Err(e) = write_file(&file, message, opts) {
        let _ = std::fs::remove_file(&tmp_path);
        return Err(io_failure(&tmp_path, "write failed", &e));
    }
    drop(file);
    let new_path = dir.join("new").join(&name);
    if let Err(e) = publish(&tmp_path, &new_path) {
        let _ = std::fs::remove_file(&tmp_path);
        return Err(io_failure(&new_path, "cannot move into new/", &e));
    }
    let new_dir = dir.join("new");
    sync_dir(&new_dir).map_err(|e| io_failure(&new_dir, "cannot fsync directory", &e))?;
    Ok(new_path)
}

/// Creates `tmp/<unique name>` exclusively; returns its path, the name and the open file.
fn create_tmp(dir: &Path, host: &str) -> Result<(PathBuf, String, File), Failure> {
    let mut last_err = None;
    for _ in 0..NAME_ATTEMPTS {
        let name = unique_name(SystemTime::now(), host);
        let path = dir.join("tmp").join(&name);
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        match opened {
            Ok(file) => return Ok((path, name, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some((path, e)),
            Err(e) => return Err(io_failure(&path, "cannot create", &e)),
        }
    }
    let (path, e) = last_err.expect("the loop ran at least once and only continues on a clash");
    Err(io_failure(&path, "no unique name free", &e))
}

fn write_file(file: &File, message: &[u8], opts: &MaildirOptions) -> io::Result<()> {
    chown_if_root(file, opts.owner)?;
    {
        let sink = FailAfter {
            inner: file,
            remaining: opts.fail_after,
        };
        let mut w = BufWriter::with_capacity(64 * 1024, sink);
        write_lf(&mut w, message, false)?;
        w.flush()?;
    }
    file.sync_all()
}

/// Links `tmp` to `new` (never replacing a file there), then removes `tmp`. Falls back to
/// rename on file systems without hard links.
fn publish(tmp: &Path, new: &Path) -> io::Result<()> {
    match std::fs::hard_link(tmp, new) {
        Ok(()) => std::fs::remove_file(tmp),
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EOPNOTSUPP))
                && std::fs::symlink_metadata(new).is_err() =>
        {
            std::fs::rename(tmp, new)
        }
        Err(e) => Err(e),
    }
}

/// `<seconds>.M<microseconds>P<pid>Q<counter>.<host>`, the form Dovecot and others use.
fn unique_name(now: SystemTime, host: &str) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.M{}P{}Q{}.{}",
        since.as_secs(),
        since.subsec_micros(),
        std::process::id(),
        counter,
        host
    )
}

/// The Maildir specification's escapes: `/` as `\057` and `:` as `\072` (`:` starts the info
/// part of a name in `cur/`).
fn escape_hostname(host: &str) -> String {
    let host = if host.is_empty() { "localhost" } else { host };
    host.replace('/', "\\057").replace(':', "\\072")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_slash_and_colon_are_escaped() {
        assert_eq!(escape_hostname("a/b:c"), "a\\057b\\072c");
        assert_eq!(escape_hostname(""), "localhost");
    }

    #[test]
    fn unique_name_has_time_pid_counter_host() {
        let t = UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        let name = unique_name(t, "mx");
        let prefix = format!("1700000000.M123456P{}Q", std::process::id());
        assert!(name.starts_with(&prefix), "{name}");
        assert!(name.ends_with(".mx"), "{name}");
    }
}
