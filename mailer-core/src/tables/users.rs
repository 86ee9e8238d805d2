//! Local users, from the system's password database (`/etc/passwd`, NSS).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Largest buffer offered to `getpwnam_r` before giving up on `ERANGE`.
const MAX_BUFFER: usize = 1 << 20;

/// A local account that can receive mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Looks `name` up with `getpwnam_r(3)`. `Ok(None)` means the account does not exist; an
/// error means the database could not be consulted (retry later rather than reject).
pub fn lookup_user(name: &str) -> io::Result<Option<User>> {
    let Ok(c_name) = CString::new(name) else {
        return Ok(None); // A name with NUL cannot exist.
    };
    let mut size = match unsafe { libc::sysconf(libc::_SC_GETPW_R_SIZE_MAX) } {
        n if n > 0 => n as usize,
        _ => 1024,
    };
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: zeroed passwd is a valid value for an out-parameter of plain C fields.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to a live local of the stated size.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && size < MAX_BUFFER {
            size *= 2;
            continue;
        }
        if rc != 0 {
            return match rc {
                // "Not found" as some NSS modules spell it.
                libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => Ok(None),
                _ => Err(io::Error::from_raw_os_error(rc)),
            };
        }
        if result.is_null() {
            return Ok(None);
        }
        if pwd.pw_name.is_null() || pwd.pw_dir.is_null() {
            return Ok(None);
        }
        // SAFETY: on success the strings point into `buf`, alive and NUL-terminated.
        let (pw_name, pw_dir) =
            unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
        return Ok(Some(User {
            name: pw_name.to_string_lossy().into_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home: PathBuf::from(OsStr::from_bytes(pw_dir.to_bytes())),
        }));
    }
}

/// The id of the group `name`, with `getgrnam_r(3)`. `Ok(None)` means there is no such group.
pub fn lookup_group(name: &str) -> io::Result<Option<u32>> {
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: the pointers come from `with_group`, live for the call and of the stated size.
    with_group(|grp, buf, len, result| unsafe {
        libc::getgrnam_r(c_name.as_ptr(), grp, buf, len, result)
    })
    .map(|found| found.map(|(_, gid)| gid))
}

/// The name of group `gid`, if the group database has one.
pub fn group_name(gid: u32) -> Option<String> {
    // SAFETY: the pointers come from `with_group`, live for the call and of the stated size.
    with_group(|grp, buf, len, result| unsafe { libc::getgrgid_r(gid, grp, buf, len, result) })
        .ok()
        .flatten()
        .map(|(name, _)| name)
}

/// Runs a `getgr*_r` call with a buffer grown on `ERANGE`; the group's name and id if found.
fn with_group(
    mut call: impl FnMut(
        *mut libc::group,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::group,
    ) -> libc::c_int,
) -> io::Result<Option<(String, u32)>> {
    // SAFETY: sysconf has no preconditions.
    let mut size = match unsafe { libc::sysconf(libc::_SC_GETGR_R_SIZE_MAX) } {
        n if n > 0 => n as usize,
        _ => 1024,
    };
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: zeroed group is a valid value for an out-parameter of plain C fields.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = call(&mut grp, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc == libc::ERANGE && size < MAX_BUFFER {
            size *= 2;
            continue;
        }
        if rc != 0 {
            return match rc {
                libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => Ok(None),
                _ => Err(io::Error::from_raw_os_error(rc)),
            };
        }
        if result.is_null() || grp.gr_name.is_null() {
            return Ok(None);
        }
        // SAFETY: on success the name points into `buf`, alive and NUL-terminated.
        let name = unsafe { CStr::from_ptr(grp.gr_name) };
        return Ok(Some((name.to_string_lossy().into_owned(), grp.gr_gid)));
    }
}
