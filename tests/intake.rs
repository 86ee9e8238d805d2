//! End to end: a real SMTP client hands mail to the real daemon, which keeps it through
//! `kill -9` and restarts.

use std::fs;
use std::path::Path;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};
use mailer_testkit::config::{For, TestConfig};
use mailer_testkit::daemon::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");

/// Relays everything to a port where nothing listens, so accepted mail stays queued.
fn config(port: u16, dir: &Path) -> TestConfig {
    TestConfig::new(dir, port)
        .relay_without_auth(free_port())
        .retry("1h", "2h")
}

fn client(port: u16) -> SmtpTransport {
    SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

fn envelope(from: &str, to: &str) -> Envelope {
    Envelope::new(Some(from.parse().unwrap()), vec![to.parse().unwrap()]).unwrap()
}

const MESSAGE: &[u8] = b"From: Mastodon <notifications@ublog.tech>\r\n\
To: pim@example.org\r\n\
Subject: New follower\r\n\
Message-ID: <abc@ublog.tech>\r\n\
\r\n\
You have a new follower.\r\n\
.A line with a leading dot\r\n";

#[test]
fn acknowledged_mail_survives_kill_9_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut daemon = config(port, dir.path()).start(Path::new(BIN));

    // The client always writes CRLF before the final dot, so it is given the message
    // without its last line ending.
    let response = client(port)
        .send_raw(
            &envelope("notifications@ublog.tech", "pim@example.org"),
            &MESSAGE[..MESSAGE.len() - 2],
        )
        .expect("the daemon accepts the message");
    assert_eq!(response.code().to_string(), "250");
    let text = response.message().collect::<Vec<_>>().join(" ");
    let id = text
        .strip_prefix("2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("unexpected reply text {text:?}"))
        .to_string();

    daemon.kill9();
    daemon.restart();

    let queue = dir.path().join("queue");
    let queued = mailer_testkit::queue::message(&queue, &id).expect("message file kept");
    let received_end =
        find(&queued, b"\r\nFrom: Mastodon").expect("original headers follow ours") + 2;
    assert!(
        queued.starts_with(b"Received: from "),
        "{}",
        String::from_utf8_lossy(&queued)
    );
    assert!(String::from_utf8_lossy(&queued[..received_end]).contains(&format!("id {id}")));
    assert_eq!(
        &queued[received_end..],
        MESSAGE,
        "the message is kept byte-exact"
    );

    let envelope: serde_json::Value =
        serde_json::from_slice(&mailer_testkit::queue::envelope_json(&queue, &id).unwrap())
            .unwrap();
    assert_eq!(envelope["sender"], "notifications@ublog.tech");
    assert_eq!(envelope["recipients"][0]["address"], "pim@example.org");
    assert_eq!(envelope["recipients"][0]["state"], "pending");
    assert!(daemon.log().contains(&format!("queue_id={id}")));
}

#[test]
fn sigterm_stops_the_daemon_cleanly_and_keeps_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut daemon = config(port, dir.path()).start(Path::new(BIN));
    client(port)
        .send_raw(
            &envelope("a@ublog.tech", "b@example.org"),
            b"Subject: x\r\n\r\nx\r\n",
        )
        .unwrap();
    let status = daemon.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}\n{}", daemon.log());
    assert_eq!(daemon.queued_messages(&dir.path().join("queue")).len(), 1);
}

#[test]
fn a_non_matching_recipient_is_refused_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let daemon = config(port, dir.path())
        .route(For::domains(&["example.org"]), "outbound")
        .start(Path::new(BIN));
    let err = client(port)
        .send_raw(
            &envelope("a@ublog.tech", "b@elsewhere.net"),
            b"Subject: x\r\n\r\nx\r\n",
        )
        .unwrap_err();
    assert!(err.to_string().contains("5.7.1"), "{err}");
    assert!(daemon.queued_messages(&dir.path().join("queue")).is_empty());
}

#[test]
fn config_check_reports_errors_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    fs::write(&path, "queue_dir = \"/tmp/q\"\nbogus = 1\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("{}:2:1: ", path.display())),
        "{err}"
    );
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn config_check_reports_alias_file_errors_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let aliases = dir.path().join("aliases");
    fs::write(
        &aliases,
        "# system aliases\nroot: pim\nbroken line without colon\n",
    )
    .unwrap();
    let path = dir.path().join("mailer.toml");
    let config = TestConfig::new(dir.path(), free_port())
        .aliases(&aliases)
        .local_mail(&dir.path().join("mail"));
    fs::write(&path, config.render()).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3: ", aliases.display())), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_offered_with_a_certificate_and_verifies() {
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

    let dir = tempfile::tempdir().unwrap();
    let ca = mailer_testkit::certs::TestCa::new();
    let (cert, key) = ca.issue(&["localhost"]).write_pem_files(dir.path());
    let port = free_port();
    let text = format!(
        r#"
hostname = "mx.test"
queue_dir = "{dir}/queue"
control_socket = "{dir}/control.sock"

[[listen]]
address = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"

[actions.outbound]
relay = "smtp+tls://127.0.0.1:{dead}"

[check]
interval = "0"

[queue]
retry_min = "1h"
retry_max = "2h"

[[match]]
from = "local"
for = "any"
action = "outbound"
"#,
        dir = dir.path().display(),
        cert = cert.display(),
        key = key.display(),
        dead = free_port(),
    );
    let _daemon = mailer_testkit::daemon::Daemon::start(Path::new(BIN), dir.path(), port, &text);

    // A client that verifies the certificate, as Mastodon's does.
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    let client = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(tls))
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let response = client
        .send_raw(
            &envelope("app@ublog.tech", "pim@example.org"),
            b"Subject: over TLS\r\n\r\nsecret",
        )
        .await
        .expect("accepted over STARTTLS");
    let id = response.message().collect::<Vec<_>>().join(" ");
    let id = id.rsplit(' ').next().unwrap();
    let queued = mailer_testkit::queue::message(&dir.path().join("queue"), id).unwrap();
    let queued = String::from_utf8(queued).unwrap();
    assert!(queued.contains(&format!("with ESMTPS id {id}")), "{queued}");
}
