//! End to end: the daemon checks its sending domain's DNS at start and reports a failing check
//! in its log and on the metrics endpoint.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use mailer_testkit::config::TestConfig;
use mailer_testkit::daemon::{eventually, free_port};
use mailer_testkit::dns::DnsServer;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");

fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_not_authorized_by_spf_is_logged_and_exported() {
    // ublog.test's SPF authorizes 192.0.2.1 only; the relay is 127.0.0.1.
    let dns = DnsServer::start(&[
        ("ublog.test", "TXT", "v=spf1 ip4:192.0.2.1 -all"),
        ("_dmarc.ublog.test", "TXT", "v=DMARC1; p=reject"),
        ("ublog.test", "MX", "10 mx.ublog.test"),
        ("mx.ublog.test", "A", "192.0.2.1"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics = free_port();
    let daemon = TestConfig::new(dir.path(), port)
        .hostname("mx.ublog.test")
        .relay_without_auth(free_port())
        .mail_from("@ublog.test")
        .metrics(metrics)
        .watch("1h", &[dns.addr()])
        .start(Path::new(BIN));
    let exported = eventually(Duration::from_secs(20), || {
        scrape(metrics).filter(|m| m.contains("mailer_check_status{check=\"spf.pool\"} 2"))
    });
    assert!(
        exported.is_some(),
        "{:?}\n{}",
        scrape(metrics),
        daemon.log()
    );
    assert!(scrape(metrics)
        .unwrap()
        .contains("mailer_check_status{check=\"dmarc.policy\"} 0"));
    let log = daemon.log();
    let reported: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("deliverability check failed") && l.contains("check=\"spf.pool\""))
        .collect();
    assert_eq!(reported.len(), 1, "logged once\n{log}");
    assert!(
        reported[0].contains("127.0.0.1"),
        "names the address: {}",
        reported[0]
    );
}
