//! Giving up root once the sockets are open, as OpenSMTPD and Postfix do: started as root with
//! `user` set, the daemon binds its listeners, control socket and metrics endpoint, hands the
//! queue to `user`, then becomes `user` (its primary group and its supplementary groups,
//! e.g. `mail` for /var/mail) keeping CAP_CHOWN alone, to give mailboxes to their owners.
//! What to do is decided in the core ([`Config::privileges`]); this module does the syscalls.
//!
//! Credentials and capabilities belong to each thread: this runs before the runtime starts
//! its workers, which then inherit the reduced set. It uses `libc` directly rather than the
//! `caps` crate: a single capset(2) with a fixed mask and a few prctl(2) calls are all it
//! needs, and keeping the syscalls in view here makes their order, which is the point of the
//! module, easy to check.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

use mailer_core::config::{Config, Privileges};
use mailer_core::queue::Spool;
use mailer_core::tables::users::{lookup_user, User};

/// capability.h: CAP_CHOWN is bit 0.
const CAP_CHOWN: u32 = 0;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sockets opened before the drop, for `serve` to use instead of binding them itself.
#[derive(Default)]
pub struct Opened {
    pub control: Option<UnixListener>,
    pub metrics: Option<TcpListener>,
    /// The control socket's directory, when binding it created the directory.
    made_dir: Option<std::path::PathBuf>,
}

/// Carries out what the configuration and the starting uid call for. SMTP listeners opened
/// here join `listeners` (where sockets passed by systemd already are), so the daemon takes
/// them up as it takes up those.
pub fn settle(
    config: &Config,
    listeners: &mut HashMap<SocketAddr, TcpListener>,
) -> Result<Opened, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    match config
        .privileges(euid, lookup_user)
        .map_err(|d| d.to_string())?
    {
        Privileges::Keep => Ok(Opened::default()),
        Privileges::StayRoot => {
            tracing::warn!(
                "running as root, which is not the recommended deployment: set `user = \"mailer\"` \
                 in the configuration, or run under config/mailer.service (User=mailer)"
            );
            Ok(Opened::default())
        }
        Privileges::Drop(user) => {
            let opened = open_sockets(config, listeners)?;
            hand_over_queue(&config.queue_dir, &user)?;
            hand_over_socket(&config.control_socket, opened.made_dir.as_deref(), &user)?;
            become_user(&user)
                .map_err(|e| format!("cannot switch to user `{}`: {e}", user.name))?;
            tracing::info!(
                user = %user.name,
                uid = user.uid,
                gid = user.gid,
                "switched user; kept CAP_CHOWN only"
            );
            Ok(opened)
        }
    }
}

/// Everything that may need root to open: ports below 1024, a socket in a root-owned
/// directory.
fn open_sockets(
    config: &Config,
    listeners: &mut HashMap<SocketAddr, TcpListener>,
) -> Result<Opened, String> {
    for listen in &config.listen {
        if let Entry::Vacant(slot) = listeners.entry(listen.address) {
            let socket = TcpListener::bind(listen.address)
                .map_err(|e| format!("cannot listen on {}: {e}", listen.address))?;
            slot.insert(socket);
        }
    }
    let metrics = match &config.metrics {
        Some(m) => {
            let socket = TcpListener::bind(m.address)
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|e| format!("cannot serve metrics on {}: {e}", m.address))?;
            Some(socket)
        }
        None => None,
    };
    let made_dir = config
        .control_socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf);
    // The control socket is bound where it always is (control::bind), which wants a reactor;
    // a current-thread runtime is one without starting a thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let control = {
        let _entered = runtime.enter();
        crate::control::bind(&config.control_socket)
            .and_then(|l| l.into_std())
            .map_err(|e| {
                format!(
                    "cannot open the control socket {}: {e}",
                    config.control_socket.display()
                )
            })?
    };
    Ok(Opened {
        control: Some(control),
        metrics,
        made_dir,
    })
}

