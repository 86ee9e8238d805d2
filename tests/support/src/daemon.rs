//! Starts the real `mailer` binary on loopback for end-to-end tests.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A command the daemon is started under, e.g. `unshare`. It must exec the daemon rather than
/// fork it, so that the PID the test holds (to signal, kill and look into) is the daemon's.
#[derive(Clone, Debug, Default)]
pub struct Wrapper {
    /// The command and its arguments, placed before `mailer --config … serve`.
    pub args: Vec<OsString>,
    /// Environment variables for the wrapper (and so for the daemon).
    pub env: Vec<(OsString, OsString)>,
}

impl Wrapper {
    /// Runs the daemon in a private mount namespace where `mount_point` is a fresh tmpfs of
    /// `size` (e.g. `4m`): a small disk that fills up, seen by the daemon alone. The tmpfs
    /// and what it holds vanish with the daemon, so a test must not restart it. Needs root.
    pub fn private_tmpfs(mount_point: &Path, size: &str) -> Wrapper {
        let script = "mkdir -p \"$TMPFS_AT\" && \
                      mount -t tmpfs -o \"size=$TMPFS_SIZE,mode=0700\" tmpfs \"$TMPFS_AT\" && \
                      exec \"$0\" \"$@\"";
        Wrapper::in_private_mounts(
            script,
            vec![
                ("TMPFS_AT".into(), mount_point.into()),
                ("TMPFS_SIZE".into(), size.into()),
            ],
        )
    }

    /// `sh -c script` in a private mount namespace, which then execs the daemon: mounts the
    /// script makes are seen by the daemon alone and vanish with it.
    fn in_private_mounts(script: &str, env: Vec<(OsString, OsString)>) -> Wrapper {
        Wrapper {
            args: [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ]
            .into_iter()
            .map(OsString::from)
            .collect(),
            env,
        }
    }

    /// Runs the daemon in a private mount namespace where `/run/systemd/journal` is
    /// `journal_dir`, so a socket the test binds at `journal_dir/socket` is the journal's
    /// socket for the daemon alone (`/run` is a fresh tmpfs there: nothing of the host's
    /// `/run` is touched). `JOURNAL_STREAM` names the daemon's stderr, as systemd sets it when
    /// stderr is the journal. Needs root.
    pub fn private_journal(journal_dir: &Path) -> Wrapper {
        let script = "mount -t tmpfs -o mode=0755 tmpfs /run && \
                      mkdir -p /run/systemd/journal && \
                      mount --bind \"$JOURNAL_DIR\" /run/systemd/journal && \
                      export JOURNAL_STREAM=\"$(stat -L -c %d:%i /proc/self/fd/2)\" && \
                      exec \"$0\" \"$@\"";
        Wrapper::in_private_mounts(script, vec![("JOURNAL_DIR".into(), journal_dir.into())])
    }

    /// Runs the daemon with the credentials config/mailer.service gives it: uid `uid`, gid
    /// `gid`, supplementary groups `groups` (the unit's `SupplementaryGroups=mail`), the
    /// ambient capabilities CAP_NET_BIND_SERVICE and CAP_CHOWN and no others, no new
    /// privileges, `UMask=0077`. Needs root and setpriv (util-linux).
    pub fn as_the_unit(uid: u32, gid: u32, groups: &[u32]) -> Wrapper {
        let mut args = Wrapper::setpriv(uid, gid, groups);
        let caps = "-all,+net_bind_service,+chown";
        args.extend(
            [
                format!("--inh-caps={caps}"),
                format!("--ambient-caps={caps}"),
                format!("--bounding-set={caps}"),
                "--no-new-privs".to_string(),
                "sh".to_string(),
                "-c".to_string(),
                "umask 0077 && exec \"$0\" \"$@\"".to_string(),
            ]
            .map(OsString::from),
        );
        Wrapper {
            args,
            env: Vec::new(),
        }
    }

    /// `setpriv` switching to `uid`, `gid` and exactly the supplementary `groups`, keeping
    /// no capability: a command run as an ordinary user. Further setpriv options and the
    /// command follow.
    pub fn setpriv(uid: u32, gid: u32, groups: &[u32]) -> Vec<OsString> {
        let groups = if groups.is_empty() {
            "--clear-groups".to_string()
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            format!("--groups={}", list.join(","))
        };
        [
            "setpriv".to_string(),
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            groups,
        ]
        .map(OsString::from)
        .to_vec()
    }
}

