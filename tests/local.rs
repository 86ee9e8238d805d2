//! End to end: local delivery through the real daemon — aliases(5) to mboxes and to the
//! upstream relay, `mailer sendmail` (and the `sendmail` symlink) as cron uses it, and the
//! refusal of unknown local users at RCPT.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};
use mailer_testkit::certs::TestCa;
use mailer_testkit::config::{write_secrets, TestConfig};
use mailer_testkit::daemon::{eventually, free_port, run_with_stdin, Daemon};
use mailer_testkit::sink::{Received, Sink, SinkOptions};

const BIN: &str = env!("CARGO_BIN_EXE_mailer");

/// Local users that exist on any Debian-like system (`/etc/passwd`).
const LOCAL_USER: &str = "daemon";
const OTHER_LOCAL_USER: &str = "nobody";

/// Local mail to `<dir>/mail/%u` with aliases from `<dir>/aliases`; the rest is relayed over
/// STARTTLS with AUTH to `relay_port`, trusted through `<dir>/ca.pem`.
fn config(port: u16, dir: &Path, relay_port: u16) -> TestConfig {
    TestConfig::new(dir, port)
        .aliases(&dir.join("aliases"))
        .local_mail(&dir.join("mail"))
        .relay_to(
            "upstream",
            &[relay_port],
            &dir.join("secrets"),
            &dir.join("ca.pem"),
        )
        .retry("1h", "2h")
}

/// The files the configuration names: aliases, a 0600 secrets table and the test CA.
fn write_tables(dir: &Path, ca: &TestCa) {
    fs::write(
        dir.join("aliases"),
        format!(
            "# system mail goes to the admin, here and away\n\
             root: {LOCAL_USER},\n\tpim@example.org\n\
             postmaster: root\n"
        ),
    )
    .unwrap();
    write_secrets(&dir.join("secrets"), "upstream", "relayuser", "s3cret");
    fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
}

/// A running daemon and the upstream relay it forwards to, in one temp directory.
struct Setup {
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    sink: Sink,
    daemon: Daemon,
}

impl Setup {
    fn start() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let ca = TestCa::new();
        let sink = runtime.block_on(Sink::start(SinkOptions {
            tls: Some(ca.issue(&["127.0.0.1"])),
            require_tls: true,
            auth: Some(("relayuser".into(), "s3cret".into())),
            ..SinkOptions::default()
        }));
        write_tables(dir.path(), &ca);
        let daemon = config(free_port(), dir.path(), sink.port()).start(Path::new(BIN));
        Setup {
            dir,
            runtime,
            sink,
            daemon,
        }
    }

    fn mbox(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user)
    }

    /// The mbox once it holds `n` messages (bounded wait), else a failure with the log.
    fn wait_for_mbox(&self, user: &str, n: usize) -> String {
        let path = self.mbox(user);
        eventually(Duration::from_secs(20), || {
            let text = fs::read_to_string(&path).ok()?;
            (text.matches("\n\nFrom ").count() + usize::from(text.starts_with("From ")) >= n
                && text.ends_with("\n\n"))
            .then_some(text)
        })
        .unwrap_or_else(|| {
            panic!(
                "{} did not get {n} message(s) within 20 s:\n{}",
                path.display(),
                self.daemon.log()
            )
        })
    }

    fn relayed(&self, n: usize) -> Vec<Received> {
        self.runtime
            .block_on(self.sink.wait_for(n, Duration::from_secs(20)))
    }
}

fn client(port: u16) -> SmtpTransport {
    SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

fn envelope(from: &str, to: &str) -> Envelope {
    Envelope::new(Some(from.parse().unwrap()), vec![to.parse().unwrap()]).unwrap()
}

fn sendmail(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(config)
        .arg("sendmail")
        .args(args)
        .env_remove("MAILER_CONFIG");
    command
}

/// The login name of the user running the tests (the `From` sendmail adds).
fn login() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; read at once.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        assert!(!pw.is_null(), "the test user has a passwd entry");
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

/// `From <sender> <asctime>` as mbox separators are written, e.g.
/// `From a@b.test Wed Nov 25 13:13:37 2026`.
fn assert_separator(line: &str, sender: &str) {
    let date = line
        .strip_prefix(&format!("From {sender} "))
        .unwrap_or_else(|| panic!("separator {line:?} does not name {sender}"));
    let words: Vec<&str> = date.split_whitespace().collect();
    assert_eq!(words.len(), 5, "asctime date in {line:?}");
    assert!(
        ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].contains(&words[0]),
        "{line:?}"
    );
    assert_eq!(date.len(), 24, "asctime is 24 characters: {line:?}");
}

