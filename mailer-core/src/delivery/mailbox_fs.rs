//! Mailbox files and directories, reached one directory descriptor at a time, so that nobody
//! who can write somewhere along the path can redirect a delivery that runs as root: a
//! symbolic link is followed only when root made it in a directory only root can change
//! (Debian's `/var/spool/mail -> ../mail`), and a mailbox must be a plain file or directory
//! with one link, owned by its user. Whatever fails a check is a temporary failure whose
//! reason names the path, what is wrong and the command that fixes it.
//!
//! Built on rustix rather than libc: its calls take and return owned descriptors and typed
//! errors, so the walk needs no `unsafe`; the crate is in the build already (tempfile,
//! gethostname).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{
    fchmod, fchown, fstat, fsync, mkdirat, openat, readlinkat, statat, unlinkat, AtFlags, FileType,
    Gid, Mode, OFlags, Uid, CWD,
};
use rustix::io::Errno;

use crate::delivery::{EnhancedStatus, Failure, FailureKind};
use crate::tables::users::group_name;

/// Symbolic links followed on one path before giving up: a loop, or a maze nobody meant.
pub const MAX_SYMLINK_HOPS: usize = 8;
/// Times a name may vanish between our looking and our creating it before we give up
/// rather than spin against someone who keeps changing it.
const RACE_RETRIES: usize = 3;

/// The account a mailbox belongs to, given when this process may hand files over (root, or
/// CAP_CHOWN as the systemd unit grants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxOwner {
    /// The login name, for messages and fix commands.
    pub user: String,
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
    /// The group `mail`, if the system has one: mboxes are shared with it as Debian's MUAs
    /// expect, and a daemon that is not root keeps access to maildirs through it.
    pub mail_gid: Option<u32>,
}

/// How a file or directory this process creates is set up. The mode is set explicitly: the
/// systemd unit's `UMask=0077` would take the group bits off any mode given at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Make {
    /// `(uid, gid)` to hand it to; `None`: it stays ours.
    pub(crate) owner: Option<(u32, u32)>,
    pub(crate) mode: u32,
}

/// What mailboxes of one kind must look like, and how their missing parts are made.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    /// The owner existing mailbox files and directories must have.
    uid: u32,
    /// Their login name; `None` when that owner is this process.
    user: Option<String>,
    pub(crate) dir: Make,
    pub(crate) file: Make,
}

impl Rules {
    /// An mbox is `<user>:mail 0660`, as Debian's `mail` and MUAs expect.
    pub(crate) fn mbox(owner: Option<&MailboxOwner>) -> Rules {
        let Some(o) = owner else {
            return Rules::own();
        };
        Rules {
            file: Make {
                owner: Some((o.uid, o.mail_gid.unwrap_or(o.gid))),
                mode: 0o660,
            },
            ..Rules::maildir(owner)
        }
    }

    /// A maildir written by root is private to its user; a daemon that is not root gives it
    /// to `<user>:mail` (directories setgid) so that it can still write the next message.
    pub(crate) fn maildir(owner: Option<&MailboxOwner>) -> Rules {
        let Some(o) = owner else {
            return Rules::own();
        };
        let (group, dir_mode, file_mode) = if is_root() {
            (o.gid, 0o700, 0o600)
        } else {
            (o.mail_gid.unwrap_or(o.gid), 0o2770, 0o660)
        };
        Rules {
            uid: o.uid,
            user: Some(o.user.clone()),
            dir: Make {
                owner: Some((o.uid, group)),
                mode: dir_mode,
            },
            file: Make {
                owner: Some((o.uid, group)),
                mode: file_mode,
            },
        }
    }

    /// Without the right to give files away, everything is this process's and private.
    fn own() -> Rules {
        Rules {
            uid: euid(),
            user: None,
            dir: Make {
                owner: None,
                mode: 0o700,
            },
            file: Make {
                owner: None,
                mode: 0o600,
            },
        }
    }

    /// `alice (1000)`, or `uid 998 (this daemon)`.
    fn expected(&self) -> String {
        match &self.user {
            Some(user) => format!("{user} ({})", self.uid),
            None => format!("uid {} (this daemon)", self.uid),
        }
    }

