//! The secrets table (`label user:password`, OpenSMTPD format).
//!
//! Invariants: a parsed table written back one `label user:password` line per entry parses
//! to the same table; every diagnostic names a line of the text.

use std::path::Path;

use mailer_core::tables::secrets::Secrets;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Path::new("/etc/mail/secrets");
    let secrets = match Secrets::parse(text, source) {
        Ok(s) => s,
        Err(diagnostics) => {
            let lines = text.split('\n').count();
            assert!(!diagnostics.is_empty(), "failure without a diagnostic");
            for d in &diagnostics {
                assert!(d.line >= 1 && d.line <= lines, "{d} outside the text");
            }
            return;
        }
    };
    let mut written = String::new();
    for label in secrets.labels() {
        let c = secrets.get(label).expect("a listed label has credentials");
        assert!(!label.is_empty() && !label.contains([' ', '\t', '\n']));
        assert!(!c.user.is_empty() && !c.user.contains(':'));
        assert!(!c.password.is_empty());
        // CRLF: a password may itself end in CR, which a lone LF would strip.
        written.push_str(&format!("{label} {}:{}\r\n", c.user, c.password));
    }
    assert_eq!(
        Secrets::parse(&written, source),
        Ok(secrets),
        "written back as {written:?}"
    );
}
