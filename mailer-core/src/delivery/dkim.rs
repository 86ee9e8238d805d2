//! DKIM signing of relayed mail (RFC 6376, RFC 8463): keys loaded from PEM files, one
//! signature per configured key, relaxed/relaxed, each key signing the header fields its
//! configuration names ([`DkimHeaders`], by default the identifying, MIME and list fields) and
//! oversigning the ones it says. Also key generation and the TXT record that publishes a key.
//!
//! A message is signed once, when it is accepted, so every delivery attempt relays the same
//! bytes. Signing streams: the header section is read from the message's head, the body is
//! hashed as it is read back from the queue file, so a large message is never in memory. A key signs only mail whose header From aligns (relaxed, RFC 7489 §3.1.1) with the
//! key's domain, unless the action says `sign_unaligned`: an unaligned signature does nothing
//! for DMARC and vouches for mail of another domain.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use mail_auth::common::crypto::{
    Algorithm, DkimKey as KeyPair, Ed25519Key, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner as MailAuthSigner};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::config::{Action, Config, DkimHeaders, DkimKey};
use crate::delivery::content::Head;
use crate::policy::align::{aligned, header_from_domain, AlignmentMode, MAX_HEADER_SECTION};

/// Loosest mode a key file may have: owner read/write, group read.
const MAX_KEY_MODE: u32 = 0o640;

/// A problem with a DKIM key file, naming it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimError {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for DkimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DKIM key {}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for DkimError {}

/// The algorithm of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA with SHA-256 (`k=rsa`), with the modulus size in bits.
    Rsa { bits: usize },
    /// Ed25519 with SHA-256 (`k=ed25519`, RFC 8463).
    Ed25519,
}

/// A private signing key and its public half as DNS publishes it.
pub struct PrivateKey {
    pair: KeyPair,
    kind: KeyKind,
    /// The `p=` octets: SubjectPublicKeyInfo for RSA (what opendkim-genkey publishes and every
    /// verifier accepts), the raw 32-octet key for Ed25519.
    public_key: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`, RSA or Ed25519) or PKCS#1
    /// (`RSA PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<PrivateKey, String> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no PEM key: {e}"))?;
        match der {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                let der = pkcs8.secret_pkcs8_der();
                // The PKCS#8 algorithm decides; ring tells which by accepting one of them.
                match Ed25519Key::from_pkcs8_maybe_unchecked_der(der) {
                    Ok(key) => Ok(PrivateKey::ed25519(key)),
                    Err(_) => RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(pkcs8))
                        .map_err(|e| format!("neither an Ed25519 nor a usable RSA key: {e}"))
                        .and_then(PrivateKey::rsa),
                }
            }
            pkcs1 @ PrivateKeyDer::Pkcs1(_) => RsaKey::<Sha256>::from_key_der(pkcs1)
                .map_err(|e| format!("not a usable RSA key: {e}"))
                .and_then(PrivateKey::rsa),
            PrivateKeyDer::Sec1(_) => {
                Err("an EC key; DKIM signs with RSA or Ed25519 keys".to_string())
            }
            _ => Err("unsupported key format".to_string()),
        }
    }

    fn ed25519(key: Ed25519Key) -> PrivateKey {
        PrivateKey {
            public_key: key.public_key(),
            kind: KeyKind::Ed25519,
            pair: KeyPair::Ed25519(key),
        }
    }

    fn rsa(key: RsaKey<Sha256>) -> Result<PrivateKey, String> {
        let pkcs1 = key.public_key();
        let bits = rsa_bits(&pkcs1).ok_or("the RSA public key does not parse")?;
        Ok(PrivateKey {
            public_key: rsa_spki(&pkcs1),
            kind: KeyKind::Rsa { bits },
            pair: KeyPair::Rsa(key),
        })
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The public key as published in `p=` (before base64).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The text of the key's DNS record: `v=DKIM1; k=rsa; p=…`.
    pub fn record_text(&self) -> String {
        let k = match self.kind {
            KeyKind::Rsa { .. } => "rsa",
            KeyKind::Ed25519 => "ed25519",
        };
        let p = base64::engine::general_purpose::STANDARD.encode(&self.public_key);
        format!("v=DKIM1; k={k}; p={p}")
    }
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo (RFC 5280 §4.1.2.7, RFC 3279 §2.3.1).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const RSA_ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0x00]; // no unused bits
    bit_string.extend_from_slice(pkcs1);
    let mut body = RSA_ALGORITHM.to_vec();
    body.extend(der(0x03, &bit_string));
    der(0x30, &body)
}

