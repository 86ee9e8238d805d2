//! The engine: the spool, the scheduler and the ways out, wired from the configuration.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use mailer_core::address::Address;
use mailer_core::config::{Action, Config};
use mailer_core::delivery::dispatch::{Attempt, Dispatch, Job, Observation, Observer, Ways};
use mailer_core::delivery::dkim::DkimSigning;
use mailer_core::delivery::dkim::Signed;
use mailer_core::delivery::relay::Resolve;
use mailer_core::delivery::{Outcome, Tables};
use mailer_core::intake::Incoming;
use mailer_core::policy::Router;
use mailer_core::queue::admit::admit;
use mailer_core::queue::scheduler::{Scheduler, Timing};
use mailer_core::queue::spool::QueueFile;
use mailer_core::queue::{QueueId, Spool};
use std::sync::Mutex;
use tokio::sync::watch;

use crate::metrics::Metrics;

pub struct Engine {
    spool: Arc<Spool>,
    scheduler: Arc<Scheduler<Dispatch<Counting>>>,
    dispatch: Arc<Dispatch<Counting>>,
    router: RwLock<Arc<Router>>,
    /// The configuration in effect, and the alias files' modification times it was read at.
    tables: Mutex<(Arc<Config>, Vec<FileStamp>)>,
    metrics: Arc<Metrics>,
    /// The relay actions' DKIM keys; replaced on reload.
    dkim: std::sync::RwLock<Arc<DkimSigning>>,
}

/// A file and its modification time when last read (`None`: could not be read).
type FileStamp = (PathBuf, Option<SystemTime>);

/// The alias files a configuration reads, with their modification times now.
fn alias_files(config: &Config) -> Vec<FileStamp> {
    let mut files: Vec<PathBuf> = config
        .actions
        .values()
        .filter_map(|a| match a {
            Action::Local(l) => l.alias.as_ref().and_then(|t| config.tables.get(t)).cloned(),
            Action::Relay(_) => None,
        })
        .collect();
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|p| {
            let mtime = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, mtime)
        })
        .collect()
}

/// How often alias files are checked for changes.
const ALIAS_POLL: Duration = Duration::from_secs(2);

impl Engine {
    /// Opens the queue, loads what it holds and starts delivering.
    pub async fn start(
        config: &Config,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Engine>, String> {
        let spool = Spool::open(&config.queue_dir)
            .map_err(|e| format!("cannot open the queue {}: {e}", config.queue_dir.display()))?;
        let spool = Arc::new(spool);
        let metrics = Arc::new(Metrics::new());
        let tables = preflight(config)?;
        let dkim = tables.dkim.clone();
        let dispatch = Arc::new(Dispatch::new(
            ways(config, &tables)?,
            Counting(metrics.clone()),
        ));
        let router = Arc::new(
            Router::new(config)
                .with_lists(tables.lists())
                .with_local_check(dispatch.local_check()),
        );
        let scheduler = Scheduler::new(
            spool.clone(),
            dispatch.clone(),
            Timing::from(config),
            config.hostname.clone(),
        );
        let loader = spool.clone();
        let report = tokio::task::spawn_blocking(move || loader.load(true))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read the queue {}: {e}", config.queue_dir.display()))?;
        for (path, reason) in &report.corrupt {
            tracing::error!(file = %path.display(), %reason, "queue file set aside; see `mailer queue list`");
        }
        for warning in mailer_core::delivery::alias_warnings(config, &tables) {
            tracing::warn!("{warning}");
        }
        let loaded = report.envelopes.len();
        for env in report.envelopes {
            scheduler.enqueue(env);
        }
        tracing::info!(messages = loaded, queue = %config.queue_dir.display(), "queue loaded");
        tokio::spawn(scheduler.clone().run(shutdown.clone()));
        let engine = Arc::new(Engine {
            spool,
            scheduler,
            dispatch,
            router: RwLock::new(router),
            tables: Mutex::new((Arc::new(config.clone()), alias_files(config))),
            metrics,
            dkim: std::sync::RwLock::new(dkim),
        });
        tokio::spawn(engine.clone().watch_aliases(shutdown));
        Ok(engine)
    }

    /// Applies a new configuration: routing, actions, aliases, secrets and queue timing.
    /// Messages in the queue and attempts under way are untouched; an attempt under way
    /// finishes with the state it started with. On error nothing changes.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let tables = mailer_core::delivery::preflight(config).map_err(|p| p.join("; "))?;
        let ways = ways(config, &tables)?;
        self.dispatch.replace(ways);
        *self.dkim.write().unwrap_or_else(|p| p.into_inner()) = tables.dkim.clone();
        let router = Arc::new(
            Router::new(config)
                .with_lists(tables.lists())
                .with_local_check(self.dispatch.local_check()),
        );
        *self.router.write().unwrap_or_else(|p| p.into_inner()) = router;
        self.scheduler.set_timing(Timing::from(config));
        *self.tables.lock().unwrap_or_else(|p| p.into_inner()) =
            (Arc::new(config.clone()), alias_files(config));
        Ok(())
    }

