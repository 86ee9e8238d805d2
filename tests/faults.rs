//! End to end under injected faults: the queue's disk filling up at intake and during
//! delivery, `kill -9` in a loop while mail is relayed, and upstreams that drop the
//! connection, answer `421` or stall in mid-session.
//!
//! The disk tests run the daemon in a private mount namespace with its queue on a small tmpfs
//! (they need root, as CI has); the test reaches that tmpfs through `/proc/PID/root`. Every
//! test runs under an overall deadline, and every blocking step has its own timeout, so a
//! daemon that hangs fails the test instead of stalling the run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::future::Future;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mailer_testkit::daemon::{fill_until_full, Wrapper};
use mailer_testkit::sink::{Fault, Received, Sink, Stage};
use mailer_testkit::world::RelayWorld;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");
const USER: &str = "papmx-user";
const PASSWORD: &str = "s3cret";
const SENDER: &str = "app@mastodon.local";

type World = RelayWorld;

/// Runs a test body under an overall deadline.
async fn within<T>(limit: Duration, test: &str, body: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("{test}: did not finish within {limit:?}"))
}

/// Polls `f` every 50 ms until it returns Some, at most `limit`.
async fn until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message of about `size` octets whose Subject carries `token` and whose last line says
/// where it ends, so a truncated copy shows.
fn message(token: &str, to: &[String], size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Mastodon <{SENDER}>\r\nTo: {}\r\nSubject: fault test {token}\r\n\
         Message-ID: <{token}@mastodon.local>\r\n\r\n",
        to.join(", ")
    );
    let line = format!("{}\r\n", "x".repeat(76));
    while m.len() + line.len() < size {
        m.push_str(&line);
    }
    m.push_str(&format!("end of {token}\r\n"));
    m.into_bytes()
}

/// The token in the Subject of a message the upstream got.
fn token_of(r: &Received) -> String {
    String::from_utf8_lossy(&r.data)
        .lines()
        .find_map(|l| l.strip_prefix("Subject: fault test "))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The daemon's queue id, from the Received header it added (`… (mailer) with ESMTP id ID`).
fn queue_id_of(r: &Received) -> String {
    let text = String::from_utf8_lossy(&r.data);
    let after = text
        .split_once("(mailer) with ")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let mut words = after.split_whitespace();
    words.next();
    match (words.next(), words.next()) {
        (Some("id"), Some(id)) => id.trim_end_matches(';').to_string(),
        _ => panic!("no queue id in the Received header:\n{text}"),
    }
}

/// One SMTP reply: its code and the text of its last line.
#[derive(Clone, Debug)]
struct Reply {
    code: u16,
    text: String,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// A submission client that reports a silent or vanished server as an error rather than
/// panicking: the daemon fails or dies under it on purpose.
struct Smtp {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    timeout: Duration,
}

impl Smtp {
    /// Connects, reads the greeting and says EHLO; every reply must come within `timeout`.
    fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Smtp> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut smtp = Smtp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            timeout,
        };
        smtp.expect(220, "the greeting")?;
        smtp.writer.write_all(b"EHLO client.test\r\n")?;
        smtp.expect(250, "EHLO")?;
        Ok(smtp)
    }

    fn reply(&mut self) -> io::Result<Reply> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.reader.read_line(&mut line) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ))
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no reply within {:?}", self.timeout),
                    ))
                }
                Err(e) => return Err(e),
            }
            let code = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| io::Error::other(format!("malformed reply {line:?}")))?;
            if line.as_bytes().get(3) != Some(&b'-') {
                let text = line.get(4..).unwrap_or_default().trim_end().to_string();
                return Ok(Reply { code, text });
            }
        }
    }

    fn expect(&mut self, code: u16, what: &str) -> io::Result<Reply> {
        let reply = self.reply()?;
        if reply.code != code {
            return Err(io::Error::other(format!("{what} answered {reply}")));
        }
        Ok(reply)
    }

    fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    /// One transaction; returns the reply that ended it: to the end of data, or the first
    /// refusal (after which the session is reset).
    fn send_mail(&mut self, to: &[String], message: &[u8]) -> io::Result<Reply> {
        assert!(
            !message.starts_with(b".") && !message.windows(3).any(|w| w == b"\n.."),
            "test messages need no dot-stuffing"
        );
        let mut steps = vec![format!("MAIL FROM:<{SENDER}>")];
        steps.extend(to.iter().map(|t| format!("RCPT TO:<{t}>")));
        for step in steps {
            let reply = self.command(&step)?;
            if reply.code != 250 {
                self.command("RSET")?;
                return Ok(reply);
            }
        }
        let reply = self.command("DATA")?;
        if reply.code != 354 {
            return Ok(reply);
        }
        self.writer.write_all(message)?;
        self.writer.write_all(b".\r\n")?;
        self.reply()
    }
}

