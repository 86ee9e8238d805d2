//! The engine: the spool, the scheduler and the ways out, wired from the configuration.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use mailer_core::address::Address;
use mailer_core::config::{
    Action, Config, LocalAction, MailboxKind, OnMisalignment, RelayAction, RelaySecurity,
};
use mailer_core::delivery::dkim::DkimSigning;
use mailer_core::delivery::maildir::{deliver_maildir, MaildirOptions};
use mailer_core::delivery::mbox::{deliver_mbox, expand_path, MboxOptions};
use mailer_core::delivery::relay::{Member, Pool, RelaySettings, Resolve, Security};
use mailer_core::delivery::{EnhancedStatus, Failure, Outcome};
use mailer_core::intake::Incoming;
use mailer_core::policy::align::{check_alignment, Alignment};
use mailer_core::policy::rewrite::rewrite_sender;
use mailer_core::policy::Router;
use mailer_core::queue::scheduler::{Attempt, Deliverer, Job, Scheduler, Timing};
use mailer_core::queue::{Envelope, QueueId, Recipient, Spool};
use mailer_core::tables::aliases::{AliasOptions, AliasTarget, Aliases};
use mailer_core::tables::secrets::Secrets;
use mailer_core::tables::users::lookup_user;
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::watch;

use crate::metrics::{Metrics, RelayFailure};

pub struct Engine {
    spool: Arc<Spool>,
    scheduler: Arc<Scheduler<Dispatch>>,
    dispatch: Arc<Dispatch>,
    router: RwLock<Arc<Router>>,
    /// The configuration in effect, and the alias files' modification times it was read at.
    tables: Mutex<(Arc<Config>, Vec<FileStamp>)>,
    metrics: Arc<Metrics>,
    /// The relay actions' DKIM keys; replaced on reload.
    dkim: std::sync::RwLock<Arc<DkimSigning>>,
}

/// A file and its modification time when last read (`None`: could not be read).
type FileStamp = (PathBuf, Option<SystemTime>);