    /// The commands that give `path` the owner and mode it would have been created with.
    fn fix(&self, path: &Path, make: Make) -> String {
        let who = match (make.owner, &self.user) {
            (Some((_, gid)), Some(user)) => format!("{user}:{}", group_label(gid)),
            _ => self.uid.to_string(),
        };
        let p = path.display();
        format!("chown {who} {p} && chmod {:04o} {p}", make.mode)
    }
}

/// An open directory and the path it was reached by, for messages.
pub(crate) struct Dir {
    fd: OwnedFd,
    pub(crate) path: PathBuf,
}

impl Dir {
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

/// Opens the directory `path` (relative paths from the working directory), component by
/// component without following symbolic links except trusted ones (see [`trusted_link`]),
/// and creates missing directories as `rules.dir` says.
pub(crate) fn walk(path: &Path, rules: &Rules) -> Result<Dir, Failure> {
    let start = |absolute: bool| -> Result<Dir, Failure> {
        let (from, shown) = if absolute { ("/", "/") } else { (".", "") };
        let fd = openat(
            CWD,
            from,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_failure(Path::new(from), "cannot open directory", &e.into()))?;
        Ok(Dir {
            fd,
            path: PathBuf::from(shown),
        })
    };
    let mut dir = start(path.is_absolute())?;
    let mut pending = names(path);
    let (mut hops, mut races) = (0, 0);
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            // From a descriptor, `..` is the real parent, as a path through a link means.
            dir.fd = openat(
                &dir.fd,
                "..",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_failure(&dir.path, "cannot open its parent", &e.into()))?;
            dir.path.pop();
            continue;
        }
        let here = dir.path.join(&name);
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match openat(&dir.fd, &name, flags, Mode::empty()) {
            Ok(fd) => dir = Dir { fd, path: here },
            Err(Errno::NOENT) => match make_dir(&dir, &name, here.clone(), rules)? {
                Some(made) => dir = made,
                // Made by someone else meanwhile: open theirs, unless it keeps changing.
                None if races < RACE_RETRIES => {
                    races += 1;
                    pending.push_front(name);
                }
                None => return Err(keeps_changing(&here)),
            },
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let st = statat(&dir.fd, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_failure(&here, "cannot stat", &e.into()))?;
                let kind = FileType::from_raw_mode(st.st_mode);
                if kind != FileType::Symlink {
                    return Err(refuse(
                        &here,
                        &format!("{}, not a directory", describe(kind)),
                        &format!("move it away (mv {0} {0}.old)", here.display()),
                    ));
                }
                trusted_link(&dir, st.st_uid, &here)?;
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(refuse(
                        &here,
                        &format!("more than {MAX_SYMLINK_HOPS} symbolic links on the way"),
                        "name the mailbox by its real path",
                    ));
                }
                let target = readlinkat(&dir.fd, &name, Vec::new())
                    .map_err(|e| io_failure(&here, "cannot read link", &e.into()))?;
                let target = PathBuf::from(OsStr::from_bytes(target.to_bytes()));
                if target.is_absolute() {
                    dir = start(true)?;
                }
                for n in names(&target).into_iter().rev() {
                    pending.push_front(n);
                }
            }
            // O_PATH needs nothing of the component itself: the directory is at fault.
            Err(Errno::ACCESS) => return Err(unreachable_dir(&dir.path, Errno::ACCESS, "search")),
            Err(e) => return Err(io_failure(&here, "cannot open directory", &e.into())),
        }
    }
    Ok(dir)
}

/// The names to walk through, `..` included, without the root and `.`.
fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// A link is followed only if root made it in a directory nobody else can change: then it
/// says where the administrator keeps mail. Anyone else's link could point anywhere.
fn trusted_link(dir: &Dir, link_uid: u32, here: &Path) -> Result<(), Failure> {
    let st = fstat(&dir.fd).map_err(|e| io_failure(&dir.path, "cannot stat", &e.into()))?;
    let others_can_replace = st.st_mode & 0o002 != 0 && st.st_mode & 0o1000 == 0;
    if link_uid == 0 && st.st_uid == 0 && !others_can_replace {
        return Ok(());
    }
    let why = if link_uid != 0 {
        format!("is a symbolic link owned by uid {link_uid}")
    } else {
        format!(
            "is a symbolic link in {}, which uid {} owns with mode {:04o}",
            dir.path.display(),
            st.st_uid,
            st.st_mode & 0o7777
        )
    };
    Err(refuse(
        here,
        &format!("{why}; only links root made in a directory only root can change are followed"),
        "replace the link with the directory itself, or name the real path in the mailbox setting",
    ))
}

