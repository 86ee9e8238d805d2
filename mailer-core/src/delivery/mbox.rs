//! Delivery to an mbox file, in the mboxrd form and with the locking mutt, mail(1) and
//! Dovecot honour: a `<mbox>.lock` dotlock, then an `fcntl` write lock.
//!
//! The message arrives in SMTP form (CRLF); the mbox gets Unix line ends. A failed write is
//! undone by truncating the mbox to its length before the delivery, so a reader never sees
//! half a message, and the data is fsynced before success is reported.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::address::Address;
use crate::delivery::{EnhancedStatus, Failure, FailureKind};
use crate::time::asctime;

/// A dotlock older than this was left by a crashed writer (mutt and procmail use 5 minutes).
pub const STALE_DOTLOCK: Duration = Duration::from_secs(300);
/// Pause between attempts to take a lock someone else holds.
const LOCK_RETRY: Duration = Duration::from_millis(50);
const WRITE_BUFFER: usize = 64 * 1024;

/// Why a mailbox path pattern cannot be expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatternError {
    /// The pattern starts with `~` but the user has no home directory.
    NoHome,
    /// `~name` (another user's home) is not supported.
    TildeUser,
    /// `%` followed by something other than `u`, `d` or `%`.
    UnknownEscape(char),
    /// A lone `%` at the end.
    TrailingPercent,
    /// The value for `%u` or `%d` would escape its directory (empty, `.`, `..`, or has `/`).
    UnsafeValue { what: &'static str, value: String },
    /// The result is a relative path.
    NotAbsolute(PathBuf),
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::NoHome => f.write_str("`~` in the mailbox path but the user has no home"),
            PatternError::TildeUser => f.write_str("`~name` is not supported; use `~` or %u"),
            PatternError::UnknownEscape(c) => write!(f, "unknown escape `%{c}` (known: %u %d %%)"),
            PatternError::TrailingPercent => f.write_str("lone `%` at the end of the path"),
            PatternError::UnsafeValue { what, value } => {
                write!(f, "{what} `{value}` cannot be used in a path")
            }
            PatternError::NotAbsolute(p) => {
                write!(f, "mailbox path {} is not absolute", p.display())
            }
        }
    }
}

impl std::error::Error for PatternError {}

/// Expands a mailbox path pattern: `~` at the start is `home`, `%u` the user, `%d` the domain,
/// `%%` a percent sign.
pub fn expand_path(
    pattern: &str,
    user: &str,
    domain: &str,
    home: Option<&Path>,
) -> Result<PathBuf, PatternError> {
    let mut out = OsString::new();
    let mut rest = pattern;
    if let Some(after) = pattern.strip_prefix('~') {
        if !(after.is_empty() || after.starts_with('/')) {
            return Err(PatternError::TildeUser);
        }
        out.push(home.ok_or(PatternError::NoHome)?);
        rest = after;
    }
    let mut text = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => text.push_str(path_safe("user", user)?),
            Some('d') => text.push_str(path_safe("domain", domain)?),
            Some('%') => text.push('%'),
            Some(other) => return Err(PatternError::UnknownEscape(other)),
            None => return Err(PatternError::TrailingPercent),
        }
    }
    out.push(text);
    let path = PathBuf::from(out);
    if !path.is_absolute() {
        return Err(PatternError::NotAbsolute(path));
    }
    Ok(path)
}

fn path_safe<'a>(what: &'static str, value: &'a str) -> Result<&'a str, PatternError> {
    if value.is_empty() || value == "." || value == ".." || value.contains(['/', '\0']) {
        return Err(PatternError::UnsafeValue {
            what,
            value: value.to_string(),
        });
    }
    Ok(value)
}

/// How to deliver to an mbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MboxOptions {
    /// `(uid, gid)` given to a newly created mbox (and missing parent directories) when the
    /// process runs as root.
    pub owner: Option<(u32, u32)>,
    /// How long to wait for the dotlock and the `fcntl` lock together.
    pub lock_timeout: Duration,
    /// Test hook: fail the write after this many bytes, to exercise the rollback.
    #[doc(hidden)]
    pub fail_after: Option<u64>,
}

