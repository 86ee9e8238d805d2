//! End to end: the habits an admin brings from Postfix and OpenSMTPD — `mailq`, `newaliases`,
//! `man`, shell completion, `--embedded` on every command that reads the configuration, the
//! journal's own fields under systemd — each tried the way the admin would, on the real binary.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};
use mailer_testkit::config::TestConfig;
use mailer_testkit::daemon::{eventually, free_port, Daemon, Wrapper};
use mailer_testkit::sink::Sink;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");
const WAIT: Duration = Duration::from_secs(20);
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `mailer` under another name, as the package's links install it (`/usr/bin/mailq` …).
fn link_as(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    link
}

fn send(port: u16, from: &str, to: &str, message: &str) -> Result<String, String> {
    let client = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let envelope = Envelope::new(Some(from.parse().unwrap()), vec![to.parse().unwrap()]).unwrap();
    client
        .send_raw(&envelope, message.as_bytes())
        .map(|r| r.message().collect::<Vec<_>>().join(" "))
        .map_err(|e| e.to_string())
}

fn queued_id(reply: &str) -> String {
    reply
        .strip_prefix("2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("unexpected reply {reply:?}"))
        .to_string()
}

#[test]
fn mailq_prints_a_deferred_message_as_postfix_does() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let down = Sink::refusing();
    let daemon = TestConfig::new(dir.path(), port)
        .relay_without_auth(down.port())
        .start(Path::new(BIN));
    let mailq = link_as(dir.path(), "mailq");
    let run_mailq = || {
        let out = Command::new(&mailq)
            .env("MAILER_CONFIG", &daemon.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run_mailq(), "Mail queue is empty\n");

    let message = "From: <alice@ublog.tech>\r\nTo: <bob@example.net>\r\nSubject: held up\r\n\r\nThe upstream is down.\r\n";
    let id = queued_id(&send(port, "alice@ublog.tech", "bob@example.net", message).unwrap());
    // Wait until the first attempt failed and its reason is recorded.
    let entry = eventually(WAIT, || {
        let out = daemon.cli(&["queue", "list", "--json"]);
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
        list.into_iter()
            .find(|m| m["id"] == id.as_str() && m["recipients"][0]["last_error"].is_string())
    })
    .unwrap_or_else(|| panic!("{id} was never deferred:\n{}", daemon.log()));
    let size = entry["size"].as_u64().unwrap();
    let reason = entry["recipients"][0]["last_error"].as_str().unwrap();

    let listing = run_mailq();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(
        lines[0], "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------",
        "{listing}"
    );
    // `%-11s %7ld %20.20s %s`: id, size, asctime's first 20 characters, sender.
    let head = lines[1];
    assert!(head.starts_with(&format!("{id} ")), "{listing}");
    let rest = &head[id.len() + 1..];
    assert_eq!(rest[..7].trim_start(), size.to_string(), "{listing}");
    let arrival = &rest[8..28];
    let fields: Vec<&str> = arrival.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "weekday, month, day, time: {arrival:?}");
    assert!(
        ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"].contains(&fields[0]),
        "{arrival:?}"
    );
    assert_eq!(fields[3].len(), 8, "HH:MM:SS in {arrival:?}");
    assert_eq!(&rest[28..], " alice@ublog.tech", "{listing}");
    // Right-aligned to 78 columns, as Postfix prints it.
    let shown = format!("({reason})");
    assert_eq!(lines[2].trim_start(), shown, "{listing}");
    assert_eq!(lines[2].len(), shown.len().max(78), "{listing}");
    assert_eq!(lines[3], format!("{}bob@example.net", " ".repeat(41)));
    assert_eq!(lines[4], "");
    assert_eq!(lines[5], format!("-- {} Kbytes in 1 Request.", size / 1024));
    assert_eq!(lines.len(), 6, "{listing}");

    // What scripts written for Postfix do with it.
    let messages = lines
        .iter()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_hexdigit()))
        .count();
    assert_eq!(messages, 1, "`mailq | grep -c '^[A-F0-9]'`");
    assert!(lines.last().unwrap().ends_with("in 1 Request."));
    // `mailer mailq` is the same program.
    assert_eq!(
        String::from_utf8(daemon.cli(&["mailq"]).stdout).unwrap(),
        listing
    );
}

