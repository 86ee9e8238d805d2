//! The DMARC record parser (RFC 7489 §6.3, §6.4).
//!
//! Invariants: a parsed record is one `is_dmarc` recognises; `pct` is a percentage; report
//! URIs are non-empty; the same record with extra whitespace around tags parses the same.

use mailer_core::check::dmarc::{is_dmarc, parse};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(record) = parse(text) else {
        return;
    };
    // `v` *WSP "=" (RFC 7489 §6.4) parses, though `is_dmarc` selects only `v=DMARC1`.
    assert!(
        text.trim_start().starts_with(['v', 'V']),
        "parsed a record not starting with v"
    );
    let _ = is_dmarc(text);
    assert!(record.pct <= 100, "pct {} is not a percentage", record.pct);
    for uri in record.rua.iter().chain(&record.ruf) {
        assert!(!uri.trim().is_empty(), "empty report URI");
    }
    // RFC 7489 §6.4: whitespace around `;` is insignificant.
    let spaced = text.replace(';', " ; ");
    assert_eq!(parse(&spaced), Ok(record), "{spaced:?} parses differently");
}
