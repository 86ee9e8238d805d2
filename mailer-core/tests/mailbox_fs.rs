//! Mailboxes on a real file system for real users: the modes and owners Debian expects, and
//! nothing a user plants (links, FIFOs, other people's files) redirects a delivery made as
//! root. The daemon-with-CAP_CHOWN cases run this binary again under `setpriv`.
//!
//! These tests need root and `useradd`; without them each says why and returns.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use mailer_core::address::Address;
use mailer_core::config::{Config, LocalAction, MailboxKind};
use mailer_core::delivery::content::Content;
use mailer_core::delivery::local::LocalDelivery;
use mailer_core::delivery::mailbox_fs::MailboxOwner;
use mailer_core::delivery::maildir::{deliver_maildir, MaildirOptions};
use mailer_core::delivery::mbox::{deliver_mbox, MboxOptions};
use mailer_core::delivery::{EnhancedStatus, Failure, Outcome};
use mailer_core::tables::users::{lookup_group, lookup_user};

const MESSAGE: &[u8] = b"Subject: hi\r\n\r\nbody\r\n";

fn message() -> Content {
    Content::from_bytes(MESSAGE.to_vec())
}
const ENTRY_BODY: &str = "Subject: hi\n\nbody\n\n";
/// Tells this binary, run again under setpriv, to act as the daemon.
const CHILD_ENV: &str = "MAILBOX_FS_CHILD";

/// Whether this test can run: as root, with useradd. Otherwise says why.
fn can_run(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{test}: skipped: needs root to create users and give files away");
        return false;
    }
    if Command::new("useradd").arg("--help").output().is_err() {
        eprintln!("{test}: skipped: useradd is not installed");
        return false;
    }
    true
}

static USERS: AtomicUsize = AtomicUsize::new(0);

