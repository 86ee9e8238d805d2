//! The pickup of `<queue_dir>/offline/`: messages `mailer sendmail` kept while the daemon was
//! not answering. At start and then every second the directory is read; each complete file
//! is received as if its owner had submitted it over the submission socket (the same
//! session, rules and Received header, see [`mailer_core::intake::offline`]), queued
//! through the engine like any SMTP message, and only then removed. A file intake refuses
//! is moved to the queue's `corrupt/` with the reason, logged, and listed by
//! `mailer queue list`; nothing is ever dropped silently.
//!
//! A crash after the message is queued and before its file is removed delivers it twice:
//! the same window as SMTP's between the fsync and the client reading `250`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailer_core::intake::offline::{self, FileFacts};
use mailer_core::intake::{Peer, RecipientPolicy, Submitter};
use tokio::sync::watch;

use crate::engine::Engine;
use crate::smtp::Intake;

/// How often the directory is read while nothing goes wrong.
const POLL: Duration = Duration::from_secs(1);
/// The longest pause after the queue refused a message (a full disk, say).
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// Picks up files until shutdown. `intake` follows reloads, as the submission socket does.
pub async fn run(
    engine: Arc<Engine>,
    intake: watch::Receiver<Arc<Intake>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pickup = Pickup {
        dir: engine.spool().offline_dir(),
        engine,
        intake,
        stuck: HashSet::new(),
        listing_error: None,
    };
    let mut pause = POLL;
    loop {
        pause = match pickup.scan().await {
            Ok(()) => POLL,
            Err(()) => (pause * 2).min(MAX_PAUSE),
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}

struct Pickup {
    dir: PathBuf,
    engine: Arc<Engine>,
    intake: watch::Receiver<Arc<Intake>>,
    /// Files already handled that could not be removed or moved aside: reported once, then
    /// left alone until the next start, so a message is not queued again every second.
    stuck: HashSet<OsString>,
    /// The last failure to read the directory, so that it is logged once, not every second.
    listing_error: Option<String>,
}

/// What reading a file found.
enum Found {
    /// Removed by its owner meanwhile.
    Gone,
    Refused {
        reason: String,
        owner: Option<u32>,
    },
    Ready {
        bytes: Vec<u8>,
        owner: u32,
    },
}

impl Pickup {
    /// One pass over the directory. `Err` when the queue refused a message: the pass stops
    /// and the next waits longer.
    async fn scan(&mut self) -> Result<(), ()> {
        let dir = self.dir.clone();
        let listed = tokio::task::spawn_blocking(move || list(&dir, SystemTime::now())).await;
        let names = match listed {
            Ok(Ok(names)) => {
                self.listing_error = None;
                names
            }
            Ok(Err(e)) => {
                let e = e.to_string();
                if self.listing_error.as_ref() != Some(&e) {
                    tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the offline submissions");
                    self.listing_error = Some(e);
                }
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
        for name in names {
            if self.stuck.contains(&name) {
                continue;
            }
            self.pick_up(name).await?;
        }
        Ok(())
    }

    async fn pick_up(&mut self, name: OsString) -> Result<(), ()> {
        let path = self.dir.join(&name);
        let intake = self.intake.borrow().clone();
        let limit = offline::max_file_size(
            intake.session.max_message_size as u64,
            intake.session.max_recipients,
        );
        let read_path = path.clone();
        let found = tokio::task::spawn_blocking(move || read(&read_path, limit))
            .await
            .unwrap_or(Found::Gone);
        let (bytes, owner) = match found {
            Found::Gone => return Ok(()),
            Found::Refused { reason, owner } => {
                let who = match owner {
                    Some(uid) => describe(&crate::smtp::submitter(uid).await),
                    None => "an unknown user".to_string(),
                };
                self.set_aside(
                    name,
                    &format!("offline submission from {who} refused: {reason}"),
                )
                .await;
                return Ok(());
            }
            Found::Ready { bytes, owner } => (bytes, owner),
        };
        let submitter = crate::smtp::submitter(owner).await;
        let who = describe(&submitter);
        let dropped = match offline::parse(&bytes) {
            Ok(d) => d,
            Err(e) => {
                self.set_aside(name, &format!("offline submission from {who} refused: {e}"))
                    .await;
                return Ok(());
            }
        };
        let peer = Peer {
            addr: None,
            submitter: Some(submitter),
        };
        let policy: Arc<dyn RecipientPolicy> = intake.router.clone();
        let received = offline::receive(
            &dropped,
            peer,
            intake.session.clone(),
            policy,
            SystemTime::now(),
        );
        let (incoming, refused) = match received {
            offline::Pickup::Queue { incoming, refused } => (incoming, refused),
            offline::Pickup::Refuse(why) => {
                self.engine.metrics().rejected("offline");
                self.set_aside(
                    name,
                    &format!("offline submission from {who} refused: {why}"),
                )
                .await;
                return Ok(());
            }
        };
        let recipients = incoming.recipients.len();
        let id = match self.engine.accept(*incoming, None).await {
            Ok(id) => id,
            Err(e) => {
                // Left in place for the next pass; the engine has logged the cause.
                tracing::warn!(file = %path.display(), error = %e, "offline submission not queued yet; will retry");
                return Err(());
            }
        };
        tracing::info!(queue_id = %id, file = %path.display(), submitter = %who, recipients, "offline submission picked up");
        if refused.is_empty() {
            let dir = self.dir.clone();
            let removed = tokio::task::spawn_blocking(move || remove(&dir, &path)).await;
            if let Ok(Err(e)) | Err(e) = removed.map_err(io::Error::other) {
                tracing::error!(queue_id = %id, file = %self.dir.join(&name).display(), error = %e,
                    "offline submission queued but cannot be removed: remove it, or it is delivered again at the next start");
                self.stuck.insert(name);
            }
        } else {
            self.engine.metrics().rejected("offline");
            let reason = format!(
                "offline submission from {who} queued as {id} for {recipients} recipient(s); NOT for {}",
                refused.join("; ")
            );
            self.set_aside(name, &reason).await;
        }
        Ok(())
    }

    /// Moves a file to `corrupt/` as `offline-NAME` with `reason`, and says so once.
    async fn set_aside(&mut self, name: OsString, reason: &str) {
        let spool = self.engine.spool().clone();
        let path = self.dir.join(&name);
        let target = format!("offline-{}", name.to_string_lossy());
        let why = reason.to_string();
        let moved = tokio::task::spawn_blocking(move || spool.quarantine_as(&path, &target, &why))
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
        match moved {
            Ok(moved) => tracing::error!(
                file = %moved.display(),
                %reason,
                "offline submission set aside; see `mailer queue list`"
            ),
            Err(e) => {
                tracing::error!(
                    file = %self.dir.join(&name).display(),
                    %reason,
                    error = %e,
                    "offline submission cannot be set aside; left in place and ignored until the next start"
                );
                self.stuck.insert(name);
            }
        }
    }
}

/// `userid 1000 (alice)`, for reasons and logs.
fn describe(submitter: &Submitter) -> String {
    match &submitter.login {
        Some(login) => format!("userid {} ({login})", submitter.uid),
        None => format!("userid {}", submitter.uid),
    }
}

/// The complete files in `dir`, oldest first; temporary files older than
/// [`offline::STALE_AFTER`] (writers that died) are removed on the way.
fn list(dir: &Path, now: SystemTime) -> io::Result<Vec<OsString>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        // Not following links: the time and kind of what is in the directory itself.
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        if offline::is_temporary(&name.to_string_lossy()) {
            if modified.is_some_and(|m| offline::is_stale(m, now)) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(file = %entry.path().display(), "removed a stale offline temporary file")
                    }
                    Err(e) => {
                        tracing::debug!(file = %entry.path().display(), error = %e, "cannot remove a stale temporary file")
                    }
                }
            }
            continue;
        }
        files.push((modified, name));
    }
    files.sort();
    Ok(files.into_iter().map(|(_, name)| name).collect())
}

