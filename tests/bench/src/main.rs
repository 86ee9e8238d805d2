//! `mailer-bench`: the whole path on loopback, measured.
//!
//! For each scenario it starts upstream sinks that require STARTTLS and AUTH (certificates
//! made at run time), measures their ceiling by sending the load straight to them, then starts
//! the release `mailer` daemon relaying to that pool with its fsync-before-250 queue on disk,
//! sends the same load through it, and reports throughput, latencies, the daemon's CPU time per
//! message, peak PSS and RSS (and system calls per message with `--syscalls`), and whether
//! every message arrived exactly once with its sender rewritten. By default each client opens
//! one connection per message, as Mastodon does; `--reuse-connections` keeps one open for many.
//! With `--peer postfix` a private Postfix instance relays the same load to the same sinks in
//! rounds interleaved with mailer's, and the two are printed side by side.

mod client;
mod postfix;
mod proc_stats;
mod syscalls;

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mailer_testkit::certs::TestCa;
use mailer_testkit::config::TestConfig;
use mailer_testkit::sink::{Received, Sink, SinkOptions};
use serde::Serialize;
use tokio::time::Instant;

use client::{Client, Setup};

/// Benchmark the mailer daemon end to end on loopback.
#[derive(Parser)]
struct Args {
    /// Messages per run (with --size and --sessions: one custom scenario instead of the two
    /// default ones, 2000 x 4K over 20 sessions and 200 x 1M over 10).
    #[arg(long)]
    messages: Option<usize>,
    /// Message size, e.g. 4K or 1M.
    #[arg(long, value_parser = parse_size)]
    size: Option<usize>,
    /// Concurrent SMTP sessions.
    #[arg(long)]
    sessions: Option<usize>,
    /// Upstream sink ports in the relay pool.
    #[arg(long, default_value_t = 4)]
    sinks: usize,
    /// The `mailer` binary; by default `cargo build --release -p mailer-daemon` is run and
    /// target/release/mailer used.
    #[arg(long)]
    mailer: Option<PathBuf>,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/mailer-bench.json")]
    json: PathBuf,
    /// Directory for the queue (on the disk to measure; default: a temp dir under target/).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Upper bound on each phase (sending, delivering) in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// The daemon's log level (production default: info).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Each client keeps its connection for many messages instead of opening one per message
    /// (the default, as Mastodon's client does).
    #[arg(long)]
    reuse_connections: bool,
    /// Count the daemon's system calls with `strace -f -c` (installed with apt if missing).
    /// strace slows the daemon down: the other figures of such a run are not comparable.
    #[arg(long)]
    syscalls: bool,
    /// Also relay the same load through a private instance of this MTA, in rounds interleaved
    /// with mailer's, and print both side by side.
    #[arg(long, value_parser = ["postfix"])]
    peer: Option<String>,
    /// Rounds per daemon with --peer.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A deep queue: the upstream pool answers every MAIL with 451 while the load is
    /// accepted, then comes back and the queue is flushed (`mailer queue flush`). Reports the
    /// time to drain it and the memory at the peak. mailer only; e.g. with --messages 10000.
    #[arg(long, conflicts_with = "peer")]
    backlog: bool,
}

/// How the clients use their connections.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    /// Connect, EHLO, MAIL, RCPT, DATA, QUIT for every message.
    ConnectionPerMessage,
    /// One connection per client for all its messages.
    ReusedConnections,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::ConnectionPerMessage => "one connection per message",
            Mode::ReusedConnections => "reused connections",
        }
    }
}

/// The daemon a run measured.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Daemon {
    Mailer,
    Postfix,
}

impl Daemon {
    fn name(self) -> &'static str {
        match self {
            Daemon::Mailer => "mailer",
            Daemon::Postfix => "postfix",
        }
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    let (num, mul) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1024),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<usize>()
        .map(|n| n * mul)
        .map_err(|e| format!("size {s:?}: {e}"))
}

#[derive(Clone, Copy, Serialize)]
struct Scenario {
    messages: usize,
    size: usize,
    sessions: usize,
}

impl Scenario {
    fn label(&self) -> String {
        let size = if self.size.is_multiple_of(1024 * 1024) {
            format!("{}MiB", self.size / (1024 * 1024))
        } else if self.size.is_multiple_of(1024) {
            format!("{}KiB", self.size / 1024)
        } else {
            format!("{}B", self.size)
        };
        format!("{}x{size}/{}", self.messages, self.sessions)
    }
}

