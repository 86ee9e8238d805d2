//! `v=VERSION; name=value; …` records in TXT form, as MTA-STS (RFC 8461 §3.1) and TLS-RPT
//! (RFC 8460 §3) publish them: the version first, fields separated by `;` with optional
//! blanks, extension names of letters, digits, `_`, `-` and `.`.

use std::fmt;

/// A field at fault and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.field, self.reason)
    }
}

pub(crate) fn error(field: &str, reason: &str) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The fields after `v=version`, in order; every name at most once.
pub(crate) fn fields<'a>(
    record: &'a str,
    version: &str,
) -> Result<Vec<(&'a str, &'a str)>, FieldError> {
    let must_start = format!("the record must start with v={version}");
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (i, part) in record.split(';').enumerate() {
        let part = part.trim_matches([' ', '\t']);
        if part.is_empty() {
            // An empty first field would let the version check be skipped.
            if i == 0 {
                return Err(error(part, &must_start));
            }
            continue;
        }
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| error(part, "expected name=value"))?;
        match (i, name) {
            (0, "v") if value == version => {}
            (0, _) => return Err(error(part, &must_start)),
            (_, "v") => return Err(error("v", "v must come first, once")),
            (_, name) => {
                let valid = name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if name.is_empty() || !valid {
                    return Err(error(name, "not a field name"));
                }
                if out.iter().any(|(n, _)| *n == name) {
                    return Err(error(name, "appears more than once"));
                }
                out.push((name, value));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_first_then_unique_named_fields() {
        assert_eq!(
            fields("v=STSv1; id=20261125 ;ext=x;", "STSv1"),
            Ok(vec![("id", "20261125"), ("ext", "x")])
        );
        assert_eq!(
            fields("id=1; v=STSv1", "STSv1").unwrap_err().reason,
            "the record must start with v=STSv1"
        );
        assert_eq!(
            fields("; v=STSv1", "STSv1").unwrap_err().reason,
            "the record must start with v=STSv1"
        );
        assert_eq!(
            fields("v=STSv1; id=1; id=2", "STSv1").unwrap_err().reason,
            "appears more than once"
        );
        assert_eq!(
            fields("v=STSv1; v=STSv1", "STSv1").unwrap_err().reason,
            "v must come first, once"
        );
        assert_eq!(
            fields("v=STSv1; id", "STSv1").unwrap_err().reason,
            "expected name=value"
        );
        assert_eq!(
            fields("v=STSv1; b@d=1", "STSv1").unwrap_err().reason,
            "not a field name"
        );
    }
}