/// The uid of a local account.
fn uid_of(user: &str) -> u32 {
    let name = std::ffi::CString::new(user).unwrap();
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(!pw.is_null(), "{user} has a passwd entry");
        (*pw).pw_uid
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const ALERT: &[u8] = b"From: Mastodon <notifications@ublog.tech>\r\n\
To: root@mx.test\r\n\
Subject: disk almost full\r\n\
Message-ID: <alert@ublog.tech>\r\n\
\r\n\
/var is at 97%.\r\n\
From here on, mboxrd quotes this line.\r\n\
.A line with a leading dot\r\n";

#[test]
fn root_alias_reaches_a_local_mbox_and_the_upstream_relay() {
    let s = Setup::start();
    // The client always writes CRLF before the final dot: give it the message without its
    // last line ending.
    let response = client(s.daemon.port)
        .send_raw(
            &envelope("notifications@ublog.tech", "root@mx.test"),
            &ALERT[..ALERT.len() - 2],
        )
        .expect("the daemon accepts mail for root");
    assert_eq!(response.code().to_string(), "250");

    // The local copy: separator, our Received header, the message with LF line ends and
    // mboxrd quoting, then a blank line.
    let mbox = s.wait_for_mbox(LOCAL_USER, 1);
    let (separator, rest) = mbox.split_once('\n').unwrap();
    assert_separator(separator, "notifications@ublog.tech");
    // The client names itself by this machine's host name in EHLO.
    let received = rest
        .strip_prefix("Received: from ")
        .and_then(|r| r.split_once(" ([127.0.0.1])\n\tby mx.test (mailer) with ESMTP id "));
    assert!(received.is_some(), "{mbox}");
    assert!(rest.contains("\n\tfor <root@mx.test>; "), "{mbox}");
    let expected_tail = String::from_utf8(ALERT.to_vec())
        .unwrap()
        .replace("\r\n", "\n")
        .replace("\nFrom here", "\n>From here")
        + "\n";
    assert!(mbox.ends_with(&expected_tail), "{mbox}");
    let received_end = mbox.len() - expected_tail.len();
    assert_eq!(
        mbox[separator.len() + 1..received_end]
            .matches("Received:")
            .count(),
        1,
        "{mbox}"
    );
    assert!(!s.mbox(OTHER_LOCAL_USER).exists());
    let meta = fs::metadata(s.mbox(LOCAL_USER)).unwrap();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // Debian's convention: the user's, group mail, so a daemon in group mail can append.
        assert_eq!(meta.mode() & 0o777, 0o660, "a new mbox is <user>:mail 0660");
        assert_eq!(
            meta.uid(),
            uid_of(LOCAL_USER),
            "a daemon running as root chowns the mbox"
        );
    } else {
        assert_eq!(
            meta.mode() & 0o777,
            0o600,
            "a daemon that cannot chown keeps the mbox private"
        );
    }

    // The remote copy, over verified TLS with AUTH, to the alias's remote target only.
    let relayed = s.relayed(1);
    assert_eq!(relayed.len(), 1, "{}", s.daemon.log());
    let upstream = &relayed[0];
    assert_eq!(upstream.mail_from, "notifications@ublog.tech");
    assert_eq!(upstream.rcpt_to, ["pim@example.org"]);
    assert!(upstream.tls);
    assert_eq!(upstream.auth_user.as_deref(), Some("relayuser"));
    assert!(upstream.data.starts_with(b"Received: from "));
    assert!(
        upstream.data.ends_with(ALERT),
        "{}",
        String::from_utf8_lossy(&upstream.data)
    );
}

