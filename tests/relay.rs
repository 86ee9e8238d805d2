//! End to end: the real daemon relays to real upstream servers that require STARTTLS and AUTH,
//! with certificates made at test time.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};
use mailer_testkit::certs::TestCa;
use mailer_testkit::config::TestConfig;
use mailer_testkit::daemon::{eventually, free_port, Daemon};
use mailer_testkit::sink::{Received, Sink, SinkOptions};
use mailer_testkit::world::RelayWorld;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");
const USER: &str = "papmx-user";
const PASSWORD: &str = "s3cret pass:word";

type World = RelayWorld;

/// A daemon relaying everything to `ports` (a pool) with the @ublog.tech rewrite.
fn daemon(world: &World, ports: &[u16], extra_action: &str) -> Daemon {
    world
        .config(ports, "10s")
        .action_lines("outbound", extra_action)
        .start(Path::new(BIN))
}

/// Sends a message with a real SMTP client; returns the queue id from the reply.
async fn send(port: u16, from: &str, to: &[&str], message: Vec<u8>) -> String {
    let envelope = Envelope::new(
        Some(from.parse().unwrap()),
        to.iter().map(|t| t.parse().unwrap()).collect(),
    )
    .unwrap();
    tokio::task::spawn_blocking(move || {
        let client = SmtpTransport::builder_dangerous("127.0.0.1")
            .port(port)
            .timeout(Some(Duration::from_secs(10)))
            .build();
        let response = client.send_raw(&envelope, &message).expect("accepted");
        let text = response.message().collect::<Vec<_>>().join(" ");
        text.rsplit(' ').next().unwrap().to_string()
    })
    .await
    .unwrap()
}

/// A Mastodon-like notification, numbered. The client adds the final CRLF itself.
fn notification(n: usize) -> Vec<u8> {
    format!(
        "From: Mastodon <notifications@mastodon.local>\r\n\
         To: user{n}@example.org\r\n\
         Subject: You have a new follower ({n})\r\n\
         Message-ID: <note-{n}@mastodon.local>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Hello user {n},\r\n\
         .a line that starts with a dot\r\n\
         caf\u{e9}"
    )
    .into_bytes()
}

