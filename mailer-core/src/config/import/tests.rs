//! The importer against fixtures written in the styles of Debian's and OpenBSD's defaults and
//! of Debian's Postfix satellite setups: what each line becomes, which lines are named as not
//! translated, and that the output is a configuration mailer accepts.

use std::path::Path;

use super::*;
use crate::address::Address;
use crate::config::{Action, Config, MailFromRewrite, MailboxKind};
use crate::policy::router::{Origin as From, Router};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../../../tests/data/import/", $name))
    };
}

/// The Postfix lookup tables the fixtures name, by path.
fn read(path: &Path) -> Option<String> {
    match path.to_str()? {
        "/etc/postfix/sender_relay" => Some(fixture!("sender_relay").to_string()),
        "/etc/postfix/sender_canonical" => Some(fixture!("sender_canonical").to_string()),
        _ => None,
    }
}

/// The translation, which mailer must accept as it is, and its parsed configuration.
fn translate(text: &str, hostname: Option<&str>) -> (Translation, Config) {
    let options = Options {
        format: None,
        hostname: hostname.map(str::to_string),
        read: &read,
    };
    let t = import(text, &options).expect("a known format");
    assert!(
        t.unsupported.iter().all(|u| u.line != 0),
        "mailer refuses the translation: {:?}\n{}",
        t.unsupported,
        t.toml
    );
    let config = Config::parse(&t.toml, Path::new("out.toml"))
        .unwrap_or_else(|e| panic!("{e:?}\n{}", t.toml));
    (t, config)
}

fn lines(t: &Translation) -> Vec<usize> {
    let mut l: Vec<usize> = t.unsupported.iter().map(|u| u.line).collect();
    l.dedup();
    l
}

