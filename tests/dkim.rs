//! End to end: mail relayed by the real daemon through a STARTTLS + AUTH upstream arrives
//! DKIM-signed with keys made by `mailer dkim keygen`, and mail-auth verifies the signatures
//! against the records keygen printed, served by a loopback DNS server. A Mastodon
//! notification is also verified by another implementation, Debian's dkimpy (`python3-dkim`),
//! with its List-Unsubscribe fields signed and oversigned (RFC 8058 §4).

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use mailer_testkit::certs::TestCa;
use mailer_testkit::config::{write_secrets, For, TestConfig};
use mailer_testkit::daemon::{free_port, Daemon};
use mailer_testkit::dns::DnsServer;
use mailer_testkit::sink::{Received, Sink, SinkOptions};
use mailer_testkit::smtp::Client;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");
const WAIT: Duration = Duration::from_secs(15);

/// Every signed header field present, one of them folded, and a body whose trailing spaces and
/// empty lines relaxed canonicalization treats specially.
const MESSAGE: &[u8] = b"From: Mastodon <notifications@ublog.tech>\r\n\
To: pim@example.org\r\n\
Cc: other@example.net\r\n\
Subject: New follower:\r\n\
\x20someone followed you\r\n\
Date: Tue, 25 Nov 2025 13:00:00 +0000\r\n\
Message-ID: <abc@ublog.tech>\r\n\
Reply-To: no-reply@ublog.tech\r\n\
In-Reply-To: <parent@ublog.tech>\r\n\
References: <root@ublog.tech> <parent@ublog.tech>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
X-Mailer: Mastodon\r\n\
\r\n\
You have a new follower.  \r\n\
.A line with a leading dot\r\n\
\r\n\
\r\n";

