//! The TOML configuration: what the relay listens on, which actions deliver mail, which match
//! rules route recipients to them, and the limits and timers of every stage.
//!
//! [`Config::parse`] turns the text into the types below and reports every problem it can find
//! in one pass, each as a [`Diagnostic`] at the line and column of the value at fault. Unknown
//! keys are errors everywhere. [`Config::check_files`] adds what needs the file system (the
//! tables, certificates and keys the configuration names, and the `user` account).
//!
//! Problems that cannot change what the relay does (an action or table nothing uses) are not
//! errors: they land in [`Config::warnings`], for `mailer config check` and the log.

mod build;

mod files;
mod raw;
mod relay_url;
mod units;

pub mod import;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::address::Address;
use crate::tables::users::User;

pub use crate::diagnostic::Diagnostic;
pub use relay_url::{RelaySecurity, RelayUrl, RelayUrlError};
pub use units::{format_duration, parse_duration, parse_size};

/// The embedded default: a first run without root (see config/default.toml).
const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// Name used as [`Config::source`] for the embedded default.
pub const EMBEDDED_SOURCE: &str = "<embedded>";

/// The whole configuration, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The account the daemon becomes once its sockets are open, when started as root;
    /// `None`: it keeps the credentials it was started with.
    pub user: Option<String>,
    /// Name for EHLO and Received; default: the system host name.
    pub hostname: String,
    /// Domains `for = "local"` matches, lower-cased; default: `localhost` and the host name.
    pub local_domains: Vec<String>,
    pub queue_dir: PathBuf,
    pub control_socket: PathBuf,
    pub limits: Limits,
    pub listen: Vec<Listen>,
    /// Table name → file. What a table holds is given by the key that names it (`alias`, `auth`).
    pub tables: BTreeMap<String, PathBuf>,
    pub actions: BTreeMap<String, Action>,
    pub queue: QueueSettings,
    /// In file order: the first rule that matches a recipient decides.
    pub matches: Vec<MatchRule>,
    /// `None`: no metrics endpoint.
    pub metrics: Option<MetricsSettings>,
    pub check: CheckSettings,
    pub log: LogSettings,
    /// The file the configuration came from, for messages; `<embedded>` for the default.
    pub source: PathBuf,
    /// Harmless oddities found while parsing (an action or table nothing uses).
    pub warnings: Vec<Diagnostic>,
    /// Where the values naming files sit in the source, for [`Config::check_files`].
    pub positions: Positions,
}

/// Session limits of the SMTP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted, in bytes (advertised in EHLO SIZE).
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Concurrent SMTP sessions.
    pub max_connections: usize,
    /// Longest text line in DATA, in bytes including CRLF. RFC 5321 §4.5.3.1.6 sets 1000; longer
    /// lines are accepted up to this cap.
    pub max_line_length: usize,
    /// Idle time allowed between commands (RFC 5321 §4.5.3.2.7).
    pub idle_timeout: Duration,
    /// Time allowed for the whole DATA phase.
    pub data_timeout: Duration,
    pub bare_newlines: BareNewlines,
    /// How long a SIGTERM waits for sessions and deliveries to finish.
    pub shutdown_grace: Duration,
    /// More `Received:` fields than this (ours included) is a mail loop: 554 5.4.6
    /// (Postfix's `hopcount_limit`).
    pub max_hops: usize,
    /// Refused commands before a session is closed with 421 (Postfix's
    /// `smtpd_hard_error_limit`).
    pub max_errors: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_size: 35 << 20,
            max_recipients: 100,
            max_connections: 100,
            max_line_length: 64 << 10,
            idle_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
            bare_newlines: BareNewlines::Reject,
            shutdown_grace: Duration::from_secs(30),
            max_hops: 50,
            max_errors: 20,
        }
    }
}

/// What to do with a bare CR or LF in the content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareNewlines {
    /// Reject the message after the data phase (`550 5.6.0`).
    Reject,
    /// Turn each bare CR or LF into CRLF.
    Normalize,
}

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    pub address: SocketAddr,
    /// Present: STARTTLS is offered with this certificate.
    pub tls: Option<ListenTls>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// What happens to a recipient a match rule selects.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Local(LocalAction),
    Relay(RelayAction),
}

/// Delivery into a local mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAction {
    pub mailbox: MailboxKind,
    /// Name of an aliases table in [`Config::tables`].
    pub alias: Option<String>,
    /// Whether aliases may pipe to commands (`|cmd`).
    pub allow_commands: bool,
    /// Whether aliases may append to files (`/path`).
    pub allow_files: bool,
}

/// Mailbox format and path pattern, as written (e.g. `/var/mail/%u`, `~/Maildir`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxKind {
    Mbox(String),
    Maildir(String),
}

