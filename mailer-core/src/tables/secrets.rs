//! Secrets tables in OpenSMTPD's format: one `label user:password` per line, `#` comments.
//!
//! The label runs to the first blank; after the blanks that follow it, the rest of the line is
//! `user:password`, split at the first `:` (so a password may hold `:` and spaces). A relay
//! URL `smtp+tls://label@host` names the credentials to present.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::diagnostic::Diagnostic;

/// A user name and password for SMTP AUTH.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A parsed secrets table: label → credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secrets {
    entries: BTreeMap<String, Credentials>,
}

impl Secrets {
    /// Parses the text of a secrets table; `source` names it in diagnostics. Reports every bad
    /// line.
    pub fn parse(text: &str, source: &Path) -> Result<Secrets, Vec<Diagnostic>> {
        let mut entries: BTreeMap<String, Credentials> = BTreeMap::new();
        let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
        let mut errors = Vec::new();
        for (index, raw_line) in text.lines().enumerate() {
            let number = index + 1;
            // All trailing CRs: a file converted to CRLF twice must not put a CR in a password.
            let line = raw_line.trim_end_matches('\r');
            let content = line.trim_start_matches([' ', '\t']);
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let label_col = line.len() - content.len() + 1;
            let error = |col: usize, message: String| Diagnostic::new(source, number, col, message);
            let (label, rest) = content
                .split_once([' ', '\t'])
                .map(|(l, r)| (l, r.trim_start_matches([' ', '\t'])))
                .unwrap_or((content, ""));
            // Until the line has the `label user:password` shape, any word of it may be a
            // secret (`user:password` without its label, a password alone), and messages go
            // to the journal and to `systemctl status`: they name the position, never the text.
            if rest.is_empty() {
                errors.push(error(
                    label_col,
                    "a single word, no `label user:password` (the line is not shown: it may \
                     hold a secret)"
                        .to_string(),
                ));
                continue;
            }
            let value_col = line.len() - rest.len() + 1;
            let Some((user, password)) = rest.split_once(':') else {
                errors.push(error(
                    value_col,
                    "credentials have no `:`: expected `label user:password` (the line is not \
                     shown: it may hold a secret)"
                        .to_string(),
                ));
                continue;
            };
            if label.contains(':') {
                errors.push(error(
                    label_col,
                    "the label holds a `:`: expected `label user:password` (the line is not \
                     shown: it may hold a secret)"
                        .to_string(),
                ));
                continue;
            }
            if user.is_empty() {
                errors.push(error(value_col, format!("empty user name for `{label}`")));
                continue;
            }
            if password.is_empty() {
                errors.push(error(value_col, format!("empty password for `{label}`")));
                continue;
            }
            if let Some(first) = first_line.get(label) {
                errors.push(error(
                    label_col,
                    format!("duplicate label `{label}` (first on line {first})"),
                ));
                continue;
            }
            first_line.insert(label.to_string(), number);
            entries.insert(
                label.to_string(),
                Credentials {
                    user: user.to_string(),
                    password: password.to_string(),
                },
            );
        }
        if errors.is_empty() {
            Ok(Secrets { entries })
        } else {
            Err(errors)
        }
    }

