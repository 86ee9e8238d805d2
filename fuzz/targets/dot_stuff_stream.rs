//! Dot-stuffing fed a chunk at a time, as the relay sends a queue file: wherever the body is
//! cut, the wire is the one-shot wire, and undoing the stuffing gives the body back with the
//! data ending exactly once, at the end.

use mailer_core::smtp::protocol::{dot_stuff, DotStuffer};

pub fn run(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let whole = dot_stuff(body);

    let mut stuffer = DotStuffer::new();
    let mut wire = Vec::new();
    for chunk in super::chunks(body, seed) {
        let before = wire.len();
        stuffer.push(chunk, &mut wire);
        let grew = wire.len() - before;
        assert!(grew >= chunk.len(), "octets lost");
        assert!(
            grew <= chunk.len() + chunk.len().div_ceil(2),
            "more dots than lines"
        );
    }
    wire.extend_from_slice(stuffer.finish());
    assert_eq!(wire, whole, "the wire depends on where the body was cut");

    // The end of data appears once, at the end.
    let end = if wire == b".\r\n" {
        0
    } else {
        let at = wire.windows(5).position(|w| w == b"\r\n.\r\n");
        at.expect("the data ends") + 2
    };
    assert_eq!(end + 3, wire.len(), "the data ends before the body does");

    // Undo the stuffing: the dot after every line start (as the receiving side counts lines,
    // after every LF) goes.
    let mut unstuffed = Vec::with_capacity(wire.len());
    let mut line_start = true;
    for &b in &wire[..end] {
        if !(line_start && b == b'.') {
            unstuffed.push(b);
        }
        line_start = b == b'\n';
    }
    let mut expected = body.to_vec();
    if !expected.is_empty() && !expected.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    assert_eq!(unstuffed, expected, "dot-stuffing does not round-trip");
}
