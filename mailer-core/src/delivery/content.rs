//! A queued message as the ways out read it: the header fields signing put in front of it,
//! then the stored octets, read from the queue file a chunk at a time. A delivery of a 35 MiB
//! message holds one chunk, not the message.
//!
//! Reads are positional (`pread`), so the jobs of one message going to several actions read
//! the same open file independently. They are made on the caller's thread: the file was
//! written moments ago and sits in the page cache, and a hand-off to a blocking pool per
//! 64 KiB would cost more than the copy.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::policy::align::MAX_HEADER_SECTION;

/// Octets read at a time.
pub const CHUNK: usize = 64 * 1024;

/// The octets of a message to deliver.
#[derive(Debug)]
pub struct Content {
    /// Header fields added at admission (DKIM signatures), sent before `body`.
    prefix: Vec<u8>,
    body: Body,
    /// The start of the message (prefix included) through the empty line that ends its header
    /// section, or [`MAX_HEADER_SECTION`] + 1 octets when no empty line comes that soon.
    head: Vec<u8>,
    eight_bit: bool,
}

#[derive(Debug)]
enum Body {
    Memory(Vec<u8>),
    /// The first `len` octets of the file.
    File {
        file: File,
        len: u64,
    },
}

impl Content {
    /// A message held in memory (tests, reports we make ourselves).
    pub fn from_bytes(bytes: Vec<u8>) -> Content {
        Content {
            head: Head::of(&bytes),
            eight_bit: !bytes.is_ascii(),
            prefix: Vec::new(),
            body: Body::Memory(bytes),
        }
    }

    /// `prefix`, then the first `len` octets of `file`. Reads the start of the file for its
    /// header section. Whether it has 8-bit octets is `eight_bit` when intake recorded it;
    /// when not (`None`), the whole file is read once to find out.
    pub fn open(
        prefix: Vec<u8>,
        file: File,
        len: u64,
        eight_bit: Option<bool>,
    ) -> io::Result<Content> {
        let mut content = Content {
            prefix,
            body: Body::File { file, len },
            head: Vec::new(),
            eight_bit: false,
        };
        let mut head = Head::default();
        let mut found_8bit = false;
        let mut reader = content.reader();
        while let Some(chunk) = reader.next_chunk()? {
            head.feed(chunk);
            match eight_bit {
                Some(_) if head.is_done() => break,
                Some(_) => {}
                None => found_8bit |= !chunk.is_ascii(),
            }
        }
        content.head = head.into_bytes();
        content.eight_bit = eight_bit.unwrap_or(found_8bit);
        Ok(content)
    }

    /// Octets delivered: the prefix and the stored message.
    pub fn len(&self) -> u64 {
        let body = match &self.body {
            Body::Memory(bytes) => bytes.len() as u64,
            Body::File { len, .. } => *len,
        };
        self.prefix.len() as u64 + body
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any octet is above 127 (the message needs 8BITMIME).
    pub fn is_eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// The start of the message: its whole header section with the empty line after it when
    /// that ends within [`MAX_HEADER_SECTION`] octets, else [`MAX_HEADER_SECTION`] + 1 octets
    /// (so a reader can tell the section is too large), else the whole message.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Calls `f` with the message in order, at most [`CHUNK`] octets at a time from the file.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut reader = self.reader();
        while let Some(chunk) = reader.next_chunk()? {
            f(chunk)?;
        }
        Ok(())
    }

    /// A reader of the message from its start, for a caller that cannot take a closure (an
    /// async writer).
    pub fn reader(&self) -> ChunkReader<'_> {
        ChunkReader {
            content: self,
            at: 0,
            buf: Vec::new(),
        }
    }

    /// The whole message in memory: for tests and small messages only.
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        self.for_each_chunk(|chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Reads a [`Content`] from its start, a chunk at a time into one reused buffer.
pub struct ChunkReader<'a> {
    content: &'a Content,
    /// Octets of the message (prefix included) given out so far.
    at: u64,
    buf: Vec<u8>,
}

impl ChunkReader<'_> {
    /// The next chunk; `None` at the end. A file that ends before its recorded length is an
    /// error, never a silently shorter message.
    pub fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        let prefix = &self.content.prefix;
        if self.at < prefix.len() as u64 {
            let start = self.at as usize;
            self.at = prefix.len() as u64;
            return Ok(Some(&prefix[start..]));
        }
        let offset = self.at - prefix.len() as u64;
        match &self.content.body {
            Body::Memory(bytes) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = (start + CHUNK).min(bytes.len());
                self.at += (end - start) as u64;
                Ok((end > start).then(|| &bytes[start..end]))
            }
            Body::File { file, len } => {
                let want = (*len - offset.min(*len)).min(CHUNK as u64) as usize;
                if want == 0 {
                    return Ok(None);
                }
                self.buf.resize(want, 0);
                file.read_exact_at(&mut self.buf, offset)?;
                self.at += want as u64;
                Ok(Some(&self.buf))
            }
        }
    }
}

/// The start of a message as it goes by, through the empty line that ends its header
/// section, or [`MAX_HEADER_SECTION`] + 1 octets when none comes that soon: what signing and
/// the checks of header fields read, whatever the size of the message.
#[derive(Debug, Default)]
pub struct Head {
    bytes: Vec<u8>,
    done: bool,
}

