//! The smarthost pool: failover, the circuit breaker and session reuse, against real servers
//! on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mailer_core::address::Address;
use mailer_core::delivery::content::Content;
use mailer_core::delivery::relay::{
    Credentials, Member, Pool, RelaySettings, Security, StaticResolver,
};
use mailer_core::delivery::Outcome;
use mailer_testkit::certs::TestCa;
use mailer_testkit::sink::{Sink, SinkOptions};

const WAIT: Duration = Duration::from_secs(5);

fn addr(s: &str) -> Address {
    Address::parse(s).expect("test address")
}

/// A message as the queue gives it.
fn msg(bytes: &[u8]) -> Content {
    Content::from_bytes(bytes.to_vec())
}

fn member(at: SocketAddr, security: Security) -> Member {
    Member {
        host: at.ip().to_string(),
        port: at.port(),
        security,
        credentials: Some(Credentials {
            user: "alice".into(),
            password: "correct horse".into(),
        }),
    }
}

fn settings(ca: &TestCa, members: Vec<Member>) -> RelaySettings {
    let mut settings = RelaySettings::new("client.test", members);
    settings.extra_roots = vec![ca.cert_der()];
    settings.connect_timeout = WAIT;
    settings.command_timeout = WAIT;
    settings.data_end_timeout = WAIT;
    settings
}

fn tls_auth_sink(ca: &TestCa) -> SinkOptions {
    SinkOptions {
        tls: Some(ca.issue(&["127.0.0.1"])),
        require_tls: true,
        auth: Some(("alice".into(), "correct horse".into())),
        ..SinkOptions::default()
    }
}

fn assert_delivered(outcomes: &[Outcome]) {
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Delivered { .. })),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn pool_fails_over_and_does_not_retry_dead_members() {
    let ca = TestCa::new();
    let refusing = Sink::refusing();
    let busy = Sink::start(SinkOptions {
        greeting_421: true,
        ..tls_auth_sink(&ca)
    })
    .await;
    let good = Sink::start(tls_auth_sink(&ca)).await;
    let members = vec![
        member(refusing, Security::StartTls),
        member(busy.addr(), Security::StartTls),
        member(good.addr(), Security::StartTls),
    ];
    let pool = Pool::new(settings(&ca, members), StaticResolver::default()).unwrap();

    for i in 0..3 {
        let body = format!("message {i}\r\n");
        assert_delivered(
            &pool
                .deliver(None, &[addr("bob@example.org")], &msg(body.as_bytes()))
                .await
                .outcomes,
        );
    }
    assert_eq!(
        busy.connections(),
        1,
        "the 421 member is tried once, then skipped"
    );
    let tried_again = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"later\r\n"))
        .await
        .outcomes;
    assert_delivered(&tried_again);

    assert_eq!(
        busy.connections(),
        1,
        "a later deliver call must skip the 421 member"
    );
    assert_eq!(good.wait_for(4, WAIT).await.len(), 4);
    assert_eq!(good.connections(), 1, "the good member's session is reused");
    let status = pool.status();
    let of = |a: SocketAddr| {
        status
            .iter()
            .find(|s| s.address == a)
            .expect("member listed")
    };
    assert!(of(refusing).breaker_open_until.is_some());
    assert!(of(busy.addr()).breaker_open_until.is_some());
    assert!(of(busy.addr())
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("421 4.3.2"));
    assert_eq!(of(good.addr()).breaker_open_until, None);
    assert_eq!(of(good.addr()).open_connections, 1);
    assert_eq!(of(good.addr()).idle_connections, 1);
}

