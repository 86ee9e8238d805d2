//! The scheduler over a real spool: what happens to a message whose file went missing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailer_core::address::Address;
use mailer_core::delivery::dispatch::{Attempt, Deliverer, Job};
use mailer_core::delivery::Outcome;
use mailer_core::intake::{AcceptedRecipient, Incoming, Peer};
use mailer_core::queue::scheduler::{Scheduler, Timing};
use mailer_core::queue::{QueueId, RecipientState, Spool};

/// Counts deliveries and accepts them all.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Deliverer for Counting {
    async fn deliver(&self, job: Job) -> Attempt {
        self.0.fetch_add(1, Ordering::SeqCst);
        Attempt::of(
            job.recipients
                .iter()
                .map(|_| Outcome::Delivered { reply: None })
                .collect(),
        )
    }
    fn route(&self, _: &Address) -> Option<String> {
        Some("out".into())
    }
}

fn incoming() -> Incoming {
    let now = SystemTime::now();
    Incoming {
        id: QueueId::generate(now),
        sender: Some(Address::parse("app@ublog.tech").unwrap()),
        recipients: vec![AcceptedRecipient {
            address: Address::parse("pim@example.org").unwrap(),
            action: "out".into(),
        }],
        rest: b"Subject: x\r\n\r\nx\r\n".to_vec(),
        size: 17,
        head: b"Subject: x\r\n\r\n".to_vec(),
        eight_bit_content: false,
        arrived: now,
        smtputf8: false,
        eightbit: false,
        helo: "h".into(),
        peer: Peer {
            addr: None,
            submitter: None,
        },
    }
}

fn timing() -> Timing {
    Timing {
        retry_min: Duration::from_secs(60),
        retry_max: Duration::from_secs(60),
        lifetime: Duration::from_secs(3600),
        warn_after: Duration::ZERO,
    }
}

#[tokio::test]
async fn a_message_file_gone_missing_is_postponed_not_spun_on_and_its_envelope_kept() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    let good = incoming();
    let lost = incoming();
    for m in [&good, &lost] {
        spool.store(&m.envelope(), &m.rest).unwrap();
    }
    // An earlier attempt updated the envelope; then the message file went.
    spool.update(&lost.envelope()).unwrap();
    std::fs::remove_file(spool.message_path(lost.id)).unwrap();

    let deliverer = Arc::new(Counting::default());
    let scheduler = Scheduler::new(spool.clone(), deliverer.clone(), timing(), "mx.test".into());
    for m in [&good, &lost] {
        scheduler.enqueue(m.envelope());
    }
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(scheduler.clone().run(shutdown));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(true);
    let _ = running.await;

    assert_eq!(
        deliverer.0.load(Ordering::SeqCst),
        1,
        "only the intact message is delivered"
    );
    let queue = scheduler.snapshot();
    assert_eq!(queue.len(), 1);
    let r = &queue[0].recipients[0];
    assert_eq!(queue[0].id, lost.id);
    assert_eq!(r.state, RecipientState::Pending);
    assert!(
        r.last_error.as_deref().unwrap().starts_with("queue: "),
        "{r:?}"
    );
    let now = mailer_core::time::unix_seconds(SystemTime::now());
    assert!(
        r.next_attempt >= now + 50,
        "waits a retry interval, not a tight loop"
    );
    assert!(
        spool.read_envelope(lost.id).is_ok(),
        "its envelope stays for the admin"
    );
}

/// One job as the deliverer saw it: envelope sender, recipients, message.
type Seen = (Option<Address>, Vec<Address>, Vec<u8>);

/// Delivers by action: `ok` delivers, `retry` defers, `gone` fails for good, `alias` expands to
/// the address in `forward`. Remembers every job.
#[derive(Default)]
struct Scripted {
    jobs: std::sync::Mutex<Vec<Seen>>,
    forward: Option<Address>,
}

impl Scripted {
    fn deliveries_to(&self, to: &str) -> usize {
        let jobs = self.jobs.lock().unwrap();
        jobs.iter()
            .filter(|(_, rcpts, _)| rcpts.iter().any(|r| r.to_string() == to))
            .count()
    }

    /// Jobs whose envelope sender is null: the bounces.
    fn bounces(&self) -> Vec<(Vec<Address>, Vec<u8>)> {
        let jobs = self.jobs.lock().unwrap();
        jobs.iter()
            .filter(|(sender, _, _)| sender.is_none())
            .map(|(_, r, m)| (r.clone(), m.clone()))
            .collect()
    }
}

