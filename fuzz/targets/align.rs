//! Header-From extraction and DMARC alignment.
//!
//! Invariants: an extracted domain is a lower-case host name; a message is aligned with an
//! envelope sender at its own From domain in both modes; strict alignment implies relaxed;
//! a null sender is never judged on headers.

use mailer_core::address::Address;
use mailer_core::policy::align::{
    aligned, check_alignment, header_from_domain, Alignment, AlignmentMode,
};

pub fn run(data: &[u8]) {
    let other = Address::parse("bounce@mail.ublog.tech").expect("literal address");
    assert_eq!(
        check_alignment(data, None, AlignmentMode::Strict),
        Alignment::NullSender
    );
    let strict = check_alignment(data, Some(&other), AlignmentMode::Strict);
    let relaxed = check_alignment(data, Some(&other), AlignmentMode::Relaxed);
    if strict == Alignment::Aligned {
        assert_eq!(
            relaxed,
            Alignment::Aligned,
            "strict alignment but not relaxed"
        );
    }
    match header_from_domain(data) {
        Ok(domain) => {
            assert!(!domain.is_empty());
            assert_eq!(domain, domain.to_ascii_lowercase(), "domain not lower-case");
            assert!(
                !domain.contains(|c: char| c.is_whitespace() || c.is_control() || c == '@'),
                "{domain:?} is not a host name"
            );
            assert!(aligned(&domain, &domain, AlignmentMode::Strict));
            if let Ok(own) = Address::from_parts("noreply", &domain) {
                for mode in [AlignmentMode::Strict, AlignmentMode::Relaxed] {
                    assert_eq!(
                        check_alignment(data, Some(&own), mode),
                        Alignment::Aligned,
                        "not aligned with its own From domain {domain}"
                    );
                }
            }
        }
        Err(e) => {
            assert!(
                matches!(relaxed, Alignment::NoHeaderFrom(ref r) if *r == e),
                "check_alignment disagrees with header_from_domain"
            );
        }
    }
}
