//! Parsing tests: the shipped files, every contract example, and the exact diagnostics.

use super::*;

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("t.toml")).unwrap_or_else(|es| {
        panic!(
            "unexpected errors:\n{}",
            es.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn errors(text: &str) -> Vec<String> {
    match Config::parse(text, Path::new("t.toml")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(es) => es.iter().map(ToString::to_string).collect(),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn url(s: &str) -> RelayUrl {
    s.parse().expect("test URL is valid")
}

/// The system host name as the kernel reports it, read independently of gethostname.
fn kernel_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("Linux exposes the host name")
        .trim()
        .to_string()
}

const SHIPPED: &str = include_str!("../../../config/mailer.toml");

#[test]
fn shipped_ublog_config_translates_smtpd_conf() {
    let c = Config::parse(SHIPPED, Path::new("config/mailer.toml")).expect("mailer.toml parses");
    assert_eq!(c.user.as_deref(), Some("mailer"));
    assert_eq!(c.hostname, "ublog.tech");
    assert_eq!(c.local_domains, ["localhost", "ublog.tech"]);
    assert_eq!(c.queue_dir, Path::new("/var/spool/mailer"));
    assert_eq!(c.control_socket, Path::new("/run/mailer/control.sock"));
    assert_eq!(c.limits, Limits::default());
    assert_eq!(
        c.listen,
        [
            Listen {
                address: "127.0.0.1:25".parse().unwrap(),
                tls: None
            },
            Listen {
                address: "[::1]:25".parse().unwrap(),
                tls: None
            },
        ]
    );
    assert_eq!(
        c.tables,
        BTreeMap::from([
            ("aliases".to_string(), PathBuf::from("/etc/aliases")),
            ("secrets".to_string(), PathBuf::from("/etc/mail/secrets")),
        ])
    );
    assert_eq!(
        c.actions["local_mail"],
        Action::Local(LocalAction {
            mailbox: MailboxKind::Mbox("/var/mail/%u".into()),
            alias: Some("aliases".into()),
            allow_commands: false,
            allow_files: false,
        })
    );
    assert_eq!(
        c.actions["outbound"],
        Action::Relay(RelayAction {
            relays: vec![url("smtp+tls://papmx@smtp.paphosting.net")],
            auth: Some("secrets".into()),
            mail_from: Some(MailFromRewrite::Domain("ublog.tech".into())),
            ca_file: None,
            insecure: false,
            alignment: AlignmentMode::Relaxed,
            on_misalignment: OnMisalignment::Warn,
            connect_timeout: secs(30),
            command_timeout: secs(300),
            data_timeout: secs(600),
            max_connections: 10,
            max_connections_total: 20,
            dkim: vec![],
            sign_unaligned: false,
        })
    );
    assert_eq!(
        c.matches,
        [
            MatchRule {
                from: FromSpec::Local,
                recipients: ForSpec::Local,
                mail_from: None,
                rcpt_to: None,
                action: "local_mail".into()
            },
            MatchRule {
                from: FromSpec::Local,
                recipients: ForSpec::Any,
                mail_from: None,
                rcpt_to: None,
                action: "outbound".into()
            },
        ]
    );
    assert_eq!(
        c.metrics,
        Some(MetricsSettings {
            address: "127.0.0.1:9925".parse().unwrap()
        })
    );
    assert_eq!(c.queue, QueueSettings::default());
    assert_eq!(
        c.check,
        CheckSettings {
            interval: Some(secs(6 * 3600)),
            nameservers: vec![],
        }
    );
    assert_eq!(c.log.level, "info");
    assert_eq!(c.source, Path::new("config/mailer.toml"));
    assert_eq!(c.warnings, []);
}

#[test]
fn embedded_default_is_a_rootless_local_only_setup() {
    let c = Config::embedded_default();
    let host = kernel_hostname();
    assert_eq!(c.hostname, host);
    let mut domains = vec!["localhost".to_string()];
    if !host.eq_ignore_ascii_case("localhost") {
        domains.push(host.to_ascii_lowercase());
    }
    assert_eq!(c.local_domains, domains);
    assert_eq!(c.queue_dir, Path::new("mailer-state/queue"));
    assert_eq!(c.control_socket, Path::new("mailer-state/control.sock"));
    assert_eq!(
        c.listen,
        [Listen {
            address: "127.0.0.1:2525".parse().unwrap(),
            tls: None
        }]
    );
    assert_eq!(c.tables, BTreeMap::new());
    assert_eq!(
        c.actions,
        BTreeMap::from([(
            "local_mail".to_string(),
            Action::Local(LocalAction {
                mailbox: MailboxKind::Mbox("mailer-state/mail/%u".into()),
                alias: None,
                allow_commands: false,
                allow_files: false,
            })
        )])
    );
    assert_eq!(
        c.matches,
        [MatchRule {
            from: FromSpec::Local,
            recipients: ForSpec::Local,
            mail_from: None,
            rcpt_to: None,
            action: "local_mail".into()
        }]
    );
    assert_eq!(c.metrics, None);
    assert_eq!(c.user, None, "runs as whoever starts it, root or not");
    assert_eq!(c.source, Path::new("<embedded>"));
    assert_eq!(c.warnings, []);
    assert!(Config::embedded_default_text().contains("mailer-state/queue"));
}

#[test]
fn shipped_examples_parse() {
    let pool = Config::parse(
        include_str!("../../../config/examples/relay-pool.toml"),
        Path::new("relay-pool.toml"),
    )
    .expect("relay-pool.toml parses");
    let Action::Relay(r) = &pool.actions["outbound"] else {
        panic!("outbound relays")
    };
    assert_eq!(
        r.relays,
        [
            url("smtp+tls://primary@smtp1.provider.example"),
            url("smtps://backup@smtp2.provider.example")
        ]
    );
    assert_eq!(
        (r.alignment, r.on_misalignment),
        (AlignmentMode::Strict, OnMisalignment::Reject)
    );
    assert_eq!((r.max_connections, r.max_connections_total), (4, 6));
    assert_eq!(r.dkim.len(), 1);
    assert_eq!(pool.warnings, []);

    let maildir = Config::parse(
        include_str!("../../../config/examples/maildir.toml"),
        Path::new("maildir.toml"),
    )
    .expect("maildir.toml parses");
    let Action::Local(l) = &maildir.actions["deliver"] else {
        panic!("deliver is local")
    };
    assert_eq!(l.mailbox, MailboxKind::Maildir("~/Maildir".into()));
    assert_eq!(
        maildir.user, None,
        "home directories need the daemon to stay root"
    );
    assert_eq!(maildir.limits.bare_newlines, BareNewlines::Normalize);
    assert_eq!(maildir.limits.max_message_size, 50 << 20);
    assert_eq!(
        maildir.listen[1].tls,
        Some(ListenTls {
            cert: "/etc/mailer/tls/box.example.net.crt".into(),
            key: "/etc/mailer/tls/box.example.net.key".into(),
        })
    );
    assert_eq!(maildir.check.interval, None);
    assert_eq!(maildir.local_domains, ["localhost", "box.example.net"]);
    assert_eq!(maildir.warnings, []);
}

/// Every key of the contract, with non-default values.
const FULL: &str = r#"
hostname = "Mail.Ublog.Tech"
local_domains = ["localhost", "UBLOG.tech", "ublog.tech"]
queue_dir = "/srv/queue"
control_socket = "/srv/control.sock"

[limits]
max_message_size = "512K"
max_recipients = 7
max_connections = 3
max_line_length = 2000
idle_timeout = "30s"
data_timeout = "1h"
bare_newlines = "normalize"
shutdown_grace = "0"
max_hops = 30
max_errors = 10

[[listen]]
address = "127.0.0.1:25"

[[listen]]
address = "[::1]:587"
tls_cert = "/etc/tls/cert.pem"
tls_key = "/etc/tls/key.pem"

[tables]
aliases = "/etc/aliases"
secrets = "/etc/mail/secrets"

[actions.local_mail]
maildir = "~/Maildir"
alias = "aliases"
allow_commands = false
allow_files = false

[actions.outbound]
relay = ["smtp+tls://a@r1.example:587", "smtps://b@[2001:db8::25]"]
auth = "secrets"
mail_from = "bounces@ublog.tech"
ca_file = "/etc/mailer/ca.pem"
alignment = "strict"
on_misalignment = "reject"
connect_timeout = "10s"
command_timeout = "2m"
data_timeout = "15m"
max_connections = 2
max_connections_total = 3
dkim = { domain = "Ublog.Tech", selector = "mailer2026", key = "/etc/mailer/dkim/k.key" }
sign_unaligned = true

[actions.lan]
relay = "smtp://10.1.2.3"
insecure = true
dkim = [
  { domain = "a.example", selector = "s1", key = "/k1" },
  { domain = "a.example", selector = "s2", key = "/k2", sign_headers = ["From", "Subject", "X-Campaign"], oversign_headers = [] },
]

[queue]
retry_min = "1m"
retry_max = "2h"
lifetime = "5d"
warn_after = "0"

[metrics]
address = "0.0.0.0:9925"
allow_non_loopback = true

[check]
interval = "0"

[log]
level = "debug"

[[match]]
from = "any"
for = "local"
action = "local_mail"

[[match]]
from = "local"
for = ["lan.example", "LAN2.example"]
action = "lan"

[[match]]
from = "local"
for = "any"
action = "outbound"
"#;

#[test]
fn every_contract_key_parses_to_its_value() {
    let c = parse(FULL);
    assert_eq!(c.hostname, "Mail.Ublog.Tech");
    assert_eq!(c.local_domains, ["localhost", "ublog.tech"]);
    assert_eq!(
        (c.queue_dir.as_path(), c.control_socket.as_path()),
        (Path::new("/srv/queue"), Path::new("/srv/control.sock"))
    );
    assert_eq!(
        c.limits,
        Limits {
            max_message_size: 512 * 1024,
            max_recipients: 7,
            max_connections: 3,
            max_line_length: 2000,
            idle_timeout: secs(30),
            data_timeout: secs(3600),
            bare_newlines: BareNewlines::Normalize,
            shutdown_grace: Duration::ZERO,
            max_hops: 30,
            max_errors: 10,
        }
    );
    assert_eq!(
        c.listen[1],
        Listen {
            address: "[::1]:587".parse().unwrap(),
            tls: Some(ListenTls {
                cert: "/etc/tls/cert.pem".into(),
                key: "/etc/tls/key.pem".into()
            }),
        }
    );
    assert_eq!(
        c.actions["local_mail"],
        Action::Local(LocalAction {
            mailbox: MailboxKind::Maildir("~/Maildir".into()),
            alias: Some("aliases".into()),
            allow_commands: false,
            allow_files: false,
        })
    );
    assert_eq!(
        c.actions["outbound"],
        Action::Relay(RelayAction {
            relays: vec![
                url("smtp+tls://a@r1.example:587"),
                url("smtps://b@[2001:db8::25]")
            ],
            auth: Some("secrets".into()),
            mail_from: Some(MailFromRewrite::Address(
                Address::parse("bounces@ublog.tech").unwrap()
            )),
            ca_file: Some("/etc/mailer/ca.pem".into()),
            insecure: false,
            alignment: AlignmentMode::Strict,
            on_misalignment: OnMisalignment::Reject,
            connect_timeout: secs(10),
            command_timeout: secs(120),
            data_timeout: secs(900),
            max_connections: 2,
            max_connections_total: 3,
            dkim: vec![DkimKey {
                domain: "ublog.tech".into(),
                selector: "mailer2026".into(),
                key: "/etc/mailer/dkim/k.key".into(),
                headers: DkimHeaders::default(),
            }],
            sign_unaligned: true,
        })
    );
    let Action::Relay(lan) = &c.actions["lan"] else {
        panic!("lan relays")
    };
    assert_eq!(
        lan.relays,
        [RelayUrl {
            security: RelaySecurity::Plain,
            label: None,
            host: "10.1.2.3".into(),
            port: 25
        }]
    );
    assert!(lan.insecure);
    assert_eq!(
        lan.dkim
            .iter()
            .map(|k| k.selector.as_str())
            .collect::<Vec<_>>(),
        ["s1", "s2"]
    );
    assert_eq!(lan.dkim[0].headers, DkimHeaders::default());
    assert_eq!(
        lan.dkim[1].headers,
        DkimHeaders {
            sign: vec!["From".into(), "Subject".into(), "X-Campaign".into()],
            oversign: vec![],
        }
    );
    assert_eq!(
        c.queue,
        QueueSettings {
            retry_min: secs(60),
            retry_max: secs(7200),
            lifetime: secs(5 * 86_400),
            warn_after: Duration::ZERO
        }
    );
    assert_eq!(
        c.metrics,
        Some(MetricsSettings {
            address: "0.0.0.0:9925".parse().unwrap()
        })
    );
    assert_eq!(c.check.interval, None);
    assert_eq!(c.log.level, "debug");
    assert_eq!(
        c.matches,
        [
            MatchRule {
                from: FromSpec::Any,
                recipients: ForSpec::Local,
                mail_from: None,
                rcpt_to: None,
                action: "local_mail".into()
            },
            MatchRule {
                from: FromSpec::Local,
                recipients: ForSpec::Domains(vec!["lan.example".into(), "lan2.example".into()]),
                mail_from: None,
                rcpt_to: None,
                action: "lan".into(),
            },
            MatchRule {
                from: FromSpec::Local,
                recipients: ForSpec::Any,
                mail_from: None,
                rcpt_to: None,
                action: "outbound".into()
            },
        ]
    );
    assert_eq!(c.warnings, []);
    // Positions of file-naming values, for check_files.
    assert_eq!(c.positions.get("tables.secrets"), (29, 11));
    assert_eq!(c.positions.get("listen[1].tls_key"), (25, 11));
    assert_eq!(c.positions.get("actions.outbound.relay[1]"), (38, 41));
    assert_eq!(c.positions.get("actions.lan.dkim[1].key"), (57, 50));
    assert_eq!(c.positions.get("nothing.here"), (0, 0));
}

#[test]
fn an_empty_file_takes_every_default() {
    let c = parse("");
    assert_eq!(c.hostname, kernel_hostname());
    assert_eq!(c.queue_dir, Path::new("/var/spool/mailer"));
    assert_eq!(c.control_socket, Path::new("/run/mailer/control.sock"));
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.max_message_size, 35 * 1024 * 1024);
    assert_eq!(c.limits.max_line_length, 64 * 1024);
    assert_eq!(c.limits.idle_timeout, secs(300));
    assert_eq!(
        c.listen
            .iter()
            .map(|l| l.address.to_string())
            .collect::<Vec<_>>(),
        ["127.0.0.1:25", "[::1]:25"]
    );
    assert_eq!(
        c.queue,
        QueueSettings {
            retry_min: secs(300),
            retry_max: secs(3600),
            lifetime: secs(4 * 86_400),
            warn_after: secs(4 * 3600)
        }
    );
    assert_eq!(c.check.interval, Some(secs(6 * 3600)));
    assert_eq!(c.log.level, "info");
    assert_eq!((c.metrics, c.matches.len(), c.actions.len()), (None, 0, 0));
}

#[test]
fn contract_size_and_duration_forms() {
    let c = parse("[limits]\nmax_message_size = 1048576\nmax_line_length = \"1000\"\nshutdown_grace = 0\ndata_timeout = \"4d\"\n");
    assert_eq!(c.limits.max_message_size, 1 << 20);
    assert_eq!(c.limits.max_line_length, 1000);
    assert_eq!(c.limits.data_timeout, secs(4 * 86_400));
    assert_eq!(c.limits.shutdown_grace, Duration::ZERO);
    let c = parse("[check]\ninterval = \"6h\"\n[actions.o]\nrelay = \"smtps://x.example\"\nmail_from = \"@Example.ORG\"\n[[match]]\nfrom = \"local\"\nfor = \"any\"\naction = \"o\"\n");
    assert_eq!(c.check.interval, Some(secs(6 * 3600)));
    let Action::Relay(r) = &c.actions["o"] else {
        panic!("o relays")
    };
    assert_eq!(
        r.mail_from,
        Some(MailFromRewrite::Domain("example.org".into()))
    );
}

// ---- diagnostics: the whole `FILE:LINE:COL: message` -------------------------------------

#[test]
fn unknown_keys_are_errors_everywhere() {
    assert_eq!(
        errors("hostname = \"a.example\"\nhost_name = \"b\"\n"),
        ["t.toml:2:1: unknown field `host_name`, expected one of `user`, `hostname`, `local_domains`, `queue_dir`, `control_socket`, `limits`, `listen`, `tables`, `actions`, `queue`, `metrics`, `check`, `log`, `match`"]
    );
    assert_eq!(
        errors("[queue]\nretry = \"5m\"\n"),
        ["t.toml:2:1: unknown field `retry`, expected one of `retry_min`, `retry_max`, `lifetime`, `warn_after`"]
    );
    assert_eq!(
        errors("[[listen]]\naddress = \"127.0.0.1:25\"\nstarttls = true\n"),
        ["t.toml:3:1: unknown field `starttls`, expected one of `address`, `tls_cert`, `tls_key`"]
    );
    assert_eq!(
        errors("[actions.o]\nrelay = \"smtps://x.example\"\ndkim = { domain = \"a.example\", selector = \"s\", key = \"/k\", algo = \"rsa\" }\n"),
        ["t.toml:3:60: unknown field `algo`, expected one of `domain`, `selector`, `key`, `sign_headers`, `oversign_headers`"]
    );
}

#[test]
fn syntax_errors_are_all_reported() {
    assert_eq!(
        errors("a = \nb = [\n"),
        [
            "t.toml:1:5: string values must be quoted, expected literal string",
            "t.toml:2:6: unclosed array, expected `]`",
        ]
    );
}

#[test]
fn bad_durations_and_sizes_point_at_the_value() {
    assert_eq!(
        errors("[limits]\nidle_timeout = \"5 min\"\nmax_message_size = \"35MB\"\ndata_timeout = 600\nshutdown_grace = \"-1s\"\n"),
        [
            "t.toml:2:16: idle_timeout: invalid duration unit in `5 min`: expected a duration such as \"30s\", \"5m\", \"4h\", \"4d\" or \"0\"",
            "t.toml:3:20: max_message_size: invalid size suffix in `35MB`: expected a size such as \"512K\", \"35M\", \"1G\" or a number of bytes",
            "t.toml:4:16: data_timeout: `600` has no unit: write a string such as \"600s\" or \"600m\"",
            "t.toml:5:18: shutdown_grace: invalid duration `-1s`: expected a duration such as \"30s\", \"5m\", \"4h\", \"4d\" or \"0\"",
        ]
    );
    assert_eq!(
        errors("[limits]\nidle_timeout = \"0\"\nmax_line_length = \"512\"\nmax_recipients = 0\n"),
        [
            "t.toml:2:16: idle_timeout must not be zero",
            "t.toml:3:19: max_line_length must be at least 1000 bytes (RFC 5321 §4.5.3.1.6)",
            "t.toml:4:18: max_recipients must be at least 1 (got 0)",
        ]
    );
    assert_eq!(
        errors("[queue]\nretry_min = \"2h\"\nretry_max = \"1h\"\nlifetime = \"1d\"\nwarn_after = \"2d\"\n"),
        [
            "t.toml:3:13: retry_max (1h) is shorter than retry_min (2h)",
            "t.toml:5:14: warn_after (2d) must be shorter than lifetime (1d); \"0\" disables delay notices",
        ]
    );
    assert_eq!(
        errors("[limits]\nbare_newlines = \"strip\"\n"),
        ["t.toml:2:17: bare_newlines: unknown value \"strip\", expected \"reject\" or \"normalize\""]
    );
}

const RELAY_HEAD: &str = "[tables]\nsecrets = \"/etc/mail/secrets\"\n";

#[test]
fn bad_relay_url_points_at_the_url_in_a_list() {
    assert_eq!(
        errors(&format!("{RELAY_HEAD}[actions.o]\nrelay = [\"smtps://ok.example\", \"smtp+ssl://x.example\"]\n")),
        ["t.toml:4:32: invalid relay URL `smtp+ssl://x.example`: unknown scheme `smtp+ssl` (use smtp+tls, smtps or smtp)"]
    );
}

#[test]
fn plaintext_relay_needs_insecure() {
    assert_eq!(
        errors("[actions.o]\nrelay = \"smtp://10.0.0.1\"\n"),
        ["t.toml:2:9: plaintext relay smtp://10.0.0.1 needs `insecure = true` in action `o` (prefer smtp+tls:// or smtps://)"]
    );
}

#[test]
fn auth_over_plaintext_is_refused_even_when_insecure() {
    assert_eq!(
        errors(&format!("{RELAY_HEAD}[actions.o]\nrelay = \"smtp://k@10.0.0.1\"\nauth = \"secrets\"\ninsecure = true\n")),
        ["t.toml:4:9: `auth` over plaintext smtp://k@10.0.0.1 would send the password in clear: use smtp+tls:// or smtps://"]
    );
}

#[test]
fn labels_and_auth_go_together() {
    assert_eq!(
        errors("[actions.o]\nrelay = \"smtp+tls://papmx@smtp.example\"\n"),
        ["t.toml:2:9: relay URL names label `papmx` but action `o` has no `auth` table"]
    );
    assert_eq!(
        errors(&format!("{RELAY_HEAD}[actions.o]\nrelay = [\"smtps://a@r1.example\", \"smtps://r2.example\"]\nauth = \"secrets\"\n")),
        ["t.toml:4:34: action `o` authenticates with table `secrets`: the URL needs a label (smtp+tls://LABEL@host)"]
    );
}

#[test]
fn undefined_tables_are_errors_at_the_reference() {
    assert_eq!(
        errors("[actions.o]\nrelay = \"smtps://k@x.example\"\nauth = \"secret\"\n[actions.l]\nmbox = \"/var/mail/%u\"\nalias = \"aliases\"\n"),
        [
            "t.toml:3:8: table `secret` is not defined in [tables] (none is defined)",
            "t.toml:6:9: table `aliases` is not defined in [tables] (none is defined)",
        ]
    );
    assert_eq!(
        errors(&format!(
            "{RELAY_HEAD}[actions.l]\nmbox = \"/var/mail/%u\"\nalias = \"aliases\"\n"
        )),
        ["t.toml:5:9: table `aliases` is not defined in [tables] (defined: secrets)"]
    );
}

#[test]
fn unknown_action_in_a_match_is_an_error() {
    assert_eq!(
        errors("[actions.local_mail]\nmbox = \"/var/mail/%u\"\n[[match]]\nfrom = \"local\"\nfor = \"local\"\naction = \"local-mail\"\n"),
        ["t.toml:6:10: no action named `local-mail` (defined: local_mail)"]
    );
}

#[test]
fn a_rule_shadowed_by_an_earlier_one_is_an_error() {
    let text = "local_domains = [\"localhost\", \"ublog.tech\"]\n\
                [actions.a]\nmbox = \"/m/%u\"\n\
                [[match]]\nfrom = \"any\"\nfor = \"local\"\naction = \"a\"\n\
                [[match]]\nfrom = \"local\"\nfor = [\"ublog.tech\"]\naction = \"a\"\n\
                [[match]]\nfrom = \"local\"\nfor = \"any\"\naction = \"a\"\n\
                [[match]]\nfrom = \"any\"\nfor = [\"other.example\"]\naction = \"a\"\n\
                [[match]]\nfrom = \"local\"\nfor = [\"other.example\"]\naction = \"a\"\n";
    assert_eq!(
        errors(text),
        [
            "t.toml:9:8: this rule is never reached: the rule on line 4 matches all its recipients first",
            "t.toml:21:8: this rule is never reached: the rule on line 12 matches all its recipients first",
        ]
    );
}

#[test]
fn listen_errors() {
    assert_eq!(
        errors("[[listen]]\naddress = \"127.0.0.1:25\"\n[[listen]]\naddress = \"127.0.0.1:25\"\n"),
        ["t.toml:4:11: duplicate listen address 127.0.0.1:25 (first on line 2)"]
    );
    assert_eq!(
        errors("[[listen]]\naddress = \"127.0.0.1:25\"\ntls_cert = \"/c.pem\"\n[[listen]]\naddress = \"[::1]:25\"\ntls_key = \"/k.pem\"\n"),
        [
            "t.toml:3:12: tls_cert needs tls_key (give both or neither)",
            "t.toml:6:11: tls_key needs tls_cert (give both or neither)",
        ]
    );
    assert_eq!(
        errors("[[listen]]\naddress = \"localhost:25\"\n"),
        ["t.toml:2:11: listen address: invalid address `localhost:25`: expected IP:port such as \"127.0.0.1:25\" or \"[::1]:25\""]
    );
    assert_eq!(
        errors("[[listen]]\n"),
        ["t.toml:1:1: missing field `address`"]
    );
    assert_eq!(
        errors("listen = []\n"),
        ["t.toml:1:10: `listen = []` would accept no connection: remove it for the default or add [[listen]] tables"]
    );
    assert_eq!(
        errors("[listen]\naddress = \"127.0.0.1:25\"\n"),
        ["t.toml:1:1: `listen` must be an array of tables: write [[listen]]"]
    );
}

#[test]
fn action_shape_errors() {
    assert_eq!(
        errors("[actions.x]\nmbox = \"/m\"\nmaildir = \"~/M\"\n"),
        ["t.toml:3:11: action `x` gives both mbox and maildir: keep one"]
    );
    assert_eq!(
        errors("[actions.x]\nalias = \"a\"\n"),
        ["t.toml:1:10: action `x` delivers nowhere: give mbox, maildir or relay"]
    );
    assert_eq!(
        errors("[actions.x]\nmbox = \"/m\"\ninsecure = true\n[actions.y]\nrelay = \"smtps://r.example\"\nallow_files = true\n"),
        [
            "t.toml:3:12: `insecure` applies to relay actions; `x` delivers locally",
            "t.toml:6:15: `allow_files` applies to local actions; `y` relays",
        ]
    );
    assert_eq!(
        errors("[actions.y]\nrelay = \"smtps://r.example\"\nmail_from = \"ublog.tech\"\nalignment = \"loose\"\n"),
        [
            "t.toml:3:13: invalid mail_from `ublog.tech` (address has no @domain): expected \"@domain\" or \"user@domain\"",
            "t.toml:4:13: alignment: unknown value \"loose\", expected \"strict\" or \"relaxed\"",
        ]
    );
    assert_eq!(
        errors("[actions.y]\nrelay = \"smtps://r.example\"\ndkim = [{ domain = \"a.example\", selector = \"s\", key = \"/k\" }, { domain = \"A.example\", selector = \"s\", key = \"/k2\" }, { domain = \"a_b\", selector = \"x y\", key = \"/k3\" }]\n"),
        [
            "t.toml:3:63: duplicate DKIM key s._domainkey.a.example",
            "t.toml:3:129: dkim domain: invalid domain `a_b`",
            "t.toml:3:147: dkim selector: invalid selector `x y`",
        ]
    );
}

#[test]
fn dkim_header_lists_must_name_valid_fields_once_and_sign_from() {
    let head = "[actions.y]\nrelay = \"smtps://r.example\"\n";
    assert_eq!(
        errors(&format!("{head}dkim = {{ domain = \"a.example\", selector = \"s\", key = \"/k\", sign_headers = [\"To\", \"List Id\", \"to\", \"\"], oversign_headers = [\"Reply-To:\"] }}\n")),
        [
            "t.toml:3:75: dkim sign_headers: From must be signed (RFC 6376 §5.4)",
            "t.toml:3:82: dkim sign_headers: invalid header field name `List Id`",
            "t.toml:3:93: dkim sign_headers: `to` is listed twice",
            "t.toml:3:99: dkim sign_headers: invalid header field name ``",
            "t.toml:3:124: dkim oversign_headers: invalid header field name `Reply-To:`",
        ]
    );
    // From oversigned is From signed; oversign_headers alone keeps the default signed set.
    let c = parse(&format!("{head}dkim = [{{ domain = \"a.example\", selector = \"s\", key = \"/k\", sign_headers = [\"Subject\"], oversign_headers = [\"FROM\"] }}, {{ domain = \"a.example\", selector = \"t\", key = \"/k\", oversign_headers = [\"From\"] }}]\n"));
    let Action::Relay(y) = &c.actions["y"] else {
        panic!("y relays")
    };
    assert_eq!(y.dkim[0].headers.sign, ["Subject"]);
    assert_eq!(y.dkim[0].headers.oversign, ["FROM"]);
    assert_eq!(y.dkim[1].headers.sign, DkimHeaders::default().sign);
    assert_eq!(y.dkim[1].headers.oversign, ["From"]);
    // README's form: an array of tables.
    let c = parse("[actions.outbound]\nrelay = \"smtps://r.example\"\n\n[[actions.outbound.dkim]]\ndomain = \"ublog.tech\"\nselector = \"mailer2026\"\nkey = \"/etc/mailer/dkim/mailer2026.key\"\nsign_headers = [\"From\", \"To\", \"Subject\", \"Date\", \"Message-ID\", \"List-Unsubscribe\", \"List-Unsubscribe-Post\"]\noversign_headers = [\"From\", \"List-Unsubscribe\", \"List-Unsubscribe-Post\"]\n");
    let Action::Relay(o) = &c.actions["outbound"] else {
        panic!("outbound relays")
    };
    assert_eq!(o.dkim.len(), 1);
    assert_eq!(o.dkim[0].headers.sign.len(), 7);
    assert_eq!(
        o.dkim[0].headers.oversign,
        ["From", "List-Unsubscribe", "List-Unsubscribe-Post"]
    );
    assert_eq!(
        errors(&format!("{head}dkim = {{ domain = \"a.example\", selector = \"s\", key = \"/k\", sign_headers = [], oversign_headers = [\"Subject\"] }}\n")),
        ["t.toml:3:75: dkim sign_headers: From must be signed (RFC 6376 §5.4)"]
    );
}

#[test]
fn match_value_errors() {
    let head = "[actions.a]\nmbox = \"/m\"\n";
    assert_eq!(
        errors(&format!("{head}[[match]]\nfrom = \"localhost\"\nfor = \"example.org\"\naction = \"a\"\n[[match]]\nfrom = \"any\"\nfor = []\naction = \"a\"\n")),
        [
            "t.toml:4:8: from: unknown value \"localhost\", expected \"local\", \"any\", \"socket\" or { source = [\"127.0.0.0/8\", \"::1\"] }",
            "t.toml:5:7: for: unknown value \"example.org\", expected \"local\", \"any\" or a list of domains such as [\"example.org\"]",
            "t.toml:9:7: for: empty list of domains",
        ]
    );
}

#[test]
fn metrics_must_stay_on_loopback_unless_allowed() {
    assert_eq!(
        errors("[metrics]\naddress = \"0.0.0.0:9925\"\n"),
        ["t.toml:2:11: metrics address 0.0.0.0:9925 is not loopback: set allow_non_loopback = true to expose metrics beyond this host"]
    );
    assert_eq!(
        parse("[metrics]\naddress = \"[::1]:9925\"\n")
            .metrics
            .unwrap()
            .address
            .port(),
        9925
    );
}

#[test]
fn many_errors_are_collected_in_one_pass_in_file_order() {
    let text = "hostname = \"bad host\"\n\
                [limits]\nidle_timeout = \"5x\"\nbogus = 1\n\
                [[listen]]\naddress = \"nowhere\"\n\
                [actions.o]\nrelay = \"smtp://r.example\"\n\
                [[match]]\nfrom = \"local\"\nfor = \"any\"\naction = \"p\"\n";
    assert_eq!(
        errors(text),
        [
            "t.toml:1:12: invalid hostname `bad host`: expected a DNS name",
            "t.toml:4:1: unknown field `bogus`, expected one of `max_message_size`, `max_recipients`, `max_connections`, `max_line_length`, `idle_timeout`, `data_timeout`, `bare_newlines`, `shutdown_grace`, `max_hops`, `max_errors`",
            "t.toml:6:11: listen address: invalid address `nowhere`: expected IP:port such as \"127.0.0.1:25\" or \"[::1]:25\"",
            "t.toml:8:9: plaintext relay smtp://r.example needs `insecure = true` in action `o` (prefer smtp+tls:// or smtps://)",
            "t.toml:12:10: no action named `p` (defined: o)",
        ]
    );
}

#[test]
fn unused_actions_and_tables_are_warnings_not_errors() {
    let c = parse("[tables]\naliases = \"/etc/aliases\"\n[actions.spare]\nmbox = \"/m\"\n");
    assert_eq!(
        c.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "t.toml:2:1: table `aliases` is not used by any action or match rule",
            "t.toml:3:10: action `spare` is not used by any [[match]] rule",
        ]
    );
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mailer.toml");
    std::fs::write(&path, "[limits]\nmax_recipients = -1\n").expect("write config");
    let errs = Config::load(&path).unwrap_err();
    assert_eq!(
        errs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [format!(
            "{}:2:18: max_recipients must be at least 1 (got -1)",
            path.display()
        )]
    );
    std::fs::write(&path, SHIPPED).expect("write config");
    assert_eq!(Config::load(&path).expect("loads").source, path);
    let missing = dir.path().join("absent.toml");
    let errs = Config::load(&missing).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].col), (0, 0));
    assert_eq!(
        errs[0].to_string(),
        format!(
            "{}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn check_nameservers_take_an_address_with_or_without_port() {
    let c = parse("[check]\nnameservers = [\"127.0.0.1\", \"[::1]:5353\"]\n");
    assert_eq!(
        c.check.nameservers,
        vec![
            "127.0.0.1:53".parse::<std::net::SocketAddr>().unwrap(),
            "[::1]:5353".parse().unwrap()
        ]
    );
    let e = errors("[check]\nnameservers = [\"ns.example\"]\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].contains(":2:16: nameservers: invalid address `ns.example`"),
        "{e:?}"
    );
}

#[test]
fn alias_commands_and_files_are_refused_at_their_key() {
    let e = errors("[actions.l]\nmbox = \"/var/mail/%u\"\nallow_commands = true\n[[match]]\nfrom = \"local\"\nfor = \"local\"\naction = \"l\"\n");
    assert_eq!(
        e,
        ["t.toml:3:18: `allow_commands` is not supported: aliases cannot run commands or append to files here"]
    );
    parse("[actions.l]\nmbox = \"/var/mail/%u\"\nallow_files = false\n[[match]]\nfrom = \"local\"\nfor = \"local\"\naction = \"l\"\n");
}

// ---- user: the account the daemon becomes -------------------------------------------------

fn account(name: &str, uid: u32) -> crate::tables::users::User {
    crate::tables::users::User {
        name: name.to_string(),
        uid,
        gid: uid,
        home: PathBuf::from("/var/spool/mailer"),
    }
}

/// A password database holding `mailer` (uid 108) and `toor` (uid 0) only.
fn passwd(name: &str) -> std::io::Result<Option<crate::tables::users::User>> {
    Ok(match name {
        "mailer" => Some(account("mailer", 108)),
        "toor" => Some(account("toor", 0)),
        _ => None,
    })
}

#[test]
fn user_is_optional_and_checked_at_its_line() {
    assert_eq!(parse("").user, None);
    assert_eq!(
        parse("hostname = \"a.example\"\nuser = \"mailer\"\n")
            .user
            .as_deref(),
        Some("mailer")
    );
    assert_eq!(
        errors("hostname = \"a.example\"\nuser = \"root\"\n"),
        ["t.toml:2:8: user = \"root\" drops nothing: remove it to run as root, or name an unprivileged account such as \"mailer\""]
    );
    assert_eq!(
        errors("user = \"mail er\"\n"),
        ["t.toml:1:8: user: invalid user name `mail er`"]
    );
    assert_eq!(
        errors("user = \"-x\"\n"),
        ["t.toml:1:8: user: invalid user name `-x`"]
    );
    assert_eq!(
        errors("user = \"\"\n"),
        ["t.toml:1:8: user: invalid user name ``"]
    );
    assert_eq!(
        errors("user = 108\n"),
        ["t.toml:1:8: invalid type: integer `108`, expected a string"]
    );
}

#[test]
fn an_unknown_or_root_user_is_an_error_at_its_line() {
    let c = parse("\nuser = \"nobody-here\"\n");
    assert_eq!(
        c.user_account(passwd).unwrap_err().to_string(),
        "t.toml:2:8: user `nobody-here` does not exist: create it (useradd --system --home-dir /var/spool/mailer --shell /usr/sbin/nologin nobody-here) or remove `user`"
    );
    let c = parse("user = \"toor\"\n");
    assert_eq!(
        c.user_account(passwd).unwrap_err().to_string(),
        "t.toml:1:8: user `toor` has uid 0: running as it drops nothing; name an unprivileged account"
    );
    let c = parse("user = \"mailer\"\n");
    let broken = |_: &str| Err(std::io::Error::other("NSS is down"));
    assert_eq!(
        c.user_account(broken).unwrap_err().to_string(),
        "t.toml:1:8: user `mailer`: cannot look it up: NSS is down"
    );
    assert_eq!(c.user_account(passwd), Ok(Some(account("mailer", 108))));
}

#[test]
fn check_files_looks_the_user_up_in_the_system_database() {
    let c = parse("user = \"mdep-no-such-account\"\n");
    let problems: Vec<String> = c.check_files().iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("t.toml:1:8: user `mdep-no-such-account` does not exist"),
        "{problems:?}"
    );
    assert_eq!(parse("").check_files(), []);
}