/// The queue id in `250 … queued as ID`.
fn queued_as(reply: &Reply) -> String {
    assert_eq!(reply.code, 250, "{reply}");
    reply
        .text
        .rsplit(' ')
        .next()
        .expect("a queue id in the reply")
        .to_string()
}

/// Envelopes of the messages present in `queue` (as seen by the test: pass the daemon's view for
/// a queue on a private tmpfs).
fn envelopes(queue: &Path) -> Vec<Value> {
    mailer_testkit::queue::ids(queue)
        .into_iter()
        .filter_map(|id| {
            let bytes = mailer_testkit::queue::envelope_json(queue, &id)?;
            Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{id}: not an envelope: {e}");
            }))
        })
        .collect()
}

/// How many times the upstreams got each recipient address.
fn deliveries_per_address(sinks: &[&Sink]) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for sink in sinks {
        for r in sink.messages() {
            for a in &r.rcpt_to {
                *count.entry(a.clone()).or_default() += 1;
            }
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_disk_answers_452_and_loses_nothing_acknowledged() {
    within(
        Duration::from_secs(75),
        "a full queue disk at intake",
        full_disk_at_intake(),
    )
    .await;
}

async fn full_disk_at_intake() {
    const SIZE: usize = 100 * 1024;
    const AT_MOST: usize = 200;
    const STOP_AFTER_REFUSALS: usize = 3;
    let world = World::new(USER, PASSWORD);
    // Nothing leaves until the test says so: the queue only grows.
    let holding = Arc::new(AtomicBool::new(true));
    let hold = holding.clone();
    let upstream = world
        .upstream(|o| {
            o.mail_reply = Some(Arc::new(move |_: &str| {
                hold.load(Ordering::SeqCst)
                    .then(|| (451, "4.3.0 upstream busy, try later".to_string()))
            }))
        })
        .await;
    let queue = world.queue_dir();
    let daemon = world
        .config(&[upstream.port()], "10s")
        .start_wrapped(Path::new(BIN), Wrapper::private_tmpfs(&queue, "4m"));
    let spool = daemon.path_in_daemon(&queue);
    // A reserve to free later, so that the queue can move again once the disk is full.
    let ballast = spool.join("ballast");
    fs::write(&ballast, vec![0u8; 512 * 1024]).expect("write the ballast on the tmpfs");

    let addr = daemon.addr();
    let replies: Vec<(String, Reply)> = tokio::task::spawn_blocking(move || {
        let mut smtp = Smtp::connect(addr, Duration::from_secs(10))
            .map_err(|e| format!("connect to the daemon: {e}"))?;
        let mut replies = Vec::new();
        let mut refusals = 0;
        for n in 0..AT_MOST {
            if refusals == STOP_AFTER_REFUSALS {
                break;
            }
            let token = format!("full-{n}");
            let to = vec![format!("pim{n}@example.org")];
            let reply = smtp
                .send_mail(&to, &message(&token, &to, SIZE))
                .map_err(|e| format!("message {n}: {e}"))?;
            if reply.code != 250 {
                refusals += 1;
            }
            replies.push((token, reply));
        }
        Ok::<_, String>(replies)
    })
    .await
    .expect("the client thread")
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));

    let mut accepted: HashMap<String, String> = HashMap::new();
    let mut refused: Vec<(String, Reply)> = Vec::new();
    for (token, reply) in &replies {
        match reply.code {
            250 => {
                accepted.insert(token.clone(), queued_as(reply));
            }
            400..=499 => refused.push((token.clone(), reply.clone())),
            _ => panic!(
                "{token}: {reply}: a full disk is a temporary condition, never a 5xx\n{}",
                daemon.log()
            ),
        }
    }
    assert!(
        !refused.is_empty(),
        "{} messages of {SIZE} octets never filled a 4 MiB queue",
        replies.len()
    );
    assert!(
        accepted.len() >= 10,
        "only {} messages fit before the first refusal",
        accepted.len()
    );
    eprintln!(
        "full disk at intake: {} accepted, then refused with: {}",
        accepted.len(),
        refused[0].1
    );

    // Free the reserve: intake works again at once, without a restart.
    fs::remove_file(&ballast).expect("remove the ballast");
    let (token, reply) = tokio::task::spawn_blocking(move || {
        let token = "full-after".to_string();
        let to = vec!["pim@example.org".to_string()];
        let reply = Smtp::connect(addr, Duration::from_secs(10))
            .and_then(|mut smtp| smtp.send_mail(&to, &message(&token, &to, SIZE)));
        (token, reply)
    })
    .await
    .expect("the client thread");
    match reply {
        Ok(reply) if reply.code == 250 => {
            accepted.insert(token, queued_as(&reply));
        }
        other => panic!("with room again, a message got {other:?}\n{}", daemon.log()),
    }
    // Let the queue drain.
    holding.store(false, Ordering::SeqCst);
    let all = until(Duration::from_secs(30), || {
        let got: HashSet<String> = upstream.messages().iter().map(token_of).collect();
        accepted.keys().all(|t| got.contains(t)).then_some(())
    })
    .await;
    let got = upstream.messages();
    let missing: Vec<&String> = accepted
        .keys()
        .filter(|t| !got.iter().any(|r| &token_of(r) == *t))
        .collect();
    assert!(
        all.is_some(),
        "acknowledged but never delivered: {missing:?}\n{}",
        daemon.log()
    );
    let drained = until(Duration::from_secs(10), || {
        envelopes(&spool).is_empty().then_some(())
    })
    .await;
    assert!(drained.is_some(), "the queue did not drain");
    // Room for a repeated delivery to show up, if there were one.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let got = upstream.messages();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &got {
        let token = token_of(r);
        *seen.entry(token.clone()).or_default() += 1;
        match accepted.get(&token) {
            Some(id) => assert_eq!(&queue_id_of(r), id, "{token} came from another queue entry"),
            None => panic!("{token} was refused, yet delivered: its sender will send it again"),
        }
        let text = String::from_utf8_lossy(&r.data);
        assert!(
            text.ends_with(&format!("end of {token}\r\n")),
            "{token} arrived truncated ({} octets)",
            r.data.len()
        );
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "delivered more than once: {repeated:?}"
    );

    // Checked last, so that a wrong code does not hide a lost message.
    for (token, reply) in &refused {
        assert!(
            reply.code == 452 && reply.text.starts_with("4.3.1"),
            "{token}: a full queue disk should answer 452 4.3.1 (insufficient system storage), \
             got {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envelope_updates_failing_on_a_full_disk_never_deliver_a_recipient_twice() {
    within(
        Duration::from_secs(75),
        "envelope updates on a full disk",
        full_disk_during_delivery(),
    )
    .await;
}

async fn full_disk_during_delivery() {
    const MESSAGES: usize = 10;
    const FULL_FOR: Duration = Duration::from_secs(8);
    let world = World::new(USER, PASSWORD);
    // Closed until the disk is full, so that every attempt happens on a full disk.
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    // a… is taken at once, b… deferred once, c… twice: each message needs several attempts,
    // and an envelope update after each.
    let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let upstream = world
        .upstream(|o| {
            o.mail_reply = Some(Arc::new(move |_: &str| {
                (!gate.load(Ordering::SeqCst))
                    .then(|| (451, "4.3.0 upstream busy, try later".to_string()))
            }));
            o.rcpt_reply = Some(Arc::new(move |rcpt: &str| {
                let deferrals = match rcpt.as_bytes()[0] {
                    b'b' => 1,
                    b'c' => 2,
                    _ => 0,
                };
                let mut tries = tries.lock().expect("tries lock");
                let n = tries.entry(rcpt.to_string()).or_default();
                *n += 1;
                (*n <= deferrals).then(|| (450, "4.2.1 mailbox busy, try later".to_string()))
            }));
        })
        .await;
    let queue = world.queue_dir();
    let daemon = world
        .config(&[upstream.port()], "10s")
        .start_wrapped(Path::new(BIN), Wrapper::private_tmpfs(&queue, "2m"));
    let spool = daemon.path_in_daemon(&queue);

    let addr = daemon.addr();
    let recipients: Vec<String> = tokio::task::spawn_blocking(move || {
        let mut smtp = Smtp::connect(addr, Duration::from_secs(10))?;
        let mut all = Vec::new();
        for n in 0..MESSAGES {
            let to: Vec<String> = ["a", "b", "c"]
                .iter()
                .map(|p| format!("{p}{n}@example.org"))
                .collect();
            let reply = smtp.send_mail(&to, &message(&format!("env-{n}"), &to, 1024))?;
            if reply.code != 250 {
                return Err(io::Error::other(format!("message {n}: {reply}")));
            }
            all.extend(to);
        }
        Ok::<_, io::Error>(all)
    })
    .await
    .expect("the client thread")
    .unwrap_or_else(|e| panic!("submission: {e}\n{}", daemon.log()));

    let ballast = spool.join("ballast");
    let fill = || fill_until_full(&ballast, 8 << 20).expect("fill the queue's tmpfs");
    let filled = fill();
    eprintln!("full disk during delivery: ballast of {filled} octets");
    let before = upstream.count();
    open.store(true, Ordering::SeqCst);
    // Kept full: each message the daemon removes frees room, which the ballast takes back.
    let full_until = Instant::now() + FULL_FOR;
    while Instant::now() < full_until {
        fill();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let while_full = upstream.count() - before;
    fs::remove_file(&ballast).expect("remove the ballast");
    assert!(
        while_full > 0,
        "nothing was delivered while the disk was full: the test proved nothing\n{}",
        daemon.log()
    );
    let failed_writes = daemon.log().matches("No space left on device").count();
    assert!(
        failed_writes > 0,
        "no write failed for lack of space: the test proved nothing\n{}",
        daemon.log()
    );
    eprintln!(
        "full disk during delivery: {while_full} transactions and {failed_writes} failed \
         writes logged in {FULL_FOR:?}"
    );

    let all = until(Duration::from_secs(30), || {
        let count = deliveries_per_address(&[&upstream]);
        let drained = envelopes(&spool).is_empty();
        (drained && recipients.iter().all(|r| count.contains_key(r))).then_some(())
    })
    .await;
    // Room for a repeated delivery to show up, if there were one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let count = deliveries_per_address(&[&upstream]);
    let twice: Vec<(&String, &usize)> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "recipients delivered more than once ({} of {}; {while_full} transactions while the \
         disk was full): {twice:?}",
        twice.len(),
        recipients.len()
    );
    let missing: Vec<&String> = recipients
        .iter()
        .filter(|r| !count.contains_key(*r))
        .collect();
    assert!(
        all.is_some() && missing.is_empty(),
        "never delivered: {missing:?}\n{}",
        daemon.log()
    );
}

/// A small deterministic generator (splitmix64), so that a failing crash schedule can be
/// replayed from its printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// What the spool said right after a kill.
struct Snapshot {
    killed_at: Instant,
    /// When the snapshot was done and the next run about to start: receipts from then on
    /// were sent by a later run.
    restarted_at: Instant,
    /// Queue ids with an envelope on disk.
    present: HashSet<String>,
    /// (queue id, recipient) recorded as delivered.
    delivered: HashSet<(String, String)>,
}

fn snapshot(queue: &Path, killed_at: Instant) -> Snapshot {
    let mut present = HashSet::new();
    let mut delivered = HashSet::new();
    for env in envelopes(queue) {
        let id = env["id"].as_str().expect("an envelope id").to_string();
        for r in env["recipients"].as_array().expect("recipients") {
            if r["state"] == "delivered" {
                let address = r["address"].as_str().expect("an address").to_string();
                delivered.insert((id.clone(), address));
            }
        }
        present.insert(id);
    }
    Snapshot {
        killed_at,
        restarted_at: Instant::now(),
        present,
        delivered,
    }
}

/// A message the daemon acknowledged: its queue id, recipients and when the 250 was read.
struct Accepted {
    id: String,
    to: Vec<String>,
    at: Instant,
}

/// Sends messages `numbers`, of two recipients each, reconnecting whenever the daemon dies
/// under it; a message is sent again until it is acknowledged. Gives up at `deadline`.
fn submit_through_crashes(
    addr: SocketAddr,
    numbers: std::ops::Range<usize>,
    accepted: &Mutex<Vec<Accepted>>,
    deadline: Instant,
) -> Result<(), String> {
    let mut session: Option<Smtp> = None;
    for n in numbers {
        let to = vec![
            format!("first{n}@example.org"),
            format!("second{n}@example.org"),
        ];
        let body = message(&format!("crash-{n}"), &to, 2048);
        loop {
            if Instant::now() > deadline {
                return Err(format!("message {n} not acknowledged in time"));
            }
            let smtp = match session.as_mut() {
                Some(s) => s,
                None => match Smtp::connect(addr, Duration::from_secs(10)) {
                    Ok(s) => session.insert(s),
                    Err(_) => {
                        // Restarting: try again shortly.
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                },
            };
            match smtp.send_mail(&to, &body) {
                Ok(reply) if reply.code == 250 => {
                    accepted.lock().expect("accepted lock").push(Accepted {
                        id: queued_as(&reply),
                        to: to.clone(),
                        at: Instant::now(),
                    });
                    break;
                }
                Ok(reply) if reply.code / 100 == 4 => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(reply) => return Err(format!("message {n} refused: {reply}")),
                Err(_) => session = None,
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_relay_run_delivers_everything_and_duplicates_only_in_flight() {
    within(Duration::from_secs(85), "the crash loop", crash_loop()).await;
}

async fn crash_loop() {
    const MESSAGES: usize = 500;
    const KILLS: usize = 10;
    const CLIENTS: usize = 4;
    let seed = std::env::var("MAILER_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("crash loop: seed {seed} (MAILER_FAULTS_SEED={seed} replays the schedule)");
    let mut rng = Rng(seed);

    let world = World::new(USER, PASSWORD);
    // A short wait before each 250, so that deliveries are in flight when the kill lands.
    let slow = |_: usize, stage: Stage<'_>| {
        matches!(stage, Stage::DataEnd(_)).then_some(Fault::Stall(Duration::from_millis(15)))
    };
    let steady = world.upstream(|o| o.fault = Some(Arc::new(slow))).await;
    let flaky = world
        .upstream(|o| {
            o.fault = Some(Arc::new(
                move |connection: usize, stage: Stage<'_>| match stage {
                    Stage::Connect if connection.is_multiple_of(2) => {
                        Some(Fault::Reply(421, "4.3.2 sink.test busy, try later".into()))
                    }
                    _ => slow(connection, stage),
                },
            ))
        })
        .await;
    let mut daemon = world
        .config(&[steady.port(), flaky.port()], "10s")
        .start(Path::new(BIN));
    let queue = world.queue_dir();
    let started = Instant::now();

    let accepted: Arc<Mutex<Vec<Accepted>>> = Arc::default();
    // Several clients at once, as the application's workers: deliveries overlap.
    let deadline = Instant::now() + Duration::from_secs(60);
    let per_client = MESSAGES / CLIENTS;
    let submitters: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let accepted = accepted.clone();
            let addr = daemon.addr();
            let numbers = c * per_client..(c + 1) * per_client;
            tokio::task::spawn_blocking(move || {
                submit_through_crashes(addr, numbers, &accepted, deadline)
            })
        })
        .collect();

    // Kill at random points of the run, measured in transactions the upstreams have taken.
    let mut marks: Vec<usize> = (0..KILLS)
        .map(|_| rng.between(20, (MESSAGES - 20) as u64) as usize)
        .collect();
    marks.sort_unstable();
    let received = || steady.count() + flaky.count();
    let mut snapshots: Vec<Snapshot> = Vec::new();
    for mark in marks {
        until(Duration::from_secs(30), || {
            (received() >= mark).then_some(())
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "the upstreams never reached {mark} transactions\n{}",
                daemon.log()
            )
        });
        tokio::time::sleep(Duration::from_millis(rng.between(0, 40))).await;
        daemon.kill9();
        snapshots.push(snapshot(&queue, Instant::now()));
        daemon.restart();
    }

    for submitter in submitters {
        submitter
            .await
            .expect("the client thread")
            .unwrap_or_else(|e| panic!("submission: {e}\n{}", daemon.log()));
    }
    let accepted = std::mem::take(&mut *accepted.lock().expect("accepted lock"));
    assert_eq!(accepted.len(), MESSAGES);
    let sinks = [&steady, &flaky];
    // Every receipt: (queue id, recipient) and when it arrived.
    let receipts = || -> Vec<((String, String), Instant)> {
        sinks
            .iter()
            .flat_map(|s| s.messages())
            .flat_map(|r| {
                let id = queue_id_of(&r);
                r.rcpt_to
                    .iter()
                    .map(|a| ((id.clone(), a.clone()), r.arrived))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let done = until(Duration::from_secs(40), || {
        let got: HashSet<(String, String)> = receipts().into_iter().map(|(k, _)| k).collect();
        let all = accepted.iter().all(|m| {
            m.to.iter()
                .all(|t| got.contains(&(m.id.clone(), t.clone())))
        });
        (all && envelopes(&queue).is_empty()).then_some(())
    })
    .await;
    // Room for a repeated delivery to show up, if there were one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let receipts = receipts();
    let elapsed = started.elapsed();

    let mut count: HashMap<&(String, String), usize> = HashMap::new();
    let mut first_seen: HashMap<&str, Instant> = HashMap::new();
    for (item, at) in &receipts {
        *count.entry(item).or_default() += 1;
        let first = first_seen.entry(item.0.as_str()).or_insert(*at);
        *first = (*first).min(*at);
    }
    let lost: Vec<(&str, &str)> = accepted
        .iter()
        .flat_map(|m| m.to.iter().map(move |t| (m.id.as_str(), t.as_str())))
        .filter(|(id, t)| !count.contains_key(&(id.to_string(), t.to_string())))
        .collect();
    assert!(
        done.is_some() && lost.is_empty(),
        "accepted but never delivered ({}): {lost:?}\n{}",
        lost.len(),
        daemon.log()
    );

    let acked_at: HashMap<&str, Instant> = accepted.iter().map(|m| (m.id.as_str(), m.at)).collect();
    let mut in_flight_at_kills = Vec::new();
    let mut in_flight_items: HashMap<&(String, String), usize> = HashMap::new();
    let mut run_began: Option<Instant> = None;
    for (k, s) in snapshots.iter().enumerate() {
        // Known to have been stored before this kill: acknowledged, or seen upstream.
        let stored_before = |id: &str| {
            acked_at.get(id).is_some_and(|at| *at < s.killed_at)
                || first_seen.get(id).is_some_and(|at| *at < s.restarted_at)
        };
        let done_at_kill = |item: &(String, String)| {
            s.delivered.contains(item) || (!s.present.contains(&item.0) && stored_before(&item.0))
        };
        let mut in_flight = 0;
        for (item, at) in &receipts {
            if !done_at_kill(item) {
                continue;
            }
            assert!(
                *at < s.restarted_at,
                "{item:?} was recorded as done before kill {} and sent again after it",
                k + 1
            );
        }
        for (item, at) in &receipts {
            let this_run = run_began.is_none_or(|b| *at >= b) && *at < s.restarted_at;
            if this_run && !done_at_kill(item) {
                in_flight += 1;
                *in_flight_items.entry(item).or_default() += 1;
            }
        }
        in_flight_at_kills.push(in_flight);
        run_began = Some(s.restarted_at);
    }
    let duplicates: usize = count.values().map(|n| n - 1).sum();
    let in_flight_total: usize = in_flight_at_kills.iter().sum();
    // Stored, but the kill took the 250 with it: the client sent the message again.
    let unacknowledged = first_seen
        .keys()
        .filter(|id| !acked_at.contains_key(*id))
        .count();
    eprintln!(
        "crash loop: {MESSAGES} messages ({} recipients), {KILLS} kills, {} deliveries \
         upstream, {duplicates} duplicates, {in_flight_total} in flight at the kills \
         {in_flight_at_kills:?}, {unacknowledged} stored without a 250 reaching the client, \
         {:.1} s; the flaky member refused {} of {} connections and took {} transactions",
        MESSAGES * 2,
        receipts.len(),
        elapsed.as_secs_f64(),
        flaky.connections() / 2,
        flaky.connections(),
        flaky.count(),
    );
    for (item, n) in &count {
        let allowed = 1 + in_flight_items.get(item).copied().unwrap_or(0);
        assert!(
            *n <= allowed,
            "{item:?} delivered {n} times, but in flight at only {} kills",
            allowed - 1
        );
    }
    assert!(duplicates <= in_flight_total);
}

/// Sends one message through an upstream with `fault` until `mailer queue list --json`
/// shows a `last_error` containing `expected`; then heals the upstream and checks that the
/// message is delivered, once. Returns the `last_error` seen.
async fn retried_after(
    fault: impl Fn(usize, Stage<'_>) -> Option<Fault> + Send + Sync + 'static,
    command_timeout: &str,
    expected: &str,
) -> String {
    let world = World::new(USER, PASSWORD);
    let healed = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let healed = healed.clone();
        let faults = faults.clone();
        world
            .upstream(|o| {
                o.fault = Some(Arc::new(move |connection: usize, stage: Stage<'_>| {
                    if healed.load(Ordering::SeqCst) {
                        return None;
                    }
                    let f = fault(connection, stage);
                    if f.is_some() {
                        faults.fetch_add(1, Ordering::SeqCst);
                    }
                    f
                }))
            })
            .await
    };
    let daemon = world
        .config(&[upstream.port()], command_timeout)
        .start(Path::new(BIN));
    let addr = daemon.addr();
    let id = tokio::task::spawn_blocking(move || {
        let to = vec!["pim@example.org".to_string()];
        let mut smtp = Smtp::connect(addr, Duration::from_secs(10))?;
        smtp.send_mail(&to, &message("upstream-fault", &to, 1024))
    })
    .await
    .expect("the client thread")
    .map(|reply| queued_as(&reply))
    .unwrap_or_else(|e| panic!("submission: {e}\n{}", daemon.log()));

    let mut last_seen = None;
    let mut reported = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while reported.is_none() && Instant::now() < deadline {
        let list = queue_list(&daemon.config).await;
        let error = list
            .iter()
            .find(|m| m["id"] == id.as_str())
            .and_then(|m| m["recipients"][0]["last_error"].as_str())
            .map(str::to_string);
        if let Some(e) = error {
            if e.contains(expected) {
                reported = Some(e);
            } else {
                last_seen = Some(e);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reported = reported.unwrap_or_else(|| {
        panic!(
            "queue list never showed a last_error with {expected:?} (last: {last_seen:?})\n{}",
            daemon.log()
        )
    });
    assert!(
        reported.contains(&format!("127.0.0.1]:{}", upstream.port())),
        "the error names the upstream: {reported}"
    );
    assert!(faults.load(Ordering::SeqCst) > 0);
    healed.store(true, Ordering::SeqCst);

    let got = upstream.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "not delivered once healed\n{}", daemon.log());
    assert_eq!(queue_id_of(&got[0]), id);
    let drained = until(Duration::from_secs(10), || {
        envelopes(&world.queue_dir()).is_empty().then_some(())
    })
    .await;
    assert!(drained.is_some(), "the message stayed queued");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.count(), 1, "delivered more than once");
    reported
}

/// `mailer queue list --json`, with a time limit.
async fn queue_list(config: &Path) -> Vec<Value> {
    let run = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["queue", "list", "--json"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("mailer queue list answers within 10 s")
        .expect("run mailer queue list");
    assert!(
        out.status.success(),
        "mailer queue list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("queue list --json prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_dropping_the_connection_after_the_data_is_retried_and_reported() {
    let drop_at_data_end =
        |_: usize, stage: Stage<'_>| matches!(stage, Stage::DataEnd(_)).then_some(Fault::Drop);
    let error = within(
        Duration::from_secs(60),
        "an upstream dropping the connection",
        retried_after(drop_at_data_end, "10s", "closed"),
    )
    .await;
    eprintln!("last_error: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_answering_421_to_rcpt_is_retried_and_reported() {
    let busy = |_: usize, stage: Stage<'_>| {
        matches!(stage, Stage::Rcpt(_))
            .then(|| Fault::Reply(421, "4.3.2 sink.test shutting down".into()))
    };
    let error = within(
        Duration::from_secs(60),
        "an upstream answering 421 to RCPT",
        retried_after(busy, "10s", "421 4.3.2 sink.test shutting down"),
    )
    .await;
    assert!(error.contains("RCPT TO:<pim@example.org>"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_answering_421_to_the_end_of_data_is_retried_and_reported() {
    let busy = |_: usize, stage: Stage<'_>| {
        matches!(stage, Stage::DataEnd(_))
            .then(|| Fault::Reply(421, "4.3.2 sink.test shutting down".into()))
    };
    let error = within(
        Duration::from_secs(60),
        "an upstream answering 421 to the end of data",
        retried_after(busy, "10s", "421 4.3.2 sink.test shutting down"),
    )
    .await;
    eprintln!("last_error: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_stalling_past_command_timeout_is_retried_and_reported() {
    let stall = |_: usize, stage: Stage<'_>| {
        matches!(stage, Stage::Mail(_)).then_some(Fault::Stall(Duration::from_secs(4)))
    };
    let error = within(
        Duration::from_secs(60),
        "an upstream stalling",
        retried_after(stall, "1s", "no reply to MAIL FROM within 1s"),
    )
    .await;
    eprintln!("last_error: {error}");
}