/// One DER element: tag, definite length, contents.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let octets: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | octets.len() as u8);
        out.extend(octets);
    }
    out.extend_from_slice(contents);
    out
}

/// Refuses a key file readable or writable beyond owner read/write and group read.
pub fn check_key_mode(path: &Path) -> Result<(), DkimError> {
    let meta = std::fs::metadata(path).map_err(|e| DkimError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(DkimError {
            path: path.to_path_buf(),
            reason: "not a regular file".to_string(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & !MAX_KEY_MODE != 0 {
        return Err(DkimError {
            path: path.to_path_buf(),
            reason: format!("mode {mode:04o} is too open (0640 at most); chmod 600 it"),
        });
    }
    Ok(())
}

/// Reads a key file without judging its mode (for printing its record).
pub fn read_key(path: &Path) -> Result<PrivateKey, DkimError> {
    let fail = |reason: String| DkimError {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    PrivateKey::from_pem(&pem).map_err(fail)
}

/// Reads a key file to sign with: its mode must be 0640 or tighter.
pub fn load_key(path: &Path) -> Result<PrivateKey, DkimError> {
    check_key_mode(path)?;
    read_key(path)
}

/// A key ready to sign for `selector._domainkey.domain`.
struct SigningEntry {
    domain: String,
    selector: String,
    key: Arc<PrivateKey>,
    headers: DkimHeaders,
}

/// Shares one loaded key between the signatures of many messages.
struct SharedKey(Arc<PrivateKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.pair.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.pair.algorithm()
    }
}

/// The DKIM keys of one relay action, loaded.
pub struct DkimSigner {
    entries: Vec<SigningEntry>,
}

impl fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| key_name(&e.selector, &e.domain)),
            )
            .finish()
    }
}

/// The DKIM-Signature fields made for a message, and the keys that did not sign it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signed {
    /// Complete header fields (`DKIM-Signature: …` CRLF), to put in front of the message.
    pub fields: Vec<u8>,
    /// `selector._domainkey.domain` of each key that signed.
    pub signed_by: Vec<String>,
    /// Keys that did not sign because the header From does not align with their domain.
    pub unaligned: Vec<String>,
    /// The header From domain, when the message has exactly one From mailbox.
    pub header_from: Option<String>,
    /// Keys whose signing failed, with why.
    pub errors: Vec<String>,
}

