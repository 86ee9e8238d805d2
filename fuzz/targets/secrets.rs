//! The secrets table (`label user:password`, OpenSMTPD format).
//!
//! Invariants: a parsed table written back one `label user:password` line per entry parses
//! to the same table; every diagnostic names a line of the text; no diagnostic echoes secret
//! material. The last is checked by parsing a disguised copy of the text, the same in every
//! character a diagnostic may show (labels, blanks, `:`, line endings) and with every other
//! letter and digit changed: the diagnostics must be identical. A label is the first word of
//! a line with the `label user:password` shape (a `:` after the first blank); everything else
//! is secret, comments and lines without that shape included (`papmx:hunter2`, a password
//! alone, `label password`).

use std::path::Path;

use mailer_core::tables::secrets::Secrets;

const BLANKS: [char; 2] = [' ', '\t'];

/// The same kind of character, different: letters and digits rotate, the rest stays.
fn disguise(c: char) -> char {
    let rotate = |base: u8, len: u8| char::from(base + (c as u8 - base + 1) % len);
    match c {
        'a'..='z' => rotate(b'a', 26),
        'A'..='Z' => rotate(b'A', 26),
        '0'..='9' => rotate(b'0', 10),
        c => c,
    }
}

/// One line (its line ending included) with its secret parts disguised.
fn disguise_line(line: &str) -> String {
    let body_start = line.len() - line.trim_start_matches(BLANKS).len();
    let body = &line[body_start..];
    let (secret_from, label_is_secret) = if body.starts_with('#') {
        (body_start, true)
    } else {
        let label_end = body_start + body.find(BLANKS).unwrap_or(body.len());
        (label_end, !line[label_end..].contains(':'))
    };
    line.char_indices()
        .map(|(i, c)| {
            if i >= secret_from || (label_is_secret && i >= body_start) {
                disguise(c)
            } else {
                c
            }
        })
        .collect()
}

/// The diagnostics as printed.
fn shown<E: ToString>(parsed: &Result<Secrets, Vec<E>>) -> Vec<String> {
    match parsed {
        Ok(_) => Vec::new(),
        Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
    }
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Path::new("/etc/mail/secrets");
    let parsed = Secrets::parse(text, source);
    let disguised: String = text.split_inclusive('\n').map(disguise_line).collect();
    let (ours, theirs) = (shown(&parsed), shown(&Secrets::parse(&disguised, source)));
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "a diagnostic shows secret text of {text:?}");
    }
    assert_eq!(
        ours.len(),
        theirs.len(),
        "the diagnostics depend on secret text of {text:?}: {ours:?} vs {theirs:?}"
    );

    let secrets = match parsed {
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