/// The message as the upstream got it, without our Received header.
fn without_received(data: &[u8]) -> &[u8] {
    assert!(
        data.starts_with(b"Received: from "),
        "{}",
        String::from_utf8_lossy(data)
    );
    let mut i = data.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    while data[i] == b'\t' {
        i += data[i..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    }
    &data[i..]
}

fn message_id(r: &Received) -> String {
    let text = String::from_utf8_lossy(&r.data);
    text.lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .unwrap_or_default()
        .to_string()
}

fn envelope_json(queue: &Path, id: &str) -> Option<serde_json::Value> {
    let bytes = mailer_testkit::queue::envelope_json(queue, id)?;
    serde_json::from_slice(&bytes).ok()
}

fn last_error(queue: &Path, id: &str) -> Option<String> {
    envelope_json(queue, id)?["recipients"][0]["last_error"]
        .as_str()
        .map(str::to_string)
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_100_messages_byte_exact_rewritten_over_verified_tls_with_auth() {
    let world = World::new(USER, PASSWORD);
    let upstream = world.upstream(|_| {}).await;
    let daemon = daemon(&world, &[upstream.port()], "");
    for n in 0..100 {
        send(
            daemon.port,
            "notifications@mastodon.local",
            &["pim@example.org"],
            notification(n),
        )
        .await;
    }
    let got = upstream.wait_for(100, WAIT).await;
    assert_eq!(got.len(), 100, "{}", daemon.log());
    let mut by_id: HashMap<String, &Received> = HashMap::new();
    for r in &got {
        assert_eq!(
            r.mail_from, "notifications@ublog.tech",
            "envelope sender rewritten"
        );
        assert_eq!(r.rcpt_to, ["pim@example.org"]);
        assert!(r.tls, "delivered over TLS");
        assert_eq!(r.auth_user.as_deref(), Some(USER));
        assert!(by_id.insert(message_id(r), r).is_none(), "delivered once");
    }
    for n in 0..100 {
        let r = by_id[&format!("<note-{n}@mastodon.local>")];
        let mut expected = notification(n);
        expected.extend_from_slice(b"\r\n");
        assert_eq!(
            without_received(&r.data),
            expected.as_slice(),
            "message {n} byte-exact"
        );
        // The header From is the author's: never rewritten.
        assert!(String::from_utf8_lossy(&r.data)
            .contains("\r\nFrom: Mastodon <notifications@mastodon.local>\r\n"));
    }
    assert!(eventually(Duration::from_secs(10), || daemon
        .queued_messages(&world.queue_dir())
        .is_empty()
        .then_some(()))
    .is_some());
    let log = daemon.log();
    assert!(!log.contains(PASSWORD), "credentials never reach the log");
    // The header From (mastodon.local) does not align with ublog.tech: relayed anyway
    // (on_misalignment = "warn"), and said once, not a hundred times.
    assert_eq!(log.matches("does not align").count(), 1, "{log}");
}

#[test]
fn a_secrets_file_readable_by_others_is_refused() {
    let world = World::new(USER, PASSWORD);
    fs::set_permissions(&world.secrets, fs::Permissions::from_mode(0o644)).unwrap();
    let text = TestConfig::new(world.path(), free_port())
        .relay_to("papmx", &[2], &world.secrets, &world.ca_file)
        .render();
    let path = world.path().join("mailer.toml");
    fs::write(&path, text).unwrap();
    for args in [&["config", "check"][..], &["serve"][..]] {
        let out = std::process::Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must refuse");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("readable by others (mode 0644)"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_skips_a_dead_member_and_a_421_member_and_delivers_each_message_once() {
    let world = World::new(USER, PASSWORD);
    let dead = Sink::refusing().port();
    let busy = world.upstream(|o| o.greeting_421 = true).await;
    let good = world.upstream(|_| {}).await;
    let daemon = daemon(&world, &[dead, busy.port(), good.port()], "");
    let started = Instant::now();
    for n in 0..20 {
        send(
            daemon.port,
            "app@mastodon.local",
            &["pim@example.org"],
            notification(n),
        )
        .await;
    }
    let got = good.wait_for(20, WAIT).await;
    assert_eq!(got.len(), 20, "{}", daemon.log());
    let ids: std::collections::HashSet<String> = got.iter().map(message_id).collect();
    assert_eq!(ids.len(), 20, "each message exactly once");
    // The 421 member is remembered as failing: it is not tried for every message.
    assert!(
        busy.connections() <= 2,
        "421 member tried {} times",
        busy.connections()
    );
    assert!(busy.messages().is_empty());
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mail_waits_out_an_outage_of_every_upstream_and_says_why() {
    let world = World::new(USER, PASSWORD);
    let port = free_port();
    let daemon = daemon(&world, &[port], "");
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            send(
                daemon.port,
                "app@mastodon.local",
                &["pim@example.org"],
                notification(n),
            )
            .await,
        );
    }
    let queue = world.queue_dir();
    let reason = eventually(WAIT, || last_error(&queue, &ids[0]))
        .unwrap_or_else(|| panic!("no last_error recorded\n{}", daemon.log()));
    assert!(reason.contains(&format!("127.0.0.1]:{port}")), "{reason}");
    assert!(reason.to_lowercase().contains("refused"), "{reason}");

    // The upstream comes back on the same port.
    let upstream = Sink::start_on(
        port,
        SinkOptions {
            tls: Some(world.ca.issue(&["127.0.0.1"])),
            require_tls: true,
            auth: Some((USER.into(), PASSWORD.into())),
            ..SinkOptions::default()
        },
    )
    .await;
    let got = upstream.wait_for(5, WAIT).await;
    assert_eq!(got.len(), 5, "{}", daemon.log());
    let delivered: std::collections::HashSet<String> = got.iter().map(message_id).collect();
    assert_eq!(delivered.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_rejected_recipient_of_three_bounces_alone_with_the_upstream_reply() {
    let world = World::new(USER, PASSWORD);
    let upstream = world
        .upstream(|o| {
            o.rcpt_reply = Some(Arc::new(|rcpt: &str| {
                (rcpt == "gone@example.org").then(|| {
                    (
                        550,
                        "5.1.1 <gone@example.org>: Recipient address rejected".to_string(),
                    )
                })
            }))
        })
        .await;
    let daemon = daemon(&world, &[upstream.port()], "");
    send(
        daemon.port,
        "alice@mastodon.local",
        &["a@example.org", "gone@example.org", "b@example.org"],
        notification(1),
    )
    .await;
    // The message for the two others, then the DSN to the original sender.
    let got = upstream.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2, "{}", daemon.log());
    let message = got
        .iter()
        .find(|r| !r.mail_from.is_empty())
        .expect("the message");
    assert_eq!(message.rcpt_to, ["a@example.org", "b@example.org"]);
    let dsn = got
        .iter()
        .find(|r| r.mail_from.is_empty())
        .expect("a DSN with the null sender");
    assert_eq!(
        dsn.rcpt_to,
        ["alice@mastodon.local"],
        "to the pre-rewrite sender"
    );
    // Unfold header-style continuation lines before matching.
    let text = String::from_utf8_lossy(&dsn.data).replace("\r\n ", " ");
    assert!(
        text.contains("Final-Recipient: rfc822; gone@example.org"),
        "{text}"
    );
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(
        text.contains(
            "Diagnostic-Code: smtp; 550 5.1.1 <gone@example.org>: Recipient address rejected"
        ),
        "{text}"
    );
    assert!(!text.contains("Final-Recipient: rfc822; a@example.org"));
}

/// A message of about `size` octets whose body lines all start with a dot, of every length
/// from 1 to 61 octets, so that chunk boundaries of the queue file fall on line starts.
fn dotted_message(size: usize) -> Vec<u8> {
    let mut message = b"From: app@mastodon.local\r\n\
        To: pim@example.org\r\n\
        Subject: a large one\r\n\
        Message-ID: <large@mastodon.local>\r\n\
        \r\n"
        .to_vec();
    let mut i = 0;
    while message.len() < size {
        message.push(b'.');
        message.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, i % 61));
        message.extend_from_slice(b"\r\n");
        i += 1;
    }
    message.extend_from_slice(b".the end, without a line break");
    message
}

/// The most memory the process has held (resident), in octets.
fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in the process status");
    kib * 1024
}

