//! `run_checks` against a loopback DNS server and a loopback HTTPS policy server: each test
//! breaks one thing in an otherwise clean `ublog.test` and asserts the exact check ids, statuses
//! and exit code.

mod check_case;

use std::time::Duration;

use check_case::*;
use mailer_core::check::{run_checks, CheckInput, Status};
use mailer_testkit::https::Reply;

#[tokio::test]
async fn clean_domain_passes_every_check() {
    let r = Case::clean().run().await;
    let bad: Vec<_> = r
        .checks
        .iter()
        .filter(|c| c.status > Status::Info)
        .collect();
    assert!(bad.is_empty(), "{}", r.render_text());
    assert_eq!(r.status, Status::Pass);
    assert_eq!(r.exit_code(), 0);
    for id in [
        "spf.record",
        "spf.syntax",
        "spf.lookups",
        "spf.void-lookups",
        "spf.includes",
        "spf.all",
        "spf.ptr",
        "spf.length",
        "spf.pool",
        "dmarc.record",
        "dmarc.syntax",
        "dmarc.policy",
        "dmarc.pct",
        "dmarc.aspf",
        "dmarc.adkim",
        "dmarc.rua",
        "dkim.key",
        "alignment.spf",
        "alignment.dkim",
        "alignment.dmarc",
        "mta-sts.record",
        "mta-sts.fetch",
        "mta-sts.policy",
        "mta-sts.mode",
        "mta-sts.mx",
        "tls-rpt.record",
        "mx.record",
        "mx.address",
    ] {
        assert_eq!(status(&r, id), Status::Pass, "{id}\n{}", r.render_text());
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["domain"], "ublog.test");
    assert_eq!(json["status"], "pass");
    assert_eq!(json["checks"][0]["area"], "spf");
}

#[tokio::test]
async fn spf_missing_fails_record_and_pool() {
    let r = Case::clean().remove("ublog.test", "TXT").run().await;
    assert_eq!(status(&r, "spf.record"), Status::Fail);
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    assert_eq!(r.exit_code(), 1);
}

#[tokio::test]
async fn spf_multiple_records_fail() {
    let r = Case::clean()
        .add("ublog.test", "TXT", "v=spf1 -all")
        .run()
        .await;
    assert_eq!(status(&r, "spf.record"), Status::Fail);
    assert!(message(&r, "spf.record").contains("2 SPF records"));
}

#[tokio::test]
async fn spf_syntax_error_names_the_term() {
    let r = Case::clean()
        .set(
            "ublog.test",
            "TXT",
            "v=spf1 ip4:127.0.0.10 ip4:127.0.0.300 -all",
        )
        .run()
        .await;
    assert_eq!(status(&r, "spf.syntax"), Status::Fail);
    assert!(message(&r, "spf.syntax").contains("ip4:127.0.0.300"));
}

#[tokio::test]
async fn spf_eleven_lookups_through_nested_includes_fail_with_path() {
    let mut c = Case::clean().set(
        "ublog.test",
        "TXT",
        "v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 include:i1.ublog.test -all",
    );
    // i1 → i2 → … → i11: eleven includes in a chain.
    for n in 1..=11 {
        let next = if n < 11 {
            format!(" include:i{}.ublog.test", n + 1)
        } else {
            String::new()
        };
        c = c.add(
            &format!("i{n}.ublog.test"),
            "TXT",
            &format!("v=spf1{next} -all"),
        );
    }
    let r = c.run().await;
    assert_eq!(status(&r, "spf.lookups"), Status::Fail);
    let m = message(&r, "spf.lookups");
    assert!(m.starts_with("11 DNS-lookup terms"), "{m}");
    assert!(
        m.contains("include:i10.ublog.test → include:i11.ublog.test"),
        "{m}"
    );
}

#[tokio::test]
async fn spf_three_void_lookups_fail() {
    let r = Case::clean()
        .set("ublog.test", "TXT", "v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 a:v1.ublog.test a:v2.ublog.test mx:v3.ublog.test -all")
        .run()
        .await;
    assert_eq!(status(&r, "spf.void-lookups"), Status::Fail);
    assert!(message(&r, "spf.void-lookups").starts_with("3 void lookups"));
}

#[tokio::test]
async fn spf_include_without_spf_fails() {
    let r = Case::clean()
        .set(
            "ublog.test",
            "TXT",
            "v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 include:nospf.ublog.test -all",
        )
        .add("nospf.ublog.test", "TXT", "hello")
        .run()
        .await;
    assert_eq!(status(&r, "spf.includes"), Status::Fail);
    assert!(message(&r, "spf.includes").contains("nospf.ublog.test has no SPF record"));
}

#[tokio::test]
async fn spf_plus_all_fails_and_ptr_warns() {
    let r = Case::clean()
        .set("ublog.test", "TXT", "v=spf1 ptr +all")
        .run()
        .await;
    assert_eq!(status(&r, "spf.all"), Status::Fail);
    assert_eq!(status(&r, "spf.ptr"), Status::Warn);
}

