//! The DSN of a failed recipient is stored before its failed state: when the bounce cannot be
//! stored, the failure is not recorded either, and nothing is lost.
//!
//! Its own test binary: the fault is the kernel's file size limit (RLIMIT_FSIZE), which holds
//! for the whole process. It lets the small envelope rewrite succeed while the larger DSN
//! fails with EFBIG, as a nearly full disk does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mailer_core::address::Address;
use mailer_core::delivery::dispatch::{Attempt, Deliverer, Job};
use mailer_core::delivery::{EnhancedStatus, Failure, FailureKind, Outcome};
use mailer_core::intake::{AcceptedRecipient, Incoming, Peer};
use mailer_core::queue::scheduler::{Scheduler, Timing};
use mailer_core::queue::{QueueId, RecipientState, Spool};

/// Rejects `pim@example.org` for good; delivers the rest (the bounces). Remembers bounces.
#[derive(Default)]
struct Rejecting {
    bounces: Mutex<Vec<Vec<u8>>>,
}

impl Deliverer for Rejecting {
    async fn deliver(&self, job: Job) -> Attempt {
        if job.sender.is_none() {
            self.bounces
                .lock()
                .unwrap()
                .push(job.message.to_vec().expect("readable"));
            return Attempt::of(vec![Outcome::Delivered { reply: None }]);
        }
        Attempt::of(
            job.recipients
                .iter()
                .map(|_| {
                    Outcome::Failed(Failure::permanent(
                        FailureKind::Reply(550),
                        EnhancedStatus(5, 1, 1),
                        "550 5.1.1 no such user",
                    ))
                })
                .collect(),
        )
    }
    fn route(&self, _: &Address) -> Option<String> {
        Some("out".into())
    }
}

fn set_file_size_limit(bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes as libc::rlim_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain system calls on this process; SIGXFSZ ignored so that a write past the
    // limit fails with EFBIG instead of killing the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_that_cannot_be_stored_leaves_its_recipient_pending_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    // A header section long enough that its DSN (which quotes it) outgrows the limit below;
    // the envelope stays far under it.
    let mut message = String::new();
    for i in 0..60 {
        message.push_str(&format!("X-Trace-{i:02}: {}\r\n", "t".repeat(60)));
    }
    message.push_str("Subject: hello\r\n\r\nbody\r\n");
    let now = SystemTime::now();
    let incoming = Incoming {
        id: QueueId::generate(now),
        sender: Some(Address::parse("app@ublog.tech").unwrap()),
        recipients: vec![AcceptedRecipient {
            address: Address::parse("pim@example.org").unwrap(),
            action: "out".into(),
        }],
        size: message.len() as u64,
        head: Vec::new(),
        eight_bit_content: false,
        rest: message.into_bytes(),
        arrived: now,
        smtputf8: false,
        eightbit: false,
        helo: "h".into(),
        peer: Peer {
            addr: None,
            submitter: None,
        },
    };
    spool.store(&incoming.envelope(), &incoming.rest).unwrap();
    let deliverer = Arc::new(Rejecting::default());
    let timing = Timing {
        retry_min: Duration::from_secs(1),
        retry_max: Duration::from_secs(1),
        lifetime: Duration::from_secs(3600),
        warn_after: Duration::ZERO,
    };
    let scheduler = Scheduler::new(spool.clone(), deliverer.clone(), timing, "mx.test".into());
    scheduler.enqueue(incoming.envelope());

    set_file_size_limit(3000);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(scheduler.clone().run(shutdown));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let on_disk = spool.read_envelope(incoming.id).expect("still queued");
    let r = &on_disk.recipients[0];
    assert_eq!(
        r.state,
        RecipientState::Pending,
        "a failure is only recorded once its bounce is stored"
    );
    let why = r.last_error.as_deref().unwrap_or_default();
    assert!(
        why.contains("no such user") && why.contains("the bounce could not be queued"),
        "{why}"
    );

    // Room again: the next attempt fails the recipient and this time the bounce is stored.
    set_file_size_limit(u64::MAX);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while deliverer.bounces.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let _ = running.await;
    let bounces = deliverer.bounces.lock().unwrap();
    assert_eq!(bounces.len(), 1, "the sender hears of it, once");
    assert!(
        String::from_utf8_lossy(&bounces[0]).contains("Final-Recipient: rfc822; pim@example.org")
    );
}
