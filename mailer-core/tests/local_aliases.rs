//! The aliases(5) table: parsing, every error with its line, and expansion.

use std::path::{Path, PathBuf};

use mailer_core::address::Address;
use mailer_core::tables::aliases::{AliasOptions, AliasTarget, Aliases, ExpandError};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/aliases")
        .join(name)
}

fn local_domains() -> Vec<String> {
    vec!["localhost".to_string(), "ublog.tech".to_string()]
}

fn good() -> Aliases {
    Aliases::load(&data("good.aliases"), AliasOptions::default()).expect("good.aliases parses")
}

fn user(name: &str) -> AliasTarget {
    AliasTarget::User(name.to_string())
}

fn remote(addr: &str) -> AliasTarget {
    AliasTarget::Address(Address::parse(addr).expect("test address is valid"))
}

fn expand(aliases: &Aliases, local: &str) -> Option<Vec<AliasTarget>> {
    aliases
        .expand(local, &local_domains())
        .expect("expansion succeeds")
}

fn parse(text: &str, opts: AliasOptions) -> Result<Aliases, Vec<String>> {
    Aliases::parse(text, Path::new("/etc/mail/aliases"), opts)
        .map_err(|errs| errs.iter().map(ToString::to_string).collect())
}

fn errors(text: &str) -> Vec<String> {
    match parse(text, AliasOptions::default()) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn self_reference_means_the_user_and_chains_are_followed() {
    let a = good();
    assert_eq!(expand(&a, "root"), Some(vec![user("root"), user("pim")]));
    // MAILER-DAEMON -> postmaster -> root -> (root, pim)
    assert_eq!(
        expand(&a, "MAILER-DAEMON"),
        Some(vec![user("root"), user("pim")])
    );
    assert_eq!(expand(&a, "webmaster"), Some(vec![user("pim")]));
}

#[test]
fn continuation_lines_remote_and_local_domain_addresses() {
    let a = good();
    // abuse: admin (-> pim@localhost -> pim, \ops), security@example.org, abuse-desk@ublog.tech
    assert_eq!(
        expand(&a, "abuse"),
        Some(vec![
            user("pim"),
            user("ops"),
            remote("security@example.org"),
            user("abuse-desk"),
        ])
    );
}

#[test]
fn lookup_ignores_case_and_falls_back_from_detail() {
    let a = good();
    assert_eq!(expand(&a, "ROOT"), expand(&a, "root"));
    assert_eq!(expand(&a, "Root+cron"), expand(&a, "root"));
    assert_eq!(expand(&a, "nobody"), None);
    assert_eq!(expand(&a, "nobody+x"), None);
    assert!(a.contains("PostMaster"));
    assert!(a.contains("abuse+spam"));
    assert!(!a.contains("pim"));
}

#[test]
fn quoted_names_and_targets() {
    let a = good();
    let expected = Some(vec![user("jdoe"), user("mary ann")]);
    assert_eq!(expand(&a, "\"John Doe\""), expected);
    assert_eq!(expand(&a, "john doe"), expected);
}

#[test]
fn duplicates_are_removed_keeping_first_occurrence() {
    let a = good();
    // team: pim, admin (-> pim, ops), root (-> root, pim)
    assert_eq!(
        expand(&a, "team"),
        Some(vec![user("pim"), user("ops"), user("root")])
    );
}

#[test]
fn comments_and_blank_lines_are_ignored() {
    let a = good();
    assert_eq!(a.len(), 10);
    assert_eq!(a.line_of("root"), Some(4));
    assert_eq!(a.line_of("abuse"), Some(9));
}

#[test]
fn loops_are_reported_with_their_chain() {
    let a = parse("a: b\nb: c, x\nc: a\n", AliasOptions::default()).expect("parses");
    assert_eq!(
        a.expand("a", &[]),
        Err(ExpandError::Loop(vec![
            "a".to_string(),
            "b".to_string(),
            "c".to_string(),
            "a".to_string()
        ]))
    );
    let err = a.expand("b", &[]).expect_err("loop from b too");
    assert_eq!(err.to_string(), "alias loop: b -> c -> a -> b");
}

#[test]
fn loop_through_a_local_domain_address_is_detected() {
    let a = parse("a: b@localhost\nb: a\n", AliasOptions::default()).expect("parses");
    assert!(matches!(
        a.expand("a", &local_domains()),
        Err(ExpandError::Loop(_))
    ));
    // Without localhost among the local domains, b@localhost is a remote address.
    assert_eq!(a.expand("a", &[]), Ok(Some(vec![remote("b@localhost")])));
}

#[test]
fn depth_is_bounded() {
    let text: String = (0..40).map(|i| format!("a{i}: a{}\n", i + 1)).collect();
    let a = parse(&text, AliasOptions::default()).expect("parses");
    match a.expand("a0", &[]) {
        Err(ExpandError::TooDeep(chain)) => assert_eq!(chain.len(), 32),
        other => panic!("expected TooDeep, got {other:?}"),
    }
    assert_eq!(a.expand("a20", &[]), Ok(Some(vec![user("a40")])));
}

#[test]
fn backslash_target_is_a_user_even_if_an_alias_has_the_name() {
    let a = parse(
        "pim: \\pim, archive\narchive: store\n",
        AliasOptions::default(),
    )
    .expect("parses");
    assert_eq!(
        a.expand("pim", &[]),
        Ok(Some(vec![user("pim"), user("store")]))
    );
}

#[test]
fn include_lists_are_read_at_load_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("staff.list");
    std::fs::write(&list, "# staff\npim, bob\n\nalice@example.org\nPim\n").expect("write list");
    let main = dir.path().join("aliases");
    std::fs::write(
        &main,
        format!("staff: :include:{}\nall: staff, carol\n", list.display()),
    )
    .expect("write aliases");
    let a = Aliases::load(&main, AliasOptions::default()).expect("parses");
    assert_eq!(
        a.expand("all", &[]),
        Ok(Some(vec![
            user("pim"),
            user("bob"),
            remote("alice@example.org"),
            user("carol"),
        ]))
    );
    assert_eq!(a.files(), &[main.clone(), list.clone()]);
}

