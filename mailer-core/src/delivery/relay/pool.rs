//! The smarthost pool: expands members to addresses, spreads messages over them round robin,
//! fails over at once, skips failing addresses for a while and keeps sessions for reuse.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::ClientConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::client::{Connection, Endpoint};
use super::{tls, RelaySettings};
use crate::address::Address;
use crate::delivery::{EnhancedStatus, Failure, Outcome};

/// Host name to addresses. An IP literal member is never looked up.
pub trait Resolve: Send + Sync + 'static {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;
}

impl Resolve for hickory_resolver::TokioResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move {
            let found = self.lookup_ip(host).await.map_err(io::Error::other)?;
            Ok(found.iter().collect())
        })
    }
}

/// One resolver shared by several pools.
impl<R: Resolve + ?Sized> Resolve for std::sync::Arc<R> {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        (**self).lookup(host)
    }
}

/// A fixed name table, for tests and for members pinned to addresses.
#[derive(Clone, Debug, Default)]
pub struct StaticResolver(pub HashMap<String, Vec<IpAddr>>);

impl Resolve for StaticResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        let found = self.0.get(&host.to_ascii_lowercase()).cloned();
        Box::pin(async move {
            found
                .filter(|ips| !ips.is_empty())
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
        })
    }
}

/// One member address as metrics see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub host: String,
    pub address: SocketAddr,
    /// Sessions open now, busy or idle.
    pub open_connections: usize,
    pub idle_connections: usize,
    /// While set and in the future, the address is skipped.
    pub breaker_open_until: Option<Instant>,
    pub last_error: Option<String>,
}

/// A session with the permits that count it against the limits.
struct Session {
    conn: Connection,
    _total: OwnedSemaphorePermit,
    _member: OwnedSemaphorePermit,
}

struct AddressState {
    per_address: Arc<Semaphore>,
    idle: Vec<Session>,
    breaker_open_until: Option<Instant>,
    last_error: Option<String>,
}

/// The relay: deliver through whichever member address works.
pub struct Pool {
    settings: RelaySettings,
    tls: Arc<ClientConfig>,
    resolver: Box<dyn Resolve>,
    total: Arc<Semaphore>,
    next: AtomicUsize,
    addresses: Mutex<HashMap<Endpoint, AddressState>>,
}

impl Pool {
    /// Fails only when an `extra_roots` certificate cannot be used as a trust anchor.
    pub fn new(settings: RelaySettings, resolver: impl Resolve) -> Result<Pool, rustls::Error> {
        let tls = tls::client_config(&settings.extra_roots)?;
        let total = Arc::new(Semaphore::new(settings.max_connections_total.max(1)));
        Ok(Pool {
            settings,
            tls,
            resolver: Box::new(resolver),
            total,
            next: AtomicUsize::new(0),
            addresses: Mutex::new(HashMap::new()),
        })
    }

    /// Delivers one message; one outcome per recipient, in the order given.
    pub async fn deliver(
        &self,
        sender: Option<&Address>,
        recipients: &[Address],
        body: &[u8],
    ) -> Vec<Outcome> {
        if recipients.is_empty() {
            return Vec::new();
        }
        let (endpoints, mut errors) = self.endpoints().await;
        let now = Instant::now();
        let (mut healthy, mut broken): (Vec<Endpoint>, Vec<Endpoint>) =
            endpoints.into_iter().partition(|ep| {
                self.with_state(ep, |s| {
                    s.breaker_open_until.is_none_or(|until| until <= now)
                })
            });
        if !healthy.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % healthy.len();
            healthy.rotate_left(start);
        } else {
            // Every address failed recently. The breaker exists to prefer an alternative, not
            // to stop retries: probe them anyway, the one failing longest ago first, so mail
            // flows again as soon as one is back.
            broken.sort_by_key(|ep| self.with_state(ep, |s| s.breaker_open_until));
            healthy = std::mem::take(&mut broken);
        }

