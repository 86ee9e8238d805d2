//! End to end: sender-dependent relaying is configuration. Two relay actions, each with its
//! own upstream and its own credentials, chosen by `mail_from` rules; each upstream must see
//! only its own sender's mail and only its own login.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};
use mailer_testkit::daemon::{free_port, Daemon};
use mailer_testkit::world::RelayWorld;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");
const WAIT: Duration = Duration::from_secs(30);

fn secrets(dir: &Path, name: &str, line: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, format!("{line}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// Sends one message with a real SMTP client; `Err` carries the server's refusal.
async fn send(port: u16, from: &str, to: &str, n: usize) -> Result<(), String> {
    let envelope = Envelope::new(Some(from.parse().unwrap()), vec![to.parse().unwrap()]).unwrap();
    let message = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: note {n}\r\nMessage-ID: <{n}@test>\r\n\r\nbody {n}\r\n"
    );
    tokio::task::spawn_blocking(move || {
        SmtpTransport::builder_dangerous("127.0.0.1")
            .port(port)
            .timeout(Some(Duration::from_secs(10)))
            .build()
            .send_raw(&envelope, message.as_bytes())
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_sender_domain_reaches_its_own_relay_with_its_own_login() {
    let world = RelayWorld::new("unused", "unused");
    let one = world
        .upstream(|o| o.auth = Some(("login-one".into(), "pass one".into())))
        .await;
    let two = world
        .upstream(|o| o.auth = Some(("login-two".into(), "pass:two".into())))
        .await;
    let dir = world.path();
    let secrets_one = secrets(dir, "secrets-one", "one login-one:pass one");
    let secrets_two = secrets(dir, "secrets-two", "two login-two:pass:two");
    let senders = dir.join("two-senders");
    fs::write(&senders, "# who sends through relay two\n@two.example\n").unwrap();
    let port = free_port();
    let ca = world.ca_file.display();
    let config = format!(
        r#"hostname = "mx.test"
local_domains = ["localhost"]
queue_dir = "{dir}/queue"
control_socket = "{dir}/control.sock"

[[listen]]
address = "127.0.0.1:{port}"

[tables]
secrets_one = "{secrets_one}"
secrets_two = "{secrets_two}"
two_senders = "{senders}"

[actions.via_one]
relay = "smtp+tls://one@127.0.0.1:{p1}"
auth = "secrets_one"
ca_file = "{ca}"

[actions.via_two]
relay = "smtp+tls://two@127.0.0.1:{p2}"
auth = "secrets_two"
ca_file = "{ca}"

[queue]
retry_min = "1s"
retry_max = "2s"

[[match]]
from = "local"
for = "any"
mail_from = "@one.example"
action = "via_one"

[[match]]
from = "local"
for = "any"
mail_from = {{ table = "two_senders" }}
action = "via_two"
"#,
        dir = dir.display(),
        senders = senders.display(),
        p1 = one.port(),
        p2 = two.port(),
    );
    let daemon = Daemon::start(Path::new(BIN), dir, port, &config);
    for n in 0..3 {
        send(port, "a@one.example", "pim@example.org", n)
            .await
            .unwrap();
        send(port, "b@two.example", "pam@example.net", 10 + n)
            .await
            .unwrap();
    }
    // No rule for this sender: refused at RCPT, never relayed.
    let refused = send(port, "c@three.example", "pim@example.org", 99)
        .await
        .unwrap_err();
    assert!(refused.contains("550"), "{refused}");

    let got_one = one.wait_for(3, WAIT).await;
    let got_two = two.wait_for(3, WAIT).await;
    assert_eq!(got_one.len(), 3, "{}", daemon.log());
    assert_eq!(got_two.len(), 3, "{}", daemon.log());
    for r in &got_one {
        assert_eq!(r.mail_from, "a@one.example");
        assert_eq!(r.rcpt_to, ["pim@example.org"]);
        assert_eq!(r.auth_user.as_deref(), Some("login-one"));
        assert!(r.tls);
    }
    for r in &got_two {
        assert_eq!(r.mail_from, "b@two.example");
        assert_eq!(r.rcpt_to, ["pam@example.net"]);
        assert_eq!(r.auth_user.as_deref(), Some("login-two"));
        assert!(r.tls);
    }
    // Nothing more arrives later on either side (the refused message included).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((one.count(), two.count()), (3, 3));
    // Neither upstream was ever offered the other's login (the watch's probe logs in too).
    assert!(one.auth_attempts() > 0 && two.auth_attempts() > 0);
    assert_eq!(
        (one.auth_refusals(), two.auth_refusals()),
        (0, 0),
        "{}",
        daemon.log()
    );
}

/// A sender table is read by `mailer config check` like the other tables: a bad line is named
/// with its file and line, and the configuration's own mistakes with line and column.
#[test]
fn config_check_names_bad_match_conditions_and_table_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let senders = dir.path().join("senders");
    fs::write(&senders, "# senders\n@one.example\nnot an address\n").unwrap();
    let config = dir.path().join("mailer.toml");
    let text = format!(
        "queue_dir = \"{d}/queue\"\ncontrol_socket = \"{d}/control.sock\"\n\
         [tables]\nsenders = \"{d}/senders\"\n\
         [actions.out]\nrelay = \"smtp+tls://relay.example\"\n\
         [[match]]\nfrom = \"local\"\nfor = \"any\"\nmail_from = {{ table = \"senders\" }}\naction = \"out\"\n"
    );
    fs::write(&config, &text).unwrap();
    let check = |path: &Path| {
        std::process::Command::new(BIN)
            .args(["--config", path.to_str().unwrap(), "config", "check"])
            .env_remove("MAILER_CONFIG")
            .output()
            .unwrap()
    };
    let out = check(&config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3:1: `not an address`: one address per line",
            senders.display()
        )),
        "{stderr}"
    );

    fs::write(&senders, "@one.example\n").unwrap();
    assert_eq!(check(&config).status.code(), Some(0));

    fs::write(
        &config,
        text.replace("from = \"local\"", "from = { source = \"0.0.0.0/0\" }"),
    )
    .unwrap();
    let out = check(&config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:8:8: action `out` relays, and sources 0.0.0.0/0 are not on this host",
            config.display()
        )),
        "{stderr}"
    );
}