#[test]
fn newaliases_reloads_an_edited_aliases_file_and_names_a_broken_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let aliases = dir.path().join("aliases");
    fs::write(&aliases, "# as /etc/aliases\npostmaster: root\n").unwrap();
    let daemon = TestConfig::new(dir.path(), port)
        .aliases(&aliases)
        .local_mail(&dir.path().join("mail"))
        .start(Path::new(BIN));
    let newaliases = link_as(dir.path(), "newaliases");
    let run = || {
        Command::new(&newaliases)
            .env("MAILER_CONFIG", &daemon.config)
            .output()
            .unwrap()
    };

    fs::write(
        &aliases,
        "# as /etc/aliases\npostmaster: root\nteam: root\n",
    )
    .unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{}: 2 aliases", aliases.display())),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("the daemon reloaded"), "{}", text(&out));
    assert!(
        daemon.log().contains("configuration reloaded"),
        "{}",
        daemon.log()
    );
    let message =
        "From: <a@localhost>\r\nTo: <team@localhost>\r\nSubject: to the team\r\n\r\nx\r\n";
    send(port, "a@localhost", "team@localhost", message)
        .unwrap_or_else(|e| panic!("the new alias is refused: {e}\n{}", daemon.log()));
    let mbox = dir.path().join("mail/root");
    let delivered = eventually(WAIT, || {
        fs::read_to_string(&mbox)
            .ok()
            .filter(|t| t.contains("Subject: to the team"))
    });
    assert!(
        delivered.is_some(),
        "nothing in {}:\n{}",
        mbox.display(),
        daemon.log()
    );

    fs::write(&aliases, "# as /etc/aliases\npostmaster: root\nteam root\n").unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:", aliases.display())),
        "the broken line is named by file and line: {}",
        text(&out)
    );
}

#[test]
fn man_pages_render_for_mailer_every_subcommand_and_mailer_toml() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["generate", "man"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut pages: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "mailer.8",
        "mailer-serve.8",
        "mailer-queue.8",
        "mailer-config.8",
        "mailer-check.8",
        "mailer-dkim.8",
        "mailer-sendmail.8",
        "mailer-mailq.8",
        "mailer-newaliases.8",
        "mailer.toml.5",
        "sendmail.8",
        "mailq.8",
        "newaliases.8",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} not in {pages:?}");
    }
    // The linked names' pages include their subcommand's page, which must exist.
    let mut includes = Vec::new();
    for page in &pages {
        let text = fs::read_to_string(dir.path().join(page)).unwrap();
        if let Some(target) = text.trim_end().strip_prefix(".so man8/") {
            assert!(
                pages.iter().any(|p| p == target),
                "{page} includes {target}"
            );
            includes.push(page.clone());
        }
    }
    assert_eq!(includes.len(), 3, "{includes:?}");
    pages.retain(|p| !includes.contains(p));
    assert!(
        !pages.iter().any(|p| p.contains("generate")),
        "the packaging helper stays out of the manual: {pages:?}"
    );

    // man -l renders a file as `man` would an installed page; groff alone when man is absent.
    let render = |page: &Path| -> Option<Output> {
        let man = Command::new("man")
            .arg("-l")
            .arg(page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .stdin(Stdio::null())
            .output();
        match man {
            Ok(out) => Some(out),
            Err(e) if e.kind() == ErrorKind::NotFound => Command::new("groff")
                .args(["-man", "-Tutf8", "-ww"])
                .arg(page)
                .output()
                .ok(),
            Err(e) => panic!("man: {e}"),
        }
    };
    if render(&dir.path().join("mailer.8")).is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "neither man nor groff: .ci/run installs man-db"
        );
        eprintln!("skipped: neither man (man-db) nor groff is installed to render the pages");
        return;
    }
    for page in &pages {
        let out = render(&dir.path().join(page)).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{page}: {}",
            text(&out)
        );
        assert!(!out.stdout.is_empty(), "{page} renders to nothing");
    }
    let main = plain(&render(&dir.path().join("mailer.8")).unwrap().stdout);
    assert!(main.contains("NAME"), "{main}");
    for sub in ["mailer-serve(8)", "mailer-queue(8)", "mailer-newaliases(8)"] {
        assert!(main.contains(sub), "mailer(8) names {sub}:\n{main}");
    }
    let config = plain(&render(&dir.path().join("mailer.toml.5")).unwrap().stdout);
    assert!(config.contains("max_message_size"), "{config}");
}