/// A throwaway account, removed with its home on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl TestUser {
    /// A login user with a home directory and a group of its own.
    fn new() -> TestUser {
        TestUser::add(&["-m", "-U", "-s", "/bin/sh"])
    }

    /// A system account without a home, like the `mailer` user of the systemd unit.
    fn system() -> TestUser {
        TestUser::add(&["-r", "-M", "-U", "-s", "/usr/sbin/nologin"])
    }

    fn add(args: &[&str]) -> TestUser {
        let n = USERS.fetch_add(1, Ordering::Relaxed);
        let name = format!("mbt{}x{n}", std::process::id());
        // Tests running in parallel contend for the lock on /etc/passwd.
        let mut attempts = 0;
        loop {
            let out = Command::new("useradd")
                .args(args)
                .arg(&name)
                .output()
                .expect("useradd runs");
            if out.status.success() {
                break;
            }
            attempts += 1;
            assert!(
                attempts < 20,
                "useradd {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let user = lookup_user(&name)
            .expect("passwd readable")
            .expect("just added");
        TestUser {
            name,
            uid: user.uid,
            gid: user.gid,
            home: user.home,
        }
    }

    fn owner(&self) -> MailboxOwner {
        MailboxOwner {
            user: self.name.clone(),
            uid: self.uid,
            gid: self.gid,
            mail_gid: Some(mail_gid()),
        }
    }

    /// Runs `cmd` as this user with its own groups only.
    fn run(&self, cmd: &[&str]) -> std::process::Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .args(cmd)
            .output()
            .expect("setpriv runs")
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for _ in 0..20 {
            let removed = Command::new("userdel")
                .args(["-r", "-f", &self.name])
                .output()
                .is_ok_and(|out| {
                    out.status.success() || lookup_user(&self.name).ok() == Some(None)
                });
            if removed {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove test user {}", self.name);
    }
}

fn mail_gid() -> u32 {
    lookup_group("mail")
        .expect("group database readable")
        .expect("these tests need a group `mail`, as Debian has")
}

/// A fresh directory like Debian's /var/mail: `root:mail 2775`.
fn mail_spool() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(dir.path(), Some(0), Some(mail_gid())).expect("chown");
    set_mode(dir.path(), 0o2775);
    dir
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("lchown");
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

fn owner_of(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).expect("stat");
    (m.uid(), m.gid())
}

fn mbox_opts(owner: &TestUser) -> MboxOptions {
    MboxOptions {
        owner: Some(owner.owner()),
        lock_timeout: Duration::from_secs(2),
        ..MboxOptions::default()
    }
}

fn deliver_to(path: &Path, opts: &MboxOptions) -> Result<(), Failure> {
    deliver_mbox(path, None, SystemTime::now(), &message(), opts)
}

/// Asserts a refusal: temporary, 4.2.0, naming the path, the problem and a fix.
fn assert_refused(failure: &Failure, path: &Path, problem: &str) {
    assert!(!failure.permanent, "{failure:?}");
    assert_eq!(
        failure.status,
        EnhancedStatus(4, 2, 0),
        "{}",
        failure.reason
    );
    let head = format!("{}: {problem}", path.display());
    assert!(failure.reason.starts_with(&head), "{}", failure.reason);
    assert!(
        failure.reason.contains(": refusing to write; fix: "),
        "{}",
        failure.reason
    );
}

fn entries(text: &str) -> usize {
    text.matches(ENTRY_BODY).count()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn root_creates_a_missing_mbox_as_user_mail_0660_and_appends_to_it() {
    if !can_run("root_creates_a_missing_mbox_as_user_mail_0660_and_appends_to_it") {
        return;
    }
    let user = TestUser::new();
    let spool = mail_spool();
    let mbox = spool.path().join(&user.name);
    deliver_to(&mbox, &mbox_opts(&user)).expect("first delivery");
    assert_eq!(owner_of(&mbox), (user.uid, mail_gid()));
    assert_eq!(mode(&mbox), 0o660);
    deliver_to(&mbox, &mbox_opts(&user)).expect("second delivery");
    let text = std::fs::read_to_string(&mbox).expect("read");
    assert_eq!(entries(&text), 2, "{text}");
    assert_eq!(mode(&mbox), 0o660);
    assert!(!spool.path().join(format!("{}.lock", user.name)).exists());
}

#[test]
fn an_existing_mbox_keeps_its_mode_and_owner() {
    if !can_run("an_existing_mbox_keeps_its_mode_and_owner") {
        return;
    }
    let user = TestUser::new();
    let spool = mail_spool();
    let mbox = spool.path().join(&user.name);
    std::fs::write(&mbox, b"").expect("create");
    chown(&mbox, user.uid, user.gid);
    set_mode(&mbox, 0o600);
    deliver_to(&mbox, &mbox_opts(&user)).expect("delivered");
    assert_eq!(mode(&mbox), 0o600, "never changed");
    assert_eq!(owner_of(&mbox), (user.uid, user.gid), "never changed");
    assert_eq!(entries(&std::fs::read_to_string(&mbox).expect("read")), 1);
}

#[test]
fn local_delivery_as_root_gives_a_new_mbox_to_the_user_and_group_mail() {
    if !can_run("local_delivery_as_root_gives_a_new_mbox_to_the_user_and_group_mail") {
        return;
    }
    let user = TestUser::new();
    let spool = mail_spool();
    let pattern = format!("{}/%u", spool.path().display());
    let outcome = deliver_locally(&MailboxKind::Mbox(pattern), &user.name);
    assert!(matches!(outcome, Outcome::Delivered { .. }), "{outcome:?}");
    let mbox = spool.path().join(&user.name);
    assert_eq!(owner_of(&mbox), (user.uid, mail_gid()));
    assert_eq!(mode(&mbox), 0o660);
}

#[test]
fn a_symlink_at_the_mbox_path_is_refused_and_its_target_untouched() {
    if !can_run("a_symlink_at_the_mbox_path_is_refused_and_its_target_untouched") {
        return;
    }
    let user = TestUser::new();
    let spool = mail_spool();
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("shadow");
    std::fs::write(&target, b"root:x:0:0\n").expect("write");
    let mbox = spool.path().join(&user.name);
    std::os::unix::fs::symlink(&target, &mbox).expect("symlink");
    chown(&mbox, user.uid, user.gid);
    let failure = deliver_to(&mbox, &mbox_opts(&user)).expect_err("refused");
    assert_refused(&failure, &mbox, "is a symbolic link, not a regular file");
    assert_eq!(std::fs::read(&target).expect("read"), b"root:x:0:0\n");
}

#[test]
fn a_hard_linked_mbox_is_refused_and_left_unchanged() {
    if !can_run("a_hard_linked_mbox_is_refused_and_left_unchanged") {
        return;
    }
    let user = TestUser::new();
    let spool = mail_spool();
    let other = spool.path().join("other-name");
    std::fs::write(&other, b"precious\n").expect("write");
    chown(&other, user.uid, mail_gid());
    let mbox = spool.path().join(&user.name);
    std::fs::hard_link(&other, &mbox).expect("link");
    let failure = deliver_to(&mbox, &mbox_opts(&user)).expect_err("refused");
    assert_refused(&failure, &mbox, "has 2 hard links");
    assert_eq!(std::fs::read(&other).expect("read"), b"precious\n");
}

#[test]
fn a_fifo_at_the_mbox_path_is_refused_without_hanging() {
    if !can_run("a_fifo_at_the_mbox_path_is_refused_without_hanging") {
        return;
    }
    let user = TestUser::new();
    let spool = mail_spool();
    let mbox = spool.path().join(&user.name);
    let status = Command::new("mkfifo").arg(&mbox).status().expect("mkfifo");
    assert!(status.success());
    chown(&mbox, user.uid, mail_gid());
    let opts = mbox_opts(&user);
    // Without a reader the open fails at once; with one it succeeds and the type is checked.
    for with_reader in [false, true] {
        let _reader = with_reader.then(|| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&mbox)
                .expect("reader")
        });
        let (tx, rx) = mpsc::channel();
        let (path, o) = (mbox.clone(), opts.clone());
        std::thread::spawn(move || {
            let _ = tx.send(deliver_to(&path, &o));
        });
        let result = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("delivery to a FIFO returns at once");
        let failure = result.expect_err("refused");
        assert_refused(&failure, &mbox, "is a FIFO, not a regular file");
    }
}

