//! The spool on disk.
//!
//! ```text
//! <queue_dir>/tmp/          files being written (removed at start)
//! <queue_dir>/q/<id>.msg    the message, exactly as it will be delivered, then its envelope
//! <queue_dir>/q/<id>.env    the envelope as updated after an attempt, when it changed
//! <queue_dir>/corrupt/      files the start could not use, each with `<name>.reason`
//! <queue_dir>/offline/      submissions kept by `mailer sendmail` while the daemon is down
//! <queue_dir>/submit.sock   the local submission socket (SMTP, with the peer's uid)
//! ```
//!
//! The queue directory is mode 0711 so that every local user reaches the submission socket
//! (0666) and `offline/`, but lists nothing; `tmp/`, `q/` and `corrupt/` are 0700 and the
//! queue files 0600. `offline/` is 01733 as OpenSMTPD's: anyone may create a file there,
//! nobody but the daemon may list it, and the sticky bit keeps users from removing or
//! renaming each other's files. A setgid `postdrop`-style helper would do the same with a
//! group instead of a world-writable directory, but it means a privileged program to install
//! and keep safe; here the kernel vouches for each file's owner, which the daemon takes as
//! the submitter, and the daemon treats the contents as untrusted input.
//!
//! # One file per message
//!
//! A queue file holds the message, then its envelope (JSON), then a fixed-size trailer that
//! says where the envelope starts:
//!
//! ```text
//! <message: N octets><envelope JSON>\nmailer-queue-file-2 <N as 16 hex digits>\n
//! ```
//!
//! It is written to `tmp/` as the message arrives ([`Spool::create`]; a message that fits in
//! 64 KiB in a single write at the end), completed with the envelope, fsynced, and renamed
//! into `q/`; then `q/` is fsynced ([`Spool::commit`]).
//! Only after that does the client hear `250`: one file fsync per message, and the directory
//! fsync is shared. The rename is the commit: a file in `q/` is complete, and what is left in
//! `tmp/` at start was never acknowledged and is removed. The message comes first so that it
//! can be written as it arrives and the envelope, known in full only at the end, follows it.
//!
//! When an attempt changes the envelope (a recipient delivered, deferred or failed, a hold),
//! the new envelope is written whole to `<id>.env`, fsynced, renamed and made durable the same
//! way; from then on it is the envelope, and the one inside `<id>.msg` is the arrival's. An
//! envelope is therefore always either the old or the new. A `.env` without its `.msg` is the
//! remains of a removal and is deleted at start. A `.msg` whose trailer does not read, with
//! no `.env` beside it, is damage (or an incomplete write of a version before this layout,
//! which kept the envelope only in `.env`): it is set aside, not deleted.
//!
//! A message leaves the queue by unlinking `<id>.msg`, then `<id>.env`, without waiting for
//! the directory to reach the disk: if the machine loses power in the seconds after, the
//! message comes back and its last attempts repeat. A repeated delivery is the failure SMTP
//! prefers to a lost one (RFC 5321 §6.1), and waiting here would cost every message a second
//! synchronous write. The unlinks are journalled in order, so a surviving `.env` never comes
//! back without its `.msg`.
//!
//! Queues written by the previous layout (the message alone in `.msg`, the envelope in
//! `.env`) are read as they are: a `.msg` without a trailer is all message.
//!
//! A file that cannot be read, parsed or removed at start does not stop the daemon: it moves to
//! `corrupt/` with the reason beside it (as Postfix's `corrupt` queue), for the admin.
//!
//! Each file is fsynced by the session that wrote it (concurrent fsyncs share the
//! filesystem's journal commits); the renames into `q/` are made durable by a group commit
//! ([`DirSync`]): one fsync of `q/` covers every rename completed before it started, and it
//! waits a moment (at most half a millisecond) for the commits already on their way, so
//! sessions do not queue up behind one another's: about 1.35 fsyncs per message at 20
//! clients instead of 1.6, and a lone client never waits. No `syncfs(2)`: it would flush every
//! other program's dirty data on the filesystem (the database of the application this
//! relay serves, typically) on the path of every message.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::QueueId;
use crate::address::Address;
use crate::delivery::content::Content;

/// The version an envelope is written with; another is not read.
pub const ENVELOPE_VERSION: u32 = 1;

/// Where a recipient stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientState {
    /// Still to be delivered (never tried, or deferred).
    Pending,
    Delivered,
    /// Failed for good; the sender has been sent a DSN (unless the message was a bounce).
    Failed,
}

