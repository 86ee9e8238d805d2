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