#[test]
fn a_directory_at_the_mbox_path_is_refused() {
    if !can_run("a_directory_at_the_mbox_path_is_refused") {
        return;
    }
    let user = TestUser::new();
    let spool = mail_spool();
    let mbox = spool.path().join(&user.name);
    std::fs::create_dir(&mbox).expect("mkdir");
    chown(&mbox, user.uid, mail_gid());
    let failure = deliver_to(&mbox, &mbox_opts(&user)).expect_err("refused");
    assert_refused(&failure, &mbox, "is a directory, not a regular file");
    assert!(names(&mbox).is_empty());
}

#[test]
fn an_mbox_owned_by_another_user_is_refused_with_the_chown_that_fixes_it() {
    if !can_run("an_mbox_owned_by_another_user_is_refused_with_the_chown_that_fixes_it") {
        return;
    }
    let user = TestUser::new();
    let intruder = TestUser::new();
    let spool = mail_spool();
    let mbox = spool.path().join(&user.name);
    std::fs::write(&mbox, b"theirs\n").expect("write");
    chown(&mbox, intruder.uid, intruder.gid);
    set_mode(&mbox, 0o666);
    let failure = deliver_to(&mbox, &mbox_opts(&user)).expect_err("refused");
    let p = mbox.display();
    assert_eq!(
        failure.reason,
        format!(
            "{p}: owned by uid {}, not {} ({}): refusing to write; fix: chown {}:mail {p} && chmod 0660 {p}",
            intruder.uid, user.name, user.uid, user.name
        )
    );
    assert_eq!(failure.status, EnhancedStatus(4, 2, 0));
    assert!(!failure.permanent);
    assert_eq!(std::fs::read(&mbox).expect("read"), b"theirs\n");
}