/// Creates `name` in `parent` as `rules.dir` says. `None`: it appeared meanwhile.
fn make_dir(
    parent: &Dir,
    name: &OsStr,
    here: PathBuf,
    rules: &Rules,
) -> Result<Option<Dir>, Failure> {
    match mkdirat(&parent.fd, name, Mode::RWXU) {
        Ok(()) => {}
        Err(Errno::EXIST) => return Ok(None),
        Err(e @ (Errno::ACCESS | Errno::ROFS)) => {
            return Err(unreachable_dir(&parent.path, e, "create directories in"))
        }
        Err(e) => return Err(io_failure(&here, "cannot create directory", &e.into())),
    }
    let opened = openat(
        &parent.fd,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(e) => {
            return Err(io_failure(
                &here,
                "cannot open the directory just created",
                &e.into(),
            ))
        }
    };
    if let Err(e) = set_up(&fd, rules.dir) {
        // Left half made, it would fail every later owner check.
        let _ = unlinkat(&parent.fd, name, AtFlags::REMOVEDIR);
        return Err(setup_failure(&here, &e, rules.dir, rules));
    }
    Ok(Some(Dir { fd, path: here }))
}

/// Opens (or creates) a directory of a maildir: it must be a real directory, not a link of
/// any kind, owned by the mailbox's owner. `shown` is its path for messages.
pub(crate) fn owned_dir(
    parent: &Dir,
    name: &OsStr,
    shown: PathBuf,
    rules: &Rules,
) -> Result<Dir, Failure> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for _ in 0..RACE_RETRIES {
        let fd = match openat(&parent.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => match make_dir(parent, name, shown.clone(), rules)? {
                Some(made) => return Ok(made),
                None => continue,
            },
            Err(e) => {
                let fix = rules.fix(&shown, rules.dir);
                return Err(open_error(parent, name, &shown, e, true, &fix));
            }
        };
        let st = fstat(&fd).map_err(|e| io_failure(&shown, "cannot stat", &e.into()))?;
        if st.st_uid != rules.uid {
            return Err(wrong_owner(&shown, st.st_uid, rules, rules.dir));
        }
        return Ok(Dir { fd, path: shown });
    }
    Err(keeps_changing(&shown))
}

/// Opens the mbox `name` in `dir` for appending, or creates it as `rules.file` says; then
/// checks it is a regular file with one link, owned as `rules` expects. `shown` is its path
/// for messages. Returns whether it was created.
pub(crate) fn open_mbox(
    dir: &Dir,
    name: &OsStr,
    shown: &Path,
    rules: &Rules,
) -> Result<(File, bool), Failure> {
    // O_NONBLOCK: a FIFO planted at the path must not hang the delivery.
    let flags =
        OFlags::WRONLY | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fix = || rules.fix(shown, rules.file);
    for _ in 0..RACE_RETRIES {
        let (fd, created) = match openat(&dir.fd, name, flags, Mode::empty()) {
            Ok(fd) => (fd, false),
            Err(Errno::NOENT) => match create_new(dir, name, flags) {
                Ok(fd) => {
                    set_up_file(&fd, dir, name, shown, rules)?;
                    (fd, true)
                }
                Err(Errno::EXIST) => continue,
                Err(e @ (Errno::ACCESS | Errno::ROFS)) => return Err(cannot_create_in(dir, e)),
                Err(e) => return Err(io_failure(shown, "cannot create", &e.into())),
            },
            Err(e) => return Err(open_error(dir, name, shown, e, false, &fix())),
        };
        check_file(&fd, shown, rules)?;
        return Ok((File::from(fd), created));
    }
    Err(keeps_changing(shown))
}

/// Creates `name` in `dir` exclusively, never through a link; mode 0600 until set up.
pub(crate) fn create_new(dir: &Dir, name: &OsStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    let flags =
        flags | OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    openat(&dir.fd, name, flags, Mode::RUSR | Mode::WUSR)
}