impl DkimSigner {
    /// Loads each key (mode 0640 or tighter, RSA or Ed25519 PEM). Every failure is returned,
    /// with the position of its key in `keys`.
    pub fn load(keys: &[DkimKey]) -> Result<DkimSigner, Vec<(usize, DkimError)>> {
        let mut entries = Vec::with_capacity(keys.len());
        let mut errors = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match load_key(&k.key) {
                Ok(key) => entries.push(SigningEntry {
                    domain: k.domain.clone(),
                    selector: k.selector.clone(),
                    key: Arc::new(key),
                    headers: k.headers.clone(),
                }),
                Err(e) => errors.push((i, e)),
            }
        }
        if errors.is_empty() {
            Ok(DkimSigner { entries })
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Signs `message` with every key whose domain aligns with its header From, or with every
    /// key when `sign_unaligned`.
    pub fn sign(&self, message: &[u8], sign_unaligned: bool) -> Signed {
        let entries = self.entries.iter().map(|e| (e, sign_unaligned));
        sign_streamed(entries, &Head::of(message), |feed| {
            feed(message);
            Ok(())
        })
    }
}

fn key_name(selector: &str, domain: &str) -> String {
    format!("{selector}._domainkey.{domain}")
}

/// Signs with each entry whose domain aligns with the header From of `head` (or that may sign
/// unaligned mail), all in one pass over the message that `read` makes. `head` is the start of
/// the message through the end of its header section ([`Head`]).
fn sign_streamed<'e>(
    entries: impl Iterator<Item = (&'e SigningEntry, bool)>,
    head: &[u8],
    read: impl FnOnce(&mut dyn FnMut(&[u8])) -> io::Result<()>,
) -> Signed {
    let mut signed = Signed {
        header_from: header_from_domain(head).ok(),
        ..Signed::default()
    };
    let present: Vec<&[u8]> = header_names(head).collect();
    let mut signers = Vec::new();
    for (entry, sign_unaligned) in entries {
        let name = key_name(&entry.selector, &entry.domain);
        let is_aligned = signed
            .header_from
            .as_deref()
            .is_some_and(|from| aligned(from, &entry.domain, AlignmentMode::Relaxed));
        if !is_aligned && !sign_unaligned {
            signed.unaligned.push(name);
            continue;
        }
        let signer = MailAuthSigner::from_key(SharedKey(entry.key.clone()))
            .domain(entry.domain.clone())
            .selector(entry.selector.clone())
            .headers(headers_to_sign(&present, &entry.headers))
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        signers.push((name, signer));
    }
    if signers.is_empty() {
        return signed;
    }
    // The signer keeps the header section in memory: one past the limit is not taken.
    if head.len() > MAX_HEADER_SECTION {
        for (name, _) in signers {
            signed.errors.push(format!(
                "{name}: the header section is longer than {MAX_HEADER_SECTION} octets"
            ));
        }
        return signed;
    }
    let mut streams: Vec<_> = signers.iter().map(|(_, s)| s.sign_streaming()).collect();
    let read = read(&mut |chunk| {
        for stream in &mut streams {
            stream.write(chunk);
        }
    });
    if let Err(e) = read {
        for (name, _) in &signers {
            signed
                .errors
                .push(format!("{name}: cannot read the message back: {e}"));
        }
        return signed;
    }
    for ((name, _), stream) in signers.iter().zip(streams) {
        let name = name.clone();
        match stream.finish() {
            Ok(signature) => {
                let mut field = signature.to_header();
                if !field.ends_with("\r\n") {
                    field.push_str("\r\n");
                }
                signed.fields.extend_from_slice(field.as_bytes());
                signed.signed_by.push(name);
            }
            Err(e) => signed.errors.push(format!("{name}: {e}")),
        }
    }
    signed
}

/// The list handed to the signer, for a message whose header has the fields `present`. The
/// signer (mail-auth 0.13) signs every occurrence of a listed name, and puts in `h=` once more
/// each list entry that matched nothing, which a second entry of a name never does. So a name
/// is listed once if present; an oversigned name once more whether present or not, which puts
/// it in `h=` one time more than it occurs (RFC 6376 §5.4.2: the extra, "null" entry makes a
/// field of that name added later break the signature).
fn headers_to_sign(present: &[&[u8]], headers: &DkimHeaders) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for name in headers.sign.iter().chain(&headers.oversign) {
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            continue;
        }
        seen.push(name);
        if present
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name.as_bytes()))
        {
            names.push(name.clone());
        }
        if headers
            .oversign
            .iter()
            .any(|o| o.eq_ignore_ascii_case(name))
        {
            names.push(name.clone());
        }
    }
    names
}

/// The field names of the header section, as written (the octets before the colon, as the
/// signer compares them).
fn header_names(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    message
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter(|line| !matches!(line.first(), Some(b' ' | b'\t')))
        .filter_map(|line| line.iter().position(|&b| b == b':').map(|i| &line[..i]))
}

/// The DKIM signing of every relay action that has keys, by action name.
#[derive(Debug, Default)]
pub struct DkimSigning {
    actions: HashMap<String, (Arc<DkimSigner>, bool)>,
}

impl DkimSigning {
    /// Loads the keys of every relay action. A key named by several actions is read once per
    /// action. Every failure is returned, at the line of the key in the configuration.
    pub fn from_config(config: &Config) -> Result<DkimSigning, Vec<String>> {
        let mut actions = HashMap::new();
        let mut errors = Vec::new();
        for (name, action) in &config.actions {
            let Action::Relay(relay) = action else {
                continue;
            };
            if relay.dkim.is_empty() {
                continue;
            }
            match DkimSigner::load(&relay.dkim) {
                Ok(signer) => {
                    actions.insert(name.clone(), (Arc::new(signer), relay.sign_unaligned));
                }
                Err(e) => errors.extend(e.into_iter().map(|(i, e)| {
                    crate::delivery::tables::at(
                        config,
                        &format!("actions.{name}.dkim[{i}].key"),
                        e.to_string(),
                    )
                })),
            }
        }
        if errors.is_empty() {
            Ok(DkimSigning { actions })
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Whether a message going to any of `actions` is to be signed.
    pub fn signs_for<'a>(&self, mut actions: impl Iterator<Item = &'a str>) -> bool {
        actions.any(|a| self.actions.contains_key(a))
    }

    /// Signs a message whose recipients go to `actions`: the keys of each of those actions
    /// that have keys, each key (domain and selector) once.
    pub fn sign<'a>(&self, actions: impl IntoIterator<Item = &'a str>, message: &[u8]) -> Signed {
        self.sign_streamed(actions, &Head::of(message), |feed| {
            feed(message);
            Ok(())
        })
    }