#[tokio::test]
async fn relay_skips_dead_pool_member_without_waiting() {
    let ca = TestCa::new();
    let silent = Sink::start(SinkOptions {
        greeting_delay: Some(Duration::from_secs(30)),
        ..tls_auth_sink(&ca)
    })
    .await;
    let good = Sink::start(tls_auth_sink(&ca)).await;
    let mut settings = settings(
        &ca,
        vec![
            member(silent.addr(), Security::StartTls),
            member(good.addr(), Security::StartTls),
        ],
    );
    settings.connect_timeout = Duration::from_millis(500);
    let pool = Pool::new(settings, StaticResolver::default()).unwrap();

    let started = Instant::now();
    assert_delivered(
        &pool
            .deliver(None, &[addr("bob@example.org")], &msg(b"one\r\n"))
            .await
            .outcomes,
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the first call waits for the silent member"
    );

    let started = Instant::now();
    for _ in 0..3 {
        assert_delivered(
            &pool
                .deliver(None, &[addr("bob@example.org")], &msg(b"again\r\n"))
                .await
                .outcomes,
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "later calls must not wait for the silent member: {:?}",
        started.elapsed()
    );
    assert_eq!(silent.connections(), 1);
    assert_eq!(good.wait_for(4, WAIT).await.len(), 4);
}

#[tokio::test]
async fn a_lone_member_is_still_probed_while_its_breaker_is_open() {
    // With no alternative, skipping the member would only delay mail: it is tried again.
    let ca = TestCa::new();
    let busy = Sink::start(SinkOptions {
        greeting_421: true,
        ..tls_auth_sink(&ca)
    })
    .await;
    let mut settings = settings(&ca, vec![member(busy.addr(), Security::StartTls)]);
    settings.breaker_backoff = Duration::from_secs(60);
    let pool = Pool::new(settings, StaticResolver::default()).unwrap();
    for _ in 0..2 {
        let outcome = pool
            .deliver(None, &[addr("bob@example.org")], &msg(b"x\r\n"))
            .await
            .outcomes;
        assert!(matches!(&outcome[0], Outcome::Failed(f) if !f.permanent));
    }
    assert_eq!(busy.connections(), 2);
}

#[tokio::test]
async fn all_members_failing_names_every_address() {
    let ca = TestCa::new();
    let refusing = Sink::refusing();
    let busy = Sink::start(SinkOptions {
        greeting_421: true,
        ..tls_auth_sink(&ca)
    })
    .await;
    let mut members = vec![
        member(refusing, Security::StartTls),
        member(busy.addr(), Security::StartTls),
    ];
    members.push(Member {
        host: "relay.invalid".into(),
        port: 25,
        security: Security::StartTls,
        credentials: None,
    });
    let pool = Pool::new(settings(&ca, members), StaticResolver(HashMap::new())).unwrap();
    let recipients = [addr("ann@example.org"), addr("bob@example.org")];

    let outcomes = pool
        .deliver(None, &recipients, &msg(b"x\r\n"))
        .await
        .outcomes;

    assert_eq!(outcomes.len(), 2);
    for outcome in &outcomes {
        let Outcome::Failed(f) = outcome else {
            panic!("must fail: {outcomes:?}")
        };
        assert!(!f.permanent);
        assert!(
            f.reason.contains(&format!(
                "127.0.0.1[127.0.0.1]:{}: connect failed",
                refusing.port()
            )),
            "{}",
            f.reason
        );
        assert!(
            f.reason.contains(&format!(
                "127.0.0.1[127.0.0.1]:{}: greeting rejected: 421 4.3.2",
                busy.port()
            )),
            "{}",
            f.reason
        );
        assert!(
            f.reason.contains("relay.invalid: address lookup failed"),
            "{}",
            f.reason
        );
    }
}

#[tokio::test]
async fn ten_messages_to_one_member_use_one_connection() {
    let ca = TestCa::new();
    let sink = Sink::start(tls_auth_sink(&ca)).await;
    let pool = Pool::new(
        settings(&ca, vec![member(sink.addr(), Security::StartTls)]),
        StaticResolver::default(),
    )
    .unwrap();

    for i in 0..10 {
        let body = format!("message {i}\r\n");
        assert_delivered(
            &pool
                .deliver(
                    Some(&addr("a@ublog.tech")),
                    &[addr("bob@example.org")],
                    &msg(body.as_bytes()),
                )
                .await
                .outcomes,
        );
    }

    let got = sink.wait_for(10, WAIT).await;
    assert_eq!(got.len(), 10);
    for (i, message) in got.iter().enumerate() {
        assert_eq!(message.data, format!("message {i}\r\n").as_bytes());
        assert_eq!(message.auth_user.as_deref(), Some("alice"));
    }
    assert_eq!(sink.connections(), 1);
    assert_eq!(sink.auth_attempts(), 1);
}

#[tokio::test]
async fn a_session_closed_by_the_server_is_replaced_without_losing_the_message() {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions {
        idle_timeout: Some(Duration::from_millis(100)),
        ..tls_auth_sink(&ca)
    })
    .await;
    let pool = Pool::new(
        settings(&ca, vec![member(sink.addr(), Security::StartTls)]),
        StaticResolver::default(),
    )
    .unwrap();
    assert_delivered(
        &pool
            .deliver(None, &[addr("bob@example.org")], &msg(b"first\r\n"))
            .await
            .outcomes,
    );

    // The server hangs up on the idle session; the next message must still go out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_delivered(
        &pool
            .deliver(None, &[addr("bob@example.org")], &msg(b"second\r\n"))
            .await
            .outcomes,
    );

    let got = sink.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].data, b"second\r\n");
    assert_eq!(sink.connections(), 2);
    let status = pool.status();
    assert_eq!(
        status[0].breaker_open_until, None,
        "a stale session is not a member failure"
    );
}

