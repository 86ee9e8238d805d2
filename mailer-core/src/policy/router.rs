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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::AddressPattern;

    const ACTIONS: &str = r#"
local_domains = ["localhost", "ublog.tech"]
[tables]
secrets = "/etc/mail/secrets"
vip = "/etc/mailer/vip"
[actions.local_mail]
mbox = "/var/mail/%u"
[actions.one]
relay = "smtp+tls://one@relay.one.example"
auth = "secrets"
[actions.two]
relay = "smtp+tls://two@relay.two.example"
auth = "secrets"
[actions.lan]
relay = "smtp+tls://relay.lan.example"
[actions.vip]
relay = "smtp+tls://relay.vip.example"
"#;

    fn router(rules: &str) -> Router {
        let config = Config::parse(&format!("{ACTIONS}{rules}"), Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let vip = AddressTable {
            patterns: vec![AddressPattern::Address("ceo@ublog.tech".into())],
        };
        Router::new(&config).with_lists(HashMap::from([("vip".to_string(), Arc::new(vip))]))
    }

    fn a(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    fn ip(s: &str) -> Origin {
        Origin::Ip(s.parse().unwrap())
    }

    /// The action for each (origin, sender, recipient) of `table`.
    fn decide(router: &Router, table: &[(Origin, &str, &str)]) -> Vec<Option<String>> {
        table
            .iter()
            .map(|(origin, from, to)| {
                let from = (!from.is_empty()).then(|| a(from));
                router
                    .action_for(*origin, from.as_ref(), &a(to))
                    .map(str::to_string)
            })
            .collect()
    }

    #[test]
    fn sender_dependent_relaying_first_match_wins_per_recipient() {
        let r = router(
            r#"
[[match]]
from = "local"
for = "local"
action = "local_mail"
[[match]]
from = "local"
mail_from = { table = "vip" }
rcpt_to = { not = ["@ublog.tech"] }
action = "vip"
[[match]]
from = "local"
for = "any"
mail_from = "@two.example"
action = "two"
[[match]]
from = "local"
for = "any"
mail_from = ["@one.example", "postmaster@ublog.tech"]
action = "one"
"#,
        );
        let lo = ip("127.0.0.1");
        let got = decide(
            &r,
            &[
                (lo, "a@one.example", "x@gmail.com"),
                (lo, "b@two.example", "x@gmail.com"),
                (lo, "B@TWO.Example", "x@gmail.com"),
                (lo, "postmaster@ublog.tech", "x@gmail.com"),
                (lo, "other@ublog.tech", "x@gmail.com"),
                (lo, "", "x@gmail.com"),
                (lo, "b@two.example", "root@ublog.tech"),
                (lo, "ceo@ublog.tech", "x@gmail.com"),
                (lo, "ceo@ublog.tech", "ops@ublog.tech"),
                (Origin::Socket, "a@one.example", "x@gmail.com"),
                (Origin::Internal, "b@two.example", "x@gmail.com"),
            ],
        );
        let want = [
            Some("one"),
            Some("two"),
            Some("two"),
            Some("one"),
            None,
            None,
            Some("local_mail"),
            Some("vip"),
            Some("local_mail"),
            Some("one"),
            Some("two"),
        ];
        assert_eq!(got, want.map(|w| w.map(String::from)));
    }

    #[test]
    fn source_networks_socket_and_negated_senders() {
        let r = router(
            r#"
[[match]]
from = "socket"
for = "any"
mail_from = { not = "@spam.example" }
action = "lan"
[[match]]
from = { source = ["127.0.0.2", "::1"] }
for = "any"
action = "one"
[[match]]
from = { source = ["192.0.2.0/24", "2001:db8::/32"] }
for = "local"
action = "local_mail"
[[match]]
from = "local"
for = "any"
action = "two"
"#,
        );
        let got = decide(
            &r,
            &[
                (Origin::Socket, "a@x.example", "x@gmail.com"),
                // The null sender is in no list, so it is "not in" every list.
                (Origin::Socket, "", "x@gmail.com"),
                (Origin::Socket, "a@spam.example", "x@gmail.com"),
                (ip("127.0.0.2"), "a@x.example", "x@gmail.com"),
                (ip("::1"), "a@x.example", "x@gmail.com"),
                (ip("::ffff:127.0.0.2"), "a@x.example", "x@gmail.com"),
                (ip("127.0.0.1"), "a@x.example", "x@gmail.com"),
                (ip("192.0.2.7"), "a@x.example", "root@ublog.tech"),
                (ip("2001:db8::25"), "a@x.example", "root@localhost"),
                (ip("192.0.2.7"), "a@x.example", "x@gmail.com"),
                (ip("198.51.100.1"), "a@x.example", "root@ublog.tech"),
            ],
        );
        let want = [
            Some("lan"),
            Some("lan"),
            Some("two"),
            Some("one"),
            Some("one"),
            Some("one"),
            Some("two"),
            Some("local_mail"),
            Some("local_mail"),
            None,
            None,
        ];
        assert_eq!(got, want.map(|w| w.map(String::from)));
    }

    #[test]
    fn a_relay_is_never_chosen_for_a_client_not_on_this_host() {
        // Built by hand: the configuration refuses such a rule, the router still skips it.
        let mut config = Config::parse(
            &format!("{ACTIONS}[[match]]\nfrom = \"local\"\nfor = \"any\"\naction = \"one\"\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        config.matches[0].from = FromSpec::Any;
        let r = Router::new(&config);
        assert_eq!(
            r.action_for(ip("203.0.113.9"), None, &a("x@gmail.com")),
            None
        );
        assert_eq!(
            r.action_for(ip("127.0.0.1"), None, &a("x@gmail.com")),
            Some("one")
        );
    }

    #[test]
    fn a_table_whose_contents_are_missing_matches_nothing_even_negated() {
        let config = Config::parse(
            &format!("{ACTIONS}[[match]]\nfrom = \"local\"\nfor = \"any\"\nmail_from = {{ not = {{ table = \"vip\" }} }}\naction = \"one\"\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        let r = Router::new(&config);
        assert_eq!(
            r.action_for(ip("127.0.0.1"), Some(&a("a@b.example")), &a("x@gmail.com")),
            None
        );
    }
}
