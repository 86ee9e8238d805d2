//! The DATA reader, against a reference model of RFC 5321 §4.1.1.4 and §4.5.2.
//!
//! Input: `flags`, `split seed`, then the stream after `354`. Invariants: the data ends exactly
//! after the first `<CRLF>.<CRLF>` (the CRLF ending the DATA command counts), never earlier on a
//! smuggling variant; any split gives the same result; content never holds a bare CR or LF
//! and ends with CRLF; accepted content in reject mode is the stream with the leading dots
//! removed; content kept never exceeds the size limit.

use mailer_core::intake::data::{BareNewlines, DataError, DataReader};

use super::{chunks, has_bare_newline};

fn read(input: &[u8], pieces: &[&[u8]], max: usize, line: usize, mode: BareNewlines) -> Outcome {
    let mut reader = DataReader::new(max, line, mode);
    let mut out = Vec::new();
    let mut offset = 0;
    for piece in pieces {
        if let Some(n) = reader.feed(piece, &mut out) {
            assert!(n <= piece.len(), "consumed more than given");
            // Content passed on before a problem showed is discarded with the message, and
            // how much of it there was depends on the split.
            if reader.failed().is_some() {
                out.clear();
            }
            return Outcome {
                end: Some(offset + n),
                out,
                verdict: Some(reader.finish()),
            };
        }
        offset += piece.len();
    }
    assert_eq!(offset, input.len());
    if reader.failed().is_some() {
        out.clear();
    }
    Outcome {
        end: None,
        out,
        verdict: None,
    }
}

#[derive(Debug, PartialEq)]
struct Outcome {
    end: Option<usize>,
    out: Vec<u8>,
    verdict: Option<Result<(), DataError>>,
}

/// Where the data ends by the RFC: after the first CRLF.CRLF, counting the command's CRLF.
fn reference_end(input: &[u8]) -> Option<usize> {
    let mut stream = b"\r\n".to_vec();
    stream.extend_from_slice(input);
    stream
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|i| i + 5 - 2)
}

/// Content by the RFC for a stream without bare newlines: each line with a leading dot
/// removed, CRLF kept.
fn reference_content(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(rest.len(), |i| i + 2);
        let line = &rest[..end];
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        rest = &rest[end..];
    }
    out
}

pub fn run(data: &[u8]) {
    let [flags, seed, input @ ..] = data else {
        return;
    };
    let max = if flags & 1 != 0 { 64 } else { 1 << 20 };
    let line = if flags & 2 != 0 { 16 } else { 1000 };
    let mode = if flags & 4 != 0 {
        BareNewlines::Normalize
    } else {
        BareNewlines::Reject
    };
    let whole = read(input, &[input], max, line, mode);
    let split = read(input, &chunks(input, *seed), max, line, mode);
    assert_eq!(whole, split, "the split changed the result");

    assert_eq!(
        whole.end,
        reference_end(input),
        "data ended elsewhere than after the first CRLF.CRLF"
    );
    assert!(whole.out.len() <= max, "kept more than the size limit");
    assert!(
        !has_bare_newline(&whole.out),
        "content holds a bare CR or LF: {:?}",
        String::from_utf8_lossy(&whole.out)
    );
    let Some(end) = whole.end else {
        return;
    };
    assert!(
        whole.out.is_empty() || whole.out.ends_with(b"\r\n") || whole.verdict != Some(Ok(())),
        "accepted content does not end with CRLF"
    );
    let body = &input[..end - 3];
    if whole.verdict == Some(Ok(())) {
        assert!(
            mode == BareNewlines::Normalize || !has_bare_newline(body),
            "bare newline accepted in reject mode"
        );
        if !has_bare_newline(body) {
            assert_eq!(
                whole.out,
                reference_content(body),
                "content differs from the unstuffed stream"
            );
        }
    } else if mode == BareNewlines::Reject
        && !has_bare_newline(body)
        && reference_content(body).len() <= max
    {
        assert_eq!(
            whole.verdict,
            Some(Err(DataError::LineTooLong)),
            "a clean message within the limit was refused"
        );
    }
}
