//! What `mailer config check` finds in the files a configuration names (`Config::check_files`,
//! then `delivery::preflight` reading their contents), against real files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mailer_core::config::Config;
use mailer_core::delivery::dkim::{generate_key, KeyAlgorithm};
use mailer_core::delivery::preflight;

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).expect("write test file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod test file");
}

/// A configuration naming files under `dir`, the way the ublog.tech deployment does, plus a
/// TLS listener, a CA file and a DKIM key.
fn config_text(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"hostname = "ublog.tech"

[[listen]]
address = "127.0.0.1:25"
tls_cert = "{d}/cert.pem"
tls_key = "{d}/key.pem"

[tables]
aliases = "{d}/aliases"
secrets = "{d}/secrets"

[actions.local_mail]
mbox = "{d}/mail/%u"
alias = "aliases"

[actions.outbound]
relay = ["smtp+tls://papmx@smtp.paphosting.net", "smtps://backup@smtp2.example"]
auth = "secrets"
ca_file = "{d}/ca.pem"
dkim = {{ domain = "ublog.tech", selector = "mailer2026", key = "{d}/dkim.key" }}

[[match]]
from = "local"
for = "local"
action = "local_mail"

[[match]]
from = "local"
for = "any"
action = "outbound"
"#
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config_path: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    write(&root.join("aliases"), "root: ublog\n", 0o644);
    write(
        &root.join("secrets"),
        "papmx ublog:pw\nbackup ublog:pw2\n",
        0o600,
    );
    write(&root.join("cert.pem"), "cert", 0o644);
    write(&root.join("key.pem"), "key", 0o600);
    write(&root.join("ca.pem"), "ca", 0o644);
    let (pem, _) = generate_key(KeyAlgorithm::Ed25519).expect("test key");
    write(&root.join("dkim.key"), &pem, 0o640);
    let config_path = root.join("mailer.toml");
    write(&config_path, &config_text(&root), 0o644);
    Setup {
        _dir: dir,
        root,
        config_path,
    }
}

/// What `mailer config check` reports beyond the syntax: the files, then their contents.
fn check(s: &Setup) -> Vec<String> {
    let config = Config::load(&s.config_path).expect("test config parses");
    preflight(&config).err().unwrap_or_default()
}

#[test]
fn a_complete_setup_has_nothing_to_report() {
    let s = setup();
    assert_eq!(check(&s), Vec::<String>::new());
}

#[test]
fn missing_files_are_reported_at_the_config_line_naming_them() {
    let s = setup();
    for f in ["aliases", "cert.pem", "ca.pem", "dkim.key"] {
        std::fs::remove_file(s.root.join(f)).expect("remove test file");
    }
    let c = s.config_path.display();
    let r = s.root.display();
    let enoent = "No such file or directory (os error 2)";
    assert_eq!(
        check(&s),
        [
            format!("{c}:5:12: tls_cert {r}/cert.pem: {enoent}"),
            format!("{c}:9:11: table `aliases`: {r}/aliases: {enoent}"),
            format!("{c}:19:11: ca_file {r}/ca.pem: {enoent}"),
            format!("{c}:20:64: DKIM key {r}/dkim.key: {enoent}"),
        ]
    );
}

#[test]
fn secrets_readable_by_others_are_refused() {
    let s = setup();
    let secrets = s.root.join("secrets");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(
        check(&s),
        [format!(
            "{}: readable by others (mode 0644); chmod 600 it",
            secrets.display()
        )]
    );
}

#[test]
fn a_label_missing_from_the_secrets_table_is_reported_at_the_url() {
    let s = setup();
    let secrets = s.root.join("secrets");
    write(&secrets, "papmx ublog:pw\n", 0o600);
    assert_eq!(
        check(&s),
        [format!(
            "{}:17:50: secrets table `secrets` ({}) has no label `backup`",
            s.config_path.display(),
            secrets.display()
        )]
    );
}

#[test]
fn a_broken_secrets_line_is_reported_in_the_secrets_file() {
    let s = setup();
    let secrets = s.root.join("secrets");
    write(&secrets, "papmx ublog:pw\nbackup\n", 0o600);
    assert_eq!(
        check(&s),
        [format!(
            "{}:2:1: a single word, no `label user:password` (the line is not shown: it may hold a secret)",
            secrets.display()
        )]
    );
}

#[test]
fn a_dkim_key_open_to_others_is_refused() {
    let s = setup();
    let key = s.root.join("dkim.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(
        check(&s),
        [format!(
            "{}:20:64: DKIM key {}: mode 0644 is too open (0640 at most); chmod 600 it",
            s.config_path.display(),
            key.display()
        )]
    );
}

#[test]
fn a_directory_where_a_file_belongs_is_reported() {
    let s = setup();
    let key = s.root.join("key.pem");
    std::fs::remove_file(&key).expect("remove");
    std::fs::create_dir(&key).expect("mkdir");
    assert_eq!(
        check(&s),
        [format!(
            "{}:6:11: tls_key {}: not a regular file",
            s.config_path.display(),
            key.display()
        )]
    );
}
