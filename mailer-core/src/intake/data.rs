//! The DATA reader: turns the dot-stuffed byte stream after `DATA` into message content.
//!
//! Only `<CRLF>.<CRLF>` ends the data (RFC 5321 §4.1.1.4). Every SMTP smuggling variant
//! (`<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CRLF>`, `<CRLF>.<LF>`) is content, and a bare LF or bare CR
//! anywhere makes the message either rejected or normalized to CRLF, so the stored message has
//! CRLF line endings only and never carries a bare newline downstream.
//!
//! The reader is incremental: it can be fed any split of the stream and keeps the state
//! between calls. Content beyond the size limit is counted but not kept, so memory stays
//! bounded by the limit whatever the client sends.
//!
//! BDAT content (RFC 3030) is not dot-stuffed and its end is counted, not marked: the same
//! reader in [`DataReader::chunked`] mode takes it, so both ways in apply the same line rules.

pub use crate::config::BareNewlines;

/// Why the content is unacceptable; decided once the end of data has been seen, so the
/// stream stays in sync whatever the content was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataError {
    TooBig,
    LineTooLong,
    BareNewline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line that followed a real CRLF (or the start of the data).
    LineStart,
    /// Saw `.` at the start of a CRLF-preceded line.
    Dot,
    /// Saw `.` `CR` at the start of a CRLF-preceded line.
    DotCr,
    /// Inside a line.
    Text,
    /// Saw a CR inside a line (or after a line start): CRLF if an LF follows.
    Cr,
}

/// Incremental reader for one DATA phase.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    max_size: usize,
    max_line: usize,
    mode: BareNewlines,
    /// DATA: dots are stuffed and `<CRLF>.<CRLF>` ends the data. BDAT: content is verbatim.
    dots: bool,
    line_len: usize,
    /// Octets of content seen, kept or not.
    seen: usize,
    error: Option<DataError>,
}

impl DataReader {
    pub fn new(max_size: usize, max_line: usize, mode: BareNewlines) -> DataReader {
        DataReader {
            state: State::LineStart,
            max_size,
            max_line,
            mode,
            dots: true,
            line_len: 0,
            seen: 0,
            error: None,
        }
    }

    /// A reader for BDAT chunks: no dot transparency and no end sequence; the caller knows
    /// where the content ends and calls [`DataReader::end_of_content`].
    pub fn chunked(max_size: usize, max_line: usize, mode: BareNewlines) -> DataReader {
        DataReader {
            dots: false,
            ..DataReader::new(max_size, max_line, mode)
        }
    }

    /// The last chunk has been fed: a CR it ended with was not followed by LF. The verdict
    /// follows from [`DataReader::finish`].
    pub fn end_of_content(&mut self, out: &mut Vec<u8>) {
        if self.state == State::Cr {
            self.bare(out);
            self.state = State::LineStart;
        }
    }

    /// Whether the content is already refused (its verdict is decided).
    pub fn failed(&self) -> Option<DataError> {
        self.error
    }

