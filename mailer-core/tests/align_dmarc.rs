//! DMARC identifier alignment of the header From with the envelope sender (RFC 7489 §3.1),
//! and how the author domain is read from hostile or ambiguous headers (§6.6.1).

use mailer_core::address::Address;
use mailer_core::policy::align::{
    aligned, check_alignment, header_from_domain, organizational_domain, Alignment, AlignmentMode,
    FromError, MAX_HEADER_SECTION,
};
use proptest::prelude::*;

use AlignmentMode::{Relaxed, Strict};

#[test]
fn strict_and_relaxed_alignment_tables() {
    // (header From domain, envelope domain, strict, relaxed)
    let table = [
        ("ublog.tech", "ublog.tech", true, true),
        ("ublog.tech", "mail.ublog.tech", false, true),
        ("mail.ublog.tech", "ublog.tech", false, true),
        ("a.ublog.tech", "b.ublog.tech", false, true),
        ("ublog.tech", "ublog.social", false, false),
        ("UBlog.Tech", "ublog.TECH", true, true),
        ("ublog.tech.", "ublog.tech", true, true),
        ("ublog.tech", "MAIL.ublog.tech.", false, true),
        ("example.co.uk", "example.co.uk", true, true),
        ("example.co.uk", "mail.example.co.uk", false, true),
        // Two registrants under one public suffix share nothing.
        ("example.co.uk", "other.co.uk", false, false),
        ("co.uk", "example.co.uk", false, false),
        ("alice.github.io", "bob.github.io", false, false),
        ("alice.github.io", "mail.alice.github.io", false, true),
        ("", "ublog.tech", false, false),
        ("ublog.tech", "", false, false),
    ];
    for (header, envelope, strict, relaxed) in table {
        assert_eq!(
            aligned(header, envelope, Strict),
            strict,
            "strict {header} / {envelope}"
        );
        assert_eq!(
            aligned(header, envelope, Relaxed),
            relaxed,
            "relaxed {header} / {envelope}"
        );
    }
}

#[test]
fn organizational_domain_is_one_label_below_the_public_suffix() {
    assert_eq!(organizational_domain("ublog.tech"), "ublog.tech");
    assert_eq!(organizational_domain("mail.ublog.tech"), "ublog.tech");
    assert_eq!(organizational_domain("a.b.example.co.uk"), "example.co.uk");
    assert_eq!(organizational_domain("Mail.Example.COM."), "example.com");
    assert_eq!(organizational_domain("co.uk"), "co.uk");
    assert_eq!(
        organizational_domain("x.alice.github.io"),
        "alice.github.io"
    );
}

#[test]
fn relaxed_is_the_default_mode_and_the_config_spells_it_in_lower_case() {
    assert_eq!(AlignmentMode::default(), Relaxed);
    #[derive(serde::Deserialize)]
    struct Cfg {
        mode: AlignmentMode,
    }
    let cfg: Cfg = toml::from_str("mode = \"strict\"").expect("strict parses");
    assert_eq!(cfg.mode, Strict);
    let cfg: Cfg = toml::from_str("mode = \"relaxed\"").expect("relaxed parses");
    assert_eq!(cfg.mode, Relaxed);
}

fn domain(message: &str) -> Result<String, FromError> {
    header_from_domain(message.as_bytes())
}

#[test]
fn header_from_domain_is_lower_cased_and_ignores_display_names() {
    assert_eq!(
        domain("From: Alice <Alice@UBlog.Tech>\r\nTo: bob@example.org\r\n\r\nhi\r\n"),
        Ok("ublog.tech".into())
    );
    // Encoded-word display name, absolute domain, LF line ends.
    assert_eq!(
        domain("From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@Example.ORG.>\n\nbody\n"),
        Ok("example.org".into())
    );
    // An address-like display name or comment must not be taken for the author.
    assert_eq!(
        domain("From: \"ceo@bank.example\" <x@ublog.tech>\r\n\r\n"),
        Ok("ublog.tech".into())
    );
    assert_eq!(
        domain("From: x@ublog.tech (ceo@bank.example)\r\n\r\n"),
        Ok("ublog.tech".into())
    );
    assert_eq!(
        domain("from : x@ublog.tech\r\n\r\n"),
        Ok("ublog.tech".into())
    );
    // IDNs are compared as given, lower-cased.
    assert_eq!(
        domain("From: x@BÜCHER.example\r\n\r\n"),
        Ok("bücher.example".into())
    );
    // A message of headers only, the last one unterminated.
    assert_eq!(domain("From: x@ublog.tech"), Ok("ublog.tech".into()));
}