/// Relaying through one host or an explicit pool of them.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayAction {
    /// One URL, or the members of a pool in the order written.
    pub relays: Vec<RelayUrl>,
    /// Name of a secrets table in [`Config::tables`]; every URL then has a label.
    pub auth: Option<String>,
    /// Envelope sender rewrite; never applied to the null sender.
    pub mail_from: Option<MailFromRewrite>,
    /// Extra trust anchors (PEM) for the relays' certificates.
    pub ca_file: Option<PathBuf>,
    /// Set: `smtp://` (plaintext) URLs are allowed.
    pub insecure: bool,
    pub alignment: AlignmentMode,
    pub on_misalignment: OnMisalignment,
    pub connect_timeout: Duration,
    /// Time allowed for each command's reply.
    pub command_timeout: Duration,
    /// Time allowed for the reply to the end of data (RFC 5321 §4.5.3.2.6: 10 minutes).
    pub data_timeout: Duration,
    /// Connections per pool member.
    pub max_connections: usize,
    /// Connections to all members together.
    pub max_connections_total: usize,
    pub dkim: Vec<DkimKey>,
    /// Sign messages whose header From does not align with a key's domain.
    pub sign_unaligned: bool,
}

/// `mail_from = "@domain"` keeps the local part; `"user@domain"` replaces the whole address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailFromRewrite {
    /// Lower-cased domain.
    Domain(String),
    Address(Address),
}

pub use crate::domain::AlignmentMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMisalignment {
    Warn,
    Reject,
}

/// A DKIM signing key: `selector._domainkey.domain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimKey {
    /// Lower-cased.
    pub domain: String,
    pub selector: String,
    /// PEM private key.
    pub key: PathBuf,
    /// The header fields this key signs.
    pub headers: DkimHeaders,
}

/// The header fields a DKIM key signs (RFC 6376 §5.4): each occurrence present of a name in
/// `sign` or `oversign`; each name in `oversign` is also listed in `h=` once more than it
/// occurs (§5.4.2), so a field of that name added later breaks the signature. Names compare
/// case-insensitively; each appears once per list, and `From` is always signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimHeaders {
    pub sign: Vec<String>,
    pub oversign: Vec<String>,
}

/// The fields signed by default when present: what identifies and presents a message, the
/// MIME fields, and the list and feedback fields that receivers act on (RFC 8058 §4 offers
/// one-click unsubscribe only when both List-Unsubscribe fields are signed).
pub const DEFAULT_SIGNED_HEADERS: [&str; 19] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Help",
    "List-Post",
    "Feedback-ID",
    "Auto-Submitted",
];

/// The fields oversigned by default: the ones a reader sees or acts on, where a second
/// instance added in transit would change what the message says.
pub const DEFAULT_OVERSIGNED_HEADERS: [&str; 9] = [
    "From",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Reply-To",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

impl Default for DkimHeaders {
    fn default() -> DkimHeaders {
        DkimHeaders {
            sign: DEFAULT_SIGNED_HEADERS.map(String::from).to_vec(),
            oversign: DEFAULT_OVERSIGNED_HEADERS.map(String::from).to_vec(),
        }
    }
}

/// One `[[match]]` rule. Every condition given must hold; the first rule that matches a
/// recipient decides its action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchRule {
    pub from: FromSpec,
    pub recipients: ForSpec,
    /// The envelope sender (`mail_from`); `None`: any. The null sender `<>` is matched only by
    /// a negated list (it is in no list).
    pub mail_from: Option<AddressMatch>,
    /// The recipient address (`rcpt_to`); `None`: any.
    pub rcpt_to: Option<AddressMatch>,
    /// Name of an action in [`Config::actions`].
    pub action: String,
}

/// Which clients a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromSpec {
    /// Loopback or unix-socket peers, and mail the daemon makes itself (bounces, alias
    /// targets).
    Local,
    Any,
    /// Submissions that did not come over IP: the sendmail submission socket and the offline
    /// drop directory.
    Socket,
    /// SMTP clients whose address is in one of these networks.
    Source(Vec<IpNet>),
}

impl FromSpec {
    /// Whether every client this matches is on this host (the only clients allowed to relay).
    pub fn is_local_only(&self) -> bool {
        match self {
            FromSpec::Local | FromSpec::Socket => true,
            FromSpec::Any => false,
            FromSpec::Source(nets) => nets.iter().all(IpNet::is_loopback),
        }
    }
}