        for endpoint in &healthy {
            match self.deliver_via(endpoint, sender, recipients, body).await {
                Ok(outcomes) => return outcomes,
                Err(failure) => errors.push(failure.reason),
            }
        }
        for endpoint in &broken {
            let last = self
                .with_state(endpoint, |s| s.last_error.clone())
                .unwrap_or_default();
            errors.push(format!(
                "{}: skipped after a recent failure ({last})",
                endpoint.label()
            ));
        }
        if errors.is_empty() {
            errors.push("no relay member configured".into());
        }
        let failure = Failure::temporary(
            EnhancedStatus(4, 4, 1),
            format!("no relay address took the message: {}", errors.join("; ")),
        );
        recipients
            .iter()
            .map(|_| Outcome::Failed(failure.clone()))
            .collect()
    }

    /// Per-address state for metrics.
    pub fn status(&self) -> Vec<MemberStatus> {
        let max = self.settings.max_connections_per_member.max(1);
        let addresses = self
            .addresses
            .lock()
            .expect("pool state lock is never poisoned");
        let mut out: Vec<MemberStatus> = addresses
            .iter()
            .map(|(ep, s)| MemberStatus {
                host: ep.host.clone(),
                address: ep.addr,
                open_connections: max - s.per_address.available_permits(),
                idle_connections: s.idle.len(),
                breaker_open_until: s.breaker_open_until.filter(|&until| until > Instant::now()),
                last_error: s.last_error.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.host, a.address).cmp(&(&b.host, b.address)));
        out
    }

    /// Closes every idle session with QUIT.
    pub async fn close_idle(&self) {
        let idle: Vec<Session> = {
            let mut addresses = self
                .addresses
                .lock()
                .expect("pool state lock is never poisoned");
            addresses
                .values_mut()
                .flat_map(|s| s.idle.drain(..))
                .collect()
        };
        for session in idle {
            session.conn.quit().await;
        }
    }

    /// Tries idle sessions of `endpoint`, then a new one. `Err` means this address did not
    /// take the message and nothing was delivered, so the next address may be tried.
    async fn deliver_via(
        &self,
        endpoint: &Endpoint,
        sender: Option<&Address>,
        recipients: &[Address],
        body: &[u8],
    ) -> Result<Vec<Outcome>, Failure> {
        // An idle session the server has since closed fails before the body: try the next.
        while let Some(mut session) = self.with_state(endpoint, |s| s.idle.pop()) {
            match session.conn.send(sender, recipients, body, true).await {
                Ok(outcomes) => {
                    self.keep(endpoint, session).await;
                    return Ok(outcomes);
                }
                Err(interrupted) if interrupted.body_sent => {
                    return Ok(all_failed(recipients, interrupted.failure))
                }
                Err(interrupted) => {
                    tracing::debug!(server = %endpoint.label(), reason = %interrupted.failure, "idle relay session was stale");
                }
            }
        }

        let (total, member) = self.permits(endpoint).await;
        let conn = match Connection::open(endpoint, &self.settings, self.tls.clone()).await {
            Ok(conn) => conn,
            Err(failure) => {
                tracing::warn!(server = %endpoint.label(), reason = %failure, "relay address failed");
                self.trip(endpoint, &failure);
                return Err(failure);
            }
        };
        self.with_state(endpoint, |s| {
            s.breaker_open_until = None;
            s.last_error = None;
        });
        let mut session = Session {
            conn,
            _total: total,
            _member: member,
        };
        match session.conn.send(sender, recipients, body, false).await {
            Ok(outcomes) => {
                self.keep(endpoint, session).await;
                Ok(outcomes)
            }
            Err(interrupted) if interrupted.body_sent => {
                Ok(all_failed(recipients, interrupted.failure))
            }
            Err(interrupted) => {
                self.trip(endpoint, &interrupted.failure);
                Err(interrupted.failure)
            }
        }
    }

    /// After a transaction: RSET and park the session for the next message.
    async fn keep(&self, endpoint: &Endpoint, mut session: Session) {
        if !session.conn.is_usable() || session.conn.reset().await.is_err() {
            return;
        }
        self.with_state(endpoint, |s| s.idle.push(session));
    }

    /// Waits for room under both limits. Idle sessions hold permits; when the total is used
    /// up, an idle session elsewhere is closed to make room instead of waiting for it forever.
    async fn permits(&self, endpoint: &Endpoint) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        let per_address = self.with_state(endpoint, |s| s.per_address.clone());
        let member = per_address
            .acquire_owned()
            .await
            .expect("pool semaphores are never closed");
        loop {
            if let Ok(total) = self.total.clone().try_acquire_owned() {
                return (total, member);
            }
            let evicted = {
                let mut addresses = self
                    .addresses
                    .lock()
                    .expect("pool state lock is never poisoned");
                addresses.values_mut().find_map(|s| s.idle.pop())
            };
            match evicted {
                Some(session) => drop(session),
                None => {
                    let total = self
                        .total
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("pool semaphores are never closed");
                    return (total, member);
                }
            }
        }
    }

    fn trip(&self, endpoint: &Endpoint, failure: &Failure) {
        let until = Instant::now() + self.settings.breaker_backoff;
        self.with_state(endpoint, |s| {
            s.breaker_open_until = Some(until);
            s.last_error = Some(failure.reason.clone());
        });
    }

    fn with_state<T>(&self, endpoint: &Endpoint, f: impl FnOnce(&mut AddressState) -> T) -> T {
        let mut addresses = self
            .addresses
            .lock()
            .expect("pool state lock is never poisoned");
        let per_member = self.settings.max_connections_per_member.max(1);
        let state = addresses
            .entry(endpoint.clone())
            .or_insert_with(|| AddressState {
                per_address: Arc::new(Semaphore::new(per_member)),
                idle: Vec::new(),
                breaker_open_until: None,
                last_error: None,
            });
        f(state)
    }

    /// Every address of every member, in member order; lookup failures as reasons.
    async fn endpoints(&self) -> (Vec<Endpoint>, Vec<String>) {
        let mut endpoints = Vec::new();
        let mut errors = Vec::new();
        for member in &self.settings.members {
            let ips = match member.host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match self.resolver.lookup(&member.host).await {
                    Ok(ips) => ips,
                    Err(e) => {
                        errors.push(format!("{}: address lookup failed: {e}", member.host));
                        continue;
                    }
                },
            };
            endpoints.extend(ips.into_iter().map(|ip| Endpoint {
                host: member.host.clone(),
                addr: SocketAddr::new(ip, member.port),
                security: member.security,
            }));
        }
        (endpoints, errors)
    }
}

fn all_failed(recipients: &[Address], failure: Failure) -> Vec<Outcome> {
    recipients
        .iter()
        .map(|_| Outcome::Failed(failure.clone()))
        .collect()
}