/// Latency summary in milliseconds.
#[derive(Serialize, Default, Clone, Copy)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort();
        let at = |q: f64| {
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1e3
        };
        Latency {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[derive(Serialize)]
struct Checks {
    delivered: usize,
    lost: usize,
    duplicated: usize,
    sender_not_rewritten: usize,
    content_altered: usize,
    send_errors: Vec<String>,
}

impl Checks {
    fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.sender_not_rewritten == 0
            && self.content_altered == 0
            && self.send_errors.is_empty()
    }
}

/// System calls of the daemon during one run, from `strace -f -c`.
#[derive(Serialize, Clone)]
struct Syscalls {
    total_per_message: f64,
    /// fsync (with fdatasync), openat (with open), rename (with renameat), unlink (with
    /// unlinkat), futex.
    named_per_message: BTreeMap<String, f64>,
    calls: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Outcome {
    scenario: Scenario,
    mode: Mode,
    daemon: Daemon,
    /// 1-based; 1 without --peer.
    round: usize,
    sink_ceiling_msgs_per_s: f64,
    accepted_msgs_per_s: f64,
    end_to_end_msgs_per_s: f64,
    end_to_end_share_of_ceiling: f64,
    acceptance: Latency,
    /// Connect to the reply to QUIT per message (one connection per message), or MAIL to the
    /// 250 after DATA (reused connections).
    transaction: Latency,
    queue_to_delivered: Latency,
    /// Sum over the daemon's processes (Postfix: master and children), sampled every 50 ms;
    /// mailer's includes its VmHWM.
    daemon_peak_rss_mib: f64,
    /// Sum of the processes' PSS (smaps_rollup), sampled every 50 ms.
    daemon_peak_pss_mib: f64,
    /// utime + stime + cutime + cstime over the daemon's process tree.
    daemon_cpu_s: f64,
    daemon_cpu_ms_per_message: f64,
    syscalls: Option<Syscalls>,
    bench_process_cpu_s: f64,
    /// With --backlog: from the upstreams' return (and the flush) until the sinks held every
    /// message.
    backlog_drain_s: Option<f64>,
    checks: Checks,
}

/// The header From, the envelope sender given to the daemon, and the sender it must relay.
const HEADER_FROM: &str = "notifications@ublog.tech";
const SENDER: &str = "mastodon@localhost";
const REWRITTEN: &str = "mastodon@ublog.tech";
const SINK_USER: &str = "bench";
const SINK_PASSWORD: &str = "bench-secret";

/// One message body shared by every message of a run; each message differs in its header.
struct Template {
    /// The body as the sink must receive it (CRLF lines, some starting with a dot).
    plain: Vec<u8>,
    /// The same, dot-stuffed for the wire.
    wire: Vec<u8>,
}

impl Template {
    fn new(size: usize) -> Template {
        let mut plain = Vec::with_capacity(size + 100);
        let mut n = 0usize;
        // 78-octet lines like base64 or quoted-printable text; every 40th starts with a dot.
        // The message (header and body) stays at or under `size`, whatever the sequence
        // number in its header: `--size 35M` is a message at the daemon's default limit.
        let most = size.saturating_sub(header(usize::MAX, usize::MAX).len() + 100);
        while plain.len() < most {
            if n % 40 == 7 {
                plain.push(b'.');
            }
            let line =
                format!("{n:08} the quick brown fox jumps over the lazy dog 0123456789 abcdefghij");
            plain.extend_from_slice(line.as_bytes());
            plain.extend_from_slice(b"\r\n");
            n += 1;
        }
        let mut wire = Vec::with_capacity(plain.len() + plain.len() / 1000 + 8);
        for line in plain.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(line);
        }
        Template { plain, wire }
    }
}

fn header(run: usize, seq: usize) -> String {
    format!(
        "From: Mastodon <{HEADER_FROM}>\r\nTo: user{r}@example.org\r\nSubject: New follower {seq}\r\n\
         Message-ID: <bench-{run}-{seq}@ublog.tech>\r\nX-Bench-Seq: {seq:08}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        r = seq % 100
    )
}

fn recipient(seq: usize) -> String {
    format!("user{}@example.org", seq % 100)
}

/// What one message's sending produced.
struct Sent {
    seq: usize,
    /// End of data to 250.
    latency: Duration,
    /// See `Outcome::transaction`.
    transaction: Duration,
    /// When the 250 was read.
    accepted_at: Instant,
}

