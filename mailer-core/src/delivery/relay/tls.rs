//! The TLS client configuration of the relay and plain words for its failures.

use std::sync::Arc;

use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};

/// A client configuration trusting the web PKI roots plus `extra_roots`, with ring.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for root in extra_roots {
        roots.add(root.clone())?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name to verify: an IP address for an IP literal (rustls then sends no SNI and checks
/// the IP SAN), else the DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|_| format!("invalid TLS server name {host:?}"))
}

/// Why the handshake failed, in words an administrator acts on.
pub fn describe_error(err: &std::io::Error) -> String {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(cert)) => {
            format!(
                "TLS certificate verification failed: {}",
                describe_certificate_error(cert)
            )
        }
        Some(other) => format!("TLS handshake failed: {other}"),
        None => format!("TLS handshake failed: {err}"),
    }
}

fn describe_certificate_error(err: &CertificateError) -> String {
    match err {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate not valid yet".into()
        }
        CertificateError::UnknownIssuer => {
            "unknown issuer (no trusted root signed the certificate chain)".into()
        }
        CertificateError::NotValidForName => "name mismatch".into(),
        CertificateError::NotValidForNameContext { presented, .. } => {
            let names: Vec<String> = presented.iter().map(|n| strip_name_kind(n)).collect();
            if names.is_empty() {
                "name mismatch (certificate names no host)".into()
            } else {
                format!("name mismatch (certificate is for {})", names.join(", "))
            }
        }
        CertificateError::Revoked => "certificate revoked".into(),
        CertificateError::BadSignature => "bad certificate signature".into(),
        CertificateError::BadEncoding => "malformed certificate".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "certificate not valid for TLS servers".into()
        }
        other => other.to_string(),
    }
}

/// webpki presents names as `DnsName("x")` or `IpAddress(…)`; show just the name.
fn strip_name_kind(name: &str) -> String {
    match (name.find('('), name.rfind(')')) {
        (Some(open), Some(close)) if open < close => {
            name[open + 1..close].trim_matches('"').to_string()
        }
        _ => name.to_string(),
    }
}
