//! The relay client against a real SMTP server on loopback, with real TLS.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use mailer_core::address::Address;
use mailer_core::delivery::content::{Content, CHUNK};
use mailer_core::delivery::relay::{
    Credentials, Member, Pool, RelaySettings, Security, StaticResolver,
};
use mailer_core::delivery::{EnhancedStatus, Failure, Outcome};
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

fn localhost() -> StaticResolver {
    StaticResolver(HashMap::from([(
        "localhost".to_string(),
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    )]))
}

fn settings(ca: &TestCa, host: &str, sink: &Sink, security: Security, auth: bool) -> RelaySettings {
    let mut settings = RelaySettings::new(
        "client.test",
        vec![Member {
            host: host.to_string(),
            port: sink.port(),
            security,
            credentials: auth.then(|| Credentials {
                user: "alice".into(),
                password: "correct horse".into(),
            }),
        }],
    );
    settings.extra_roots = vec![ca.cert_der()];
    settings.connect_timeout = WAIT;
    settings.command_timeout = WAIT;
    settings.data_end_timeout = WAIT;
    settings
}

/// A pool of one member, `localhost`, reached with STARTTLS and AUTH.
fn starttls_pool(ca: &TestCa, sink: &Sink) -> Pool {
    Pool::new(
        settings(ca, "localhost", sink, Security::StartTls, true),
        localhost(),
    )
    .expect("a valid test pool")
}

fn auth_sink_options(ca: &TestCa, names: &[&str]) -> SinkOptions {
    SinkOptions {
        tls: Some(ca.issue(names)),
        require_tls: true,
        auth: Some(("alice".into(), "correct horse".into())),
        ..SinkOptions::default()
    }
}