#[test]
fn sendmail_t_i_delivers_to_a_local_user_and_drops_bcc() {
    let s = Setup::start();
    // What cron hands over: LF line ends, no From/Date/Message-ID, a lone dot mid-body.
    let message = format!(
        "To: Nobody <{OTHER_LOCAL_USER}>\n\
         Bcc: {LOCAL_USER}@mx.test\n\
         Subject: Cron <root@box> run-parts /etc/cron.daily\n\
         \n\
         first line\n\
         .\n\
         From the log: ok\n"
    );
    let (out, _) = run_with_stdin(
        sendmail(&s.daemon.config, &["-t", "-i"]),
        message.as_bytes(),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        stderr(&out)
    );

    let user = login();
    for mailbox in [OTHER_LOCAL_USER, LOCAL_USER] {
        let mbox = s.wait_for_mbox(mailbox, 1);
        let (separator, rest) = mbox.split_once('\n').unwrap();
        assert_separator(separator, &format!("{user}@mx.test"));
        let header_end = rest.find("\n\n").expect("header and body") + 1;
        let header = &rest[..header_end];
        let body = &rest[header_end + 1..];
        // Over the submission socket: the kernel names the submitter.
        assert!(
            header.starts_with(&format!(
                "Received: from mx.test (userid {} {user})\n",
                uid_of(&user)
            )),
            "{mbox}"
        );
        assert!(
            header.contains(&format!("\nTo: Nobody <{OTHER_LOCAL_USER}>\n")),
            "{mbox}"
        );
        assert!(!header.contains("Bcc"), "Bcc is removed: {mbox}");
        assert!(
            header.contains(&format!("\nFrom: {user}@mx.test\n")),
            "{mbox}"
        );
        assert!(header.contains("\nDate: "), "{mbox}");
        assert!(header.contains("\nMessage-ID: <"), "{mbox}");
        assert!(header.contains("@mx.test>\n"), "{mbox}");
        assert_eq!(body, "first line\n.\n>From the log: ok\n\n", "{mbox}");
    }
    assert!(s.relayed(0).is_empty());
}

