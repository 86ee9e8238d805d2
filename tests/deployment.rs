//! End to end: the daemon deployed as README's "Install" section deploys it and run as
//! config/mailer.service runs it — a system user in group `mail`, the queue directory it owns
//! (0711), mailboxes in a `root:mail 2775` directory, port numbers below 1024, CAP_CHOWN and
//! CAP_NET_BIND_SERVICE as its only capabilities — with two ordinary users sending through
//! `sendmail` and reading their mboxes. Everything lives in a private directory under /tmp:
//! the real /var/mail and /var/spool are not touched; the accounts are made for each test
//! and removed when it ends, failed or not.
//!
//! Needs root, useradd/userdel (passwd) and setpriv (util-linux); a machine without them, or
//! that cannot grant capabilities, makes each test say why and return.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};
use mailer_testkit::daemon::{eventually, Daemon, Wrapper};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");
const WAIT: Duration = Duration::from_secs(20);
/// CAP_NET_BIND_SERVICE (10) and CAP_CHOWN (0): what the unit grants.
const UNIT_CAPS: u64 = (1 << 10) | 1;
const CAP_CHOWN: u64 = 1;

// ---- the tests ------------------------------------------------------------------------------

#[test]
fn as_the_unit_runs_it_mail_reaches_debian_mboxes_only_their_owners_can_read() {
    let Some(host) = Host::prepare('u') else {
        return;
    };
    let config = host.config();
    let config_path = host.config_path();
    fs::write(&config_path, &config).unwrap();
    // Started as anyone else, a configuration naming `user` refuses to run.
    let out = host.run_as(&host.alice, &[BIN, "--config", &config_path, "serve"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "the daemon runs as uid {}, not as user `{}`",
            host.alice.uid, host.mailer.name
        )),
        "{}",
        text(&out)
    );
    // README: `sudo -u mailer mailer --config /etc/mailer/mailer.toml config check`.
    let out = host.run_as(
        &host.mailer,
        &[BIN, "--config", &config_path, "config", "check"],
    );
    assert!(out.status.success(), "{}", text(&out));

    let daemon = host.start_as_the_unit(&config);
    let status = proc_status(daemon.pid());
    assert_eq!(field(&status, "Uid"), four(host.mailer.uid));
    assert_eq!(caps(&status, "CapEff"), UNIT_CAPS, "{status}");

    host.deliveries_reach_mboxes_only_their_owners_read(&daemon);
}

#[test]
fn started_as_root_with_user_it_binds_a_low_port_then_runs_as_user_with_cap_chown_alone() {
    let Some(host) = Host::prepare('r') else {
        return;
    };
    let daemon = Daemon::start(Path::new(BIN), host.root(), host.port, &host.config());
    assert!(host.port < 1024);
    let pid = daemon.pid();
    let groups = host.groups_of(&host.mailer.name);
    let tasks: Vec<PathBuf> = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(tasks.len() > 1, "the runtime's workers are checked too");
    for task in tasks {
        let status = fs::read_to_string(task.join("status")).unwrap();
        assert_eq!(field(&status, "Uid"), four(host.mailer.uid), "{status}");
        assert_eq!(field(&status, "Gid"), four(host.mailer.gid), "{status}");
        let mut held: Vec<u32> = field(&status, "Groups")
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        held.sort();
        assert_eq!(held, groups, "{status}");
        assert!(groups.contains(&host.mail_gid), "{groups:?}");
        assert_eq!(caps(&status, "CapEff"), CAP_CHOWN, "{status}");
        assert_eq!(caps(&status, "CapPrm"), CAP_CHOWN, "{status}");
        assert_eq!(caps(&status, "CapInh"), 0, "{status}");
        assert_eq!(caps(&status, "CapAmb"), 0, "{status}");
        assert_eq!(caps(&status, "CapBnd"), CAP_CHOWN, "{status}");
        assert_eq!(field(&status, "NoNewPrivs"), "1", "{status}");
    }
    let log = daemon.log();
    assert!(log.contains("switched user; kept CAP_CHOWN only"), "{log}");
    assert!(!log.contains("running as root"), "{log}");
    // What it opened as root stays usable: the control socket serves root, reloads work.
    let socket = fs::metadata(host.root().join("run/control.sock")).unwrap();
    assert_eq!(socket.uid(), host.mailer.uid);
    let out = daemon.cli(&["reload"]);
    assert!(out.status.success(), "{}\n{}", text(&out), daemon.log());

    host.deliveries_reach_mboxes_only_their_owners_read(&daemon);
}

