//! End to end: `mailer config import` with the real binary: the exit code says whether the
//! translation is complete, the lines it cannot translate are named on standard error, and a
//! complete translation passes `mailer config check` as it is.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_mailer");

fn mailer(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("MAILER_CONFIG")
        .output()
        .expect("run mailer")
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/import")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn a_complete_translation_exits_0_and_passes_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    fs::write(
        dir.path().join("aliases"),
        "root: admin\nadmin: pim@example.org\n",
    )
    .unwrap();
    let secrets = dir.path().join("secrets");
    fs::write(&secrets, "papmx relay-user:relay-pass\n").unwrap();
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
    let conf = dir.path().join("smtpd.conf");
    fs::write(
        &conf,
        format!(
            "table aliases file:{d}/aliases\n\
             table secrets file:{d}/secrets\n\
             listen on 127.0.0.1 port 2525\n\
             action \"local_mail\" mbox alias <aliases>\n\
             action \"outbound\" relay host \"smtp+tls://papmx@smtp.example.org\" \\\n  auth <secrets> mail-from \"@ublog.tech\"\n\
             match from local for local action \"local_mail\"\n\
             match from local for any action \"outbound\"\n"
        ),
    )
    .unwrap();
    let out = mailer(&[
        "config",
        "import",
        conf.to_str().unwrap(),
        "--hostname",
        "ublog.tech",
    ]);
    let toml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(toml.contains("# smtpd.conf:5: action \"outbound\" relay host \"smtp+tls://papmx@smtp.example.org\" auth <secrets> mail-from \"@ublog.tech\"\n"), "{toml}");
    let translated = dir.path().join("mailer.toml");
    fs::write(&translated, &toml).unwrap();
    let check = mailer(&["--config", translated.to_str().unwrap(), "config", "check"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("{}: ok", translated.display())
    );
}

#[test]
fn an_incomplete_translation_exits_1_and_names_each_line() {
    let path = fixture("debian-smtpd.conf");
    let out = mailer(&["config", "import", &path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let named: Vec<&str> = stderr.lines().collect();
    assert_eq!(named.len(), 2, "{stderr}");
    assert!(
        named[0].starts_with(&format!(
            "{path}:11: not translated: `relay` without `host`"
        )),
        "{stderr}"
    );
    assert!(
        named[1].starts_with(&format!("{path}:15: not translated: action `relay`")),
        "{stderr}"
    );
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(toml.contains("# INCOMPLETE: 2 construct(s)"), "{toml}");
    assert!(
        toml.contains("# smtpd.conf:11: action \"relay\" relay\n#   why: "),
        "{toml}"
    );

    // A Postfix file, forced: the format can be given.
    let out = mailer(&[
        "config",
        "import",
        "--from",
        "postfix",
        &fixture("sender-dependent-main.cf"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("# main.cf:5: relayhost = [smtp.paphosting.net]:587"));
}

#[test]
fn an_unreadable_or_unknown_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.conf");
    let out = mailer(&["config", "import", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    assert!(out.stdout.is_empty());

    let prose = dir.path().join("notes.txt");
    fs::write(&prose, "remember to renew the certificate\n").unwrap();
    let out = mailer(&["config", "import", prose.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --from smtpd or --from postfix"));
}