fn attempts(queue: &Path, id: &str) -> u64 {
    envelope_json(queue, id).map_or(0, |e| e["recipients"][0]["attempts"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_5_mib_message_is_relayed_byte_exact_without_being_held_in_memory() {
    const SIZE: usize = 5 * 1024 * 1024;
    let world = World::new(USER, PASSWORD);
    let port = free_port();
    let mut daemon = daemon(&world, &[port], "");
    let message = dotted_message(SIZE);
    let id = send(
        daemon.port,
        "app@mastodon.local",
        &["pim@example.org"],
        message.clone(),
    )
    .await;
    let queue = world.queue_dir();
    eventually(WAIT, || (attempts(&queue, &id) > 0).then_some(()))
        .unwrap_or_else(|| panic!("no attempt recorded\n{}", daemon.log()));

    // A daemon that never received the message: its memory shows what delivery costs.
    daemon.restart();
    let tried = attempts(&queue, &id);
    eventually(WAIT, || (attempts(&queue, &id) > tried).then_some(()))
        .unwrap_or_else(|| panic!("no attempt after the restart\n{}", daemon.log()));
    let before = peak_rss(daemon.pid());
    let upstream = Sink::start_on(
        port,
        SinkOptions {
            tls: Some(world.ca.issue(&["127.0.0.1"])),
            require_tls: true,
            auth: Some((USER.into(), PASSWORD.into())),
            ..SinkOptions::default()
        },
    )
    .await;
    let got = upstream.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", daemon.log());
    let grew = peak_rss(daemon.pid()).saturating_sub(before);

    let mut expected = message;
    expected.extend_from_slice(b"\r\n");
    let data = without_received(&got[0].data);
    assert!(
        data == expected.as_slice(),
        "{} octets arrived, {} sent",
        data.len(),
        expected.len()
    );
    assert!(
        grew < SIZE as u64 / 2,
        "delivering the message grew the daemon's peak memory by {grew} octets"
    );
}

/// An upstream whose certificate cannot be verified: nothing may be sent (no AUTH, no
/// message), the message stays queued, and `last_error` says `why`.
async fn unverifiable_upstream_gets_nothing(
    leaf: mailer_testkit::certs::Leaf,
    world: &World,
    why: &str,
) {
    let upstream = world.upstream(|o| o.tls = Some(leaf)).await;
    let daemon = daemon(world, &[upstream.port()], "");
    let id = send(
        daemon.port,
        "app@mastodon.local",
        &["pim@example.org"],
        notification(1),
    )
    .await;
    let reason = eventually(WAIT, || last_error(&world.queue_dir(), &id))
        .unwrap_or_else(|| panic!("no last_error\n{}", daemon.log()));
    assert!(reason.contains(why), "{reason}");
    assert_eq!(
        upstream.auth_attempts(),
        0,
        "no AUTH over an unverified connection"
    );
    assert!(upstream.messages().is_empty());
    assert!(
        envelope_json(&world.queue_dir(), &id).is_some(),
        "still queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_for_the_wrong_name_sends_nothing_and_says_why() {
    let world = World::new(USER, PASSWORD);
    let leaf = world.ca.issue(&["other.example"]);
    unverifiable_upstream_gets_nothing(leaf, &world, "name mismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_from_an_unknown_ca_sends_nothing_and_says_why() {
    let world = World::new(USER, PASSWORD);
    let leaf = TestCa::new().issue(&["127.0.0.1"]);
    unverifiable_upstream_gets_nothing(leaf, &world, "unknown issuer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_delivery_loses_nothing_and_repeats_no_recorded_delivery() {
    let world = World::new(USER, PASSWORD);
    // A slow upstream, so the kill lands while deliveries are in flight.
    let slow = |o: &mut SinkOptions| {
        o.data_reply = Some(Arc::new(|_: &Received| {
            std::thread::sleep(Duration::from_millis(10));
            None
        }))
    };
    let upstream = world.upstream(slow).await;
    let mut daemon = daemon(&world, &[upstream.port()], "");
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push((
            n,
            send(
                daemon.port,
                "app@mastodon.local",
                &["pim@example.org"],
                notification(n),
            )
            .await,
        ));
    }
    eventually(WAIT, || (upstream.messages().len() >= 20).then_some(()));
    daemon.kill9();
    // What the queue no longer holds was recorded as delivered before the kill.
    let remaining: std::collections::HashSet<String> = daemon
        .queued_messages(&world.queue_dir())
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        !remaining.is_empty(),
        "the kill came too late to test anything"
    );
    daemon.restart();

    let distinct = || {
        upstream
            .messages()
            .iter()
            .map(message_id)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    eventually(Duration::from_secs(60), || {
        (distinct() == 200).then_some(())
    });
    // Room for a repeated delivery to show up, if there were one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = upstream.messages();
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *count.entry(message_id(r)).or_default() += 1;
    }
    for (n, id) in &ids {
        let seen = count
            .get(&format!("<note-{n}@mastodon.local>"))
            .copied()
            .unwrap_or(0);
        assert!(seen >= 1, "message {n} ({id}) lost\n{}", daemon.log());
        if !remaining.contains(id) {
            assert_eq!(
                seen, 1,
                "message {n} ({id}) was recorded delivered, then sent again"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_misaligned_header_from_is_bounced_not_relayed_when_rejecting() {
    let world = World::new(USER, PASSWORD);
    let upstream = world.upstream(|_| {}).await;
    let daemon = daemon(&world, &[upstream.port()], "on_misalignment = \"reject\"");
    let message = b"From: someone@evil.example\r\nSubject: spoof\r\n\r\nbody".to_vec();
    send(
        daemon.port,
        "app@mastodon.local",
        &["pim@example.org"],
        message,
    )
    .await;
    let got = upstream.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", daemon.log());
    let dsn = &got[0];
    assert_eq!(dsn.mail_from, "", "only the bounce leaves");
    assert_eq!(dsn.rcpt_to, ["app@mastodon.local"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("evil.example"), "{text}");
    assert!(text.contains("Status: 5.7.1"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        upstream.messages().len(),
        1,
        "the message itself was not relayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sender_is_warned_once_then_told_of_expiry() {
    let world = World::new(USER, PASSWORD);
    let port = free_port();
    let daemon = TestConfig::new(world.path(), port)
        .hostname("mx.ublog.tech")
        .local_domains(&["localhost"])
        .local_mail(&world.path().join("mail"))
        .relay_without_auth(free_port())
        .retry("1s", "1s")
        .warn_and_expire("2s", "5s")
        .start(Path::new(BIN));
    let id = send(
        port,
        "root@localhost",
        &["pim@example.org"],
        notification(7),
    )
    .await;
    let mbox = world.path().join("mail/root");
    let both = eventually(Duration::from_secs(30), || {
        let text = fs::read_to_string(&mbox).ok()?;
        (text.contains("Action: failed")).then_some(text)
    })
    .unwrap_or_else(|| panic!("no expiry DSN\n{}", daemon.log()));
    assert_eq!(
        both.matches("Action: delayed").count(),
        1,
        "warned once\n{both}"
    );
    assert_eq!(both.matches("Action: failed").count(), 1, "{both}");
    assert!(both.contains("Final-Recipient: rfc822; pim@example.org"));
    assert!(both.contains("Will-Retry-Until: "), "{both}");
    assert!(
        eventually(Duration::from_secs(5), || envelope_json(
            &world.queue_dir(),
            &id
        )
        .is_none()
        .then_some(()))
        .is_some(),
        "the expired message leaves the queue"
    );
}

/// Each pool member is given the credentials its own URL names, and no other: a backup
/// host run by someone else must never learn the primary's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_pool_member_gets_only_its_own_credentials() {
    const BACKUP_USER: &str = "backup-user";
    const BACKUP_PASSWORD: &str = "other s3cret";
    let world = World::new(USER, PASSWORD);
    fs::write(
        &world.secrets,
        format!("primary {USER}:{PASSWORD}\nbackup {BACKUP_USER}:{BACKUP_PASSWORD}\n"),
    )
    .unwrap();
    // The primary is down (it greets with 421), so the backup takes the mail.
    let primary = world.upstream(|o| o.greeting_421 = true).await;
    let backup = world
        .upstream(|o| {
            o.implicit_tls = true;
            o.auth = Some((BACKUP_USER.into(), BACKUP_PASSWORD.into()));
        })
        .await;
    let port = free_port();
    let config = TestConfig::new(world.path(), port)
        .hostname("mx.ublog.tech")
        .local_domains(&["localhost"])
        .relay_to("papmx", &[primary.port()], &world.secrets, &world.ca_file)
        .retry("1s", "2s")
        .render()
        .replace(
            &format!("\"smtp+tls://papmx@127.0.0.1:{}\"", primary.port()),
            &format!(
                "[\"smtp+tls://primary@127.0.0.1:{}\", \"smtps://backup@127.0.0.1:{}\"]",
                primary.port(),
                backup.port()
            ),
        );
    let daemon = Daemon::start(Path::new(BIN), world.path(), port, &config);
    for n in 0..6 {
        send(
            port,
            "app@ublog.tech",
            &["pim@example.org"],
            notification(n),
        )
        .await;
    }
    let mut delivered = 0;
    let deadline = Instant::now() + WAIT;
    while delivered < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        delivered = primary.count() + backup.count();
    }
    assert_eq!(delivered, 6, "{}", daemon.log());
    assert_eq!(primary.count(), 0);
    assert!(backup
        .messages()
        .iter()
        .all(|r| r.auth_user.as_deref() == Some(BACKUP_USER)));
    assert_eq!(backup.auth_refusals(), 0, "{}", daemon.log());
}
