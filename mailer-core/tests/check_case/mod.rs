//! The test harness of the `mailer check` tests: a clean `ublog.test` zone on the loopback DNS
//! server and a loopback HTTPS policy server, which each test breaks or varies in one place.

#![allow(dead_code)] // each test file uses a part

use std::time::Duration;

use mailer_core::check::{run_checks, CheckInput, Report, Status};
use mailer_testkit::dns::DnsServer;
use mailer_testkit::https::{HttpsServer, Reply};

pub const DOMAIN: &str = "ublog.test";
pub const POLICY: &str = "version: STSv1\nmode: enforce\nmx: mx.ublog.test\nmax_age: 604800\n";
// RFC 8463 §A.2 example Ed25519 public key.
pub const ED25519_KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

pub struct Case {
    pub zone: Vec<(String, String, String)>,
    pub reply: Reply,
    pub cert_names: Vec<String>,
    pub relays: Vec<String>,
    pub selectors: Vec<String>,
}

impl Case {
    pub fn clean() -> Case {
        let zone = [
            (
                "ublog.test",
                "TXT",
                "v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 -all",
            ),
            ("ublog.test", "MX", "10 mx.ublog.test"),
            ("mx.ublog.test", "A", "127.0.0.20"),
            ("relay.ublog.test", "A", "127.0.0.10"),
            ("relay.ublog.test", "A", "127.0.0.11"),
            (
                "_dmarc.ublog.test",
                "TXT",
                "v=DMARC1; p=reject; adkim=s; aspf=s; rua=mailto:dmarc@ublog.test",
            ),
            (
                "mail._domainkey.ublog.test",
                "TXT",
                &format!("v=DKIM1; k=ed25519; p={ED25519_KEY}"),
            ),
            ("_mta-sts.ublog.test", "TXT", "v=STSv1; id=20240101"),
            ("mta-sts.ublog.test", "A", "127.0.0.1"),
            (
                "_smtp._tls.ublog.test",
                "TXT",
                "v=TLSRPTv1; rua=mailto:tls@ublog.test",
            ),
        ];
        Case {
            zone: zone
                .iter()
                .map(|(n, t, v)| (n.to_string(), t.to_string(), v.to_string()))
                .collect(),
            reply: Reply::policy(POLICY),
            cert_names: vec!["mta-sts.ublog.test".into()],
            relays: vec!["relay.ublog.test".into()],
            selectors: vec!["mail".into()],
        }
    }

    /// Replaces every record of `name`/`rtype` by one with `value`.
    pub fn set(mut self, name: &str, rtype: &str, value: &str) -> Case {
        self = self.remove(name, rtype);
        self.add(name, rtype, value)
    }

    pub fn add(mut self, name: &str, rtype: &str, value: &str) -> Case {
        self.zone.push((name.into(), rtype.into(), value.into()));
        self
    }

    pub fn remove(mut self, name: &str, rtype: &str) -> Case {
        self.zone.retain(|(n, t, _)| !(n == name && t == rtype));
        self
    }

    pub fn reply(mut self, reply: Reply) -> Case {
        self.reply = reply;
        self
    }

    pub async fn run(self) -> Report {
        let zone: Vec<(&str, &str, &str)> = self
            .zone
            .iter()
            .map(|(n, t, v)| (n.as_str(), t.as_str(), v.as_str()))
            .collect();
        let dns = DnsServer::start(&zone).await;
        let names: Vec<&str> = self.cert_names.iter().map(String::as_str).collect();
        let https = HttpsServer::start(&names, self.reply).await;
        let mut input = CheckInput::new(DOMAIN);
        input.relays = self.relays;
        input.dkim_selectors = self.selectors;
        input.nameservers = vec![dns.addr()];
        input.extra_roots = vec![https.ca_der()];
        input.timeout = Duration::from_secs(2);
        input.mta_sts_port = https.port();
        run_checks(&input).await.expect("DNS is reachable")
    }
}

/// The status of the one check `id`; panics with the whole report when absent or repeated.
pub fn status(report: &Report, id: &str) -> Status {
    let found: Vec<_> = report.find(id).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one check {id} in\n{}",
        report.render_text()
    );
    found[0].status
}

pub fn message<'a>(report: &'a Report, id: &'a str) -> &'a str {
    &report
        .find(id)
        .next()
        .unwrap_or_else(|| panic!("no {id} in\n{}", report.render_text()))
        .message
}

/// The hint of the one check `id`.
pub fn hint<'a>(report: &'a Report, id: &'a str) -> &'a str {
    &report
        .find(id)
        .next()
        .unwrap_or_else(|| panic!("no {id} in\n{}", report.render_text()))
        .hint
}

/// Panics with the report when any check is worse than info.
pub fn assert_clean(report: &Report) {
    let bad: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.status > Status::Info)
        .collect();
    assert!(bad.is_empty(), "{}", report.render_text());
    assert_eq!(report.exit_code(), 0, "{}", report.render_text());
}
