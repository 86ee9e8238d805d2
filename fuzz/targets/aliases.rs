//! The aliases(5) parser and expansion.
//!
//! Input: either the text of an aliases file, or (first octet 0x80-0xBF, which no UTF-8 text
//! starts with) a program of octets that assembles a file from tokens chosen to hit the
//! quoting and escaping rules often: quotes, backslashes, blank quoted strings, `+detail`,
//! local and remote `@domain`, `:include:`, commas and continuation lines. `:include:` files
//! are read from a fixed set.
//!
//! Invariants: every error names a line of the file; each name defined expands without
//! running away (a loop or a too-deep chain is an error, not a hang) to at least one target;
//! expansions hold no duplicates and user names are lower-case and not blank; commands and
//! files appear only when permitted; no address in a local domain is left unexpanded.

use std::path::Path;

use mailer_core::tables::aliases::{AliasOptions, AliasTarget, Aliases};

/// `:include:` files by the end of their path.
const INCLUDED: &[(&str, &str)] = &[
    ("list", "# list members\nalice\nbob@example.org\n"),
    (
        "quoted",
        "\"john doe\", \\Carol+x, dave+y@ublog.tech\n  \"|/bin/inc arg\" , \"\\\\\"\n",
    ),
];

/// Pieces of an entry's text. Whole quoted strings and their parts are both here, so that
/// recombination yields every quoting shape (`\""`, `"\"`, `" "`, `"a"b`, ...).
const TOKENS: &[&str] = &[
    ", ",
    ",",
    ",\n  ",
    "\n\t",
    " ",
    "\"",
    "\\",
    "\\\"",
    "\"\"",
    "\" \"",
    "\"\t\"",
    "\"\\ \"",
    "\"\\\"\"",
    "\"\\\\\"",
    "\"\x0c\"",
    "+detail",
    "+",
    "@ublog.tech",
    "@localhost",
    "@UBLOG.Tech",
    "@example.org",
    "@",
    ":include:/etc/mail/list",
    ":include:/etc/mail/quoted",
    ":include:/etc/mail/missing",
    ":include:list",
    ":include:",
    "|/usr/bin/procmail -a x",
    "\"|/bin/cmd arg, more\"",
    "|",
    "/var/mail/box",
    "\"/var/mail/with space\"",
    "alice",
    "Bob",
    "root",
    "\\alice",
    "postmaster",
    "\"John Doe\"",
    "x",
    "#",
    ":",
    "\r",
    "\n",
];

/// How a new line starts: a name (plain, quoted, odd), a comment, a blank line.
const LINE_STARTS: &[&str] = &[
    "alice: ",
    "Bob:",
    "root: ",
    "postmaster: ",
    "list: ",
    "a+b: ",
    "\"john doe\": ",
    "\"\": ",
    "\"\\\"\": ",
    "\" \": ",
    "\"q\\\"n\": ",
    "x@y: ",
    "\\alice: ",
    "# /etc,minbox",
    "",
    "  ",
    "\t",
];

/// Token index that inserts the next program octet itself (any ASCII).
const LITERAL: usize = TOKENS.len();
/// Token index that ends the line and starts another.
const NEW_LINE: usize = TOKENS.len() + 1;

/// Assembles an aliases file from a program: each octet picks a token; a new line picks how
/// it starts with the octet after it.
fn assemble(program: &[u8]) -> String {
    let mut text = String::new();
    let mut octets = program.iter().map(|&b| usize::from(b));
    if let Some(start) = octets.next() {
        text.push_str(LINE_STARTS[start % LINE_STARTS.len()]);
    }
    while let Some(op) = octets.next() {
        match op % (TOKENS.len() + 2) {
            LITERAL => {
                if let Some(b) = octets.next() {
                    text.push(char::from((b & 0x7f) as u8));
                }
            }
            NEW_LINE => {
                text.push('\n');
                let start = octets.next().unwrap_or(0);
                text.push_str(LINE_STARTS[start % LINE_STARTS.len()]);
            }
            token => text.push_str(TOKENS[token]),
        }
    }
    text.push('\n');
    text
}

pub fn run(data: &[u8]) {
    match data {
        [0x80..=0xbf, program @ ..] => check(&assemble(program)),
        _ => {
            if let Ok(text) = std::str::from_utf8(data) {
                check(text);
            }
        }
    }
}

fn check(text: &str) {
    let source = Path::new("/etc/aliases");
    let lines = text.split('\n').count();
    for opts in [
        AliasOptions::default(),
        AliasOptions {
            allow_commands: true,
            allow_files: true,
        },
    ] {
        let mut load = |p: &Path| match INCLUDED.iter().find(|(name, _)| p.ends_with(name)) {
            Some((_, text)) => Ok(text.to_string()),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        let aliases = match Aliases::parse_with_loader(text, source, opts, &mut load) {
            Ok(a) => a,
            Err(errors) => {
                assert!(!errors.is_empty(), "failure without an error");
                for e in errors.iter().filter(|e| e.file == source) {
                    assert!(
                        e.line <= lines,
                        "error {e} past the last line {lines} of {text:?}"
                    );
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
            assert!(
                !targets.is_empty(),
                "alias {name:?} expands to nothing in {text:?}"
            );
            for (i, t) in targets.iter().enumerate() {
                assert!(
                    !targets[..i].contains(t),
                    "duplicate target {t:?} of {name:?} in {text:?}"
                );
                match t {
                    AliasTarget::User(u) => {
                        assert!(
                            !u.trim().is_empty(),
                            "blank user name {u:?} from {name:?} in {text:?}"
                        );
                        assert_eq!(*u, u.to_lowercase(), "user name not lower-case in {text:?}");
                    }
                    AliasTarget::Command(_) => assert!(opts.allow_commands, "command not allowed"),
                    AliasTarget::File(_) => assert!(opts.allow_files, "file not allowed"),
                    AliasTarget::Address(a) => assert!(
                        !local_domains.iter().any(|d| d == a.domain()),
                        "local address {a} left unexpanded in {text:?}"
                    ),
                }
            }
        }
    }
}
