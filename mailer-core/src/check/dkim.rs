//! DKIM key records (RFC 6376 §3.6.1): `SEL._domainkey.DOMAIN` exists, has `p=`, is not revoked,
//! and its key type and size are sane (RFC 8301: RSA of at least 1024 bits, 2048 advised); when
//! the private key in use is known, the published key is its public half.

use crate::delivery::dkim::{der_element, rsa_bits};
use std::fmt;

use base64::Engine;

use super::dns::Dns;
use super::{dns_error, Area, Check, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ed25519,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_type: KeyType,
    /// The decoded public key; empty when revoked (`p=`).
    pub public_key: Vec<u8>,
    /// `t=y`: the domain is testing DKIM; verifiers may treat its signatures as absent.
    pub testing: bool,
    /// `t=s`: the `i=` domain must equal `d=`, no subdomain.
    pub strict: bool,
    /// `h=`: the hash algorithms the key may be used with; empty means all.
    pub hashes: Vec<String>,
    /// `s=`: the service types; empty means all (`*`).
    pub services: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError {
    pub tag: String,
    pub reason: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag {:?}: {}", self.tag, self.reason)
    }
}

/// Parses a DKIM key record's tag list (RFC 6376 §3.2, §3.6.1): `v=DKIM1` first if present,
/// each tag at most once, `k` rsa or ed25519 (RFC 8463), `p` base64 (blanks allowed, empty =
/// revoked); `h`, `s`, `t` are colon-separated lists; unknown tags are ignored.
pub fn parse(record: &str) -> Result<KeyRecord, KeyError> {
    let err = |tag: &str, reason: &str| KeyError {
        tag: tag.into(),
        reason: reason.into(),
    };
    let mut key = KeyRecord {
        key_type: KeyType::Rsa,
        public_key: Vec::new(),
        testing: false,
        strict: false,
        hashes: Vec::new(),
        services: Vec::new(),
    };
    let mut public_key = None;
    let mut seen: Vec<&str> = Vec::new();
    let list = |v: &str| -> Vec<String> {
        v.split(':')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    };
    for (i, part) in record.split(';').enumerate() {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (tag, value) = part
            .split_once('=')
            .ok_or_else(|| err(part, "expected tag=value"))?;
        let (tag, value) = (tag.trim(), value.trim());
        if seen.contains(&tag) {
            return Err(err(tag, "appears more than once (the record is invalid)"));
        }
        seen.push(tag);
        match tag {
            "v" if i == 0 && value == "DKIM1" => {}
            "v" => return Err(err("v", "must be first and \"DKIM1\"")),
            "k" => {
                key.key_type = match value {
                    "rsa" => KeyType::Rsa,
                    "ed25519" => KeyType::Ed25519,
                    _ => return Err(err("k", "unknown key type (rsa or ed25519)")),
                }
            }
            "p" => {
                let b64: String = value.chars().filter(|c| !c.is_whitespace()).collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| err("p", "not base64"))?;
                public_key = Some(bytes);
            }
            "t" => {
                let flags = list(value);
                key.testing = flags.iter().any(|f| f == "y");
                key.strict = flags.iter().any(|f| f == "s");
            }
            "h" => key.hashes = list(value),
            "s" => key.services = list(value),
            _ => {}
        }
    }
    key.public_key = public_key.ok_or_else(|| err("p", "missing"))?;
    Ok(key)
}

/// The public half of a private key the relay signs with, to compare with what DNS publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedKey {
    /// Lower-cased signing domain (`d=`).
    pub domain: String,
    pub selector: String,
    /// The key file, for messages.
    pub path: String,
    /// The `p=` octets of the key (SubjectPublicKeyInfo or RSAPublicKey for RSA, 32 octets for
    /// Ed25519), or why the key file could not be read.
    pub public_key: Result<Vec<u8>, String>,
}

/// Whether two `p=` values are the same key. RSA keys compare by their RSAPublicKey, so a
/// record publishing the bare RSAPublicKey matches one publishing it wrapped in a
/// SubjectPublicKeyInfo.
pub fn same_public_key(published: &[u8], expected: &[u8]) -> bool {
    let bare = |der: &'_ [u8]| -> Vec<u8> { rsa_public_key(der).unwrap_or(der).to_vec() };
    bare(published) == bare(expected)
}

/// The RSAPublicKey element inside a SubjectPublicKeyInfo, or the input if it is one already.
fn rsa_public_key(der: &[u8]) -> Option<&[u8]> {
    let (seq, _) = der_element(der, 0x30)?;
    if *seq.first()? != 0x30 {
        return Some(der);
    }
    let (_, rest) = der_element(seq, 0x30)?;
    let (bits, _) = der_element(rest, 0x03)?;
    let inner = bits.get(1..)?;
    der_element(inner, 0x30).map(|_| inner)
}

