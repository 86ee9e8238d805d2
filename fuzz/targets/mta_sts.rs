//! The MTA-STS policy file (RFC 8461 §3.2) and the `_mta-sts` TXT record.
//!
//! Invariants: a parsed policy printed with `Display` parses to the same policy; `mx`
//! patterns are lower-case; max_age within the RFC limit; a parsed TXT record is one
//! `is_sts_txt` recognises.

use mailer_core::check::mta_sts::{is_sts_txt, parse, parse_txt, MAX_AGE_LIMIT};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if parse_txt(text).is_ok() {
        // Leading blanks are tolerated by the parser; the record itself must be `v=STSv1`.
        assert!(
            is_sts_txt(text.trim_start_matches([' ', '\t'])),
            "parsed a TXT record is_sts_txt refuses"
        );
    }
    let Ok(policy) = parse(text) else {
        return;
    };
    assert!(policy.max_age <= MAX_AGE_LIMIT);
    for mx in &policy.mx {
        assert_eq!(*mx, mx.to_ascii_lowercase(), "mx pattern not lower-case");
    }
    let printed = policy.to_string();
    assert_eq!(
        parse(&printed),
        Ok(policy),
        "the printed policy parses differently:\n{printed}"
    );
}