#[test]
fn a_link_planted_in_the_users_directory_on_the_mbox_path_is_not_followed() {
    if !can_run("a_link_planted_in_the_users_directory_on_the_mbox_path_is_not_followed") {
        return;
    }
    let user = TestUser::new();
    let outside = tempfile::tempdir().expect("tempdir");
    // `~/mail/inbox` with `~/mail -> <outside>` made by the user.
    let link = user.home.join("mail");
    std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");
    chown(&link, user.uid, user.gid);
    let failure = deliver_to(&link.join("inbox"), &mbox_opts(&user)).expect_err("refused");
    assert_refused(
        &failure,
        &link,
        &format!("is a symbolic link owned by uid {}", user.uid),
    );
    assert!(names(outside.path()).is_empty(), "nothing written outside");
}

/// `~/Maildir` with `tmp/` and `cur/`, all the user's; `new/` left to the caller.
fn users_maildir(user: &TestUser) -> PathBuf {
    let maildir = user.home.join("Maildir");
    for d in [&maildir, &maildir.join("tmp"), &maildir.join("cur")] {
        std::fs::create_dir(d).expect("mkdir");
        chown(d, user.uid, user.gid);
        set_mode(d, 0o700);
    }
    maildir
}

#[test]
fn maildir_new_planted_as_a_link_to_an_outside_directory_is_refused_as_root() {
    if !can_run("maildir_new_planted_as_a_link_to_an_outside_directory_is_refused_as_root") {
        return;
    }
    let user = TestUser::new();
    let outside = tempfile::tempdir().expect("tempdir");
    let maildir = users_maildir(&user);
    let new = maildir.join("new");
    std::os::unix::fs::symlink(outside.path(), &new).expect("symlink");
    chown(&new, user.uid, user.gid);
    let opts = MaildirOptions {
        owner: Some(user.owner()),
        ..MaildirOptions::new("mx")
    };
    let failure = deliver_maildir(&maildir, &message(), &opts).expect_err("refused");
    assert_refused(&failure, &new, "is a symbolic link, not a directory");
    assert!(names(outside.path()).is_empty(), "nothing written outside");
    assert!(
        names(&maildir.join("tmp")).is_empty(),
        "nothing left in tmp/"
    );
}

#[test]
fn a_maildir_that_is_a_users_link_is_refused_as_root() {
    if !can_run("a_maildir_that_is_a_users_link_is_refused_as_root") {
        return;
    }
    let user = TestUser::new();
    let outside = tempfile::tempdir().expect("tempdir");
    let maildir = user.home.join("Maildir");
    std::os::unix::fs::symlink(outside.path(), &maildir).expect("symlink");
    chown(&maildir, user.uid, user.gid);
    let opts = MaildirOptions {
        owner: Some(user.owner()),
        ..MaildirOptions::new("mx")
    };
    let failure = deliver_maildir(&maildir, &message(), &opts).expect_err("refused");
    assert_refused(&failure, &maildir, "is a symbolic link, not a directory");
    assert!(names(outside.path()).is_empty(), "nothing written outside");
}

#[test]
fn a_maildir_directory_of_another_owner_is_refused_as_root() {
    if !can_run("a_maildir_directory_of_another_owner_is_refused_as_root") {
        return;
    }
    let user = TestUser::new();
    let maildir = users_maildir(&user);
    std::fs::create_dir(maildir.join("new")).expect("mkdir");
    let opts = MaildirOptions {
        owner: Some(user.owner()),
        ..MaildirOptions::new("mx")
    };
    let failure = deliver_maildir(&maildir, &message(), &opts).expect_err("refused");
    assert_refused(
        &failure,
        &maildir.join("new"),
        &format!("owned by uid 0, not {} ({})", user.name, user.uid),
    );
}