fn only_failure(outcomes: &[Outcome]) -> &Failure {
    assert_eq!(
        outcomes.len(),
        1,
        "one recipient, one outcome: {outcomes:?}"
    );
    match &outcomes[0] {
        Outcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn starttls_and_auth_plain_deliver_byte_exact_data() {
    let ca = TestCa::new();
    let sink = Sink::start(auth_sink_options(&ca, &["localhost"])).await;
    let pool = starttls_pool(&ca, &sink);
    let body =
        "Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nnaïve 8-bit ✓\r\nno final newline"
            .as_bytes();
    let recipients = [addr("bob@example.org"), addr("jösé@exämple.org")];

    let outcomes = pool
        .deliver(Some(&addr("alice@ublog.tech")), &recipients, &msg(body))
        .await
        .outcomes;

    let delivered = Outcome::Delivered {
        reply: Some("250 2.0.0 queued".into()),
    };
    assert_eq!(outcomes, vec![delivered.clone(), delivered]);
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let mut expected = body.to_vec();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(got[0].data, expected, "data must arrive byte for byte");
    assert_eq!(got[0].mail_from, "alice@ublog.tech");
    assert_eq!(got[0].rcpt_to, vec!["bob@example.org", "jösé@exämple.org"]);
    assert_eq!(got[0].auth_user.as_deref(), Some("alice"));
    assert!(got[0].tls);
}

/// A message of three queue-file chunks and an odd rest, in which `snippet` starts `back`
/// octets before every chunk boundary.
fn across_boundaries(snippet: &[u8], back: usize) -> Vec<u8> {
    mailer_testkit::message::across_boundaries(snippet, back, CHUNK)
}

#[tokio::test]
async fn a_queue_file_of_several_chunks_arrives_byte_exact_whatever_line_a_boundary_cuts() {
    let ca = TestCa::new();
    let sink = Sink::start(auth_sink_options(&ca, &["localhost"])).await;
    let pool = starttls_pool(&ca, &sink);
    // Lines of dots where a chunk ends, a CRLF cut in two, and a last line with no CRLF
    // (the queue adds the signature fields in front of the file: one more boundary).
    let snippet = b"\r\n.\r\n..two\r\n.one\r\n";
    let prefix = b"DKIM-Signature: v=1; d=ublog.tech\r\n";
    for back in 0..=snippet.len() {
        let mut message = across_boundaries(snippet, back);
        message.extend_from_slice(b".no final newline");
        let mut file = tempfile::tempfile().expect("temporary file");
        file.write_all(&message).expect("written");
        file.write_all(b"what follows the message in its file")
            .expect("written");
        let content =
            Content::open(prefix.to_vec(), file, message.len() as u64, None).expect("opened");

        let outcomes = pool
            .deliver(
                Some(&addr("alice@ublog.tech")),
                &[addr("bob@example.org")],
                &content,
            )
            .await
            .outcomes;

        assert!(
            matches!(outcomes[..], [Outcome::Delivered { .. }]),
            "{outcomes:?}"
        );
        let got = sink.wait_for(back + 1, WAIT).await;
        let mut expected = prefix.to_vec();
        expected.extend_from_slice(&message);
        expected.extend_from_slice(b"\r\n");
        assert!(
            got[back].data == expected,
            "the snippet {back} octets before each boundary: {} octets arrived, {} sent",
            got[back].data.len(),
            expected.len()
        );
    }
}

#[tokio::test]
async fn a_queue_file_that_fails_mid_body_sends_no_end_of_data_and_is_retried() {
    let ca = TestCa::new();
    let sink = Sink::start(auth_sink_options(&ca, &["localhost"])).await;
    let pool = starttls_pool(&ca, &sink);
    let message = across_boundaries(b"\r\n.\r\n", 0);
    let mut file = tempfile::tempfile().expect("temporary file");
    file.write_all(&message).expect("written");
    let content = Content::open(
        Vec::new(),
        file.try_clone().expect("second handle"),
        message.len() as u64,
        None,
    )
    .expect("opened");
    // The file loses its end after the attempt began (a disk error would read the same).
    file.set_len(CHUNK as u64 + 10).expect("truncated");

    let outcomes = pool
        .deliver(None, &[addr("bob@example.org")], &content)
        .await
        .outcomes;

    let [Outcome::Failed(f)] = &outcomes[..] else {
        panic!("one temporary failure expected: {outcomes:?}")
    };
    assert!(!f.permanent);
    assert!(
        f.reason.contains("cannot read the message from the queue"),
        "{}",
        f.reason
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.count(), 0, "the server must not take a cut message");
}

#[tokio::test]
async fn auth_login_is_used_when_only_login_is_offered() {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions {
        auth_mechanisms: Some("LOGIN".into()),
        ..auth_sink_options(&ca, &["localhost"])
    })
    .await;
    let pool = starttls_pool(&ca, &sink);

    let outcomes = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"hi\r\n"))
        .await
        .outcomes;

    assert!(
        matches!(outcomes[0], Outcome::Delivered { .. }),
        "{outcomes:?}"
    );
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].auth_user.as_deref(), Some("alice"));
    assert_eq!(got[0].mail_from, "", "null sender stays null");
    assert_eq!(sink.auth_attempts(), 1);
}

#[tokio::test]
async fn implicit_tls_to_an_ip_member_verifies_the_ip_san() {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions {
        implicit_tls: true,
        ..auth_sink_options(&ca, &["127.0.0.1"])
    })
    .await;
    let pool = Pool::new(
        settings(&ca, "127.0.0.1", &sink, Security::Implicit, true),
        localhost(),
    )
    .unwrap();

    let outcomes = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"hi\r\n"))
        .await
        .outcomes;

    assert!(
        matches!(outcomes[0], Outcome::Delivered { .. }),
        "{outcomes:?}"
    );
    let got = sink.wait_for(1, WAIT).await;
    assert!(got[0].tls);
    assert_eq!(got[0].auth_user.as_deref(), Some("alice"));
}

fn reject_bob() -> Option<mailer_testkit::sink::ReplyFn> {
    Some(Arc::new(|rcpt: &str| {
        rcpt.starts_with("bob@")
            .then(|| (550, "5.1.1 <bob@example.org>: no such user".to_string()))
    }))
}