/// One recipient of a queued message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: Address,
    /// The action (from the match rules) that delivers it.
    pub action: String,
    pub state: RecipientState,
    pub attempts: u32,
    /// Unix seconds of the next attempt (when pending).
    pub next_attempt: i64,
    pub last_error: Option<String>,
    /// The address the client gave, when aliases turned it into this one (for DSNs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Address>,
}

/// The envelope of a queued message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub id: QueueId,
    /// Unix seconds of arrival.
    pub arrived: i64,
    /// `None` is the null sender: the message is a bounce.
    pub sender: Option<Address>,
    pub recipients: Vec<Recipient>,
    /// Octets of the message in its queue file (without `signatures`).
    pub size: u64,
    /// Header fields our DKIM signing made at admission, complete with their CRLFs: delivered
    /// in front of the stored message. They are known only once the whole message has been
    /// read, after it was written to disk as it arrived.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signatures: String,
    /// Whether the stored message has octets above 127 (it needs 8BITMIME to be relayed),
    /// as intake saw it go by; `None` when not recorded, and delivery reads the file to know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eight_bit_content: Option<bool>,
    pub smtputf8: bool,
    pub eightbit: bool,
    pub helo: String,
    /// The client's address, or `local`.
    pub peer: String,
    #[serde(default)]
    pub held: bool,
    /// A delay notice has been sent to the sender.
    #[serde(default)]
    pub warned: bool,
}

impl Envelope {
    /// Every recipient is delivered or failed: the message can leave the queue.
    pub fn is_done(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| r.state != RecipientState::Pending)
    }

    pub fn arrived_at(&self) -> SystemTime {
        crate::time::from_unix_seconds(self.arrived)
    }
}

/// Shared fsync of one directory: a sync covers every rename completed before it began.
///
/// Under load, several commits are writing and syncing their files while one syncs the
/// directory; each would need a directory sync of its own right after. So a sync about to
/// start waits, for at most [`GATHER`], while other commits are still on their way to it: one
/// directory fsync then covers them all. A lone commit never waits.
struct DirSync {
    dir: PathBuf,
    requested: AtomicU64,
    completed: AtomicU64,
    /// Commits that started and have not taken their ticket yet.
    arriving: AtomicUsize,
    lock: Mutex<()>,
}

/// The longest a directory sync waits for commits on their way: well under the time a sync
/// of the file takes, so a commit never waits more than that again.
const GATHER: std::time::Duration = std::time::Duration::from_micros(500);

impl DirSync {
    fn new(dir: PathBuf) -> DirSync {
        DirSync {
            dir,
            requested: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            arriving: AtomicUsize::new(0),
            lock: Mutex::new(()),
        }
    }

