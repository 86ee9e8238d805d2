//! End to end: `mailer sendmail` never loses a message. With the daemon up it submits over
//! the local submission socket, which names the submitter by uid; with the daemon down it
//! keeps the message in `offline/`, and the daemon delivers it once when it starts. Files in
//! `offline/` that intake refuses are set aside with a reason, never delivered, never
//! dropped silently.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mailer_testkit::config::TestConfig;
use mailer_testkit::daemon::{eventually, free_port, Daemon};

const BIN: &str = env!("CARGO_BIN_EXE_mailer");

/// A local user that exists on any Debian-like system.
const LOCAL_USER: &str = "nobody";

/// What cron hands over: LF line ends, no From, Date or Message-ID. The body has a line
/// starting with a dot and UTF-8, which must arrive exactly as written.
const CRON_MAIL: &str = "To: nobody\n\
                         Subject: Cron <root@box> run-parts /etc/cron.daily\n\
                         \n\
                         /etc/cron.daily/logrotate: ok\n\
                         .hidden line\n\
                         café: 3 €\n";
const CRON_BODY: &str = "/etc/cron.daily/logrotate: ok\n.hidden line\ncafé: 3 €\n";

/// A daemon delivering `for = "local"` to `<dir>/mail/%u`. Its directory is traversable by
/// every user, as /var/spool is, so that any user can reach the queue directory.
struct Setup {
    dir: tempfile::TempDir,
    daemon: Daemon,
}

impl Setup {
    /// The daemon has run once (its queue exists, as on any installed system) and is down.
    fn stopped() -> Setup {
        let mut s = Setup::running();
        s.stop();
        s
    }

    fn running() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let config = TestConfig::new(dir.path(), free_port()).local_mail(&dir.path().join("mail"));
        let daemon = config.start(Path::new(BIN));
        Setup { dir, daemon }
    }

    fn stop(&mut self) {
        let status = self.daemon.terminate(Duration::from_secs(10));
        assert!(status.success(), "{}", self.daemon.log());
    }

    fn start(&mut self) {
        self.daemon.restart();
    }

    fn offline_dir(&self) -> PathBuf {
        self.dir.path().join("queue/offline")
    }

    /// Everything in offline/, dot files included.
    fn offline_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.offline_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    fn mbox(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user)
    }

    /// The mbox once it holds a message, else a failure with the daemon's log.
    fn wait_for_mbox(&self, user: &str) -> String {
        let path = self.mbox(user);
        eventually(Duration::from_secs(20), || {
            fs::read_to_string(&path)
                .ok()
                .filter(|t| t.ends_with("\n\n"))
        })
        .unwrap_or_else(|| {
            panic!(
                "{} got no message within 20 s:\n{}",
                path.display(),
                self.daemon.log()
            )
        })
    }

    /// Waits (bounded) until offline/ is empty.
    fn wait_until_offline_is_empty(&self) {
        let emptied = eventually(Duration::from_secs(20), || {
            self.offline_files().is_empty().then_some(())
        });
        assert!(
            emptied.is_some(),
            "offline/ still holds {:?}:\n{}",
            self.offline_files(),
            self.daemon.log()
        );
    }

    /// Restarts the daemon and gives it time to pick up and deliver anything left over: a
    /// message delivered once must not come again.
    fn assert_delivered_once_across_a_restart(&mut self, user: &str) {
        let queue = self.dir.path().join("queue");
        // The restart is a kill -9: wait until the delivery is recorded, since one still in
        // flight at a crash may rightly be repeated (README, "Which duplicates remain").
        self.wait_until_queue_is_empty(&queue);
        self.start();
        self.wait_until_queue_is_empty(&queue);
        std::thread::sleep(Duration::from_secs(3));
        let mbox = fs::read_to_string(self.mbox(user)).unwrap();
        assert_eq!(messages_in(&mbox), 1, "{mbox}\n{}", self.daemon.log());
        assert!(self.offline_files().is_empty());
    }

    fn wait_until_queue_is_empty(&self, queue: &Path) {
        // Bounded generously: on a loaded 2-core machine a restart and one delivery can take
        // several seconds.
        eventually(Duration::from_secs(30), || {
            self.daemon.queued_messages(queue).is_empty().then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "the queue still holds {:?}:\n{}",
                self.daemon.queued_messages(queue),
                self.daemon.log()
            )
        });
    }

    fn sendmail(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(&self.daemon.config)
            .arg("sendmail")
            .args(args)
            .env_remove("MAILER_CONFIG");
        command
    }
}

