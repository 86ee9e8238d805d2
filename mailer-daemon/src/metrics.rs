//! Prometheus metrics of the daemon and the HTTP endpoint that exposes them.
//!
//! Counters are updated where the fact happens; gauges that describe state (the queue, relay
//! connections and circuit breakers) are computed from a [`Snapshot`] taken at each scrape.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionOutcome {
    pub action: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Host {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostKind {
    pub host: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Check {
    pub check: String,
}

/// One address of a relay pool member, as the probe names it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayAddress {
    /// `host:port` as configured.
    pub relay: String,
    /// `ip:port` probed, or `unresolved`.
    pub address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayAddressCheck {
    pub relay: String,
    pub address: String,
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    pub version: String,
}

/// Every metric of the daemon, registered once in [`Metrics::new`].
pub struct Metrics {
    pub sessions: Counter,
    pub accepted: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub rejected: Family<Reason, Counter>,
    pub deliveries: Family<ActionOutcome, Counter>,
    pub misaligned: Counter,
    pub relay_failures: Family<HostKind, Counter>,
    pub relay_connections: Family<Host, Gauge>,
    pub relay_breaker_open: Family<Host, Gauge>,
    pub delivery_duration: Histogram,
    pub queue_messages: Gauge,
    pub queue_held: Gauge,
    pub queue_oldest_age: Gauge,
    pub queue_corrupt: Gauge,
    pub check_status: Family<Check, Gauge>,
    pub relay_probe_status: Family<RelayAddressCheck, Gauge>,
    pub relay_cert_expiry: Family<RelayAddress, Gauge>,
    /// When each probed certificate expires (unix seconds): the gauge counts down at each
    /// scrape, between probes too.
    relay_cert_not_after: Mutex<Vec<(RelayAddress, i64)>>,
    pub reloads: Family<Outcome, Counter>,
    registry: Mutex<Registry>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            sessions: Counter::default(),
            accepted: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            rejected: Family::default(),
            deliveries: Family::default(),
            misaligned: Counter::default(),
            relay_failures: Family::default(),
            relay_connections: Family::default(),
            relay_breaker_open: Family::default(),
            // 1 s … 3 days: local mail takes milliseconds, a relay outage days.
            delivery_duration: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            queue_messages: Gauge::default(),
            queue_held: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            queue_corrupt: Gauge::default(),
            check_status: Family::default(),
            relay_probe_status: Family::default(),
            relay_cert_expiry: Family::default(),
            relay_cert_not_after: Mutex::new(Vec::new()),
            reloads: Family::default(),
            registry: Mutex::new(Registry::default()),
        };
        let mut r = Registry::default();
        r.register(
            "mailer_sessions",
            "SMTP sessions accepted",
            m.sessions.clone(),
        );
        r.register(
            "mailer_messages_accepted",
            "Messages accepted into the queue",
            m.accepted.clone(),
        );
        r.register(
            "mailer_messages_rejected",
            "Connections, commands or messages refused, by reason",
            m.rejected.clone(),
        );
        r.register(
            "mailer_deliveries",
            "Recipient delivery results by action and outcome (delivered, deferred, bounced, expired)",
            m.deliveries.clone(),
        );
        r.register(
            "mailer_bytes_in",
            "Octets of messages accepted",
            m.bytes_in.clone(),
        );
        r.register(
            "mailer_bytes_out",
            "Octets of messages handed to the next hop or a mailbox",
            m.bytes_out.clone(),
        );
        r.register(
            "mailer_misalignments",
            "Relayed messages whose header From does not align with the envelope sender",
            m.misaligned.clone(),
        );
        r.register(
            "mailer_relay_failures",
            "Relay attempts that failed, by relay host and kind (connect, tls, auth, 4xx, 5xx)",
            m.relay_failures.clone(),
        );
        r.register(
            "mailer_relay_connections",
            "Relay sessions open now (busy or idle), by relay host",
            m.relay_connections.clone(),
        );
        r.register(
            "mailer_relay_circuit_open",
            "Addresses of a relay host skipped by the circuit breaker now",
            m.relay_breaker_open.clone(),
        );
        r.register(
            "mailer_delivery_duration_seconds",
            "Time from arrival to delivery, per delivered recipient",
            m.delivery_duration.clone(),
        );
        r.register(
            "mailer_queue_messages",
            "Messages in the queue",
            m.queue_messages.clone(),
        );
        r.register(
            "mailer_queue_held_messages",
            "Messages on hold",
            m.queue_held.clone(),
        );
        r.register(
            "mailer_queue_oldest_age_seconds",
            "Age of the oldest message in the queue (0 when empty)",
            m.queue_oldest_age.clone(),
        );
        r.register(
            "mailer_queue_corrupt_files",
            "Queue files set aside in corrupt/ because they could not be used",
            m.queue_corrupt.clone(),
        );
        r.register(
            "mailer_check_status",
            "Deliverability check result per check: 0 ok, 1 warning, 2 failure, 3 unknown",
            m.check_status.clone(),
        );
        r.register(
            "mailer_relay_probe_status",
            "Relay pool probe result per member address and check: 0 ok, 1 warning, 2 failure, 3 not reached",
            m.relay_probe_status.clone(),
        );
        r.register(
            "mailer_relay_cert_expiry_seconds",
            "Seconds until the TLS certificate of a relay pool member address expires (negative: expired)",
            m.relay_cert_expiry.clone(),
        );
        r.register(
            "mailer_config_reloads",
            "Configuration reloads by outcome (applied, refused)",
            m.reloads.clone(),
        );
        let build = Family::<BuildInfo, Gauge>::default();
        build
            .get_or_create(&BuildInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        r.register("mailer_build_info", "Version of the running daemon", build);
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = r;
        m
    }

    /// The latest result of a deliverability check (see [`status_level`]).
    pub fn check_status(&self, id: &str, status: mailer_core::check::Status) {
        self.check_status
            .get_or_create(&Check {
                check: id.to_string(),
            })
            .set(status_level(Some(status)));
    }

    /// The latest probe of the relay pool, made at `probed_at` (unix seconds). Every check
    /// of every address is set, as the DNS checks' status (see [`status_level`]); a check not
    /// reached because an earlier step failed is unknown. Addresses no longer probed are
    /// dropped.
    pub fn relay_probe(&self, report: &mailer_core::check::probe::ProbeReport, probed_at: i64) {
        use mailer_core::check::probe::IDS;
        self.relay_probe_status.clear();
        let mut not_after = Vec::new();
        for member in &report.members {
            let address = member
                .address
                .clone()
                .unwrap_or_else(|| "unresolved".to_string());
            for id in IDS {
                let level = status_level(member.check(id).map(|c| c.status));
                self.relay_probe_status
                    .get_or_create(&RelayAddressCheck {
                        relay: member.relay.clone(),
                        address: address.clone(),
                        check: id.to_string(),
                    })
                    .set(level);
            }
            if let Some(seconds) = member.cert_expiry_seconds {
                let key = RelayAddress {
                    relay: member.relay.clone(),
                    address,
                };
                not_after.push((key, probed_at + seconds));
            }
        }
        self.relay_cert_expiry.clear();
        for (key, at) in &not_after {
            self.relay_cert_expiry
                .get_or_create(key)
                .set(at - probed_at);
        }
        *self
            .relay_cert_not_after
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = not_after;
    }

    pub fn session(&self) {
        self.sessions.inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn delivery(&self, action: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&ActionOutcome {
                action: action.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn relay_failure(&self, host: &str, kind: mailer_core::delivery::FailureKind) {
        self.relay_failures
            .get_or_create(&HostKind {
                host: host.to_string(),
                kind: kind.label().to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The state the gauges describe, taken at each scrape by whoever holds it (the engine):
/// metrics read it, and need nothing of the engine.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub queued: usize,
    pub held: usize,
    /// Arrival (unix seconds) of the oldest queued message.
    pub oldest_arrival: Option<i64>,
    pub corrupt_files: usize,
    pub relays: Vec<mailer_core::delivery::relay::MemberStatus>,
}

/// Where a scrape takes its snapshot from.
pub type SnapshotSource = Arc<dyn Fn() -> Snapshot + Send + Sync>;

impl Metrics {
    /// Sets the gauges from `snapshot`, taken at `now` (unix seconds).
    fn refresh(&self, snapshot: Snapshot, now: i64) {
        self.queue_messages.set(snapshot.queued as i64);
        self.queue_held.set(snapshot.held as i64);
        self.queue_oldest_age.set(
            snapshot
                .oldest_arrival
                .map_or(0, |t| now.saturating_sub(t).max(0)),
        );
        self.queue_corrupt.set(snapshot.corrupt_files as i64);
        for (key, at) in self
            .relay_cert_not_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            self.relay_cert_expiry.get_or_create(key).set(at - now);
        }
        self.relay_connections.clear();
        self.relay_breaker_open.clear();
        for status in snapshot.relays {
            let host = Host { host: status.host };
            self.relay_connections
                .get_or_create(&host)
                .inc_by(status.open_connections as i64);
            self.relay_breaker_open
                .get_or_create(&host)
                .inc_by(status.breaker_open_until.is_some() as i64);
        }
    }
}

/// Serves `GET /metrics` until shutdown: a minimal HTTP/1.1 responder, one request per
/// connection, enough for Prometheus and curl.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    snapshot: SnapshotSource,
    stop: watch::Receiver<bool>,
) {
    crate::accept::accept_loop("metrics", &listener, stop, |stream, _| {
        let metrics = metrics.clone();
        let snapshot = snapshot.clone();
        async move {
            if let Err(e) = respond(stream, &metrics, &snapshot).await {
                tracing::debug!(error = %e, "metrics request failed");
            }
        }
    })
    .await;
}

/// Largest request head read; a scrape request is a few hundred octets.
const MAX_REQUEST: usize = 8192;

async fn respond(
    mut stream: TcpStream,
    metrics: &Metrics,
    snapshot: &SnapshotSource,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .is_err()
    {
        return Ok(());
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let now = mailer_core::time::unix_seconds(SystemTime::now());
            metrics.refresh(snapshot(), now);
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.encode(),
            )
        }
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// One encoding for every check's status on /metrics, so that one alert rule (`> 0`, or
/// `>= 2`) reads them all: 0 pass or info, 1 warning, 2 failure, 3 unknown (a DNS query the
/// check rests on failed, or a probe step not reached because an earlier one failed).
fn status_level(status: Option<mailer_core::check::Status>) -> i64 {
    use mailer_core::check::Status;
    match status {
        Some(Status::Pass | Status::Info) => 0,
        Some(Status::Warn) => 1,
        Some(Status::Fail) => 2,
        Some(Status::Unknown) | None => 3,
    }
}
