//! The scheduler over a real spool: what happens to a message whose file went missing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailer_core::address::Address;
use mailer_core::delivery::Outcome;
use mailer_core::intake::{AcceptedRecipient, Incoming, Peer};
use mailer_core::queue::scheduler::{Attempt, Deliverer, Job, Scheduler, Timing};
use mailer_core::queue::{Envelope, QueueId, RecipientState, Spool};

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
        message: b"Subject: x\r\n\r\nx\r\n".to_vec(),
        arrived: now,
        smtputf8: false,
        eightbit: false,
        helo: "h".into(),
        peer: Peer { addr: None },
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
        spool
            .store(&Envelope::from_incoming(m), &m.message)
            .unwrap();
    }
    std::fs::remove_file(spool.message_path(lost.id)).unwrap();

    let deliverer = Arc::new(Counting::default());
    let scheduler = Scheduler::new(spool.clone(), deliverer.clone(), timing(), "mx.test".into());
    for m in [&good, &lost] {
        scheduler.enqueue(Envelope::from_incoming(m));
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
