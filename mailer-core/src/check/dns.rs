//! The one resolver of `mailer check`, shared with mail-auth's SPF evaluation and the HTTPS
//! client. A missing record (NXDOMAIN, no data) is `Ok(None)`; a query that could not be
//! answered (timeout, SERVFAIL, unreachable server) is a [`DnsFailure`], never "missing".

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::net::NetError;
use mail_auth::hickory_resolver::proto::rr::{RData, RecordType};
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::MessageAuthenticator;

use super::CheckError;

/// A DNS query that got no usable answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsFailure {
    /// The queried name.
    pub name: String,
    /// The record type, e.g. `TXT`.
    pub rtype: &'static str,
    /// What went wrong: `timed out after 2s`, `SERVFAIL`, a transport error.
    pub reason: String,
}

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DNS query {} {} failed: {}",
            self.rtype, self.name, self.reason
        )
    }
}

pub(crate) struct Dns {
    auth: Arc<MessageAuthenticator>,
    timeout: Duration,
}

impl Dns {
    pub(crate) fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<Dns, CheckError> {
        let (config, mut opts) = if nameservers.is_empty() {
            mail_auth::hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| CheckError::Resolver(e.to_string()))?
        } else {
            let servers = nameservers
                .iter()
                .map(|ns| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = ns.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = ns.port();
                    NameServerConfig::new(ns.ip(), true, vec![udp, tcp])
                })
                .collect();
            (
                ResolverConfig::from_parts(None, vec![], servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = timeout;
        opts.attempts = 1;
        let auth = MessageAuthenticator::new(config, opts)
            .map_err(|e| CheckError::Resolver(e.to_string()))?;
        Ok(Dns {
            auth: Arc::new(auth),
            timeout,
        })
    }

    pub(crate) fn authenticator(&self) -> &MessageAuthenticator {
        &self.auth
    }

    pub(crate) fn resolver(&self) -> TokioResolver {
        self.auth.resolver().clone()
    }

    async fn bounded<T>(
        &self,
        name: &str,
        rtype: &'static str,
        query: impl Future<Output = Result<T, NetError>>,
    ) -> Result<Option<T>, DnsFailure> {
        let failure = |reason: String| DnsFailure {
            name: name.to_string(),
            rtype,
            reason,
        };
        match tokio::time::timeout(self.timeout, query).await {
            Err(_) => Err(failure(format!("timed out after {:?}", self.timeout))),
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err(e)) if e.is_no_records_found() => Ok(None),
            Ok(Err(e)) => Err(failure(describe(&e))),
        }
    }

    /// TXT records of `name`, each record's character-strings joined.
    pub(crate) async fn txt(&self, name: &str) -> Result<Option<Vec<String>>, DnsFailure> {
        let fq = fqdn(name);
        let lookup = self
            .bounded(name, "TXT", self.auth.resolver().txt_lookup(fq.as_str()))
            .await?;
        Ok(lookup.and_then(|l| {
            let records: Vec<String> = l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect();
            (!records.is_empty()).then_some(records)
        }))
    }

    /// MX records of `name` as (preference, host), sorted by preference; a null MX has host "".
    pub(crate) async fn mx(&self, name: &str) -> Result<Option<Vec<(u16, String)>>, DnsFailure> {
        let fq = fqdn(name);
        let lookup = self
            .bounded(name, "MX", self.auth.resolver().mx_lookup(fq.as_str()))
            .await?;
        Ok(lookup.and_then(|l| {
            let mut mxs: Vec<(u16, String)> = l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, normalize(&mx.exchange.to_ascii()))),
                    _ => None,
                })
                .collect();
            mxs.sort();
            (!mxs.is_empty()).then_some(mxs)
        }))
    }

    /// A and AAAA addresses of `name`; `None` when it has neither.
    pub(crate) async fn ips(&self, name: &str) -> Result<Option<Vec<IpAddr>>, DnsFailure> {
        let fq = fqdn(name);
        let resolver = self.auth.resolver();
        let v4 = self
            .bounded(name, "A", resolver.lookup(fq.as_str(), RecordType::A))
            .await?;
        let v6 = self
            .bounded(name, "AAAA", resolver.lookup(fq.as_str(), RecordType::AAAA))
            .await?;
        let ips: Vec<IpAddr> = v4
            .iter()
            .chain(v6.iter())
            .flat_map(|l| l.answers().iter())
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        Ok((!ips.is_empty()).then_some(ips))
    }
    /// The A (`v6` false) or AAAA (`v6` true) addresses of `name`, as SPF's `a`, `mx` and
    /// `exists` mechanisms query them (RFC 7208 §5: only the family of the client's address).
    pub(crate) async fn addrs(
        &self,
        name: &str,
        v6: bool,
    ) -> Result<Option<Vec<IpAddr>>, DnsFailure> {
        let fq = fqdn(name);
        let (rtype, label) = if v6 {
            (RecordType::AAAA, "AAAA")
        } else {
            (RecordType::A, "A")
        };
        let lookup = self
            .bounded(name, label, self.auth.resolver().lookup(fq.as_str(), rtype))
            .await?;
        let ips: Vec<IpAddr> = lookup
            .iter()
            .flat_map(|l| l.answers().iter())
            .filter_map(|r| match &r.data {
                RData::A(a) if !v6 => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) if v6 => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        Ok((!ips.is_empty()).then_some(ips))
    }

    /// The PTR names of `ip` (lowercase, no trailing dot), in the order of the answer.
    pub(crate) async fn ptr(&self, ip: IpAddr) -> Result<Option<Vec<String>>, DnsFailure> {
        let name = reverse_name(ip);
        let lookup = self
            .bounded(
                &name,
                "PTR",
                self.auth.resolver().lookup(name.as_str(), RecordType::PTR),
            )
            .await?;
        let names: Vec<String> = lookup
            .iter()
            .flat_map(|l| l.answers().iter())
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(normalize(&p.0.to_ascii())),
                _ => None,
            })
            .collect();
        Ok((!names.is_empty()).then_some(names))
    }
}

/// `4.3.2.1.in-addr.arpa.` or the nibble form under `ip6.arpa.`.
pub(crate) fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for byte in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    }
}

fn describe(e: &NetError) -> String {
    use mail_auth::hickory_resolver::net::DnsError;
    match e {
        NetError::Dns(DnsError::ResponseCode(code)) => code.to_str().to_ascii_uppercase(),
        NetError::Timeout => "timed out".into(),
        other => other.to_string(),
    }
}

pub(crate) use crate::domain::normalize;

/// The absolute form, so no search domain is ever appended.
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}