/// Rendered manual text without its overstrikes (bold `X\bX`, underline `_\bX`).
fn plain(rendered: &[u8]) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(rendered.len());
    for &b in rendered {
        if b == 0x08 {
            out.pop();
        } else {
            out.push(b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every key the configuration accepts, read from the parser's own definitions: the
/// top-level keys of `build.rs` and the serde field names of the raw structs in `raw.rs`
/// (`rename`s applied). A key added there without a word in mailer.toml(5) fails this test.
fn configuration_keys() -> Vec<String> {
    let build = fs::read_to_string(format!("{REPO}/mailer-core/src/config/build.rs")).unwrap();
    let start = build
        .find("const TOP_LEVEL_KEYS: &[&str] = &[")
        .expect("build.rs lists the top-level keys");
    let list = &build[start..start + build[start..].find("];").unwrap()];
    let mut keys: Vec<String> = list
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(keys.len() > 5, "top-level keys: {keys:?}");

    let raw = fs::read_to_string(format!("{REPO}/mailer-core/src/config/raw.rs")).unwrap();
    let mut in_struct = false;
    let mut rename: Option<String> = None;
    let mut structs = 0;
    for line in raw.lines().map(str::trim) {
        if line.starts_with("pub(crate) struct Raw") && line.ends_with('{') {
            in_struct = true;
            structs += 1;
            continue;
        }
        if !in_struct {
            continue;
        }
        if line == "}" {
            in_struct = false;
            continue;
        }
        if let Some(r) = line.strip_prefix("#[serde(rename = \"") {
            rename = r.split('"').next().map(str::to_string);
            continue;
        }
        if let Some(field) = line.strip_prefix("pub ") {
            let name = field.split(':').next().unwrap().trim().to_string();
            keys.push(rename.take().unwrap_or(name));
        }
    }
    assert!(structs >= 5, "raw.rs: {structs} Raw structs found");
    keys.sort();
    keys.dedup();
    keys
}

#[test]
fn mailer_toml_5_describes_every_configuration_key() {
    let page = fs::read_to_string(format!("{REPO}/docs/mailer.toml.5")).unwrap();
    // A key is described where roff sets it in bold: a `.B`/`.BR` line or a section title.
    let described: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with(".B ") || l.starts_with(".BR ") || l.starts_with(".SH "))
        .collect();
    let keys = configuration_keys();
    assert!(keys.iter().any(|k| k == "max_hops"), "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| {
            !described.iter().any(|line| {
                line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .any(|word| word == key.as_str())
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "configuration keys not described in docs/mailer.toml.5: {missing:?}"
    );
}

#[test]
fn bash_zsh_and_fish_completions_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["generate", "completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in [
            "serve",
            "queue",
            "config",
            "check",
            "dkim",
            "sendmail",
            "mailq",
            "newaliases",
            "reload",
        ] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        if shell == "bash" {
            // What `mailer <TAB>` offers: the first word list, the top level's.
            let top = script
                .lines()
                .find(|l| l.trim_start().starts_with("opts=\"-"))
                .expect("an opts list");
            for sub in ["serve", "queue", "mailq", "newaliases"] {
                assert!(top.split_whitespace().any(|w| w == sub), "{top}");
            }
            assert!(!top.contains("generate"), "packaging helper offered: {top}");
            let file = tempfile::NamedTempFile::new().unwrap();
            fs::write(file.path(), &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(file.path()).output();
            if let Ok(check) = check {
                assert!(check.status.success(), "bash -n: {}", text(&check));
            }
        }
    }
}

#[test]
fn the_unit_names_its_manual_page() {
    let unit = fs::read_to_string(format!("{REPO}/config/mailer.service")).unwrap();
    let docs: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .collect();
    assert!(
        docs.iter()
            .any(|d| d.split_whitespace().any(|u| u == "man:mailer(8)")),
        "{docs:?}"
    );
}

#[test]
fn rsa_dkim_keys_are_made_without_an_openssl_command() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rsa.key");
    // No PATH at all: nothing external can be run.
    let out = Command::new(BIN)
        .args([
            "dkim",
            "keygen",
            "--selector",
            "s2026",
            "--domain",
            "ublog.tech",
            "--algorithm",
            "rsa2048",
            "--out",
        ])
        .arg(&key)
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let pem = fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    let record = String::from_utf8_lossy(&out.stdout);
    assert!(
        record.starts_with("s2026._domainkey.ublog.tech. IN TXT \"v=DKIM1; k=rsa; p="),
        "{record}"
    );
}

/// `mailer serve --embedded` in `dir`, in a private network namespace when root (the
/// embedded configuration's port, 2525, may be in use on the host; the control socket is a
/// file, reachable from outside). Without root, on the host's 2525 when it is free.
fn serve_embedded(dir: &Path) -> Option<std::process::Child> {
    let mut command = if is_root() {
        let mut c = Command::new("unshare");
        c.args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up 2>/dev/null || true; exec \"$0\" \"$@\"",
        ])
        .arg(BIN);
        c
    } else {
        if std::net::TcpListener::bind("127.0.0.1:2525").is_err() {
            eprintln!("skipped: 127.0.0.1:2525, the embedded configuration's port, is taken");
            return None;
        }
        Command::new(BIN)
    };
    let log = fs::File::create(dir.join("daemon.log")).unwrap();
    let child = command
        .args(["serve", "--embedded"])
        .current_dir(dir)
        .env_remove("MAILER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Some(child)
}

#[test]
fn every_command_that_reads_the_configuration_takes_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut child) = serve_embedded(dir.path()) else {
        return;
    };
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_remove("MAILER_CONFIG")
            .output()
            .unwrap()
    };
    // The daemon answers on the embedded control socket once it is up.
    let deadline = Instant::now() + WAIT;
    let listed = loop {
        let out = cli(&["queue", "list", "--embedded"]);
        if out.status.success() && out.stderr.is_empty() {
            break out;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the daemon exited with {status}:\n{}",
                fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`mailer queue list --embedded` never reached the daemon: {}\n{}",
                text(&out),
                fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let checks: Vec<(Vec<&str>, Output)> = [
        vec!["config", "check", "--embedded"],
        vec!["--embedded", "mailq"],
        vec!["reload", "--embedded"],
        vec!["newaliases", "--embedded"],
    ]
    .into_iter()
    .map(|args| {
        let out = cli(&args);
        (args, out)
    })
    .collect();
    // Submitted as sendmail, to the embedded daemon: delivered to a local mailbox.
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            if is_root() {
                "root".into()
            } else {
                "nobody".into()
            }
        });
    let mut sendmail = Command::new(BIN)
        .args(["--embedded", "sendmail", "-i", &format!("{user}@localhost")])
        .current_dir(dir.path())
        .env_remove("MAILER_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = sendmail.stdin.take().unwrap();
        stdin
            .write_all(b"Subject: embedded\n\nthrough sendmail --embedded\n")
            .unwrap();
    }
    let sent = sendmail.wait_with_output().unwrap();
    let mbox = dir.path().join("mailer-state/mail").join(&user);
    let delivered = eventually(WAIT, || {
        fs::read_to_string(&mbox)
            .ok()
            .filter(|t| t.contains("Subject: embedded"))
    });
    // SAFETY: kill has no memory effects; the PID is our child's.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();

    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "queue is empty\n",
        "{}",
        text(&listed)
    );
    for (args, out) in &checks {
        assert!(out.status.success(), "mailer {args:?}: {}", text(out));
    }
    assert!(String::from_utf8_lossy(&checks[0].1.stdout).contains("<embedded>: ok"));
    assert_eq!(
        String::from_utf8_lossy(&checks[1].1.stdout),
        "Mail queue is empty\n"
    );
    assert!(sent.status.success(), "sendmail: {}", text(&sent));
    assert!(
        delivered.is_some(),
        "nothing in {}:\n{}",
        mbox.display(),
        fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
    );
}