#[test]
fn root_creates_a_private_maildir_for_the_user() {
    if !can_run("root_creates_a_private_maildir_for_the_user") {
        return;
    }
    let user = TestUser::new();
    let maildir = user.home.join("Maildir");
    let opts = MaildirOptions {
        owner: Some(user.owner()),
        ..MaildirOptions::new("mx")
    };
    let file = deliver_maildir(&maildir, &message(), &opts).expect("delivered");
    for d in ["", "tmp", "new", "cur"] {
        let d = maildir.join(d);
        assert_eq!(owner_of(&d), (user.uid, user.gid), "{}", d.display());
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    assert_eq!(owner_of(&file), (user.uid, user.gid));
    assert_eq!(mode(&file), 0o600);
    assert_eq!(std::fs::metadata(&file).expect("stat").nlink(), 1);
    let read = user.run(&["cat", &file.display().to_string()]);
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "Subject: hi\n\nbody\n"
    );
    // Delivered again into what the first delivery made.
    deliver_maildir(&maildir, &message(), &opts).expect("second delivery");
    assert_eq!(names(&maildir.join("new")).len(), 2);
    assert!(names(&maildir.join("tmp")).is_empty());
}

/// A tree with Debian's `spool/mail -> ../mail` (root's link in root's directory) beside a
/// `root:mail 2775` `mail/`.
fn debian_like_tree() -> tempfile::TempDir {
    let top = tempfile::tempdir().expect("tempdir");
    set_mode(top.path(), 0o755);
    let mail = top.path().join("mail");
    std::fs::create_dir(&mail).expect("mkdir");
    std::os::unix::fs::chown(&mail, Some(0), Some(mail_gid())).expect("chown");
    set_mode(&mail, 0o2775);
    std::fs::create_dir(top.path().join("spool")).expect("mkdir");
    set_mode(&top.path().join("spool"), 0o755);
    std::os::unix::fs::symlink("../mail", top.path().join("spool/mail")).expect("symlink");
    top
}

#[test]
fn roots_link_in_a_directory_only_root_can_change_is_followed() {
    if !can_run("roots_link_in_a_directory_only_root_can_change_is_followed") {
        return;
    }
    let user = TestUser::new();
    let top = debian_like_tree();
    let via_link = top.path().join("spool/mail").join(&user.name);
    deliver_to(&via_link, &mbox_opts(&user)).expect("delivered through the link");
    let mbox = top.path().join("mail").join(&user.name);
    assert_eq!(entries(&std::fs::read_to_string(&mbox).expect("read")), 1);
    assert_eq!(owner_of(&mbox), (user.uid, mail_gid()));

    let maildir = top
        .path()
        .join("spool/mail")
        .join(format!("{}.d", user.name));
    let opts = MaildirOptions {
        owner: Some(user.owner()),
        ..MaildirOptions::new("mx")
    };
    deliver_maildir(&maildir, &message(), &opts).expect("delivered through the link");
    let real = top.path().join("mail").join(format!("{}.d", user.name));
    assert_eq!(names(&real.join("new")).len(), 1);
}

#[test]
fn roots_link_in_a_directory_others_can_write_is_not_followed() {
    if !can_run("roots_link_in_a_directory_others_can_write_is_not_followed") {
        return;
    }
    let user = TestUser::new();
    let top = debian_like_tree();
    // World-writable without the sticky bit: anyone could have swapped the link.
    set_mode(&top.path().join("spool"), 0o777);
    let link = top.path().join("spool/mail");
    let failure = deliver_to(&link.join(&user.name), &mbox_opts(&user)).expect_err("refused");
    assert_refused(&failure, &link, "is a symbolic link in ");
    assert!(names(&top.path().join("mail")).is_empty());
    // With the sticky bit only root can replace root's link.
    set_mode(&top.path().join("spool"), 0o1777);
    deliver_to(&link.join(&user.name), &mbox_opts(&user)).expect("delivered");
}