impl Deliverer for Scripted {
    async fn deliver(&self, job: Job) -> Attempt {
        use mailer_core::delivery::{EnhancedStatus, Failure, FailureKind};
        let rcpts: Vec<Address> = job.recipients.clone();
        self.jobs.lock().unwrap().push((
            job.sender.clone(),
            rcpts,
            job.message.to_vec().expect("readable"),
        ));
        let outcome = match job.action.as_str() {
            "retry" => Outcome::Failed(Failure::temporary(
                FailureKind::Reply(450),
                EnhancedStatus(4, 2, 0),
                "busy",
            )),
            "gone" => Outcome::Failed(Failure::permanent(
                FailureKind::Reply(450),
                EnhancedStatus(5, 1, 1),
                "no such user",
            )),
            _ => Outcome::Delivered { reply: None },
        };
        let mut attempt = Attempt::of(job.recipients.iter().map(|_| outcome.clone()).collect());
        if job.action == "alias" {
            attempt.forwards = self.forward.iter().map(|a| (0, a.clone())).collect();
        }
        attempt
    }
    fn route(&self, to: &Address) -> Option<String> {
        // Only this host's domain is routed (a local-only configuration).
        (to.domain() == "ublog.tech").then(|| "ok".to_string())
    }
}

fn message_to(recipients: &[(&str, &str)]) -> Incoming {
    let mut m = incoming();
    m.recipients = recipients
        .iter()
        .map(|(a, action)| AcceptedRecipient {
            address: Address::parse(a).unwrap(),
            action: action.to_string(),
        })
        .collect();
    m
}

fn quick() -> Timing {
    Timing {
        retry_min: Duration::from_secs(1),
        retry_max: Duration::from_secs(1),
        lifetime: Duration::from_secs(3600),
        warn_after: Duration::ZERO,
    }
}

/// A spool in a fresh directory holding `m`, and a scheduler over it that knows of `m`.
fn queued<D: Deliverer>(
    m: &Incoming,
    deliverer: Arc<D>,
) -> (tempfile::TempDir, Arc<Spool>, Arc<Scheduler<D>>) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    spool.store(&m.envelope(), &m.rest).unwrap();
    let scheduler = Scheduler::new(spool.clone(), deliverer, quick(), "mx.test".into());
    scheduler.enqueue(m.envelope());
    (dir, spool, scheduler)
}

/// Runs the scheduler for `d`, then stops it.
async fn run_for<D: Deliverer>(scheduler: &Arc<Scheduler<D>>, d: Duration) {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(scheduler.clone().run(shutdown));
    tokio::time::sleep(d).await;
    let _ = stop.send(true);
    let _ = running.await;
}

/// Makes every envelope write fail (as on a full disk) until the returned guard is dropped:
/// the spool's `tmp/` becomes a plain file.
struct BrokenTmp(std::path::PathBuf);

impl BrokenTmp {
    fn new(root: &std::path::Path) -> BrokenTmp {
        std::fs::rename(root.join("tmp"), root.join("tmp.away")).unwrap();
        std::fs::write(root.join("tmp"), b"not a directory").unwrap();
        BrokenTmp(root.to_path_buf())
    }
}