/// Runs `mailer dkim keygen` for `selector._domainkey.ublog.tech`; returns the key path and the
/// record's name and text as its printed zone line says.
fn keygen(dir: &Path, selector: &str, algorithm: &str) -> (PathBuf, String, String) {
    let key = dir.join(format!("{selector}.key"));
    let out = Command::new(BIN)
        .args([
            "dkim",
            "keygen",
            "--selector",
            selector,
            "--domain",
            "ublog.tech",
        ])
        .args(["--algorithm", algorithm, "--out"])
        .arg(&key)
        .output()
        .expect("run mailer dkim keygen");
    assert!(
        out.status.success(),
        "keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).expect("the record is text");
    let (name, text) = parse_zone_line(&line);
    (key, name, text)
}

/// `NAME. IN TXT "a" "b"` → (`NAME`, `ab`): the strings joined, as a resolver joins them.
fn parse_zone_line(line: &str) -> (String, String) {
    let (name, rest) = line
        .trim_end()
        .split_once(". IN TXT ")
        .unwrap_or_else(|| panic!("not a zone line: {line:?}"));
    let strings: Vec<&str> = rest.split('"').collect();
    assert!(strings.len() >= 3, "no quoted string in {line:?}");
    for (i, s) in strings.iter().enumerate() {
        if i % 2 == 0 {
            assert!(s.trim().is_empty(), "text outside quotes in {line:?}");
        } else {
            assert!(s.len() <= 255, "a TXT string longer than 255 octets");
        }
    }
    let text = strings.iter().skip(1).step_by(2).copied().collect();
    (name.to_string(), text)
}

/// An upstream like the production smarthost: STARTTLS required, then AUTH.
struct Upstream {
    sink: Sink,
    ca_file: PathBuf,
    secrets: PathBuf,
}

async fn upstream(dir: &Path) -> Upstream {
    let ca = TestCa::new();
    let sink = Sink::start(SinkOptions {
        tls: Some(ca.issue(&["127.0.0.1"])),
        require_tls: true,
        auth: Some(("relay-user".into(), "relay secret".into())),
        ..SinkOptions::default()
    })
    .await;
    let secrets = dir.join("secrets");
    write_secrets(&secrets, "upstream", "relay-user", "relay secret");
    Upstream {
        sink,
        ca_file: ca.write_pem_file(dir),
        secrets,
    }
}

/// The daemon's configuration: `actions` (name, extra lines) relay through the upstream and
/// everything is routed to `outbound`.
fn config(port: u16, dir: &Path, up: &Upstream, actions: &[(&str, &str)]) -> TestConfig {
    let mut config = TestConfig::new(dir, port)
        .relay_to("upstream", &[up.sink.port()], &up.secrets, &up.ca_file)
        .retry("1s", "2s");
    for (name, extra) in actions {
        if *name != "outbound" {
            config = config.relay_action(name);
        }
        config = config.action_lines(name, extra);
    }
    config
}

fn dkim_line(keys: &[(&str, &Path)]) -> String {
    let entries: Vec<String> = keys
        .iter()
        .map(|(selector, key)| {
            format!(
                r#"{{ domain = "ublog.tech", selector = "{selector}", key = "{}" }}"#,
                key.display()
            )
        })
        .collect();
    format!("dkim = [{}]", entries.join(", "))
}

async fn send(port: u16, to: &str, message: &[u8]) {
    let client = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let envelope = Envelope::new(
        Some("notifications@ublog.tech".parse().expect("test address")),
        vec![to.parse().expect("test address")],
    )
    .expect("test envelope");
    // The client writes CRLF before the final dot itself.
    let response = client
        .send_raw(&envelope, &message[..message.len() - 2])
        .await
        .expect("the daemon accepts the message");
    assert_eq!(response.code().to_string(), "250");
}

async fn relayed(up: &Upstream, n: usize, daemon: &Daemon) -> Vec<Received> {
    let got = up.sink.wait_for(n, WAIT).await;
    assert_eq!(
        got.len(),
        n,
        "relayed messages; daemon log:\n{}",
        daemon.log()
    );
    got
}

fn authenticator(dns: SocketAddr) -> MessageAuthenticator {
    let mut udp = ConnectionConfig::udp();
    udp.port = dns.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = dns.port();
    let server = NameServerConfig::new(dns.ip(), true, vec![udp, tcp]);
    MessageAuthenticator::new(
        ResolverConfig::from_parts(None, vec![], vec![server]),
        ResolverOpts::default(),
    )
    .expect("a resolver for the test DNS server")
}

/// The header fields of `data` before `rest` starts, unfolded, as (name, value) pairs.
fn fields_before(data: &[u8], rest: &[u8]) -> Vec<(String, String)> {
    let head = String::from_utf8(data[..data.len() - rest.len()].to_vec()).expect("ASCII fields");
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            fields.last_mut().expect("a continuation follows a field").1 += line;
        } else {
            let (name, value) = line.split_once(':').expect("a field has a colon");
            fields.push((name.to_string(), value.to_string()));
        }
    }
    fields
}

