//! Certificates made at test time: a private CA and leaves it issues, so tests run real TLS
//! with verification on (no "accept anything" verifiers).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority that exists only for one test.
pub struct TestCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate with its key and the chain a server presents (leaf first).
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub key_der: Vec<u8>,
    pub chain: Vec<CertificateDer<'static>>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("ring generates a P-256 key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to parse");
        let mut dn = DistinguishedName::new();
        // A distinct name per CA, so a leaf of another test CA is an unknown issuer rather
        // than a bad signature under a same-named trusted CA.
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        dn.push(
            DnType::CommonName,
            format!("mailer test CA {}-{serial}", std::process::id()),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA parameters are valid");
        TestCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// A leaf valid now for `names`; names that parse as IP addresses become IP SANs.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let now = SystemTime::now();
        self.issue_valid_between(
            names,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(86400),
        )
    }

    /// A leaf whose validity ended yesterday.
    pub fn issue_expired(&self, names: &[&str]) -> Leaf {
        let now = SystemTime::now();
        self.issue_valid_between(
            names,
            now - Duration::from_secs(30 * 86400),
            now - Duration::from_secs(86400),
        )
    }

    /// A leaf valid since an hour ago that expires `valid_for` from now.
    pub fn issue_expiring_in(&self, names: &[&str], valid_for: Duration) -> Leaf {
        let now = SystemTime::now();
        self.issue_valid_between(names, now - Duration::from_secs(3600), now + valid_for)
    }

    fn issue_valid_between(
        &self,
        names: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Leaf {
        let key = KeyPair::generate().expect("ring generates a P-256 key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to parse");
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    SanType::DnsName((*name).try_into().expect("test names are valid DNS names"))
                }
            })
            .collect();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.distinguished_name = dn;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf parameters are valid");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            chain: vec![cert.der().clone(), self.cert_der.clone()],
        }
    }

    /// Writes the CA certificate as `ca.pem` in `dir` and returns its path.
    pub fn write_pem_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.cert_pem).expect("temp dir is writable");
        path
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl Leaf {
    /// Writes `cert.pem` (leaf then CA) and `key.pem` into `dir`; returns (cert, key) paths.
    pub fn write_pem_files(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        let chain_pem: String = self
            .chain
            .iter()
            .map(|der| pem_encode("CERTIFICATE", der))
            .collect();
        std::fs::write(&cert_path, chain_pem).expect("temp dir is writable");
        std::fs::write(&key_path, &self.key_pem).expect("temp dir is writable");
        (cert_path, key_path)
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// A TLS server configuration presenting this leaf (ring provider, TLS 1.2 and 1.3).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), self.private_key())
        .expect("the leaf key matches its certificate");
        Arc::new(config)
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