    /// Reads a secrets table, refusing a file that group or others may read or write.
    pub fn load(path: &Path) -> Result<Secrets, Vec<Diagnostic>> {
        let whole = |message: String| vec![Diagnostic::whole_file(path, message)];
        let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read: {e}")))?;
        if !meta.is_file() {
            return Err(whole("not a regular file".to_string()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if let Some(problem) = exposure(mode) {
            return Err(whole(format!("{problem} (mode {mode:04o}); chmod 600 it")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read: {e}")))?;
        Secrets::parse(&text, path)
    }

    pub fn get(&self, label: &str) -> Option<&Credentials> {
        self.entries.get(label)
    }

    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Who besides the owner may touch a file of this mode, if anyone: the wider class first.
fn exposure(mode: u32) -> Option<String> {
    let (bits, who) = if mode & 0o007 != 0 {
        (mode & 0o007, "others")
    } else if mode & 0o070 != 0 {
        ((mode & 0o070) >> 3, "group")
    } else {
        return None;
    };
    let what = match (bits & 0o4 != 0, bits & 0o2 != 0) {
        (true, true) => "readable and writable",
        (true, false) => "readable",
        (false, true) => "writable",
        (false, false) => "accessible",
    };
    Some(format!("{what} by {who}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(text: &str) -> Result<Secrets, Vec<String>> {
        Secrets::parse(text, Path::new("secrets"))
            .map_err(|es| es.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn labels_users_and_passwords_split_as_opensmtpd_does() {
        let s = parse(
            "# relay credentials\n\
             \n\
             papmx ublog:s3cr:et\n\
             \tspaced \t user@example.org:pass word with spaces\r\n\
             other\tu:p",
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        let c = s.get("papmx").unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("ublog", "s3cr:et"));
        let c = s.get("spaced").unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("user@example.org", "pass word with spaces")
        );
        assert_eq!(s.get("other").unwrap().password, "p");
        assert_eq!(s.get("missing"), None);
        assert_eq!(s.labels().collect::<Vec<_>>(), ["other", "papmx", "spaced"]);
    }

    #[test]
    fn duplicate_labels_name_both_lines() {
        assert_eq!(
            parse("a u:p\n# c\n  a v:q\n").unwrap_err(),
            ["secrets:3:3: duplicate label `a` (first on line 1)"]
        );
    }

    #[test]
    fn bad_lines_are_all_reported_with_position() {
        assert_eq!(
            parse("lonely\nnocolon userpass\nx :pw\ny u:\nok u:p\n").unwrap_err(),
            [
                "secrets:1:1: a single word, no `label user:password` (the line is not shown: it may hold a secret)",
                "secrets:2:9: credentials have no `:`: expected `label user:password` (the line is not shown: it may hold a secret)",
                "secrets:3:3: empty user name for `x`",
                "secrets:4:3: empty password for `y`",
            ]
        );
    }

    #[test]
    fn a_malformed_line_is_never_echoed_in_the_error() {
        // The shapes an admin writes by mistake: no label, no user, a password alone.
        for text in [
            "papmx:hunter2secret\n",
            "hunter2secret\n",
            "papmx hunter2secret\n",
            "papmx:hunter2secret extrax:wordq\n",
        ] {
            let errors = parse(text).unwrap_err();
            assert_eq!(errors.len(), 1, "{text:?}");
            for secret in ["hunter2secret", "papmx", "extrax", "wordq"] {
                assert!(
                    !errors[0].contains(secret),
                    "{text:?} echoed: {}",
                    errors[0]
                );
            }
            assert!(errors[0].starts_with("secrets:1:"), "{}", errors[0]);
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credentials {
            user: "ublog".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{c:?}");
        assert_eq!(
            shown,
            "Credentials { user: \"ublog\", password: \"<redacted>\" }"
        );
        let s = parse("papmx ublog:hunter2").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s:#?}").contains("hunter2"));
    }

    fn write(dir: &Path, mode: u32, text: &str) -> PathBuf {
        let path = dir.join(format!("secrets-{mode:o}"));
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn load_refuses_a_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), 0o644, "papmx ublog:pw\n");
        let errors = Secrets::load(&path).unwrap_err();
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [format!(
                "{}: readable by others (mode 0644); chmod 600 it",
                path.display()
            )]
        );
    }

    #[test]
    fn load_refuses_group_access_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, expected) in [
            (0o640, "readable by group (mode 0640)"),
            (0o620, "writable by group (mode 0620)"),
            (0o660, "readable and writable by group (mode 0660)"),
            (0o602, "writable by others (mode 0602)"),
            (0o601, "accessible by others (mode 0601)"),
        ] {
            let path = write(dir.path(), mode, "a u:p\n");
            let errors = Secrets::load(&path).unwrap_err();
            assert_eq!(
                errors[0].to_string(),
                format!("{}: {expected}; chmod 600 it", path.display())
            );
        }
    }

    #[test]
    fn load_reads_a_private_file_and_reports_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), 0o600, "papmx ublog:pw\n");
        assert_eq!(
            Secrets::load(&path).unwrap().get("papmx").unwrap().user,
            "ublog"
        );
        let path = write(dir.path(), 0o400, "papmx ublog:pw\nbroken\n");
        assert_eq!(
            Secrets::load(&path).unwrap_err()[0].to_string(),
            format!(
                "{}:2:1: a single word, no `label user:password` (the line is not shown: it may hold a secret)",
                path.display()
            )
        );
    }

    #[test]
    fn load_of_a_missing_file_is_one_whole_file_diagnostic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let errors = Secrets::load(&path).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 0);
        assert!(errors[0]
            .to_string()
            .starts_with(&format!("{}: cannot read: ", path.display())));
    }
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    #[test]
    fn trailing_carriage_returns_are_not_part_of_the_password() {
        // Found by the secrets fuzz target: "p\r\r\n" kept a CR in the password, so the
        // table could not be written back and AUTH would fail.
        let s = Secrets::parse("papmx user:p\r\r\r\n", Path::new("secrets")).unwrap();
        assert_eq!(s.get("papmx").map(|c| c.password.as_str()), Some("p"));
    }
}