    /// Re-reads the alias tables (with the rest of the delivery state) whenever an alias
    /// file's modification time changes, so `newaliases`-style edits need no reload.
    async fn watch_aliases(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ALIAS_POLL) => {}
                _ = shutdown.changed() => return,
            }
            let (config, seen) = self
                .tables
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let now = alias_files(&config);
            if now == seen {
                continue;
            }
            let changed: Vec<String> = now
                .iter()
                .filter(|f| !seen.contains(f))
                .map(|(p, _)| p.display().to_string())
                .collect();
            let reread = mailer_core::delivery::Tables::load(&config).map_err(|e| e.join("\n"));
            match reread.and_then(|tables| ways(&config, &tables)) {
                Ok(ways) => {
                    self.dispatch.replace(ways);
                    tracing::info!(files = %changed.join(", "), "aliases reloaded");
                }
                Err(e) => tracing::error!(
                    files = %changed.join(", "),
                    error = %e.replace('\n', "; "),
                    "aliases changed but cannot be read; keeping the previous table"
                ),
            }
            // Remember the new times either way: a broken file is reported once per change.
            let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            if Arc::ptr_eq(&tables.0, &config) {
                tables.1 = now;
            }
        }
    }

    /// Relay member states of every relay action, for metrics.
    pub fn relay_status(&self) -> Vec<mailer_core::delivery::relay::MemberStatus> {
        self.dispatch.current().relay_status()
    }

    /// What the metrics' gauges describe, now.
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        let (queued, held, oldest_arrival) = self.scheduler.summary();
        crate::metrics::Snapshot {
            queued,
            held,
            oldest_arrival,
            // A short directory listing: the admin has to act on each of these files.
            corrupt_files: self.spool.corrupt().map_or(0, |c| c.len()),
            relays: self.relay_status(),
        }
    }

    /// The match rules in effect (a new listener task takes the current ones).
    pub fn router(&self) -> Arc<Router> {
        self.router
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The queue in memory: inspection and control (hold, release, flush, remove).
    pub fn scheduler(&self) -> &Arc<Scheduler<Dispatch<Counting>>> {
        &self.scheduler
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Makes a received message durable and schedules it: `file` holds the content handed
    /// out before the end (if any was), `incoming.rest` follows it. Ok means it may be
    /// acknowledged.
    pub async fn accept(&self, incoming: Incoming, file: Option<QueueFile>) -> io::Result<QueueId> {
        let dkim = self.dkim.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut envelope = incoming.envelope();
        // Signing reads the message back and storing fsyncs: off the runtime's threads.
        let spool = self.spool.clone();
        let envelope = tokio::task::spawn_blocking(move || {
            let mut file = match file {
                Some(file) => file,
                None => spool.create(envelope.id)?,
            };
            file.write(&incoming.rest)?;
            if let Some(signed) = admit(&mut envelope, &incoming.head, &mut file, &dkim) {
                log_signing(envelope.id, &signed);
            }
            spool.commit(file, &envelope)?;
            Ok::<_, io::Error>(envelope)
        })
        .await
        .map_err(io::Error::other)?
        .inspect_err(|e| tracing::error!(error = %e, "cannot queue a message"))?;
        self.metrics.accepted.inc();
        self.metrics.bytes_in.inc_by(envelope.size);
        tracing::info!(
            queue_id = %envelope.id,
            from = %display_sender(envelope.sender.as_ref()),
            recipients = envelope.recipients.len(),
            size = envelope.size,
            "received"
        );
        let id = envelope.id;
        self.scheduler.enqueue(envelope);
        Ok(id)
    }

    /// Waits for deliveries in flight, at most `grace`.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.scheduler.drain(grace).await
    }
}

/// What DKIM signing did to an admitted message, in the log.
fn log_signing(id: QueueId, signed: &Signed) {
    for error in &signed.errors {
        tracing::error!(queue_id = %id, %error, "DKIM signing failed");
    }
    if !signed.unaligned.is_empty() {
        tracing::info!(
            queue_id = %id,
            header_from = signed.header_from.as_deref().unwrap_or("(none)"),
            keys = %signed.unaligned.join(" "),
            "not DKIM-signed: header From does not align with the key's domain (sign_unaligned = false)"
        );
    }
    if !signed.signed_by.is_empty() {
        tracing::debug!(queue_id = %id, keys = %signed.signed_by.join(" "), "DKIM-signed");
    }
}

/// The tables and keys of `config`, read once, after the checks of its files; the error
/// lists every problem, one per line.
fn preflight(config: &Config) -> Result<Tables, String> {
    mailer_core::delivery::preflight(config)
        .map_err(|problems| format!("invalid configuration:\n{}", problems.join("\n")))
}

pub fn display_sender(sender: Option<&Address>) -> String {
    sender.map_or_else(|| "<>".to_string(), |a| a.to_string())
}

/// A STARTTLS acceptor for a listener.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Counts what deliveries do, for the metrics.
pub struct Counting(Arc<Metrics>);

impl Observer for Counting {
    fn attempt(&self, job: &Job, attempt: &Attempt) {
        if attempt.misaligned {
            self.0.misaligned.inc();
        }
        for fault in &attempt.faults {
            self.0.relay_failure(&fault.host, fault.kind);
        }
        if attempt
            .outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Delivered { .. }))
        {
            self.0.bytes_out.inc_by(job.message.len());
        }
    }

    fn outcome(&self, o: &Observation<'_>) {
        if matches!(o.outcome, Outcome::Delivered { .. }) {
            self.0.delivery_duration.observe(o.delay.as_secs_f64());
        }
        self.0.delivery(o.action, o.event());
    }
}

/// The ways out of `config`, with the system's DNS resolver for relay hosts.
fn ways(config: &Config, tables: &Tables) -> Result<Ways, String> {
    let resolver: Arc<dyn Resolve> = match hickory_resolver::TokioResolver::builder_tokio() {
        Ok(b) => match b.build() {
            Ok(r) => Arc::new(r),
            Err(e) => return Err(format!("cannot set up DNS resolution: {e}")),
        },
        Err(e) => return Err(format!("cannot read the system DNS configuration: {e}")),
    };
    Ways::new(config, tables, resolver)
}
