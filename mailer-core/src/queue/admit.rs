//! Admission: what a received message becomes before it is stored. It is DKIM-signed once,
//! here, so that every attempt relays the same bytes; its envelope says where it goes.

use super::spool::QueueFile;
use super::Envelope;
use crate::delivery::dkim::{DkimSigning, Signed};

/// Signs the message written to `file` with the keys of the actions its recipients go to,
/// reading it back once, and completes its envelope: its size, and the signature fields
/// delivered in front of it. `head` is the start of the message through its header section.
/// Returns what signing did, for the log; `None` when no recipient's action signs. Reads the
/// file: call it off an async runtime's threads.
pub fn admit(
    envelope: &mut Envelope,
    head: &[u8],
    file: &mut QueueFile,
    dkim: &DkimSigning,
) -> Option<Signed> {
    envelope.size = file.len();
    let actions = || envelope.recipients.iter().map(|r| r.action.as_str());
    if !dkim.signs_for(actions()) {
        return None;
    }
    let mut signed = dkim.sign_streamed(actions(), head, |feed| file.read_back(feed));
    if !signed.signed_by.is_empty() {
        // Signature fields are ASCII: base64 and tag names.
        envelope.signatures =
            String::from_utf8_lossy(&std::mem::take(&mut signed.fields)).into_owned();
    }
    Some(signed)
}