    /// Octets of content seen so far (including what was discarded beyond the limit).
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Feeds input; appends content to `out`. Returns `Some(consumed)` when the end-of-data
    /// sequence was found (input beyond `consumed` belongs to the next command), or `None`
    /// when all of `input` was consumed and more is needed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Text {
                // Most octets are ordinary text: take the run up to the next CR or LF at once.
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                if run > 0 {
                    self.line_len += run;
                    if self.line_len > self.max_line {
                        self.fail(DataError::LineTooLong);
                    }
                    self.push(&input[i..i + run], out);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            match self.state {
                State::LineStart => match b {
                    b'.' if self.dots => self.state = State::Dot,
                    _ => self.text(b, out),
                },
                State::Dot => match b {
                    b'\r' => self.state = State::DotCr,
                    // Transparency (RFC 5321 §4.5.2): drop the leading dot.
                    _ => {
                        self.state = State::Text;
                        self.text(b, out);
                    }
                },
                State::DotCr => {
                    if b == b'\n' {
                        return Some(i);
                    }
                    // `.` CR without LF: a bare CR in a line that held a stuffed dot.
                    self.state = State::Text;
                    self.bare(out);
                    self.text(b, out);
                }
                State::Text => self.text(b, out),
                State::Cr => {
                    if b == b'\n' {
                        self.push(b"\r\n", out);
                        self.line_len = 0;
                        self.state = State::LineStart;
                    } else {
                        self.bare(out);
                        self.text(b, out);
                    }
                }
            }
        }
        None
    }

    /// The verdict once the end of data was found.
    pub fn finish(self) -> Result<(), DataError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One octet inside a line (not a line ending).
    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                // A bare LF: in normalize mode it ends the line, but the next line does not
                // count as CRLF-preceded, so `<LF>.<CRLF>` can never end the data.
                self.bare(out);
                self.state = State::Text;
            }
            _ => {
                self.state = State::Text;
                self.line_len += 1;
                if self.line_len > self.max_line {
                    self.fail(DataError::LineTooLong);
                }
                self.push(&[b], out);
            }
        }
    }

    /// A bare CR or LF was seen (the octet itself is not passed on).
    fn bare(&mut self, out: &mut Vec<u8>) {
        match self.mode {
            BareNewlines::Reject => self.fail(DataError::BareNewline),
            BareNewlines::Normalize => self.push(b"\r\n", out),
        }
        self.line_len = 0;
    }

    /// Passes content on while the message is acceptable; once it is not, passes nothing more
    /// (it will be refused whole, and what was passed on is discarded by the caller).
    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.seen += bytes.len();
        if self.seen > self.max_size {
            self.fail(DataError::TooBig);
        }
        if self.error.is_none() {
            out.extend_from_slice(bytes);
        }
    }

    fn fail(&mut self, e: DataError) {
        // The first problem decides the reply; a message too big stays "too big".
        if self.error.is_none() || e == DataError::TooBig {
            self.error = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8], mode: BareNewlines) -> (Option<usize>, Vec<u8>, Result<(), DataError>) {
        let mut r = DataReader::new(1 << 20, 1000, mode);
        let mut out = Vec::new();
        let end = r.feed(input, &mut out);
        (end, out, r.finish())
    }

    #[test]
    fn ends_only_on_crlf_dot_crlf() {
        let (end, out, verdict) = read(
            b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n",
            BareNewlines::Reject,
        );
        assert_eq!(end, Some(24));
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(verdict, Ok(()));
    }

    #[test]
    fn empty_message_ends_at_once() {
        let (end, out, _) = read(b".\r\n", BareNewlines::Reject);
        assert_eq!(end, Some(3));
        assert!(out.is_empty());
    }

    #[test]
    fn leading_dots_are_unstuffed() {
        let (_, out, _) = read(b"..hidden\r\n.x\r\n.\r\n", BareNewlines::Reject);
        assert_eq!(out, b".hidden\r\nx\r\n");
    }

    #[test]
    fn smuggling_sequences_never_end_the_data() {
        for seq in [&b"\n.\n"[..], b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r"] {
            let mut input = b"a".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n");
            let (end, _, verdict) = read(&input, BareNewlines::Reject);
            assert_eq!(end, None, "{seq:?} ended the data");
            // Only a real end finishes it, and then the bare newline is reported.
            let mut r = DataReader::new(1 << 20, 1000, BareNewlines::Reject);
            let mut out = Vec::new();
            assert_eq!(r.feed(&input, &mut out), None);
            assert!(r.feed(b"\r\n.\r\n", &mut out).is_some());
            assert_eq!(r.finish(), Err(DataError::BareNewline), "{seq:?}");
            let _ = verdict;
        }
    }

    #[test]
    fn normalize_mode_turns_bare_newlines_into_crlf() {
        let (end, out, verdict) = read(b"a\nb\rc\n.\nd\r\n.\r\n", BareNewlines::Normalize);
        assert!(end.is_some());
        assert_eq!(verdict, Ok(()));
        assert_eq!(out, b"a\r\nb\r\nc\r\n.\r\nd\r\n");
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let input = b"x\r\n..y\r\nz\n.\r\nw\r\n.\r\nNEXT";
        let (whole_end, whole, whole_v) = read(input, BareNewlines::Normalize);
        for cut in 0..input.len() {
            let mut r = DataReader::new(1 << 20, 1000, BareNewlines::Normalize);
            let mut out = Vec::new();
            let end = match r.feed(&input[..cut], &mut out) {
                Some(n) => Some(n),
                None => r.feed(&input[cut..], &mut out).map(|n| n + cut),
            };
            assert_eq!(end, whole_end, "cut at {cut}");
            assert_eq!(out, whole, "cut at {cut}");
            assert_eq!(r.finish(), whole_v);
        }
    }

    #[test]
    fn chunked_content_keeps_dots_and_needs_no_end() {
        let mut r = DataReader::chunked(1 << 20, 1000, BareNewlines::Normalize);
        let mut out = Vec::new();
        assert_eq!(r.feed(b"a\r\n.\r\n..b\r", &mut out), None);
        assert_eq!(r.feed(b"\nc\nd\r", &mut out), None);
        r.end_of_content(&mut out);
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(out, b"a\r\n.\r\n..b\r\nc\r\nd\r\n");
    }

    #[test]
    fn chunked_content_with_a_bare_newline_is_refused_in_reject_mode() {
        for input in [&b"a\nb"[..], b"a\rb", b"a\r"] {
            let mut r = DataReader::chunked(1 << 20, 1000, BareNewlines::Reject);
            let mut out = Vec::new();
            assert_eq!(r.feed(input, &mut out), None);
            r.end_of_content(&mut out);
            assert_eq!(r.finish(), Err(DataError::BareNewline), "{input:?}");
        }
    }

    #[test]
    fn too_big_is_counted_but_not_kept() {
        let mut r = DataReader::new(10, 1000, BareNewlines::Reject);
        let mut out = Vec::new();
        assert!(r.feed(b"0123456789abcdef\r\n.\r\n", &mut out).is_some());
        assert!(out.len() <= 10);
        assert_eq!(r.finish(), Err(DataError::TooBig));
    }

    #[test]
    fn overlong_line_is_refused() {
        let mut r = DataReader::new(1 << 20, 8, BareNewlines::Reject);
        let mut out = Vec::new();
        assert!(r.feed(b"123456789\r\n.\r\n", &mut out).is_some());
        assert_eq!(r.finish(), Err(DataError::LineTooLong));
    }
}
