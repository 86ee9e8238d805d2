//! TLS-RPT (RFC 8460 §3): `_smtp._tls.DOMAIN` with `v=TLSRPTv1` and `rua` of mailto:/https: URIs.

use super::dns::Dns;
use super::{dns_error, Area, Check, Status};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsRptRecord {
    pub rua: Vec<String>,
}

/// Why a `_smtp._tls` TXT record is invalid.
pub type TlsRptError = super::tags::FieldError;

/// Whether a TXT record claims to be TLS-RPT.
pub fn is_tlsrpt(txt: &str) -> bool {
    txt.starts_with("v=TLSRPTv1")
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
        let ok = match uri.strip_prefix("mailto:") {
            Some(addr) => addr
                .rsplit_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && super::spf::is_domain_name(d)),
            None => uri.strip_prefix("https://").is_some_and(|r| !r.is_empty()),
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
        Err(e) => return vec![dns_error(area, "tls-rpt.dns-error", &e)],
        Ok(t) => t.unwrap_or_default(),
    };
    let recs: Vec<&String> = txts.iter().filter(|t| is_tlsrpt(t)).collect();
    match recs.as_slice() {
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
                "fix the record at {name}: \"v=TLSRPTv1; rua=mailto:tlsrpt@{domain}\""
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
