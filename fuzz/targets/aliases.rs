//! The aliases(5) parser and expansion.
//!
//! Input: the text of an aliases file; `:include:` files read as a fixed list. Invariants:
//! every error names a line of the file; each name defined expands without running away
//! (a loop or a too-deep chain is an error, not a hang); expansions hold no duplicates and
//! user names are lower-case and non-empty; commands and files appear only when permitted.

use std::path::Path;

use mailer_core::tables::aliases::{AliasOptions, AliasTarget, Aliases};

const INCLUDED: &str = "# list members\nalice\nbob@example.org\n";

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Path::new("/etc/aliases");
    let lines = text.split('\n').count();
    for opts in [
        AliasOptions::default(),
        AliasOptions {
            allow_commands: true,
            allow_files: true,
        },
    ] {
        let mut load = |p: &Path| {
            if p.ends_with("list") {
                Ok(INCLUDED.to_string())
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::NotFound))
            }
        };
        let aliases = match Aliases::parse_with_loader(text, source, opts, &mut load) {
            Ok(a) => a,
            Err(errors) => {
                assert!(!errors.is_empty(), "failure without an error");
                for e in errors.iter().filter(|e| e.file == source) {
                    assert!(e.line <= lines, "error {e} past the last line {lines}");
                }
                continue;
            }
        };
        let local_domains = ["localhost".to_string(), "ublog.tech".to_string()];
        for line in text.lines() {
            let Some((name, _)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim();
            if name.is_empty() || !aliases.contains(name) {
                continue;
            }
            let at = aliases.line_of(name).expect("a contained alias has a line");
            assert!(
                at >= 1 && at <= lines,
                "alias {name:?} on line {at} of {lines}"
            );
            let Ok(Some(targets)) = aliases.expand(name, &local_domains) else {
                continue;
            };
            for (i, t) in targets.iter().enumerate() {
                assert!(!targets[..i].contains(t), "duplicate target {t:?}");
                match t {
                    AliasTarget::User(u) => {
                        assert!(!u.is_empty(), "empty user name");
                        assert_eq!(*u, u.to_lowercase(), "user name not lower-case");
                    }
                    AliasTarget::Command(_) => assert!(opts.allow_commands, "command not allowed"),
                    AliasTarget::File(_) => assert!(opts.allow_files, "file not allowed"),
                    AliasTarget::Address(a) => assert!(
                        !local_domains.iter().any(|d| d == a.domain()),
                        "local address {a} left unexpanded"
                    ),
                }
            }
        }
    }
}
