//! `mailer config import`: the smtpd.conf and main.cf readers, and the address tables of match
//! rules. The first byte picks the format (detected, smtpd, postfix); the rest is the file,
//! and also what any lookup table the file names holds.
//!
//! Invariants: the translation is deterministic; it is always valid TOML (every quoted line
//! stays inside its comment); a translation that says it is complete is a configuration
//! mailer accepts; every line it names is a line of the input. Address-table patterns print
//! back to themselves.

use std::path::Path;

use mailer_core::config::import::{import, Format, Options};
use mailer_core::config::{AddressPattern, Config};
use mailer_core::tables::addresses::AddressTable;

pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = match selector % 3 {
        0 => None,
        1 => Some(Format::Smtpd),
        _ => Some(Format::Postfix),
    };
    let read = |_: &Path| Some(text.to_string());
    let options = Options {
        format,
        hostname: (selector & 0x80 != 0).then(|| "mx.example.org".to_string()),
        read: &read,
    };
    let first = import(text, &options);
    let again = import(text, &options);
    match (&first, &again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.toml, b.toml, "translation is not deterministic");
            assert_eq!(a.unsupported, b.unsupported);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("translation is not deterministic"),
    }
    if let Ok(t) = first {
        if let Err(e) = toml::from_str::<toml::Table>(&t.toml) {
            panic!("the translation is not TOML: {e}\n{}", t.toml);
        }
        let lines = text.lines().count().max(1);
        for u in &t.unsupported {
            assert!(u.line <= lines, "line {} named of {lines}", u.line);
        }
        if t.complete() {
            if let Err(e) = Config::parse(&t.toml, Path::new("out.toml")) {
                panic!("a complete translation is refused: {e:?}\n{}", t.toml);
            }
        }
    }
    if let Ok(table) = AddressTable::parse(text, Path::new("fuzz")) {
        for p in &table.patterns {
            assert_eq!(
                AddressPattern::parse(&p.to_string()).as_ref(),
                Ok(p),
                "pattern {p} does not print back to itself"
            );
        }
    }
}