async fn one_rejected_recipient(no_pipelining: bool) {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions {
        rcpt_reply: reject_bob(),
        no_pipelining,
        ..auth_sink_options(&ca, &["localhost"])
    })
    .await;
    let pool = starttls_pool(&ca, &sink);
    let recipients = [
        addr("ann@example.org"),
        addr("bob@example.org"),
        addr("cid@example.org"),
    ];

    let outcomes = pool
        .deliver(None, &recipients, &msg(b"hi\r\n"))
        .await
        .outcomes;

    assert!(
        matches!(outcomes[0], Outcome::Delivered { .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[2], Outcome::Delivered { .. }),
        "{outcomes:?}"
    );
    let Outcome::Failed(failure) = &outcomes[1] else {
        panic!("bob must fail: {outcomes:?}")
    };
    assert!(failure.permanent);
    assert_eq!(failure.status, EnhancedStatus(5, 1, 1));
    assert_eq!(
        failure.remote_reply.as_deref(),
        Some("550 5.1.1 <bob@example.org>: no such user")
    );
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].rcpt_to, vec!["ann@example.org", "cid@example.org"]);
}

#[tokio::test]
async fn one_rejected_recipient_of_three_fails_alone_when_pipelining() {
    one_rejected_recipient(false).await;
}

#[tokio::test]
async fn one_rejected_recipient_of_three_fails_alone_without_pipelining() {
    one_rejected_recipient(true).await;
}

#[tokio::test]
async fn all_recipients_rejected_sends_no_data() {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions {
        rcpt_reply: reject_bob(),
        ..auth_sink_options(&ca, &["localhost"])
    })
    .await;
    let pool = starttls_pool(&ca, &sink);

    let outcomes = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"hi\r\n"))
        .await
        .outcomes;
    assert!(only_failure(&outcomes).permanent);
    // The session is still good for the next message.
    let outcomes = pool
        .deliver(None, &[addr("ann@example.org")], &msg(b"next\r\n"))
        .await
        .outcomes;
    assert!(
        matches!(outcomes[0], Outcome::Delivered { .. }),
        "{outcomes:?}"
    );
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"next\r\n");
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn reply_421_to_mail_fails_every_recipient_temporarily() {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions {
        mail_reply: Some(Arc::new(|_: &str| {
            Some((421, "4.3.2 shutting down".to_string()))
        })),
        ..auth_sink_options(&ca, &["localhost"])
    })
    .await;
    let pool = starttls_pool(&ca, &sink);

    let outcomes = pool
        .deliver(
            None,
            &[addr("ann@example.org"), addr("bob@example.org")],
            &msg(b"hi\r\n"),
        )
        .await
        .outcomes;

    assert_eq!(outcomes.len(), 2);
    for outcome in &outcomes {
        let Outcome::Failed(f) = outcome else {
            panic!("must fail: {outcomes:?}")
        };
        assert!(!f.permanent);
        assert_eq!(f.status, EnhancedStatus(4, 3, 2));
        assert_eq!(f.remote_reply.as_deref(), Some("421 4.3.2 shutting down"));
    }
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn rejection_at_end_of_data_applies_to_every_accepted_recipient() {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions {
        data_reply: Some(Arc::new(|_| Some((554, "5.7.1 spam detected".to_string())))),
        ..auth_sink_options(&ca, &["localhost"])
    })
    .await;
    let pool = starttls_pool(&ca, &sink);

    let outcomes = pool
        .deliver(
            None,
            &[addr("ann@example.org"), addr("bob@example.org")],
            &msg(b"hi\r\n"),
        )
        .await
        .outcomes;

    for outcome in &outcomes {
        let Outcome::Failed(f) = outcome else {
            panic!("must fail: {outcomes:?}")
        };
        assert!(f.permanent);
        assert_eq!(f.status, EnhancedStatus(5, 7, 1));
    }
}

async fn tls_failure_reason(
    ca_for_sink: &TestCa,
    trusted: &TestCa,
    expired: bool,
    names: &[&str],
) -> (String, Sink) {
    let leaf = if expired {
        ca_for_sink.issue_expired(names)
    } else {
        ca_for_sink.issue(names)
    };
    let sink = Sink::start(SinkOptions {
        tls: Some(leaf),
        ..auth_sink_options(ca_for_sink, names)
    })
    .await;
    let pool = Pool::new(
        settings(trusted, "localhost", &sink, Security::StartTls, true),
        localhost(),
    )
    .unwrap();
    let outcomes = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"hi\r\n"))
        .await
        .outcomes;
    let failure = only_failure(&outcomes);
    assert!(!failure.permanent, "TLS failures are retried");
    assert_eq!(failure.remote_reply, None);
    (failure.reason.clone(), sink)
}

