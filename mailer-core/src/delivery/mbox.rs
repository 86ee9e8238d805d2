//! Delivery to an mbox file, in the mboxrd form and with the locking mutt, mail(1) and
//! Dovecot honour: a `<mbox>.lock` dotlock, then an `fcntl` write lock.
//!
//! The message arrives in SMTP form (CRLF); the mbox gets Unix line ends. A failed write is
//! undone by truncating the mbox to its length before the delivery, so a reader never sees
//! half a message, and the data is fsynced before success is reported.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::address::Address;
use crate::delivery::content::Content;
use crate::delivery::mailbox_fs::{self, io_failure, Dir, MailboxOwner, Rules};
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
    /// The mailbox's account, when this process may give files away (root or CAP_CHOWN): a
    /// missing mbox is created `<user>:mail 0660` and an existing one must be the user's.
    /// `None`: created 0600 as this process, and existing ones must be this process's.
    pub owner: Option<MailboxOwner>,
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

/// Appends `message` (CRLF line ends), read a chunk at a time, to the mbox at `path` as one
/// mboxrd entry:
/// `From <sender or MAILER-DAEMON> <asctime of arrival>`, the message with LF line ends and
/// `>*From ` lines quoted with one more `>`, then a blank line. Returns once the data is on
/// disk. Every failure is temporary (a lock, a full disk or a permission can change) and names
/// the file; an mbox that is not a regular file of its owner with one link is refused, and an
/// existing mbox keeps its mode and owner.
pub fn deliver_mbox(
    path: &Path,
    sender: Option<&Address>,
    arrival: SystemTime,
    message: &Content,
    opts: &MboxOptions,
) -> Result<(), Failure> {
    let deadline = Instant::now() + opts.lock_timeout;
    let rules = Rules::mbox(opts.owner.as_ref());
    let Some(name) = path.file_name() else {
        return Err(Failure::temporary(
            FailureKind::Local,
            EnhancedStatus(4, 3, 5),
            format!("{}: not a file name", path.display()),
        ));
    };
    let dir = mailbox_fs::walk(path.parent().unwrap_or(Path::new("")), &rules)?;
    let mut lock_name = name.to_os_string();
    lock_name.push(".lock");
    let _dotlock = DotLock::acquire(
        &dir,
        lock_name,
        &dotlock_path(path),
        deadline,
        opts.lock_timeout,
    )?;
    let (file, created) = mailbox_fs::open_mbox(&dir, name, path, &rules)?;
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
        mailbox_fs::sync_dir(&dir)
            .map_err(|e| io_failure(&dir.path, "cannot fsync directory", &e))?;
    }
    // The fcntl lock goes with `file`, then the dotlock is removed.
    drop(file);
    Ok(())
}

fn append(
    file: &File,
    separator: &[u8],
    message: &Content,
    fail_after: Option<u64>,
) -> io::Result<()> {
    {
        let sink = FailAfter {
            inner: file,
            remaining: fail_after,
        };
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, sink);
        w.write_all(separator)?;
        let mut lines = LfLines::new(true);
        message.for_each_chunk(|chunk| lines.push(&mut w, chunk))?;
        lines.finish(&mut w)?;
        w.write_all(b"\n")?;
        w.flush()?;
    }
    file.sync_all()
}

/// What a `From ` line starts with, after any `>`.
const FROM: &[u8] = b"From ";

/// A message written with LF line ends, fed a chunk at a time: each CRLF (or bare LF) line
/// end becomes LF and the last line gets one; with `mboxrd`, a line matching `^>*From ` gets
/// one more `>`. A line, its `>From ` or its CRLF may straddle chunks: the output is the same
/// wherever the message is cut.
pub(crate) struct LfLines {
    mboxrd: bool,
    /// At the start of a line that may be a `From ` line (mboxrd only): what of it was read
    /// and not written yet.
    start: Option<Prefix>,
    /// The last octet read was a CR, not written yet: it goes if a LF or the end follows.
    cr: bool,
    /// Octets of a line without its line end were read: the end owes a LF.
    open: bool,
}

/// The start of a line read so far: `quotes` times `>`, then the first `from` octets of
/// [`FROM`].
#[derive(Clone, Copy, Default)]
struct Prefix {
    quotes: u64,
    from: usize,
}

