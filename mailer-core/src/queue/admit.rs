//! Admission: what a received message becomes before it is stored. It is DKIM-signed once,
//! here, so that every attempt relays the same bytes; its envelope says where it goes.

use super::Envelope;
use crate::delivery::dkim::{DkimSigning, Signed};

/// A message ready for the spool.
#[derive(Debug)]
pub struct Admitted {
    pub envelope: Envelope,
    /// The message as stored: our signatures, if any, in front of what was received.
    pub message: Vec<u8>,
    /// What signing did, for the log; `None` when no recipient's action signs.
    pub dkim: Option<Signed>,
}

/// Signs `message` with the keys of the actions its recipients go to, and sizes its envelope.
/// Signing hashes the whole body: call it off an async runtime's threads.
pub fn admit(mut envelope: Envelope, message: Vec<u8>, dkim: &DkimSigning) -> Admitted {
    let actions = || envelope.recipients.iter().map(|r| r.action.as_str());
    if !dkim.signs_for(actions()) {
        return Admitted {
            envelope,
            message,
            dkim: None,
        };
    }
    let mut signed = dkim.sign(actions(), &message);
    let message = if signed.signed_by.is_empty() {
        message
    } else {
        let mut stored = std::mem::take(&mut signed.fields);
        stored.extend_from_slice(&message);
        stored
    };
    envelope.size = message.len() as u64;
    Admitted {
        envelope,
        message,
        dkim: Some(signed),
    }
}