#[tokio::test]
async fn wrong_certificate_name_fails_temporarily_before_auth() {
    let ca = TestCa::new();
    let (reason, sink) = tls_failure_reason(&ca, &ca, false, &["other.example"]).await;
    assert!(
        reason.contains("name mismatch (certificate is for other.example)"),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("localhost[127.0.0.1]:{}", sink.port())),
        "{reason}"
    );
    assert_eq!(sink.auth_attempts(), 0);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn certificate_from_an_unknown_ca_says_unknown_issuer() {
    let (ca, stranger) = (TestCa::new(), TestCa::new());
    let (reason, sink) = tls_failure_reason(&stranger, &ca, false, &["localhost"]).await;
    assert!(reason.contains("unknown issuer"), "{reason}");
    assert_eq!(sink.auth_attempts(), 0);
}

#[tokio::test]
async fn expired_certificate_says_expired() {
    let ca = TestCa::new();
    let (reason, sink) = tls_failure_reason(&ca, &ca, true, &["localhost"]).await;
    assert!(reason.contains("certificate expired"), "{reason}");
    assert_eq!(sink.auth_attempts(), 0);
}

#[tokio::test]
async fn missing_starttls_when_required_fails_without_auth() {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions {
        auth: Some(("alice".into(), "correct horse".into())),
        ..SinkOptions::default()
    })
    .await;
    let pool = starttls_pool(&ca, &sink);

    let outcomes = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"hi\r\n"))
        .await
        .outcomes;

    let failure = only_failure(&outcomes);
    assert!(!failure.permanent);
    assert!(
        failure
            .reason
            .contains("STARTTLS is required but the server does not offer it"),
        "{}",
        failure.reason
    );
    assert_eq!(sink.auth_attempts(), 0);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn credentials_are_never_sent_in_plaintext() {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions::default()).await;
    let pool = Pool::new(
        settings(&ca, "localhost", &sink, Security::Plain, true),
        localhost(),
    )
    .unwrap();

    let outcomes = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"hi\r\n"))
        .await
        .outcomes;

    let failure = only_failure(&outcomes);
    assert!(
        failure.reason.contains("not encrypted; AUTH not sent"),
        "{}",
        failure.reason
    );
    assert_eq!(sink.auth_attempts(), 0);
}

#[tokio::test]
async fn rejected_credentials_are_temporary_and_not_revealed() {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions {
        auth: Some(("alice".into(), "another secret".into())),
        ..auth_sink_options(&ca, &["localhost"])
    })
    .await;
    let pool = starttls_pool(&ca, &sink);

    let outcomes = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"hi\r\n"))
        .await
        .outcomes;

    let failure = only_failure(&outcomes);
    assert!(!failure.permanent, "an administrator can fix the secret");
    assert!(failure.reason.contains("535 5.7.8"), "{}", failure.reason);
    assert!(
        failure.reason.contains("check the relay credentials"),
        "{}",
        failure.reason
    );
    assert!(!failure.reason.contains("correct horse"));
    assert_eq!(sink.auth_attempts(), 1);
}

#[tokio::test]
async fn plain_member_without_credentials_delivers_in_cleartext() {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions::default()).await;
    let pool = Pool::new(
        settings(&ca, "localhost", &sink, Security::Plain, false),
        localhost(),
    )
    .unwrap();

    let outcomes = pool
        .deliver(None, &[addr("bob@example.org")], &msg(b"hi\r\n"))
        .await
        .outcomes;

    assert!(
        matches!(outcomes[0], Outcome::Delivered { .. }),
        "{outcomes:?}"
    );
    let got = sink.wait_for(1, WAIT).await;
    assert!(!got[0].tls);
    assert_eq!(got[0].auth_user, None);
}
