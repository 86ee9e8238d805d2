//! A private Postfix instance (`postfix -c DIR`) relaying to the bench's sinks, for the
//! `--peer postfix` comparison. Everything lives in one temp dir: configuration, queue, data,
//! log. The instance is stopped and its directory removed when the guard drops.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const POSTFIX: &str = "/usr/sbin/postfix";

pub fn installed() -> bool {
    Path::new(POSTFIX).exists()
}

/// How the instance is set up.
pub struct Options<'a> {
    /// Its smtpd listens on 127.0.0.1:port.
    pub port: u16,
    /// Upstream sink ports (listening on 127.0.0.1, certificate valid for `localhost`).
    pub relay_ports: &'a [u16],
    pub ca_pem: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    /// Outgoing connections to the relay at once (mailer delivers this many at once).
    pub concurrency: usize,
    /// The envelope sender rewrite mailer applies, applied by `sender_canonical_maps`.
    pub rewrite: (&'a str, &'a str),
}

pub struct Instance {
    dir: tempfile::TempDir,
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn main_cf(dir: &Path, o: &Options) -> String {
    let d = dir.display();
    // Postfix tries the relay hosts in order (3.5 and later), it does not spread the load.
    let relays: Vec<String> = o
        .relay_ports
        .iter()
        .map(|p| format!("[localhost]:{p}"))
        .collect();
    format!(
        "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
myhostname = mx.bench.test
mydomain = bench.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
# The client is remote to header rewriting: no headers added or rewritten, as with mailer.
local_header_rewrite_clients =
sender_canonical_maps = texthash:{d}/sender_canonical
sender_canonical_classes = envelope_sender
relayhost = {relays}
smtp_host_lookup = native
smtp_dns_support_level = disabled
smtp_tls_security_level = secure
smtp_tls_secure_cert_match = nexthop
smtp_tls_CAfile = {d}/ca.pem
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{d}/sasl_passwd
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
default_process_limit = {procs}
smtp_destination_concurrency_limit = {c}
default_destination_concurrency_limit = {c}
message_size_limit = 52428800
biff = no
",
        relays = relays.join(", "),
        c = o.concurrency,
        procs = (o.concurrency * 2).max(100),
    )
}

fn master_cf(port: u16) -> String {
    format!(
        "127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
lmtp unix - - n - - lmtp
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"
    )
}

impl Instance {
    /// Writes the configuration under `base` and starts the instance; returns once its
    /// smtpd accepts connections.
    pub fn start(base: &Path, o: &Options) -> Result<Instance, String> {
        let dir = tempfile::Builder::new()
            .prefix("postfix-bench-")
            .tempdir_in(base)
            .map_err(|e| format!("temp dir in {}: {e}", base.display()))?;
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        // Postfix's daemons run as the postfix user and must reach the queue below it.
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        // `postfix start` creates the queue's subdirectories, not the queue directory itself.
        fs::create_dir(d.join("queue")).map_err(|e| format!("queue directory: {e}"))?;
        fs::set_permissions(d.join("queue"), fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        write(&d.join("main.cf"), &main_cf(d, o), 0o644)?;
        write(&d.join("master.cf"), &master_cf(o.port), 0o644)?;
        write(&d.join("ca.pem"), o.ca_pem, 0o644)?;
        write(
            &d.join("sender_canonical"),
            &format!("{} {}\n", o.rewrite.0, o.rewrite.1),
            0o644,
        )?;
        let mut passwd = String::new();
        for p in o.relay_ports {
            passwd.push_str(&format!("[localhost]:{p} {}:{}\n", o.user, o.password));
        }
        write(&d.join("sasl_passwd"), &passwd, 0o600)?;
        let instance = Instance { dir };
        let out = instance.postfix("start")?;
        if !out.0 {
            return Err(format!(
                "postfix -c {} start failed: {}",
                d.display(),
                out.1
            ));
        }
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", o.port)).is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "postfix did not listen within 20 s; its log:\n{}",
                    instance.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(instance)
    }

    fn postfix(&self, command: &str) -> Result<(bool, String), String> {
        let out = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.dir.path())
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {POSTFIX}: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("queue/pid/master.pid")
    }

    /// The master's PID, from its pid file, if it is alive.
    pub fn master_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// `postfix -c DIR stop`, then waits for the master (and its children) to be gone;
    /// SIGKILL for what is left after 15 s.
    pub fn stop(&mut self) {
        let Some(master) = self.master_pid() else {
            return;
        };
        let tree = crate::proc_stats::tree(master);
        let _ = self.postfix("stop");
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if !tree.iter().any(|&p| alive(p)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for p in tree.into_iter().filter(|&p| alive(p)) {
            // SAFETY: kill(2); these are the instance's processes, found under its master.
            unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
        }
        eprintln!("mailer-bench: postfix did not stop within 15 s; killed");
    }
}

/// Running or sleeping: not gone and not a zombie (the master is reparented when it
/// daemonizes, and its new parent reaps it when it will).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s[s.rfind(')')? + 1..]
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}
