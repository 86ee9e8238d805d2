//! Match rules: the first rule whose `from` and `for` match decides the action, as in
//! smtpd.conf. Intake refuses a recipient no rule matches at RCPT (`550 5.7.1`), which is
//! what keeps the relay closed to anyone not local.

use std::sync::Arc;

use crate::address::Address;
use crate::config::{Config, ForSpec, FromSpec, MatchRule};

/// Says whether a local recipient exists (users and aliases of the action that would
/// deliver it). `None` means it cannot be told now: accept, and bounce later if need be.
pub type LocalCheck = dyn Fn(&str, &Address) -> Option<bool> + Send + Sync;

#[derive(Clone)]
pub struct Router {
    rules: Vec<MatchRule>,
    local_domains: Vec<String>,
    local_check: Option<Arc<LocalCheck>>,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        Router {
            rules: config.matches.clone(),
            local_domains: config.local_domains.clone(),
            local_check: None,
        }
    }

    /// Refuse unknown local recipients at RCPT with the given check.
    pub fn with_local_check(mut self, check: Arc<LocalCheck>) -> Router {
        self.local_check = Some(check);
        self
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// The action for `recipient` from a client that is (`local`) or is not on this host.
    /// Whether the recipient of a local action exists, as the local check says; `None`
    /// when it cannot be told (no check, or not now).
    pub fn local_exists(&self, action: &str, recipient: &Address) -> Option<bool> {
        self.local_check.as_ref()?(action, recipient)
    }

    pub fn action_for(&self, local: bool, recipient: &Address) -> Option<&str> {
        self.rules
            .iter()
            .find(|rule| {
                let from = match rule.from {
                    FromSpec::Local => local,
                    FromSpec::Any => true,
                };
                let to = match &rule.recipients {
                    ForSpec::Any => true,
                    ForSpec::Local => self.is_local_domain(recipient.domain()),
                    ForSpec::Domains(ds) => ds
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(recipient.domain())),
                };
                from && to
            })
            .map(|rule| rule.action.as_str())
    }
}