/// Opens a file as its owner left it: never through a symbolic link, never blocking on a
/// FIFO, and judged by what the descriptor is, not by the name.
fn read(path: &Path, limit: u64) -> Found {
    let owner = || fs::symlink_metadata(path).ok().map(|m| m.uid());
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Found::Gone,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Found::Refused {
                reason: "a symbolic link".into(),
                owner: owner(),
            }
        }
        Err(e) => {
            return Found::Refused {
                reason: format!("cannot be opened: {e}"),
                owner: owner(),
            }
        }
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => {
            return Found::Refused {
                reason: format!("cannot be examined: {e}"),
                owner: owner(),
            }
        }
    };
    let facts = FileFacts {
        regular: meta.file_type().is_file(),
        links: meta.nlink(),
        size: meta.len(),
    };
    if let Err(reason) = offline::check_file(facts, limit) {
        return Found::Refused {
            reason,
            owner: Some(meta.uid()),
        };
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // Its owner may still be writing to it: never read past the limit.
    if let Err(e) = file.take(limit + 1).read_to_end(&mut bytes) {
        return Found::Refused {
            reason: format!("cannot be read: {e}"),
            owner: Some(meta.uid()),
        };
    }
    if bytes.len() as u64 > limit {
        return Found::Refused {
            reason: format!("grew past the {limit} octets a submission may have"),
            owner: Some(meta.uid()),
        };
    }
    Found::Ready {
        bytes,
        owner: meta.uid(),
    }
}

/// Removes a picked-up file durably: once queued, it must not come back after a crash.
fn remove(dir: &Path, path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    File::open(dir)?.sync_all()
}
