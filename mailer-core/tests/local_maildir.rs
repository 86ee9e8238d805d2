//! Maildir delivery: tmp/ then new/, exact content, unique names, nothing left behind.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mailer_core::delivery::content::Content;
use mailer_core::delivery::maildir::{deliver_maildir, MaildirOptions};
use mailer_core::delivery::EnhancedStatus;

/// A message as the queue gives it.
fn msg(bytes: &[u8]) -> Content {
    Content::from_bytes(bytes.to_vec())
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn message_lands_in_new_with_lf_line_ends() {
    let home = tempfile::tempdir().expect("tempdir");
    let maildir = home.path().join("Maildir");
    let opts = MaildirOptions::new("mx.ublog.tech");
    let message = b"From: pim@ublog.tech\r\nSubject: hi\r\n\r\nFrom here\r\nend";
    let path = deliver_maildir(&maildir, &msg(message), &opts).expect("delivered");

    assert_eq!(path.parent(), Some(maildir.join("new").as_path()));
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"From: pim@ublog.tech\nSubject: hi\n\nFrom here\nend\n"
    );
    let name = path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let pid_part = format!("P{}Q", std::process::id());
    assert!(name.contains(".M") && name.contains(&pid_part), "{name}");
    assert!(name.ends_with(".mx.ublog.tech"), "{name}");
    assert!(names(&maildir.join("tmp")).is_empty());
    assert!(names(&maildir.join("cur")).is_empty());
    for d in ["", "tmp", "new", "cur"] {
        let mode = std::fs::metadata(maildir.join(d))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{d}");
    }
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn hundred_quick_deliveries_get_unique_names() {
    let home = tempfile::tempdir().expect("tempdir");
    let maildir = home.path().join("Maildir");
    let opts = MaildirOptions::new("host/with:odd");
    let mut paths = HashSet::new();
    for i in 0..100 {
        let message = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
        let path = deliver_maildir(&maildir, &msg(message.as_bytes()), &opts).expect("delivered");
        assert!(paths.insert(path), "name reused at delivery {i}");
    }
    let delivered = names(&maildir.join("new"));
    assert_eq!(delivered.len(), 100);
    assert!(delivered
        .iter()
        .all(|n| n.ends_with(".host\\057with\\072odd")));
    assert!(names(&maildir.join("tmp")).is_empty());
    // Each file holds its own message.
    for path in &paths {
        let text = std::fs::read_to_string(path).expect("read");
        let i: usize = text
            .strip_prefix("Subject: ")
            .and_then(|t| t.split('\n').next())
            .and_then(|n| n.parse().ok())
            .expect("subject number");
        assert_eq!(text, format!("Subject: {i}\n\nbody {i}\n"));
    }
}

#[test]
fn failed_write_leaves_nothing_in_tmp_or_new() {
    let home = tempfile::tempdir().expect("tempdir");
    let maildir = home.path().join("Maildir");
    let opts = MaildirOptions {
        fail_after: Some(5),
        ..MaildirOptions::new("mx")
    };
    let failure = deliver_maildir(&maildir, &msg(b"Subject: x\r\n\r\nbody\r\n"), &opts)
        .expect_err("injected");
    assert!(!failure.permanent);
    assert_eq!(failure.status, EnhancedStatus(4, 3, 0));
    assert!(
        failure
            .reason
            .starts_with(&maildir.join("tmp").display().to_string()),
        "{}",
        failure.reason
    );
    assert!(failure
        .reason
        .ends_with(": write failed: injected write failure"));
    assert!(names(&maildir.join("tmp")).is_empty());
    assert!(names(&maildir.join("new")).is_empty());
}

#[test]
fn existing_maildir_is_used_as_is() {
    let home = tempfile::tempdir().expect("tempdir");
    let maildir = home.path().join("Maildir");
    for d in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(d)).expect("mkdir");
    }
    std::fs::write(maildir.join("cur/1.old:2,S"), b"old").expect("old message");
    deliver_maildir(&maildir, &msg(b"x\r\n"), &MaildirOptions::new("mx")).expect("delivered");
    assert_eq!(names(&maildir.join("cur")), vec!["1.old:2,S".to_string()]);
    assert_eq!(names(&maildir.join("new")).len(), 1);
}
