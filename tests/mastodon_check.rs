//! End to end: `mailer check --mastodon-env FILE` judges Mastodon's `.env.production` samples
//! in tests/data/mastodon/ against tests/data/mastodon/mailer.toml (one IPv4 loopback listener
//! on port 25 without TLS, a relay action rewriting the sender to ublog.tech): the ids and
//! statuses of the JSON report, the text report, and the exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/mastodon")
        .join(name)
}

fn check(env_file: &Path, json: bool) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(data("mailer.toml"))
        .arg("check")
        .arg("--mastodon-env")
        .arg(env_file);
    if json {
        command.arg("--json");
    }
    command.output().expect("mailer runs")
}

/// The (id, status) pairs of the JSON report, and the exit code.
fn verdicts(env_file: &Path) -> (Vec<(String, String)>, Option<i32>) {
    let out = check(env_file, true);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = report["checks"].as_array().expect("checks").iter();
    let pairs = checks
        .map(|c| {
            assert_eq!(c["area"], "mastodon");
            (
                c["id"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (pairs, out.status.code())
}

fn expect(sample: &str, expected: &[(&str, &str)], code: i32) {
    let (got, exit) = verdicts(&data(sample));
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(i, s)| (i.to_string(), s.to_string()))
        .collect();
    assert_eq!(got, expected, "{sample}");
    assert_eq!(exit, Some(code), "{sample}");
}

#[test]
fn mastodon_env_of_the_setup_wizard_on_ipv4_loopback_passes_with_exit_0() {
    expect(
        "setup-localhost.env",
        &[
            ("mastodon.delivery", "pass"),
            ("mastodon.server", "pass"),
            ("mastodon.auth", "pass"),
            ("mastodon.tls", "pass"),
            ("mastodon.from", "pass"),
        ],
        0,
    );
    let out = check(&data("setup-localhost.env"), false);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[pass] mastodon.from"), "{text}");
    assert!(text.contains("notifications@ublog.tech aligns with the rewrite domain ublog.tech"));
}

#[test]
fn mastodon_env_with_localhost_warns_that_ipv6_loopback_has_no_listener() {
    expect(
        "wizard-localhost.env",
        &[
            ("mastodon.delivery", "pass"),
            ("mastodon.server", "warn"),
            ("mastodon.auth", "pass"),
            ("mastodon.tls", "pass"),
            ("mastodon.from", "pass"),
        ],
        0,
    );
    let text = String::from_utf8(check(&data("wizard-localhost.env"), false).stdout).unwrap();
    assert!(text.contains("fix: set SMTP_SERVER=127.0.0.1"), "{text}");
}

#[test]
fn mastodon_env_left_empty_fails_the_default_from_notifications_at_localhost() {
    expect(
        "defaults.env",
        &[
            ("mastodon.delivery", "pass"),
            ("mastodon.server", "warn"),
            ("mastodon.auth", "pass"),
            ("mastodon.tls", "pass"),
            ("mastodon.from", "fail"),
        ],
        1,
    );
    let text = String::from_utf8(check(&data("defaults.env"), false).stdout).unwrap();
    assert!(
        text.contains("fix: set SMTP_FROM_ADDRESS=notifications@ublog.tech"),
        "{text}"
    );
}

#[test]
fn mastodon_env_with_wrong_port_login_and_localhost_from_fails_each_naming_the_fix() {
    expect(
        "mistakes.env",
        &[
            ("mastodon.delivery", "pass"),
            ("mastodon.server", "fail"),
            ("mastodon.auth", "fail"),
            ("mastodon.tls", "info"),
            ("mastodon.from", "fail"),
        ],
        1,
    );
    let out = check(&data("mistakes.env"), false);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("fix: set SMTP_PORT=25"), "{text}");
    assert!(text.contains("fix: set SMTP_AUTH_METHOD=none"), "{text}");
    assert!(
        !text.contains("hunter2"),
        "the password is never shown: {text}"
    );
}

#[test]
fn mastodon_env_forcing_starttls_fails_against_a_listener_without_tls() {
    expect(
        "starttls-always.env",
        &[
            ("mastodon.delivery", "pass"),
            ("mastodon.server", "pass"),
            ("mastodon.auth", "pass"),
            ("mastodon.tls", "fail"),
            ("mastodon.from", "pass"),
        ],
        1,
    );
}

#[test]
fn mastodon_env_bulk_settings_are_judged_on_their_own() {
    expect(
        "bulk-mismatch.env",
        &[
            ("mastodon.delivery", "pass"),
            ("mastodon.server", "pass"),
            ("mastodon.auth", "pass"),
            ("mastodon.tls", "pass"),
            ("mastodon.from", "pass"),
            ("mastodon.bulk.server", "fail"),
            ("mastodon.bulk.auth", "pass"),
            ("mastodon.bulk.tls", "fail"),
        ],
        1,
    );
}

#[test]
fn mastodon_env_sendmail_must_lead_to_this_mailer() {
    expect(
        "sendmail-elsewhere.env",
        &[("mastodon.delivery", "fail"), ("mastodon.from", "pass")],
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let env = dir.path().join(".env.production");
    std::fs::write(
        &env,
        format!(
            "SMTP_DELIVERY_METHOD=sendmail\nSMTP_SENDMAIL_LOCATION={}\n\
             SMTP_FROM_ADDRESS=notifications@ublog.tech\n",
            link.display()
        ),
    )
    .unwrap();
    let (got, exit) = verdicts(&env);
    assert_eq!(
        got,
        vec![
            ("mastodon.delivery".to_string(), "pass".to_string()),
            ("mastodon.from".to_string(), "pass".to_string()),
        ]
    );
    assert_eq!(exit, Some(0));
}

#[test]
fn mastodon_env_parse_errors_name_file_and_line_without_the_value() {
    let out = check(&data("malformed.env"), false);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let file = data("malformed.env").display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:2: double-quoted value without its closing quote"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{file}:3: ")), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(out.stdout.is_empty());
}