#[test]
fn privileges_follow_who_started_the_daemon_and_user() {
    let with_user = parse("user = \"mailer\"\n");
    let without = parse("");
    assert_eq!(
        with_user.privileges(0, passwd),
        Ok(Privileges::Drop(account("mailer", 108)))
    );
    assert_eq!(with_user.privileges(108, passwd), Ok(Privileges::Keep));
    assert_eq!(
        with_user.privileges(1000, passwd).unwrap_err().to_string(),
        "t.toml:1:8: the daemon runs as uid 1000, not as user `mailer` (uid 108): start it as root (it switches to `mailer` itself) or as `mailer`"
    );
    assert_eq!(without.privileges(0, passwd), Ok(Privileges::StayRoot));
    assert_eq!(without.privileges(1000, passwd), Ok(Privileges::Keep));
    // An account that vanished since the check is an error at start too.
    let gone = parse("user = \"gone\"\n");
    assert!(gone.privileges(0, passwd).is_err());
}

#[test]
fn a_mailbox_in_home_directories_with_user_set_is_a_warning_at_its_line() {
    let text = "user = \"mailer\"\n[actions.home]\nmaildir = \"~/Maildir\"\n[actions.spool]\nmbox = \"~%u/mbox\"\n[actions.var]\nmaildir = \"/var/mail/%u/\"\n[[match]]\nfrom = \"local\"\nfor = [\"a.example\"]\naction = \"home\"\n[[match]]\nfrom = \"local\"\nfor = [\"b.example\"]\naction = \"spool\"\n[[match]]\nfrom = \"local\"\nfor = \"any\"\naction = \"var\"\n";
    let c = parse(text);
    assert_eq!(
        c.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "t.toml:3:11: maildir `~/Maildir` is in home directories, which the daemon cannot enter once it runs as `mailer`: put mailboxes under /var/mail (e.g. \"/var/mail/%u/\"), or remove `user` and run as root",
            "t.toml:5:8: mbox `~%u/mbox` is in home directories, which the daemon cannot enter once it runs as `mailer`: put mailboxes under /var/mail (e.g. \"/var/mail/%u/\"), or remove `user` and run as root",
        ]
    );
    // Without `user` the daemon may run as root, which can enter them.
    assert_eq!(parse(&text.replace("user = \"mailer\"\n", "")).warnings, []);
}

