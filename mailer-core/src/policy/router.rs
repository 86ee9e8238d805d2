//! Match rules: the first rule whose conditions all hold decides a recipient's action, as in
//! smtpd.conf. Intake refuses a recipient no rule matches at RCPT (`550 5.7.1`), which is
//! what keeps the relay closed to anyone not local; a rule can never send a client that is
//! not on this host to a relay action (the configuration refuses it, and the router skips
//! such a rule should one get here).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::address::Address;
use crate::config::{Action, AddressList, AddressMatch, Config, ForSpec, FromSpec, MatchRule};
use crate::tables::addresses::AddressTable;

/// Says whether a local recipient exists (users and aliases of the action that would
/// deliver it). `None` means it cannot be told now: accept, and bounce later if need be.
pub type LocalCheck = dyn Fn(&str, &Address) -> Option<bool> + Send + Sync;

/// Where a message comes from, as the match rules' `from` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An SMTP client at this address.
    Ip(IpAddr),
    /// The sendmail submission socket or the offline drop directory.
    Socket,
    /// Made by the daemon itself: a bounce, or an alias target of a message already queued.
    Internal,
}

impl Origin {
    /// Whether the message comes from this host: loopback (127.0.0.0/8, ::1, IPv4-mapped
    /// loopback), a local submission, or the daemon itself.
    pub fn is_local(&self) -> bool {
        match self {
            Origin::Ip(IpAddr::V4(v4)) => v4.is_loopback(),
            Origin::Ip(IpAddr::V6(v6)) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
            Origin::Socket | Origin::Internal => true,
        }
    }
}

#[derive(Clone)]
pub struct Router {
    rules: Vec<MatchRule>,
    local_domains: Vec<String>,
    /// Actions that relay: never chosen for a client that is not local.
    relays: HashSet<String>,
    /// Address tables the rules name, by table name; a rule whose table is missing matches
    /// nothing.
    lists: HashMap<String, Arc<AddressTable>>,
    local_check: Option<Arc<LocalCheck>>,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        Router {
            rules: config.matches.clone(),
            local_domains: config.local_domains.clone(),
            relays: config
                .actions
                .iter()
                .filter(|(_, a)| matches!(a, Action::Relay(_)))
                .map(|(name, _)| name.clone())
                .collect(),
            lists: HashMap::new(),
            local_check: None,
        }
    }

    /// The contents of the address tables the rules name (`mail_from = { table = … }`).
    pub fn with_lists(mut self, lists: HashMap<String, Arc<AddressTable>>) -> Router {
        self.lists = lists;
        self
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

    /// Whether the recipient of a local action exists, as the local check says; `None`
    /// when it cannot be told (no check, or not now).
    pub fn local_exists(&self, action: &str, recipient: &Address) -> Option<bool> {
        self.local_check.as_ref()?(action, recipient)
    }

    /// The action for `recipient` of a message from `sender` (`None`: the null sender) that
    /// comes from `origin`: the first rule that matches.
    pub fn action_for(
        &self,
        origin: Origin,
        sender: Option<&Address>,
        recipient: &Address,
    ) -> Option<&str> {
        self.rules
            .iter()
            .find(|rule| self.matches(rule, origin, sender, recipient))
            .map(|rule| rule.action.as_str())
    }

    fn matches(
        &self,
        rule: &MatchRule,
        origin: Origin,
        sender: Option<&Address>,
        recipient: &Address,
    ) -> bool {
        if !origin.is_local() && self.relays.contains(&rule.action) {
            return false;
        }
        let from = match (&rule.from, origin) {
            (FromSpec::Any, _) => true,
            (FromSpec::Local, _) => origin.is_local(),
            (FromSpec::Socket, origin) => origin == Origin::Socket,
            (FromSpec::Source(nets), Origin::Ip(ip)) => nets.iter().any(|n| n.contains(ip)),
            (FromSpec::Source(_), _) => false,
        };
        let to = match &rule.recipients {
            ForSpec::Any => true,
            ForSpec::Local => self.is_local_domain(recipient.domain()),
            ForSpec::Domains(ds) => ds
                .iter()
                .any(|d| d.eq_ignore_ascii_case(recipient.domain())),
        };
        from && to
            && rule
                .mail_from
                .as_ref()
                .is_none_or(|m| self.address_matches(m, sender))
            && rule
                .rcpt_to
                .as_ref()
                .is_none_or(|m| self.address_matches(m, Some(recipient)))
    }

    /// Whether `address` satisfies the condition; the null sender is in no list.
    fn address_matches(&self, condition: &AddressMatch, address: Option<&Address>) -> bool {
        let in_list = |address: &Address| match &condition.list {
            AddressList::Inline(patterns) => patterns.iter().any(|p| p.matches(address)),
            AddressList::Table(name) => self
                .lists
                .get(name)
                .is_some_and(|t| t.patterns.iter().any(|p| p.matches(address))),
        };
        if let AddressList::Table(name) = &condition.list {
            if !self.lists.contains_key(name) {
                // Unknown contents: neither the list nor its complement can be claimed.
                return false;
            }
        }
        let found = address.is_some_and(in_list);
        found != condition.negated
    }
}
