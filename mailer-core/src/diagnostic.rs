//! Diagnostics: an error (or warning) located in a file, printed `FILE:LINE:COL: message`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a configuration or table file.
///
/// `line` and `col` are 1-based and point at the offending key or value; `line == 0` means
/// the problem concerns the file as a whole (unreadable, wrong permissions), and the display
/// then omits the position: `FILE: message`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Path, line: usize, col: usize, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    /// A problem with the file as a whole.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(file, 0, 0, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

impl std::error::Error for Diagnostic {}

/// Turns byte offsets of one text into 1-based line and column (in characters).
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> LineIndex<'a> {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// Line and column of a byte offset (clamped to the text).
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, col + 1)
    }
}

/// Collects diagnostics for one source file.
pub(crate) struct Sink<'a> {
    pub(crate) file: &'a Path,
    index: LineIndex<'a>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Sink<'a> {
        Sink {
            file,
            index: LineIndex::new(text),
            diagnostics: Vec::new(),
        }
    }

    pub(crate) fn position(&self, span: &Range<usize>) -> (usize, usize) {
        self.index.position(span.start)
    }

    pub(crate) fn at(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, col) = self.position(span);
        self.diagnostics
            .push(Diagnostic::new(self.file, line, col, message));
    }

    /// Records a TOML or serde error, at its span when it has one.
    pub(crate) fn toml_error(&mut self, error: &toml::de::Error, fallback: &Range<usize>) {
        let span = error.span().unwrap_or_else(|| fallback.clone());
        self.at(&span, error.message().trim_end().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let index = LineIndex::new("ab\nçé = 1\n\nx");
        assert_eq!(index.position(0), (1, 1));
        assert_eq!(index.position(1), (1, 2));
        assert_eq!(index.position(3), (2, 1));
        // "çé" is 4 bytes, 2 characters: the space after it is column 3.
        assert_eq!(index.position(7), (2, 3));
        assert_eq!(index.position(13), (4, 1));
        assert_eq!(index.position(999), (4, 2));
    }

    #[test]
    fn display_omits_position_for_whole_file_problems() {
        let d = Diagnostic::new(Path::new("a.toml"), 3, 7, "bad");
        assert_eq!(d.to_string(), "a.toml:3:7: bad");
        let d = Diagnostic::whole_file(Path::new("/etc/mail/secrets"), "unreadable");
        assert_eq!(d.to_string(), "/etc/mail/secrets: unreadable");
    }
}