#[test]
fn sendmail_symlink_takes_sender_name_and_recipients_from_arguments() {
    let s = Setup::start();
    let link = s.dir.path().join("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let mut command = Command::new(&link);
    command
        .args([
            "-oi",
            "-f",
            "backup",
            "-F",
            "Nightly Backup",
            "-oem",
            "postmaster",
        ])
        .env("MAILER_CONFIG", &s.daemon.config);
    // Without -i a lone dot would end the message; -oi keeps it.
    let (out, _) = run_with_stdin(
        command,
        b"Subject: backup done\n\n42 files\n.\nend\n",
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // postmaster -> root -> the local user and the remote address.
    let mbox = s.wait_for_mbox(LOCAL_USER, 1);
    let (separator, rest) = mbox.split_once('\n').unwrap();
    assert_separator(separator, "backup@mx.test");
    assert!(
        rest.contains("\nSubject: backup done\nFrom: Nightly Backup <backup@mx.test>\n"),
        "{mbox}"
    );
    assert!(rest.ends_with("\n\n42 files\n.\nend\n\n"), "{mbox}");
    let relayed = s.relayed(1);
    assert_eq!(relayed[0].mail_from, "backup@mx.test");
    assert_eq!(relayed[0].rcpt_to, ["pim@example.org"]);
}

#[test]
fn sendmail_without_i_ends_the_message_at_a_lone_dot() {
    let s = Setup::start();
    let (out, _) = run_with_stdin(
        sendmail(&s.daemon.config, &[OTHER_LOCAL_USER]),
        b"Subject: dot\n\nkept\n.\nnot read\n",
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mbox = s.wait_for_mbox(OTHER_LOCAL_USER, 1);
    assert!(mbox.ends_with("\n\nkept\n\n"), "{mbox}");
    assert!(!mbox.contains("not read"), "{mbox}");
}

/// A daemon that never ran has no queue to keep the message in: the caller is told at once
/// to retry (tests/offline.rs covers the daemon that is down after it ran).
#[test]
fn sendmail_exits_75_at_once_when_there_is_no_daemon_and_no_queue() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_tables(dir.path(), &ca);
    let config_path = dir.path().join("mailer.toml");
    fs::write(
        &config_path,
        config(free_port(), dir.path(), free_port()).render(),
    )
    .unwrap();
    let (out, elapsed) = run_with_stdin(
        sendmail(&config_path, &["root"]),
        b"Subject: lost?\n\nno\n",
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("the mail daemon is not running"), "{err}");
    assert!(err.contains("NOT sent"), "the caller is told: {err}");
    assert!(
        elapsed < Duration::from_secs(5),
        "nothing to wait for: {elapsed:?}"
    );
}

#[test]
fn unknown_local_recipient_is_refused_at_rcpt_with_550_5_1_1() {
    let s = Setup::start();
    let err = client(s.daemon.port)
        .send_raw(
            &envelope("someone@ublog.tech", "no-such-user@mx.test"),
            b"Subject: x\r\n\r\nx",
        )
        .unwrap_err();
    let text = err.to_string();
    assert!(err.is_permanent(), "{text}");
    assert_eq!(
        err.status().map(|c| c.to_string()).as_deref(),
        Some("550"),
        "{text}"
    );
    assert!(text.contains("5.1.1"), "{text}");

    // sendmail tells its caller which recipient does not exist, and sends to the others.
    let (out, _) = run_with_stdin(
        sendmail(&s.daemon.config, &["no-such-user", OTHER_LOCAL_USER]),
        b"Subject: half\n\nx\n",
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(67), "EX_NOUSER: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("recipient no-such-user@mx.test refused: 550 5.1.1 "),
        "{err}"
    );
    s.wait_for_mbox(OTHER_LOCAL_USER, 1);
    assert!(!s.mbox("no-such-user").exists());
    let queued = s.daemon.queued_messages(&s.dir.path().join("queue"));
    for env in queued {
        let text = fs::read_to_string(&env).unwrap();
        assert!(!text.contains("no-such-user"), "{text}");
    }
}

#[test]
fn sendmail_bs_relays_an_smtp_session_on_stdin_to_the_daemon() {
    let s = Setup::start();
    let session = format!(
        "EHLO script.test\r\n\
         MAIL FROM:<script@mx.test>\r\n\
         RCPT TO:<{OTHER_LOCAL_USER}@mx.test>\r\n\
         DATA\r\n\
         Subject: over -bs\r\n\r\nspoken SMTP\r\n.\r\n\
         QUIT\r\n"
    );
    let (out, _) = run_with_stdin(
        sendmail(&s.daemon.config, &["-bs"]),
        session.as_bytes(),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let replies = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(replies.starts_with("220 "), "{replies}");
    let codes: Vec<&str> = replies
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect();
    assert_eq!(
        codes,
        ["220", "250", "250", "250", "354", "250", "221"],
        "{replies}"
    );
    let mbox = s.wait_for_mbox(OTHER_LOCAL_USER, 1);
    assert_separator(mbox.lines().next().unwrap(), "script@mx.test");
    assert!(
        mbox.ends_with("\nSubject: over -bs\n\nspoken SMTP\n\n"),
        "{mbox}"
    );
}

/// `root: me@example.org` under a configuration that only delivers locally: the alias target
/// has no way out, so the sender is told (5.4.4) instead of the mail vanishing, and `mailer
/// config check` warns about the alias before any mail is sent.
#[test]
fn an_alias_to_a_domain_no_rule_routes_bounces_and_config_check_warns() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("aliases"),
        "# mail for root leaves this host\nroot: me@example.org\n",
    )
    .unwrap();
    let daemon = TestConfig::new(dir.path(), free_port())
        .aliases(&dir.path().join("aliases"))
        .local_mail(&dir.path().join("mail"))
        .start(Path::new(BIN));

    let check = daemon.cli(&["config", "check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    let warning = stderr(&check);
    assert!(
        warning.contains(&format!(
            "{}:2: alias `root` expands to me@example.org, which no match rule routes: mail to it will bounce (warning)",
            dir.path().join("aliases").display()
        )),
        "{warning}"
    );

    client(daemon.port)
        .send_raw(
            &envelope(&format!("{LOCAL_USER}@mx.test"), "root@mx.test"),
            b"Subject: disk alert\r\n\r\nsda1 is full",
        )
        .expect("accepted");
    let mbox = dir.path().join("mail").join(LOCAL_USER);
    let dsn = eventually(Duration::from_secs(20), || {
        fs::read_to_string(&mbox)
            .ok()
            .filter(|t| t.contains("Status: 5.4.4"))
    })
    .unwrap_or_else(|| panic!("no bounce for the sender:\n{}", daemon.log()));
    assert!(
        dsn.contains("Final-Recipient: rfc822; me@example.org"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Original-Recipient: rfc822; root@mx.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Subject: disk alert"), "{dsn}");
    let queue = dir.path().join("queue");
    assert!(
        eventually(Duration::from_secs(10), || daemon
            .queued_messages(&queue)
            .is_empty()
            .then_some(()))
        .is_some(),
        "nothing is left in the queue"
    );
}
