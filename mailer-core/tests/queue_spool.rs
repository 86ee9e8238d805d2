//! The spool keeps exactly what was acknowledged, across restarts and interrupted writes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, UNIX_EPOCH};

use mailer_core::address::Address;
use mailer_core::intake::{AcceptedRecipient, Incoming, Peer};
use mailer_core::queue::{QueueId, RecipientState, Spool};

fn incoming(body: &[u8]) -> Incoming {
    let arrived = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    Incoming {
        id: QueueId::generate(arrived),
        sender: Some(Address::parse("app@ublog.tech").unwrap()),
        recipients: vec![
            AcceptedRecipient {
                address: Address::parse("a@example.org").unwrap(),
                action: "outbound".into(),
            },
            AcceptedRecipient {
                address: Address::parse("root@localhost").unwrap(),
                action: "local_mail".into(),
            },
        ],
        rest: body.to_vec(),
        size: body.len() as u64,
        head: body.to_vec(),
        eight_bit_content: false,
        arrived,
        smtputf8: false,
        eightbit: true,
        helo: "client".into(),
        peer: Peer {
            addr: Some("127.0.0.1:5000".parse().unwrap()),
            submitter: None,
        },
    }
}

#[test]
fn a_stored_message_survives_a_restart_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let body = b"Received: x\r\nSubject: \xe9t\xe9\r\n\r\n.leading dot\r\n".to_vec();
    let m = incoming(&body);
    let env = m.envelope();
    Spool::open(dir.path())
        .unwrap()
        .store(&env, &m.rest)
        .unwrap();

    // A new process opens the same directory.
    let spool = Spool::open(dir.path()).unwrap();
    let report = spool.load(true).unwrap();
    assert_eq!(report.envelopes, vec![env.clone()]);
    assert_eq!(spool.read_message(env.id).unwrap(), body);
    assert_eq!(spool.read_envelope(env.id).unwrap(), env);
    assert_eq!(report.removed_incomplete, 0);
    // One file per message, the message first, as an admin reading it expects.
    let names: Vec<_> = fs::read_dir(dir.path().join("q"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [format!("{}.msg", env.id)]);
    assert!(fs::read(spool.message_path(env.id))
        .unwrap()
        .starts_with(&body));
}

#[test]
fn a_queue_written_by_the_previous_layout_is_read_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let m = incoming(b"Subject: old\r\n\r\nkept\r\n");
    let env = m.envelope();
    // The message alone in .msg, the envelope (pretty JSON) alone in .env.
    fs::write(spool.message_path(m.id), &m.rest).unwrap();
    fs::write(
        dir.path().join(format!("q/{}.env", m.id)),
        serde_json::to_vec_pretty(&env).unwrap(),
    )
    .unwrap();
    let report = spool.load(true).unwrap();
    assert_eq!(report.envelopes, vec![env.clone()]);
    assert_eq!(spool.read_message(m.id).unwrap(), m.rest);
    spool.remove(m.id).unwrap();
    assert!(fs::read_dir(dir.path().join("q")).unwrap().next().is_none());
}

#[test]
fn a_removal_cut_short_between_its_two_unlinks_leaves_nothing_to_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let m = incoming(b"x\r\n");
    let mut env = m.envelope();
    spool.store(&env, &m.rest).unwrap();
    env.recipients[0].state = RecipientState::Delivered;
    spool.update(&env).unwrap();
    // The message is unlinked first; the process died before the envelope went.
    fs::remove_file(spool.message_path(m.id)).unwrap();
    let report = spool.load(true).unwrap();
    assert!(report.envelopes.is_empty());
    assert_eq!(report.removed_incomplete, 1);
    assert!(fs::read_dir(dir.path().join("q")).unwrap().next().is_none());
}

#[test]
fn files_are_private_to_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let spool = Spool::open(&queue).unwrap();
    let m = incoming(b"x\r\n");
    spool.store(&m.envelope(), &m.rest).unwrap();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    // Users reach the submission socket and offline/, and list neither.
    assert_eq!(mode(&queue), 0o711);
    assert_eq!(mode(&queue.join("offline")), 0o1733);
    for private in ["q", "tmp", "corrupt"] {
        assert_eq!(mode(&queue.join(private)), 0o700, "{private}");
    }
    assert_eq!(mode(&spool.message_path(m.id)), 0o600);
}

#[test]
fn an_older_queue_is_opened_to_submissions() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    for sub in ["", "q", "tmp", "corrupt", "offline"] {
        fs::create_dir_all(queue.join(sub)).unwrap();
        fs::set_permissions(queue.join(sub), fs::Permissions::from_mode(0o700)).unwrap();
    }
    Spool::open(&queue).unwrap();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&queue), 0o711);
    assert_eq!(mode(&queue.join("offline")), 0o1733);
    assert_eq!(mode(&queue.join("q")), 0o700);
}