/// Sends `scenario.messages` messages over `scenario.sessions` sessions to `targets` (session
/// i goes to target i mod len). Bounded by the message count and by `deadline`.
#[allow(clippy::too_many_arguments)]
async fn load(
    scenario: Scenario,
    mode: Mode,
    targets: &[SocketAddr],
    setup: &Setup,
    sender: &str,
    template: &Arc<Template>,
    run: usize,
    deadline: Instant,
) -> (Vec<Sent>, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..scenario.sessions {
        let addr = targets[i % targets.len()];
        let setup = setup.clone();
        let next = next.clone();
        let template = template.clone();
        let sender = sender.to_string();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let result = tokio::time::timeout_at(deadline, async {
                let mut client = match mode {
                    Mode::ReusedConnections => Some(Client::connect(addr, &setup).await?),
                    Mode::ConnectionPerMessage => None,
                };
                let mut wire = Vec::with_capacity(template.wire.len() + 512);
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= scenario.messages {
                        break;
                    }
                    wire.clear();
                    wire.extend_from_slice(header(run, seq).as_bytes());
                    wire.extend_from_slice(&template.wire);
                    let begin = Instant::now();
                    let (latency, accepted_at) = match client.as_mut() {
                        Some(c) => {
                            let latency = c.send(&sender, &recipient(seq), &wire).await?;
                            (latency, Instant::now())
                        }
                        None => {
                            let mut c = Client::connect(addr, &setup).await?;
                            let latency = c.send(&sender, &recipient(seq), &wire).await?;
                            let accepted_at = Instant::now();
                            c.quit().await;
                            (latency, accepted_at)
                        }
                    };
                    sent.push(Sent {
                        seq,
                        latency,
                        transaction: begin.elapsed(),
                        accepted_at,
                    });
                }
                if let Some(c) = client {
                    c.quit().await;
                }
                Ok::<(), std::io::Error>(())
            })
            .await;
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("session {i}: {e}")),
                Err(_) => Some(format!("session {i}: phase time limit reached")),
            };
            (sent, error)
        }));
    }
    let mut all = Vec::with_capacity(scenario.messages);
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok((sent, error)) => {
                all.extend(sent);
                errors.extend(error);
            }
            Err(e) => errors.push(format!("session task failed: {e}")),
        }
    }
    (all, errors)
}

fn total(sinks: &[Sink]) -> usize {
    sinks.iter().map(Sink::count).sum()
}

