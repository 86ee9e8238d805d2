//! SPF judged as a receiver evaluates it (RFC 7208 §4.6, §5, §6): each defect is a zone a
//! receiver answers differently from what the record's author meant, and the valid variants
//! must stay clean. The pool is 127.0.0.10 and 127.0.0.11 (`relay.ublog.test`).

mod check_case;

use check_case::*;
use mailer_core::check::Status;

const CLEAN_SPF: &str = "v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 -all";

fn spf(record: &str) -> Case {
    Case::clean().set(DOMAIN, "TXT", record)
}

// ---- defects ----

#[tokio::test]
async fn term_after_all_is_dead_and_the_fix_is_to_move_it() {
    // RFC 7208 §4.6.2: evaluation ends at the first match; `all` always matches.
    let r = spf("v=spf1 ip4:127.0.0.10 -all ip4:127.0.0.11").run().await;
    assert_eq!(status(&r, "spf.dead-terms"), Status::Warn);
    assert!(message(&r, "spf.dead-terms").contains("ip4:127.0.0.11 after \"-all\""));
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    let m = message(&r, "spf.pool");
    assert!(
        m.contains("127.0.0.11 (fail): evaluation stops at \"-all\""),
        "{m}"
    );
    assert_eq!(
        hint(&r, "spf.pool"),
        "move ip4:127.0.0.11 before \"-all\" in the SPF record of ublog.test (terms after \"all\" are never evaluated)"
    );
}

#[tokio::test]
async fn lookups_after_all_are_not_counted() {
    // Eleven includes after -all are never evaluated: no lookup limit is reached.
    let mut rec = String::from(CLEAN_SPF);
    for n in 1..=11 {
        rec.push_str(&format!(" include:i{n}.ublog.test"));
    }
    let mut c = spf(&rec);
    for n in 1..=11 {
        c = c.add(&format!("i{n}.ublog.test"), "TXT", "v=spf1 -all");
    }
    let r = c.run().await;
    assert_eq!(
        status(&r, "spf.lookups"),
        Status::Pass,
        "{}",
        r.render_text()
    );
    assert_eq!(message(&r, "spf.lookups"), "0 of 10 DNS-lookup terms");
    assert_eq!(status(&r, "spf.dead-terms"), Status::Warn);
}

#[tokio::test]
async fn include_ending_in_plus_all_authorizes_everyone() {
    // RFC 7208 §5.2: the include matches when its target's result is pass; `+all` there makes
    // every sender pass, whatever the top-level `-all` says.
    let r = spf("v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 include:esp.ublog.test -all")
        .add("esp.ublog.test", "TXT", "v=spf1 ip4:192.0.2.200 +all")
        .run()
        .await;
    assert_eq!(status(&r, "spf.all"), Status::Fail);
    assert!(
        message(&r, "spf.all").contains("esp.ublog.test"),
        "{}",
        r.render_text()
    );
    assert_eq!(
        hint(&r, "spf.all"),
        "remove include:esp.ublog.test from the SPF record of ublog.test: its evaluation ends in \"all\" at esp.ublog.test, which authorizes every sender"
    );
}

#[tokio::test]
async fn include_whose_target_fails_the_address_does_not_authorize_it() {
    // The pool's address sits after the include target's own -all: the include yields fail,
    // so it does not match, and the top-level -all decides.
    let r = spf("v=spf1 include:esp.ublog.test -all")
        .add(
            "esp.ublog.test",
            "TXT",
            "v=spf1 -all ip4:127.0.0.10 ip4:127.0.0.11",
        )
        .run()
        .await;
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    assert_eq!(status(&r, "spf.dead-terms"), Status::Warn);
    assert!(message(&r, "spf.dead-terms").contains("in the record of esp.ublog.test"));
}

#[tokio::test]
async fn include_loop_is_reported_as_a_loop() {
    let r = spf("v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 include:a.ublog.test -all")
        .add("a.ublog.test", "TXT", "v=spf1 include:b.ublog.test -all")
        .add("b.ublog.test", "TXT", "v=spf1 include:a.ublog.test -all")
        .run()
        .await;
    assert_eq!(status(&r, "spf.loop"), Status::Fail);
    assert!(
        message(&r, "spf.loop").contains(
            "ublog.test → include:a.ublog.test → include:b.ublog.test → include:a.ublog.test"
        ),
        "{}",
        r.render_text()
    );
    assert_eq!(
        hint(&r, "spf.loop"),
        "break the loop: remove include:a.ublog.test from the SPF record of b.ublog.test"
    );
    assert_eq!(status(&r, "spf.lookups"), Status::Fail);
}