fn tag(value: &str, name: &str) -> String {
    value
        .split(';')
        .map(|t| t.split_whitespace().collect::<String>())
        .find_map(|t| t.strip_prefix(&format!("{name}=")).map(str::to_string))
        .unwrap_or_else(|| panic!("no {name}= in {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_mail_is_signed_with_rsa_and_ed25519_keys_from_keygen_and_both_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa_key, rsa_name, rsa_text) = keygen(dir.path(), "rsa2026", "rsa2048");
    let (ed_key, ed_name, ed_text) = keygen(dir.path(), "ed2026", "ed25519");
    assert_eq!(rsa_name, "rsa2026._domainkey.ublog.tech");
    assert!(rsa_text.starts_with("v=DKIM1; k=rsa; p="), "{rsa_text}");
    assert!(ed_text.starts_with("v=DKIM1; k=ed25519; p="), "{ed_text}");
    let dns = DnsServer::start(&[
        (rsa_name.as_str(), "TXT", rsa_text.as_str()),
        (ed_name.as_str(), "TXT", ed_text.as_str()),
    ])
    .await;
    let up = upstream(dir.path()).await;
    let port = free_port();
    let dkim = dkim_line(&[("rsa2026", &rsa_key), ("ed2026", &ed_key)]);
    let daemon = config(port, dir.path(), &up, &[("outbound", &dkim)]).start(Path::new(BIN));

    send(port, "pim@example.org", MESSAGE).await;
    let got = relayed(&up, 1, &daemon).await;
    let m = &got[0];
    assert!(m.tls);
    assert_eq!(m.auth_user.as_deref(), Some("relay-user"));

    // Body and every original header field arrive byte for byte; only our fields precede them.
    assert!(
        m.data.ends_with(MESSAGE),
        "the message changed in transit:\n{}",
        String::from_utf8_lossy(&m.data)
    );
    let added = fields_before(&m.data, MESSAGE);
    let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["DKIM-Signature", "DKIM-Signature", "Received"]);
    for (_, value) in &added[..2] {
        assert_eq!(tag(value, "c"), "relaxed/relaxed");
        assert_eq!(tag(value, "d"), "ublog.tech");
        let h: Vec<String> = tag(value, "h")
            .split(':')
            .map(str::to_ascii_lowercase)
            .collect();
        let mut sorted = h.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "cc",
                "cc",
                "content-type",
                "date",
                "date",
                "from",
                "from",
                "in-reply-to",
                "list-unsubscribe",
                "list-unsubscribe-post",
                "message-id",
                "message-id",
                "mime-version",
                "references",
                "reply-to",
                "reply-to",
                "subject",
                "subject",
                "to",
                "to"
            ],
            "the fields present signed, the default set oversigned, X-Mailer not"
        );
    }
    let algorithms: Vec<(String, String)> = added[..2]
        .iter()
        .map(|(_, v)| (tag(v, "s"), tag(v, "a")))
        .collect();
    assert!(algorithms.contains(&("rsa2026".into(), "rsa-sha256".into())));
    assert!(algorithms.contains(&("ed2026".into(), "ed25519-sha256".into())));

    let auth = authenticator(dns.addr());
    let parsed = AuthenticatedMessage::parse(&m.data).expect("mail-auth parses the message");
    let outputs = auth.verify_dkim(&parsed).await;
    assert_eq!(outputs.len(), 2);
    for output in &outputs {
        let selector = output.signature().map(|s| s.s.clone()).unwrap_or_default();
        assert_eq!(
            output.result(),
            &DkimResult::Pass,
            "signature of selector {selector}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaligned_from_is_signed_only_by_an_action_with_sign_unaligned() {
    let dir = tempfile::tempdir().unwrap();
    let (key, name, text) = keygen(dir.path(), "ed2026", "ed25519");
    let dns = DnsServer::start(&[(name.as_str(), "TXT", text.as_str())]).await;
    let up = upstream(dir.path()).await;
    let port = free_port();
    let dkim = dkim_line(&[("ed2026", &key)]);
    let lenient = format!("{dkim}\nsign_unaligned = true");
    let daemon = config(
        port,
        dir.path(),
        &up,
        &[("outbound", &dkim), ("lenient", &lenient)],
    )
    .route(For::domains(&["lenient.example"]), "lenient")
    .route(For::Any, "outbound")
    .start(Path::new(BIN));
    let foreign =
        b"From: someone@other.example\r\nTo: pim@example.org\r\nSubject: hi\r\n\r\nHello.\r\n";

    send(port, "pim@example.org", foreign).await;
    let got = relayed(&up, 1, &daemon).await;
    let added = fields_before(&got[0].data, foreign);
    let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["Received"],
        "an unaligned From is not signed by default"
    );
    assert!(
        daemon.log().contains("not DKIM-signed"),
        "the skip is logged:\n{}",
        daemon.log()
    );

    send(port, "pim@lenient.example", foreign).await;
    let got = relayed(&up, 2, &daemon).await;
    let added = fields_before(&got[1].data, foreign);
    let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["DKIM-Signature", "Received"]);
    let parsed = AuthenticatedMessage::parse(&got[1].data).expect("parses");
    let outputs = authenticator(dns.addr()).verify_dkim(&parsed).await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].result(), &DkimResult::Pass);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn world_readable_key_is_refused_by_config_check_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _, _) = keygen(dir.path(), "ed2026", "ed25519");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let up = upstream(dir.path()).await;
    let port = free_port();
    let dkim = dkim_line(&[("ed2026", &key)]);
    let config_path = dir.path().join("mailer.toml");
    fs::write(
        &config_path,
        config(port, dir.path(), &up, &[("outbound", &dkim)]).render(),
    )
    .unwrap();
    let problem = format!(
        "DKIM key {}: mode 0644 is too open (0640 at most); chmod 600 it",
        key.display()
    );

    let check = Command::new(BIN)
        .arg("--config")
        .arg(&config_path)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains(&problem) && stderr.contains("mailer.toml:"),
        "{stderr}"
    );

    let mut serve = Command::new(BIN)
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            panic!("serve kept running with a world-readable DKIM key");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains(&problem), "{stderr}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens"
    );

    // 0640 is enough.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    let check = Command::new(BIN)
        .arg("--config")
        .arg(&config_path)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn keygen_writes_a_private_key_and_record_prints_the_same_txt_again() {
    let dir = tempfile::tempdir().unwrap();
    for algorithm in ["rsa2048", "ed25519"] {
        let selector = format!("s-{algorithm}");
        let (key, name, text) = keygen(dir.path(), &selector, algorithm);
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));

        let again = Command::new(BIN)
            .args(["dkim", "record", "--key"])
            .arg(&key)
            .args(["--selector", &selector, "--domain", "ublog.tech"])
            .output()
            .unwrap();
        assert!(again.status.success());
        let line = String::from_utf8(again.stdout).unwrap();
        assert_eq!(parse_zone_line(&line), (name.clone(), text.clone()));

        // An existing key is never overwritten.
        let before = fs::read(&key).unwrap();
        let out = Command::new(BIN)
            .args([
                "dkim",
                "keygen",
                "--selector",
                &selector,
                "--domain",
                "ublog.tech",
            ])
            .args(["--algorithm", algorithm, "--out"])
            .arg(&key)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(fs::read(&key).unwrap(), before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailer_check_fails_a_published_key_that_is_not_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let (key, name, text) = keygen(dir.path(), "ed2026", "ed25519");
    let (_, other_name, other_text) = keygen(dir.path(), "old", "ed25519");
    assert_ne!(text, other_text);
    let up = upstream(dir.path()).await;
    let port = free_port();
    let dkim = dkim_line(&[("ed2026", &key)]);
    let config_path = dir.path().join("mailer.toml");
    let cfg = config(port, dir.path(), &up, &[("outbound", &dkim)])
        .mail_from("@ublog.tech")
        .render();
    fs::write(&config_path, cfg).unwrap();

    for (published, expected) in [(&text, "pass"), (&other_text, "fail")] {
        let dns = DnsServer::start(&[
            ("ublog.tech", "TXT", "v=spf1 ip4:127.0.0.1 -all"),
            (name.as_str(), "TXT", published.as_str()),
            (other_name.as_str(), "TXT", other_text.as_str()),
        ])
        .await;
        let out = tokio::task::spawn_blocking({
            let config_path = config_path.clone();
            let ns = dns.addr().to_string();
            move || {
                Command::new(BIN)
                    .arg("--config")
                    .arg(&config_path)
                    .args(["check", "--json", "--timeout", "2", "--nameserver", &ns])
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let check = report["checks"]
            .as_array()
            .expect("a list of checks")
            .iter()
            .find(|c| c["id"] == "dkim.key-match")
            .unwrap_or_else(|| panic!("no dkim.key-match in {report:#}"));
        assert_eq!(check["status"], expected, "{check:#}");
        assert!(
            check["message"]
                .as_str()
                .unwrap()
                .contains(&key.display().to_string()),
            "{check:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_switches_the_selector_on_sighup_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_key, old_name, old_text) = keygen(dir.path(), "old2026", "ed25519");
    let (new_key, new_name, new_text) = keygen(dir.path(), "new2027", "ed25519");
    // Both records are published before the switch, as the rotation steps say.
    let dns = DnsServer::start(&[
        (old_name.as_str(), "TXT", old_text.as_str()),
        (new_name.as_str(), "TXT", new_text.as_str()),
    ])
    .await;
    let up = upstream(dir.path()).await;
    let port = free_port();
    let config_with = |selector: &str, key: &Path| {
        let dkim = dkim_line(&[(selector, key)]);
        config(port, dir.path(), &up, &[("outbound", &dkim)])
    };
    let daemon = config_with("old2026", &old_key).start(Path::new(BIN));
    let pid = daemon.pid();

    send(port, "pim@example.org", MESSAGE).await;
    let first = relayed(&up, 1, &daemon).await;
    daemon.write_config(&config_with("new2027", &new_key).render());
    daemon.signal(libc::SIGHUP);
    let reloaded = mailer_testkit::daemon::eventually(WAIT, || {
        daemon
            .log()
            .contains("configuration reloaded")
            .then_some(())
    });
    assert!(reloaded.is_some(), "{}", daemon.log());
    send(port, "pim@example.org", MESSAGE).await;
    let both = relayed(&up, 2, &daemon).await;
    assert_eq!(daemon.pid(), pid, "same process");

    let selector = |m: &Received| {
        let added = fields_before(&m.data, MESSAGE);
        let (_, v) = added
            .iter()
            .find(|(n, _)| n == "DKIM-Signature")
            .expect("signed")
            .clone();
        tag(&v, "s")
    };
    assert_eq!(selector(&first[0]), "old2026");
    let second = both
        .iter()
        .find(|m| selector(m) != "old2026")
        .expect("a message signed after the reload");
    assert_eq!(selector(second), "new2027");
    let auth = authenticator(dns.addr());
    let parsed = AuthenticatedMessage::parse(&second.data).unwrap();
    assert!(auth
        .verify_dkim(&parsed)
        .await
        .iter()
        .all(|o| o.result() == &DkimResult::Pass));
}

/// A notification as Mastodon's NotificationMailer writes it (the mail gem's field order; the
/// List fields of `set_list_headers!`, the threading of a mention), with a raw UTF-8 Subject
/// and 8-bit parts, as sent with 8BITMIME. Mastodon sends no Auto-Submitted field.
const MASTODON_MENTION: &str = "Date: Tue, 02 Dec 2025 02:31:55 +0000\r\n\
From: \"Mastodon\" <notifications@ublog.tech>\r\n\
To: \"pim\" <pim@example.org>\r\n\
Message-ID: <692e4f3b1a2c_3b2a1c4f0@ublog.tech.mail>\r\n\
In-Reply-To: <conversation-1234.2025-12-01@ublog.tech>\r\n\
References: <conversation-1234.2025-12-01@ublog.tech>\r\n\
Subject: Élodie Moreau (@elodie@ublog.tech) vous a mentionné·e\r\n\
Mime-Version: 1.0\r\n\
Content-Type: multipart/alternative;\r\n\
\x20boundary=\"--==_mimepart_692e4f3b19e8f_3b2a1c44f0\";\r\n\
\x20charset=UTF-8\r\n\
Content-Transfer-Encoding: 7bit\r\n\
List-ID: <mention.pim.ublog.tech>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
List-Unsubscribe: <https://ublog.tech/unsubscribe?token=eyJfcmFpbHMiOnsiZGF0YSI6ImdpZDovL21hc3RvZG9uL1VzZXIvNDIiLCJwdXIiOiJVc2VyXG51bnN1YnNjcmliZVxuIn19--4f0c2a9b8e1d&type=mention>\r\n\
\r\n\
\r\n\
----==_mimepart_692e4f3b19e8f_3b2a1c44f0\r\n\
Content-Type: text/plain;\r\n\
\x20charset=UTF-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Élodie Moreau vous a mentionné·e :\r\n\
\r\n\
@pim ça vous dit un café ? ☕\r\n\
\r\n\
Se désabonner : https://ublog.tech/unsubscribe?type=mention\r\n\
\r\n\
----==_mimepart_692e4f3b19e8f_3b2a1c44f0\r\n\
Content-Type: text/html;\r\n\
\x20charset=UTF-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
<!DOCTYPE html>\r\n\
<html lang=\"fr\"><body><p>Élodie Moreau vous a mentionné·e :</p>\r\n\
<blockquote>@pim ça vous dit un café ? ☕</blockquote></body></html>\r\n\
\r\n\
----==_mimepart_692e4f3b19e8f_3b2a1c44f0--\r\n";

/// Verifies every DKIM-Signature of a message with dkimpy, answering the key queries from the
/// records given as `NAME=TEXT` arguments; prints `pass` or `fail` per signature, in order.
const DKIMPY_VERIFY: &str = r#"
import sys
try:
    import dkim
except ImportError:
    sys.stderr.write("python3-dkim (dkimpy) is not installed: apt-get install -y python3-dkim\n")
    sys.exit(3)

records = dict(arg.split("=", 1) for arg in sys.argv[2:])

def dnsfunc(name, timeout=5):
    text = records.get(name.decode().rstrip("."))
    return text.encode() if text is not None else None

message = open(sys.argv[1], "rb").read()
headers, _ = dkim.rfc822_parse(message)
count = sum(1 for name, _ in headers if name.lower() == b"dkim-signature")
verifier = dkim.DKIM(message)
for idx in range(count):
    try:
        print("pass" if verifier.verify(idx=idx, dnsfunc=dnsfunc) else "fail")
    except dkim.ValidationError:
        # A body hash mismatch is raised, not returned.
        print("fail")
"#;

/// Whether dkimpy can run. Under CI (`CI` set: `.ci/run` installs python3-dkim) its absence
/// fails the test; elsewhere the test says why and skips, so a machine with nothing but a
/// Rust toolchain runs the rest of the suite.
fn dkimpy_present_or_skip() -> bool {
    let present = Command::new("/usr/bin/python3")
        .args(["-c", "import dkim"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3-dkim is missing under CI: .ci/run installs it (apt-get install -y python3-dkim)"
        );
        eprintln!(
            "skipped: the second DKIM verifier, Debian's python3-dkim, is not installed \
             (apt-get install -y python3-dkim; .ci/run installs it)"
        );
    }
    present
}

/// dkimpy's verdict on each signature of `message`, with the key records `records`. Fails
/// the test, with the command that installs it, when python3-dkim is missing (callers ask
/// [`dkimpy_present_or_skip`] first).
fn dkimpy_verdicts(dir: &Path, message: &[u8], records: &[(&str, &str)]) -> Vec<String> {
    let script = dir.join("dkimpy_verify.py");
    fs::write(&script, DKIMPY_VERIFY).unwrap();
    let file = dir.join("received.eml");
    fs::write(&file, message).unwrap();
    // Debian's interpreter, where apt puts python3-dkim (not a python3 earlier on PATH).
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&file)
        .args(records.iter().map(|(name, text)| format!("{name}={text}")))
        .output()
        .expect("run /usr/bin/python3 (apt-get install -y python3-dkim)");
    assert!(
        out.status.success(),
        "dkimpy did not run (.ci/run installs it; locally: apt-get install -y python3-dkim): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("verdicts are text")
        .lines()
        .map(str::to_string)
        .collect()
}

/// `message` with `field` (a whole line with its CRLF) put in after the first line that
/// starts with `after`, or at the top when `after` is empty.
fn with_field(message: &[u8], after: &str, field: &str) -> Vec<u8> {
    let at = if after.is_empty() {
        0
    } else {
        let start = message
            .windows(after.len() + 2)
            .position(|w| w == format!("\r\n{after}").as_bytes())
            .unwrap_or_else(|| panic!("no {after} field"))
            + 2;
        start
            + message[start..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("the field ends")
            + 2
    };
    [&message[..at], field.as_bytes(), &message[at..]].concat()
}

/// Sends like Mastodon: EHLO, `MAIL FROM:<…> BODY=8BITMIME SMTPUTF8`, one recipient, DATA.
async fn send_8bit(port: u16, to: &str, message: &'static str) {
    let to = to.to_string();
    tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(([127, 0, 0, 1], port).into()).expect("connect to the daemon");
        assert_eq!(c.code(), 220);
        assert_eq!(c.command("EHLO ublog.tech"), 250);
        assert_eq!(
            c.command("MAIL FROM:<notifications@ublog.tech> BODY=8BITMIME SMTPUTF8"),
            250
        );
        assert_eq!(c.command(&format!("RCPT TO:<{to}>")), 250);
        assert_eq!(c.command("DATA"), 354);
        assert!(!message.contains("\r\n."), "no line needs dot-stuffing");
        c.send(message.as_bytes());
        assert_eq!(c.command("."), 250);
        assert_eq!(c.command("QUIT"), 221);
    })
    .await
    .expect("the client thread");
}

/// A daemon that signs with an RSA and an Ed25519 key made by `mailer dkim keygen`, relaying
/// to a test upstream, with the key records dkimpy is given.
struct Signing {
    up: Upstream,
    port: u16,
    daemon: Daemon,
    /// (record name, TXT text) of each key.
    keys: Vec<(String, String)>,
}

impl Signing {
    async fn start(dir: &Path) -> Signing {
        let (rsa_key, rsa_name, rsa_text) = keygen(dir, "rsa2026", "rsa2048");
        let (ed_key, ed_name, ed_text) = keygen(dir, "ed2026", "ed25519");
        let up = upstream(dir).await;
        let port = free_port();
        let dkim = dkim_line(&[("rsa2026", &rsa_key), ("ed2026", &ed_key)]);
        let daemon = config(port, dir, &up, &[("outbound", &dkim)]).start(Path::new(BIN));
        Signing {
            up,
            port,
            daemon,
            keys: vec![(rsa_name, rsa_text), (ed_name, ed_text)],
        }
    }
}

/// The records of `keys` as dkimpy's DNS answers them.
fn records(keys: &[(String, String)]) -> Vec<(&str, &str)> {
    keys.iter()
        .map(|(name, text)| (name.as_str(), text.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mastodon_notification_verifies_with_dkimpy_and_its_unsubscribe_fields_are_oversigned() {
    if !dkimpy_present_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Signing {
        up,
        port,
        daemon,
        keys,
    } = Signing::start(dir.path()).await;
    let records = records(&keys);

    send_8bit(port, "pim@example.org", MASTODON_MENTION).await;
    let got = relayed(&up, 1, &daemon).await;
    let m = &got[0].data;
    assert!(
        m.ends_with(MASTODON_MENTION.as_bytes()),
        "the message changed in transit:\n{}",
        String::from_utf8_lossy(m)
    );
    let added = fields_before(m, MASTODON_MENTION.as_bytes());
    let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["DKIM-Signature", "DKIM-Signature", "Received"]);
    let selectors: Vec<String> = added[..2].iter().map(|(_, v)| tag(v, "s")).collect();
    assert_eq!(selectors, ["rsa2026", "ed2026"]);
    for (_, value) in &added[..2] {
        let h: Vec<String> = tag(value, "h")
            .split(':')
            .map(str::to_ascii_lowercase)
            .collect();
        // The fields present, bottom up, then one more of each oversigned name: present ones
        // twice in all, absent ones (Cc, Reply-To) once, as null entries.
        assert_eq!(
            h,
            [
                "list-unsubscribe",
                "list-unsubscribe-post",
                "list-id",
                "content-transfer-encoding",
                "content-type",
                "mime-version",
                "subject",
                "references",
                "in-reply-to",
                "message-id",
                "to",
                "from",
                "date",
                "from",
                "to",
                "cc",
                "subject",
                "date",
                "message-id",
                "reply-to",
                "list-unsubscribe",
                "list-unsubscribe-post"
            ]
        );
    }

    assert_eq!(
        dkimpy_verdicts(dir.path(), m, &records),
        ["pass", "pass"],
        "dkimpy verifies both signatures of the relayed message"
    );
    // A field outside the signed set may be added: still verified.
    let tagged = with_field(m, "", "X-Spam-Score: 0.1\r\n");
    assert_eq!(
        dkimpy_verdicts(dir.path(), &tagged, &records),
        ["pass", "pass"]
    );
    // A second List-Unsubscribe, above the signature (as a later hop adds fields) or next to
    // the original, breaks both: the null entry in h= covers it.
    let evil = "List-Unsubscribe: <https://evil.example/unsubscribe>\r\n";
    for after in ["", "List-Unsubscribe:", "Date:"] {
        let forged = with_field(m, after, evil);
        assert_eq!(
            dkimpy_verdicts(dir.path(), &forged, &records),
            ["fail", "fail"],
            "a second List-Unsubscribe inserted after {after:?} must fail verification"
        );
    }
    let post = "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n";
    assert_eq!(
        dkimpy_verdicts(dir.path(), &with_field(m, "", post), &records),
        ["fail", "fail"],
        "a second List-Unsubscribe-Post must fail verification"
    );
}

/// A message of many 64 KiB chunks is signed while it is read back from its queue file, not
/// from memory: dkimpy verifies the body hash over all of it. The body has what relaxed body
/// canonicalization works on (trailing white space, runs of spaces, empty lines at the end)
/// and lines starting with a dot, at every offset of the chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_signed_as_it_streams_verifies_with_dkimpy() {
    if !dkimpy_present_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Signing {
        up,
        port,
        daemon,
        keys,
    } = Signing::start(dir.path()).await;
    let records = records(&keys);

    let mut message = b"From: Mastodon <notifications@ublog.tech>\r\nTo: pim@example.org\r\n\
        Subject: A long thread\r\nDate: Wed, 02 Dec 2026 08:00:00 +0000\r\n\
        Message-ID: <long-thread@ublog.tech>\r\n\r\n"
        .to_vec();
    for i in 0..40_000 {
        match i % 7 {
            0 => message.extend_from_slice(b".a line that starts with a dot\r\n"),
            1 => message.extend_from_slice(b"trailing   spaces and\ttabs \t \r\n"),
            2 => message.extend_from_slice(b"\r\n"),
            _ => message.extend_from_slice(format!("line {i:06} of the thread\r\n").as_bytes()),
        }
    }
    message.extend_from_slice(b"\r\n\r\n\r\n");
    assert!(message.len() > 10 * 64 * 1024, "ten chunks or more");
    send(port, "pim@example.org", &message).await;
    let got = relayed(&up, 1, &daemon).await;
    let m = &got[0].data;
    assert!(m.ends_with(&message), "the message changed in transit");
    assert_eq!(
        dkimpy_verdicts(dir.path(), m, &records),
        ["pass", "pass"],
        "dkimpy verifies both signatures of the large message"
    );
    // The body hash covers the whole body: a change at its very end breaks both.
    let mut changed = m.clone();
    let at = changed.len() - 8;
    changed[at - 10] = b'X';
    assert_eq!(
        dkimpy_verdicts(dir.path(), &changed, &records),
        ["fail", "fail"]
    );
}