const RULE_HEAD: &str = "[tables]\nsenders = \"/etc/mailer/senders\"\n[actions.l]\nmbox = \"/m/%u\"\n[actions.r]\nrelay = \"smtp+tls://relay.example\"\n";

#[test]
fn match_conditions_parse_to_their_values() {
    let c = parse(&format!(
        "{RULE_HEAD}[[match]]\nfrom = {{ source = [\"127.0.0.0/8\", \"::1\"] }}\nmail_from = [\"@One.Example\", \"Ops@two.example\"]\nrcpt_to = {{ not = {{ table = \"senders\" }} }}\naction = \"r\"\n\
         [[match]]\nfrom = \"socket\"\nfor = \"local\"\nmail_from = {{ not = \"@spam.example\" }}\naction = \"l\"\n"
    ));
    assert_eq!(
        c.matches[0],
        MatchRule {
            from: FromSpec::Source(vec![
                IpNet::parse("127.0.0.0/8").unwrap(),
                IpNet::parse("::1").unwrap()
            ]),
            recipients: ForSpec::Any,
            mail_from: Some(AddressMatch {
                negated: false,
                list: AddressList::Inline(vec![
                    AddressPattern::Domain("one.example".into()),
                    AddressPattern::Address("ops@two.example".into()),
                ]),
            }),
            rcpt_to: Some(AddressMatch {
                negated: true,
                list: AddressList::Table("senders".into()),
            }),
            action: "r".into(),
        }
    );
    assert_eq!(c.matches[1].from, FromSpec::Socket);
    assert!(c.matches[1].mail_from.as_ref().unwrap().negated);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn match_condition_errors_point_at_the_value() {
    let rule = |body: &str| errors(&format!("{RULE_HEAD}[[match]]\n{body}"));
    assert_eq!(
        rule("from = { source = [\"10.0.0.0/33\", \"127.0.0.1/8\", \"loopback\"] }\nfor = \"local\"\naction = \"l\"\n"),
        [
            "t.toml:8:20: from source: prefix `/33` must be 0 to 32",
            "t.toml:8:35: from source: `127.0.0.1/8` has host bits set: write 127.0.0.0/8",
            "t.toml:8:50: from source: `loopback` is not an IP address",
        ]
    );
    assert_eq!(
        rule("from = \"local\"\nfor = \"any\"\nmail_from = [\"@bad domain\", \"nobody\"]\nrcpt_to = { table = \"rcpts\" }\naction = \"r\"\n"),
        [
            "t.toml:10:14: mail_from: `bad domain` is not a domain name",
            "t.toml:10:29: mail_from: address has no @domain: expected \"user@domain\" or \"@domain\"",
            "t.toml:11:21: table `rcpts` is not defined in [tables] (defined: senders)",
        ]
    );
    assert_eq!(
        rule("from = { src = \"::1\" }\nfor = \"any\"\naction = \"r\"\n"),
        ["t.toml:8:8: unknown field `src`, expected `source`"]
    );
    assert_eq!(
        rule("from = \"local\"\nfor = \"any\"\nmail_from = { not = { not = \"@a.example\" } }\nrcpt_to = []\naction = \"r\"\n"),
        [
            "t.toml:10:21: mail_from: `not` inside `not` cancels out: remove both",
            "t.toml:11:11: rcpt_to: empty list of addresses",
        ]
    );
    assert_eq!(
        rule("from = \"local\"\naction = \"r\"\n"),
        ["t.toml:7:1: missing field `for`: give for = \"local\", \"any\" or [domains] (or an rcpt_to list)"]
    );
}

#[test]
fn a_relay_reachable_from_clients_not_on_this_host_is_an_error() {
    let rule = |from: &str| {
        errors(&format!(
            "{RULE_HEAD}[[match]]\nfrom = {from}\nfor = \"any\"\naction = \"r\"\n"
        ))
    };
    assert_eq!(
        rule("\"any\""),
        ["t.toml:8:8: action `r` relays, and from = \"any\" includes clients that are not on this host: that would be an open relay; use from = \"local\", \"socket\" or loopback sources"]
    );
    assert_eq!(
        rule("{ source = [\"127.0.0.0/8\", \"192.168.0.0/16\", \"::/0\"] }"),
        ["t.toml:8:8: action `r` relays, and sources 192.168.0.0/16, ::/0 are not on this host: that would be an open relay; use from = \"local\", \"socket\" or loopback sources"]
    );
    // Local delivery from anywhere is what a mail host does.
    parse(&format!(
        "{RULE_HEAD}[[match]]\nfrom = {{ source = \"192.168.0.0/16\" }}\nfor = \"local\"\naction = \"l\"\n[[match]]\nfrom = {{ source = \"127.0.0.0/8\" }}\nfor = \"any\"\naction = \"r\"\n"
    ));
}

#[test]
fn shadowed_and_never_matching_rules_with_the_new_conditions() {
    let text = format!(
        "{RULE_HEAD}\
         [[match]]\nfrom = \"local\"\nfor = \"any\"\nmail_from = \"@one.example\"\naction = \"r\"\n\
         [[match]]\nfrom = \"socket\"\nfor = [\"gmail.com\"]\nmail_from = [\"a@ONE.example\"]\naction = \"r\"\n\
         [[match]]\nfrom = {{ source = \"127.0.0.0/8\" }}\nfor = \"any\"\nmail_from = {{ table = \"senders\" }}\naction = \"r\"\n\
         [[match]]\nfrom = {{ source = \"127.0.0.1\" }}\nfor = \"any\"\nmail_from = {{ table = \"senders\" }}\naction = \"r\"\n\
         [[match]]\nfrom = \"local\"\nfor = [\"x.example\"]\nrcpt_to = [\"a@y.example\"]\naction = \"r\"\n"
    );
    assert_eq!(
        errors(&text),
        [
            "t.toml:13:8: this rule is never reached: the rule on line 7 matches all its recipients first",
            "t.toml:23:8: this rule is never reached: the rule on line 17 matches all its recipients first",
        ]
    );
    let ok = text
        .replace("\"a@ONE.example\"", "\"a@three.example\"")
        .replace(
            "\"127.0.0.1\" }\nfor = \"any\"\nmail_from = { table = \"senders\" }",
            "\"127.0.0.1\" }\nfor = \"any\"\nmail_from = { not = { table = \"senders\" } }",
        );
    let c = parse(&ok);
    assert_eq!(
        c.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "t.toml:3:10: action `l` is not used by any [[match]] rule",
            "t.toml:27:1: this rule can never match: every rcpt_to address is outside the domains of `for` (x.example)",
        ]
    );
}
