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
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::client::{Connection, Endpoint};
use super::{tls, RelaySettings};
use crate::address::Address;
use crate::delivery::content::Content;
use crate::delivery::{EnhancedStatus, Failure, FailureKind, Outcome};
use crate::time::{Clock, SystemClock};

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

/// One fault of one member during a delivery, for metrics: what went wrong, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberFault {
    pub host: String,
    pub kind: FailureKind,
}

/// What one delivery through the pool produced.
#[derive(Debug, Default)]
pub struct PoolResult {
    /// One outcome per recipient, in the order given.
    pub outcomes: Vec<Outcome>,
    /// Each member that failed on the way, in order (a delivery may fail over several times
    /// before it succeeds). A refusal of the message counts once, by its first failure.
    pub faults: Vec<MemberFault>,
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
    last_failure: Option<Failure>,
}

/// The relay: deliver through whichever member address works.
pub struct Pool {
    settings: RelaySettings,
    tls: Arc<ClientConfig>,
    resolver: Box<dyn Resolve>,
    total: Arc<Semaphore>,
    next: AtomicUsize,
    addresses: Mutex<HashMap<Endpoint, AddressState>>,
    /// Signalled whenever a session is parked idle: an idle session holds its permits, so a
    /// task waiting for a permit must also wake to reuse (or evict) it.
    parked: Notify,
    /// What the circuit breaker reads: the system clock, or a test's.
    clock: Arc<dyn Clock>,
}

