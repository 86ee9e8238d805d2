//! Delivery to a Maildir (<https://cr.yp.to/proto/maildir.html>): the message is written to
//! `tmp/` under a unique name, fsynced, then linked into `new/`, whose directory is fsynced
//! too, so a reader sees either the whole message or nothing. Line ends become LF, as mutt
//! and Dovecot expect.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{linkat, renameat, statat, AtFlags, OFlags};
use rustix::io::Errno;

use crate::delivery::content::Content;
use crate::delivery::mailbox_fs::{self, io_failure, Dir, MailboxOwner, Rules};
use crate::delivery::mbox::{FailAfter, LfLines};
use crate::delivery::{EnhancedStatus, Failure, FailureKind};

/// Deliveries made by this process, for unique names within one microsecond.
static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Attempts at a fresh name when one is taken (only a clock step back could cause it).
const NAME_ATTEMPTS: usize = 8;

/// How to deliver to a Maildir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaildirOptions {
    /// The mailbox's account, when this process may give files away (root or CAP_CHOWN):
    /// what is created is given to the user (as root `<user>:<group>` 0700/0600, otherwise
    /// `<user>:mail` 02770/0660), and what exists must be the user's. `None`: created private
    /// to this process, and existing directories must be this process's.
    pub owner: Option<MailboxOwner>,
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

/// Delivers `message` (CRLF line ends), read a chunk at a time, into the Maildir `dir`, creating `dir` and its `tmp/`,
/// `new/` and `cur/` if missing. Returns the path of the file in `new/`. Every failure is
/// temporary and names the file; nothing is left in `tmp/`. The maildir and its
/// subdirectories must be directories of the mailbox's owner, not links: nothing outside
/// them is ever written.
pub fn deliver_maildir(
    dir: &Path,
    message: &Content,
    opts: &MaildirOptions,
) -> Result<PathBuf, Failure> {
    let rules = Rules::maildir(opts.owner.as_ref());
    let Some(name) = dir.file_name() else {
        return Err(Failure::temporary(
            FailureKind::Local,
            EnhancedStatus(4, 3, 5),
            format!("{}: not a directory name", dir.display()),
        ));
    };
    let parent = mailbox_fs::walk(dir.parent().unwrap_or(Path::new("")), &rules)?;
    let maildir = mailbox_fs::owned_dir(&parent, name, dir.to_path_buf(), &rules)?;
    let sub =
        |name: &str| mailbox_fs::owned_dir(&maildir, OsStr::new(name), dir.join(name), &rules);
    let (tmp, new, _cur) = (sub("tmp")?, sub("new")?, sub("cur")?);

    let host = escape_hostname(&opts.hostname);
    let (name, fd) = create_tmp(&tmp, &host)?;
    let tmp_path = tmp.path.join(&name);
    mailbox_fs::set_up_file(&fd, &tmp, OsStr::new(&name), &tmp_path, &rules)?;
    if let Err(e) = write_file(File::from(fd), message, opts) {
        let _ = mailbox_fs::remove(&tmp, OsStr::new(&name));
        return Err(io_failure(&tmp_path, "write failed", &e));
    }
    let new_path = new.path.join(&name);
    if let Err(e) = publish(&tmp, &new, &name) {
        let _ = mailbox_fs::remove(&tmp, OsStr::new(&name));
        return Err(io_failure(&new_path, "cannot move into new/", &e));
    }
    mailbox_fs::sync_dir(&new).map_err(|e| io_failure(&new.path, "cannot fsync directory", &e))?;
    Ok(new_path)
}

/// Creates `tmp/<unique name>` exclusively; returns the name and the open file.
fn create_tmp(tmp: &Dir, host: &str) -> Result<(String, OwnedFd), Failure> {
    let mut last_err = None;
    for _ in 0..NAME_ATTEMPTS {
        let name = unique_name(SystemTime::now(), host);
        match mailbox_fs::create_new(tmp, OsStr::new(&name), OFlags::empty()) {
            Ok(fd) => return Ok((name, fd)),
            Err(Errno::EXIST) => last_err = Some(name),
            Err(e) => {
                return Err(io_failure(
                    &tmp.path.join(&name),
                    "cannot create",
                    &e.into(),
                ))
            }
        }
    }
    let name = last_err.expect("the loop ran at least once and only continues on a clash");
    let taken = io::Error::from(Errno::EXIST);
    Err(io_failure(
        &tmp.path.join(name),
        "no unique name free",
        &taken,
    ))
}

fn write_file(file: File, message: &Content, opts: &MaildirOptions) -> io::Result<()> {
    {
        let sink = FailAfter {
            inner: &file,
            remaining: opts.fail_after,
        };
        let mut w = BufWriter::with_capacity(64 * 1024, sink);
        let mut lines = LfLines::new(false);
        message.for_each_chunk(|chunk| lines.push(&mut w, chunk))?;
        lines.finish(&mut w)?;
        w.flush()?;
    }
    file.sync_all()
}

/// Links `tmp/name` to `new/name` (never replacing a file there), then removes the tmp name.
/// Falls back to rename on file systems without hard links.
fn publish(tmp: &Dir, new: &Dir, name: &str) -> io::Result<()> {
    match linkat(tmp.fd(), name, new.fd(), name, AtFlags::empty()) {
        Ok(()) => {
            // Delivered: a tmp name left behind is cleaned by readers, not worth a retry
            // that would deliver twice.
            let _ = mailbox_fs::remove(tmp, OsStr::new(name));
            Ok(())
        }
        Err(e)
            if matches!(e, Errno::PERM | Errno::OPNOTSUPP)
                && matches!(
                    statat(new.fd(), name, AtFlags::SYMLINK_NOFOLLOW),
                    Err(Errno::NOENT)
                ) =>
        {
            Ok(renameat(tmp.fd(), name, new.fd(), name)?)
        }
        Err(e) => Err(e.into()),
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
    use crate::delivery::content::testing::{across_boundaries, file_backed};
    use crate::delivery::mbox::lf_whole;

    #[test]
    fn a_message_from_a_queue_file_is_the_same_at_every_chunk_boundary() {
        let snippet = b"\r\n>From q\r\nbare\rcr\r\n.\r\n";
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("Maildir");
        for back in 0..=snippet.len() {
            let message = across_boundaries(snippet, back);
            let path =
                deliver_maildir(&maildir, &file_backed(&message), &MaildirOptions::new("mx"))
                    .unwrap();
            let got = std::fs::read(&path).unwrap();
            assert!(
                got == lf_whole(&message, false),
                "the snippet {back} octets before each boundary"
            );
        }
    }

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
