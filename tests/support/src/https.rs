//! An HTTPS server on 127.0.0.1 serving one configurable reply, for MTA-STS policy fetches.
//!
//! It makes its own test CA at start (rcgen) and a server certificate for the names given, so a
//! client trusting [`HttpsServer::ca_der`] verifies it; a certificate for other names tests the
//! name check. It speaks HTTP/1.1, one request per connection.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The reply given to `GET /.well-known/mta-sts.txt` (other paths get 404).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// `Content-Type` header; none when `None`.
    pub content_type: Option<String>,
    /// `Location` header, for redirects.
    pub location: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    /// 200 with `Content-Type: text/plain` and `body`.
    pub fn policy(body: &str) -> Reply {
        Reply {
            status: 200,
            content_type: Some("text/plain".into()),
            location: None,
            body: body.as_bytes().to_vec(),
        }
    }

    /// `status` with no body and a `text/plain` type.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            content_type: Some("text/plain".into()),
            location: None,
            body: Vec::new(),
        }
    }
}

/// A running HTTPS server; stops when dropped.
pub struct HttpsServer {
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    task: JoinHandle<()>,
}

impl HttpsServer {
    /// Starts a server whose certificate (from a fresh test CA) names `cert_names`.
    pub async fn start(cert_names: &[&str], reply: Reply) -> HttpsServer {
        let ca_key = KeyPair::generate().expect("generate test CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mailer test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign test CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().expect("generate server key");
        let names: Vec<String> = cert_names.iter().map(|n| n.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .expect("server certificate names")
            .signed_by(&leaf_key, &issuer)
            .expect("sign server certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("server certificate and key match");
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the test HTTPS server");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let reply = Arc::new(reply);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let reply = reply.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some(path) = read_request_path(&mut tls).await else {
                        return;
                    };
                    let bytes = if path == "/.well-known/mta-sts.txt" {
                        render(&reply)
                    } else {
                        render(&Reply::status(404))
                    };
                    let _ = tls.write_all(&bytes).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        HttpsServer {
            addr,
            ca: ca_cert.der().clone(),
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The test CA's certificate, to add to the client's trusted roots.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.clone()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the request head (bounded to 16 KiB) and returns the request target.
async fn read_request_path<S: AsyncReadExt + Unpin>(stream: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return None;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next()?;
    line.split(' ').nth(1).map(str::to_string)
}

fn render(reply: &Reply) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {} Test\r\n", reply.status);
    if let Some(ct) = &reply.content_type {
        out.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(loc) = &reply.location {
        out.push_str(&format!("Location: {loc}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&reply.body);
    bytes
}