/// A session to use for the next message: an idle one, or room to open one.
enum Acquired {
    Idle(Box<Session>),
    Fresh(OwnedSemaphorePermit, OwnedSemaphorePermit),
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
            parked: Notify::new(),
            clock: Arc::new(SystemClock),
        })
    }

    /// The same pool, its breaker reading `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Pool {
        self.clock = clock;
        self
    }

    /// Delivers one message; one outcome per recipient, in the order given, and the faults of
    /// the members on the way.
    pub async fn deliver(
        &self,
        sender: Option<&Address>,
        recipients: &[Address],
        body: &Content,
    ) -> PoolResult {
        let mut result = PoolResult::default();
        if recipients.is_empty() {
            return result;
        }
        let (endpoints, lookups) = self.endpoints().await;
        for failure in &lookups {
            result.faults.push(MemberFault {
                host: failure.0.clone(),
                kind: FailureKind::Dns,
            });
        }
        let now = self.clock.now();
        let (mut healthy, mut broken): (Vec<Endpoint>, Vec<Endpoint>) =
            endpoints.into_iter().partition(|ep| {
                self.with_state(ep, |s| {
                    s.breaker_open_until.is_none_or(|until| until <= now)
                })
            });
        if !healthy.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % healthy.len();
            healthy.rotate_left(start);
            // An idle session first: a new one costs a TLS handshake and AUTH, and under the
            // total limit it would evict another address's idle session.
            healthy.sort_by_key(|ep| self.with_state(ep, |s| s.idle.is_empty()));
        } else {
            // Every address failed recently. The breaker exists to prefer an alternative, not
            // to stop retries: probe them anyway, the one failing longest ago first, so mail
            // flows again as soon as one is back.
            broken.sort_by_key(|ep| self.with_state(ep, |s| s.breaker_open_until));
            healthy = std::mem::take(&mut broken);
        }

        // Why no address took it: the attempts first, then lookups, then skipped addresses.
        let mut failures: Vec<Failure> = Vec::new();
        for endpoint in &healthy {
            let fault = |kind| MemberFault {
                host: endpoint.host.clone(),
                kind,
            };
            match self.deliver_via(endpoint, sender, recipients, body).await {
                Ok(outcomes) => {
                    let refused = outcomes.iter().find_map(|o| match o {
                        Outcome::Failed(f) if f.kind.is_next_hop() => Some(f.kind),
                        _ => None,
                    });
                    result.faults.extend(refused.map(fault));
                    result.outcomes = outcomes;
                    return result;
                }
                Err(failure) => {
                    result.faults.push(fault(failure.kind));
                    failures.push(failure);
                }
            }
        }
        failures.extend(lookups.into_iter().map(|(_, f)| f));
        for endpoint in &broken {
            let last = self.with_state(endpoint, |s| s.last_failure.clone());
            let reason = format!(
                "{}: skipped after a recent failure ({})",
                endpoint.label(),
                last.as_ref().map_or("", |f| f.reason.as_str())
            );
            let kind = last.map_or(FailureKind::Connect, |f| f.kind);
            failures.push(Failure::temporary(kind, EnhancedStatus(4, 4, 1), reason));
        }
        let kind = failures.first().map_or(FailureKind::Unrouted, |f| f.kind);
        let reasons: Vec<&str> = failures.iter().map(|f| f.reason.as_str()).collect();
        let reasons = if reasons.is_empty() {
            "no relay member configured".to_string()
        } else {
            reasons.join("; ")
        };
        let failure = Failure::temporary(
            kind,
            EnhancedStatus(4, 4, 1),
            format!("no relay address took the message: {reasons}"),
        );
        result.outcomes = Outcome::all_failed(recipients.len(), &failure);
        result
    }

    /// Per-address state for metrics.
    pub fn status(&self) -> Vec<MemberStatus> {
        let max = self.settings.max_connections_per_member.max(1);
        let now = self.clock.now();
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
                breaker_open_until: s.breaker_open_until.filter(|&until| until > now),
                last_error: s.last_failure.as_ref().map(|f| f.reason.clone()),
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
        body: &Content,
    ) -> Result<Vec<Outcome>, Failure> {
        // An idle session the server has since closed fails before the body: try the next.
        let (total, member) = loop {
            match self.acquire(endpoint).await {
                Acquired::Fresh(total, member) => break (total, member),
                Acquired::Idle(mut session) => {
                    match session.conn.send(sender, recipients, body, true).await {
                        Ok(outcomes) => {
                            self.keep(endpoint, *session).await;
                            return Ok(outcomes);
                        }
                        Err(interrupted) if interrupted.body_sent => {
                            return Ok(Outcome::all_failed(recipients.len(), &interrupted.failure))
                        }
                        Err(interrupted) => {
                            tracing::debug!(server = %endpoint.label(), reason = %interrupted.failure, "idle relay session was stale");
                        }
                    }
                }
            }
        };
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
            s.last_failure = None;
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
                Ok(Outcome::all_failed(recipients.len(), &interrupted.failure))
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
        self.parked.notify_waiters();
    }

    /// An idle session of `endpoint`, or room under both limits to open one. Idle sessions
    /// hold permits: while waiting, a session parked for this address is taken, and when the
    /// total is used up an idle session elsewhere is closed to make room instead of waiting
    /// for it forever.
    async fn acquire(&self, endpoint: &Endpoint) -> Acquired {
        let per_address = self.with_state(endpoint, |s| s.per_address.clone());
        let member = loop {
            let parked = self.parked.notified();
            tokio::pin!(parked);
            parked.as_mut().enable();
            if let Some(session) = self.with_state(endpoint, |s| s.idle.pop()) {
                return Acquired::Idle(Box::new(session));
            }
            tokio::select! {
                permit = per_address.clone().acquire_owned() => {
                    break permit.expect("pool semaphores are never closed");
                }
                _ = &mut parked => {}
            }
        };
        loop {
            let parked = self.parked.notified();
            tokio::pin!(parked);
            parked.as_mut().enable();
            if let Ok(total) = self.total.clone().try_acquire_owned() {
                return Acquired::Fresh(total, member);
            }
            let evicted = {
                let mut addresses = self
                    .addresses
                    .lock()
                    .expect("pool state lock is never poisoned");
                addresses.values_mut().find_map(|s| s.idle.pop())
            };
            if let Some(session) = evicted {
                drop(session);
                continue;
            }
            tokio::select! {
                total = self.total.clone().acquire_owned() => {
                    return Acquired::Fresh(total.expect("pool semaphores are never closed"), member);
                }
                _ = &mut parked => {}
            }
        }
    }

    fn trip(&self, endpoint: &Endpoint, failure: &Failure) {
        let until = self.clock.now() + self.settings.breaker_backoff;
        self.with_state(endpoint, |s| {
            s.breaker_open_until = Some(until);
            s.last_failure = Some(failure.clone());
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
                last_failure: None,
            });
        f(state)
    }

    /// Every address of every member, in member order; the hosts whose lookup failed, with
    /// the failure.
    async fn endpoints(&self) -> (Vec<Endpoint>, Vec<(String, Failure)>) {
        let mut endpoints = Vec::new();
        let mut errors = Vec::new();
        for member in &self.settings.members {
            let ips = match member.host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match self.resolver.lookup(&member.host).await {
                    Ok(ips) => ips,
                    Err(e) => {
                        let failure = Failure::temporary(
                            FailureKind::Dns,
                            EnhancedStatus(4, 4, 3),
                            format!("{}: address lookup failed: {e}", member.host),
                        );
                        errors.push((member.host.clone(), failure));
                        continue;
                    }
                },
            };
            endpoints.extend(ips.into_iter().map(|ip| Endpoint {
                host: member.host.clone(),
                addr: SocketAddr::new(ip, member.port),
                security: member.security,
                credentials: member.credentials.clone(),
            }));
        }
        (endpoints, errors)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mailer_testkit::certs::TestCa;
    use mailer_testkit::sink::{Sink, SinkOptions};

    use super::*;
    use crate::delivery::relay::{Member, Security};

    /// Idle sessions hold their permits: a delivery waiting for a permit must take over a
    /// session parked after another delivery instead of waiting for a permit forever.
    #[tokio::test]
    async fn deliveries_waiting_for_a_permit_reuse_a_parked_session() {
        let ca = TestCa::new();
        let sink = Sink::start(SinkOptions {
            tls: Some(ca.issue(&["127.0.0.1"])),
            require_tls: true,
            ..SinkOptions::default()
        })
        .await;
        let mut settings = RelaySettings::new(
            "client.test",
            vec![Member {
                host: "127.0.0.1".into(),
                port: sink.port(),
                security: Security::StartTls,
                credentials: None,
            }],
        );
        settings.extra_roots = vec![ca.cert_der()];
        settings.max_connections_per_member = 1;
        settings.max_connections_total = 1;
        let pool = Arc::new(Pool::new(settings, StaticResolver::default()).unwrap());
        let rcpt = [Address::parse("bob@example.org").unwrap()];
        let mut tasks = Vec::new();
        for i in 0..6 {
            let pool = pool.clone();
            let rcpt = rcpt.clone();
            tasks.push(tokio::spawn(async move {
                let message = Content::from_bytes(format!("message {i}\r\n").into_bytes());
                pool.deliver(None, &rcpt, &message).await.outcomes
            }));
        }
        for task in tasks {
            let outcomes = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("every delivery finishes: none waits forever for a permit")
                .unwrap();
            assert!(
                matches!(outcomes[..], [Outcome::Delivered { .. }]),
                "{outcomes:?}"
            );
        }
        assert_eq!(sink.count(), 6);
        assert_eq!(
            sink.connections(),
            1,
            "one session carried all six messages"
        );
    }
}