/// Waits until the sinks together hold `n` messages or `deadline` passes; returns when.
async fn wait_delivered(sinks: &[Sink], n: usize, deadline: Instant) -> Option<Instant> {
    loop {
        if total(sinks) >= n {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn locate_mailer(args: &Args, root: &Path) -> Result<PathBuf, String> {
    if let Some(p) = &args.mailer {
        // The daemon runs in its own directory: a relative path must not depend on it.
        return p
            .canonicalize()
            .map_err(|e| format!("{}: {e}", p.display()));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("mailer-bench: cargo build --release -p mailer-daemon");
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "mailer-daemon",
            "--bin",
            "mailer",
        ])
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --release -p mailer-daemon: {status}"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("mailer"))
}

fn daemon_config(dir: &Path, port: u16, sinks: &[Sink], log_level: &str) -> String {
    let ports: Vec<u16> = sinks.iter().map(Sink::port).collect();
    TestConfig::new(dir, port)
        .hostname("mx.bench.test")
        .local_domains(&["mx.bench.test"])
        .relay_to(SINK_USER, &ports, &dir.join("secrets"), &dir.join("ca.pem"))
        .mail_from("@ublog.tech")
        .log_level(log_level)
        .render()
}

struct DaemonProcess {
    child: Child,
}

impl DaemonProcess {
    fn start(bin: &Path, dir: &Path, port: u16) -> Result<DaemonProcess, String> {
        let log = fs::File::create(dir.join("daemon.log")).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(dir.join("mailer.toml"))
            .arg("serve")
            .current_dir(dir)
            .env_remove("MAILER_LOG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut d = DaemonProcess { child };
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                let log = fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
                return Err(format!("mailer exited with {status} at start:\n{log}"));
            }
            if start.elapsed() > Duration::from_secs(20) {
                d.stop();
                return Err("mailer did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// Checks what the sinks received against what was sent; returns the checks and the
/// queue-to-delivered latencies.
fn verify(
    received: Vec<Received>,
    sent: &[Sent],
    scenario: Scenario,
    template: &Template,
    run: usize,
    sender: &str,
) -> (Checks, Vec<Duration>) {
    let mut accepted_at = vec![None; scenario.messages];
    for s in sent {
        accepted_at[s.seq] = Some(s.accepted_at);
    }
    let mut seen = vec![0usize; scenario.messages];
    let mut checks = Checks {
        delivered: received.len(),
        lost: 0,
        duplicated: 0,
        sender_not_rewritten: 0,
        content_altered: 0,
        send_errors: Vec::new(),
    };
    let mut delays = Vec::with_capacity(received.len());
    for r in &received {
        if r.mail_from != sender {
            checks.sender_not_rewritten += 1;
        }
        let Some(seq) = find_seq(&r.data).filter(|&s| s < scenario.messages) else {
            checks.content_altered += 1;
            continue;
        };
        seen[seq] += 1;
        let head = header(run, seq);
        // The daemon prepends its Received header; everything after it is ours, unchanged.
        let ours = head.len() + template.plain.len();
        let intact = r.data.len() >= ours
            && r.data[r.data.len() - template.plain.len()..] == template.plain[..]
            && r.data[r.data.len() - ours..r.data.len() - template.plain.len()] == *head.as_bytes();
        if !intact {
            checks.content_altered += 1;
        }
        if let Some(at) = accepted_at[seq] {
            delays.push(r.arrived.saturating_duration_since(at.into_std()));
        }
    }
    for (seq, &n) in seen.iter().enumerate() {
        if n == 0 && accepted_at[seq].is_some() {
            checks.lost += 1;
        }
        if n > 1 {
            checks.duplicated += n - 1;
        }
    }
    (checks, delays)
}

fn find_seq(data: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\r\nX-Bench-Seq: ";
    let at = data.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    std::str::from_utf8(data.get(at..at + 8)?)
        .ok()?
        .parse()
        .ok()
}

fn client_tls(ca: &TestCa) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What every run of one scenario shares: the sinks, their ceiling, the message template.
struct Bench {
    /// While set, the sinks answer MAIL with 451 (--backlog).
    down: Arc<AtomicBool>,
    scenario: Scenario,
    mode: Mode,
    run: usize,
    dir: tempfile::TempDir,
    ca: TestCa,
    sinks: Vec<Sink>,
    template: Arc<Template>,
    ceiling: f64,
}

/// Starts the sinks and measures their ceiling: the same load straight to them over
/// STARTTLS + AUTH, in the same connection mode.
async fn prepare(
    scenario: Scenario,
    mode: Mode,
    run: usize,
    args: &Args,
    base: &Path,
) -> Result<Bench, String> {
    let phase = Duration::from_secs(args.timeout);
    let dir = tempfile::Builder::new()
        .prefix("mailer-bench-")
        .tempdir_in(base)
        .map_err(|e| format!("temp dir in {}: {e}", base.display()))?;
    let ca = TestCa::new();
    // `localhost` for Postfix, which matches a certificate against DNS names only.
    let leaf = ca.issue(&["127.0.0.1", "localhost"]);
    let down = Arc::new(AtomicBool::new(false));
    let mut sinks = Vec::new();
    for _ in 0..args.sinks.max(1) {
        let down = down.clone();
        sinks.push(
            Sink::start(SinkOptions {
                tls: Some(leaf.clone()),
                require_tls: true,
                auth: Some((SINK_USER.into(), SINK_PASSWORD.into())),
                mail_reply: Some(Arc::new(move |_| {
                    down.load(Ordering::SeqCst)
                        .then(|| (451, "4.3.0 Down for the benchmark".to_string()))
                })),
                ..SinkOptions::default()
            })
            .await,
        );
    }
    let sink_addrs: Vec<SocketAddr> = sinks.iter().map(Sink::addr).collect();
    let template = Arc::new(Template::new(scenario.size));
    let setup = Setup::TlsAuth {
        tls: client_tls(&ca)?,
        user: SINK_USER.into(),
        password: SINK_PASSWORD.into(),
    };
    let start = Instant::now();
    let (sent, errors) = load(
        scenario,
        mode,
        &sink_addrs,
        &setup,
        REWRITTEN,
        &template,
        run,
        start + phase,
    )
    .await;
    let ceiling_time = start.elapsed();
    if !errors.is_empty() || sent.len() != scenario.messages {
        return Err(format!(
            "the sink ceiling run failed: {}",
            errors.join("; ")
        ));
    }
    let ceiling = scenario.messages as f64 / ceiling_time.as_secs_f64();
    for s in &sinks {
        drop(s.take_messages());
    }
    fs::write(dir.path().join("ca.pem"), ca.cert_pem()).map_err(|e| e.to_string())?;
    Ok(Bench {
        down,
        scenario,
        mode,
        run,
        dir,
        ca,
        sinks,
        template,
        ceiling,
    })
}

/// The daemon under test while it runs.
enum Running {
    Mailer(DaemonProcess, PathBuf),
    Postfix(postfix::Instance),
}

impl Running {
    fn root_pid(&self) -> Result<u32, String> {
        match self {
            Running::Mailer(d, _) => Ok(d.pid()),
            Running::Postfix(p) => p
                .master_pid()
                .ok_or_else(|| "the postfix master is not running".to_string()),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Running::Mailer(_, dir) => {
                let log = fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            }
            Running::Postfix(p) => p.log_tail(20),
        }
    }
}

/// Starts `daemon` relaying to the bench's sinks, sends the load through it, and measures.
async fn measure(
    bench: &Bench,
    daemon: Daemon,
    round: usize,
    args: &Args,
    mailer: &Path,
) -> Result<Outcome, String> {
    let scenario = bench.scenario;
    let phase = Duration::from_secs(args.timeout);
    let port = free_port()?;
    let ports: Vec<u16> = bench.sinks.iter().map(Sink::port).collect();
    let run_dir = tempfile::Builder::new()
        .prefix(&format!("{}-", daemon.name()))
        .tempdir_in(bench.dir.path())
        .map_err(|e| format!("temp dir: {e}"))?;
    let running = match daemon {
        Daemon::Mailer => {
            let dir = run_dir.path();
            fs::write(dir.join("ca.pem"), bench.ca.cert_pem()).map_err(|e| e.to_string())?;
            let secrets = dir.join("secrets");
            fs::write(
                &secrets,
                format!("{SINK_USER} {SINK_USER}:{SINK_PASSWORD}\n"),
            )
            .map_err(|e| e.to_string())?;
            fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
            fs::write(
                dir.join("mailer.toml"),
                daemon_config(dir, port, &bench.sinks, &args.log_level),
            )
            .map_err(|e| e.to_string())?;
            Running::Mailer(DaemonProcess::start(mailer, dir, port)?, dir.to_path_buf())
        }
        Daemon::Postfix => Running::Postfix(postfix::Instance::start(
            run_dir.path(),
            &postfix::Options {
                port,
                relay_ports: &ports,
                ca_pem: &bench.ca.cert_pem(),
                user: SINK_USER,
                password: SINK_PASSWORD,
                concurrency: MAILER_DELIVERIES,
                rewrite: (SENDER, REWRITTEN),
            },
        )?),
    };
    let root = running.root_pid()?;
    let tracer = if args.syscalls {
        Some(syscalls::Tracer::attach(
            &proc_stats::tree(root),
            &run_dir.path().join("strace.txt"),
        )?)
    } else {
        None
    };
    let sampler = proc_stats::MemorySampler::start(root);
    let cpu_before = proc_stats::tree_cpu_time(root).unwrap_or_default();
    let bench_cpu_start = proc_stats::cpu_time(std::process::id());

    let targets = [SocketAddr::from(([127, 0, 0, 1], port))];
    let start = Instant::now();
    let deadline = start + phase;
    let sending = load(
        scenario,
        bench.mode,
        &targets,
        &Setup::Plain,
        SENDER,
        &bench.template,
        bench.run,
        deadline,
    );
    let mut backlog_drain_s = None;
    let ((sent, errors), delivered_at) = if args.backlog {
        bench.down.store(true, Ordering::SeqCst);
        let loaded = sending.await;
        bench.down.store(false, Ordering::SeqCst);
        let released = Instant::now();
        let Running::Mailer(_, dir) = &running else {
            return Err("--backlog measures mailer alone".into());
        };
        flush_queue(mailer, dir)?;
        let delivered_at =
            wait_delivered(&bench.sinks, scenario.messages, Instant::now() + phase).await;
        backlog_drain_s = delivered_at.map(|t| (t - released).as_secs_f64());
        (loaded, delivered_at)
    } else {
        tokio::join!(
            sending,
            wait_delivered(&bench.sinks, scenario.messages, deadline + phase)
        )
    };
    let accepted_time = sent
        .iter()
        .map(|s| s.accepted_at)
        .max()
        .map_or(Duration::ZERO, |t| t - start);
    let cpu = proc_stats::tree_cpu_time(root).unwrap_or_default() - cpu_before;
    let peaks = sampler.finish();
    let hwm = match &running {
        Running::Mailer(..) => proc_stats::peak_rss(root).unwrap_or(0),
        Running::Postfix(_) => 0,
    };
    let calls = match tracer {
        Some(t) => Some(t.finish()?),
        None => None,
    };
    let log_tail = running.log_tail();
    drop(running);
    let bench_cpu = proc_stats::cpu_time(std::process::id())
        .zip(bench_cpu_start)
        .map_or(Duration::ZERO, |(a, b)| a - b);

    let received: Vec<Received> = bench.sinks.iter().flat_map(|s| s.take_messages()).collect();
    let (mut checks, delays) = verify(
        received,
        &sent,
        scenario,
        &bench.template,
        bench.run,
        REWRITTEN,
    );
    checks.send_errors = errors;
    if sent.len() < scenario.messages {
        checks.lost += scenario.messages - sent.len();
    }
    let e2e = match delivered_at {
        Some(t) => scenario.messages as f64 / (t - start).as_secs_f64(),
        None => 0.0,
    };
    let n = scenario.messages as f64;
    let syscalls = calls.map(|calls| Syscalls {
        total_per_message: calls.values().sum::<u64>() as f64 / n,
        named_per_message: syscalls::NAMED
            .iter()
            .map(|&(k, group)| (k.to_string(), syscalls::per_message(&calls, group, n)))
            .collect(),
        calls,
    });
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let outcome = Outcome {
        scenario,
        mode: bench.mode,
        daemon,
        round,
        sink_ceiling_msgs_per_s: bench.ceiling,
        accepted_msgs_per_s: sent.len() as f64 / accepted_time.as_secs_f64().max(1e-9),
        end_to_end_msgs_per_s: e2e,
        end_to_end_share_of_ceiling: e2e / bench.ceiling,
        acceptance: Latency::of(sent.iter().map(|s| s.latency).collect()),
        transaction: Latency::of(sent.iter().map(|s| s.transaction).collect()),
        queue_to_delivered: Latency::of(delays),
        daemon_peak_rss_mib: mib(peaks.rss.max(hwm)),
        daemon_peak_pss_mib: mib(peaks.pss),
        daemon_cpu_s: cpu.as_secs_f64(),
        daemon_cpu_ms_per_message: cpu.as_secs_f64() * 1e3 / n,
        syscalls,
        bench_process_cpu_s: bench_cpu.as_secs_f64(),
        backlog_drain_s,
        checks,
    };
    if !outcome.checks.ok() {
        eprintln!("mailer-bench: {} log tail:\n{log_tail}", daemon.name());
    }
    Ok(outcome)
}

/// Makes every queued message due now, as an admin would once the upstreams are back.
fn flush_queue(mailer: &Path, dir: &Path) -> Result<(), String> {
    let out = Command::new(mailer)
        .arg("--config")
        .arg(dir.join("mailer.toml"))
        .args(["queue", "flush"])
        .output()
        .map_err(|e| format!("mailer queue flush: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mailer queue flush: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Messages mailer delivers at once (its scheduler's limit); Postfix gets as many
/// connections to the relay.
const MAILER_DELIVERIES: usize = 20;

fn print(o: &Outcome) {
    let s = &o.scenario;
    println!(
        "== {} (messages x size / clients), {}, {} round {}",
        s.label(),
        o.mode.label(),
        o.daemon.name(),
        o.round
    );
    println!(
        "  sink ceiling (STARTTLS+AUTH, direct): {:8.0} msgs/s",
        o.sink_ceiling_msgs_per_s
    );
    println!(
        "  {:37} {:8.0} msgs/s",
        format!("accepted by {}:", o.daemon.name()),
        o.accepted_msgs_per_s
    );
    println!(
        "  end to end (until the sink holds all): {:7.0} msgs/s = {:.0}% of the sink ceiling",
        o.end_to_end_msgs_per_s,
        o.end_to_end_share_of_ceiling * 100.0
    );
    println!(
        "  acceptance latency (DATA end -> 250): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        o.acceptance.p50_ms, o.acceptance.p99_ms, o.acceptance.max_ms
    );
    println!(
        "  {}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        match o.mode {
            Mode::ConnectionPerMessage => "transaction (connect -> 221)  ",
            Mode::ReusedConnections => "transaction (MAIL -> 250)     ",
        },
        o.transaction.p50_ms,
        o.transaction.p99_ms,
        o.transaction.max_ms
    );
    println!(
        "  queue -> delivered latency:          p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        o.queue_to_delivered.p50_ms, o.queue_to_delivered.p99_ms, o.queue_to_delivered.max_ms
    );
    println!(
        "  {}: CPU {:.2} s = {:.3} ms/message, peak PSS {:.1} MiB, peak RSS {:.1} MiB (bench process with sinks: CPU {:.2} s)",
        o.daemon.name(),
        o.daemon_cpu_s,
        o.daemon_cpu_ms_per_message,
        o.daemon_peak_pss_mib,
        o.daemon_peak_rss_mib,
        o.bench_process_cpu_s
    );
    if let Some(drain) = o.backlog_drain_s {
        println!(
            "  backlog: all {} accepted while the upstreams answered 451; drained in {drain:.1} s after their return = {:.0} msgs/s",
            o.scenario.messages,
            o.scenario.messages as f64 / drain.max(1e-9)
        );
    }
    if let Some(sc) = &o.syscalls {
        let named: Vec<String> = sc
            .named_per_message
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        println!(
            "  system calls per message (strace -f -c): {:.1} in all; {}",
            sc.total_per_message,
            named.join(", ")
        );
    }
    let c = &o.checks;
    println!(
        "  checks: delivered {}, lost {}, duplicated {}, sender not rewritten {}, content altered {}{}",
        c.delivered,
        c.lost,
        c.duplicated,
        c.sender_not_rewritten,
        c.content_altered,
        if c.ok() { " -> OK" } else { " -> FAILED" }
    );
    for e in c.send_errors.iter().take(5) {
        println!("  error: {e}");
    }
}

fn summary(o: &Outcome) -> String {
    format!(
        "{} {} ({}): accepted {:.0}/s, e2e {:.0}/s ({:.0}% of sink {:.0}/s), accept p99 {:.1} ms, CPU {:.3} ms/msg, PSS {:.1} MiB, {}",
        o.scenario.label(),
        o.daemon.name(),
        o.mode.label(),
        o.accepted_msgs_per_s,
        o.end_to_end_msgs_per_s,
        o.end_to_end_share_of_ceiling * 100.0,
        o.sink_ceiling_msgs_per_s,
        o.acceptance.p99_ms,
        o.daemon_cpu_ms_per_message,
        o.daemon_peak_pss_mib,
        if o.checks.ok() { "ok" } else { "FAILED" }
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// One figure of the side-by-side table: medians over the rounds and mailer / postfix.
#[derive(Serialize)]
struct Figure {
    figure: &'static str,
    mailer_median: f64,
    postfix_median: f64,
    mailer_over_postfix: f64,
}

#[derive(Serialize)]
struct Comparison {
    scenario: Scenario,
    mode: Mode,
    rounds: usize,
    figures: Vec<Figure>,
}

fn compare(scenario: Scenario, mode: Mode, outcomes: &[&Outcome]) -> Comparison {
    type Get = fn(&Outcome) -> Option<f64>;
    let figures: [(&'static str, Get); 12] = [
        ("accepted msgs/s", |o| Some(o.accepted_msgs_per_s)),
        ("end to end msgs/s", |o| Some(o.end_to_end_msgs_per_s)),
        ("acceptance p50 ms", |o| Some(o.acceptance.p50_ms)),
        ("acceptance p99 ms", |o| Some(o.acceptance.p99_ms)),
        ("transaction p99 ms", |o| Some(o.transaction.p99_ms)),
        ("queue->delivered p99 ms", |o| {
            Some(o.queue_to_delivered.p99_ms)
        }),
        ("CPU ms/message", |o| Some(o.daemon_cpu_ms_per_message)),
        ("peak PSS MiB", |o| Some(o.daemon_peak_pss_mib)),
        ("peak RSS MiB", |o| Some(o.daemon_peak_rss_mib)),
        ("syscalls/message", |o| {
            o.syscalls.as_ref().map(|s| s.total_per_message)
        }),
        ("fsync/message", |o| {
            o.syscalls
                .as_ref()
                .and_then(|s| s.named_per_message.get("fsync").copied())
        }),
        ("futex/message", |o| {
            o.syscalls
                .as_ref()
                .and_then(|s| s.named_per_message.get("futex").copied())
        }),
    ];
    let of = |d: Daemon, get: Get| -> Option<f64> {
        let v: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.daemon == d)
            .filter_map(|o| get(o))
            .collect();
        (!v.is_empty()).then(|| median(v))
    };
    let rounds = outcomes
        .iter()
        .filter(|o| o.daemon == Daemon::Mailer)
        .count();
    let figures = figures
        .iter()
        .filter_map(|&(figure, get)| {
            let (m, p) = (of(Daemon::Mailer, get)?, of(Daemon::Postfix, get)?);
            Some(Figure {
                figure,
                mailer_median: m,
                postfix_median: p,
                mailer_over_postfix: if p > 0.0 { m / p } else { f64::NAN },
            })
        })
        .collect();
    Comparison {
        scenario,
        mode,
        rounds,
        figures,
    }
}

fn print_comparison(c: &Comparison) {
    println!(
        "== {} (messages x size / clients), {}: mailer vs postfix, medians of {} rounds each",
        c.scenario.label(),
        c.mode.label(),
        c.rounds
    );
    println!(
        "  {:26} {:>12} {:>12} {:>16}",
        "", "mailer", "postfix", "mailer/postfix"
    );
    for f in &c.figures {
        println!(
            "  {:26} {:>12.2} {:>12.2} {:>15.2}x",
            f.figure, f.mailer_median, f.postfix_median, f.mailer_over_postfix
        );
    }
}

#[derive(Serialize)]
struct Report<'a> {
    mode: Mode,
    peer: Option<&'a str>,
    outcomes: &'a [Outcome],
    comparisons: &'a [Comparison],
}

/// Resolves with the signal's name when SIGINT or SIGTERM arrives.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap_or(root);
    let mode = if args.reuse_connections {
        Mode::ReusedConnections
    } else {
        Mode::ConnectionPerMessage
    };
    let scenarios = match (args.messages, args.size, args.sessions) {
        (None, None, None) => vec![
            Scenario {
                messages: 2000,
                size: 4 * 1024,
                sessions: 20,
            },
            Scenario {
                messages: 200,
                size: 1024 * 1024,
                sessions: 10,
            },
        ],
        (m, size, s) => vec![Scenario {
            messages: m.unwrap_or(2000).max(1),
            size: size.unwrap_or(4 * 1024),
            sessions: s.unwrap_or(20).max(1),
        }],
    };
    let peer = args.peer.is_some();
    if peer && !postfix::installed() {
        eprintln!(
            "mailer-bench: --peer postfix: {} is missing (apt-get install postfix)",
            postfix::POSTFIX
        );
        return ExitCode::FAILURE;
    }
    if args.syscalls && !syscalls::available(true) {
        eprintln!("mailer-bench: --syscalls: strace is missing and could not be installed; system calls are not counted");
        return ExitCode::FAILURE;
    }
    let mailer = match locate_mailer(&args, &root) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("mailer-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let base = args
        .work_dir
        .clone()
        .unwrap_or_else(|| root.join("target").join("bench-work"));
    if let Err(e) = fs::create_dir_all(&base) {
        eprintln!("mailer-bench: {}: {e}", base.display());
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailer-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rounds = if peer { args.rounds.max(1) } else { 1 };
    let mut outcomes = Vec::new();
    let mut comparisons = Vec::new();
    for (run, scenario) in scenarios.into_iter().enumerate() {
        let work = async {
            let bench = prepare(scenario, mode, run, &args, &base).await?;
            let first = outcomes.len();
            for round in 1..=rounds {
                let mut daemons = vec![Daemon::Mailer];
                if peer {
                    daemons.push(Daemon::Postfix);
                }
                for daemon in daemons {
                    let o = measure(&bench, daemon, round, &args, &mailer).await?;
                    print(&o);
                    outcomes.push(o);
                }
            }
            if peer {
                let these: Vec<&Outcome> = outcomes[first..].iter().collect();
                let c = compare(scenario, mode, &these);
                print_comparison(&c);
                comparisons.push(c);
            }
            Ok::<(), String>(())
        };
        // On SIGINT or SIGTERM the work is dropped, and with it the daemon under test (and a
        // Postfix instance: its guard stops it and removes its directory).
        let result = runtime.block_on(async {
            tokio::select! {
                r = work => r,
                s = interrupted() => Err(format!("stopped by {s}")),
            }
        });
        if let Err(e) = result {
            eprintln!("mailer-bench: {}: {e}", scenario.label());
            return ExitCode::FAILURE;
        }
    }
    let json = args.json.clone();
    let json = if json.is_relative() {
        root.join(json)
    } else {
        json
    };
    let report = Report {
        mode,
        peer: args.peer.as_deref(),
        outcomes: &outcomes,
        comparisons: &comparisons,
    };
    let written = serde_json::to_vec_pretty(&report)
        .map_err(|e| e.to_string())
        .and_then(|b| fs::write(&json, b).map_err(|e| e.to_string()));
    for o in &outcomes {
        println!("mailer-bench: {}", summary(o));
    }
    match written {
        Ok(()) => println!("mailer-bench: results in {}", json.display()),
        Err(e) => eprintln!("mailer-bench: cannot write {}: {e}", json.display()),
    }
    if outcomes.iter().all(|o| o.checks.ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