impl Default for MboxOptions {
    fn default() -> Self {
        MboxOptions {
            owner: None,
            lock_timeout: Duration::from_secs(30),
            fail_after: None,
        }
    }
}

/// Appends `message` (CRLF line ends) to the mbox at `path` as one mboxrd entry:
/// `From <sender or MAILER-DAEMON> <asctime of arrival>`, the message with LF line ends and
/// `>*From ` lines quoted with one more `>`, then a blank line. Returns once the data is on
/// disk. Every failure is temporary (a lock, a full disk or a permission can change) and names
/// the file.
pub fn deliver_mbox(
    path: &Path,
    sender: Option<&Address>,
    arrival: SystemTime,
    message: &[u8],
    opts: &MboxOptions,
) -> Result<(), Failure> {
    let deadline = Instant::now() + opts.lock_timeout;
    if let Some(parent) = path.parent() {
        create_missing_dirs(parent, opts.owner)
            .map_err(|e| io_failure(parent, "cannot create directory", &e))?;
    }
    let lock_path = dotlock_path(path);
    let _dotlock = DotLock::acquire(&lock_path, deadline, opts.lock_timeout)?;
    let (file, created) =
        open_mbox(path, opts.owner).map_err(|e| io_failure(path, "cannot open", &e))?;
    lock_fcntl(&file, deadline).map_err(|e| match e {
        LockError::Timeout => Failure::temporary(
            FailureKind::Local,
            EnhancedStatus(4, 2, 0),
            format!(
                "{}: mailbox locked (fcntl) by another process for more than {:?}",
                path.display(),
                opts.lock_timeout
            ),
        ),
        LockError::Io(e) => io_failure(path, "cannot lock (fcntl)", &e),
    })?;
    let original_len = file
        .metadata()
        .map_err(|e| io_failure(path, "cannot stat", &e))?
        .len();

    let sender = sender.map_or_else(|| "MAILER-DAEMON".to_string(), Address::to_string);
    let separator = format!("From {sender} {}\n", asctime(arrival));
    let written = append(&file, separator.as_bytes(), message, opts.fail_after);
    if let Err(e) = written {
        // Undo the partial entry so readers never see half a message.
        let restored = file.set_len(original_len).and_then(|()| file.sync_all());
        let what = match restored {
            Ok(()) => "write failed, mailbox truncated back".to_string(),
            Err(t) => format!("write failed and truncating back failed too ({t})"),
        };
        return Err(io_failure(path, &what, &e));
    }
    if created {
        if let Some(parent) = path.parent() {
            sync_dir(parent).map_err(|e| io_failure(parent, "cannot fsync directory", &e))?;
        }
    }
    // The fcntl lock goes with `file`, then the dotlock is removed.
    drop(file);
    Ok(())
}

fn append(
    file: &File,
    separator: &[u8],
    message: &[u8],
    fail_after: Option<u64>,
) -> io::Result<()> {
    {
        let sink = FailAfter {
            inner: file,
            remaining: fail_after,
        };
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, sink);
        w.write_all(separator)?;
        write_lf(&mut w, message, true)?;
        w.write_all(b"\n")?;
        w.flush()?;
    }
    file.sync_all()
}

/// Writes `message` with each CRLF (or bare LF) line end as LF, ending with a line end; with
/// `mboxrd`, a line matching `^>*From ` gets one more `>`.
pub(crate) fn write_lf(w: &mut impl Write, message: &[u8], mboxrd: bool) -> io::Result<()> {
    let mut rest = message;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if mboxrd && is_from_line(line) {
            w.write_all(b">")?;
        }
        w.write_all(line)?;
        w.write_all(b"\n")?;
        rest = next;
    }
    Ok(())
}

fn is_from_line(line: &[u8]) -> bool {
    let start = line.iter().take_while(|&&b| b == b'>').count();
    line[start..].starts_with(b"From ")
}