/// Runs the local action for `user` with `mailbox`, in this process.
fn deliver_locally(mailbox: &MailboxKind, user: &str) -> Outcome {
    let config = Config::embedded_default();
    let action = LocalAction {
        mailbox: mailbox.clone(),
        alias: None,
        allow_commands: false,
        allow_files: false,
    };
    let local = LocalDelivery::new(&config, &action, None);
    let rcpt = Address::parse(&format!("{user}@localhost")).expect("valid address");
    let mut result = local.deliver(None, &[&rcpt], &message());
    assert_eq!(result.outcomes.len(), 1);
    result.outcomes.remove(0)
}

/// Runs [`child_delivers_as_the_daemon`] in a new process as `daemon` with only CAP_CHOWN
/// and the supplementary group `mail`, as the systemd unit does; returns its outcome line.
fn deliver_as_daemon(daemon: &TestUser, kind: &str, pattern: &str, user: &str) -> String {
    deliver_as(daemon, true, kind, pattern, user)
}

/// [`deliver_as_daemon`], with CAP_CHOWN or with no capability at all.
fn deliver_as(daemon: &TestUser, cap_chown: bool, kind: &str, pattern: &str, user: &str) -> String {
    let exe = std::env::current_exe().expect("test binary");
    let caps: &[&str] = if cap_chown {
        &[
            "--inh-caps=+chown",
            "--ambient-caps=+chown",
            "--bounding-set=-all,+chown",
        ]
    } else {
        &["--inh-caps=-all", "--bounding-set=-all"]
    };
    let out = Command::new("setpriv")
        .arg(format!("--reuid={}", daemon.uid))
        .arg(format!("--regid={}", daemon.gid))
        .arg(format!("--groups={}", mail_gid()))
        .args(caps)
        .arg(&exe)
        .args([
            "--exact",
            "child_delivers_as_the_daemon",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{kind}\n{pattern}\n{user}"))
        .output()
        .expect("setpriv runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("OUTCOME ").map(|(_, outcome)| outcome))
        .unwrap_or_else(|| panic!("no outcome from the child: {stdout}"))
        .to_string()
}

/// The daemon's side of the CAP_CHOWN tests; does nothing unless run by them.
#[test]
#[ignore = "run by the CAP_CHOWN tests as the daemon user"]
fn child_delivers_as_the_daemon() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        eprintln!("child_delivers_as_the_daemon: only runs under the CAP_CHOWN tests");
        return;
    };
    let mut parts = spec.splitn(3, '\n');
    let (kind, pattern, user) = (
        parts.next().expect("kind"),
        parts.next().expect("pattern").to_string(),
        parts.next().expect("user"),
    );
    // As the unit: files are created without group or other bits.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    let outcome = match kind {
        "mbox" => deliver_locally(&MailboxKind::Mbox(pattern), user),
        "maildir" => deliver_locally(&MailboxKind::Maildir(pattern), user),
        // Told it may give files away when it may not: the fallback when the guess is wrong.
        "mbox-owner" => {
            let account = lookup_user(user).expect("passwd").expect("user exists");
            let opts = MboxOptions {
                owner: Some(MailboxOwner {
                    user: account.name,
                    uid: account.uid,
                    gid: account.gid,
                    mail_gid: Some(mail_gid()),
                }),
                ..MboxOptions::default()
            };
            match deliver_to(Path::new(&pattern), &opts) {
                Ok(()) => Outcome::Delivered { reply: None },
                Err(f) => Outcome::Failed(f),
            }
        }
        other => panic!("unknown kind {other}"),
    };
    match outcome {
        Outcome::Delivered { .. } => println!("OUTCOME delivered"),
        Outcome::Failed(f) => println!(
            "OUTCOME failed {} {} {}",
            if f.permanent {
                "permanent"
            } else {
                "temporary"
            },
            f.status,
            f.reason
        ),
    }
}