#[tokio::test]
async fn pool_address_behind_a_loop_gets_the_loop_fix() {
    let r = spf("v=spf1 include:a.ublog.test -all")
        .add(
            "a.ublog.test",
            "TXT",
            "v=spf1 include:a.ublog.test ip4:127.0.0.0/24 -all",
        )
        .run()
        .await;
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    assert!(
        message(&r, "spf.pool").contains("(permerror): include loop"),
        "{}",
        r.render_text()
    );
    assert_eq!(
        hint(&r, "spf.pool"),
        "break the loop: remove include:a.ublog.test from the SPF record of a.ublog.test"
    );
}

#[tokio::test]
async fn redirect_beside_all_is_ignored() {
    // RFC 7208 §6.1: redirect is ignored when the record has `all`.
    let r = spf("v=spf1 redirect=_spf.ublog.test -all")
        .add("_spf.ublog.test", "TXT", CLEAN_SPF)
        .run()
        .await;
    assert_eq!(status(&r, "spf.dead-terms"), Status::Warn);
    assert!(message(&r, "spf.dead-terms").contains("redirect=_spf.ublog.test"));
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    assert_eq!(
        hint(&r, "spf.pool"),
        "remove \"-all\" from the SPF record of ublog.test: redirect=_spf.ublog.test is ignored while the record has \"all\""
    );
}

#[tokio::test]
async fn redirect_target_without_all_leaves_unlisted_senders_neutral() {
    let r = spf("v=spf1 redirect=_spf.ublog.test")
        .add(
            "_spf.ublog.test",
            "TXT",
            "v=spf1 ip4:127.0.0.10 ip4:127.0.0.11",
        )
        .run()
        .await;
    assert_eq!(status(&r, "spf.all"), Status::Warn);
    assert!(message(&r, "spf.all").contains("_spf.ublog.test"));
    assert_eq!(
        hint(&r, "spf.all"),
        "end the SPF record of _spf.ublog.test with -all or ~all"
    );
}

#[tokio::test]
async fn earlier_fail_term_shadows_the_pool_and_the_fix_is_to_move() {
    let r = spf("v=spf1 -ip4:127.0.0.0/24 ip4:127.0.0.10 ip4:127.0.0.11 ~all")
        .run()
        .await;
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    assert!(hint(&r, "spf.pool").starts_with("move ip4:127.0.0.10 before \"-ip4:127.0.0.0/24\""));
}

#[tokio::test]
async fn eleventh_lookup_before_the_pool_term_and_the_fix_is_to_move_it() {
    let mut rec = String::from("v=spf1");
    for n in 1..=11 {
        rec.push_str(&format!(" a:h{n}.ublog.test"));
    }
    rec.push_str(" ip4:127.0.0.10 ip4:127.0.0.11 -all");
    let mut c = spf(&rec);
    for n in 1..=11 {
        c = c.add(&format!("h{n}.ublog.test"), "A", "192.0.2.50");
    }
    let r = c.run().await;
    assert_eq!(status(&r, "spf.lookups"), Status::Fail);
    assert!(message(&r, "spf.lookups").starts_with("11 DNS-lookup terms"));
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    assert!(
        message(&r, "spf.pool")
            .contains("(permerror): the 11th DNS lookup is ublog.test → a:h11.ublog.test"),
        "{}",
        r.render_text()
    );
    assert_eq!(
        hint(&r, "spf.pool"),
        "move ip4:127.0.0.10 before a:h1.ublog.test in the SPF record of ublog.test; move ip4:127.0.0.11 before a:h1.ublog.test in the SPF record of ublog.test"
    );
}

#[tokio::test]
async fn third_void_lookup_before_the_pool_is_permerror() {
    // mail-auth does not count void lookups; receivers that do (RFC 7208 §4.6.4) say permerror.
    let r = spf("v=spf1 a:v1.ublog.test a:v2.ublog.test exists:v3.ublog.test ip4:127.0.0.10 ip4:127.0.0.11 -all")
        .run()
        .await;
    assert_eq!(status(&r, "spf.void-lookups"), Status::Fail);
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    assert!(
        message(&r, "spf.pool").contains("(permerror): a third void lookup"),
        "{}",
        r.render_text()
    );
    assert!(hint(&r, "spf.pool")
        .starts_with("remove the terms naming v1.ublog.test, v2.ublog.test, v3.ublog.test"));
}

