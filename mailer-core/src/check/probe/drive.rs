//! The probe over a socket: TCP connect, the relay's own TLS handshake and verifier, and the
//! sans-IO [`ProbeSession`] fed what the server says. Every step is bounded in time.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::session::{ProbeEvent, ProbeSession};
use super::{CertSummary, Observed, TlsSeen};
use crate::address::Address;
use crate::delivery::relay::client::{tls_connect, Io};
use crate::delivery::relay::{tls, Member, Security};
use crate::smtp::client::Tls;

/// More replies than any probe dialogue has: a server that keeps talking is cut off.
const MAX_READS: usize = 64;

/// What to probe at one address.
pub(crate) struct Target {
    pub member: Member,
    pub addr: SocketAddr,
    pub helo_name: String,
    pub sender: Address,
    pub extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Bound of the connect, of the handshake and of each reply.
    pub timeout: Duration,
}

pub(crate) async fn probe(target: &Target) -> Observed {
    let member = &target.member;
    let label = format!(
        "{}[{}]:{}",
        member.host,
        target.addr.ip(),
        target.addr.port()
    );
    let mut observed = Observed::default();
    let started = Instant::now();
    let tcp = match timeout(target.timeout, TcpStream::connect(target.addr)).await {
        Err(_) => {
            observed.connect = Err(format!("connect timed out after {:?}", target.timeout));
            return observed;
        }
        Ok(Err(e)) => {
            observed.connect = Err(format!("connect failed: {e}"));
            return observed;
        }
        Ok(Ok(tcp)) => tcp,
    };
    observed.connect = Ok(started.elapsed());
    let _ = tcp.set_nodelay(true);
    let mut stream: Box<dyn Io> = Box::new(tcp);
    if member.security == Security::Implicit {
        match handshake(stream, target, &label, &mut observed).await {
            Some(tls) => stream = tls,
            None => return observed,
        }
    }
    let mut session = ProbeSession::new(
        target.helo_name.as_str(),
        match member.security {
            Security::Plain => Tls::Off,
            Security::StartTls => Tls::StartTls,
            Security::Implicit => Tls::Implicit,
        },
        member.credentials.clone(),
        target.sender.clone(),
    );
    let mut buf = vec![0u8; 8192];
    for _ in 0..MAX_READS {
        let output = session.take_output();
        if !output.is_empty() {
            let written = timeout(target.timeout, async {
                stream.write_all(&output).await?;
                stream.flush().await
            })
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => session.abort(format!("write failed: {e}")),
                Err(_) => session.abort("write timed out"),
            }
        }
        match session.poll_event() {
            Some(ProbeEvent::Finished) => break,
            Some(ProbeEvent::StartTls) => {
                let plain = std::mem::replace(
                    &mut stream,
                    Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
                );
                match handshake(plain, target, &label, &mut observed).await {
                    Some(tls) => {
                        stream = tls;
                        session.tls_established();
                    }
                    None => {
                        let reason = observed
                            .tls
                            .as_ref()
                            .and_then(|t| t.error.clone())
                            .unwrap_or_default();
                        session.abort(reason);
                    }
                }
                continue;
            }
            None => {}
        }
        let Some(step) = session.awaiting() else {
            break;
        };
        match timeout(target.timeout, stream.read(&mut buf)).await {
            Ok(Ok(0)) => session.end_of_input(),
            Ok(Ok(n)) => session.receive(&buf[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => session.end_of_input(),
            Ok(Err(e)) => session.abort(format!("read failed: {e}")),
            Err(_) => session.abort(format!(
                "no reply to {} within {:?}",
                step.as_str(),
                target.timeout
            )),
        }
    }
    session.abort("the server kept talking");
    let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
    observed.dialogue = Some(session.into_dialogue());
    observed
}

/// The relay's handshake with a verifier that also keeps the presented chain. `None` when it
/// failed; `observed.tls` says why either way.
async fn handshake(
    stream: Box<dyn Io>,
    target: &Target,
    label: &str,
    observed: &mut Observed,
) -> Option<Box<dyn Io>> {
    let mut seen = TlsSeen {
        verified_name: target.member.host.clone(),
        ..TlsSeen::default()
    };
    let (config, presented) = match tls::recording_client_config(&target.extra_roots) {
        Ok(c) => c,
        Err(e) => {
            seen.error = Some(format!("cannot use the trust anchors: {e}"));
            observed.tls = Some(seen);
            return None;
        }
    };
    let result = timeout(
        target.timeout,
        tls_connect(stream, &target.member.host, label, config),
    )
    .await;
    seen.chain = presented
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|der| CertSummary::of(der))
        .collect();
    let upgraded = match result {
        Err(_) => {
            seen.error = Some(format!(
                "TLS handshake timed out after {:?}",
                target.timeout
            ));
            None
        }
        Ok(Err(failure)) => {
            // The failure names the server first; the probe's report already does.
            let reason = failure
                .reason
                .strip_prefix(&format!("{label}: "))
                .unwrap_or(&failure.reason)
                .to_string();
            seen.error = Some(reason);
            None
        }
        Ok(Ok(tls)) => {
            seen.version = tls.get_ref().1.protocol_version().map(|v| match v {
                rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2".to_string(),
                rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".to_string(),
                other => format!("{other:?}"),
            });
            Some(Box::new(tls) as Box<dyn Io>)
        }
    };
    observed.tls = Some(seen);
    upgraded
}
