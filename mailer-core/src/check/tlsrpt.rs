//! TLS-RPT (RFC 8460 §3): `_smtp._tls.DOMAIN` with `v=TLSRPTv1` and `rua` of mailto:/https: URIs.

use super::dns::Dns;
use super::{dns_error, Area, Check, Status};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsRptRecord {
    pub rua: Vec<String>,
}

/// Why a `_smtp._tls` TXT record is invalid.
pub type TlsRptError = super::tags::FieldError;

/// Whether a TXT record is TLS-RPT: `v=TLSRPTv1` then `;`, a blank or the end (RFC 8460 §3).
pub fn is_tlsrpt(txt: &str) -> bool {
    txt.strip_prefix("v=TLSRPTv1")
        .is_some_and(|r| r.is_empty() || r.starts_with([';', ' ', '\t']))
}

/// Whether a TXT record that is not TLS-RPT was meant to be (the version in another case or
/// with blanks); senders discard it.
pub fn looks_like_tlsrpt(txt: &str) -> bool {
    let squeezed: String = txt
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    squeezed.starts_with("v=tlsrpt")
}

/// The `rua=` value as written, for a fix that keeps the admin's destinations.
fn written_rua(txt: &str) -> Option<&str> {
    txt.split(';')
        .filter_map(|f| f.split_once('='))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("rua"))
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Parses `v=TLSRPTv1; rua=URI[,URI]*` (extension fields allowed, `;`-separated, optional WSP).
pub fn parse(record: &str) -> Result<TlsRptRecord, TlsRptError> {
    use super::tags::{error, fields};
    let fields = fields(record, "TLSRPTv1")?;
    let (_, value) = fields
        .iter()
        .find(|(name, _)| *name == "rua")
        .ok_or_else(|| error("rua", "missing"))?;
    let mut rua = Vec::new();
    for uri in value.split(',') {
        let uri = uri.trim_matches([' ', '\t']);
        // URI schemes are case-insensitive (RFC 3986 §3.1).
        let scheme_end = uri.find(':').map_or(0, |i| i + 1);
        let (scheme, rest) = (uri[..scheme_end].to_ascii_lowercase(), &uri[scheme_end..]);
        let ok = match scheme.as_str() {
            "mailto:" => rest
                .rsplit_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && super::spf::is_domain_name(d)),
            "https:" => rest.strip_prefix("//").is_some_and(|r| !r.is_empty()),
            _ => false,
        };
        if !ok {
            return Err(error(
                "rua",
                &format!("{uri:?} is not a mailto: or https: URI"),
            ));
        }
        rua.push(uri.to_string());
    }
    Ok(TlsRptRecord { rua })
}

pub(crate) async fn check(dns: &Dns, domain: &str) -> Vec<Check> {
    let area = Area::TlsRpt;
    let name = format!("_smtp._tls.{domain}");
    let txts = match dns.txt(&name).await {
        Err(e) => {
            return vec![
                dns_error(area, "tls-rpt.dns-error", &e),
                super::unknown(
                    area,
                    "tls-rpt.record",
                    format!("the TLS-RPT record at {name} is unknown: its lookup failed"),
                ),
            ]
        }
        Ok(t) => t.unwrap_or_default(),
    };
    let recs: Vec<&String> = txts.iter().filter(|t| is_tlsrpt(t)).collect();
    let keep_rua =
        |t: &str| written_rua(t).map_or(format!("mailto:tlsrpt@{domain}"), str::to_string);
    match recs.as_slice() {
        [] if txts.iter().any(|t| looks_like_tlsrpt(t)) => {
            let text = txts
                .iter()
                .find(|t| looks_like_tlsrpt(t))
                .map_or("", |t| t.as_str());
            vec![Check::new(
                area,
                "tls-rpt.record",
                Status::Fail,
                format!("{name} has \"{text}\", which senders discard: the record must start with v=TLSRPTv1 exactly"),
            )
            .hint(format!("publish \"v=TLSRPTv1; rua={}\" at {name}", keep_rua(text)))]
        }
        [] => vec![Check::new(
            area,
            "tls-rpt.record",
            Status::Warn,
            format!("no TLS-RPT record at {name}: TLS failures of inbound mail go unreported"),
        )
        .hint(format!(
            "publish TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@{domain}\" at {name}"
        ))],
        [one] => match parse(one) {
            Ok(r) => vec![Check::new(
                area,
                "tls-rpt.record",
                Status::Pass,
                format!("reports to {}", r.rua.join(", ")),
            )],
            Err(e) => vec![Check::new(
                area,
                "tls-rpt.record",
                Status::Fail,
                format!("invalid TLS-RPT record at {name}: {e}"),
            )
            .hint(format!(
                "fix the record at {name}: \"v=TLSRPTv1; rua={}\"",
                keep_rua(one)
            ))],
        },
        many => vec![Check::new(
            area,
            "tls-rpt.record",
            Status::Fail,
            format!(
                "{name} has {} TLS-RPT records; senders ignore them all",
                many.len()
            ),
        )
        .hint(format!("keep one v=TLSRPTv1 record at {name}"))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let r = parse("v=TLSRPTv1; rua=mailto:tls@ublog.tech,https://r.example/x").unwrap();
        assert_eq!(r.rua.len(), 2);
        assert_eq!(parse("v=TLSRPTv1;").unwrap_err().field, "rua");
        assert_eq!(parse("v=TLSRPTv1; rua=ftp://x").unwrap_err().field, "rua");
        assert!(parse("v=TLSRPTv2; rua=mailto:a@b.c").is_err());
    }
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    #[test]
    fn record_with_a_leading_semicolon_is_not_tlsrpt() {
        // Found by the tlsrpt fuzz target: the version check was skipped.
        assert!(parse("; rua=mailto:tlsrpt@ublog.lt2").is_err());
        assert!(parse("").is_err());
    }
}
