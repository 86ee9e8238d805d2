//! Address tables for match rules (`mail_from = { table = "NAME" }`): one `user@domain` or
//! `@domain` per line, `#` comments and blank lines ignored, as OpenSMTPD's mailaddr tables.

use std::path::Path;

use crate::config::AddressPattern;
use crate::diagnostic::Diagnostic;

/// The patterns of one table, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressTable {
    pub patterns: Vec<AddressPattern>,
}

impl AddressTable {
    /// Parses the text of a table; `source` names it in diagnostics. Reports every bad line.
    pub fn parse(text: &str, source: &Path) -> Result<AddressTable, Vec<Diagnostic>> {
        let mut patterns = Vec::new();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or("");
            let entry = content.trim();
            if entry.is_empty() {
                continue;
            }
            let col = content.len() - content.trim_start().len() + 1;
            if entry.contains(char::is_whitespace) {
                errors.push(Diagnostic::new(
                    source,
                    i + 1,
                    col,
                    format!("`{entry}`: one address per line"),
                ));
                continue;
            }
            match AddressPattern::parse(entry) {
                Ok(p) if !patterns.contains(&p) => patterns.push(p),
                Ok(_) => {}
                Err(why) => errors.push(Diagnostic::new(source, i + 1, col, why)),
            }
        }
        if errors.is_empty() {
            Ok(AddressTable { patterns })
        } else {
            Err(errors)
        }
    }

    /// Reads and parses a table file.
    pub fn load(path: &Path) -> Result<AddressTable, Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::whole_file(path, format!("cannot read: {e}"))])?;
        AddressTable::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_comments_and_bad_lines_with_their_line_numbers() {
        let text = "# senders of one.example\n@One.Example\nalice@two.example  # a person\n\nnot an address\nbob@\n";
        let errors = AddressTable::parse(text, Path::new("senders")).unwrap_err();
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with("senders:5:1: `not an address`"),
            "{shown:?}"
        );
        assert!(shown[1].starts_with("senders:6:1: "), "{shown:?}");
        let good =
            AddressTable::parse(&text[..text.find("\n\n").unwrap()], Path::new("s")).unwrap();
        assert_eq!(
            good.patterns,
            [
                AddressPattern::Domain("one.example".into()),
                AddressPattern::Address("alice@two.example".into())
            ]
        );
    }
}