pub(crate) struct Outcome {
    pub checks: Vec<Check>,
    /// Selectors whose key is published and usable.
    pub usable_selectors: Vec<String>,
    /// Some selector's lookup failed.
    pub failed: bool,
}

pub(crate) async fn check(
    dns: &Dns,
    domain: &str,
    selectors: &[String],
    expected: &[ExpectedKey],
) -> Outcome {
    let area = Area::Dkim;
    let mut out = Outcome {
        checks: Vec::new(),
        usable_selectors: Vec::new(),
        failed: false,
    };
    if selectors.is_empty() {
        out.checks.push(Check::new(
            area,
            "dkim.selector",
            Status::Info,
            "no DKIM selector given; DKIM keys not checked",
        ));
        return out;
    }
    for sel in selectors {
        let name = format!("{sel}._domainkey.{domain}");
        let txts = match dns.txt(&name).await {
            Err(e) => {
                out.failed = true;
                out.checks.push(dns_error(area, "dkim.dns-error", &e));
                out.checks.push(super::unknown(
                    area,
                    "dkim.key",
                    format!("the key at {name} is unknown: its lookup failed"),
                ));
                continue;
            }
            Ok(t) => t.unwrap_or_default(),
        };
        let Some(text) = txts.iter().find(|t| t.contains("p=")).or(txts.first()) else {
            out.checks.push(
                Check::new(
                    area,
                    "dkim.key",
                    Status::Warn,
                    format!("no DKIM key at {name}: DMARC rests on SPF alone"),
                )
                .hint(format!(
                    "publish the public key of selector {sel} as TXT at {name}"
                )),
            );
            continue;
        };
        let check = match parse(text) {
            Err(e) => Check::new(
                area,
                "dkim.key",
                Status::Fail,
                format!("the key record at {name} is invalid: {e}"),
            )
            .hint(format!("republish the key of selector {sel} at {name}")),
            Ok(k) if k.public_key.is_empty() => Check::new(
                area,
                "dkim.key",
                Status::Fail,
                format!("the key at {name} is revoked (empty p=)"),
            )
            .hint(format!(
                "sign with a selector whose key is published, or republish the key at {name}"
            )),
            Ok(k) if !k.services.is_empty() && !k.services.iter().any(|s| s == "*" || s == "email") => Check::new(
                area,
                "dkim.key",
                Status::Fail,
                format!("the key at {name} is limited to s={}: receivers do not use it for email", k.services.join(":")),
            )
            .hint(format!("remove s= from the key record at {name} (or set s=email)")),
            Ok(k) if !k.hashes.is_empty() && !k.hashes.iter().any(|h| h == "sha256") => Check::new(
                area,
                "dkim.key",
                Status::Fail,
                format!("the key at {name} allows only h={}: receivers refuse sha1 signatures (RFC 8301) and no other hash is allowed", k.hashes.join(":")),
            )
            .hint(format!("set h=sha256 in the key record at {name} (or remove h=) and sign with rsa-sha256")),
            Ok(k) => {
                if k.testing {
                    out.checks.push(
                        Check::new(
                            area,
                            "dkim.testing",
                            Status::Warn,
                            format!("{name} has t=y: receivers may treat mail signed with it as unsigned (RFC 6376 §3.6.1)"),
                        )
                        .hint(format!("remove y from the t= tag at {name} once signatures verify")),
                    );
                }
                let size = key_size_check(&name, sel, &k);
                let in_use = expected
                    .iter()
                    .find(|e| e.domain.eq_ignore_ascii_case(domain) && e.selector == *sel);
                match in_use {
                    Some(e) if size.status != Status::Fail => {
                        out.checks.push(size);
                        key_match_check(&name, &k, e)
                    }
                    _ => size,
                }
            }
        };
        if check.status != Status::Fail {
            out.usable_selectors.push(sel.clone());
        }
        out.checks.push(check);
    }
    out
}

/// Compares the published key with the private key the relay signs with.
fn key_match_check(name: &str, published: &KeyRecord, expected: &ExpectedKey) -> Check {
    let area = Area::Dkim;
    let republish = format!(
        "publish the output of `mailer dkim record --key {}` at {name}",
        expected.path
    );
    match &expected.public_key {
        Err(why) => Check::new(
            area,
            "dkim.key-match",
            Status::Warn,
            format!(
                "cannot read the private key {} of {name} ({why}); the published key was not compared with it",
                expected.path
            ),
        )
        .hint("run mailer check as a user that can read the DKIM key"),
        Ok(key) if same_public_key(&published.public_key, key) => Check::new(
            area,
            "dkim.key-match",
            Status::Pass,
            format!("{name}: the published key is that of {}", expected.path),
        ),
        Ok(_) => Check::new(
            area,
            "dkim.key-match",
            Status::Fail,
            format!(
                "{name}: the published key is not that of {}, the key signing the mail: \
                 receivers will fail its DKIM signatures",
                expected.path
            ),
        )
        .hint(republish),
    }
}