    /// As [`DkimSigning::sign`], for a message read by `read` (from its queue file), whose
    /// start through its header section is `head`.
    pub fn sign_streamed<'a>(
        &self,
        actions: impl IntoIterator<Item = &'a str>,
        head: &[u8],
        read: impl FnOnce(&mut dyn FnMut(&[u8])) -> io::Result<()>,
    ) -> Signed {
        let mut seen_actions = HashSet::new();
        let mut seen_keys = HashSet::new();
        let mut entries = Vec::new();
        for action in actions {
            if !seen_actions.insert(action) {
                continue;
            }
            let Some((signer, sign_unaligned)) = self.actions.get(action) else {
                continue;
            };
            for entry in &signer.entries {
                if seen_keys.insert((entry.domain.as_str(), entry.selector.as_str())) {
                    entries.push((entry, *sign_unaligned));
                }
            }
        }
        let mut signed = sign_streamed(entries.into_iter(), head, read);
        // A key skipped as unaligned by one action may have signed for another.
        signed.unaligned.retain(|k| !signed.signed_by.contains(k));
        signed
    }
}

/// The algorithm of a key to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa2048,
    Ed25519,
}

/// Generates a private key: Ed25519 with ring; RSA-2048 with RustCrypto's `rsa` (ring cannot
/// generate RSA keys). Both draw on the operating system's random source. Returns the PEM
/// text (PKCS#8) and the parsed key.
pub fn generate_key(algorithm: KeyAlgorithm) -> Result<(String, PrivateKey), String> {
    let pem = match algorithm {
        KeyAlgorithm::Ed25519 => {
            let der = Ed25519Key::generate_pkcs8()
                .map_err(|e| format!("cannot generate an Ed25519 key: {e}"))?;
            pem_encode("PRIVATE KEY", &der)
        }
        KeyAlgorithm::Rsa2048 => rsa2048_pkcs8()?,
    };
    let key = PrivateKey::from_pem(pem.as_bytes())
        .map_err(|e| format!("the generated key does not load: {e}"))?;
    Ok((pem, key))
}

fn rsa2048_pkcs8() -> Result<String, String> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)
        .map_err(|e| format!("cannot generate an RSA key: {e}"))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|e| format!("cannot encode the RSA key: {e}"))?;
    Ok(pem_encode("PRIVATE KEY", der.as_bytes()))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a new key file with mode 0600, refusing to replace an existing file (a rotated-out
/// key may still be needed while its signatures are verified). Synced before returning.
pub fn write_key_file(path: &Path, pem: &str) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // The umask cannot loosen 0600, but an inherited ACL default could: set it outright.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()
}

/// A DKIM key's DNS record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimRecord {
    /// `selector._domainkey.domain`
    pub name: String,
    /// `v=DKIM1; k=…; p=…`
    pub text: String,
}

impl DkimRecord {
    pub fn new(selector: &str, domain: &str, key: &PrivateKey) -> DkimRecord {
        DkimRecord {
            name: key_name(selector, domain),
            text: key.record_text(),
        }
    }

    /// The record as a zone-file line. TXT character-strings hold at most 255 octets
    /// (RFC 1035 §3.3.14), so a longer text (any RSA-2048 key) is split into several; resolvers
    /// join them again (RFC 6376 §3.6.2.2).
    pub fn zone_line(&self) -> String {
        let strings: Vec<String> = self
            .text
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!("{}. IN TXT {}", self.name, strings.join(" "))
    }
}

