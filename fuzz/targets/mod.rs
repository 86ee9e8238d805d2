//! Fuzz target bodies, shared by the libFuzzer binaries (`fuzz_targets/`) and the replay test
//! of the committed corpora (`mailer-core/tests/fuzz_replay.rs`), so both run the same code.
//!
//! Each `run(data)` drives a real parser of `mailer-core` and panics when an invariant is
//! broken; "no panic" alone is never the whole check.

pub mod address;
pub mod aliases;
pub mod align;
pub mod bdat;
pub mod config;
pub mod data;
pub mod dmarc;
pub mod dot_stuff_stream;
pub mod dotenv;
pub mod dsn;
pub mod import;
pub mod memory;
pub mod mta_sts;
pub mod offline;
pub mod relay_probe;
pub mod relay_reply;
pub mod relay_session;
pub mod secrets;
pub mod session;
pub mod spf;
pub mod tlsrpt;

/// A target body: panics when the input breaks an invariant.
pub type Target = fn(&[u8]);

/// Every target by the name of its corpus directory and binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("session", session::run),
    ("data", data::run),
    ("address", address::run),
    ("config", config::run),
    ("import", import::run),
    ("aliases", aliases::run),
    ("secrets", secrets::run),
    ("align", align::run),
    ("dsn", dsn::run),
    ("mta_sts", mta_sts::run),
    ("spf", spf::run),
    ("dmarc", dmarc::run),
    ("tlsrpt", tlsrpt::run),
    ("relay_reply", relay_reply::run),
    ("bdat", bdat::run),
    ("relay_session", relay_session::run),
    ("offline", offline::run),
    ("dotenv", dotenv::run),
    ("relay_probe", relay_probe::run),
    ("dot_stuff_stream", dot_stuff_stream::run),
];

/// A small deterministic generator: split points and choices come from the input itself,
/// so a reproducer replays exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `1..=max` (`max` ≥ 1).
    pub fn chunk(&mut self, max: usize) -> usize {
        1 + (self.next() % max as u64) as usize
    }
}

/// Splits `input` into chunks: all at once for `seed == 0`, else pieces of 1..=seed octets.
pub fn chunks(input: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![input];
    }
    let mut rng = Rng::new(u64::from(seed));
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = rng.chunk(usize::from(seed)).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// Whether `bytes` has a CR not followed by LF or an LF not preceded by CR.
pub fn has_bare_newline(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || bytes[i - 1] != b'\r',
        _ => false,
    })
}

/// Splits a stream of SMTP replies into complete replies `(code, lines)`, panicking on
/// anything that is not RFC 5321 §4.2 syntax: `code` `-`|` ` text CRLF, the same code on
/// every line of a reply, printable text, and no partial reply at the end.
pub fn parse_replies(stream: &[u8]) -> Vec<(u16, Vec<String>)> {
    assert!(
        stream.is_empty() || stream.ends_with(b"\r\n"),
        "reply stream ends mid-line: {:?}",
        String::from_utf8_lossy(stream)
    );
    let mut replies = Vec::new();
    let mut current: Option<(u16, Vec<String>)> = None;
    for line in stream.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line
            .strip_suffix(b"\r")
            .unwrap_or_else(|| panic!("reply line without CRLF: {line:?}"));
        assert!(!line.contains(&b'\r'), "bare CR in reply line {line:?}");
        let text = std::str::from_utf8(line).expect("reply is UTF-8");
        assert!(line.len() >= 4, "reply line too short: {text:?}");
        assert!(
            line[0].is_ascii_digit()
                && (b'2'..=b'5').contains(&line[0])
                && line[1].is_ascii_digit()
                && line[2].is_ascii_digit(),
            "reply code is not 2xx-5xx: {text:?}"
        );
        assert!(
            !text.chars().any(char::is_control),
            "control character in reply {text:?}"
        );
        let code: u16 = text[..3].parse().expect("three digits");
        if let Some((c, _)) = &current {
            assert_eq!(*c, code, "code changes inside a multi-line reply: {text:?}");
        }
        let entry = current.get_or_insert_with(|| (code, Vec::new()));
        entry.1.push(text[4..].to_string());
        match line[3] {
            b' ' => replies.push(current.take().expect("set above")),
            b'-' => {}
            _ => panic!("no space or hyphen after the code: {text:?}"),
        }
    }
    assert!(current.is_none(), "unterminated multi-line reply");
    replies
}

/// Checks the enhanced status code, when a reply carries one, against its basic code.
pub fn check_enhanced(code: u16, text: &str) {
    let Some(first) = text.split(' ').next() else {
        return;
    };
    let parts: Vec<&str> = first.split('.').collect();
    if parts.len() == 3 && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())) {
        assert_eq!(
            parts[0],
            (code / 100).to_string(),
            "enhanced status {first} does not fit code {code}"
        );
    }
}
