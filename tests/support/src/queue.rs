//! The queue directory as an admin reads it (the layout `mailer_core::queue::spool` documents):
//! `q/<id>.msg` is the message, then the envelope stored at its arrival, then a trailer giving
//! the message's length; `q/<id>.env`, when present, is the envelope as updated since. Read here
//! from the bytes on disk, independently of the daemon's own reader.

use std::fs;
use std::path::{Path, PathBuf};

const TRAILER_MAGIC: &[u8] = b"\nmailer-queue-file-2 ";
const TRAILER_LEN: usize = TRAILER_MAGIC.len() + 16 + 1;

/// The queue ids with a message file in `q/`, sorted.
pub fn ids(queue_dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(queue_dir.join("q"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter_map(|p| {
                    let name = p.file_name()?.to_str()?;
                    name.strip_suffix(".msg").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The message files in `q/`, sorted.
pub fn message_files(queue_dir: &Path) -> Vec<PathBuf> {
    ids(queue_dir)
        .into_iter()
        .map(|id| queue_dir.join(format!("q/{id}.msg")))
        .collect()
}

/// Splits a queue file into the message and the stored envelope's JSON.
fn split(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let json_end = bytes.len().checked_sub(TRAILER_LEN)?;
    let hex = bytes[json_end..]
        .strip_prefix(TRAILER_MAGIC)?
        .strip_suffix(b"\n")?;
    let size = usize::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    (size <= json_end).then(|| (&bytes[..size], &bytes[size..json_end]))
}

/// The message of `id` as it will be delivered; `None` when it is not queued.
pub fn message(queue_dir: &Path, id: &str) -> Option<Vec<u8>> {
    let bytes = fs::read(queue_dir.join(format!("q/{id}.msg"))).ok()?;
    Some(match split(&bytes) {
        Some((message, _)) => message.to_vec(),
        None => bytes,
    })
}

/// The envelope of `id` as it stands (the update if there is one), as JSON text.
pub fn envelope_json(queue_dir: &Path, id: &str) -> Option<Vec<u8>> {
    if let Ok(bytes) = fs::read(queue_dir.join(format!("q/{id}.env"))) {
        return Some(bytes);
    }
    let bytes = fs::read(queue_dir.join(format!("q/{id}.msg"))).ok()?;
    split(&bytes).map(|(_, json)| json.to_vec())
}