/// The RSA modulus size in bits, from a SubjectPublicKeyInfo or a bare RSAPublicKey.
pub fn rsa_bits(der: &[u8]) -> Option<usize> {
    let (seq, _) = der_element(der, 0x30)?;
    let (first_tag, _) = (seq.first()?, ());
    let rsa_key = if *first_tag == 0x30 {
        // SubjectPublicKeyInfo: skip the AlgorithmIdentifier, open the BIT STRING.
        let (_, rest) = der_element(seq, 0x30)?;
        let (bits, _) = der_element(rest, 0x03)?;
        let (inner, _) = der_element(bits.get(1..)?, 0x30)?;
        inner
    } else {
        seq
    };
    let (modulus, _) = der_element(rsa_key, 0x02)?;
    let modulus = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => return Some(0),
    };
    Some(modulus.len() * 8 - modulus[0].leading_zeros() as usize)
}

/// Splits one DER element with `tag` off `data`: (contents, rest).
pub(crate) fn der_element(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *data.first()? != tag {
        return None;
    }
    let first = *data.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for &b in data.get(2..2 + n)? {
            len = (len << 8) | usize::from(b);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((data.get(header..end)?, data.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"From: Mastodon <notifications@ublog.tech>\r\n\
To: pim@example.org\r\n\
Subject: New follower\r\n\
Message-ID: <abc@ublog.tech>\r\n\
\r\n\
You have a new follower.\r\n";

    fn ed25519() -> PrivateKey {
        generate_key(KeyAlgorithm::Ed25519)
            .expect("ring generates Ed25519")
            .1
    }

    fn signer(domain: &str, key: PrivateKey) -> DkimSigner {
        DkimSigner {
            entries: vec![SigningEntry {
                domain: domain.to_string(),
                selector: "s1".to_string(),
                key: Arc::new(key),
                headers: DkimHeaders::default(),
            }],
        }
    }

    fn tag<'a>(field: &'a str, name: &str) -> &'a str {
        field
            .split(';')
            .map(str::trim)
            .find_map(|t| t.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {field}"))
    }

    /// The `h=` of the one signature in `fields`, lower-cased.
    fn h_list(fields: &[u8]) -> Vec<String> {
        let field = String::from_utf8(fields.to_vec()).unwrap();
        let unfolded = field.replace("\r\n\t", " ");
        tag(&unfolded, "h")
            .split(':')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect()
    }

    #[test]
    fn signs_present_headers_relaxed_and_oversigns_the_default_set() {
        let signed = signer("ublog.tech", ed25519()).sign(MESSAGE, false);
        assert_eq!(signed.signed_by, vec!["s1._domainkey.ublog.tech"]);
        let field = String::from_utf8(signed.fields.clone()).unwrap();
        assert!(field.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; s=s1; d=ublog.tech;"));
        assert!(field.ends_with("\r\n"));
        let unfolded = field.replace("\r\n\t", " ");
        assert_eq!(tag(&unfolded, "c"), "relaxed/relaxed");
        // The fields present, bottom up; then one null entry per oversigned name.
        assert_eq!(
            h_list(&signed.fields),
            [
                "message-id",
                "subject",
                "to",
                "from",
                "from",
                "to",
                "cc",
                "subject",
                "date",
                "message-id",
                "reply-to",
                "list-unsubscribe",
                "list-unsubscribe-post"
            ]
        );
    }

    #[test]
    fn list_fields_are_signed_and_an_oversigned_name_appears_once_more_than_it_occurs() {
        let message = b"From: \"Mastodon\" <notifications@ublog.tech>\r\n\
To: a@example.org\r\n\
To: b@example.org\r\n\
List-ID: <ublog.tech>\r\n\
List-Unsubscribe: <https://ublog.tech/unsubscribe?token=x>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
Auto-Submitted: auto-generated\r\n\
X-Mailer: x\r\n\
\r\n\
Hi.\r\n";
        let h = h_list(&signer("ublog.tech", ed25519()).sign(message, false).fields);
        // Every instance present, bottom up; then one null entry per oversigned name.
        assert_eq!(
            h,
            [
                "auto-submitted",
                "list-unsubscribe-post",
                "list-unsubscribe",
                "list-id",
                "to",
                "to",
                "from",
                "from",
                "to",
                "cc",
                "subject",
                "date",
                "message-id",
                "reply-to",
                "list-unsubscribe",
                "list-unsubscribe-post"
            ]
        );
    }

    #[test]
    fn a_key_signs_the_fields_its_configuration_names() {
        let mut s = signer("ublog.tech", ed25519());
        s.entries[0].headers = DkimHeaders {
            sign: vec!["from".into(), "Subject".into(), "X-Mailer".into()],
            oversign: vec!["List-Unsubscribe".into()],
        };
        let message = b"From: a@ublog.tech\r\nTo: b@example.org\r\nSubject: s\r\n\r\nx\r\n";
        assert_eq!(
            h_list(&s.sign(message, false).fields),
            ["subject", "from", "list-unsubscribe"]
        );
    }

    #[test]
    fn subdomain_from_aligns_but_another_domain_needs_sign_unaligned() {
        let sub = b"From: a@news.ublog.tech\r\n\r\nx\r\n";
        assert_eq!(
            signer("ublog.tech", ed25519())
                .sign(sub, false)
                .signed_by
                .len(),
            1
        );
        let other = b"From: a@example.org\r\n\r\nx\r\n";
        let s = signer("ublog.tech", ed25519()).sign(other, false);
        assert!(s.fields.is_empty());
        assert_eq!(s.unaligned, vec!["s1._domainkey.ublog.tech"]);
        assert_eq!(s.header_from.as_deref(), Some("example.org"));
        assert_eq!(
            signer("ublog.tech", ed25519())
                .sign(other, true)
                .signed_by
                .len(),
            1
        );
        let no_from = b"Subject: x\r\n\r\nx\r\n";
        assert!(signer("ublog.tech", ed25519())
            .sign(no_from, false)
            .fields
            .is_empty());
    }

    #[test]
    fn rsa_record_is_subject_public_key_info_of_2048_bits() {
        let (pem, key) = generate_key(KeyAlgorithm::Rsa2048).expect("an RSA key is generated");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(key.kind(), KeyKind::Rsa { bits: 2048 });
        // SEQUENCE { SEQUENCE { rsaEncryption, NULL }, BIT STRING … }
        assert_eq!(&key.public_key()[..4], &[0x30, 0x82, 0x01, 0x22]);
        assert_eq!(rsa_bits(key.public_key()), Some(2048));
        let record = DkimRecord::new("sel", "ublog.tech", &key);
        assert!(record
            .text
            .starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"));
        let line = record.zone_line();
        assert!(line.starts_with("sel._domainkey.ublog.tech. IN TXT \"v=DKIM1; k=rsa; p="));
        let joined: String = line
            .split('"')
            .skip(1)
            .step_by(2)
            .collect::<Vec<_>>()
            .concat();
        assert_eq!(joined, record.text);
        assert!(line.split('"').skip(1).step_by(2).all(|s| s.len() <= 255));
    }

    #[test]
    fn ed25519_pem_round_trips_and_other_pem_is_refused() {
        let (pem, key) = generate_key(KeyAlgorithm::Ed25519).unwrap();
        let again = PrivateKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(again.kind(), KeyKind::Ed25519);
        assert_eq!(again.public_key(), key.public_key());
        assert_eq!(key.public_key().len(), 32);
        assert!(key.record_text().starts_with("v=DKIM1; k=ed25519; p="));
        assert!(PrivateKey::from_pem(b"not a key").is_err());
        assert!(PrivateKey::from_pem(EC_KEY.as_bytes())
            .unwrap_err()
            .contains("EC key"));
    }

    /// A P-256 key in SEC1 PEM (made with `openssl ecparam -genkey`).
    const EC_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEILABeSl49buqTNbhbTxzOJJcUrYn6CSaO3zrSLj5Cm63oAoGCCqGSM49
AwEHoUQDQgAEPUpjA6KcYHO8iNJ3wu5hgYrp2mDR2cBgxE1PhGfOwmX+wN2/H12N
U3k7nixMgYGlGyWzK/q72NwUI5G99GFL6g==
-----END EC PRIVATE KEY-----
";

    #[test]
    fn key_files_looser_than_0640_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, _) = generate_key(KeyAlgorithm::Ed25519).unwrap();
        let path = dir.path().join("k.key");
        write_key_file(&path, &pem).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(load_key(&path).is_ok());
        assert!(
            write_key_file(&path, &pem).is_err(),
            "an existing key is never replaced"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load_key(&path).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_key(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "DKIM key {}: mode 0644 is too open (0640 at most); chmod 600 it",
                path.display()
            )
        );
        let keys = [DkimKey {
            domain: "ublog.tech".into(),
            selector: "s".into(),
            key: path.clone(),
            headers: DkimHeaders::default(),
        }];
        assert_eq!(DkimSigner::load(&keys).unwrap_err(), vec![(0, err)]);
    }
}
