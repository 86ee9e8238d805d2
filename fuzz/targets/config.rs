//! The TOML configuration parser.
//!
//! Invariants: parsing is deterministic; a valid configuration re-serialized as TOML (keys
//! reordered, comments and layout dropped) parses to the same configuration; every
//! diagnostic points inside the text.

use std::path::Path;

use mailer_core::config::{Config, Positions};

fn without_positions(mut c: Config) -> Config {
    c.positions = Positions::default();
    c.warnings.clear();
    c
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Path::new("fuzz.toml");
    let parsed = Config::parse(text, source);
    assert_eq!(
        parsed,
        Config::parse(text, source),
        "parsing is not deterministic"
    );
    let config = match parsed {
        Ok(c) => c,
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "failure without a diagnostic");
            let lines = text.split('\n').count();
            for d in &diagnostics {
                let shown = d.to_string();
                assert!(
                    d.line <= lines,
                    "diagnostic {shown:?} points past the last line {lines}"
                );
            }
            return;
        }
    };
    let table: toml::Table = toml::from_str(text).expect("a valid configuration is valid TOML");
    let again = toml::to_string(&table).expect("a parsed TOML table serializes");
    let reparsed = Config::parse(&again, source)
        .unwrap_or_else(|e| panic!("re-serialized configuration fails: {e:?}\n{again}"));
    assert_eq!(
        without_positions(reparsed),
        without_positions(config),
        "re-serialized configuration differs:\n{again}"
    );
}
