//! mbox delivery: exact mboxrd bytes, locking against other writers, rollback, permissions.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use mailer_core::address::Address;
use mailer_core::delivery::content::Content;
use mailer_core::delivery::mailbox_fs::MailboxOwner;
use mailer_core::delivery::mbox::{deliver_mbox, expand_path, MboxOptions, PatternError};
use mailer_core::delivery::EnhancedStatus;
use mailer_core::tables::users::{lookup_group, lookup_user};
use mailer_core::time::from_unix_seconds;

/// 2026-11-25 13:13:37 UTC.
fn arrival() -> SystemTime {
    from_unix_seconds(1_795_612_417)
}

fn sender() -> Address {
    Address::parse("pim@ublog.tech").expect("valid")
}

/// A message as the queue gives it.
fn msg(bytes: &[u8]) -> Content {
    Content::from_bytes(bytes.to_vec())
}

fn opts(timeout_ms: u64) -> MboxOptions {
    MboxOptions {
        lock_timeout: Duration::from_millis(timeout_ms),
        ..MboxOptions::default()
    }
}

const MESSAGE: &[u8] = b"From: pim@ublog.tech\r\nSubject: hi\r\n\r\nFrom here\r\n>From there\r\n>>From x\r\n>>Fromage\r\nFrom\r\n From y\r\nlast";

const EXPECTED: &[u8] = b"From pim@ublog.tech Wed Nov 25 13:13:37 2026\nFrom: pim@ublog.tech\nSubject: hi\n\n>From here\n>>From there\n>>>From x\n>>Fromage\nFrom\n From y\nlast\n\n";

#[test]
fn message_is_written_as_mboxrd_with_lf_and_trailing_blank_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("pim");
    deliver_mbox(
        &mbox,
        Some(&sender()),
        arrival(),
        &msg(MESSAGE),
        &opts(1000),
    )
    .expect("delivered");
    assert_eq!(std::fs::read(&mbox).expect("read"), EXPECTED);
    assert!(!dir.path().join("pim.lock").exists(), "dotlock removed");
}

#[test]
fn second_message_is_appended_and_null_sender_is_mailer_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("pim");
    deliver_mbox(
        &mbox,
        Some(&sender()),
        arrival(),
        &msg(MESSAGE),
        &opts(1000),
    )
    .expect("first");
    let bounce = b"Subject: failure\r\n\r\nbody\r\n";
    deliver_mbox(
        &mbox,
        None,
        from_unix_seconds(951_782_400),
        &msg(bounce),
        &opts(1000),
    )
    .expect("second");
    let mut expected = EXPECTED.to_vec();
    expected.extend_from_slice(
        b"From MAILER-DAEMON Tue Feb 29 00:00:00 2000\nSubject: failure\n\nbody\n\n",
    );
    assert_eq!(std::fs::read(&mbox).expect("read"), expected);
}

#[test]
fn new_mbox_is_mode_0600_in_created_0700_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("home/pim/mail/inbox");
    deliver_mbox(&mbox, None, arrival(), &msg(b"x\r\n"), &opts(1000)).expect("delivered");
    let mode = std::fs::metadata(&mbox).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    for d in ["home", "home/pim", "home/pim/mail"] {
        let mode = std::fs::metadata(dir.path().join(d))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{d}");
    }
}

#[test]
fn new_mbox_is_given_to_its_user_and_mail_but_an_existing_one_keeps_mode_and_owner() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: giving files away needs root (CAP_CHOWN: see tests/mailbox_fs.rs)");
        return;
    }
    let nobody = lookup_user("nobody")
        .expect("passwd")
        .expect("nobody exists");
    let mail_gid = lookup_group("mail").expect("group database");
    let options = MboxOptions {
        owner: Some(MailboxOwner {
            user: nobody.name.clone(),
            uid: nobody.uid,
            gid: nobody.gid,
            mail_gid,
        }),
        ..opts(1000)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("nobody");
    deliver_mbox(&mbox, None, arrival(), &msg(b"x\r\n"), &options).expect("delivered");
    let meta = std::fs::metadata(&mbox).expect("stat");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (nobody.uid, mail_gid.unwrap_or(nobody.gid))
    );
    assert_eq!(meta.mode() & 0o7777, 0o660);

    let existing = dir.path().join("existing");
    std::fs::write(&existing, b"").expect("create");
    std::os::unix::fs::chown(&existing, Some(nobody.uid), Some(nobody.gid)).expect("chown");
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    deliver_mbox(&existing, None, arrival(), &msg(b"x\r\n"), &options).expect("delivered");
    let meta = std::fs::metadata(&existing).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (nobody.uid, nobody.gid));
    assert_eq!(meta.mode() & 0o7777, 0o600, "never changed");
}