/// One datagram of the journal's native protocol: `KEY=value\n`, or `KEY\n`, a 64-bit
/// little-endian length, the value and `\n` for a value with a newline in it.
fn journal_fields(datagram: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            rest = rest.get(end + 1..).unwrap_or_default();
        } else {
            let len_at = end + 1;
            let len = u64::from_le_bytes(rest[len_at..len_at + 8].try_into().unwrap()) as usize;
            let value = &rest[len_at + 8..len_at + 8 + len];
            fields.push((
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
            rest = rest.get(len_at + 8 + len + 1..).unwrap_or_default();
        }
    }
    fields
}

#[test]
fn under_journald_message_events_carry_queue_id_recipient_action_and_status() {
    if !is_root() {
        eprintln!("skipped: a private mount namespace for the journal's socket needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    fs::create_dir(&journal_dir).unwrap();
    let journal = UnixDatagram::bind(journal_dir.join("socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = free_port();
    let wrapper = Wrapper::private_journal(&journal_dir);
    let daemon: Daemon = TestConfig::new(dir.path(), port)
        .local_mail(&dir.path().join("mail"))
        .start_wrapped(Path::new(BIN), wrapper);

    let message = "From: <a@localhost>\r\nTo: <root@localhost>\r\nSubject: journal\r\n\r\nx\r\n";
    let id = queued_id(&send(port, "a@localhost", "root@localhost", message).unwrap());
    let mut events: Vec<Vec<(String, String)>> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + WAIT;
    let delivered = loop {
        match journal.recv(&mut buf) {
            Ok(n) if n > 0 => events.push(journal_fields(&buf[..n])),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("journal socket: {e}"),
        }
        let found = events.iter().find(|fields| {
            fields.contains(&("MESSAGE".into(), "delivered".into()))
                && fields.contains(&("QUEUE_ID".into(), id.clone()))
        });
        if let Some(found) = found {
            break found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no `delivered` event for {id} in the journal; got {events:#?}\nstderr:\n{}",
            daemon.log()
        );
    };
    let get = |key: &str| {
        delivered
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {delivered:?}"))
    };
    assert_eq!(get("RECIPIENT"), "root@localhost");
    assert_eq!(get("ACTION"), "local_mail");
    assert_eq!(get("STATUS"), "2.0.0");
    assert_eq!(get("SYSLOG_IDENTIFIER"), "mailer");
    assert_eq!(get("PRIORITY"), "5", "info is notice(5) in the journal");
    let received = events
        .iter()
        .find(|f| f.contains(&("MESSAGE".into(), "received".into())))
        .expect("a received event");
    assert!(received.contains(&("QUEUE_ID".into(), id.clone())));
    // The journal stamps the time: no event carries one of its own, and nothing of the
    // message's story is also written to stderr (where systemd would log it a second time).
    for fields in &events {
        for (key, value) in fields {
            assert!(
                !key.contains("TIME") || key.starts_with("CODE"),
                "own time field {key}={value}"
            );
            assert!(
                !(key == "MESSAGE" && value.starts_with("20")),
                "time-stamped message {value:?}"
            );
        }
    }
    let stderr = daemon.log();
    assert!(
        !stderr.contains(&id),
        "message events also on stderr:\n{stderr}"
    );
}