#[test]
fn a_daemon_with_only_cap_chown_gives_a_new_mbox_to_user_and_mail_and_appends() {
    if !can_run("a_daemon_with_only_cap_chown_gives_a_new_mbox_to_user_and_mail_and_appends") {
        return;
    }
    let daemon = TestUser::system();
    let user = TestUser::new();
    let spool = mail_spool();
    let pattern = format!("{}/%u", spool.path().display());
    let mbox = spool.path().join(&user.name);

    assert_eq!(
        deliver_as_daemon(&daemon, "mbox", &pattern, &user.name),
        "delivered"
    );
    assert_eq!(owner_of(&mbox), (user.uid, mail_gid()));
    assert_eq!(mode(&mbox), 0o660);
    let read = user.run(&["cat", &mbox.display().to_string()]);
    assert!(read.status.success(), "the user reads their mbox");
    assert_eq!(entries(&String::from_utf8_lossy(&read.stdout)), 1);

    assert_eq!(
        deliver_as_daemon(&daemon, "mbox", &pattern, &user.name),
        "delivered"
    );
    assert_eq!(entries(&std::fs::read_to_string(&mbox).expect("read")), 2);
    assert_eq!(
        (owner_of(&mbox), mode(&mbox)),
        ((user.uid, mail_gid()), 0o660)
    );
}

#[test]
fn a_daemon_with_only_cap_chown_keeps_access_to_a_var_mail_maildir_through_group_mail() {
    if !can_run(
        "a_daemon_with_only_cap_chown_keeps_access_to_a_var_mail_maildir_through_group_mail",
    ) {
        return;
    }
    let daemon = TestUser::system();
    let user = TestUser::new();
    let spool = mail_spool();
    let pattern = format!("{}/%u/", spool.path().display());
    let maildir = spool.path().join(&user.name);

    for n in 1..=2 {
        assert_eq!(
            deliver_as_daemon(&daemon, "maildir", &pattern, &user.name),
            "delivered"
        );
        assert_eq!(names(&maildir.join("new")).len(), n);
    }
    for d in ["", "tmp", "new", "cur"] {
        let d = maildir.join(d);
        assert_eq!(owner_of(&d), (user.uid, mail_gid()), "{}", d.display());
        assert_eq!(mode(&d), 0o2770, "{}", d.display());
    }
    let file = maildir.join("new").join(&names(&maildir.join("new"))[0]);
    assert_eq!(
        (owner_of(&file), mode(&file)),
        ((user.uid, mail_gid()), 0o660)
    );
    let read = user.run(&["cat", &file.display().to_string()]);
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "Subject: hi\n\nbody\n"
    );
    assert!(names(&maildir.join("tmp")).is_empty());
}

#[test]
fn a_daemon_that_cannot_reach_a_home_maildir_says_why_and_retries() {
    if !can_run("a_daemon_that_cannot_reach_a_home_maildir_says_why_and_retries") {
        return;
    }
    let daemon = TestUser::system();
    let user = TestUser::new();
    set_mode(&user.home, 0o700);
    let outcome = deliver_as_daemon(&daemon, "maildir", "~/Maildir/", &user.name);
    let home = user.home.display();
    assert!(
        outcome.starts_with(&format!(
            "failed temporary 4.3.0 {home}: Permission denied (os error 13): the daemon (uid {}, groups {}, mail) cannot search it; fix: ",
            daemon.uid, daemon.name
        )),
        "{outcome}"
    );
    assert!(outcome.contains("ProtectHome="), "{outcome}");
    assert!(!user.home.join("Maildir").exists());
}