/// A running daemon with its own directory (config, queue, mailboxes, log).
pub struct Daemon {
    bin: PathBuf,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    child: Option<Child>,
    runs: usize,
    /// Log at debug level whatever the configuration says (the default for tests).
    debug_log: bool,
    wrapper: Option<Wrapper>,
}

impl Daemon {
    /// Writes `config` (which must listen on `127.0.0.1:{port}`) to `dir/mailer.toml` and
    /// starts `bin serve` on it, waiting until the port accepts connections.
    pub fn start(bin: &Path, dir: &Path, port: u16, config: &str) -> Daemon {
        Daemon::start_logging(bin, dir, port, config, true)
    }

    /// As [`Daemon::start`]; with `debug_log = false` the configuration's `[log] level`
    /// decides what is logged.
    pub fn start_logging(
        bin: &Path,
        dir: &Path,
        port: u16,
        config: &str,
        debug_log: bool,
    ) -> Daemon {
        Daemon::launch(bin, dir, port, config, debug_log, None)
    }

    /// As [`Daemon::start`], under `wrapper`.
    pub fn start_wrapped(
        bin: &Path,
        dir: &Path,
        port: u16,
        config: &str,
        wrapper: Wrapper,
    ) -> Daemon {
        Daemon::launch(bin, dir, port, config, true, Some(wrapper))
    }

    fn launch(
        bin: &Path,
        dir: &Path,
        port: u16,
        config: &str,
        debug_log: bool,
        wrapper: Option<Wrapper>,
    ) -> Daemon {
        let path = dir.join("mailer.toml");
        fs::write(&path, config).expect("write the test configuration");
        let mut d = Daemon {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            config: path,
            port,
            child: None,
            runs: 0,
            debug_log,
            wrapper,
        };
        d.spawn();
        d
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let log = fs::File::create(self.dir.join(format!("daemon-{}.log", self.runs)))
            .expect("create the daemon log");
        let mut command = match &self.wrapper {
            Some(w) => {
                let mut c = Command::new(&w.args[0]);
                c.args(&w.args[1..])
                    .arg(&self.bin)
                    .envs(w.env.iter().cloned());
                c
            }
            None => Command::new(&self.bin),
        };
        command.env_remove("MAILER_LOG").env_remove("RUST_LOG");
        if self.debug_log {
            command.env("MAILER_LOG", "debug");
        }
        let child = command
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mailer");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(self.addr()).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("mailer exited with {status} at start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mailer did not listen on {} within 20 s:\n{}",
                self.addr(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the daemon has logged, all runs.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|i| {
                fs::read_to_string(self.dir.join(format!("daemon-{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// SIGKILL: no cleanup of any kind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "mailer did not exit within {within:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal to the running daemon.
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
    }

    /// Starts the daemon again on the same directory and configuration.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Replaces the configuration file (for reload tests).
    pub fn write_config(&self, config: &str) {
        fs::write(&self.config, config).expect("write the test configuration");
    }

    /// Runs `mailer --config <this config> <args>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run mailer")
    }

    /// `path` as the daemon sees it, through `/proc/PID/root`: a mount in the daemon's private
    /// namespace (see [`Wrapper::private_tmpfs`]) is visible there, and only there.
    pub fn path_in_daemon(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(relative)
    }

    /// The queued messages' files (`q/*.msg`) under `queue_dir`.
    pub fn queued_messages(&self, queue_dir: &Path) -> Vec<PathBuf> {
        crate::queue::message_files(queue_dir)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Appends zeros to `path` until the filesystem is full (ENOSPC or EDQUOT); returns the bytes
/// added. Stops after `at_most` bytes with an error, so that a missing small mount does not
/// fill the real disk.
pub fn fill_until_full(path: &Path, at_most: u64) -> io::Result<u64> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let chunk = [0u8; 4096];
    let mut added = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => return Ok(added),
            Ok(n) => added += n as u64,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
                return Ok(added)
            }
            Err(e) => return Err(e),
        }
        if added > at_most {
            return Err(io::Error::other(format!(
                "{} took more than {at_most} bytes without filling its filesystem",
                path.display()
            )));
        }
    }
}

/// Waits (bounded) until `f` returns Some.
pub fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs `command` with `stdin` as standard input; kills it and fails the test if it has not
/// finished `within`. Returns its output and how long it took.
pub fn run_with_stdin(mut command: Command, stdin: &[u8], within: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mailer");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin)
        .expect("write the message");
    let deadline = started + within;
    while child.try_wait().expect("poll the child").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("collect the output");
    (output, started.elapsed())
}