/// The queue's timing from the `[queue]` section.
fn timing(config: &Config) -> Timing {
    Timing {
        retry_min: config.queue.retry_min,
        retry_max: config.queue.retry_max,
        lifetime: config.queue.lifetime,
        warn_after: config.queue.warn_after,
    }
}

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
        let dkim = load_dkim(config)?;
        let delivery = Arc::new(Delivery::new(config, metrics.clone())?);
        let dispatch = Arc::new(Dispatch {
            current: RwLock::new(delivery),
            metrics: metrics.clone(),
        });
        let router = Arc::new(Router::new(config).with_local_check(dispatch.local_check()));
        let scheduler = Scheduler::new(
            spool.clone(),
            dispatch.clone(),
            timing(config),
            config.hostname.clone(),
        );
        let loader = spool.clone();
        let report = tokio::task::spawn_blocking(move || loader.load(true))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read the queue {}: {e}", config.queue_dir.display()))?;
        for (path, reason) in &report.corrupt {
            tracing::error!(file = %path.display(), %reason, "unreadable envelope left in the queue");
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
            dkim: std::sync::RwLock::new(Arc::new(dkim)),
        });
        tokio::spawn(engine.clone().watch_aliases(shutdown));
        Ok(engine)
    }

    /// Applies a new configuration: routing, actions, aliases, secrets and queue timing.
    /// Messages in the queue and attempts under way are untouched; an attempt under way
    /// finishes with the state it started with. On error nothing changes.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let problems = check_files(config);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let delivery = Arc::new(Delivery::new(config, self.metrics.clone())?);
        let dkim = load_dkim(config)?;
        self.dispatch.replace(delivery);
        *self.dkim.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(dkim);
        let router = Arc::new(Router::new(config).with_local_check(self.dispatch.local_check()));
        *self.router.write().unwrap_or_else(|p| p.into_inner()) = router;
        self.scheduler.set_timing(timing(config));
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
            match Delivery::new(&config, self.metrics.clone()) {
                Ok(delivery) => {
                    self.dispatch.replace(Arc::new(delivery));
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
        let delivery = self.dispatch.current();
        delivery
            .relays
            .values()
            .flat_map(|r| r.pool.status())
            .collect()
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
    pub fn scheduler(&self) -> &Arc<Scheduler<Dispatch>> {
        &self.scheduler
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Makes a received message durable and schedules it. Ok means it may be acknowledged.
    pub async fn accept(&self, incoming: Incoming) -> io::Result<QueueId> {
        let incoming = self.dkim_sign(incoming).await?;
        let envelope = Envelope::from_incoming(&incoming);
        let spool = self.spool.clone();
        let stored = envelope.clone();
        tokio::task::spawn_blocking(move || spool.store(&stored, &incoming.message))
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

    /// Puts DKIM signatures in front of a message (and of our Received header) when a recipient
    /// goes to a relay action with keys: once, before it is stored, so every attempt relays
    /// the same bytes.
    async fn dkim_sign(&self, mut incoming: Incoming) -> io::Result<Incoming> {
        let dkim = self.dkim.read().unwrap_or_else(|p| p.into_inner()).clone();
        if !dkim.signs_for(incoming.recipients.iter().map(|r| r.action.as_str())) {
            return Ok(incoming);
        }
        // Hashing a large body takes a while: off the runtime's threads.
        tokio::task::spawn_blocking(move || {
            let actions = incoming.recipients.iter().map(|r| r.action.as_str());
            let signed = dkim.sign(actions, &incoming.message);
            for error in &signed.errors {
                tracing::error!(queue_id = %incoming.id, %error, "DKIM signing failed");
            }
            if !signed.unaligned.is_empty() {
                tracing::info!(
                    queue_id = %incoming.id,
                    header_from = signed.header_from.as_deref().unwrap_or("(none)"),
                    keys = %signed.unaligned.join(" "),
                    "not DKIM-signed: header From does not align with the key's domain (sign_unaligned = false)"
                );
            }
            if !signed.signed_by.is_empty() {
                tracing::debug!(queue_id = %incoming.id, keys = %signed.signed_by.join(" "), "DKIM-signed");
                let mut message = signed.fields;
                message.extend_from_slice(&incoming.message);
                incoming.message = message;
            }
            incoming
        })
        .await
        .map_err(io::Error::other)
    }

    /// Waits for deliveries in flight, at most `grace`.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.scheduler.drain(grace).await
    }
}

/// The relay actions' DKIM keys, every failure on its own line.
pub fn load_dkim(config: &Config) -> Result<DkimSigning, String> {
    DkimSigning::from_config(config).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

pub fn display_sender(sender: Option<&Address>) -> String {
    sender.map_or_else(|| "<>".to_string(), |a| a.to_string())
}

/// Everything `mailer config check` and `mailer serve` verify beyond the syntax.
pub fn check_files(config: &Config) -> Vec<String> {
    let file_problems = config.check_files();
    let mut problems: Vec<String> = file_problems.iter().map(|d| d.to_string()).collect();
    if file_problems.is_empty() {
        problems.extend(unusable_dkim_keys(config));
    }
    for action in config.actions.values() {
        if let Action::Local(local) = action {
            if let Some(Err(errors)) = load_aliases(config, local) {
                problems.extend(errors);
            }
        }
    }
    problems
}

/// DKIM key files that are present and private enough but hold no RSA or Ed25519 key.
fn unusable_dkim_keys(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (name, action) in &config.actions {
        let Action::Relay(relay) = action else {
            continue;
        };
        for (i, key) in relay.dkim.iter().enumerate() {
            if let Err(e) = mailer_core::delivery::dkim::read_key(&key.key) {
                let (line, col) = config
                    .positions
                    .get(&format!("actions.{name}.dkim[{i}].key"));
                out.push(
                    mailer_core::config::Diagnostic::new(&config.source, line, col, e.to_string())
                        .to_string(),
                );
            }
        }
    }
    out
}

fn load_aliases(config: &Config, action: &LocalAction) -> Option<Result<Aliases, Vec<String>>> {
    let table = action.alias.as_ref()?;
    let path = config.tables.get(table)?;
    let opts = AliasOptions {
        allow_commands: action.allow_commands,
        allow_files: action.allow_files,
    };
    Some(Aliases::load(path, opts).map_err(|errs| errs.iter().map(|e| e.to_string()).collect()))
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

/// A local action ready to deliver.
struct Local {
    action: LocalAction,
    aliases: Option<Arc<Aliases>>,
}

/// A relay action ready to deliver.
struct Relay {
    action: RelayAction,
    pool: Pool,
    /// Header From domains already reported as misaligned, with when (log rate limit).
    misaligned: Mutex<HashMap<String, Instant>>,
}

/// How often a misaligned header From domain is logged.
const MISALIGNMENT_LOG_INTERVAL: Duration = Duration::from_secs(3600);

/// The ways out of the queue, by action name.
pub struct Delivery {
    hostname: String,
    local_domains: Vec<String>,
    router: Router,
    locals: HashMap<String, Local>,
    relays: HashMap<String, Relay>,
    metrics: Arc<Metrics>,
}

impl Delivery {
    fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Delivery, String> {
        let mut locals = HashMap::new();
        let mut relays = HashMap::new();
        let resolver: Arc<dyn Resolve> = match hickory_resolver::TokioResolver::builder_tokio() {
            Ok(b) => match b.build() {
                Ok(r) => Arc::new(r),
                Err(e) => return Err(format!("cannot set up DNS resolution: {e}")),
            },
            Err(e) => return Err(format!("cannot read the system DNS configuration: {e}")),
        };
        for (name, action) in &config.actions {
            match action {
                Action::Local(local) => {
                    let aliases = match load_aliases(config, local) {
                        Some(Ok(a)) => Some(Arc::new(a)),
                        Some(Err(errors)) => return Err(errors.join("\n")),
                        None => None,
                    };
                    let mut action = local.clone();
                    action.mailbox = absolute_pattern(&action.mailbox);
                    locals.insert(name.clone(), Local { action, aliases });
                }
                Action::Relay(relay) => {
                    let settings = relay_settings(config, relay)?;
                    let pool = Pool::new(settings, resolver.clone())
                        .map_err(|e| format!("action {name}: {e}"))?;
                    relays.insert(
                        name.clone(),
                        Relay {
                            action: relay.clone(),
                            pool,
                            misaligned: Mutex::new(HashMap::new()),
                        },
                    );
                }
            }
        }
        Ok(Delivery {
            hostname: config.hostname.clone(),
            local_domains: config.local_domains.clone(),
            router: Router::new(config),
            locals,
            relays,
            metrics,
        })
    }

    /// Whether a local recipient exists: an alias of the action's table, or a system user.
    /// `None`: cannot be told now.
    fn local_exists(&self, action: &str, rcpt: &Address) -> Option<bool> {
        let local = self.locals.get(action)?;
        if local
            .aliases
            .as_ref()
            .is_some_and(|a| a.contains(rcpt.local_part()))
        {
            return Some(true);
        }
        match lookup_user(&rcpt.user()) {
            Ok(found) => Some(found.is_some()),
            Err(_) => None,
        }
    }

    fn deliver_local(&self, local: &Local, job: &Job) -> Attempt {
        let env = &job.envelope;
        let mut outcomes = Vec::with_capacity(job.recipients.len());
        let mut forwards = Vec::new();
        for (pos, &i) in job.recipients.iter().enumerate() {
            let rcpt = &env.recipients[i].address;
            let users = match &local.aliases {
                Some(aliases) => match aliases.expand(rcpt.local_part(), &self.local_domains) {
                    Ok(Some(targets)) => targets,
                    Ok(None) => vec![AliasTarget::User(rcpt.user())],
                    Err(e) => {
                        outcomes.push(Outcome::Failed(Failure::permanent(
                            EnhancedStatus(5, 4, 6),
                            format!("alias expansion failed: {e}"),
                        )));
                        continue;
                    }
                },
                None => vec![AliasTarget::User(rcpt.user())],
            };
            let mut result = Outcome::Delivered { reply: None };
            for target in users {
                let outcome = match target {
                    AliasTarget::User(user) => {
                        self.to_mailbox(local, &user, rcpt, env, &job.message)
                    }
                    AliasTarget::Address(address) => {
                        forwards.push((pos, address));
                        continue;
                    }
                    AliasTarget::Command(_) | AliasTarget::File(_) => {
                        Outcome::Failed(Failure::permanent(
                            EnhancedStatus(5, 3, 0),
                            "command and file alias targets are not delivered by this server",
                        ))
                    }
                };
                // The worst outcome wins: a temporary failure retries the whole recipient.
                if matches!(result, Outcome::Delivered { reply: None })
                    && matches!(outcome, Outcome::Delivered { .. })
                {
                    result = outcome.clone();
                }
                if let Outcome::Failed(f) = &outcome {
                    let worse = match &result {
                        Outcome::Delivered { .. } => true,
                        Outcome::Failed(prev) => prev.permanent && !f.permanent,
                    };
                    if worse {
                        result = outcome;
                    }
                }
            }
            outcomes.push(result);
        }
        Attempt { outcomes, forwards }
    }

    fn to_mailbox(
        &self,
        local: &Local,
        user: &str,
        rcpt: &Address,
        env: &Envelope,
        message: &[u8],
    ) -> Outcome {
        let account = match lookup_user(user) {
            Ok(Some(u)) => u,
            Ok(None) => {
                return Outcome::Failed(Failure::permanent(
                    EnhancedStatus(5, 1, 1),
                    format!("no such local user: {user}"),
                ))
            }
            Err(e) => {
                return Outcome::Failed(Failure::temporary(
                    EnhancedStatus(4, 3, 0),
                    format!("cannot look up user {user}: {e}"),
                ))
            }
        };
        let owner = can_chown().then_some((account.uid, account.gid));
        let (pattern, maildir) = match &local.action.mailbox {
            MailboxKind::Mbox(p) => (p, false),
            MailboxKind::Maildir(p) => (p, true),
        };
        let path = match expand_path(pattern, user, rcpt.domain(), Some(&account.home)) {
            Ok(p) => p,
            Err(e) => {
                return Outcome::Failed(Failure::temporary(
                    EnhancedStatus(4, 3, 5),
                    format!("mailbox path {pattern}: {e}"),
                ))
            }
        };
        let result = if maildir {
            let mut opts = MaildirOptions::new(self.hostname.clone());
            opts.owner = owner;
            deliver_maildir(&path, message, &opts).map(|_| ())
        } else {
            let opts = MboxOptions {
                owner,
                ..MboxOptions::default()
            };
            deliver_mbox(
                &path,
                env.sender.as_ref(),
                SystemTime::now(),
                message,
                &opts,
            )
        };
        match result {
            Ok(()) => Outcome::Delivered {
                reply: Some(path.display().to_string()),
            },
            Err(f) => Outcome::Failed(f),
        }
    }
}

impl Delivery {
    async fn deliver_relay(&self, relay: &Relay, job: &Job) -> Vec<Outcome> {
        let env = &job.envelope;
        let sender = rewrite_sender(env.sender.as_ref(), relay.action.mail_from.as_ref());
        let all = |f: Failure| {
            job.recipients
                .iter()
                .map(|_| Outcome::Failed(f.clone()))
                .collect()
        };
        match check_alignment(&job.message, sender.as_ref(), relay.action.alignment) {
            Alignment::Misaligned {
                header_domain,
                envelope_domain,
            } => {
                self.metrics.misaligned.inc();
                if relay.action.on_misalignment == OnMisalignment::Reject {
                    return all(Failure::permanent(
                        EnhancedStatus(5, 7, 1),
                        format!(
                            "header From domain {header_domain} does not align with the envelope \
                             sender domain {envelope_domain}; DMARC would fail, so the message was not relayed"
                        ),
                    ));
                }
                self.log_misalignment(relay, env, &header_domain, &envelope_domain);
            }
            Alignment::NoHeaderFrom(e)
                if relay.action.on_misalignment == OnMisalignment::Reject =>
            {
                return all(Failure::permanent(
                    EnhancedStatus(5, 6, 0),
                    format!("cannot check DMARC alignment: {e}"),
                ));
            }
            _ => {}
        }
        let recipients: Vec<Address> = job
            .recipients
            .iter()
            .map(|&i| env.recipients[i].address.clone())
            .collect();
        relay
            .pool
            .deliver(sender.as_ref(), &recipients, &job.message)
            .await
    }

    fn log_misalignment(&self, relay: &Relay, env: &Envelope, header: &str, envelope: &str) {
        let mut seen = relay.misaligned.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if seen
            .get(header)
            .is_some_and(|t| now.duration_since(*t) < MISALIGNMENT_LOG_INTERVAL)
        {
            return;
        }
        seen.insert(header.to_string(), now);
        tracing::warn!(
            queue_id = %env.id,
            header_from = header,
            envelope_from = envelope,
            "header From does not align with the envelope sender; DMARC will fail (logged once an hour per domain)"
        );
    }
}

/// The relay client's settings for a relay action.
fn relay_settings(config: &Config, relay: &RelayAction) -> Result<RelaySettings, String> {
    let members = relay
        .relays
        .iter()
        .map(|url| Member {
            host: url.host.clone(),
            port: url.port,
            security: match url.security {
                RelaySecurity::StartTls => Security::StartTls,
                RelaySecurity::Implicit => Security::Implicit,
                RelaySecurity::Plain => Security::Plain,
            },
        })
        .collect();
    let mut settings = RelaySettings::new(config.hostname.clone(), members);
    if let Some(table) = &relay.auth {
        let path = config
            .tables
            .get(table)
            .ok_or_else(|| format!("table {table} is not defined"))?;
        let secrets = Secrets::load(path).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        let label = relay
            .relays
            .iter()
            .find_map(|u| u.label.clone())
            .ok_or_else(|| format!("table {table} is used but no relay URL names a label"))?;
        let creds = secrets
            .get(&label)
            .ok_or_else(|| format!("{}: no secret labelled {label}", path.display()))?;
        settings.credentials = Some(creds.clone());
    }
    if let Some(ca) = &relay.ca_file {
        use rustls::pki_types::pem::PemObject;
        settings.extra_roots = rustls::pki_types::CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    settings.connect_timeout = relay.connect_timeout;
    settings.command_timeout = relay.command_timeout;
    settings.max_connections_per_member = relay.max_connections;
    settings.max_connections_total = relay.max_connections_total;
    Ok(settings)
}

/// Whether mailboxes can be given to their users: as root, or with CAP_CHOWN (the systemd
/// unit runs as an unprivileged user with that capability).
fn can_chown() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        const CAP_CHOWN: u64 = 1 << 0;
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .is_some_and(|caps| caps & CAP_CHOWN != 0)
    })
}

/// A relative mailbox pattern (the embedded default) is taken from the working directory.
fn absolute_pattern(kind: &MailboxKind) -> MailboxKind {
    let fix = |p: &String| -> String {
        if p.starts_with('/') || p.starts_with('~') {
            return p.clone();
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        cwd.join(p).display().to_string()
    };
    match kind {
        MailboxKind::Mbox(p) => MailboxKind::Mbox(fix(p)),
        MailboxKind::Maildir(p) => MailboxKind::Maildir(fix(p)),
    }
}

impl Delivery {
    async fn deliver(&self, job: &Job) -> Attempt {
        if let Some(local) = self.locals.get(&job.action) {
            // Mailbox writes block (locks, fsync): keep them off the runtime's threads.
            return tokio::task::block_in_place(|| self.deliver_local(local, job));
        }
        if let Some(relay) = self.relays.get(&job.action) {
            let outcomes = self.deliver_relay(relay, job).await;
            self.count_relay_failure(relay, &outcomes);
            return Attempt::of(outcomes);
        }
        let outcomes = job
            .recipients
            .iter()
            .map(|_| {
                Outcome::Failed(Failure::temporary(
                    EnhancedStatus(4, 3, 5),
                    format!("action {} is not configured", job.action),
                ))
            })
            .collect();
        Attempt::of(outcomes)
    }

    /// Counts a relay attempt that failed (once per attempt, by its first failure).
    fn count_relay_failure(&self, relay: &Relay, outcomes: &[Outcome]) {
        let Some(failure) = outcomes.iter().find_map(|o| match o {
            Outcome::Failed(f) => Some(f),
            Outcome::Delivered { .. } => None,
        }) else {
            return;
        };
        // A misalignment refusal is ours, not the relay's.
        if failure.status == EnhancedStatus(5, 7, 1) && failure.remote_reply.is_none() {
            return;
        }
        let host = relay
            .action
            .relays
            .iter()
            .map(|u| u.host.as_str())
            .find(|h| failure.reason.contains(h))
            .or_else(|| relay.action.relays.first().map(|u| u.host.as_str()))
            .unwrap_or("unknown");
        self.metrics
            .relay_failure(host, classify_relay_failure(failure));
    }

    /// Where an action's mail goes, for log lines: relay hosts, or `mailbox`.
    fn via(&self, action: &str) -> String {
        match self.relays.get(action) {
            Some(relay) => relay
                .action
                .relays
                .iter()
                .map(|u| u.host.as_str())
                .collect::<Vec<_>>()
                .join(","),
            None if self.locals.contains_key(action) => "mailbox".to_string(),
            None => "none".to_string(),
        }
    }
}

/// The kind of a relay failure, from what the relay client reported. The pool folds
/// session-setup failures into one temporary failure, so its reason text is what is left.
fn classify_relay_failure(f: &Failure) -> RelayFailure {
    if f.reason.contains(": AUTH") {
        return RelayFailure::Auth;
    }
    if let Some(reply) = &f.remote_reply {
        return if reply.starts_with('5') {
            RelayFailure::Permanent
        } else {
            RelayFailure::Temporary
        };
    }
    let lower = f.reason.to_ascii_lowercase();
    if lower.contains("tls") || lower.contains("certificate") {
        RelayFailure::Tls
    } else {
        RelayFailure::Connect
    }
}

/// The delivery state in effect. Replaced whole on reload: an attempt under way keeps the
/// state it started with, the next one takes the new.
pub struct Dispatch {
    current: RwLock<Arc<Delivery>>,
    metrics: Arc<Metrics>,
}

impl Dispatch {
    fn current(&self) -> Arc<Delivery> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, delivery: Arc<Delivery>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = delivery;
    }

    /// The RCPT-time check of local recipients, against the aliases in effect at that moment.
    fn local_check(self: &Arc<Self>) -> Arc<mailer_core::policy::router::LocalCheck> {
        let dispatch = Arc::downgrade(self);
        Arc::new(move |action: &str, rcpt: &Address| {
            dispatch.upgrade()?.current().local_exists(action, rcpt)
        })
    }
}

impl Deliverer for Dispatch {
    async fn deliver(&self, job: Job) -> Attempt {
        let delivery = self.current();
        let attempt = delivery.deliver(&job).await;
        if attempt
            .outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Delivered { .. }))
        {
            self.metrics.bytes_out.inc_by(job.message.len() as u64);
        }
        attempt
    }

    fn route(&self, recipient: &Address) -> Option<String> {
        self.current()
            .router
            .action_for(true, recipient)
            .map(str::to_string)
    }

    fn observe(&self, env: &Envelope, recipient: &Recipient, outcome: &Outcome) {
        let delay = SystemTime::now()
            .duration_since(env.arrived_at())
            .unwrap_or_default();
        let (event, status, detail) = match outcome {
            Outcome::Delivered { reply } => {
                self.metrics.delivery_duration.observe(delay.as_secs_f64());
                (
                    "delivered",
                    "2.0.0".to_string(),
                    reply.clone().unwrap_or_default(),
                )
            }
            Outcome::Failed(f) if f.permanent && f.status == EnhancedStatus(4, 4, 7) => {
                ("expired", f.status.to_string(), f.reason.clone())
            }
            Outcome::Failed(f) if f.permanent => {
                ("bounced", f.status.to_string(), f.reason.clone())
            }
            Outcome::Failed(f) => ("deferred", f.status.to_string(), f.reason.clone()),
        };
        self.metrics.delivery(&recipient.action, event);
        let via = self.current().via(&recipient.action);
        tracing::info!(
            queue_id = %env.id,
            to = %recipient.address,
            action = %recipient.action,
            relay = %via,
            status = %status,
            delay = format_args!("{}s", delay.as_secs()),
            detail = %detail,
            "{event}"
        );
    }
}