impl LfLines {
    pub(crate) fn new(mboxrd: bool) -> LfLines {
        LfLines {
            mboxrd,
            start: mboxrd.then_some(Prefix::default()),
            cr: false,
            open: false,
        }
    }

    pub(crate) fn push(&mut self, w: &mut impl Write, mut chunk: &[u8]) -> io::Result<()> {
        while let Some(&first) = chunk.first() {
            if let Some(prefix) = &mut self.start {
                if prefix.from == 0 && first == b'>' {
                    prefix.quotes += 1;
                } else if first == FROM[prefix.from] {
                    prefix.from += 1;
                    if prefix.from == FROM.len() {
                        let quotes = prefix.quotes + 1;
                        self.start = None;
                        write_quotes(w, quotes)?;
                        w.write_all(FROM)?;
                    }
                } else {
                    // Not a `From ` line: what was held back goes out as it came, and `first`
                    // is read as part of the line.
                    let held = *prefix;
                    self.start = None;
                    write_quotes(w, held.quotes)?;
                    w.write_all(&FROM[..held.from])?;
                    continue;
                }
                self.open = true;
                chunk = &chunk[1..];
                continue;
            }
            let (line, ended) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            // A CR held back from the previous chunk was content unless a LF follows it.
            if self.cr && !line.is_empty() {
                w.write_all(b"\r")?;
            }
            let (text, cr) = match line.strip_suffix(b"\r") {
                Some(text) => (text, true),
                None => (line, false),
            };
            w.write_all(text)?;
            match ended {
                Some(next) => {
                    w.write_all(b"\n")?;
                    self.cr = false;
                    self.open = false;
                    self.start = self.mboxrd.then_some(Prefix::default());
                    chunk = &chunk[next..];
                }
                None => {
                    self.cr = cr;
                    self.open = true;
                    chunk = &[];
                }
            }
        }
        Ok(())
    }

    /// Ends the last line: a CR held back was its line end.
    pub(crate) fn finish(mut self, w: &mut impl Write) -> io::Result<()> {
        if let Some(held) = self.start.take() {
            write_quotes(w, held.quotes)?;
            w.write_all(&FROM[..held.from])?;
        }
        if self.open {
            w.write_all(b"\n")?;
        }
        Ok(())
    }
}

fn write_quotes(w: &mut impl Write, mut n: u64) -> io::Result<()> {
    const QUOTES: [u8; 64] = [b'>'; 64];
    while n > 0 {
        let take = n.min(QUOTES.len() as u64) as usize;
        w.write_all(&QUOTES[..take])?;
        n -= take as u64;
    }
    Ok(())
}

/// The whole message at once, as [`LfLines`] must write it however it is cut.
#[cfg(test)]
pub(crate) fn lf_whole(message: &[u8], mboxrd: bool) -> Vec<u8> {
    let mut w = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if mboxrd && is_from_line(line) {
            w.push(b'>');
        }
        w.extend_from_slice(line);
        w.push(b'\n');
        rest = next;
    }
    w
}

#[cfg(test)]
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

fn dotlock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// A `<mbox>.lock` file this process created beside the mbox; removed on drop.
struct DotLock<'a> {
    dir: &'a Dir,
    name: OsString,
}

impl<'a> DotLock<'a> {
    /// `shown` is the lock's path, for messages.
    fn acquire(
        dir: &'a Dir,
        name: OsString,
        shown: &Path,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<DotLock<'a>, Failure> {
        loop {
            match mailbox_fs::create_new(dir, &name, OFlags::empty()) {
                Ok(fd) => {
                    // The pid helps an administrator find the holder; readers ignore it.
                    let _ = writeln!(File::from(fd), "{}", std::process::id());
                    return Ok(DotLock { dir, name });
                }
                Err(Errno::EXIST) => {}
                Err(e @ (Errno::ACCESS | Errno::ROFS)) => {
                    return Err(mailbox_fs::cannot_create_in(dir, e))
                }
                Err(e) => return Err(io_failure(shown, "cannot create dotlock", &e.into())),
            }
            if is_stale(dir, &name) {
                let _ = mailbox_fs::remove(dir, &name);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Failure::temporary(
                    FailureKind::Local,
                    EnhancedStatus(4, 2, 0),
                    format!(
                        "{}: mailbox locked by another process for more than {timeout:?}",
                        shown.display()
                    ),
                ));
            }
            std::thread::sleep(LOCK_RETRY.min(deadline - now));
        }
    }
}