#[tokio::test]
async fn mx_term_with_eleven_mx_hosts_is_permerror() {
    let mut c = spf("v=spf1 mx:mail.ublog.test -all");
    for n in 1..=11 {
        c = c
            .add("mail.ublog.test", "MX", &format!("{n} m{n}.ublog.test"))
            .add(&format!("m{n}.ublog.test"), "A", "127.0.0.10")
            .add(&format!("m{n}.ublog.test"), "A", "127.0.0.11");
    }
    let r = c.run().await;
    assert_eq!(status(&r, "spf.mx-limit"), Status::Fail);
    assert!(message(&r, "spf.mx-limit").contains("11 MX hosts"));
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    assert!(hint(&r, "spf.pool").starts_with("replace \"mx:mail.ublog.test\""));
}

#[tokio::test]
async fn include_target_lookup_failure_makes_dependent_checks_unknown() {
    let r = spf("v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 include:esp.ublog.test -all")
        .add("esp.ublog.test", "SERVFAIL", "")
        .run()
        .await;
    assert_eq!(status(&r, "spf.lookups"), Status::Unknown);
    assert_eq!(status(&r, "spf.includes"), Status::Unknown);
    assert_eq!(status(&r, "spf.void-lookups"), Status::Unknown);
    assert_eq!(status(&r, "spf.all"), Status::Unknown);
    assert!(r.find("spf.dns-error").next().is_some());
    assert_eq!(r.exit_code(), 2);
}

#[tokio::test]
async fn relay_name_lookup_failure_makes_pool_and_alignment_unknown() {
    let mut c = Case::clean().add("relay2.ublog.test", "SERVFAIL", "");
    c.relays.push("relay2.ublog.test".into());
    let r = c.run().await;
    assert_eq!(
        status(&r, "spf.pool"),
        Status::Unknown,
        "{}",
        r.render_text()
    );
    assert_eq!(status(&r, "alignment.spf"), Status::Unknown);
    assert_eq!(r.exit_code(), 2);
}

// ---- valid variants: no warning ----

#[tokio::test]
async fn txt_split_into_several_strings_is_one_record() {
    // RFC 7208 §3.3: the strings are concatenated without spaces.
    let r = spf("\"v=spf1 ip4:127.0.0.10 \" \"ip4:127.0.0.11\" \" -all\"")
        .run()
        .await;
    assert_clean(&r);
    assert_eq!(
        message(&r, "spf.record"),
        "\"v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 -all\""
    );
}

#[tokio::test]
async fn cname_at_include_target_is_followed() {
    let r = spf("v=spf1 include:_spf.ublog.test -all")
        .add("_spf.ublog.test", "CNAME", "spf.provider.test")
        .add("spf.provider.test", "TXT", CLEAN_SPF)
        .run()
        .await;
    assert_clean(&r);
    assert_eq!(message(&r, "spf.lookups"), "1 of 10 DNS-lookup terms");
}

#[tokio::test]
async fn macros_are_expanded_per_address() {
    let r = spf("v=spf1 exists:%{i}._spf.%{d} -all")
        .add("127.0.0.10._spf.ublog.test", "A", "127.0.0.2")
        .add("127.0.0.11._spf.ublog.test", "A", "127.0.0.2")
        .run()
        .await;
    assert_clean(&r);
}

#[tokio::test]
async fn reversed_ip_macro_with_include_is_clean() {
    let r = spf("v=spf1 include:%{ir}.%{v}._spf.ublog.test ~all")
        .add("10.0.0.127.in-addr._spf.ublog.test", "TXT", "v=spf1 +all")
        .add("11.0.0.127.in-addr._spf.ublog.test", "TXT", "v=spf1 +all")
        .run()
        .await;
    // Unlisted senders query a name that does not exist: one void lookup and a permerror
    // for them (not for the pool), which a macro-based list accepts.
    assert_eq!(status(&r, "spf.pool"), Status::Pass, "{}", r.render_text());
    assert_eq!(status(&r, "spf.all"), Status::Pass, "{}", r.render_text());
}

#[tokio::test]
async fn softfail_all_is_clean() {
    assert_clean(&spf("v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 ~all").run().await);
}