/// Gives a file just created as `name` in `dir` the mode and owner `rules.file` says; on
/// failure removes it, so that the next attempt starts afresh.
pub(crate) fn set_up_file(
    fd: &OwnedFd,
    dir: &Dir,
    name: &OsStr,
    shown: &Path,
    rules: &Rules,
) -> Result<(), Failure> {
    set_up(fd, rules.file).map_err(|e| {
        let _ = unlinkat(&dir.fd, name, AtFlags::empty());
        setup_failure(shown, &e, rules.file, rules)
    })
}

/// The mode first: once the file is given away, only root could still change it.
fn set_up(fd: &OwnedFd, make: Make) -> io::Result<()> {
    fchmod(fd, Mode::from_raw_mode(make.mode))?;
    if let Some((uid, gid)) = make.owner {
        fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    }
    Ok(())
}

fn check_file(fd: &OwnedFd, shown: &Path, rules: &Rules) -> Result<(), Failure> {
    let st = fstat(fd).map_err(|e| io_failure(shown, "cannot stat", &e.into()))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(not_a_file(shown, kind));
    }
    if st.st_nlink != 1 {
        let p = shown.display();
        return Err(refuse(
            shown,
            &format!(
                "has {} hard links, so it may be another file too",
                st.st_nlink
            ),
            &format!("give it a file of its own: cp -p {p} {p}.new && mv {p}.new {p}"),
        ));
    }
    if st.st_uid != rules.uid {
        return Err(wrong_owner(shown, st.st_uid, rules, rules.file));
    }
    Ok(())
}

/// Why opening `name` failed, told from what is there when it is not what was wanted.
/// What is there decides first: a FIFO the daemon may not open is refused as a FIFO. Then
/// EACCES is either `dir`, if it cannot be searched, or the mailbox itself (fixed by `fix`).
fn open_error(
    dir: &Dir,
    name: &OsStr,
    shown: &Path,
    err: Errno,
    want_dir: bool,
    fix: &str,
) -> Failure {
    let found = statat(&dir.fd, name, AtFlags::SYMLINK_NOFOLLOW);
    if let Err(Errno::ACCESS) = found {
        return unreachable_dir(&dir.path, Errno::ACCESS, "search");
    }
    if let Ok(st) = found {
        let kind = FileType::from_raw_mode(st.st_mode);
        let wanted = if want_dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        };
        if kind != wanted {
            if want_dir {
                return refuse(
                    shown,
                    &format!("{}, not a directory", describe(kind)),
                    &format!(
                        "replace it with a directory owned by the user (mv {0} {0}.old)",
                        shown.display()
                    ),
                );
            }
            return not_a_file(shown, kind);
        }
    }
    if err != Errno::ACCESS {
        return io_failure(shown, "cannot open", &err.into());
    }
    Failure::temporary(
        FailureKind::Local,
        EnhancedStatus(4, 2, 0),
        format!(
            "{}: {}: the daemon ({}) cannot open it; fix: {fix}",
            shown.display(),
            io::Error::from(err),
            identity()
        ),
    )
}

fn not_a_file(shown: &Path, kind: FileType) -> Failure {
    let p = shown.display();
    let fix = match kind {
        FileType::Directory => format!("move it away (mv {p} {p}.old), or deliver to a maildir"),
        _ => format!("remove it (rm {p}); the next delivery creates the mailbox"),
    };
    refuse(
        shown,
        &format!("{}, not a regular file", describe(kind)),
        &fix,
    )
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Symlink => "is a symbolic link",
        FileType::Directory => "is a directory",
        FileType::Fifo => "is a FIFO",
        FileType::Socket => "is a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "is a device",
        FileType::RegularFile => "is a regular file",
        _ => "is of an unknown kind",
    }
}

fn wrong_owner(shown: &Path, uid: u32, rules: &Rules, make: Make) -> Failure {
    refuse(
        shown,
        &format!("owned by uid {uid}, not {}", rules.expected()),
        &rules.fix(shown, make),
    )
}