impl Drop for DotLock<'_> {
    fn drop(&mut self) {
        let _ = mailbox_fs::remove(self.dir, &self.name);
    }
}

/// A dotlock is stale when it is older than [`STALE_DOTLOCK`], or when it names a process
/// that no longer runs (as Dovecot decides): a writer killed mid-delivery, this daemon
/// included, must not hold the mailbox for minutes. A lock without a pid (mutt leaves it
/// empty) is judged by age alone. Mail spools are local, so the pid is one of this host's.
fn is_stale(dir: &Dir, lock: &OsStr) -> bool {
    let old = mailbox_fs::modified_at(dir, lock)
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_DOTLOCK);
    old || holder_is_gone(dir, lock)
}

fn holder_is_gone(dir: &Dir, lock: &OsStr) -> bool {
    let Ok(head) = mailbox_fs::read_head(dir, lock, 32) else {
        return false;
    };
    let pid = std::str::from_utf8(&head)
        .ok()
        .and_then(|text| text.trim().parse::<libc::pid_t>().ok())
        .filter(|&pid| pid > 0);
    let Some(pid) = pid else {
        return false;
    };
    // SAFETY: signal 0 only asks whether `pid` exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::content::testing::{across_boundaries, file_backed};

    /// CRLF cut between CR and LF, `>*From ` lines cut anywhere, bare CR and LF, a CR that
    /// ends the message.
    const TRICKY: &[u8] =
        b"From: a\r\n\r\nFrom x\r\n>From y\r\n>>>From z\r\n>Fro\r\n>\r\nFrom\rbare\nFrom \r\r\n\r\n>>Fromage\r\n.\r\nend\r";

    fn fed(message: &[u8], cuts: &[usize], mboxrd: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut lines = LfLines::new(mboxrd);
        let mut from = 0;
        for &cut in cuts.iter().chain([&message.len()]) {
            lines.push(&mut out, &message[from..cut]).unwrap();
            from = cut;
        }
        lines.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn lf_lines_write_what_the_whole_message_gives_wherever_it_is_cut() {
        for mboxrd in [true, false] {
            let whole = lf_whole(TRICKY, mboxrd);
            assert_eq!(fed(TRICKY, &[], mboxrd), whole);
            for i in 0..=TRICKY.len() {
                for j in i..=TRICKY.len() {
                    assert_eq!(fed(TRICKY, &[i, j], mboxrd), whole, "cut at {i} and {j}");
                }
            }
        }
        // Byte by byte.
        let every: Vec<usize> = (1..TRICKY.len()).collect();
        assert_eq!(fed(TRICKY, &every, true), lf_whole(TRICKY, true));
        assert_eq!(fed(b"", &[], true), b"");
        assert_eq!(fed(b">>>>", &[2], true), b">>>>\n");
    }

    #[test]
    fn an_mbox_from_a_queue_file_is_the_same_at_every_chunk_boundary() {
        let snippet = b"\r\n>>From q\r\nFrom r\r\n.\r\n";
        let dir = tempfile::tempdir().unwrap();
        let arrival = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_612_417);
        for back in 0..=snippet.len() {
            let message = across_boundaries(snippet, back);
            let content = file_backed(&message);
            assert!(content.len() > 3 * crate::delivery::content::CHUNK as u64);
            let mbox = dir.path().join(format!("mbox{back}"));
            deliver_mbox(&mbox, None, arrival, &content, &MboxOptions::default()).unwrap();
            let mut expected = format!("From MAILER-DAEMON {}\n", asctime(arrival)).into_bytes();
            expected.extend_from_slice(&lf_whole(&message, true));
            expected.push(b'\n');
            let got = std::fs::read(&mbox).unwrap();
            assert!(
                got == expected,
                "the snippet {back} octets before each boundary"
            );
        }
    }
}