/// An IP network: an address and a prefix length (`127.0.0.0/8`, `::1/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    /// With the host bits cleared.
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// `ADDRESS` (a host) or `ADDRESS/PREFIX`; host bits set below the prefix are an error, as
    /// they usually mean a typo.
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("prefix `/{p}` must be 0 to {max}")),
            },
        };
        let net = IpNet { addr, prefix };
        if net.masked(addr) != addr {
            return Err(format!(
                "`{text}` has host bits set: write {}/{prefix}",
                net.masked(addr)
            ));
        }
        Ok(net)
    }

    fn masked(&self, ip: std::net::IpAddr) -> std::net::IpAddr {
        use std::net::IpAddr;
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }

    /// Whether `ip` is in this network; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }

    /// Whether `other` lies wholly inside this network.
    pub fn covers(&self, other: &IpNet) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// Whether every address of the network is a loopback address.
    pub fn is_loopback(&self) -> bool {
        const LO4: IpNet = IpNet {
            addr: std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
        };
        const LO6: IpNet = IpNet {
            addr: std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            prefix: 128,
        };
        LO4.covers(self) || LO6.covers(self)
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which recipients a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForSpec {
    /// Recipients in [`Config::local_domains`].
    Local,
    Any,
    /// Recipients in exactly these (lower-cased) domains.
    Domains(Vec<String>),
}

/// A `mail_from` or `rcpt_to` condition: an address in a list (or, negated, not in it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressMatch {
    /// `{ not = ... }`: the condition holds for addresses *not* in the list.
    pub negated: bool,
    pub list: AddressList,
}

/// The addresses of a condition: written in the rule, or one per line in a table file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressList {
    Inline(Vec<AddressPattern>),
    /// Name of a table in [`Config::tables`] holding one pattern per line.
    Table(String),
}

/// `user@domain` (one address) or `@domain` (every address of the domain); compared without
/// regard to case.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressPattern {
    /// Lower-cased.
    Address(String),
    /// Lower-cased, without the `@`.
    Domain(String),
}

impl AddressPattern {
    /// `user@domain` or `@domain`.
    pub fn parse(text: &str) -> Result<AddressPattern, String> {
        match text.strip_prefix('@') {
            Some(domain) if relay_url::is_host_name(domain) => Ok(AddressPattern::Domain(
                domain.trim_end_matches('.').to_ascii_lowercase(),
            )),
            Some(domain) => Err(format!("`{domain}` is not a domain name")),
            None => match Address::parse(text) {
                Ok(a) => Ok(AddressPattern::Address(a.to_string().to_lowercase())),
                Err(e) => Err(format!("{e}: expected \"user@domain\" or \"@domain\"")),
            },
        }
    }

    pub fn matches(&self, address: &Address) -> bool {
        match self {
            AddressPattern::Domain(d) => address.domain().eq_ignore_ascii_case(d),
            AddressPattern::Address(a) => address.to_string().to_lowercase() == *a,
        }
    }

    /// Whether every address `other` matches is matched by this pattern.
    pub fn covers(&self, other: &AddressPattern) -> bool {
        match (self, other) {
            (AddressPattern::Domain(d), AddressPattern::Address(a)) => {
                a.rsplit_once('@').is_some_and(|(_, ad)| ad == d)
            }
            _ => self == other,
        }
    }

    /// The domain every address matched is in.
    pub fn domain(&self) -> &str {
        match self {
            AddressPattern::Domain(d) => d,
            AddressPattern::Address(a) => a.rsplit_once('@').map_or("", |(_, d)| d),
        }
    }
}

impl std::fmt::Display for AddressPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressPattern::Address(a) => f.write_str(a),
            AddressPattern::Domain(d) => write!(f, "@{d}"),
        }
    }
}

/// Retry schedule and lifetime of queued messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSettings {
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Age at which a message is bounced.
    pub lifetime: Duration,
    /// Age at which the sender gets a delay notice; zero: never.
    pub warn_after: Duration,
}

impl Default for QueueSettings {
    fn default() -> QueueSettings {
        QueueSettings {
            retry_min: Duration::from_secs(5 * 60),
            retry_max: Duration::from_secs(3600),
            lifetime: Duration::from_secs(4 * 86_400),
            warn_after: Duration::from_secs(4 * 3600),
        }
    }
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    pub address: SocketAddr,
}

/// The periodic deliverability check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSettings {
    /// `None`: off.
    pub interval: Option<Duration>,
    /// Name servers for the checks instead of the system's (`[check] nameservers`).
    pub nameservers: Vec<SocketAddr>,
}

impl Default for CheckSettings {
    fn default() -> CheckSettings {
        CheckSettings {
            interval: Some(Duration::from_secs(6 * 3600)),
            nameservers: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// A tracing filter directive, e.g. `info` or `mailer_core=debug`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings {
            level: "info".to_string(),
        }
    }
}

