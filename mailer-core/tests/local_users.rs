//! User lookup in the system password database.

use std::path::PathBuf;

use mailer_core::tables::users::lookup_user;

#[test]
fn root_is_found_with_uid_zero_and_its_home() {
    let root = lookup_user("root")
        .expect("passwd readable")
        .expect("root exists");
    assert_eq!(root.name, "root");
    assert_eq!((root.uid, root.gid), (0, 0));
    // The home passwd gives, whatever it is on this machine.
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let home = passwd
        .lines()
        .find_map(|l| l.strip_prefix("root:"))
        .and_then(|rest| rest.split(':').nth(4))
        .expect("root line has a home field");
    assert_eq!(root.home, PathBuf::from(home));
}

#[test]
fn unknown_user_is_none() {
    assert_eq!(
        lookup_user("no-such-user-mailer-test").expect("lookup"),
        None
    );
    assert_eq!(lookup_user("").expect("lookup"), None);
}

#[test]
fn name_with_nul_is_none() {
    assert_eq!(lookup_user("ro\0ot").expect("lookup"), None);
}