#[test]
fn write_error_truncates_mbox_back_to_its_old_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("pim");
    deliver_mbox(
        &mbox,
        Some(&sender()),
        arrival(),
        &msg(MESSAGE),
        &opts(1000),
    )
    .expect("first");
    let before = std::fs::read(&mbox).expect("read");
    // Larger than the write buffer, so part of it reaches the file before the failure.
    let big: Vec<u8> =
        b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n".repeat(4096);
    for fail_after in [0, 10, 100_000, 200_000] {
        let options = MboxOptions {
            fail_after: Some(fail_after),
            ..opts(1000)
        };
        let failure = deliver_mbox(&mbox, None, arrival(), &msg(&big), &options)
            .expect_err("injected failure");
        assert!(!failure.permanent);
        assert_eq!(failure.status, EnhancedStatus(4, 3, 0));
        assert_eq!(
            failure.reason,
            format!(
                "{}: write failed, mailbox truncated back: injected write failure",
                mbox.display()
            )
        );
        assert_eq!(
            std::fs::read(&mbox).expect("read"),
            before,
            "fail_after {fail_after}"
        );
        assert!(!dir.path().join("pim.lock").exists(), "dotlock removed");
    }
}

#[test]
fn held_dotlock_makes_delivery_wait_then_fail_temporarily() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("pim");
    let lock = dir.path().join("pim.lock");
    // Held by a running process: this one.
    let holder = format!("{}\n", std::process::id());
    std::fs::write(&lock, &holder).expect("lock");
    let start = Instant::now();
    let failure =
        deliver_mbox(&mbox, None, arrival(), &msg(b"x\r\n"), &opts(300)).expect_err("locked");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert!(!failure.permanent);
    assert_eq!(failure.status, EnhancedStatus(4, 2, 0));
    assert_eq!(
        failure.reason,
        format!(
            "{}: mailbox locked by another process for more than 300ms",
            lock.display()
        )
    );
    assert_eq!(std::fs::read(&lock).expect("lock kept"), holder.as_bytes());
    assert!(!mbox.exists(), "nothing written");
}

#[test]
fn dotlock_released_in_time_lets_delivery_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("pim");
    let lock = dir.path().join("pim.lock");
    std::fs::write(&lock, b"").expect("lock");
    let releaser = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::remove_file(lock).expect("release");
        })
    };
    let start = Instant::now();
    deliver_mbox(
        &mbox,
        Some(&sender()),
        arrival(),
        &msg(MESSAGE),
        &opts(5000),
    )
    .expect("delivered");
    assert!(start.elapsed() >= Duration::from_millis(200));
    releaser.join().expect("releaser");
    assert_eq!(std::fs::read(&mbox).expect("read"), EXPECTED);
    assert!(!lock.exists());
}

#[test]
fn stale_dotlock_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("pim");
    let lock = dir.path().join("pim.lock");
    let f = std::fs::File::create(&lock).expect("lock");
    f.set_modified(SystemTime::now() - Duration::from_secs(600))
        .expect("age the lock");
    drop(f);
    let start = Instant::now();
    deliver_mbox(
        &mbox,
        Some(&sender()),
        arrival(),
        &msg(MESSAGE),
        &opts(5000),
    )
    .expect("delivered");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(std::fs::read(&mbox).expect("read"), EXPECTED);
}

#[test]
fn a_dotlock_left_by_a_process_that_died_is_taken_over_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("pim");
    let lock = dir.path().join("pim.lock");
    // A writer killed mid-delivery (kill -9) leaves its lock with its pid in it.
    let mut dead = Command::new("true").spawn().expect("spawn");
    let pid = dead.id();
    dead.wait().expect("reap");
    std::fs::write(&lock, format!("{pid}\n")).expect("lock");
    let start = Instant::now();
    deliver_mbox(
        &mbox,
        Some(&sender()),
        arrival(),
        &msg(MESSAGE),
        &opts(5000),
    )
    .expect("delivered");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(std::fs::read(&mbox).expect("read"), EXPECTED);
    assert!(!lock.exists(), "our own dotlock removed after the delivery");
}

