//! A relay action: the envelope rewrite, the DMARC alignment check, then the pool.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Member, Pool, RelaySettings, Resolve, Security};
use crate::address::Address;
use crate::config::{Config, OnMisalignment, RelayAction, RelaySecurity};
use crate::delivery::content::Content;
use crate::delivery::{EnhancedStatus, Failure, FailureKind, Outcome};
use crate::policy::align::{check_alignment, Alignment};
use crate::policy::rewrite::rewrite_sender;
use crate::tables::secrets::Secrets;

/// How often a misaligned header From domain is logged.
const MISALIGNMENT_LOG_INTERVAL: Duration = Duration::from_secs(3600);

/// What one relay delivery produced.
#[derive(Debug)]
pub struct RelayResult {
    /// One outcome per recipient, in order.
    pub outcomes: Vec<Outcome>,
    /// The header From did not align with the rewritten envelope sender.
    pub misaligned: bool,
    /// The pool members that failed on the way (see [`super::PoolResult::faults`]).
    pub faults: Vec<super::MemberFault>,
}

/// A relay action ready to deliver.
pub struct RelayDelivery {
    action: RelayAction,
    pool: Pool,
    /// Header From domains reported as misaligned, and when (the log is rate-limited).
    misaligned: Mutex<HashMap<String, Instant>>,
}

impl RelayDelivery {
    /// A relay action with its secrets table, when it authenticates (loaded by
    /// [`crate::delivery::Tables`]).
    pub fn new(
        config: &Config,
        action: &RelayAction,
        secrets: Option<&Secrets>,
        resolver: Arc<dyn Resolve>,
    ) -> Result<RelayDelivery, String> {
        let pool =
            Pool::new(settings(config, action, secrets)?, resolver).map_err(|e| e.to_string())?;
        Ok(RelayDelivery {
            action: action.clone(),
            pool,
            misaligned: Mutex::new(HashMap::new()),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The configured relay hosts.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.action.relays.iter().map(|u| u.host.as_str())
    }

    /// Relays one message for `recipients`; `queue_id` names it in log lines.
    pub async fn deliver(
        &self,
        queue_id: &(dyn Display + Sync),
        sender: Option<&Address>,
        recipients: &[Address],
        message: &Content,
    ) -> RelayResult {
        let sender = rewrite_sender(sender, self.action.mail_from.as_ref());
        let reject = self.action.on_misalignment == OnMisalignment::Reject;
        let all = |f: Failure, misaligned| RelayResult {
            outcomes: Outcome::all_failed(recipients.len(), &f),
            misaligned,
            faults: Vec::new(),
        };
        let mut misaligned = false;
        match check_alignment(message.head(), sender.as_ref(), self.action.alignment) {
            Alignment::Misaligned {
                header_domain,
                envelope_domain,
            } => {
                if reject {
                    return all(
                        Failure::permanent(
                            FailureKind::Misaligned,
                            EnhancedStatus(5, 7, 1),
                            format!(
                                "header From domain {header_domain} does not align with the envelope \
                                 sender domain {envelope_domain}; DMARC would fail, so the message was not relayed"
                            ),
                        ),
                        true,
                    );
                }
                misaligned = true;
                self.log_misalignment(queue_id, &header_domain, &envelope_domain);
            }
            Alignment::NoHeaderFrom(e) if reject => {
                return all(
                    Failure::permanent(
                        FailureKind::Misaligned,
                        EnhancedStatus(5, 6, 0),
                        format!("cannot check DMARC alignment: {e}"),
                    ),
                    false,
                );
            }
            _ => {}
        }
        let pooled = self
            .pool
            .deliver(sender.as_ref(), recipients, message)
            .await;
        RelayResult {
            outcomes: pooled.outcomes,
            misaligned,
            faults: pooled.faults,
        }
    }

    /// A misconfigured application must not flood the journal: once an hour per domain.
    fn log_misalignment(&self, queue_id: &(dyn Display + Sync), header: &str, envelope: &str) {
        let mut seen = self.misaligned.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if seen
            .get(header)
            .is_some_and(|t| now.duration_since(*t) < MISALIGNMENT_LOG_INTERVAL)
        {
            return;
        }
        seen.insert(header.to_string(), now);
        tracing::warn!(
            queue_id = %queue_id,
            header_from = header,
            envelope_from = envelope,
            "header From does not align with the envelope sender; DMARC will fail (logged once an hour per domain)"
        );
    }
}

/// The relay client's settings for a relay action: members, credentials, trust anchors.
pub fn settings(
    config: &Config,
    relay: &RelayAction,
    secrets: Option<&Secrets>,
) -> Result<RelaySettings, String> {
    let secrets = match (&relay.auth, secrets) {
        (None, _) => None,
        (Some(table), Some(secrets)) => {
            let path = config
                .tables
                .get(table)
                .ok_or_else(|| format!("table {table} is not defined"))?;
            Some((path, secrets))
        }
        (Some(table), None) => return Err(format!("secrets table {table} is not loaded")),
    };
    let mut members = Vec::with_capacity(relay.relays.len());
    for url in &relay.relays {
        // Each member authenticates with the label of its own URL, or not at all.
        let credentials = match (&secrets, &url.label) {
            (Some((path, secrets)), Some(label)) => Some(
                secrets
                    .get(label)
                    .cloned()
                    .ok_or_else(|| format!("{}: no secret labelled {label}", path.display()))?,
            ),
            _ => None,
        };
        members.push(Member {
            host: url.host.clone(),
            port: url.port,
            security: match url.security {
                RelaySecurity::StartTls => Security::StartTls,
                RelaySecurity::Implicit => Security::Implicit,
                RelaySecurity::Plain => Security::Plain,
            },
            credentials,
        });
    }
    let mut settings = RelaySettings::new(config.hostname.clone(), members);
    if let Some(ca) = &relay.ca_file {
        use rustls_pki_types::pem::PemObject;
        settings.extra_roots = rustls_pki_types::CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    settings.connect_timeout = relay.connect_timeout;
    settings.command_timeout = relay.command_timeout;
    settings.data_end_timeout = relay.data_timeout;
    settings.max_connections_per_member = relay.max_connections;
    settings.max_connections_total = relay.max_connections_total;
    Ok(settings)
}