fn key_size_check(name: &str, sel: &str, k: &KeyRecord) -> Check {
    let area = Area::Dkim;
    match k.key_type {
        KeyType::Ed25519 if k.public_key.len() == 32 => Check::new(
            area,
            "dkim.key",
            Status::Pass,
            format!("{name}: ed25519 key"),
        ),
        KeyType::Ed25519 => Check::new(
            area,
            "dkim.key",
            Status::Fail,
            format!(
                "{name}: ed25519 key of {} octets (32 expected)",
                k.public_key.len()
            ),
        )
        .hint(format!("republish the key of selector {sel}")),
        KeyType::Rsa => match rsa_bits(&k.public_key) {
            None => Check::new(
                area,
                "dkim.key",
                Status::Fail,
                format!("{name}: p= is not an RSA public key"),
            )
            .hint(format!("republish the key of selector {sel}")),
            Some(bits) if bits < 1024 => Check::new(
                area,
                "dkim.key",
                Status::Fail,
                format!(
                    "{name}: RSA key of {bits} bits; receivers reject keys under 1024 (RFC 8301)"
                ),
            )
            .hint(format!("generate a 2048-bit key for selector {sel}")),
            // RFC 8301 §3.2: 1024 bits is the minimum receivers accept; 2048 is advice.
            Some(bits) if bits < 2048 => Check::new(
                area,
                "dkim.key",
                Status::Info,
                format!("{name}: RSA key of {bits} bits, accepted by receivers; 2048 is advised (RFC 8301)"),
            ),
            Some(bits) if bits > 4096 => Check::new(
                area,
                "dkim.key",
                Status::Warn,
                format!("{name}: RSA key of {bits} bits; receivers need only validate up to 4096 (RFC 8301 §3.2)"),
            )
            .hint(format!("generate a 2048-bit key for selector {sel}")),
            Some(bits) => Check::new(
                area,
                "dkim.key",
                Status::Pass,
                format!("{name}: RSA key of {bits} bits"),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_and_missing_keys() {
        assert!(parse("v=DKIM1; k=rsa; p=").unwrap().public_key.is_empty());
        assert_eq!(parse("v=DKIM1; k=rsa").unwrap_err().tag, "p");
        assert_eq!(parse("v=DKIM1; k=dsa; p=AAAA").unwrap_err().tag, "k");
        assert_eq!(parse("k=rsa; p=AAAA; p=AAAA").unwrap_err().tag, "p");
        assert_eq!(parse("k=rsa; v=DKIM1; p=AAAA").unwrap_err().tag, "v");
        let k =
            parse("v=DKIM1; h=sha1:sha256; s=email:*; t=y:s; n=notes; x=ignored; p=AAAA").unwrap();
        assert_eq!(k.hashes, ["sha1", "sha256"]);
        assert!(k.testing && k.strict);
    }

    #[test]
    fn rsa_keys_match_bare_or_wrapped_and_differ_by_modulus() {
        // RSAPublicKey { INTEGER 0x00c1, INTEGER 3 } and its SubjectPublicKeyInfo.
        let bare = [0x30, 0x07, 0x02, 0x02, 0x00, 0xc1, 0x02, 0x01, 0x03];
        let mut spki = vec![0x30, 0x1b];
        spki.extend([
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ]);
        spki.extend([0x03, 0x0a, 0x00]);
        spki.extend(bare);
        assert!(same_public_key(&spki, &bare));
        assert!(same_public_key(&bare, &spki));
        assert!(same_public_key(&spki, &spki));
        let mut other = bare;
        other[5] = 0xc3;
        assert!(!same_public_key(&spki, &other));
        assert!(same_public_key(&[7; 32], &[7; 32]));
        assert!(!same_public_key(&[7; 32], &[8; 32]));
    }

    #[test]
    fn measures_rsa_modulus() {
        // SEQUENCE { INTEGER (0x00 + 128 bytes, top bit set), INTEGER 65537 }: 1024 bits.
        let mut modulus = vec![0x00, 0x80];
        modulus.extend(std::iter::repeat_n(0x11, 127));
        let mut rsa = vec![0x02, 0x81, modulus.len() as u8];
        rsa.extend(&modulus);
        rsa.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut der = vec![0x30, 0x81, rsa.len() as u8];
        der.extend(&rsa);
        assert_eq!(rsa_bits(&der), Some(1024));
    }
}