    /// Runs `commit` (which writes, syncs and renames one file), then makes its rename
    /// durable, sharing the directory's fsync with concurrent commits.
    fn commit(&self, commit: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        self.arriving.fetch_add(1, Ordering::SeqCst);
        let done = commit();
        // The ticket is taken after the rename (a sync that began before it must not count
        // it) and before leaving `arriving` (a sync waiting for the batch counts it).
        let mine = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.arriving.fetch_sub(1, Ordering::SeqCst);
        done?;
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.completed.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        let waited = std::time::Instant::now();
        while self.arriving.load(Ordering::SeqCst) > 0 && waited.elapsed() < GATHER {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        let covers = self.requested.load(Ordering::SeqCst);
        File::open(&self.dir)?.sync_all()?;
        self.completed.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

/// What a load found: the envelopes, and the problems it set aside (reported, not fatal).
#[derive(Debug, Default)]
pub struct LoadReport {
    pub envelopes: Vec<Envelope>,
    /// Files that could not be used, with the reason: moved to `corrupt/` by a cleaning load,
    /// left in place by a read-only one.
    pub corrupt: Vec<(PathBuf, String)>,
    /// Incomplete writes removed.
    pub removed_incomplete: usize,
}

/// A file set aside in `corrupt/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupt {
    pub path: PathBuf,
    pub reason: String,
}

const REASON_SUFFIX: &str = ".reason";

/// Where `mailer sendmail` leaves a submission when the daemon does not answer.
pub const OFFLINE_DIR: &str = "offline";
/// The local submission socket.
pub const SUBMIT_SOCKET: &str = "submit.sock";
/// World-writable, sticky, not listable (see the module's documentation).
const OFFLINE_MODE: u32 = 0o1733;
/// Traversable by everyone, listable by the daemon alone.
const ROOT_MODE: u32 = 0o711;

/// The on-disk queue. All methods block: call them off the async runtime's threads.
pub struct Spool {
    root: PathBuf,
    tmp: PathBuf,
    q: PathBuf,
    corrupt: PathBuf,
    q_sync: DirSync,
    tmp_seq: AtomicU64,
}

impl Spool {
    /// Opens (creating) the spool under `root`: `root` mode 0711, `offline/` 01733, the
    /// rest 0700. The modes of `root` and `offline/` are set again if they differ, so an
    /// older queue (all 0700) takes submissions after an upgrade.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let tmp = root.join("tmp");
        let q = root.join("q");
        let corrupt = root.join("corrupt");
        let offline = root.join(OFFLINE_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(ROOT_MODE)
            .create(root)?;
        for dir in [&tmp, &q, &corrupt, &offline] {
            fs::DirBuilder::new().mode(0o700).create(dir).or_else(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        }
        // The umask would take the bits others need.
        for (dir, mode) in [(root, ROOT_MODE), (offline.as_path(), OFFLINE_MODE)] {
            let meta = fs::symlink_metadata(dir)?;
            if !meta.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            if meta.permissions().mode() & 0o7777 != mode {
                fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
            }
        }
        Ok(Spool {
            root: root.to_path_buf(),
            q_sync: DirSync::new(q.clone()),
            tmp,
            q,
            corrupt,
            tmp_seq: AtomicU64::new(0),
        })
    }

    pub fn message_path(&self, id: QueueId) -> PathBuf {
        self.q.join(format!("{id}.msg"))
    }

    fn envelope_path(&self, id: QueueId) -> PathBuf {
        self.q.join(format!("{id}.env"))
    }

    /// Writes `parts` to a new file in `tmp/` and fsyncs it; its path.
    fn write_tmp(&self, id: QueueId, kind: &str, parts: &[&[u8]]) -> io::Result<PathBuf> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{id}.{kind}.{seq}"));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            write_all_vectored(&mut f, parts)?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// Makes a message and its envelope durable: one file, one fsync, and a share of one
    /// directory fsync.
    pub fn store(&self, envelope: &Envelope, message: &[u8]) -> io::Result<()> {
        let mut file = self.create(envelope.id)?;
        file.pending.extend_from_slice(message);
        self.commit(file, envelope)
    }

    /// Starts the queue file of message `id` in `tmp/`, for content written as it arrives.
    /// Nothing in `tmp/` is ever delivered: until [`Spool::commit`], the file is the
    /// session's scratch space, and it is removed when dropped.
    pub fn create(&self, id: QueueId) -> io::Result<QueueFile> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{id}.msg.{seq}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(QueueFile {
            file: Some(file),
            path,
            written: 0,
            pending: Vec::new(),
        })
    }

    /// Completes `file` with `envelope` and makes both durable: the envelope and trailer are
    /// appended, the file fsynced and renamed into `q/`, and `q/` synced (shared). Only then
    /// may the message be acknowledged.
    pub fn commit(&self, mut file: QueueFile, envelope: &Envelope) -> io::Result<()> {
        let json = encode(envelope)?;
        let size = file.len();
        let path = self.message_path(envelope.id);
        let mut renamed = false;
        let result = self.q_sync.commit(|| {
            let pending = std::mem::take(&mut file.pending);
            let f = file
                .file
                .as_mut()
                .expect("an uncommitted queue file is open");
            write_all_vectored(f, &[&pending, &json, &trailer(size)])?;
            f.sync_all()?;
            fs::rename(&file.path, &path)?;
            renamed = true;
            Ok(())
        });
        if renamed {
            // In `q/` now: dropping `file` must not remove anything.
            file.file = None;
            if result.is_err() {
                let _ = fs::remove_file(&path);
            }
        }
        result
    }

    /// The message of `envelope` as the ways out read it: its signatures, then the stored
    /// octets, read from the file as they are sent.
    pub fn open_content(&self, envelope: &Envelope) -> io::Result<Content> {
        use std::os::unix::fs::FileExt;
        let file = File::open(self.message_path(envelope.id))?;
        let file_len = file.metadata()?.len();
        let mut tail = [0u8; TRAILER_LEN];
        let len = match file_len.checked_sub(TRAILER_LEN as u64) {
            Some(at) => {
                file.read_exact_at(&mut tail, at)?;
                parse_trailer(&tail)
                    .filter(|&n| n <= at)
                    .unwrap_or(file_len)
            }
            None => file_len,
        };
        Content::open(
            envelope.signatures.clone().into_bytes(),
            file,
            len,
            envelope.eight_bit_content,
        )
    }

    pub fn update(&self, envelope: &Envelope) -> io::Result<()> {
        let json = encode(envelope)?;
        self.q_sync.commit(|| {
            let tmp = self.write_tmp(envelope.id, "env", &[&json])?;
            fs::rename(&tmp, self.envelope_path(envelope.id)).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
        })
    }

    /// Takes a message out of the queue. Not synced: see the module's documentation.
    pub fn remove(&self, id: QueueId) -> io::Result<()> {
        for path in [self.message_path(id), self.envelope_path(id)] {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The message as it will be delivered (its signatures, then the stored message, without
    /// the envelope stored after it), whole in memory: for `mailer queue show`, not delivery.
    pub fn read_message(&self, id: QueueId) -> io::Result<Vec<u8>> {
        let mut bytes = fs::read(self.message_path(id))?;
        if let Some((size, _)) = split_queue_file(&bytes) {
            bytes.truncate(size);
        }
        // An envelope that does not read is the business of the queue's load, not of a
        // display: the stored message is shown as it is.
        let signatures = self
            .read_envelope(id)
            .map(|env| env.signatures)
            .unwrap_or_default();
        if !signatures.is_empty() {
            bytes.splice(0..0, signatures.into_bytes());
        }
        Ok(bytes)
    }

    /// The envelope as it stands: the last update, or the one stored with the message.
    pub fn read_envelope(&self, id: QueueId) -> io::Result<Envelope> {
        match fs::read(self.envelope_path(id)) {
            Ok(bytes) => decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                stored_envelope(&self.message_path(id))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            }
            Err(e) => Err(e),
        }
    }

    pub fn load(&self, clean: bool) -> io::Result<LoadReport> {
        let mut report = LoadReport::default();
        if clean {
            for entry in fs::read_dir(&self.tmp)? {
                let path = match entry {
                    Ok(entry) => entry.path(),
                    Err(e) => {
                        report
                            .corrupt
                            .push((self.tmp.clone(), format!("cannot list: {e}")));
                        continue;
                    }
                };
                match fs::remove_file(&path) {
                    Ok(()) => report.removed_incomplete += 1,
                    Err(e) => {
                        let reason = format!("leftover temporary file cannot be removed: {e}");
                        self.set_aside(&path, &reason, &mut report);
                    }
                }
            }
        }
        let mut messages = std::collections::HashSet::new();
        let mut envelopes = Vec::new();
        for entry in fs::read_dir(&self.q)? {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) => {
                    report
                        .corrupt
                        .push((self.q.clone(), format!("cannot list: {e}")));
                    continue;
                }
            };
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            match name.rsplit_once('.') {
                Some((id, "msg")) => {
                    if let Some(id) = QueueId::parse(id) {
                        messages.insert(id);
                    }
                }
                Some((id, "env")) => {
                    if let Some(id) = QueueId::parse(id) {
                        envelopes.push((id, path));
                    }
                }
                _ => {}
            }
        }
        for (id, path) in envelopes {
            if !messages.remove(&id) {
                // What a removal left: its message is gone (unlinked first).
                if clean {
                    if let Err(e) = fs::remove_file(&path) {
                        let reason = format!("envelope without a message cannot be removed: {e}");
                        self.set_aside(&path, &reason, &mut report);
                        continue;
                    }
                }
                report.removed_incomplete += 1;
                continue;
            }
            let read = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| decode(&b))
                .map_err(|e| format!("unreadable envelope: {e}"))
                .and_then(|env| matching(env, id));
            match read {
                Ok(env) => report.envelopes.push(env),
                Err(reason) if clean => {
                    // The message goes with its envelope: the admin may repair the pair. The
                    // envelope inside the message is not used instead: it predates attempts
                    // that may have delivered to some recipients already.
                    self.set_aside(&path, &reason, &mut report);
                    self.set_aside(&self.message_path(id), &reason, &mut report);
                }
                Err(reason) => report.corrupt.push((path, reason)),
            }
        }
        for id in messages {
            let path = self.message_path(id);
            match stored_envelope(&path).and_then(|env| matching(env, id)) {
                Ok(env) => report.envelopes.push(env),
                Err(reason) if clean => self.set_aside(&path, &reason, &mut report),
                Err(reason) => report.corrupt.push((path, reason)),
            }
        }
        report.envelopes.sort_by_key(|e| e.id);
        Ok(report)
    }

    /// Moves `path` to `corrupt/` and records where it went (or, if it cannot move, where it
    /// stays) with the reason.
    fn set_aside(&self, path: &Path, reason: &str, report: &mut LoadReport) {
        match self.quarantine(path, reason) {
            Ok(moved) => report.corrupt.push((moved, reason.to_string())),
            Err(e) => report.corrupt.push((
                path.to_path_buf(),
                format!("{reason}; cannot move it to corrupt/: {e}"),
            )),
        }
    }

    /// Renames `path` into `corrupt/` (never over an earlier file of the same name) and writes
    /// the reason beside it. Returns the new path.
    fn quarantine(&self, path: &Path, reason: &str) -> io::Result<PathBuf> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into());
        self.quarantine_as(path, &name, reason)
    }

    /// As [`Spool::quarantine`] under the name `name`, for files from elsewhere in the queue
    /// directory (`offline/`) that must not be delivered: the admin finds them with the
    /// queue's own, in `mailer queue list`. `path` is moved as it is, a symbolic link
    /// included, never followed.
    pub fn quarantine_as(&self, path: &Path, name: &str, reason: &str) -> io::Result<PathBuf> {
        let mut target = self.corrupt.join(name);
        let mut n = 1;
        while fs::symlink_metadata(&target).is_ok() {
            target = self.corrupt.join(format!("{name}.{n}"));
            n += 1;
        }
        fs::rename(path, &target)?;
        let mut why = target.clone().into_os_string();
        why.push(REASON_SUFFIX);
        fs::write(&why, format!("{reason}\n"))?;
        File::open(&self.corrupt).and_then(|d| d.sync_all())?;
        Ok(target)
    }

    /// The files set aside in this spool's `corrupt/`, with their reasons.
    pub fn corrupt(&self) -> io::Result<Vec<Corrupt>> {
        Self::corrupt_in(&self.root)
    }

    /// This spool's `offline/`.
    pub fn offline_dir(&self) -> PathBuf {
        Self::offline_dir_in(&self.root)
    }

    /// `offline/` under the queue directory `root`, for `mailer sendmail`, which must not
    /// open (and so create) the spool.
    pub fn offline_dir_in(root: &Path) -> PathBuf {
        root.join(OFFLINE_DIR)
    }

    /// The submission socket under the queue directory `root`.
    pub fn submit_socket_in(root: &Path) -> PathBuf {
        root.join(SUBMIT_SOCKET)
    }

    /// The files in `corrupt/` under `root`, with their reasons (without opening the spool: a
    /// read-only listing must not create directories).
    pub fn corrupt_in(root: &Path) -> io::Result<Vec<Corrupt>> {
        let dir = root.join("corrupt");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.to_string_lossy().ends_with(REASON_SUFFIX) {
                continue;
            }
            let mut why = path.clone().into_os_string();
            why.push(REASON_SUFFIX);
            let reason = fs::read_to_string(&why)
                .map(|r| r.trim_end().to_string())
                .unwrap_or_else(|_| "no reason recorded".to_string());
            out.push(Corrupt { path, reason });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

/// A queue file being written in `tmp/`: the message as it arrives. Small writes are
/// gathered, so a message that fits in one buffer reaches the disk in the single write of
/// [`Spool::commit`]. Dropped uncommitted, the file is removed.
#[derive(Debug)]
pub struct QueueFile {
    /// `None` once committed.
    file: Option<File>,
    path: PathBuf,
    /// Octets written to the file so far.
    written: u64,
    pending: Vec<u8>,
}

/// Gathered before a write to the file.
const WRITE_BUFFER: usize = 64 * 1024;

impl QueueFile {
    /// Appends message octets. The file is not synced: [`Spool::commit`] does that once.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.pending.len() + bytes.len() <= WRITE_BUFFER {
            self.pending.extend_from_slice(bytes);
            return Ok(());
        }
        let f = self
            .file
            .as_mut()
            .expect("an uncommitted queue file is open");
        write_all_vectored(f, &[&self.pending, bytes])?;
        self.written += (self.pending.len() + bytes.len()) as u64;
        self.pending.clear();
        Ok(())
    }

    /// Octets of message so far.
    pub fn len(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message written so far, read back from the start a chunk at a time (DKIM signing
    /// reads it once whole, after the end of data).
    pub fn read_back(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let file = self
            .file
            .as_ref()
            .expect("an uncommitted queue file is open");
        let mut buf = vec![0u8; WRITE_BUFFER.min(self.written as usize)];
        let mut at = 0u64;
        while at < self.written {
            let n = (self.written - at).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)?;
            f(&buf[..n]);
            at += n as u64;
        }
        f(&self.pending);
        Ok(())
    }
}