#[test]
fn include_errors_name_the_right_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("bad.list");
    std::fs::write(&list, "pim\n|/bin/sh\n").expect("write list");
    let missing = dir.path().join("missing.list");
    let text = format!(
        "# lists\nstaff: :include:{}\nghosts: :include:{}\nrel: :include:lists/x\n",
        list.display(),
        missing.display()
    );
    let main = dir.path().join("aliases");
    let errs: Vec<String> = Aliases::parse(&text, &main, AliasOptions::default())
        .expect_err("errors")
        .iter()
        .map(ToString::to_string)
        .collect();
    let m = main.display();
    assert_eq!(
        errs,
        vec![
            format!(
                "{m}:3: cannot read :include: file {}: No such file or directory (os error 2)",
                missing.display()
            ),
            format!("{m}:4: :include: needs an absolute path, not `lists/x`"),
            format!(
                "{}:2: command target `|/bin/sh` refused: the action does not set allow_commands",
                list.display()
            ),
        ]
    );
}

#[test]
fn include_through_a_custom_loader() {
    let mut calls = Vec::new();
    let a = Aliases::parse_with_loader(
        "ops: :include:/lists/ops\n",
        Path::new("/etc/aliases"),
        AliasOptions::default(),
        &mut |p: &Path| {
            calls.push(p.to_path_buf());
            Ok("anna,ben".to_string())
        },
    )
    .expect("parses");
    assert_eq!(calls, vec![PathBuf::from("/lists/ops")]);
    assert_eq!(
        a.expand("ops", &[]),
        Ok(Some(vec![user("anna"), user("ben")]))
    );
}

#[test]
fn every_syntax_error_is_reported_with_its_line() {
    let path = data("bad.aliases");
    let errs: Vec<String> = Aliases::load(&path, AliasOptions::default())
        .expect_err("bad.aliases has errors")
        .iter()
        .map(ToString::to_string)
        .collect();
    let f = path.display();
    let expected = vec![
        format!("{f}:2: continuation line (leading whitespace) without an alias before it"),
        format!("{f}:3: missing ':' after alias name"),
        format!("{f}:4: empty alias name"),
        format!("{f}:5: alias `empty` has no targets"),
        format!("{f}:6: unterminated quote in alias name"),
        format!("{f}:7: unterminated quote in `\"pim, bob`"),
        format!(
            "{f}:8: command target `|/usr/bin/procmail` refused: the action does not set allow_commands"
        ),
        format!(
            "{f}:9: file target `/var/log/mail.copy` refused: the action does not set allow_files"
        ),
        format!("{f}:10: alias name `two words` contains whitespace (quote it)"),
        format!("{f}:11: invalid address `pim@`: empty domain"),
        format!("{f}:13: alias `ok` already defined at line 12"),
        format!("{f}:14: target `pim bob` contains whitespace (missing comma?)"),
    ];
    assert_eq!(errs, expected);
}

#[test]
fn commands_and_files_are_accepted_when_the_action_allows_them() {
    let text =
        "pipe: |/usr/bin/procmail -d pim\nquoted: \"|/usr/bin/x a, b\"\nfile: /var/log/mail.copy\n";
    let opts = AliasOptions {
        allow_commands: true,
        allow_files: true,
    };
    let a = parse(text, opts).expect("parses");
    assert_eq!(
        a.expand("pipe", &[]),
        Ok(Some(vec![AliasTarget::Command(
            "/usr/bin/procmail -d pim".to_string()
        )]))
    );
    assert_eq!(
        a.expand("quoted", &[]),
        Ok(Some(vec![AliasTarget::Command(
            "/usr/bin/x a, b".to_string()
        )]))
    );
    assert_eq!(
        a.expand("file", &[]),
        Ok(Some(vec![AliasTarget::File(PathBuf::from(
            "/var/log/mail.copy"
        ))]))
    );
    // Commands allowed, files not: only the file is refused.
    let only_commands = AliasOptions {
        allow_commands: true,
        allow_files: false,
    };
    assert_eq!(
        parse(text, only_commands).err(),
        Some(vec![
            "/etc/mail/aliases:3: file target `/var/log/mail.copy` refused: the action does not set allow_files".to_string()
        ])
    );
}

#[test]
fn unreadable_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent");
    let errs = Aliases::load(&path, AliasOptions::default()).expect_err("absent");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 0);
    assert_eq!(
        errs[0].to_string(),
        format!(
            "{}: cannot read: No such file or directory (os error 2)",
            path.display()
        )
    );
}

#[test]
fn empty_target_list_on_last_line_and_continued_list() {
    assert_eq!(
        errors("a: b\nlast:\n"),
        vec!["/etc/mail/aliases:2: alias `last` has no targets"]
    );
    // A name alone on its line with targets on continuation lines is fine.
    let a = parse("list:\n  pim,\n  bob\n", AliasOptions::default()).expect("parses");
    assert_eq!(
        a.expand("list", &[]),
        Ok(Some(vec![user("pim"), user("bob")]))
    );
}

#[test]
fn address_named_alias_is_refused() {
    assert_eq!(
        errors("pim@ublog.tech: pim\n"),
        vec!["/etc/mail/aliases:1: alias name `pim@ublog.tech` is an address; aliases(5) names are local parts"]
    );
}