#[tokio::test]
async fn spf_pool_unauthorized_fails() {
    let r = Case::clean()
        .set("ublog.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
        .run()
        .await;
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    let m = message(&r, "spf.pool");
    assert!(m.starts_with("no pool address passes"), "{m}");
    let hint = &r.find("spf.pool").next().unwrap().hint;
    assert_eq!(
        hint,
        "add ip4:127.0.0.10 ip4:127.0.0.11 to the SPF record of ublog.test"
    );
}

#[tokio::test]
async fn spf_pool_partly_authorized_names_missing_addresses() {
    let r = Case::clean()
        .set("ublog.test", "TXT", "v=spf1 ip4:127.0.0.10 -all")
        .run()
        .await;
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    let m = message(&r, "spf.pool");
    assert!(
        m.contains("127.0.0.11 (fail)") && !m.contains("127.0.0.10"),
        "{m}"
    );
}

#[tokio::test]
async fn dmarc_missing_fails() {
    let r = Case::clean().remove("_dmarc.ublog.test", "TXT").run().await;
    assert_eq!(status(&r, "dmarc.record"), Status::Fail);
}

#[tokio::test]
async fn dmarc_multiple_records_fail() {
    let r = Case::clean()
        .add("_dmarc.ublog.test", "TXT", "v=DMARC1; p=none")
        .run()
        .await;
    assert_eq!(status(&r, "dmarc.record"), Status::Fail);
}

#[tokio::test]
async fn dmarc_bad_separator_is_a_syntax_error() {
    let r = Case::clean()
        .set("_dmarc.ublog.test", "TXT", "v=DMARC1, p=reject")
        .run()
        .await;
    assert_eq!(status(&r, "dmarc.syntax"), Status::Fail);
    assert!(message(&r, "dmarc.syntax").contains("separated by ';'"));
}

#[tokio::test]
async fn dmarc_invalid_policy_fails() {
    let r = Case::clean()
        .set("_dmarc.ublog.test", "TXT", "v=DMARC1; p=block")
        .run()
        .await;
    assert_eq!(status(&r, "dmarc.policy"), Status::Fail);
    assert_eq!(status(&r, "dmarc.syntax"), Status::Fail);
}

#[tokio::test]
async fn dmarc_policy_none_and_pct_warn() {
    let r = Case::clean()
        .set("_dmarc.ublog.test", "TXT", "v=DMARC1; p=none; pct=50")
        .run()
        .await;
    assert_eq!(status(&r, "dmarc.policy"), Status::Warn);
    assert_eq!(status(&r, "dmarc.pct"), Status::Warn);
    assert_eq!(status(&r, "dmarc.aspf"), Status::Info);
    assert_eq!(r.status, Status::Warn);
    assert_eq!(r.exit_code(), 0);
}

#[tokio::test]
async fn dmarc_unauthorized_external_rua_warns() {
    let r = Case::clean()
        .set(
            "_dmarc.ublog.test",
            "TXT",
            "v=DMARC1; p=reject; rua=mailto:d@reports.example,mailto:x@ok.example",
        )
        .add("ublog.test._report._dmarc.ok.example", "TXT", "v=DMARC1")
        .run()
        .await;
    assert_eq!(status(&r, "dmarc.report-auth"), Status::Warn);
    let m = message(&r, "dmarc.report-auth");
    assert!(
        m.contains("ublog.test._report._dmarc.reports.example") && !m.contains("ok.example"),
        "{m}"
    );
}

#[tokio::test]
async fn dmarc_record_at_apex_is_named() {
    let r = Case::clean()
        .remove("_dmarc.ublog.test", "TXT")
        .add("ublog.test", "TXT", "v=DMARC1; p=reject")
        .run()
        .await;
    assert_eq!(status(&r, "dmarc.location"), Status::Fail);
    assert!(r.find("dmarc.record").next().is_none());
}

#[tokio::test]
async fn dkim_key_missing_warns() {
    let r = Case::clean()
        .remove("mail._domainkey.ublog.test", "TXT")
        .run()
        .await;
    assert_eq!(status(&r, "dkim.key"), Status::Warn);
    assert_eq!(status(&r, "alignment.dkim"), Status::Warn);
    assert_eq!(status(&r, "alignment.dmarc"), Status::Pass);
}

#[tokio::test]
async fn strict_spf_alignment_impossible_when_pool_only_at_subdomain() {
    let mut c = Case::clean()
        .set("ublog.test", "TXT", "v=spf1 mx -all")
        .remove("mail._domainkey.ublog.test", "TXT")
        .add(
            "relay.ublog.test",
            "TXT",
            "v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 -all",
        );
    c.selectors = vec!["mail".into()];
    let r = c.run().await;
    assert_eq!(status(&r, "alignment.spf"), Status::Fail);
    assert_eq!(status(&r, "alignment.dmarc"), Status::Fail);
    assert!(message(&r, "alignment.spf").contains("relay.ublog.test"));
}

#[tokio::test]
async fn mta_sts_missing_warns() {
    let r = Case::clean()
        .remove("_mta-sts.ublog.test", "TXT")
        .run()
        .await;
    assert_eq!(status(&r, "mta-sts.record"), Status::Warn);
    assert_eq!(r.exit_code(), 0);
}

#[tokio::test]
async fn mta_sts_bad_id_fails() {
    let r = Case::clean()
        .set("_mta-sts.ublog.test", "TXT", "v=STSv1; id=2024-01-01")
        .run()
        .await;
    assert_eq!(status(&r, "mta-sts.record"), Status::Fail);
}

#[tokio::test]
async fn mta_sts_policy_404_fails() {
    let r = Case::clean().reply(Reply::status(404)).run().await;
    assert_eq!(status(&r, "mta-sts.http-status"), Status::Fail);
    assert!(message(&r, "mta-sts.http-status").contains("404"));
}

#[tokio::test]
async fn mta_sts_policy_host_unresolvable_fails() {
    let r = Case::clean().remove("mta-sts.ublog.test", "A").run().await;
    assert_eq!(status(&r, "mta-sts.fetch"), Status::Fail);
    assert!(message(&r, "mta-sts.fetch").contains("has no address"));
}

#[tokio::test]
async fn mta_sts_certificate_name_mismatch_fails() {
    let mut c = Case::clean();
    c.cert_names = vec!["other.example".into()];
    let r = c.run().await;
    assert_eq!(status(&r, "mta-sts.tls"), Status::Fail);
}

#[tokio::test]
async fn mta_sts_redirect_is_not_followed() {
    let mut reply = Reply::status(301);
    reply.location = Some("https://elsewhere.example/policy".into());
    let r = Case::clean().reply(reply).run().await;
    assert_eq!(status(&r, "mta-sts.http-status"), Status::Fail);
    assert!(message(&r, "mta-sts.http-status").contains("elsewhere.example"));
}

#[tokio::test]
async fn mta_sts_wrong_content_type_fails() {
    let mut reply = Reply::policy(POLICY);
    reply.content_type = Some("text/html; charset=utf-8".into());
    let r = Case::clean().reply(reply).run().await;
    assert_eq!(status(&r, "mta-sts.content-type"), Status::Fail);
}

#[tokio::test]
async fn mta_sts_policy_syntax_error_names_the_line() {
    let r = Case::clean()
        .reply(Reply::policy(
            "version: STSv1\nmode: enforce\nmx: mx.ublog.test\nmax_age: forever\n",
        ))
        .run()
        .await;
    assert_eq!(status(&r, "mta-sts.policy"), Status::Fail);
    assert!(message(&r, "mta-sts.policy").contains("line 4"));
}

#[tokio::test]
async fn mta_sts_mx_not_covered_fails_and_testing_warns() {
    let r = Case::clean()
        .add("ublog.test", "MX", "20 backup.other.test")
        .add("backup.other.test", "A", "127.0.0.21")
        .reply(Reply::policy(
            "version: STSv1\nmode: testing\nmx: *.ublog.test\nmax_age: 86400\n",
        ))
        .run()
        .await;
    assert_eq!(status(&r, "mta-sts.mx"), Status::Fail);
    assert!(message(&r, "mta-sts.mx").contains("backup.other.test"));
    assert_eq!(status(&r, "mta-sts.mode"), Status::Warn);
}

#[tokio::test]
async fn tls_rpt_missing_warns_and_bad_fails() {
    let r = Case::clean()
        .remove("_smtp._tls.ublog.test", "TXT")
        .run()
        .await;
    assert_eq!(status(&r, "tls-rpt.record"), Status::Warn);
    let r = Case::clean()
        .set("_smtp._tls.ublog.test", "TXT", "v=TLSRPTv1; rua=ftp://x")
        .run()
        .await;
    assert_eq!(status(&r, "tls-rpt.record"), Status::Fail);
}

#[tokio::test]
async fn mx_host_without_address_fails() {
    let r = Case::clean().remove("mx.ublog.test", "A").run().await;
    assert_eq!(status(&r, "mx.address"), Status::Fail);
}

#[tokio::test]
async fn servfail_is_reported_as_dns_error_not_missing() {
    let r = Case::clean()
        .add("_smtp._tls.ublog.test", "SERVFAIL", "")
        .run()
        .await;
    assert_eq!(status(&r, "tls-rpt.dns-error"), Status::Fail);
    assert_eq!(status(&r, "tls-rpt.record"), Status::Unknown);
    assert_eq!(r.exit_code(), 2);
}

#[tokio::test]
async fn unreachable_dns_server_is_exit_2() {
    // A loopback port with nothing listening.
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let mut input = CheckInput::new(DOMAIN);
    input.nameservers = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    input.timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let err = run_checks(&input).await.expect_err("no DNS server answers");
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string().starts_with("DNS cannot be queried"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn dns_timeout_is_reported_as_timeout_not_missing() {
    let r = Case::clean()
        .add("_mta-sts.ublog.test", "TIMEOUT", "")
        .run()
        .await;
    assert_eq!(status(&r, "mta-sts.dns-error"), Status::Fail);
    assert!(
        message(&r, "mta-sts.dns-error").contains("timed out"),
        "{}",
        r.render_text()
    );
    assert_eq!(status(&r, "mta-sts.record"), Status::Unknown);
    assert_eq!(r.exit_code(), 2);
}