#[test]
fn several_from_fields_or_mailboxes_are_reported_not_guessed() {
    assert_eq!(
        domain("From: a@ublog.tech\r\nFROM: b@evil.example\r\n\r\n"),
        Err(FromError::MultipleFields(2))
    );
    assert_eq!(
        domain("From: a@ublog.tech, b@evil.example\r\n\r\n"),
        Err(FromError::MultipleAddresses(2))
    );
    assert_eq!(
        domain("From: Team: a@ublog.tech;\r\n\r\n"),
        Err(FromError::Group)
    );
    assert_eq!(
        domain("From: undisclosed-recipients:;\r\n\r\n"),
        Err(FromError::Group)
    );
    assert_eq!(
        domain("From: a@b@evil.example\r\n\r\n"),
        Err(FromError::InvalidAddress("a@b@evil.example".into()))
    );
    assert_eq!(
        domain("From: x@[192.0.2.1]\r\n\r\n"),
        Err(FromError::InvalidDomain("[192.0.2.1]".into()))
    );
    assert_eq!(domain("From: Alice\r\n\r\n"), Err(FromError::NoAddress));
    assert_eq!(domain("From: <>\r\n\r\n"), Err(FromError::NoAddress));
}

#[test]
fn from_in_the_body_only_is_no_header_from() {
    assert_eq!(
        domain("Subject: hi\r\nTo: bob@example.org\r\n\r\nFrom: a@ublog.tech\r\n"),
        Err(FromError::Missing)
    );
    assert_eq!(
        domain("Subject: hi\n\nFrom: a@ublog.tech\n"),
        Err(FromError::Missing)
    );
    assert_eq!(domain(""), Err(FromError::Missing));
    // A From that only a later "header section" would hold, after an empty first line.
    assert_eq!(
        domain("\r\nFrom: a@ublog.tech\r\n"),
        Err(FromError::Missing)
    );
}

#[test]
fn an_endless_header_section_is_refused_not_scanned() {
    let mut message = b"Subject: x\r\nX-Filler: ".to_vec();
    message.extend(std::iter::repeat_n(b'a', MAX_HEADER_SECTION));
    message.extend_from_slice(b"\r\nFrom: a@ublog.tech\r\n\r\n");
    assert_eq!(
        header_from_domain(&message),
        Err(FromError::HeaderSectionTooLarge)
    );
    // A large body does not matter: only the header section is read.
    let mut message = b"From: a@ublog.tech\r\n\r\n".to_vec();
    message.extend(std::iter::repeat_n(b'b', 2 * MAX_HEADER_SECTION));
    assert_eq!(header_from_domain(&message), Ok("ublog.tech".into()));
}

#[test]
fn errors_name_the_field_at_fault() {
    assert_eq!(
        FromError::MultipleFields(2).to_string(),
        "2 From: header fields (one allowed)"
    );
    assert_eq!(
        FromError::InvalidDomain("[192.0.2.1]".into()).to_string(),
        "From: domain \"[192.0.2.1]\" is not a host name"
    );
}

#[test]
fn check_alignment_against_the_rewritten_envelope_sender() {
    let message = b"From: Alice <alice@ublog.tech>\r\nSubject: hi\r\n\r\nbody\r\n";
    let bounces = Address::parse("bounces@mail.ublog.tech").expect("valid");
    let relay = Address::parse("relay@smtp.provider.example").expect("valid");

    assert_eq!(
        check_alignment(message, Some(&bounces), Relaxed),
        Alignment::Aligned
    );
    assert_eq!(
        check_alignment(message, Some(&bounces), Strict),
        Alignment::Misaligned {
            header_domain: "ublog.tech".into(),
            envelope_domain: "mail.ublog.tech".into(),
        }
    );
    assert_eq!(
        check_alignment(message, Some(&relay), Relaxed),
        Alignment::Misaligned {
            header_domain: "ublog.tech".into(),
            envelope_domain: "smtp.provider.example".into(),
        }
    );
    assert_eq!(
        check_alignment(message, None, Strict),
        Alignment::NullSender
    );
    assert_eq!(
        check_alignment(
            b"Subject: hi\r\n\r\nFrom: a@ublog.tech\r\n",
            Some(&bounces),
            Relaxed
        ),
        Alignment::NoHeaderFrom(FromError::Missing)
    );
}

fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>(),
            2 => Just(b'\r'),
            2 => Just(b'\n'),
            1 => Just(b':'),
            1 => Just(b'@'),
            1 => Just(b'<'),
            1 => Just(b'"'),
            1 => Just(b','),
        ],
        0..1024,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn hostile_messages_never_panic_and_any_domain_found_is_a_host_name(
        prefix in hostile_bytes(),
        from in hostile_bytes(),
        rest in hostile_bytes(),
        strict in any::<bool>(),
    ) {
        let mut message = prefix;
        message.extend_from_slice(b"\r\nFrom: ");
        message.extend_from_slice(&from);
        message.extend_from_slice(&rest);
        if let Ok(domain) = header_from_domain(&message) {
            prop_assert!(!domain.is_empty());
            prop_assert_eq!(domain.to_lowercase(), domain.clone());
            prop_assert!(!domain.ends_with('.'));
            prop_assert!(!domain.chars().any(|c| c.is_whitespace() || c.is_control() || c == '@'));
        }
        let sender = Address::parse("bounces@ublog.tech").expect("valid");
        let mode = if strict { Strict } else { Relaxed };
        let _ = check_alignment(&message, Some(&sender), mode);
    }
}