#[test]
fn a_daemon_that_may_not_chown_after_all_fails_temporarily_and_leaves_nothing() {
    if !can_run("a_daemon_that_may_not_chown_after_all_fails_temporarily_and_leaves_nothing") {
        return;
    }
    let daemon = TestUser::system();
    let user = TestUser::new();
    let spool = mail_spool();
    let mbox = spool.path().join(&user.name);
    let outcome = deliver_as(
        &daemon,
        false,
        "mbox-owner",
        &mbox.display().to_string(),
        &user.name,
    );
    let p = mbox.display();
    assert_eq!(
        outcome,
        format!(
            "failed temporary 4.3.0 {p}: cannot give it to its user: Operation not permitted \
             (os error 1): the daemon (uid {}, groups {}, mail) may not change owners; fix: run \
             it as root or with CAP_CHOWN (AmbientCapabilities=CAP_CHOWN in the unit), or create \
             it yourself: chown {}:mail {p} && chmod 0660 {p}",
            daemon.uid, daemon.name, user.name
        )
    );
    assert!(
        names(spool.path()).is_empty(),
        "the half-made mbox is removed"
    );
}

#[test]
fn a_daemon_that_cannot_write_the_spool_names_the_directory() {
    if !can_run("a_daemon_that_cannot_write_the_spool_names_the_directory") {
        return;
    }
    let daemon = TestUser::system();
    let user = TestUser::new();
    let spool = mail_spool();
    set_mode(spool.path(), 0o755);
    let pattern = format!("{}/%u", spool.path().display());
    let outcome = deliver_as_daemon(&daemon, "mbox", &pattern, &user.name);
    assert_eq!(
        outcome,
        format!(
            "failed temporary 4.3.0 {}: Permission denied (os error 13): the daemon (uid {}, \
             groups {}, mail) cannot create files in it; fix: give the daemon's user or one of \
             its groups access to it, or choose a mailbox path the daemon can reach",
            spool.path().display(),
            daemon.uid,
            daemon.name
        )
    );
    assert!(names(spool.path()).is_empty());
}

#[test]
fn a_private_mbox_the_daemon_cannot_open_names_the_chown_and_chmod_that_fix_it() {
    if !can_run("a_private_mbox_the_daemon_cannot_open_names_the_chown_and_chmod_that_fix_it") {
        return;
    }
    let daemon = TestUser::system();
    let user = TestUser::new();
    let spool = mail_spool();
    let mbox = spool.path().join(&user.name);
    std::fs::write(&mbox, b"old\n").expect("write");
    chown(&mbox, user.uid, user.gid);
    set_mode(&mbox, 0o600);
    let pattern = format!("{}/%u", spool.path().display());
    let outcome = deliver_as_daemon(&daemon, "mbox", &pattern, &user.name);
    let p = mbox.display();
    assert_eq!(
        outcome,
        format!(
            "failed temporary 4.2.0 {p}: Permission denied (os error 13): the daemon (uid {}, \
             groups {}, mail) cannot open it; fix: chown {}:mail {p} && chmod 0660 {p}",
            daemon.uid, daemon.name, user.name
        )
    );
    assert_eq!(std::fs::read(&mbox).expect("read"), b"old\n");
    assert_eq!(
        (owner_of(&mbox), mode(&mbox)),
        ((user.uid, user.gid), 0o600)
    );
}

#[test]
fn a_fifo_the_daemon_may_not_even_open_is_refused_as_a_fifo() {
    if !can_run("a_fifo_the_daemon_may_not_even_open_is_refused_as_a_fifo") {
        return;
    }
    let daemon = TestUser::system();
    let user = TestUser::new();
    let spool = mail_spool();
    let mbox = spool.path().join(&user.name);
    assert!(Command::new("mkfifo")
        .arg(&mbox)
        .status()
        .expect("mkfifo")
        .success());
    chown(&mbox, user.uid, mail_gid());
    set_mode(&mbox, 0o640);
    let pattern = format!("{}/%u", spool.path().display());
    let outcome = deliver_as_daemon(&daemon, "mbox", &pattern, &user.name);
    assert!(
        outcome.starts_with(&format!(
            "failed temporary 4.2.0 {}: is a FIFO, not a regular file: refusing to write; fix: ",
            mbox.display()
        )),
        "{outcome}"
    );
}