/// Flushes the directory entries of `dir` to disk.
pub(crate) fn sync_dir(dir: &Dir) -> io::Result<()> {
    let fd = openat(
        &dir.fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(fsync(fd)?)
}

/// When `name` in `dir` was last modified, never through a link.
pub(crate) fn modified_at(dir: &Dir, name: &OsStr) -> io::Result<SystemTime> {
    let fd = openat(
        &dir.fd,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    File::from(fd).metadata()?.modified()
}

/// The first `max` bytes of the regular file `name` in `dir`, never through a link and never
/// waiting on a FIFO.
pub(crate) fn read_head(dir: &Dir, name: &OsStr, max: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let fd = openat(
        &dir.fd,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut head = Vec::with_capacity(max);
    file.take(max as u64).read_to_end(&mut head)?;
    Ok(head)
}

pub(crate) fn remove(dir: &Dir, name: &OsStr) -> io::Result<()> {
    Ok(unlinkat(&dir.fd, name, AtFlags::empty())?)
}

fn keeps_changing(path: &Path) -> Failure {
    let err = io::Error::other("it keeps appearing and vanishing");
    io_failure(path, "cannot open", &err)
}

/// A refusal to write: the path, what is wrong with it, and the fix.
fn refuse(path: &Path, problem: &str, fix: &str) -> Failure {
    Failure::temporary(
        FailureKind::Local,
        EnhancedStatus(4, 2, 0),
        format!(
            "{}: {problem}: refusing to write; fix: {fix}",
            path.display()
        ),
    )
}

/// `dir` does not let the daemon create a file (a dotlock, a mailbox).
pub(crate) fn cannot_create_in(dir: &Dir, err: Errno) -> Failure {
    unreachable_dir(&dir.path, err, "create files in")
}

/// A directory on the way that the daemon cannot `verb`: search, or create entries in.
fn unreachable_dir(path: &Path, err: Errno, verb: &str) -> Failure {
    let home = ["/home", "/root", "/run/user"]
        .iter()
        .any(|h| path.starts_with(h));
    let note = if home {
        " (under the systemd unit, ProtectHome= keeps the daemon out of home directories: \
         deliver under /var/mail instead, e.g. a maildir at /var/mail/%u/)"
    } else {
        ""
    };
    Failure::temporary(
        FailureKind::Local,
        EnhancedStatus(4, 3, 0),
        format!(
            "{}: {}: the daemon ({}) cannot {verb} it; fix: give the daemon's user or one of its \
             groups access to it, or choose a mailbox path the daemon can reach{note}",
            if path.as_os_str().is_empty() {
                Path::new(".")
            } else {
                path
            }
            .display(),
            io::Error::from(err),
            identity()
        ),
    )
}

fn setup_failure(path: &Path, err: &io::Error, make: Make, rules: &Rules) -> Failure {
    if err.raw_os_error() != Some(libc::EPERM) {
        return io_failure(path, "cannot set its owner and mode", err);
    }
    Failure::temporary(
        FailureKind::Local,
        EnhancedStatus(4, 3, 0),
        format!(
            "{}: cannot give it to its user: {err}: the daemon ({}) may not change owners; \
             fix: run it as root or with CAP_CHOWN (AmbientCapabilities=CAP_CHOWN in the \
             unit), or create it yourself: {}",
            path.display(),
            identity(),
            rules.fix(path, make)
        ),
    )
}

/// `uid 998, groups mailer, mail`: who was refused, for an administrator to compare with the
/// file's owner and mode.
fn identity() -> String {
    // SAFETY: getegid has no preconditions and cannot fail.
    let mut gids = vec![unsafe { libc::getegid() }];
    // SAFETY: with size 0, getgroups only counts the groups.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if let Ok(n) = usize::try_from(n) {
        let mut more = vec![0 as libc::gid_t; n];
        // SAFETY: `more` has room for the `n` groups asked for.
        let got = unsafe { libc::getgroups(n as libc::c_int, more.as_mut_ptr()) };
        more.truncate(usize::try_from(got).unwrap_or(0));
        gids.extend(more);
    }
    let mut seen = Vec::new();
    for gid in gids {
        let label = group_label(gid);
        if !seen.contains(&label) {
            seen.push(label);
        }
    }
    format!("uid {}, groups {}", euid(), seen.join(", "))
}

fn group_label(gid: u32) -> String {
    group_name(gid).unwrap_or_else(|| gid.to_string())
}

pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub(crate) fn is_root() -> bool {
    euid() == 0
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn alice(mail_gid: Option<u32>) -> MailboxOwner {
        MailboxOwner {
            user: "alice".into(),
            uid: 1000,
            gid: 1001,
            mail_gid,
        }
    }

    #[test]
    fn names_keep_parent_steps_and_drop_the_root_and_dots() {
        let got: Vec<OsString> = names(Path::new("/var/spool/./mail/../mail//x/")).into();
        let want: Vec<OsString> = ["var", "spool", "mail", "..", "mail", "x"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn without_an_owner_everything_is_this_process_and_private() {
        for rules in [Rules::mbox(None), Rules::maildir(None)] {
            assert_eq!(rules.uid, euid());
            assert_eq!(
                rules.dir,
                Make {
                    owner: None,
                    mode: 0o700
                }
            );
            assert_eq!(
                rules.file,
                Make {
                    owner: None,
                    mode: 0o600
                }
            );
        }
    }

    #[test]
    fn an_mbox_is_shared_with_group_mail_or_else_the_users_group() {
        let rules = Rules::mbox(Some(&alice(Some(8))));
        assert_eq!(rules.uid, 1000);
        assert_eq!(
            rules.file,
            Make {
                owner: Some((1000, 8)),
                mode: 0o660
            }
        );
        let rules = Rules::mbox(Some(&alice(None)));
        assert_eq!(rules.file.owner, Some((1000, 1001)));
    }

    #[test]
    fn a_maildir_is_private_as_root_and_shared_with_mail_otherwise() {
        let rules = Rules::maildir(Some(&alice(Some(8))));
        let (owner, dir, file) = if is_root() {
            ((1000, 1001), 0o700, 0o600)
        } else {
            ((1000, 8), 0o2770, 0o660)
        };
        assert_eq!(
            (rules.dir, rules.file),
            (
                Make {
                    owner: Some(owner),
                    mode: dir
                },
                Make {
                    owner: Some(owner),
                    mode: file
                }
            )
        );
    }

    #[test]
    fn the_fix_names_user_group_and_mode() {
        // A group id no system has: shown as a number.
        let rules = Rules::mbox(Some(&alice(Some(3_999_999_999))));
        let path = Path::new("/var/mail/alice");
        assert_eq!(
            rules.fix(path, rules.file),
            "chown alice:3999999999 /var/mail/alice && chmod 0660 /var/mail/alice"
        );
        assert_eq!(rules.expected(), "alice (1000)");
        let own = Rules::mbox(None);
        assert_eq!(
            own.fix(path, own.file),
            format!(
                "chown {} /var/mail/alice && chmod 0600 /var/mail/alice",
                euid()
            )
        );
    }

    #[test]
    fn a_symlink_loop_is_cut_off_or_refused_and_nothing_is_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("b", dir.path().join("a")).expect("symlink");
        std::os::unix::fs::symlink("a", dir.path().join("b")).expect("symlink");
        let Err(failure) = walk(&dir.path().join("a/x"), &Rules::mbox(None)) else {
            panic!("a loop cannot be walked");
        };
        assert!(!failure.permanent);
        // Root's links in root's private directory are trusted, so only the hop limit stops
        // the walk; anyone else's links are refused at once.
        let why = if is_root() {
            format!("more than {MAX_SYMLINK_HOPS} symbolic links on the way")
        } else {
            format!("is a symbolic link owned by uid {}", euid())
        };
        assert!(failure.reason.contains(&why), "{}", failure.reason);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        left.sort();
        assert_eq!(left, [OsString::from("a"), OsString::from("b")]);
    }

    #[test]
    fn missing_directories_get_the_mode_asked_for_whatever_the_umask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = Rules {
            dir: Make {
                owner: None,
                mode: 0o750,
            },
            ..Rules::mbox(None)
        };
        let made = walk(&dir.path().join("a/b"), &rules).expect("walked");
        assert_eq!(made.path, dir.path().join("a/b"));
        for d in ["a", "a/b"] {
            let mode = std::fs::metadata(dir.path().join(d))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o750, "{d}");
        }
    }

    #[test]
    fn a_file_where_a_directory_should_be_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), b"").expect("write");
        let Err(failure) = walk(&dir.path().join("f/x"), &Rules::mbox(None)) else {
            panic!("a file is not a directory");
        };
        assert_eq!(failure.status, EnhancedStatus(4, 2, 0));
        assert!(
            failure.reason.starts_with(&format!(
                "{}: is a regular file, not a directory: refusing to write; fix: ",
                dir.path().join("f").display()
            )),
            "{}",
            failure.reason
        );
    }
}