#[tokio::test]
async fn exactly_ten_lookups_and_two_void_lookups_are_clean() {
    // RFC 7208 §4.6.4: the limits are "more than 10" and "more than two".
    let mut rec =
        String::from("v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 a:v1.ublog.test a:v2.ublog.test");
    for n in 1..=8 {
        rec.push_str(&format!(" a:h{n}.ublog.test"));
    }
    rec.push_str(" -all");
    let mut c = spf(&rec);
    for n in 1..=8 {
        c = c.add(&format!("h{n}.ublog.test"), "A", "192.0.2.50");
    }
    let r = c.run().await;
    assert_clean(&r);
    assert_eq!(message(&r, "spf.lookups"), "10 of 10 DNS-lookup terms");
    assert_eq!(message(&r, "spf.void-lookups"), "2 void lookups");
}

#[tokio::test]
async fn mx_term_with_exactly_ten_hosts_is_clean() {
    let mut c = spf("v=spf1 mx:mail.ublog.test -all");
    for n in 1..=10 {
        c = c.add("mail.ublog.test", "MX", &format!("{n} m{n}.ublog.test"));
        c = c.add(
            &format!("m{n}.ublog.test"),
            "A",
            if n == 10 { "127.0.0.11" } else { "127.0.0.10" },
        );
    }
    assert_clean(&c.run().await);
}

#[tokio::test]
async fn redirect_without_all_and_exp_are_clean() {
    let r = spf("v=spf1 redirect=_spf.ublog.test exp=explain.ublog.test")
        .add("_spf.ublog.test", "TXT", CLEAN_SPF)
        .add("explain.ublog.test", "TXT", "%{i} is not one of our relays")
        .run()
        .await;
    assert_clean(&r);
    assert!(message(&r, "spf.all").contains("_spf.ublog.test"));
}

#[tokio::test]
async fn ptr_names_beyond_the_tenth_are_ignored() {
    // RFC 7208 §4.6.4: at most 10 PTR names are validated; the 11th would have matched.
    let mut c = spf("v=spf1 ptr:relays.ublog.test -all").remove("relay.ublog.test", "A");
    c.relays = vec!["127.0.0.10".into()];
    for n in 1..=10 {
        c = c.add(
            "10.0.0.127.in-addr.arpa",
            "PTR",
            &format!("other{n}.example.test"),
        );
    }
    c = c
        .add("10.0.0.127.in-addr.arpa", "PTR", "r.relays.ublog.test")
        .add("r.relays.ublog.test", "A", "127.0.0.10");
    let r = c.run().await;
    assert_eq!(status(&r, "spf.pool"), Status::Fail, "{}", r.render_text());
}

#[tokio::test]
async fn range_covering_every_address_lets_anyone_pass() {
    let r = spf("v=spf1 ip4:0.0.0.0/0 -all").run().await;
    assert_eq!(status(&r, "spf.all"), Status::Fail);
    assert_eq!(
        hint(&r, "spf.all"),
        "narrow \"ip4:0.0.0.0/0\" in the SPF record of ublog.test to the addresses that send"
    );
}

#[tokio::test]
async fn documentation_ranges_listed_as_senders_stay_clean() {
    // Zones use RFC 5737 ranges for real senders; listing one is not "anyone passes".
    let r = spf("v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 ip4:203.0.113.0/24 ip4:127.0.0.10 ip4:127.0.0.11 -all")
        .run()
        .await;
    assert_clean(&r);
}

#[tokio::test]
async fn syntax_error_is_the_fix_for_the_pool_not_an_added_term() {
    let r = spf("v=spf1 ip4:127.0.0.10 ip4:127.0.0.11 ip4:127.0.0.300 -all")
        .run()
        .await;
    assert_eq!(status(&r, "spf.pool"), Status::Fail);
    assert!(
        hint(&r, "spf.pool").starts_with("fix the syntax error of the SPF record of ublog.test")
    );
}

#[tokio::test]
async fn each_passing_address_names_the_term_that_authorizes_it() {
    let r = spf("v=spf1 include:_spf.ublog.test ip4:127.0.0.11 -all")
        .add("_spf.ublog.test", "TXT", "v=spf1 ip4:127.0.0.10 -all")
        .run()
        .await;
    assert_eq!(
        message(&r, "spf.pool"),
        "every pool address passes SPF for postmaster@ublog.test: 127.0.0.10 (\"ip4:127.0.0.10\" of _spf.ublog.test), 127.0.0.11 (\"ip4:127.0.0.11\" of ublog.test)"
    );
}
