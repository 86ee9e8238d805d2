//! Messages shaped to test code that reads a message a chunk at a time.

/// A message of three chunks of `chunk` octets and an odd rest, in which `snippet` starts
/// `back` octets before every chunk boundary, so each boundary cuts it after `back` octets.
pub fn across_boundaries(snippet: &[u8], back: usize, chunk: usize) -> Vec<u8> {
    let mut message = b"Subject: chunks\r\n\r\n".to_vec();
    for k in 1..=3 {
        let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstu\r\n";
        let until = k * chunk - back;
        while message.len() < until {
            let take = line.len().min(until - message.len());
            message.extend_from_slice(&line[..take]);
        }
        message.extend_from_slice(snippet);
    }
    message.extend_from_slice(b"the odd rest\r\n");
    message
}
