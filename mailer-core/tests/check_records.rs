//! DMARC (RFC 7489, RFC 9091, DMARCbis), DKIM key records (RFC 6376 §3.6.1, RFC 8301, RFC
//! 8463), MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) read tag by tag as receivers and senders
//! read them; a failed lookup makes what depends on it `unknown`. Defects first, then the
//! valid variants that must stay clean.

mod check_case;

use base64::Engine;
use check_case::*;
use mailer_core::check::Status;
use mailer_testkit::https::Reply;

const DMARC: &str = "_dmarc.ublog.test";
const DKIM: &str = "mail._domainkey.ublog.test";

fn dmarc(record: &str) -> Case {
    Case::clean().set(DMARC, "TXT", record)
}

fn dkim(record: &str) -> Case {
    Case::clean().set(DKIM, "TXT", record)
}

/// A DER length.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..=127 => vec![n as u8],
        128..=255 => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(body.len()));
    out.extend(body);
    out
}

/// The base64 SubjectPublicKeyInfo of an RSA key whose modulus has exactly `bits` bits (the
/// record is judged by its size; nothing is verified with it).
fn rsa_key(bits: usize) -> String {
    let mut modulus = vec![0x00];
    let bytes = bits.div_ceil(8);
    let top_bits = bits - (bytes - 1) * 8;
    modulus.push(1 << (top_bits - 1));
    modulus.extend(std::iter::repeat_n(0x5a, bytes - 1));
    let mut rsa = der(0x02, &modulus);
    rsa.extend(der(0x02, &[0x01, 0x00, 0x01]));
    let rsa = der(0x30, &rsa);
    let alg = der(
        0x30,
        &[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
        ],
    );
    let mut bitstring = vec![0x00];
    bitstring.extend(rsa);
    let mut spki = alg;
    spki.extend(der(0x03, &bitstring));
    base64::engine::general_purpose::STANDARD.encode(der(0x30, &spki))
}

// ---- DMARC defects ----

#[tokio::test]
async fn dmarc_version_in_lower_case_is_invalid_not_missing() {
    // RFC 7489 §6.4: the version value is %x44.4d.41.52.43.31, "DMARC1" exactly.
    let r = dmarc("v=dmarc1; p=reject; rua=mailto:dmarc@ublog.test")
        .run()
        .await;
    assert_eq!(status(&r, "dmarc.record"), Status::Fail);
    assert!(
        message(&r, "dmarc.record").contains("is not a DMARC record"),
        "{}",
        r.render_text()
    );
    assert_eq!(
        hint(&r, "dmarc.record"),
        "publish it as \"v=DMARC1; p=reject; rua=mailto:dmarc@ublog.test\" at _dmarc.ublog.test"
    );
}

#[tokio::test]
async fn dmarc_version_not_first_is_invalid_and_the_fix_keeps_the_policy() {
    let r = dmarc("p=reject; v=DMARC1; adkim=s").run().await;
    assert_eq!(status(&r, "dmarc.record"), Status::Fail);
    assert_eq!(
        hint(&r, "dmarc.record"),
        "publish it as \"v=DMARC1; p=reject; adkim=s\" at _dmarc.ublog.test"
    );
}

#[tokio::test]
async fn dmarc_misspelt_policy_fix_keeps_the_intent() {
    let r = dmarc("v=DMARC1; p=rejct").run().await;
    assert_eq!(status(&r, "dmarc.policy"), Status::Fail);
    assert_eq!(
        hint(&r, "dmarc.policy"),
        "set p=reject in the DMARC record at _dmarc.ublog.test"
    );
}

#[tokio::test]
async fn dmarc_np_none_under_reject_warns() {
    // DMARCbis np: the policy for subdomains that do not exist.
    let r = dmarc("v=DMARC1; p=reject; np=none; adkim=s; aspf=s")
        .run()
        .await;
    assert_eq!(status(&r, "dmarc.subdomain-policy"), Status::Warn);
    assert_eq!(status(&r, "dmarc.syntax"), Status::Pass);
    assert!(hint(&r, "dmarc.subdomain-policy").contains("np=reject"));
}

#[tokio::test]
async fn dmarc_testing_flag_weakens_the_policy() {
    // DMARCbis t=y: receivers apply the next weaker policy.
    let r = dmarc("v=DMARC1; p=reject; t=y; adkim=s; aspf=s")
        .run()
        .await;
    assert_eq!(status(&r, "dmarc.policy"), Status::Warn);
    assert!(message(&r, "dmarc.policy").contains("quarantine"));
    assert_eq!(
        hint(&r, "dmarc.policy"),
        "remove t=y from the DMARC record at _dmarc.ublog.test"
    );
}

