//! The TLS client configuration of the relay and plain words for its failures.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// The trust anchors of the relay: the web PKI roots plus `extra_roots`.
pub fn roots(extra_roots: &[CertificateDer<'static>]) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for root in extra_roots {
        roots.add(root.clone())?;
    }
    Ok(roots)
}

/// A client configuration trusting the web PKI roots plus `extra_roots`, with ring.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(extra_roots)?)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The certificates a server presented, leaf first, as [`recording_client_config`] saw them.
pub type Presented = Arc<Mutex<Vec<CertificateDer<'static>>>>;

/// The relay's configuration for one connection, verifying exactly as [`client_config`] does
/// (the same roots, the same webpki verifier) and also keeping the chain the server presented,
/// so that a probe can say when a certificate that failed verification expires.
pub fn recording_client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<(Arc<ClientConfig>, Presented), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(extra_roots)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let presented = Presented::default();
    let verifier = Arc::new(Recording {
        inner,
        presented: presented.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((Arc::new(config), presented))
}

#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    presented: Presented,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.presented.lock().unwrap_or_else(|p| p.into_inner()) = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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