impl Head {
    /// The next octets of the message.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        // The empty line may straddle the previous chunk and this one.
        let from = self.bytes.len().saturating_sub(3);
        let room = MAX_HEADER_SECTION + 1 - self.bytes.len();
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        if let Some(end) = header_end(&self.bytes, from) {
            self.bytes.truncate(end);
            self.done = true;
        } else if self.bytes.len() > MAX_HEADER_SECTION {
            self.done = true;
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The header section has ended, or is past the limit: what follows is not kept.
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The head of a whole message held in memory.
    pub fn of(message: &[u8]) -> Vec<u8> {
        let mut head = Head::default();
        head.feed(message);
        head.into_bytes()
    }
}

/// Where the header section of `bytes` ends, after its empty line, searching from `from`
/// (an empty first line ends an empty section).
fn header_end(bytes: &[u8], from: usize) -> Option<usize> {
    if bytes.starts_with(b"\r\n") {
        return Some(2);
    }
    memchr::memmem::find(&bytes[from..], b"\r\n\r\n").map(|i| from + i + 4)
}

/// Messages stored in a file the way the queue keeps them, for the tests of the ways out.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Content, CHUNK};
    use std::io::Write;

    /// A message of three chunks and an odd rest in which `snippet` starts `back` octets
    /// before every chunk boundary, so each boundary cuts it after `back` octets.
    pub(crate) fn across_boundaries(snippet: &[u8], back: usize) -> Vec<u8> {
        mailer_testkit::message::across_boundaries(snippet, back, CHUNK)
    }

    /// `message` read back from a file, as the queue gives it.
    pub(crate) fn file_backed(message: &[u8]) -> Content {
        let mut file = tempfile::tempfile().expect("temporary file");
        file.write_all(message).expect("written");
        Content::open(Vec::new(), file, message.len() as u64, None).expect("opened")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn stored(prefix: &[u8], message: &[u8], trailing: &[u8]) -> Content {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(message).unwrap();
        f.write_all(trailing).unwrap();
        Content::open(prefix.to_vec(), f, message.len() as u64, None).unwrap()
    }

    #[test]
    fn a_file_reads_back_with_its_prefix_and_without_what_follows() {
        let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut message = b"Subject: x\r\n\r\n".to_vec();
        message.extend_from_slice(&body);
        let c = stored(b"DKIM-Signature: v=1\r\n", &message, b"{envelope}");
        let mut expected = b"DKIM-Signature: v=1\r\n".to_vec();
        expected.extend_from_slice(&message);
        assert_eq!(c.to_vec().unwrap(), expected);
        assert_eq!(c.len(), expected.len() as u64);
        assert_eq!(c.head(), b"DKIM-Signature: v=1\r\nSubject: x\r\n\r\n");
        assert!(!c.is_eight_bit());
        let mut largest = 0;
        c.for_each_chunk(|chunk| {
            largest = largest.max(chunk.len());
            Ok(())
        })
        .unwrap();
        assert!(largest <= CHUNK);
    }

    #[test]
    fn eight_bit_octets_anywhere_are_found() {
        let mut message = b"Subject: x\r\n\r\n".to_vec();
        message.extend(std::iter::repeat_n(b'a', 3 * CHUNK));
        message.extend_from_slice("é\r\n".as_bytes());
        assert!(stored(b"", &message, b"").is_eight_bit());
        assert!(Content::from_bytes(message).is_eight_bit());
    }

    #[test]
    fn a_header_section_without_an_end_is_cut_one_past_the_limit() {
        let message = b"X: y\r\n".repeat(MAX_HEADER_SECTION / 6 + 10);
        assert_eq!(
            stored(b"", &message, b"").head().len(),
            MAX_HEADER_SECTION + 1
        );
        let short = b"X: y\r\n".to_vec();
        assert_eq!(Content::from_bytes(short.clone()).head(), &short[..]);
    }

    #[test]
    fn the_head_is_the_same_for_any_split() {
        let message = b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore\r\n";
        for cut in 0..message.len() {
            let mut head = Head::default();
            head.feed(&message[..cut]);
            head.feed(&message[cut..]);
            assert_eq!(head.as_bytes(), b"A: 1\r\nB: 2\r\n\r\n", "cut at {cut}");
        }
    }

    #[test]
    fn what_intake_recorded_about_8bit_octets_is_taken_without_reading_the_file() {
        let mut f = tempfile::tempfile().unwrap();
        let mut message = b"Subject: x\r\n\r\n".to_vec();
        message.extend(std::iter::repeat_n(b'a', 3 * CHUNK));
        message.extend_from_slice("é\r\n".as_bytes());
        f.write_all(&message).unwrap();
        let len = message.len() as u64;
        let opened =
            |recorded| Content::open(Vec::new(), f.try_clone().unwrap(), len, recorded).unwrap();
        assert!(opened(None).is_eight_bit());
        // A recorded answer stands (the head is read, not the rest).
        assert!(!opened(Some(false)).is_eight_bit());
        assert_eq!(opened(Some(false)).head(), b"Subject: x\r\n\r\n");
    }

    #[test]
    fn a_file_shorter_than_its_recorded_length_is_an_error() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"Subject: x\r\n\r\nbody").unwrap();
        assert!(Content::open(Vec::new(), f, 1000, None).is_err());
    }
}