#[tokio::test]
async fn dmarc_psd_yes_on_an_ordinary_domain_warns() {
    // RFC 9091: psd=y declares a public suffix domain.
    let r = dmarc("v=DMARC1; p=reject; psd=y; adkim=s; aspf=s")
        .run()
        .await;
    assert_eq!(status(&r, "dmarc.subdomain-policy"), Status::Warn);
    assert!(message(&r, "dmarc.subdomain-policy").contains("psd=y"));
}

#[tokio::test]
async fn dmarc_lookup_failure_is_unknown() {
    let r = Case::clean().add(DMARC, "SERVFAIL", "").run().await;
    assert_eq!(status(&r, "dmarc.record"), Status::Unknown);
    assert!(r.find("dmarc.policy").next().is_none());
    assert_eq!(r.exit_code(), 2);
}

// ---- DMARC valid variants ----

#[tokio::test]
async fn dmarc_later_and_unknown_tags_stay_clean() {
    // RFC 7489 §6.3: unknown tags MUST be ignored; np, t, psd are defined by later texts.
    let r = dmarc("v=DMARC1; p=reject; sp=reject; np=reject; t=n; psd=n; adkim=s; aspf=s; foo=bar; rua=mailto:dmarc@ublog.test")
        .run()
        .await;
    assert_clean(&r);
    assert!(message(&r, "dmarc.syntax").contains("foo"));
}

#[tokio::test]
async fn dmarc_blanks_around_equals_and_split_strings_stay_clean() {
    // RFC 7489 §6.4: "v" *WSP "=" *WSP "DMARC1"; RFC 7208-style TXT strings are joined.
    let r = dmarc("\"v = DMARC1; p = reject; \" \"adkim=s; aspf=s\"")
        .run()
        .await;
    assert_clean(&r);
}

#[tokio::test]
async fn dmarc_cname_at_underscore_dmarc_is_followed() {
    let r = Case::clean()
        .remove(DMARC, "TXT")
        .add(DMARC, "CNAME", "ublog-test.dmarc.provider.test")
        .add(
            "ublog-test.dmarc.provider.test",
            "TXT",
            "v=DMARC1; p=reject; adkim=s; aspf=s; rua=MAILTO:dmarc@ublog.test",
        )
        .run()
        .await;
    assert_clean(&r);
}

#[tokio::test]
async fn dmarc_pct_at_100_and_sp_quarantine_stay_clean() {
    let r = dmarc("v=DMARC1; p=reject; sp=quarantine; pct=100; adkim=s; aspf=s;")
        .run()
        .await;
    assert_clean(&r);
}

// ---- DKIM defects ----

#[tokio::test]
async fn dkim_key_limited_to_sha1_fails() {
    // RFC 8301 §3.1: verifiers MUST NOT accept rsa-sha1 signatures.
    let r = dkim(&format!("v=DKIM1; k=rsa; h=sha1; p={}", rsa_key(2048)))
        .run()
        .await;
    assert_eq!(status(&r, "dkim.key"), Status::Fail);
    assert!(hint(&r, "dkim.key").starts_with("set h=sha256"));
}

#[tokio::test]
async fn dkim_key_for_another_service_fails() {
    let r = dkim(&format!("v=DKIM1; s=tlsrpt; k=ed25519; p={ED25519_KEY}"))
        .run()
        .await;
    assert_eq!(status(&r, "dkim.key"), Status::Fail);
}

#[tokio::test]
async fn dkim_testing_flag_warns() {
    let r = dkim(&format!("v=DKIM1; k=ed25519; t=y; p={ED25519_KEY}"))
        .run()
        .await;
    assert_eq!(status(&r, "dkim.testing"), Status::Warn);
}

#[tokio::test]
async fn dkim_rsa_key_under_1024_bits_fails() {
    let r = dkim(&format!("v=DKIM1; k=rsa; p={}", rsa_key(1023)))
        .run()
        .await;
    assert_eq!(status(&r, "dkim.key"), Status::Fail);
    assert!(message(&r, "dkim.key").contains("1023 bits"));
}

#[tokio::test]
async fn dkim_tag_given_twice_invalidates_the_record() {
    // RFC 6376 §3.2: a duplicated tag makes the whole tag-list invalid.
    let r = dkim(&format!(
        "v=DKIM1; k=ed25519; p={ED25519_KEY}; p={ED25519_KEY}"
    ))
    .run()
    .await;
    assert_eq!(status(&r, "dkim.key"), Status::Fail);
}

#[tokio::test]
async fn dkim_lookup_failure_is_unknown() {
    let r = Case::clean()
        .set("ublog.test", "TXT", "v=spf1 -all")
        .add(DKIM, "SERVFAIL", "")
        .run()
        .await;
    assert_eq!(status(&r, "dkim.key"), Status::Unknown);
    assert_eq!(status(&r, "alignment.dkim"), Status::Unknown);
    assert_eq!(status(&r, "alignment.dmarc"), Status::Unknown);
    assert_eq!(r.exit_code(), 2);
}

