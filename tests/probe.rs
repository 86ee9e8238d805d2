//! End to end: `mailer check --probe` against real upstreams on loopback, one pool of seven
//! members in one run (healthy; certificate expired, expiring in 10 days, expiring in 3 days;
//! credentials refused; sender refused; down), each diagnosed with the right id and status,
//! and no upstream ever sees RCPT or DATA. Then the daemon's watch exports the probe on
//! `/metrics`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use mailer_testkit::config::TestConfig;
use mailer_testkit::daemon::{eventually, free_port};
use mailer_testkit::dns::DnsServer;
use mailer_testkit::sink::{Sink, SinkOptions};
use mailer_testkit::world::RelayWorld;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");
const DAY: u64 = 86400;

fn probe(config: &TestConfig, json: bool) -> Output {
    let path = config.dir().join("mailer.toml");
    std::fs::write(&path, config.render()).expect("write the configuration");
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(&path)
        .args(["check", "--probe", "--timeout", "10"]);
    if json {
        command.arg("--json");
    }
    command.output().expect("mailer runs")
}

/// The member probed at `port`, from the JSON report.
fn member(report: &Value, port: u16) -> &Value {
    let relay = format!("127.0.0.1:{port}");
    report["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["relay"] == relay.as_str())
        .unwrap_or_else(|| panic!("no member {relay} in {report:#}"))
}

/// `(id, status)` of every check of a member, in order.
fn verdicts(member: &Value) -> Vec<(String, String)> {
    member["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            assert_eq!(c["area"], "relay");
            (
                c["id"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn message<'a>(member: &'a Value, id: &str) -> &'a str {
    member["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c["message"].as_str())
        .unwrap_or_else(|| panic!("no {id} in {member:#}"))
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(i, s)| (i.to_string(), s.to_string()))
        .collect()
}

/// An upstream of `world` whose certificate for 127.0.0.1 expires `valid_for` from now and
/// that announces a SIZE above the daemon's default `max_message_size`.
async fn upstream(
    world: &RelayWorld,
    valid_for: Duration,
    tweak: impl FnOnce(&mut SinkOptions),
) -> Sink {
    let leaf = world.ca.issue_expiring_in(&["127.0.0.1"], valid_for);
    world
        .upstream(|o| {
            o.tls = Some(leaf);
            o.max_size = Some(64 << 20);
            tweak(o);
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_diagnoses_each_pool_member_and_never_reaches_data() {
    let world = RelayWorld::new("relay-user", "s3cret");
    // An hour more than whole days: the days left stay the same for the test's duration.
    let healthy = upstream(&world, Duration::from_secs(90 * DAY + 3600), |_| {}).await;
    let expired = world
        .upstream(|o| o.tls = Some(world.ca.issue_expired(&["127.0.0.1"])))
        .await;
    let expiring = upstream(&world, Duration::from_secs(10 * DAY + 3600), |_| {}).await;
    let expiring_soon = upstream(&world, Duration::from_secs(3 * DAY + 3600), |_| {}).await;
    let bad_password = upstream(&world, Duration::from_secs(90 * DAY), |o| {
        o.auth = Some(("relay-user".into(), "another-password".into()));
    })
    .await;
    let refusing_sender = upstream(&world, Duration::from_secs(90 * DAY), |o| {
        o.mail_reply = Some(Arc::new(|from: &str| {
            (from == "postmaster@ublog.tech")
                .then(|| (550, "5.7.1 sender not allowed for this account".to_string()))
        }));
    })
    .await;
    let down = Sink::refusing().port();
    let sinks = [
        &healthy,
        &expired,
        &expiring,
        &expiring_soon,
        &bad_password,
        &refusing_sender,
    ];
    let mut ports: Vec<u16> = sinks.iter().map(|s| s.port()).collect();
    ports.push(down);
    let config = world.config(&ports, "10s");

    let out = probe(&config, true);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(1), "a member fails: exit 1");
    assert_eq!(report["status"], "fail");
    assert_eq!(report["members"].as_array().unwrap().len(), 7);

    let m = member(&report, healthy.port());
    assert_eq!(
        verdicts(m),
        pairs(&[
            ("relay.connect", "pass"),
            ("relay.tls", "pass"),
            ("relay.cert-expiry", "pass"),
            ("relay.auth", "pass"),
            ("relay.size", "pass"),
            ("relay.sender", "pass"),
        ])
    );
    assert!(message(m, "relay.tls").contains("verified for 127.0.0.1"));
    assert!(message(m, "relay.tls").contains("TLS 1.3 by STARTTLS"));
    assert!(message(m, "relay.cert-expiry").contains("expires in 90 days"));
    assert!(message(m, "relay.auth")
        .starts_with("AUTH PLAIN as relay-user (label papmx of table secrets): 235"));
    assert!(message(m, "relay.sender").contains(
        "MAIL FROM:<postmaster@ublog.tech> accepted: 250 2.1.0 sender ok (postmaster@mx.ublog.tech rewritten by mail_from = \"@ublog.tech\" of action outbound)"
    ));
    let expiry = m["cert_expiry_seconds"].as_i64().unwrap();
    assert!(
        (90 * DAY as i64..=90 * DAY as i64 + 3600).contains(&expiry),
        "{expiry}"
    );

    let m = member(&report, expired.port());
    assert_eq!(
        verdicts(m),
        pairs(&[
            ("relay.connect", "pass"),
            ("relay.tls", "fail"),
            ("relay.cert-expiry", "fail"),
        ])
    );
    assert!(
        message(m, "relay.tls").contains("certificate expired; verified against 127.0.0.1"),
        "{}",
        message(m, "relay.tls")
    );
    assert!(message(m, "relay.cert-expiry").contains("expired 1 day ago"));
    assert!(m["cert_expiry_seconds"].as_i64().unwrap() < 0);
    assert_eq!(
        expired.auth_attempts(),
        0,
        "no credentials over an unverified connection"
    );

    let m = member(&report, expiring.port());
    assert_eq!(m["status"], "warn");
    assert!(verdicts(m).contains(&("relay.cert-expiry".into(), "warn".into())));
    assert!(message(m, "relay.cert-expiry").contains("expires in 10 days"));

    let m = member(&report, expiring_soon.port());
    assert_eq!(m["status"], "fail");
    assert!(verdicts(m).contains(&("relay.cert-expiry".into(), "fail".into())));
    assert!(verdicts(m).contains(&("relay.tls".into(), "pass".into())));
    assert!(message(m, "relay.cert-expiry").contains("expires in 3 days"));

    let m = member(&report, bad_password.port());
    assert_eq!(
        verdicts(m),
        pairs(&[
            ("relay.connect", "pass"),
            ("relay.tls", "pass"),
            ("relay.cert-expiry", "pass"),
            ("relay.auth", "fail"),
            ("relay.size", "pass"),
        ])
    );
    assert!(
        message(m, "relay.auth").contains("refused: 535 5.7.8 authentication credentials invalid")
    );

    let m = member(&report, refusing_sender.port());
    assert_eq!(
        verdicts(m),
        pairs(&[
            ("relay.connect", "pass"),
            ("relay.tls", "pass"),
            ("relay.cert-expiry", "pass"),
            ("relay.auth", "pass"),
            ("relay.size", "pass"),
            ("relay.sender", "fail"),
        ])
    );
    assert!(message(m, "relay.sender").contains(
        "MAIL FROM:<postmaster@ublog.tech> refused: 550 5.7.1 sender not allowed for this account"
    ));

    let m = member(&report, down);
    assert_eq!(verdicts(m), pairs(&[("relay.connect", "fail")]));
    assert!(message(m, "relay.connect").contains("connect failed"));

    let differences: Vec<&str> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        differences.contains(
            &format!("relay.connect: fail at 127.0.0.1:{down}; pass at the other 6").as_str()
        ),
        "{differences:#?}"
    );
    assert!(differences.iter().any(|d| d.starts_with("relay.sender:")));

    // The text report says the same, with a fix under each failure.
    let text = probe(&config, false);
    assert_eq!(text.status.code(), Some(1));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("sender: outbound: MAIL FROM:<postmaster@ublog.tech> (postmaster@mx.ublog.tech rewritten by mail_from = \"@ublog.tech\" of action outbound)"), "{text}");
    assert!(
        text.contains("fix: renew the certificate of 127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("members differ"), "{text}");

    // Two probes, and never a recipient nor data; each session ended with QUIT.
    for sink in sinks {
        assert_eq!(sink.command_count("RCPT"), 0, "port {}", sink.port());
        assert_eq!(sink.command_count("DATA"), 0, "port {}", sink.port());
        assert_eq!(sink.count(), 0);
    }
    assert_eq!(healthy.command_count("MAIL"), 2);
    assert_eq!(healthy.command_count("RSET"), 2);
    assert_eq!(healthy.command_count("QUIT"), 2);
    assert_eq!(refusing_sender.command_count("RSET"), 2);
    assert_eq!(
        bad_password.command_count("MAIL"),
        0,
        "no sender after a refused AUTH"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_pool_passes_with_exit_zero() {
    let world = RelayWorld::new("relay-user", "s3cret");
    let a = upstream(&world, Duration::from_secs(200 * DAY), |_| {}).await;
    let b = upstream(&world, Duration::from_secs(200 * DAY), |_| {}).await;
    let config = world.config(&[a.port(), b.port()], "10s");
    let out = probe(&config, false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("relay pool: pass — 0 of 2 addresses fail"),
        "{text}"
    );
    assert!(!text.contains("members differ"), "{text}");
    assert_eq!(a.command_count("DATA") + b.command_count("DATA"), 0);
}

fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of the series `name{labels}` in a scrape.
fn series(scraped: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    scraped
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_exports_probe_status_and_certificate_expiry() {
    let world = RelayWorld::new("relay-user", "s3cret");
    let healthy = upstream(&world, Duration::from_secs(90 * DAY), |_| {}).await;
    let expiring = upstream(&world, Duration::from_secs(5 * DAY + 3600), |_| {}).await;
    let dns = DnsServer::start(&[("ublog.tech", "TXT", "v=spf1 ip4:127.0.0.1 -all")]).await;
    let metrics = free_port();
    let daemon = world
        .config(&[healthy.port(), expiring.port()], "10s")
        .metrics(metrics)
        .watch("1h", &[dns.addr()])
        .start(Path::new(BIN));
    let good = format!(
        "relay=\"127.0.0.1:{0}\",address=\"127.0.0.1:{0}\"",
        healthy.port()
    );
    let bad = format!(
        "relay=\"127.0.0.1:{0}\",address=\"127.0.0.1:{0}\"",
        expiring.port()
    );
    let status = |labels: &str, check: &str| format!("{labels},check=\"{check}\"");
    let scraped = eventually(Duration::from_secs(30), || {
        scrape(metrics).filter(|m| {
            series(
                m,
                "mailer_relay_probe_status",
                &status(&bad, "relay.cert-expiry"),
            )
            .is_some()
        })
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", scrape(metrics), daemon.log()));
    assert_eq!(
        series(
            &scraped,
            "mailer_relay_probe_status",
            &status(&bad, "relay.cert-expiry")
        ),
        Some(2.0),
        "failure, as mailer_check_status encodes it\n{scraped}"
    );
    assert_eq!(
        series(
            &scraped,
            "mailer_relay_probe_status",
            &status(&bad, "relay.sender")
        ),
        Some(0.0)
    );
    for id in [
        "relay.connect",
        "relay.tls",
        "relay.cert-expiry",
        "relay.auth",
        "relay.size",
        "relay.sender",
    ] {
        assert_eq!(
            series(&scraped, "mailer_relay_probe_status", &status(&good, id)),
            Some(0.0),
            "{id}\n{scraped}"
        );
    }
    let soon = series(&scraped, "mailer_relay_cert_expiry_seconds", &bad).expect("expiry series");
    assert!(
        (5.0 * DAY as f64..=5.0 * DAY as f64 + 3600.0).contains(&soon),
        "{soon}"
    );
    let later = series(&scraped, "mailer_relay_cert_expiry_seconds", &good).expect("expiry series");
    assert!(later > 89.0 * DAY as f64, "{later}");
    let log = daemon.log();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("relay probe check failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{log}");
    assert!(
        failed[0].contains("relay.cert-expiry") && failed[0].contains(&expiring.port().to_string())
    );
    assert_eq!(
        healthy.command_count("DATA") + expiring.command_count("DATA"),
        0
    );
    assert_eq!(
        healthy.command_count("RCPT") + expiring.command_count("RCPT"),
        0
    );
}