#[test]
fn a_write_interrupted_before_the_rename_is_invisible_and_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = QueueId::generate(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    // The process died after writing the temporary files, before renaming them.
    fs::write(dir.path().join(format!("tmp/{id}.msg.0")), b"half a mess").unwrap();
    fs::write(dir.path().join(format!("tmp/{id}.env.1")), b"{\"version\"").unwrap();
    let report = spool.load(true).unwrap();
    assert!(report.envelopes.is_empty());
    assert!(fs::read_dir(dir.path().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn a_message_file_without_its_envelope_is_set_aside_not_delivered_nor_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let m = incoming(b"x\r\n");
    let cut = incoming(b"y\r\n");
    // A message file of the previous layout whose envelope never followed, and a queue file
    // cut short by damage: neither can say whom it is for.
    fs::write(spool.message_path(m.id), &m.rest).unwrap();
    spool.store(&cut.envelope(), &cut.rest).unwrap();
    let whole = fs::read(spool.message_path(cut.id)).unwrap();
    fs::write(spool.message_path(cut.id), &whole[..whole.len() - 5]).unwrap();

    let report = spool.load(true).unwrap();
    assert!(report.envelopes.is_empty());
    assert_eq!(report.removed_incomplete, 0);
    let corrupt = spool.corrupt().unwrap();
    assert_eq!(corrupt.len(), 2, "{corrupt:?}");
    for c in &corrupt {
        assert!(c.reason.contains("no queue file trailer"), "{c:?}");
    }
    assert!(!spool.message_path(m.id).exists());
}

#[test]
fn an_envelope_inside_the_message_file_that_disagrees_with_it_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let m = incoming(b"x\r\n");
    let mut env = m.envelope();
    env.size += 1;
    spool.store(&env, &m.rest).unwrap();
    let report = spool.load(true).unwrap();
    assert!(report.envelopes.is_empty());
    assert!(
        report.corrupt[0]
            .1
            .contains("the envelope gives 4 octets of message, the file holds 3"),
        "{:?}",
        report.corrupt
    );
}

#[test]
fn a_corrupt_envelope_is_set_aside_with_its_message_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let m = incoming(b"x\r\n");
    let good = incoming(b"y\r\n");
    for m in [&m, &good] {
        spool.store(&m.envelope(), &m.rest).unwrap();
    }
    fs::write(dir.path().join(format!("q/{}.env", m.id)), b"not json").unwrap();
    // A read-only load (mailer queue list without a daemon) only reports it.
    let report = spool.load(false).unwrap();
    assert_eq!(report.corrupt.len(), 1);
    assert!(spool.message_path(m.id).exists());

    let report = spool.load(true).unwrap();
    assert_eq!(report.envelopes.len(), 1, "the good message loads");
    assert_eq!(report.envelopes[0].id, good.id);
    let corrupt = spool.corrupt().unwrap();
    let names: Vec<String> = corrupt
        .iter()
        .map(|c| c.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [format!("{}.env", m.id), format!("{}.msg", m.id)]);
    assert!(
        corrupt[0].reason.starts_with("unreadable envelope: "),
        "{:?}",
        corrupt[0]
    );
    assert!(
        fs::read(&corrupt[1].path).unwrap().starts_with(b"x\r\n"),
        "the message is kept"
    );
    assert!(!spool.message_path(m.id).exists());
    // Gone from the queue for good: the next start finds nothing to set aside.
    assert!(spool.load(true).unwrap().corrupt.is_empty());
}

#[test]
fn a_leftover_temporary_file_that_cannot_be_removed_does_not_stop_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let m = incoming(b"x\r\n");
    spool.store(&m.envelope(), &m.rest).unwrap();
    // A directory where a temporary file should be: unlink(2) fails with EISDIR.
    fs::create_dir(dir.path().join("tmp/stray")).unwrap();
    let report = spool.load(true).unwrap();
    assert_eq!(report.envelopes.len(), 1);
    assert_eq!(report.corrupt.len(), 1);
    assert!(
        report.corrupt[0]
            .1
            .starts_with("leftover temporary file cannot be removed"),
        "{:?}",
        report.corrupt
    );
    assert!(dir.path().join("corrupt/stray").is_dir());
    assert!(dir.path().join("corrupt/stray.reason").is_file());
}

#[test]
fn updates_replace_the_envelope_and_remove_deletes_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let m = incoming(b"x\r\n");
    let mut env = m.envelope();
    spool.store(&env, &m.rest).unwrap();
    env.recipients[0].state = RecipientState::Delivered;
    env.recipients[1].attempts = 1;
    env.recipients[1].last_error = Some("mailbox locked".into());
    spool.update(&env).unwrap();
    assert_eq!(spool.load(true).unwrap().envelopes, vec![env.clone()]);
    spool.remove(env.id).unwrap();
    assert!(spool.load(true).unwrap().envelopes.is_empty());
    assert!(fs::read_dir(dir.path().join("q")).unwrap().next().is_none());
}

#[test]
fn concurrent_stores_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let spool = std::sync::Arc::new(Spool::open(dir.path()).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let m = incoming(b"x\r\n");
                    spool.store(&m.envelope(), &m.rest).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(spool.load(true).unwrap().envelopes.len(), 80);
}