/// A python3 process holding an fcntl write lock on `path` for `secs` seconds; returns once
/// the lock is held.
fn hold_fcntl_lock(path: &Path, secs: f64) -> Child {
    let script = "import fcntl, sys, time\n\
                  f = open(sys.argv[1], 'a')\n\
                  fcntl.lockf(f, fcntl.LOCK_EX)\n\
                  print('locked', flush=True)\n\
                  time.sleep(float(sys.argv[2]))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(secs.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    BufReader::new(stdout).read_line(&mut line).expect("read");
    assert_eq!(line, "locked\n");
    child
}

#[test]
fn fcntl_lock_held_by_another_process_times_out_temporarily() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("pim");
    let mut holder = hold_fcntl_lock(&mbox, 10.0);
    let start = Instant::now();
    let failure =
        deliver_mbox(&mbox, None, arrival(), &msg(b"x\r\n"), &opts(300)).expect_err("locked");
    let waited = start.elapsed();
    holder.kill().expect("kill holder");
    holder.wait().expect("reap holder");
    assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    assert!(!failure.permanent);
    assert_eq!(failure.status, EnhancedStatus(4, 2, 0));
    assert_eq!(
        failure.reason,
        format!(
            "{}: mailbox locked (fcntl) by another process for more than 300ms",
            mbox.display()
        )
    );
    assert_eq!(std::fs::read(&mbox).expect("read"), b"");
    assert!(!dir.path().join("pim.lock").exists(), "dotlock removed");
}

#[test]
fn fcntl_lock_released_in_time_lets_delivery_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("pim");
    let mut holder = hold_fcntl_lock(&mbox, 0.3);
    deliver_mbox(
        &mbox,
        Some(&sender()),
        arrival(),
        &msg(MESSAGE),
        &opts(10_000),
    )
    .expect("delivered");
    holder.wait().expect("holder exits");
    assert_eq!(std::fs::read(&mbox).expect("read"), EXPECTED);
}

#[test]
fn symlinked_mbox_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("passwd");
    std::fs::write(&target, b"root:x:0:0\n").expect("write");
    let mbox = dir.path().join("pim");
    std::os::unix::fs::symlink(&target, &mbox).expect("symlink");
    let failure =
        deliver_mbox(&mbox, None, arrival(), &msg(b"x\r\n"), &opts(1000)).expect_err("refused");
    assert!(!failure.permanent);
    assert_eq!(failure.status, EnhancedStatus(4, 2, 0));
    let p = mbox.display();
    assert_eq!(
        failure.reason,
        format!(
            "{p}: is a symbolic link, not a regular file: refusing to write; fix: remove it \
             (rm {p}); the next delivery creates the mailbox"
        )
    );
    assert_eq!(std::fs::read(&target).expect("read"), b"root:x:0:0\n");
}

#[test]
fn path_patterns_expand_user_domain_home_and_percent() {
    let home = PathBuf::from("/home/pim");
    assert_eq!(
        expand_path("/var/mail/%u", "pim", "ublog.tech", None),
        Ok(PathBuf::from("/var/mail/pim"))
    );
    assert_eq!(
        expand_path("~/mail/%d/%u-100%%", "pim", "ublog.tech", Some(&home)),
        Ok(PathBuf::from("/home/pim/mail/ublog.tech/pim-100%"))
    );
    assert_eq!(
        expand_path("~", "pim", "x", Some(&home)),
        Ok(PathBuf::from("/home/pim"))
    );
    assert_eq!(
        expand_path("~/mbox", "pim", "x", None),
        Err(PatternError::NoHome)
    );
    assert_eq!(
        expand_path("~bob/mbox", "pim", "x", Some(&home)),
        Err(PatternError::TildeUser)
    );
    assert_eq!(
        expand_path("/m/%x", "pim", "x", None),
        Err(PatternError::UnknownEscape('x'))
    );
    assert_eq!(
        expand_path("/m/%", "pim", "x", None),
        Err(PatternError::TrailingPercent)
    );
    assert_eq!(
        expand_path("/var/mail/%u", "..", "x", None),
        Err(PatternError::UnsafeValue {
            what: "user",
            value: "..".to_string()
        })
    );
    assert_eq!(
        expand_path("/var/mail/%u", "a/b", "x", None).map_err(|e| e.to_string()),
        Err("user `a/b` cannot be used in a path".to_string())
    );
    assert_eq!(
        expand_path("mail/%u", "pim", "x", None),
        Err(PatternError::NotAbsolute(PathBuf::from("mail/pim")))
    );
}