// ---- DKIM valid variants ----

#[tokio::test]
async fn dkim_rsa_1024_exactly_and_every_tag_stay_clean() {
    // RFC 8301 §3.2: 1024 bits is the minimum; h lists sha256; s includes email.
    let r = dkim(&format!(
        "v=DKIM1; h=sha1:sha256; k=rsa; n=rotated 2026; s=email:*; t=s; x-extra=1; p={}",
        rsa_key(1024)
    ))
    .run()
    .await;
    assert_clean(&r);
}

#[tokio::test]
async fn dkim_2048_key_in_split_strings_stays_clean() {
    let key = rsa_key(2048);
    let (a, b) = key.split_at(200);
    let r = dkim(&format!("\"v=DKIM1; k=rsa; p={a}\" \"{b}\""))
        .run()
        .await;
    assert_clean(&r);
    assert!(message(&r, "dkim.key").contains("2048 bits"));
}

// ---- MTA-STS ----

#[tokio::test]
async fn mta_sts_version_in_lower_case_is_invalid_not_missing() {
    let r = Case::clean()
        .set("_mta-sts.ublog.test", "TXT", "v=stsv1; id=20240101")
        .run()
        .await;
    assert_eq!(status(&r, "mta-sts.record"), Status::Fail);
    assert!(message(&r, "mta-sts.record").contains("discard"));
}

#[tokio::test]
async fn mta_sts_max_age_zero_warns() {
    let r = Case::clean()
        .reply(Reply::policy(
            "version: STSv1\nmode: enforce\nmx: mx.ublog.test\nmax_age: 0\n",
        ))
        .run()
        .await;
    assert_eq!(status(&r, "mta-sts.max-age"), Status::Warn);
}

#[tokio::test]
async fn mta_sts_policy_host_lookup_failure_is_unknown() {
    let r = Case::clean()
        .add("mta-sts.ublog.test", "SERVFAIL", "")
        .run()
        .await;
    assert_eq!(status(&r, "mta-sts.fetch"), Status::Unknown);
    assert_eq!(r.exit_code(), 2);
}

#[tokio::test]
async fn mta_sts_crlf_policy_at_the_limits_stays_clean() {
    // RFC 8461 §3.2: CRLF or LF line ends, max_age up to 31557600, UTF-8 extension values;
    // §3.1: an id of 32 letters and digits.
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: mx.ublog.test\r\nmax_age: 31557600\r\nnote: politique révisée\r\n";
    let r = Case::clean()
        .set(
            "_mta-sts.ublog.test",
            "TXT",
            &format!("v=STSv1; id={}", "a1".repeat(16)),
        )
        .reply(Reply::policy(policy))
        .run()
        .await;
    assert_clean(&r);
}

#[tokio::test]
async fn mta_sts_max_age_of_a_day_stays_clean() {
    let r = Case::clean()
        .reply(Reply::policy(
            "version: STSv1\nmode: enforce\nmx: *.ublog.test\nmax_age: 86400",
        ))
        .run()
        .await;
    assert_clean(&r);
}

// ---- TLS-RPT ----

#[tokio::test]
async fn tls_rpt_version_in_lower_case_is_invalid_and_the_fix_keeps_rua() {
    let r = Case::clean()
        .set(
            "_smtp._tls.ublog.test",
            "TXT",
            "v=tlsrptv1; rua=mailto:tls@ublog.test",
        )
        .run()
        .await;
    assert_eq!(status(&r, "tls-rpt.record"), Status::Fail);
    assert_eq!(
        hint(&r, "tls-rpt.record"),
        "publish \"v=TLSRPTv1; rua=mailto:tls@ublog.test\" at _smtp._tls.ublog.test"
    );
}

#[tokio::test]
async fn tls_rpt_variants_stay_clean() {
    // RFC 8460 §3: no blank needed after ';', several URIs, extension fields; URI schemes
    // are case-insensitive; a CNAME may lead to the record.
    let r = Case::clean()
        .remove("_smtp._tls.ublog.test", "TXT")
        .add("_smtp._tls.ublog.test", "CNAME", "tlsrpt.provider.test")
        .add(
            "tlsrpt.provider.test",
            "TXT",
            "v=TLSRPTv1;rua=MAILTO:tls@ublog.test,https://reports.provider.test/v1;ext-1=x",
        )
        .run()
        .await;
    assert_clean(&r);
}

// ---- MX ----

#[tokio::test]
async fn mx_host_lookup_failure_is_unknown_not_pass() {
    let r = Case::clean()
        .add("mx.ublog.test", "SERVFAIL", "")
        .run()
        .await;
    assert_eq!(status(&r, "mx.address"), Status::Unknown);
    assert_eq!(r.exit_code(), 2);
}