/// Messages in an mbox: one separator line each.
fn messages_in(mbox: &str) -> usize {
    mbox.lines().filter(|l| l.starts_with("From ")).count()
}

/// Runs `command` with `stdin` as standard input, bounded in time.
fn run_with_stdin(command: Command, stdin: &[u8]) -> Output {
    mailer_testkit::daemon::run_with_stdin(command, stdin, Duration::from_secs(30)).0
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The path `mailer sendmail` says it kept the message in.
fn kept_in(output: &Output, offline_dir: &Path) -> PathBuf {
    let err = stderr(output);
    let prefix = format!(
        "mailer: the mail daemon is not running; message kept in {}/",
        offline_dir.display()
    );
    let rest = err
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("sendmail does not say where the message went: {err}"));
    let (name, tail) = rest.split_once(' ').expect("a sentence after the path");
    assert_eq!(tail, "for delivery when it starts\n", "{err}");
    assert_eq!(name.len(), 32, "128 random bits in hex: {name}");
    assert!(name.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    offline_dir.join(name)
}

/// The user running the tests: uid and login name.
fn me() -> (u32, String) {
    // SAFETY: getuid cannot fail; getpwuid returns static storage or null, read at once.
    unsafe {
        let uid = libc::getuid();
        let pw = libc::getpwuid(uid);
        assert!(!pw.is_null(), "the test user has a passwd entry");
        let login = std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned();
        (uid, login)
    }
}

/// The header section and body of the only message in an mbox.
fn header_and_body(mbox: &str) -> (&str, &str) {
    let (_separator, rest) = mbox.split_once('\n').expect("a separator line");
    let end = rest.find("\n\n").expect("a header section") + 1;
    (&rest[..end], &rest[end + 1..])
}

#[test]
fn sendmail_keeps_the_message_while_the_daemon_is_down_and_the_daemon_delivers_it_at_start() {
    let mut s = Setup::stopped();
    let out = run_with_stdin(s.sendmail(&["-t"]), CRON_MAIL.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let kept = kept_in(&out, &s.offline_dir());
    assert_eq!(
        s.offline_files(),
        std::slice::from_ref(&kept),
        "no temporary file is left"
    );
    let meta = fs::metadata(&kept).unwrap();
    assert_eq!(
        meta.mode() & 0o7777,
        0o644,
        "readable by a daemon of its own user"
    );
    assert_eq!(meta.uid(), me().0, "owned by the submitter");
    let file = fs::read(&kept).unwrap();
    let (_, login) = me();
    assert!(
        file.starts_with(
            format!("mailer-offline 1\nfrom <{login}@mx.test>\nto <{LOCAL_USER}@mx.test>\n\n")
                .as_bytes()
        ),
        "{}",
        String::from_utf8_lossy(&file)
    );

    s.start();
    let mbox = s.wait_for_mbox(LOCAL_USER);
    assert_eq!(messages_in(&mbox), 1, "{mbox}");
    let (header, body) = header_and_body(&mbox);
    let (uid, login) = me();
    assert!(
        header.starts_with(&format!(
            "Received: from mx.test (userid {uid} {login})\n\tby mx.test (mailer) with ESMTP id "
        )),
        "{mbox}"
    );
    assert!(header.contains("\nSubject: Cron <root@box> run-parts /etc/cron.daily\n"));
    assert!(
        header.contains(&format!("\nFrom: {login}@mx.test\n")),
        "{mbox}"
    );
    assert_eq!(body, format!("{CRON_BODY}\n"), "the body byte for byte");
    s.wait_until_offline_is_empty();
    assert!(s.daemon.log().contains("offline submission picked up"));
    s.assert_delivered_once_across_a_restart(LOCAL_USER);
}

#[test]
fn sendmail_submits_over_the_socket_naming_the_submitter_and_nothing_is_kept_offline() {
    let mut s = Setup::running();
    let out = run_with_stdin(s.sendmail(&["-t"]), CRON_MAIL.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let socket = s.dir.path().join("queue/submit.sock");
    assert_eq!(
        fs::metadata(&socket).unwrap().mode() & 0o777,
        0o666,
        "every user may submit"
    );
    let queue_mode = fs::metadata(s.dir.path().join("queue")).unwrap().mode() & 0o7777;
    assert_eq!(queue_mode, 0o711, "reachable, not listable");
    let offline_mode = fs::metadata(s.offline_dir()).unwrap().mode() & 0o7777;
    assert_eq!(offline_mode, 0o1733);

    let mbox = s.wait_for_mbox(LOCAL_USER);
    let (header, body) = header_and_body(&mbox);
    let (uid, login) = me();
    assert!(
        header.starts_with(&format!(
            "Received: from mx.test (userid {uid} {login})\n\tby mx.test (mailer) with ESMTP id "
        )),
        "{mbox}"
    );
    assert_eq!(body, format!("{CRON_BODY}\n"));
    assert!(s.offline_files().is_empty());
    s.assert_delivered_once_across_a_restart(LOCAL_USER);
}

/// A local account made for one test, removed (with its home) when the test ends.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    /// `None` (with the reason printed) where accounts cannot be made: not root, or no
    /// useradd.
    fn create() -> Option<TestUser> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: making a user needs root");
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("mlt{:x}{:x}", std::process::id(), nanos);
        let made = Command::new("useradd")
            .args(["--create-home", "--shell", "/usr/sbin/nologin", &name])
            .output();
        match made {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!("useradd {name} failed: {}", stderr(&out)),
            Err(e) => {
                eprintln!("skipped: useradd is not available ({e})");
                return None;
            }
        }
        let c_name = std::ffi::CString::new(name.clone()).unwrap();
        // SAFETY: getpwnam returns static storage or null, read at once.
        let ids = unsafe {
            let pw = libc::getpwnam(c_name.as_ptr());
            (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
        };
        // Made before the check, so that the account is removed whatever happens.
        let (uid, gid) = ids.unwrap_or((u32::MAX, u32::MAX));
        let user = TestUser { name, uid, gid };
        assert!(ids.is_some(), "{} has no passwd entry", user.name);
        Some(user)
    }

    /// `command` run as this user, with its groups.
    fn run(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("setpriv");
        wrapped
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg(command.get_program())
            .args(command.get_args())
            .env_remove("MAILER_CONFIG");
        wrapped
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel")
            .args(["-r", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn an_unprivileged_user_submits_under_their_own_uid_with_the_daemon_down_then_up() {
    let Some(user) = TestUser::create() else {
        return;
    };
    let mut s = Setup::stopped();
    let message = format!("To: {}\nSubject: from a user\n\nwhile down\n", user.name);
    let out = run_with_stdin(user.run(&s.sendmail(&["-t"])), message.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let kept = kept_in(&out, &s.offline_dir());
    assert_eq!(
        fs::metadata(&kept).unwrap().uid(),
        user.uid,
        "the file is the user's: the daemon takes its owner as the submitter"
    );

    s.start();
    let mbox = s.wait_for_mbox(&user.name);
    let received = format!(
        "Received: from mx.test (userid {} {})\n\tby mx.test (mailer) with ESMTP id ",
        user.uid, user.name
    );
    let (header, body) = header_and_body(&mbox);
    assert!(header.starts_with(&received), "{mbox}");
    assert!(
        header.contains(&format!("\nFrom: {}@mx.test\n", user.name)),
        "{mbox}"
    );
    assert_eq!(body, "while down\n\n");
    s.wait_until_offline_is_empty();

    // Up: over the socket, the kernel names the same user.
    let message = format!("To: {}\nSubject: again\n\nwhile up\n", user.name);
    let out = run_with_stdin(user.run(&s.sendmail(&["-t"])), message.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let mbox = eventually(Duration::from_secs(20), || {
        fs::read_to_string(s.mbox(&user.name))
            .ok()
            .filter(|t| messages_in(t) == 2 && t.ends_with("\n\n"))
    })
    .unwrap_or_else(|| panic!("the second message did not arrive:\n{}", s.daemon.log()));
    let second = &mbox[mbox.rfind("\nFrom ").expect("two messages") + 1..];
    let (header, body) = header_and_body(second);
    assert!(header.starts_with(&received), "{second}");
    assert_eq!(body, "while up\n\n");
    assert!(s.offline_files().is_empty());
}

#[test]
fn refused_offline_files_are_set_aside_with_a_reason_listed_and_never_delivered() {
    let mut s = Setup::stopped();
    let dir = s.offline_dir();
    let envelope = format!("mailer-offline 1\nfrom <root@mx.test>\nto <{LOCAL_USER}@mx.test>\n\n");
    // bare_newlines = "reject" (the default): a bare LF in the message.
    fs::write(
        dir.join("bare-lf"),
        format!("{envelope}Subject: bare\r\n\r\nbare\nLF\r\n"),
    )
    .unwrap();
    fs::write(
        dir.join("no-sender"),
        format!("mailer-offline 1\nto <{LOCAL_USER}@mx.test>\n\nSubject: x\r\n\r\nx\r\n"),
    )
    .unwrap();
    // A link to a well-formed submission someone else wrote elsewhere.
    let elsewhere = s.dir.path().join("elsewhere");
    let valid = format!("{envelope}Subject: via a link\r\n\r\nnot for you\r\n");
    fs::write(&elsewhere, &valid).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("link")).unwrap();
    // A file still being written (dot name) is left alone.
    fs::write(dir.join(".partial"), &valid).unwrap();

    s.start();
    let left = eventually(Duration::from_secs(20), || {
        let files = s.offline_files();
        (files == [dir.join(".partial")]).then_some(())
    });
    assert!(
        left.is_some(),
        "{:?}\n{}",
        s.offline_files(),
        s.daemon.log()
    );

    let listed = s.daemon.cli(&["queue", "list"]);
    assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    let corrupt = s.dir.path().join("queue/corrupt");
    let (uid, login) = me();
    for (name, reason) in [
        (
            "offline-bare-lf",
            "refused: message: 550 5.6.0 Message contains bare CR or LF",
        ),
        (
            "offline-no-sender",
            "refused: the envelope has no `from` line",
        ),
        ("offline-link", "refused: a symbolic link"),
    ] {
        let line = format!(
            "  {}: offline submission from userid {uid} ({login}) {reason}",
            corrupt.join(name).display()
        );
        assert!(text.contains(&line), "{line}\nnot in:\n{text}");
    }
    assert_eq!(
        s.daemon
            .log()
            .matches("offline submission set aside")
            .count(),
        3,
        "each logged once:\n{}",
        s.daemon.log()
    );
    assert!(fs::symlink_metadata(corrupt.join("offline-link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_to_string(&elsewhere).unwrap(), valid, "untouched");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !s.mbox(LOCAL_USER).exists(),
        "nothing is delivered from them"
    );
}

#[test]
fn an_unknown_local_user_still_exits_67_with_the_daemon_up() {
    let s = Setup::running();
    let out = run_with_stdin(
        s.sendmail(&["no-such-user"]),
        b"Subject: to nobody known\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(67), "EX_NOUSER: {}", stderr(&out));
    assert!(
        stderr(&out).contains("recipient no-such-user@mx.test refused: 550 5.1.1 "),
        "{}",
        stderr(&out)
    );
    assert!(
        s.offline_files().is_empty(),
        "a refusal is not kept offline"
    );
}

#[test]
fn a_daemon_that_does_not_greet_within_5_s_is_taken_for_absent() {
    let s = Setup::stopped();
    // Something holds the socket and accepts, but never speaks (a daemon stuck at start).
    let socket = s.dir.path().join("queue/submit.sock");
    let _ = fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let holder = std::thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let started = Instant::now();
    let out = run_with_stdin(s.sendmail(&[LOCAL_USER]), b"Subject: x\n\nkept\n");
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("mailer: the mail daemon did not take the message (")
            && err.contains("no greeting within 5 s); message kept in "),
        "{err}"
    );
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    assert_eq!(s.offline_files().len(), 1);
    drop(holder.join());
}

#[test]
fn sendmail_exits_75_when_the_daemon_is_down_and_the_message_cannot_be_kept() {
    let mut s = Setup::stopped();
    fs::remove_dir(s.offline_dir()).unwrap();
    let out = run_with_stdin(s.sendmail(&[LOCAL_USER]), b"Subject: x\n\nx\n");
    assert_eq!(out.status.code(), Some(75), "EX_TEMPFAIL: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("the mail daemon is not running"), "{err}");
    assert!(err.contains("NOT sent"), "{err}");
    // The daemon makes the directory again at its next start.
    s.start();
    assert!(s.offline_dir().is_dir());
}