impl Drop for BrokenTmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("tmp"));
        let _ = std::fs::rename(self.0.join("tmp.away"), self.0.join("tmp"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_envelope_write_never_sends_a_delivered_recipient_again() {
    let m = message_to(&[("a@example.org", "ok"), ("b@example.org", "retry")]);
    let deliverer = Arc::new(Scripted::default());
    let (dir, spool, scheduler) = queued(&m, deliverer.clone());

    let broken = BrokenTmp::new(dir.path());
    run_for(&scheduler, Duration::from_millis(3500)).await;
    assert_eq!(
        deliverer.deliveries_to("a@example.org"),
        1,
        "a is delivered once"
    );
    assert_eq!(
        deliverer.deliveries_to("b@example.org"),
        0,
        "nothing more is sent while the state cannot be written"
    );
    let queued = scheduler.get(m.id).expect("still queued");
    assert_eq!(
        queued.recipients[0].state,
        RecipientState::Delivered,
        "memory keeps it"
    );
    assert_eq!(
        spool.read_envelope(m.id).unwrap().recipients[0].state,
        RecipientState::Pending,
        "the disk could not be told yet"
    );

    drop(broken);
    run_for(&scheduler, Duration::from_millis(3500)).await;
    assert_eq!(
        spool.read_envelope(m.id).unwrap().recipients[0].state,
        RecipientState::Delivered,
        "written once the disk takes it"
    );
    assert!(deliverer.deliveries_to("b@example.org") >= 1, "b is tried");
    assert_eq!(deliverer.deliveries_to("a@example.org"), 1, "a never again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_removal_never_sends_the_message_again() {
    let m = message_to(&[("a@example.org", "ok")]);
    let deliverer = Arc::new(Scripted::default());
    let (dir, spool, scheduler) = queued(&m, deliverer.clone());

    // The envelope cannot be removed (nor replaced): an I/O error on every try.
    let env = dir.path().join(format!("q/{}.env", m.id));
    let _ = std::fs::remove_file(&env);
    std::fs::create_dir(&env).unwrap();
    std::fs::write(env.join("x"), b"x").unwrap();
    run_for(&scheduler, Duration::from_millis(3500)).await;
    assert_eq!(deliverer.deliveries_to("a@example.org"), 1);
    assert!(scheduler.get(m.id).is_some_and(|e| e.is_done()));

    std::fs::remove_dir_all(&env).unwrap();
    run_for(&scheduler, Duration::from_millis(3500)).await;
    assert_eq!(
        deliverer.deliveries_to("a@example.org"),
        1,
        "never sent again"
    );
    assert!(scheduler.get(m.id).is_none(), "removed once it can be");
    assert!(!spool.message_path(m.id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_target_no_rule_routes_bounces_to_the_sender() {
    let m = message_to(&[("root@localhost", "alias")]);
    let deliverer = Arc::new(Scripted {
        forward: Some(Address::parse("me@example.org").unwrap()),
        ..Scripted::default()
    });
    let (_dir, _spool, scheduler) = queued(&m, deliverer.clone());
    run_for(&scheduler, Duration::from_millis(1500)).await;

    let bounces = deliverer.bounces();
    assert_eq!(bounces.len(), 1, "one DSN");
    assert_eq!(bounces[0].0[0].to_string(), "app@ublog.tech");
    let dsn = String::from_utf8_lossy(&bounces[0].1);
    for part in [
        "Final-Recipient: rfc822; me@example.org",
        "Original-Recipient: rfc822; root@localhost",
        "Status: 5.4.4",
        "alias root@localhost expands to me@example.org,",
    ] {
        assert!(dsn.contains(part), "{part} missing in:\n{dsn}");
    }
    assert!(scheduler.get(m.id).is_none(), "the message is done");
}

/// Defers every message, except bounces, which it delivers and keeps.
#[derive(Default)]
struct Deferring {
    attempts: AtomicUsize,
    bounces: std::sync::Mutex<Vec<String>>,
}

impl Deliverer for Deferring {
    async fn deliver(&self, job: Job) -> Attempt {
        use mailer_core::delivery::{EnhancedStatus, Failure, FailureKind};
        if job.sender.is_none() {
            let text =
                String::from_utf8_lossy(&job.message.to_vec().expect("readable")).into_owned();
            self.bounces.lock().unwrap().push(text);
            return Attempt::of(vec![Outcome::Delivered { reply: None }]);
        }
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let busy = Failure::temporary(
            FailureKind::Reply(451),
            EnhancedStatus(4, 3, 0),
            "451 4.3.0 try later",
        );
        Attempt::of(Outcome::all_failed(job.recipients.len(), &busy))
    }
    fn route(&self, _: &Address) -> Option<String> {
        Some("out".into())
    }
}

/// Four days of retries, stepped in virtual time: the delay notice goes out once, at four
/// hours; the message expires at four days with a DSN; every retry keeps to the backoff.
#[tokio::test]
async fn a_message_warns_at_4_hours_and_expires_after_4_days_in_virtual_time() {
    use std::time::UNIX_EPOCH;
    let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    let mut m = incoming();
    m.arrived = start;
    m.id = QueueId::generate(start);
    spool.store(&m.envelope(), &m.rest).unwrap();
    let deliverer = Arc::new(Deferring::default());
    let timing = Timing {
        retry_min: Duration::from_secs(300),
        retry_max: Duration::from_secs(3600),
        lifetime: Duration::from_secs(4 * 86_400),
        warn_after: Duration::from_secs(4 * 3600),
    };
    let scheduler = Scheduler::new(spool.clone(), deliverer.clone(), timing, "mx.test".into());
    scheduler.seed(7);
    scheduler.enqueue(m.envelope());

    let wall = std::time::Instant::now();
    let mut now = start;
    let (mut warned_at, mut gone_at) = (None, None);
    let mut attempts_at = Vec::new();
    for _ in 0..1_000 {
        let before = deliverer.attempts.load(Ordering::SeqCst);
        let next = scheduler.tick(now).await;
        if deliverer.attempts.load(Ordering::SeqCst) > before {
            attempts_at.push(now);
        }
        match scheduler.get(m.id) {
            Some(env) if env.warned && warned_at.is_none() => warned_at = Some(now),
            None if gone_at.is_none() => gone_at = Some(now),
            _ => {}
        }
        match next {
            Some(t) => now = t.max(now),
            None => break,
        }
    }
    let hours = |t: SystemTime| t.duration_since(start).unwrap().as_secs_f64() / 3600.0;
    let warned = hours(warned_at.expect("a delay notice"));
    assert!((4.0..5.0).contains(&warned), "warned at {warned} h");
    let gone = hours(gone_at.expect("expired"));
    assert!((96.0..97.0).contains(&gone), "expired at {gone} h");
    for pair in attempts_at.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap().as_secs();
        assert!(
            (240..=3600).contains(&gap),
            "a retry {gap} s after the last"
        );
    }
    assert!(
        (80..=120).contains(&attempts_at.len()),
        "{} attempts in four days",
        attempts_at.len()
    );
    let bounces = deliverer.bounces.lock().unwrap();
    assert_eq!(bounces.len(), 2, "one delay notice, one failure");
    assert!(bounces[0].contains("Action: delayed"), "{}", bounces[0]);
    assert!(bounces[1].contains("Action: failed"), "{}", bounces[1]);
    assert!(bounces[1].contains("Status: 4.4.7"), "{}", bounces[1]);
    eprintln!(
        "four days: {} attempts, warned at {warned:.2} h, expired at {gone:.2} h, in {:?} of wall time",
        attempts_at.len(),
        wall.elapsed()
    );
}

/// An alias target left pending without an action (its bounce could not be stored) is
/// routed again at its next attempt: delivered if a rule takes it now, else bounced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrouted_alias_target_left_pending_is_routed_again_or_bounced() {
    let m = message_to(&[("root@localhost", "ok")]);
    let mut env = m.envelope();
    env.recipients[0].state = RecipientState::Delivered;
    for target in ["me@example.org", "ann@ublog.tech"] {
        let mut r = env.recipients[0].clone();
        r.address = Address::parse(target).unwrap();
        r.action = String::new();
        r.state = RecipientState::Pending;
        r.original = Some(Address::parse("root@localhost").unwrap());
        env.recipients.push(r);
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    spool.store(&env, &m.rest).unwrap();
    let deliverer = Arc::new(Scripted::default());
    let scheduler = Scheduler::new(spool.clone(), deliverer.clone(), quick(), "mx.test".into());
    scheduler.enqueue(env);
    run_for(&scheduler, Duration::from_millis(1500)).await;

    assert_eq!(
        deliverer.deliveries_to("ann@ublog.tech"),
        1,
        "routed now: delivered"
    );
    assert_eq!(deliverer.deliveries_to("me@example.org"), 0);
    let bounces = deliverer.bounces();
    assert_eq!(bounces.len(), 1);
    let dsn = String::from_utf8_lossy(&bounces[0].1);
    assert!(
        dsn.contains("Final-Recipient: rfc822; me@example.org"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.4.4"), "{dsn}");
    assert!(scheduler.get(m.id).is_none(), "the message is done");
}

#[tokio::test]
async fn a_flush_makes_a_deep_queue_due_without_a_write_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    let deliverer = Arc::new(Counting::default());
    let scheduler = Scheduler::new(spool.clone(), deliverer.clone(), timing(), "mx.test".into());
    // 200 messages deferred for an hour, as after an upstream outage.
    let later = mailer_core::time::unix_seconds(SystemTime::now()) + 3600;
    for _ in 0..200 {
        let m = incoming();
        let mut env = m.envelope();
        env.recipients[0].attempts = 1;
        env.recipients[0].next_attempt = later;
        spool.store(&env, &m.rest).unwrap();
        scheduler.enqueue(env);
    }
    let files = || std::fs::read_dir(dir.path().join("q")).unwrap().count();
    assert_eq!(files(), 200);

    assert_eq!(scheduler.flush(None, SystemTime::now()), 200);
    assert_eq!(
        files(),
        200,
        "no envelope was rewritten by the flush itself"
    );
    assert_eq!(deliverer.0.load(Ordering::SeqCst), 0);

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(scheduler.clone().run(shutdown));
    for _ in 0..100 {
        if deliverer.0.load(Ordering::SeqCst) == 200 && scheduler.snapshot().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let _ = running.await;
    assert_eq!(
        deliverer.0.load(Ordering::SeqCst),
        200,
        "each delivered once"
    );
    assert!(scheduler.snapshot().is_empty());
    assert_eq!(files(), 0);
}