fn decide(router: &Router, table: &[(From, &str, &str)]) -> Vec<Option<String>> {
    table
        .iter()
        .map(|(origin, from, to)| {
            let from = (!from.is_empty()).then(|| Address::parse(from).unwrap());
            router
                .action_for(*origin, from.as_ref(), &Address::parse(to).unwrap())
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn the_seed_smtpd_conf_routes_exactly_like_the_shipped_configuration() {
    let (t, imported) = translate(fixture!("seed-smtpd.conf"), Some("ublog.tech"));
    assert!(t.complete(), "{:?}", t.unsupported);
    assert_eq!(t.format, Format::Smtpd);
    let shipped = Config::parse(
        include_str!("../../../../config/mailer.toml"),
        Path::new("config/mailer.toml"),
    )
    .unwrap();
    assert_eq!(imported.local_domains, shipped.local_domains);
    assert_eq!(imported.listen, shipped.listen);
    assert_eq!(imported.tables, shipped.tables);
    assert_eq!(imported.actions, shipped.actions);
    assert_eq!(imported.matches, shipped.matches);

    let lo4 = From::Ip("127.0.0.1".parse().unwrap());
    let lo6 = From::Ip("::1".parse().unwrap());
    let remote = From::Ip("203.0.113.5".parse().unwrap());
    let mut table = Vec::new();
    for origin in [lo4, lo6, remote, From::Socket, From::Internal] {
        for sender in [
            "notifications@ublog.tech",
            "root@localhost",
            "someone@example.org",
            "",
        ] {
            for rcpt in [
                "root@localhost",
                "admin@ublog.tech",
                "ADMIN@UBLOG.TECH",
                "user@example.org",
                "user@sub.ublog.tech",
            ] {
                table.push((origin, sender, rcpt));
            }
        }
    }
    let a = decide(&Router::new(&imported), &table);
    let b = decide(&Router::new(&shipped), &table);
    assert_eq!(a, b);
    // The table is not trivial: every way out is taken, and refusal too.
    for want in [Some("local_mail"), Some("outbound"), None] {
        assert!(a.iter().any(|d| d.as_deref() == want), "{want:?}");
    }
    assert!(t.toml.contains("# smtpd.conf:8: action \"outbound\" relay host \"smtp+tls://papmx@smtp.paphosting.net\" auth <secrets> mail-from \"@ublog.tech\"\n[actions.outbound]\n"), "{}", t.toml);
}

#[test]
fn debian_style_smtpd_conf_names_the_direct_delivery_it_cannot_do() {
    let (t, c) = translate(fixture!("debian-smtpd.conf"), None);
    assert_eq!(lines(&t), [11, 15]);
    assert!(t.unsupported[0].why.contains("smarthost"));
    assert!(t
        .toml
        .contains("# smtpd.conf:11: action \"relay\" relay\n#   why: "));
    let Action::Local(local) = &c.actions["local"] else {
        panic!("local delivers")
    };
    assert_eq!(local.mailbox, MailboxKind::Maildir("~/Maildir/".into()));
    assert_eq!(local.alias.as_deref(), Some("aliases"));
    // `match for local` has smtpd's default `from local`.
    assert_eq!(c.matches.len(), 1);
    assert_eq!(c.matches[0].from, crate::config::FromSpec::Local);
    assert_eq!(c.listen.len(), 2);
}

#[test]
fn openbsd_style_smtpd_conf_keeps_local_mail_and_names_the_rest() {
    let (t, c) = translate(fixture!("openbsd-smtpd.conf"), Some("mail.example.org"));
    assert_eq!(lines(&t), [11, 14]);
    assert!(t.toml.contains(
        "# smtpd.conf:7: listen on socket\n#   mailer always takes sendmail submissions"
    ));
    assert_eq!(c.tables["aliases"], Path::new("/etc/mail/aliases"));
    assert_eq!(c.local_domains, ["localhost", "mail.example.org"]);
    assert_eq!(
        c.listen
            .iter()
            .map(|l| l.address.to_string())
            .collect::<Vec<_>>(),
        ["127.0.0.1:25", "[::1]:25"]
    );
}

#[test]
fn macros_continuations_and_match_conditions_translate() {
    let (t, c) = translate(fixture!("featured-smtpd.conf"), None);
    assert_eq!(lines(&t), [15, 26, 32, 33, 34]);
    assert_eq!(c.hostname, "mx.ublog.tech");
    assert_eq!(c.limits.max_message_size, 20 << 20);
    assert_eq!(c.queue.lifetime.as_secs(), 3 * 86_400);
    assert_eq!(c.queue.warn_after.as_secs(), 2 * 3600);
    assert!(c.listen.iter().all(|l| l.tls.is_some()));
    let Action::Relay(outbound) = &c.actions["outbound"] else {
        panic!("outbound relays")
    };
    // The macro and the continuation line.
    assert_eq!(
        outbound.relays[0].to_string(),
        "smtp+tls://papmx@smtp.paphosting.net"
    );
    assert_eq!(
        outbound.mail_from,
        Some(MailFromRewrite::Domain("ublog.tech".into()))
    );
    let Action::Relay(vip) = &c.actions["vip"] else {
        panic!("vip relays")
    };
    assert_eq!(
        vip.relays[0].to_string(),
        "smtp+tls://vip.relay.example@vip.relay.example"
    );
    let Action::Local(local) = &c.actions["local_mail"] else {
        panic!("local")
    };
    assert_eq!(local.mailbox, MailboxKind::Maildir("/var/mail/%u/".into()));

    let vip_list = crate::tables::addresses::AddressTable {
        patterns: vec![crate::config::AddressPattern::Address(
            "ceo@ublog.tech".into(),
        )],
    };
    let router = Router::new(&c).with_lists(std::collections::HashMap::from([(
        "vip".to_string(),
        std::sync::Arc::new(vip_list),
    )]));
    let lo = From::Ip("127.0.0.1".parse().unwrap());
    let got = decide(
        &router,
        &[
            (
                From::Ip("198.51.100.7".parse().unwrap()),
                "x@y.example",
                "a@lists.ublog.tech",
            ),
            (From::Socket, "b@two.example", "x@gmail.com"),
            (lo, "b@two.example", "x@gmail.com"),
            (lo, "ceo@ublog.tech", "x@gmail.com"),
            (lo, "ceo@ublog.tech", "a@ublog.tech"),
            (
                From::Ip("198.51.100.7".parse().unwrap()),
                "x@y.example",
                "x@gmail.com",
            ),
        ],
    );
    let want = [
        Some("local_mail"),
        Some("two"),
        Some("outbound"),
        Some("vip"),
        Some("local_mail"),
        None,
    ];
    assert_eq!(got, want.map(|w| w.map(String::from)));
}

#[test]
fn debian_satellite_main_cf_becomes_a_smarthost_relay() {
    let (t, c) = translate(fixture!("debian-satellite-main.cf"), None);
    assert_eq!(t.format, Format::Postfix);
    // recipient_delimiter, and the passwords that must move to mailer's secrets file.
    assert_eq!(lines(&t), [30, 35]);
    assert!(t.unsupported[1]
        .todo
        .contains("`relay` for [smtp.paphosting.net]:587"));
    assert_eq!(c.hostname, "web1.ublog.tech");
    assert_eq!(
        c.local_domains,
        ["web1.ublog.tech", "localhost.ublog.tech", "localhost"]
    );
    let Action::Relay(r) = &c.actions["outbound"] else {
        panic!("outbound relays")
    };
    assert_eq!(
        r.relays[0].to_string(),
        "smtp+tls://relay@smtp.paphosting.net:587"
    );
    assert_eq!(r.auth.as_deref(), Some("secrets"));
    // sender_canonical_maps: one regexp rewriting every sender into @ublog.tech.
    assert_eq!(
        r.mail_from,
        Some(MailFromRewrite::Domain("ublog.tech".into()))
    );
    assert_eq!(c.limits.max_message_size, 20_480_000);
    assert_eq!(c.queue.lifetime.as_secs(), 2 * 86_400);
    // Every line of the file is quoted somewhere in the output.
    for (i, line) in fixture!("debian-satellite-main.cf").lines().enumerate() {
        if !line.trim().is_empty() && !line.starts_with('#') && !line.starts_with('\t') {
            assert!(
                t.toml.contains(&format!("# main.cf:{}: ", i + 1)),
                "line {} not accounted for\n{}",
                i + 1,
                t.toml
            );
        }
    }
}

#[test]
fn sender_dependent_relayhost_maps_become_relay_actions_chosen_by_sender() {
    let (t, c) = translate(fixture!("sender-dependent-main.cf"), None);
    assert_eq!(lines(&t), [8]);
    assert!(c.local_domains.is_empty());
    let url = |name: &str| match &c.actions[name] {
        Action::Relay(r) => r.relays[0].to_string(),
        Action::Local(_) => panic!("{name} relays"),
    };
    assert_eq!(
        url("relay_one_example"),
        "smtp+tls://one-example@smtp.one.example:587"
    );
    assert_eq!(
        url("relay_two_example"),
        "smtps://two-example@mail.two.example"
    );
    assert_eq!(url("outbound"), "smtp+tls://relay@smtp.paphosting.net:587");
    assert_eq!(c.queue.lifetime.as_secs(), 7 * 86_400);
    assert!(t
        .toml
        .contains("# main.cf:12: home_mailbox = Maildir/\n#   no local delivery here"));
    let lo = From::Ip("127.0.0.1".parse().unwrap());
    let got = decide(
        &Router::new(&c),
        &[
            (lo, "a@one.example", "x@gmail.com"),
            (lo, "b@two.example", "x@gmail.com"),
            (lo, "c@three.example", "x@gmail.com"),
            (From::Socket, "", "x@gmail.com"),
            (
                From::Ip("192.0.2.1".parse().unwrap()),
                "a@one.example",
                "x@gmail.com",
            ),
        ],
    );
    let want = [
        Some("relay_one_example"),
        Some("relay_two_example"),
        Some("outbound"),
        Some("outbound"),
        None,
    ];
    assert_eq!(got, want.map(|w| w.map(String::from)));
}

#[test]
fn the_format_is_detected_from_the_content() {
    for (text, want) in [
        (fixture!("seed-smtpd.conf"), Format::Smtpd),
        (fixture!("openbsd-smtpd.conf"), Format::Smtpd),
        (fixture!("debian-satellite-main.cf"), Format::Postfix),
        (fixture!("sender-dependent-main.cf"), Format::Postfix),
    ] {
        assert_eq!(detect(text), Some(want));
    }
    let options = Options {
        format: None,
        hostname: None,
        read: &read,
    };
    assert!(import("hello world\n", &options).is_err());
    assert!(import("", &options).is_err());
}

#[test]
fn an_open_relay_rule_is_never_translated() {
    let text = "table s file:/etc/mail/secrets\naction \"out\" relay host \"smtp+tls://l@r.example\" auth <s>\nmatch from any for any action \"out\"\nmatch from src { 10.0.0.0/8 } for any action \"out\"\n";
    let (t, c) = translate(text, None);
    assert_eq!(lines(&t), [3, 4]);
    assert!(c.matches.is_empty());
}

#[test]
fn an_action_option_given_twice_is_named_not_written_twice() {
    let text = "table secrets file:/etc/mail/secrets\n\
                action \"out\" relay host \"smtp+tls://a@relay.example\" auth <secrets> \
                mail-from \"@one.example\" mail-from \"@two.example\"\n\
                match from local for any action \"out\"\n";
    let (t, config) = translate(text, Some("mx.example"));
    assert!(
        t.toml.contains("mail_from = \"@one.example\""),
        "{}",
        t.toml
    );
    assert!(
        !t.toml.contains("mail_from = \"@two.example\""),
        "{}",
        t.toml
    );
    assert_eq!(lines(&t), [2]);
    assert!(
        t.unsupported[0].why.contains("`mail-from` is given twice"),
        "{:?}",
        t.unsupported
    );
    assert!(config.actions.contains_key("out"));
}