#[test]
fn mail_sent_with_sendmail_while_the_daemon_is_stopped_arrives_after_it_starts() {
    let Some(host) = Host::prepare('o') else {
        return;
    };
    let mut daemon = host.start_as_the_unit(&host.config());
    let status = daemon.terminate(WAIT);
    assert!(status.success(), "{}", daemon.log());

    let (out, elapsed) = host.sendmail_as(&host.alice, &host.alice, "written while stopped");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        elapsed < Duration::from_secs(5),
        "{elapsed:?}: {}",
        text(&out)
    );

    daemon.restart();
    let mbox = host.wait_for_mbox(&daemon, &host.alice, &["written while stopped"]);
    assert!(
        mbox.contains(&format!("From: {}@", host.alice.name)),
        "{mbox}"
    );
}

#[test]
fn a_symlink_hard_link_or_fifo_at_a_mailbox_leaves_the_mail_queued_with_the_reason() {
    let Some(host) = Host::prepare('p') else {
        return;
    };
    let daemon = host.start_as_the_unit(&host.config());
    let mbox = host.mbox(&host.alice);
    let victim = host.root().join("victim");
    fs::write(&victim, "untouched\n").unwrap();

    std::os::unix::fs::symlink(&victim, &mbox).unwrap();
    let via_symlink = send_smtp(host.port, &host.alice, "via a symlink");
    host.wait_queued_with(&daemon, &via_symlink, "symbolic link");

    fs::remove_file(&mbox).unwrap();
    let other = host.root().join("mail/other-name");
    fs::write(&other, "").unwrap();
    std::os::unix::fs::chown(&other, Some(host.alice.uid), Some(host.mail_gid)).unwrap();
    fs::set_permissions(&other, fs::Permissions::from_mode(0o660)).unwrap();
    fs::hard_link(&other, &mbox).unwrap();
    let via_link = send_smtp(host.port, &host.alice, "via a hard link");
    host.wait_queued_with(&daemon, &via_link, "hard link");

    fs::remove_file(&mbox).unwrap();
    run_ok(Command::new("mkfifo").arg(&mbox));
    std::os::unix::fs::chown(&mbox, Some(host.alice.uid), Some(host.mail_gid)).unwrap();
    let via_fifo = send_smtp(host.port, &host.alice, "via a FIFO");
    host.wait_queued_with(&daemon, &via_fifo, "FIFO");

    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched\n");
    assert_eq!(fs::read_to_string(&other).unwrap(), "");
    // README: /usr/bin/mailq is `mailer queue list`.
    let out = Command::new(host.root().join("bin/mailq"))
        .env("MAILER_CONFIG", host.config_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    for id in [&via_symlink, &via_link, &via_fifo] {
        assert!(listed.contains(id.as_str()), "{listed}");
    }
}

#[test]
fn the_embedded_configuration_serves_as_root_with_a_warning_and_as_an_ordinary_user() {
    let Some(host) = Host::prepare('e') else {
        return;
    };
    if TcpListener::bind("127.0.0.1:2525").is_err() {
        eprintln!("skipped: 127.0.0.1:2525, the embedded configuration's port, is taken");
        return;
    }
    for (runner, warned) in [(None, true), (Some(&host.alice), false)] {
        let dir = host.root().join(format!("embedded-{}", runner.is_some()));
        fs::create_dir(&dir).unwrap();
        let mut command = match runner {
            Some(user) => {
                std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
                let args = Wrapper::setpriv(user.uid, user.gid, &[]);
                let mut c = Command::new(&args[0]);
                c.args(&args[1..]).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let log = host
            .root()
            .join(format!("embedded-{}.log", runner.is_some()));
        let mut child = command
            .args(["serve", "--embedded"])
            .current_dir(&dir)
            .env_remove("MAILER_CONFIG")
            .env_remove("MAILER_LOG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let up = eventually(WAIT, || {
            std::net::TcpStream::connect("127.0.0.1:2525")
                .ok()
                .map(drop)
        });
        let logged = || fs::read_to_string(&log).unwrap_or_default();
        if up.is_none() {
            let _ = child.kill();
            panic!("serve --embedded did not listen:\n{}", logged());
        }
        send_smtp(2525, &host.alice, "embedded");
        let mbox = dir.join("mailer-state/mail").join(&host.alice.name);
        let delivered = eventually(WAIT, || {
            fs::read_to_string(&mbox)
                .ok()
                .filter(|m| m.contains("Subject: embedded"))
        });
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = eventually(WAIT, || child.try_wait().unwrap());
        assert!(delivered.is_some(), "{}:\n{}", mbox.display(), logged());
        assert!(status.is_some_and(|s| s.success()), "{}", logged());
        let warnings = logged()
            .matches("running as root, which is not the recommended deployment")
            .count();
        assert_eq!(warnings, usize::from(warned), "{}", logged());
        if warned {
            assert!(logged().contains("config/mailer.service"), "{}", logged());
        }
    }
}

// ---- the host: accounts, directories, configuration ----------------------------------------

/// A local account made for the test.
struct Account {
    name: String,
    uid: u32,
    gid: u32,
}

/// Removes the accounts (and their home directories) however the test ends. Declared before
/// the daemon, so it runs after the daemon is stopped: userdel refuses a user with processes.
struct Accounts(Vec<String>);

impl Drop for Accounts {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("userdel")
                .args(["-r", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The machine after README's install steps, in a private directory: `mailer` (a fresh system
/// user standing in for it), two mailbox users, the spool, the mailbox directory, the
/// runtime directory systemd would make, the `sendmail` and `mailq` symlinks.
struct Host {
    mailer: Account,
    alice: Account,
    bob: Account,
    mail_gid: u32,
    port: u16,
    _accounts: Accounts,
    dir: tempfile::TempDir,
}

impl Host {
    /// `None` (after saying why) where the machine cannot run the deployment. `tag` keeps the
    /// account names of tests running at once apart.
    fn prepare(tag: char) -> Option<Host> {
        if let Err(why) = can_deploy() {
            eprintln!("skipped: {why}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("mailer-deploy")
            .tempdir_in("/tmp")
            .unwrap();
        // Every user must be able to reach the mailboxes, the configuration and the binaries.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path();
        let stem = format!("mdep{}{tag}", std::process::id());
        let mut accounts = Accounts(Vec::new());

        // README: the group `mail` (Debian has it), the system user in it, the directories.
        let out = Command::new("groupadd")
            .args(["--system", "mail"])
            .output()
            .unwrap();
        // 9: the group exists (made by Debian, or by a test running beside this one).
        assert!(matches!(out.status.code(), Some(0 | 9)), "{}", text(&out));
        let mailer_name = format!("{stem}d");
        let spool = root.join("spool");
        accounts.0.push(mailer_name.clone());
        run_ok(Command::new("useradd").args([
            "--system",
            "--user-group",
            "--home-dir",
            spool.to_str().unwrap(),
            "--shell",
            "/usr/sbin/nologin",
            &mailer_name,
        ]));
        run_ok(Command::new("usermod").args(["-a", "-G", "mail", &mailer_name]));
        run_ok(Command::new("install").args([
            "-d",
            "-o",
            &mailer_name,
            "-g",
            &mailer_name,
            "-m",
            "0711",
            spool.to_str().unwrap(),
        ]));
        run_ok(Command::new("install").args([
            "-d",
            "-o",
            "root",
            "-g",
            "mail",
            "-m",
            "2775",
            root.join("mail").to_str().unwrap(),
        ]));
        // The unit's RuntimeDirectory=mailer (RuntimeDirectoryMode=0750).
        run_ok(Command::new("install").args([
            "-d",
            "-o",
            &mailer_name,
            "-g",
            &mailer_name,
            "-m",
            "0750",
            root.join("run").to_str().unwrap(),
        ]));
        fs::create_dir(root.join("bin")).unwrap();
        for link in ["sendmail", "mailq"] {
            std::os::unix::fs::symlink(BIN, root.join("bin").join(link)).unwrap();
        }
        fs::create_dir(root.join("home")).unwrap();
        let mut users = Vec::new();
        for suffix in ['a', 'b'] {
            let name = format!("{stem}{suffix}");
            accounts.0.push(name.clone());
            run_ok(Command::new("useradd").args([
                "--user-group",
                "--create-home",
                "--home-dir",
                root.join("home").join(&name).to_str().unwrap(),
                &name,
            ]));
            users.push(account(&name));
        }
        let bob = users.pop().expect("two users");
        let alice = users.pop().expect("two users");
        Some(Host {
            mailer: account(&mailer_name),
            alice,
            bob,
            mail_gid: gid_of_group("mail"),
            port: free_privileged_port(),
            _accounts: accounts,
            dir,
        })
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn config_path(&self) -> String {
        self.root().join("mailer.toml").display().to_string()
    }

    /// config/mailer.toml's shape: `user`, the spool, the runtime directory, one listener,
    /// mboxes in the mail directory.
    fn config(&self) -> String {
        let root = self.root().display();
        format!(
            "user = \"{user}\"\nhostname = \"mx.test\"\nqueue_dir = \"{root}/spool\"\n\
             control_socket = \"{root}/run/control.sock\"\n\n[[listen]]\naddress = \"127.0.0.1:{port}\"\n\n\
             [actions.local_mail]\nmbox = \"{root}/mail/%u\"\n\n[check]\ninterval = \"0\"\n\n\
             [[match]]\nfrom = \"local\"\nfor = \"local\"\naction = \"local_mail\"\n",
            user = self.mailer.name,
            port = self.port,
        )
    }

    fn start_as_the_unit(&self, config: &str) -> Daemon {
        let wrapper = Wrapper::as_the_unit(self.mailer.uid, self.mailer.gid, &[self.mail_gid]);
        Daemon::start_wrapped(Path::new(BIN), self.root(), self.port, config, wrapper)
    }

    fn mbox(&self, user: &Account) -> PathBuf {
        self.root().join("mail").join(&user.name)
    }

    /// Sorted supplementary groups of `name`, as `id -G` reports them.
    fn groups_of(&self, name: &str) -> Vec<u32> {
        let out = run_ok(Command::new("id").args(["-G", name]));
        let mut groups: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        groups.sort();
        groups
    }

    /// `command` run as `user` (with only its own group, and no capability).
    fn run_as(&self, user: &Account, command: &[&str]) -> Output {
        let setpriv = Wrapper::setpriv(user.uid, user.gid, &[user.gid]);
        Command::new(&setpriv[0])
            .args(&setpriv[1..])
            .args(command)
            .env_remove("MAILER_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// README's /usr/sbin/sendmail, run by `from` for `to`; its output and how long it took.
    fn sendmail_as(&self, from: &Account, to: &Account, subject: &str) -> (Output, Duration) {
        let setpriv = Wrapper::setpriv(from.uid, from.gid, &[from.gid]);
        let started = Instant::now();
        let mut child = Command::new(&setpriv[0])
            .args(&setpriv[1..])
            .arg(self.root().join("bin/sendmail"))
            .args(["-i", &format!("{}@localhost", to.name)])
            .env("MAILER_CONFIG", self.config_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("Subject: {subject}\n\nBody of {subject}.\n").as_bytes())
            .unwrap();
        let status = eventually(Duration::from_secs(30), || child.try_wait().unwrap());
        if status.is_none() {
            let _ = child.kill();
        }
        (child.wait_with_output().unwrap(), started.elapsed())
    }

    /// The mbox of `user` once it holds every subject in `subjects` (bounded wait).
    fn wait_for_mbox(&self, daemon: &Daemon, user: &Account, subjects: &[&str]) -> String {
        let path = self.mbox(user);
        eventually(WAIT, || {
            let text = fs::read_to_string(&path).ok()?;
            subjects
                .iter()
                .all(|s| text.contains(&format!("Subject: {s}\n")))
                .then_some(text)
        })
        .unwrap_or_else(|| {
            panic!(
                "{} did not get {subjects:?}:\n{}",
                path.display(),
                daemon.log()
            )
        })
    }

    /// Waits until `id` was tried and deferred; its recipient's `last_error` must contain
    /// `reason` and the mailbox path, and `mailer queue show` must print it.
    fn wait_queued_with(&self, daemon: &Daemon, id: &str, reason: &str) {
        let entry = eventually(WAIT, || {
            let out = daemon.cli(&["queue", "list", "--json"]);
            let list: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
            list.into_iter().find(|m| {
                m["id"] == id
                    && m["recipients"][0]["attempts"].as_u64() >= Some(1)
                    && m["recipients"][0]["last_error"].is_string()
            })
        })
        .unwrap_or_else(|| panic!("{id} was not deferred:\n{}", daemon.log()));
        let recipient = &entry["recipients"][0];
        assert_eq!(recipient["state"], "pending", "{entry}");
        let error = recipient["last_error"].as_str().unwrap();
        let mbox = self.mbox(&self.alice).display().to_string();
        assert!(
            error.contains(reason) && error.contains(&mbox),
            "{reason:?} and {mbox} in {error:?}"
        );
        let out = daemon.cli(&["queue", "show", id]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(reason),
            "{}",
            text(&out)
        );
    }

    /// Over SMTP and through sendmail run by each user: every message reaches its mbox, later
    /// ones appended; each mbox is `<user>:mail 0660`, readable by its user and not by the
    /// other one.
    fn deliveries_reach_mboxes_only_their_owners_read(&self, daemon: &Daemon) {
        send_smtp(self.port, &self.alice, "first for alice");
        self.wait_for_mbox(daemon, &self.alice, &["first for alice"]);
        let (out, _) = self.sendmail_as(&self.bob, &self.bob, "bob to himself");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            text(&out),
            daemon.log()
        );
        let (out, _) = self.sendmail_as(&self.alice, &self.alice, "second for alice");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            text(&out),
            daemon.log()
        );
        self.wait_for_mbox(daemon, &self.alice, &["second for alice"]);
        send_smtp(self.port, &self.alice, "third for alice");

        let all = ["first for alice", "second for alice", "third for alice"];
        let alice_mbox = self.wait_for_mbox(daemon, &self.alice, &all);
        let positions: Vec<usize> = all
            .iter()
            .map(|s| alice_mbox.find(&format!("Subject: {s}\n")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{alice_mbox}");
        assert_eq!(alice_mbox.matches("\nFrom ").count() + 1, 3, "{alice_mbox}");
        assert!(alice_mbox.starts_with("From "), "{alice_mbox}");
        self.wait_for_mbox(daemon, &self.bob, &["bob to himself"]);

        for (owner, other) in [(&self.alice, &self.bob), (&self.bob, &self.alice)] {
            let path = self.mbox(owner);
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid(), meta.mode() & 0o7777),
                (owner.uid, self.mail_gid, 0o660),
                "{}",
                path.display()
            );
            let path = path.display().to_string();
            let own = self.run_as(owner, &["cat", &path]);
            assert!(own.status.success(), "{}", text(&own));
            assert!(
                String::from_utf8_lossy(&own.stdout).contains("Subject: "),
                "{}",
                text(&own)
            );
            let theirs = self.run_as(other, &["cat", &path]);
            assert!(!theirs.status.success(), "{} read {path}", other.name);
            assert!(
                String::from_utf8_lossy(&theirs.stderr).contains("Permission denied"),
                "{}",
                text(&theirs)
            );
        }
    }
}

// ---- helpers --------------------------------------------------------------------------------

/// Why this machine cannot run the deployment, if it cannot.
fn can_deploy() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root to make accounts and grant capabilities".into());
    }
    for tool in [
        "useradd", "userdel", "usermod", "groupadd", "install", "mkfifo",
    ] {
        if Command::new(tool).arg("--help").output().is_err() {
            return Err(format!("{tool} is not installed"));
        }
    }
    let probe = Wrapper::as_the_unit(65534, 65534, &[]);
    let out = Command::new(&probe.args[0])
        .args(&probe.args[1..])
        .arg("true")
        .output();
    match out {
        Err(e) => Err(format!("setpriv (util-linux) cannot run: {e}")),
        Ok(out) if !out.status.success() => Err(format!(
            "setpriv cannot grant the unit's capabilities here: {}",
            text(&out)
        )),
        Ok(_) => Ok(()),
    }
}

fn account(name: &str) -> Account {
    let id = |flag: &str| -> u32 {
        let out = run_ok(Command::new("id").args([flag, name]));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    Account {
        name: name.to_string(),
        uid: id("-u"),
        gid: id("-g"),
    }
}

fn gid_of_group(name: &str) -> u32 {
    let out = run_ok(Command::new("getent").args(["group", name]));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':').nth(2).unwrap().trim().parse().unwrap()
}

/// A port below 1024 on 127.0.0.1 that was free a moment ago; where the search starts
/// depends on the process, so tests running at once rarely try the same ones.
fn free_privileged_port() -> u16 {
    let start = (std::process::id() % 300) as u16;
    (0..300)
        .map(|i| 600 + (start + i) % 300)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port between 600 and 899")
}

/// One message to `to`@localhost over SMTP; its queue id.
fn send_smtp(port: u16, to: &Account, subject: &str) -> String {
    let client = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let rcpt = format!("{}@localhost", to.name);
    let envelope = Envelope::new(
        Some("root@mx.test".parse().unwrap()),
        vec![rcpt.parse().unwrap()],
    )
    .unwrap();
    let message = format!(
        "From: <root@mx.test>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\r\nBody of {subject}.\r\n"
    );
    let response = client
        .send_raw(&envelope, message.as_bytes())
        .expect("the daemon accepts the message");
    let reply = response.message().collect::<Vec<_>>().join(" ");
    reply
        .rsplit(' ')
        .next()
        .unwrap_or_else(|| panic!("no queue id in {reply:?}"))
        .to_string()
}

fn run_ok(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", text(&out));
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn proc_status(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

/// The value of `name:` in a /proc status file, tabs made single spaces.
fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn caps(status: &str, name: &str) -> u64 {
    u64::from_str_radix(&field(status, name), 16).unwrap()
}

/// `"id id id id"`: the real, effective, saved and file-system ids of a status line.
fn four(id: u32) -> String {
    vec![id.to_string(); 4].join(" ")
}