/// Makes the queue usable by `user`: its layout created, the directory and each directory
/// in it owned by `user`. Directories are opened without following symlinks and changed
/// through the descriptor, so nothing planted in a queue that `user` could already write
/// redirects root's chown. Messages left by a daemon that ran as root are not taken over
/// silently: the admin is told how.
fn hand_over_queue(dir: &Path, user: &User) -> Result<(), String> {
    let fail = |what: &Path, e: io::Error| {
        format!("cannot hand {} to `{}`: {e}", what.display(), user.name)
    };
    Spool::open(dir).map_err(|e| fail(dir, e))?;
    let top = open_dir(dir, false).map_err(|e| fail(dir, e))?;
    give(&top, user).map_err(|e| fail(dir, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| fail(dir, e))? {
        let entry = entry.map_err(|e| fail(dir, e))?;
        let path = entry.path();
        if !entry.file_type().map_err(|e| fail(&path, e))?.is_dir() {
            continue;
        }
        let sub = open_dir(&path, true).map_err(|e| fail(&path, e))?;
        give(&sub, user).map_err(|e| fail(&path, e))?;
    }
    let q = dir.join("q");
    for entry in std::fs::read_dir(&q).map_err(|e| fail(&q, e))? {
        let entry = entry.map_err(|e| fail(&q, e))?;
        let meta = entry.metadata().map_err(|e| fail(&entry.path(), e))?;
        if meta.uid() != user.uid {
            return Err(format!(
                "{} belongs to uid {}, not to `{}`: the queue was used by a daemon running as another user; \
                 hand it over with `chown -R {}: {}`",
                entry.path().display(),
                meta.uid(),
                user.name,
                user.name,
                dir.display()
            ));
        }
    }
    Ok(())
}

/// The control socket goes to `user`, who may then use it (mode 0660) as root may; a
/// directory made for it just now goes too, so that the daemon can remove the socket at
/// shutdown. A directory the admin or systemd made keeps its owner.
fn hand_over_socket(path: &Path, made_dir: Option<&Path>, user: &User) -> Result<(), String> {
    let fail = |e: io::Error| {
        format!(
            "cannot hand the control socket {} to `{}`: {e}",
            path.display(),
            user.name
        )
    };
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)).map_err(fail)?;
    if let Some(dir) = made_dir {
        give(&open_dir(dir, true).map_err(fail)?, user).map_err(fail)?;
    }
    Ok(())
}

fn open_dir(path: &Path, no_follow: bool) -> io::Result<File> {
    let mut flags = libc::O_DIRECTORY | libc::O_CLOEXEC;
    if no_follow {
        flags |= libc::O_NOFOLLOW;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
}

fn give(dir: &File, user: &User) -> io::Result<()> {
    let meta = dir.metadata()?;
    if meta.uid() == user.uid && meta.gid() == user.gid {
        return Ok(());
    }
    std::os::unix::fs::fchown(dir, Some(user.uid), Some(user.gid))
}

/// setresgid/initgroups/setresuid with PR_SET_KEEPCAPS, then capset to CAP_CHOWN alone, then
/// a check that it all took.
fn become_user(user: &User) -> io::Result<()> {
    if threads() != Some(1) {
        return Err(io::Error::other(
            "other threads are running, and they would keep root: this is a bug",
        ));
    }
    let name = CString::new(user.name.as_str()).map_err(io::Error::other)?;
    let (uid, gid) = (user.uid as libc::uid_t, user.gid as libc::gid_t);
    // SAFETY: plain syscalls on this (only) thread's credentials; every pointer is to a live
    // local; each return value is checked.
    unsafe {
        // Without it, setresuid to a non-zero uid clears the permitted set.
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
        check(libc::initgroups(name.as_ptr(), gid))?;
        check(libc::setresgid(gid, gid, gid))?;
        // Nothing this process might execute can regain what is dropped from the bounding set.
        for cap in 0..64 {
            if cap != CAP_CHOWN as libc::c_ulong
                && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
            {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
            }
        }
        check(libc::setresuid(uid, uid, uid))?;
        capset(1 << CAP_CHOWN)?;
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0))?;
        // The unit's NoNewPrivileges=yes, for a daemon started without it.
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    verify(uid, gid)
}

/// Sets the permitted and effective sets to `mask`, the inheritable set (and with it the
/// ambient set) to nothing.
fn capset(mask: u64) -> io::Result<()> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: mask as u32,
            permitted: mask as u32,
            inheritable: 0,
        },
        CapData {
            effective: (mask >> 32) as u32,
            permitted: (mask >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data are the version-3 layout the kernel reads (two data words).
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } as i32)
}

/// The effective capability set, from capget(2).
fn effective_caps() -> io::Result<u64> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: as in capset; the kernel writes two data words.
    check(unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) } as i32)?;
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// Refuses to go on unless every uid and gid is the user's and CAP_CHOWN is the only
/// capability left.
fn verify(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the out-pointers are live locals.
    check(unsafe { libc::getresuid(&mut r, &mut e, &mut s) })?;
    let uids = [r, e, s];
    // SAFETY: as above.
    check(unsafe { libc::getresgid(&mut r, &mut e, &mut s) })?;
    let gids = [r, e, s];
    let caps = effective_caps()?;
    if uids != [uid; 3] || gids != [gid; 3] || caps != 1 << CAP_CHOWN {
        return Err(io::Error::other(format!(
            "credentials did not take: uids {uids:?}, gids {gids:?}, capabilities {caps:#x}"
        )));
    }
    Ok(())
}

/// Threads of this process, from /proc.
fn threads() -> Option<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

fn check(rc: i32) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capget_reads_this_threads_effective_set() {
        let from_proc = std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(effective_caps().unwrap(), from_proc);
    }
}
