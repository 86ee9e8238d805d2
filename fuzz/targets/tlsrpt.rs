//! The TLS-RPT record parser (RFC 8460 §3).
//!
//! Invariants: a parsed record has at least one `mailto:` or `https:` URI (schemes in any
//! case); written back as
//! `v=TLSRPTv1; rua=URI,URI` it parses to the same record.

use mailer_core::check::tlsrpt::{is_tlsrpt, parse};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(record) = parse(text) else {
        return;
    };
    // Leading blanks are tolerated by the parser; the record itself must be `v=TLSRPTv1`.
    assert!(
        is_tlsrpt(text.trim_start_matches([' ', '\t'])),
        "parsed a record is_tlsrpt refuses"
    );
    assert!(!record.rua.is_empty(), "a record without rua");
    for uri in &record.rua {
        // URI schemes are case-insensitive (RFC 3986 §3.1).
        let lower = uri.to_ascii_lowercase();
        assert!(
            lower.starts_with("mailto:") || lower.starts_with("https://"),
            "{uri:?} is neither mailto: nor https:"
        );
    }
    let written = format!("v=TLSRPTv1; rua={}", record.rua.join(","));
    assert_eq!(
        parse(&written),
        Ok(record),
        "{written:?} parses differently"
    );
}