impl Drop for QueueFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Starts the fixed-size trailer of a queue file; the message's length follows in hex.
const TRAILER_MAGIC: &[u8] = b"\nmailer-queue-file-2 ";
const TRAILER_LEN: usize = TRAILER_MAGIC.len() + 16 + 1;

fn trailer(message_len: u64) -> Vec<u8> {
    let mut t = Vec::with_capacity(TRAILER_LEN);
    t.extend_from_slice(TRAILER_MAGIC);
    t.extend_from_slice(format!("{message_len:016x}\n").as_bytes());
    t
}

/// The message length a trailer gives; `None` unless `tail` is a well-formed trailer. A
/// message cannot end like one: its lines end in CRLF, and a trailer in a bare LF.
fn parse_trailer(tail: &[u8]) -> Option<u64> {
    let hex = tail.strip_prefix(TRAILER_MAGIC)?.strip_suffix(b"\n")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Where a queue file's message ends (and its envelope starts), and where the envelope ends;
/// `None` for a file without a well-formed trailer: a message in the earlier layout.
fn split_queue_file(bytes: &[u8]) -> Option<(usize, usize)> {
    let json_end = bytes.len().checked_sub(TRAILER_LEN)?;
    let size = usize::try_from(parse_trailer(&bytes[json_end..])?).ok()?;
    (size <= json_end).then_some((size, json_end))
}

/// The envelope stored with a message at its arrival. Reads the trailer and the envelope
/// only, not the message: a start with a deep queue of large messages reads little.
fn stored_envelope(path: &Path) -> Result<Envelope, String> {
    use std::os::unix::fs::FileExt;
    let unreadable = |e: io::Error| format!("unreadable message: {e}");
    let file = File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    let missing = "a message without an envelope (no queue file trailer)";
    let mut tail = [0u8; TRAILER_LEN];
    let tail_at = len.checked_sub(TRAILER_LEN as u64).ok_or(missing)?;
    file.read_exact_at(&mut tail, tail_at).map_err(unreadable)?;
    let size = parse_trailer(&tail)
        .filter(|&size| size <= tail_at)
        .ok_or(missing)?;
    let json_len = usize::try_from(tail_at - size).map_err(|_| missing)?;
    if json_len > MAX_ENVELOPE {
        return Err(format!(
            "an envelope of {json_len} octets is past any this daemon writes"
        ));
    }
    let mut json = vec![0u8; json_len];
    file.read_exact_at(&mut json, size).map_err(unreadable)?;
    let env = decode(&json).map_err(|e| format!("unreadable envelope: {e}"))?;
    if env.size != size {
        return Err(format!(
            "the envelope gives {} octets of message, the file holds {size}",
            env.size
        ));
    }
    Ok(env)
}

/// Far above the envelope of the most recipients a session accepts, and small enough that a
/// damaged trailer cannot make the start allocate the whole file.
const MAX_ENVELOPE: usize = 64 << 20;

fn matching(env: Envelope, id: QueueId) -> Result<Envelope, String> {
    if env.id == id {
        Ok(env)
    } else {
        Err("envelope id does not match its file name".to_string())
    }
}

/// Writes every part, in as few system calls as the kernel allows.
fn write_all_vectored(f: &mut File, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| io::IoSlice::new(p))
        .collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match f.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn encode(envelope: &Envelope) -> io::Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(envelope)?;
    v.push(b'\n');
    Ok(v)
}

fn decode(bytes: &[u8]) -> Result<Envelope, String> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if env.version != ENVELOPE_VERSION {
        return Err(format!("unsupported envelope version {}", env.version));
    }
    Ok(env)
}
