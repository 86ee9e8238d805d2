//! Mailbox parsing (RFC 5321 §4.1.2, RFC 6531): dot-strings, quoted local parts, address
//! literals, UTF-8.
//!
//! Invariants: a parsed address prints to a string that parses to the same address (with and
//! without SMTPUTF8 as it needs), builds the same from its parts, respects the length limits,
//! has a lower-case domain, and never holds CR, LF, NUL, `<` or `>` that could break out of
//! an SMTP command.

use mailer_core::address::{Address, MAX_DOMAIN, MAX_LOCAL_PART};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for utf8 in [false, true] {
        let Ok(address) = Address::parse_with(text, utf8) else {
            continue;
        };
        let printed = address.to_string();
        assert_eq!(
            Address::parse_with(&printed, address.is_utf8()),
            Ok(address.clone()),
            "{printed:?} does not parse back"
        );
        assert_eq!(
            Address::from_parts(address.local_part(), address.domain()),
            Ok(address.clone())
        );
        assert!(
            utf8 || !address.is_utf8(),
            "UTF-8 accepted without SMTPUTF8"
        );
        assert!(address.local_part().len() <= MAX_LOCAL_PART);
        assert!(address.domain().len() <= MAX_DOMAIN);
        assert_eq!(address.domain(), address.domain().to_ascii_lowercase());
        assert!(
            !printed.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "{printed:?} could break out of an SMTP command"
        );
        if !address.local_part().starts_with('"') {
            assert!(
                !printed.contains(['<', '>', ' ', '"']),
                "unquoted {printed:?} holds a delimiter"
            );
        }
        assert!(
            !address.user().contains('+'),
            "user() kept a +detail: {:?}",
            address.user()
        );
    }
}