/// A writer that fails once `remaining` bytes have passed (never when `None`).
pub(crate) struct FailAfter<W> {
    pub(crate) inner: W,
    pub(crate) remaining: Option<u64>,
}

impl<W: Write> Write for FailAfter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(remaining) = self.remaining else {
            return self.inner.write(buf);
        };
        if remaining == 0 {
            return Err(io::Error::other("injected write failure"));
        }
        let take = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.inner.write(&buf[..take])?;
        self.remaining = Some(remaining - n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn dotlock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// A `<mbox>.lock` file this process created; removed on drop.
struct DotLock {
    path: PathBuf,
}

impl DotLock {
    fn acquire(path: &Path, deadline: Instant, timeout: Duration) -> Result<DotLock, Failure> {
        loop {
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path);
            match created {
                Ok(mut f) => {
                    // The pid helps an administrator find the holder; readers ignore it.
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(DotLock {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_failure(path, "cannot create dotlock", &e)),
            }
            if is_stale(path) {
                let _ = std::fs::remove_file(path);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Failure::temporary(
                    FailureKind::Local,
                    EnhancedStatus(4, 2, 0),
                    format!(
                        "{}: mailbox locked by another process for more than {timeout:?}",
                        path.display()
                    ),
                ));
            }
            std::thread::sleep(LOCK_RETRY.min(deadline - now));
        }
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn is_stale(lock: &Path) -> bool {
    std::fs::symlink_metadata(lock)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_DOTLOCK)
}

/// Opens the mbox for appending, creating it 0600 (owned by `owner` when root) if missing.
/// Refuses symlinks and anything but a regular file. Returns whether it was created.
fn open_mbox(path: &Path, owner: Option<(u32, u32)>) -> io::Result<(File, bool)> {
    let mut opts = OpenOptions::new();
    // O_NONBLOCK: opening a FIFO planted at the path must not hang the delivery.
    opts.append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let (file, created) = match opts.open(path) {
        Ok(f) => (f, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match opts.clone().create_new(true).open(path) {
                Ok(f) => {
                    chown_if_root(&f, owner)?;
                    (f, true)
                }
                // Created by someone else in between: use theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (opts.open(path)?, false),
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((file, created))
}

enum LockError {
    Timeout,
    Io(io::Error),
}

/// Takes an `fcntl` write lock on the whole file, retrying until `deadline`.
fn lock_fcntl(file: &File, deadline: Instant) -> Result<(), LockError> {
    loop {
        // SAFETY: an all-zero flock is a valid value; the fields that matter are set below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = 0;
        fl.l_len = 0; // To the end of the file, however long it grows.
                      // SAFETY: the descriptor is open for the lifetime of `file`; `fl` is a valid flock.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EACCES) | Some(libc::EAGAIN) => {}
            _ => return Err(LockError::Io(err)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(LockError::Timeout);
        }
        std::thread::sleep(LOCK_RETRY.min(deadline - now));
    }
}

/// Creates the missing directories of `dir` (0700, owned by `owner` when root), top down.
pub(crate) fn create_missing_dirs(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err())
        .collect();
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {
                if let Some((uid, gid)) = owner.filter(|_| is_root()) {
                    std::os::unix::fs::chown(d, Some(uid), Some(gid))?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn chown_if_root(file: &File, owner: Option<(u32, u32)>) -> io::Result<()> {
    match owner {
        Some((uid, gid)) if is_root() => std::os::unix::fs::fchown(file, Some(uid), Some(gid)),
        _ => Ok(()),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A temporary failure naming `path`, with the status the error calls for.
pub(crate) fn io_failure(path: &Path, what: &str, err: &io::Error) -> Failure {
    let status = match err.raw_os_error() {
        Some(libc::EDQUOT) | Some(libc::EFBIG) => EnhancedStatus(4, 2, 2), // mailbox full
        Some(libc::ENOSPC) => EnhancedStatus(4, 3, 1),                     // mail system full
        _ => EnhancedStatus(4, 3, 0),
    };
    Failure::temporary(
        FailureKind::Local,
        status,
        format!("{}: {what}: {err}", path.display()),
    )
}