/// Each member's fault is reported with its kind, decided where it happened: metrics count
/// these, and nothing reads the reason text.
#[tokio::test]
async fn each_failing_member_is_reported_with_the_kind_of_its_fault() {
    use mailer_core::delivery::relay::MemberFault;
    use mailer_core::delivery::FailureKind;
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let refusing = Sink::refusing();
    let busy = Sink::start(SinkOptions {
        greeting_421: true,
        ..tls_auth_sink(&ca)
    })
    .await;
    let unverifiable = Sink::start(SinkOptions {
        tls: Some(other_ca.issue(&["127.0.0.1"])),
        ..tls_auth_sink(&ca)
    })
    .await;
    let wrong_password = Sink::start(SinkOptions {
        auth: Some(("alice".into(), "another password".into())),
        ..tls_auth_sink(&ca)
    })
    .await;
    let refusing_rcpt = Sink::start(SinkOptions {
        rcpt_reply: Some(std::sync::Arc::new(|_: &str| {
            Some((550, "5.1.1 no such user".to_string()))
        })),
        ..tls_auth_sink(&ca)
    })
    .await;
    let mut members = vec![Member {
        host: "relay.invalid".into(),
        port: 25,
        security: Security::StartTls,
        credentials: None,
    }];
    for at in [
        refusing,
        busy.addr(),
        unverifiable.addr(),
        wrong_password.addr(),
        refusing_rcpt.addr(),
    ] {
        members.push(member(at, Security::StartTls));
    }
    // The first delivery starts with the first member: the one refusing the recipient, which
    // ends the delivery, comes last.
    let pool = Pool::new(settings(&ca, members), StaticResolver(HashMap::new())).unwrap();

    let mut result = pool
        .deliver(None, &[addr("ann@example.org")], &msg(b"x\r\n"))
        .await;
    // In a stable order: the members' order depends on rotation.
    result.faults.sort_by_key(|f| f.kind.label());
    let fault = |kind| MemberFault {
        host: "127.0.0.1".into(),
        kind,
    };
    assert_eq!(
        result.faults,
        [
            fault(FailureKind::Reply(421)),
            fault(FailureKind::Reply(550)),
            fault(FailureKind::Auth),
            fault(FailureKind::Connect),
            MemberFault {
                host: "relay.invalid".into(),
                kind: FailureKind::Dns
            },
            fault(FailureKind::Tls),
        ]
    );
}

/// A clock the test moves by hand.
struct ManualClock {
    start: std::time::Instant,
    offset: std::sync::Mutex<Duration>,
}

impl ManualClock {
    fn new() -> std::sync::Arc<ManualClock> {
        std::sync::Arc::new(ManualClock {
            start: std::time::Instant::now(),
            offset: std::sync::Mutex::new(Duration::ZERO),
        })
    }

    fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl mailer_core::time::Clock for ManualClock {
    fn now(&self) -> std::time::Instant {
        self.start + *self.offset.lock().unwrap()
    }
}

/// The breaker in virtual time: a failed member is skipped for `breaker_backoff`, then tried
/// again; no test sleeps for the minute.
#[tokio::test]
async fn a_failed_member_is_skipped_for_the_breaker_backoff_then_tried_again() {
    let ca = TestCa::new();
    let busy = Sink::start(SinkOptions {
        greeting_421: true,
        ..tls_auth_sink(&ca)
    })
    .await;
    let good = Sink::start(tls_auth_sink(&ca)).await;
    let mut settings = settings(
        &ca,
        vec![
            member(busy.addr(), Security::StartTls),
            member(good.addr(), Security::StartTls),
        ],
    );
    settings.breaker_backoff = Duration::from_secs(60);
    let clock = ManualClock::new();
    let pool = Pool::new(settings, StaticResolver::default())
        .unwrap()
        .with_clock(clock.clone());
    let open = |pool: &Pool| {
        pool.status()
            .iter()
            .find(|m| m.address == busy.addr())
            .and_then(|m| m.breaker_open_until)
    };

    // The first delivery starts with the busy member, which fails and is tripped.
    let one = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"1\r\n"))
        .await;
    assert_delivered(&one.outcomes);
    assert_eq!(busy.connections(), 1);
    let until = open(&pool).expect("the breaker is open");
    assert_eq!(
        until - mailer_core::time::Clock::now(&*clock),
        Duration::from_secs(60)
    );

    // 59 s later it is still skipped.
    clock.advance(Duration::from_secs(59));
    let two = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"2\r\n"))
        .await;
    assert_delivered(&two.outcomes);
    assert_eq!(busy.connections(), 1, "skipped while the breaker is open");
    assert!(two.faults.is_empty(), "a skipped member is no new fault");
    assert!(open(&pool).is_some());

    // At 60 s the breaker closes: the member is a candidate again. (Without the idle
    // session to the good member, which would be preferred, the rotation reaches it first.)
    clock.advance(Duration::from_secs(1));
    assert_eq!(open(&pool), None);
    pool.close_idle().await;
    let three = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"3\r\n"))
        .await;
    assert_delivered(&three.outcomes);
    assert_eq!(busy.connections(), 2, "tried again once the breaker closed");
    assert_eq!(
        three.faults[0].kind,
        mailer_core::delivery::FailureKind::Reply(421)
    );
}