/// What `mailer serve` does about its credentials, decided from who started it and `user`
/// ([`Config::privileges`]); the daemon carries it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Privileges {
    /// Started as root with `user` set: open the sockets, then become this account, keeping
    /// only CAP_CHOWN (mailboxes are handed to their owners).
    Drop(User),
    /// Started as root without `user`: everything runs as root. It works (and is what
    /// `~/Maildir` delivery needs) but is not the recommended deployment.
    StayRoot,
    /// Already unprivileged: as the configured `user`, or as anyone when none is set.
    Keep,
}

/// Line and column of configuration values that name files, keyed by their path in the
/// document: `user`, `tables.NAME`, `listen[I].tls_cert`, `listen[I].tls_key`, `actions.NAME.alias`,
/// `actions.NAME.auth`, `actions.NAME.relay[I]`, `actions.NAME.ca_file`,
/// `actions.NAME.dkim[I].key`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<String, (usize, usize)>);

impl Positions {
    /// `(0, 0)` (the file as a whole) for a key not recorded.
    pub fn get(&self, key: &str) -> (usize, usize) {
        self.0.get(key).copied().unwrap_or((0, 0))
    }

    pub(crate) fn insert(&mut self, key: String, position: (usize, usize)) {
        self.0.insert(key, position);
    }
}

impl Config {
    /// Parses and validates a configuration text; `source` names it in diagnostics. Touches no
    /// file. On failure, every problem found, in file order.
    pub fn parse(text: &str, source: &Path) -> Result<Config, Vec<Diagnostic>> {
        build::build(text, source)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::whole_file(path, format!("cannot read: {e}"))])?;
        Config::parse(&text, path)
    }

    /// The configuration used when none is given (config/default.toml, built in).
    pub fn embedded_default() -> Config {
        Config::parse(DEFAULT_TOML, Path::new(EMBEDDED_SOURCE))
            .expect("config/default.toml is valid: a unit test parses it")
    }

    /// The text of the embedded default, for `mailer config default`-style output.
    pub fn embedded_default_text() -> &'static str {
        DEFAULT_TOML
    }

    /// Checks the files the configuration names: tables readable, secrets tables safe and
    /// holding every label their relays use, certificates, CA files and DKIM keys present, DKIM
    /// keys not readable by others; and that the `user` account exists. Empty when all is well.
    pub fn check_files(&self) -> Vec<Diagnostic> {
        files::check_files(self)
    }

    /// The account of `user`, looked up with `lookup` (the system's is
    /// [`crate::tables::users::lookup_user`]); `None` when `user` is not set. An account that
    /// does not exist, cannot be looked up or is root is an error at the `user` line.
    pub fn user_account(
        &self,
        lookup: impl Fn(&str) -> std::io::Result<Option<User>>,
    ) -> Result<Option<User>, Diagnostic> {
        let Some(name) = &self.user else {
            return Ok(None);
        };
        let at = |message: String| {
            let (line, col) = self.positions.get("user");
            Diagnostic::new(&self.source, line, col, message)
        };
        match lookup(name) {
            Ok(Some(account)) if account.uid == 0 => Err(at(format!(
                "user `{name}` has uid 0: running as it drops nothing; name an unprivileged account"
            ))),
            Ok(Some(account)) => Ok(Some(account)),
            Ok(None) => Err(at(format!(
                "user `{name}` does not exist: create it (useradd --system --home-dir {} --shell /usr/sbin/nologin {name}) or remove `user`",
                self.queue_dir.display()
            ))),
            Err(e) => Err(at(format!("user `{name}`: cannot look it up: {e}"))),
        }
    }

    /// What the daemon started with effective uid `euid` does about its credentials. Not root
    /// with `user` set: it must already be that user (as under the systemd unit), else it
    /// refuses to start rather than run with credentials nobody chose.
    pub fn privileges(
        &self,
        euid: u32,
        lookup: impl Fn(&str) -> std::io::Result<Option<User>>,
    ) -> Result<Privileges, Diagnostic> {
        match (self.user_account(lookup)?, euid) {
            (Some(account), 0) => Ok(Privileges::Drop(account)),
            (None, 0) => Ok(Privileges::StayRoot),
            (Some(account), uid) if uid != account.uid => {
                let (line, col) = self.positions.get("user");
                Err(Diagnostic::new(
                    &self.source,
                    line,
                    col,
                    format!(
                        "the daemon runs as uid {uid}, not as user `{}` (uid {}): start it as root (it switches to `{}` itself) or as `{}`",
                        account.name, account.uid, account.name, account.name
                    ),
                ))
            }
            _ => Ok(Privileges::Keep),
        }
    }
}

#[cfg(test)]
mod tests;
