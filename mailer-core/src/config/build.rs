//! From TOML text to [`Config`]: each top-level section is deserialized on its own (so one bad
//! section does not hide the problems of the next), then every value is checked and converted,
//! with diagnostics at the span of the value at fault.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::raw::*;
use super::relay_url::{is_host_name, RelaySecurity, RelayUrl};
use super::units::{format_duration, parse_duration, parse_size};
use super::*;
use super::{AddressList, AddressMatch, AddressPattern, IpNet};
use crate::diagnostic::Sink;

const TOP_LEVEL_KEYS: &[&str] = &[
    "user",
    "hostname",
    "local_domains",
    "queue_dir",
    "control_socket",
    "limits",
    "listen",
    "tables",
    "actions",
    "queue",
    "metrics",
    "check",
    "log",
    "match",
];

pub(super) fn build(text: &str, source: &Path) -> Result<Config, Vec<Diagnostic>> {
    let mut b = Builder {
        sink: Sink::new(source, text),
        warnings: Vec::new(),
        positions: Positions::default(),
    };
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in &errors {
            b.sink.toml_error(e, &(0..0));
        }
        return Err(sorted(b.sink.diagnostics));
    }
    let raw = b.split_sections(root.into_inner());
    let config = b.convert(raw, source);
    if b.sink.diagnostics.is_empty() {
        let mut config = config;
        config.warnings = sorted(b.warnings);
        config.positions = b.positions;
        Ok(config)
    } else {
        Err(sorted(b.sink.diagnostics))
    }
}

fn sorted(mut diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diagnostics.sort();
    diagnostics.dedup();
    diagnostics
}

/// The document split into sections, each deserialized independently; `None` where a
/// section was absent or failed (its error already recorded).
#[derive(Default)]
struct RawConfig {
    user: Option<S<String>>,
    hostname: Option<S<String>>,
    local_domains: Option<Vec<S<String>>>,
    queue_dir: Option<S<String>>,
    control_socket: Option<S<String>>,
    limits: Option<RawLimits>,
    listen: Option<Vec<Option<RawListen>>>,
    tables: Vec<(S<String>, S<String>)>,
    actions: Vec<(S<String>, Option<RawAction>)>,
    queue: Option<RawQueue>,
    metrics: Option<RawMetrics>,
    check: Option<RawCheck>,
    log: Option<RawLog>,
    /// With the span of each rule's table, for "shadowed by" messages.
    matches: Vec<(Range<usize>, Option<RawMatch>)>,
}

struct Builder<'a> {
    sink: Sink<'a>,
    warnings: Vec<Diagnostic>,
    positions: Positions,
}

impl<'a> Builder<'a> {
    fn de<'i, T: Deserialize<'i>>(&mut self, value: toml::Spanned<DeValue<'i>>) -> Option<T> {
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.sink.toml_error(&e, &span);
                None
            }
        }
    }

    fn warn(&mut self, span: &Range<usize>, message: String) {
        let (line, col) = self.sink.position(span);
        self.warnings
            .push(Diagnostic::new(self.sink.file, line, col, message));
    }

    fn remember(&mut self, key: String, span: &Range<usize>) {
        let position = self.sink.position(span);
        self.positions.insert(key, position);
    }

    fn split_sections(&mut self, root: DeTable<'_>) -> RawConfig {
        let mut raw = RawConfig::default();
        for (key, value) in root {
            let key_span = key.span();
            let value_span = value.span();
            match key.get_ref().as_ref() {
                "user" => raw.user = self.de(value),
                "hostname" => raw.hostname = self.de(value),
                "local_domains" => raw.local_domains = self.de(value),
                "queue_dir" => raw.queue_dir = self.de(value),
                "control_socket" => raw.control_socket = self.de(value),
                "limits" => raw.limits = self.de(value),
                "queue" => raw.queue = self.de(value),
                "metrics" => raw.metrics = self.de(value),
                "check" => raw.check = self.de(value),
                "log" => raw.log = self.de(value),
                "listen" => match value.into_inner() {
                    DeValue::Array(items) if items.is_empty() => self.sink.at(
                        &value_span,
                        "`listen = []` would accept no connection: remove it for the default or add [[listen]] tables",
                    ),
                    DeValue::Array(items) => {
                        let items = items.into_iter().map(|item| self.de(item)).collect();
                        raw.listen = Some(items);
                    }
                    _ => self.sink.at(
                        &value_span,
                        "`listen` must be an array of tables: write [[listen]]",
                    ),
                },
                "match" => match value.into_inner() {
                    DeValue::Array(items) => {
                        for item in items {
                            let span = item.span();
                            let rule = self.de(item);
                            raw.matches.push((span, rule));
                        }
                    }
                    _ => self.sink.at(
                        &value_span,
                        "`match` must be an array of tables: write [[match]]",
                    ),
                },
                "tables" => match value.into_inner() {
                    DeValue::Table(table) => {
                        for (name, path) in table {
                            let name_span = name.span();
                            let name = toml::Spanned::new(name_span, name.into_inner().into_owned());
                            if let Some(path) = self.de::<S<String>>(path) {
                                raw.tables.push((name, path));
                            }
                        }
                    }
                    _ => self.sink.at(
                        &value_span,
                        "`tables` must be a table of name = \"path\"",
                    ),
                },
                "actions" => match value.into_inner() {
                    DeValue::Table(table) => {
                        for (name, action) in table {
                            let name_span = name.span();
                            let name = toml::Spanned::new(name_span, name.into_inner().into_owned());
                            let action = self.de::<RawAction>(action);
                            raw.actions.push((name, action));
                        }
                    }
                    _ => self.sink.at(
                        &value_span,
                        "`actions` must be a table of actions: write [actions.NAME]",
                    ),
                },
                other => self.sink.at(
                    &key_span,
                    format!(
                        "unknown field `{other}`, expected one of {}",
                        TOP_LEVEL_KEYS
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            }
        }
        raw
    }

    fn convert(&mut self, raw: RawConfig, source: &Path) -> Config {
        let user = raw.user.as_ref().and_then(|u| self.user(u));
        let hostname = match &raw.hostname {
            Some(h) => {
                if !is_host_name(h.get_ref()) {
                    self.sink.at(
                        &h.span(),
                        format!("invalid hostname `{}`: expected a DNS name", h.get_ref()),
                    );
                }
                h.get_ref().clone()
            }
            None => system_hostname(),
        };
        let local_domains = match &raw.local_domains {
            Some(domains) => {
                let mut out: Vec<String> = Vec::new();
                for d in domains {
                    if let Some(d) = self.domain(d, "local_domains") {
                        if !out.contains(&d) {
                            out.push(d);
                        }
                    }
                }
                out
            }
            None => {
                let mut out = vec!["localhost".to_string()];
                let own = hostname.to_ascii_lowercase();
                if !out.contains(&own) {
                    out.push(own);
                }
                out
            }
        };
        let queue_dir = self.path_or(&raw.queue_dir, "queue_dir", "/var/spool/mailer");
        let control_socket = self.path_or(
            &raw.control_socket,
            "control_socket",
            "/run/mailer/control.sock",
        );
        let limits = self.limits(raw.limits.as_ref());
        let listen = self.listen(raw.listen.as_deref());
        let tables = self.tables(&raw.tables);
        let actions = self.actions(&raw.actions, &tables);
        let queue = self.queue(raw.queue.as_ref());
        let metrics = raw.metrics.as_ref().and_then(|m| self.metrics(m));
        let check = self.check(raw.check.as_ref());
        let log = self.log(raw.log.as_ref());
        let matches = self.matches(&raw, &actions, &tables, &local_domains);
        self.unused(&raw, &actions, &matches);
        if let Some(user) = &user {
            self.mailboxes_in_homes(&raw, user);
        }
        Config {
            user,
            hostname,
            local_domains,
            queue_dir,
            control_socket,
            limits,
            listen,
            tables,
            actions,
            queue,
            matches,
            metrics,
            check,
            log,
            source: source.to_path_buf(),
            warnings: Vec::new(),
            positions: Positions::default(),
        }
    }

    // ---- values -------------------------------------------------------------------------

    /// The account to run as; whether it exists is a question for the system
    /// ([`Config::check_files`]), not for the text.
    fn user(&mut self, value: &S<String>) -> Option<String> {
        self.remember("user".to_string(), &value.span());
        let name = value.get_ref();
        if name == "root" {
            self.sink.at(
                &value.span(),
                "user = \"root\" drops nothing: remove it to run as root, or name an unprivileged account such as \"mailer\"",
            );
            return None;
        }
        if !is_user_name(name) {
            self.sink
                .at(&value.span(), format!("user: invalid user name `{name}`"));
            return None;
        }
        Some(name.clone())
    }

    fn path_or(&mut self, value: &Option<S<String>>, key: &str, default: &str) -> PathBuf {
        match value {
            Some(v) => self.path(v, key),
            None => PathBuf::from(default),
        }
    }

    fn path(&mut self, value: &S<String>, key: &str) -> PathBuf {
        if value.get_ref().is_empty() {
            self.sink.at(&value.span(), format!("{key}: empty path"));
        }
        PathBuf::from(value.get_ref())
    }

    /// A lower-cased DNS name, or `None` after recording why not.
    fn domain(&mut self, value: &S<String>, key: &str) -> Option<String> {
        let d = value.get_ref();
        if is_host_name(d) {
            Some(d.trim_end_matches('.').to_ascii_lowercase())
        } else {
            self.sink
                .at(&value.span(), format!("{key}: invalid domain `{d}`"));
            None
        }
    }

    fn duration(&mut self, value: &Option<S<Scalar>>, key: &str, default: Duration) -> Duration {
        let Some(value) = value else {
            return default;
        };
        let parsed = match value.get_ref() {
            Scalar::Str(s) => parse_duration(s),
            Scalar::Int(0) => Ok(Duration::ZERO),
            Scalar::Int(n) => Err(format!(
                "`{n}` has no unit: write a string such as \"{n}s\" or \"{n}m\""
            )),
        };
        parsed.unwrap_or_else(|e| {
            self.sink.at(&value.span(), format!("{key}: {e}"));
            default
        })
    }

    /// A duration that must not be zero.
    fn positive_duration(
        &mut self,
        value: &Option<S<Scalar>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration(value, key, default);
        if d.is_zero() {
            if let Some(v) = value {
                self.sink.at(&v.span(), format!("{key} must not be zero"));
            }
            return default;
        }
        d
    }

    fn size(&mut self, value: &Option<S<Scalar>>, key: &str, default: u64) -> u64 {
        let Some(value) = value else {
            return default;
        };
        let parsed = match value.get_ref() {
            Scalar::Str(s) => parse_size(s),
            Scalar::Int(n) => u64::try_from(*n).map_err(|_| format!("negative size `{n}`")),
        };
        parsed.unwrap_or_else(|e| {
            self.sink.at(&value.span(), format!("{key}: {e}"));
            default
        })
    }

    /// A count of at least one.
    fn count(&mut self, value: &Option<S<i64>>, key: &str, default: usize) -> usize {
        let Some(value) = value else {
            return default;
        };
        match usize::try_from(*value.get_ref()) {
            Ok(n) if n >= 1 => n,
            _ => {
                self.sink.at(
                    &value.span(),
                    format!("{key} must be at least 1 (got {})", value.get_ref()),
                );
                default
            }
        }
    }

    /// One of `choices`' names, or `None` after recording the allowed values.
    fn choice<T: Copy>(
        &mut self,
        value: &S<String>,
        key: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let found = choices
            .iter()
            .find(|(name, _)| *name == value.get_ref())
            .map(|(_, v)| *v);
        if found.is_none() {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            self.sink.at(
                &value.span(),
                format!(
                    "{key}: unknown value \"{}\", expected {}",
                    value.get_ref(),
                    names.join(" or ")
                ),
            );
        }
        found
    }

    fn socket_address(&mut self, value: &S<String>, key: &str) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.sink.at(
                    &value.span(),
                    format!(
                        "{key}: invalid address `{}`: expected IP:port such as \"127.0.0.1:25\" or \"[::1]:25\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn bool(value: &Option<S<bool>>) -> bool {
        value.as_ref().is_some_and(|v| *v.get_ref())
    }

    // ---- sections -----------------------------------------------------------------------

    fn limits(&mut self, raw: Option<&RawLimits>) -> Limits {
        let d = Limits::default();
        let Some(raw) = raw else {
            return d;
        };
        let max_message_size = self.size(
            &raw.max_message_size,
            "max_message_size",
            d.max_message_size,
        );
        if max_message_size == 0 {
            if let Some(v) = &raw.max_message_size {
                self.sink.at(&v.span(), "max_message_size must not be zero");
            }
        }
        let max_line_length = self.size(
            &raw.max_line_length,
            "max_line_length",
            d.max_line_length as u64,
        );
        let max_line_length = match usize::try_from(max_line_length) {
            Ok(n) if n >= 1000 => n,
            _ => {
                if let Some(v) = &raw.max_line_length {
                    self.sink.at(
                        &v.span(),
                        "max_line_length must be at least 1000 bytes (RFC 5321 §4.5.3.1.6)",
                    );
                }
                d.max_line_length
            }
        };
        let bare_newlines = match &raw.bare_newlines {
            Some(v) => self
                .choice(
                    v,
                    "bare_newlines",
                    &[
                        ("reject", BareNewlines::Reject),
                        ("normalize", BareNewlines::Normalize),
                    ],
                )
                .unwrap_or(d.bare_newlines),
            None => d.bare_newlines,
        };
        Limits {
            max_message_size,
            max_recipients: self.count(&raw.max_recipients, "max_recipients", d.max_recipients),
            max_connections: self.count(&raw.max_connections, "max_connections", d.max_connections),
            max_line_length,
            idle_timeout: self.positive_duration(&raw.idle_timeout, "idle_timeout", d.idle_timeout),
            data_timeout: self.positive_duration(&raw.data_timeout, "data_timeout", d.data_timeout),
            bare_newlines,
            shutdown_grace: self.duration(&raw.shutdown_grace, "shutdown_grace", d.shutdown_grace),
            max_hops: self.count(&raw.max_hops, "max_hops", d.max_hops),
            max_errors: self.count(&raw.max_errors, "max_errors", d.max_errors),
        }
    }

    fn listen(&mut self, raw: Option<&[Option<RawListen>]>) -> Vec<Listen> {
        let Some(raw) = raw else {
            return vec![
                Listen {
                    address: SocketAddr::from(([127, 0, 0, 1], 25)),
                    tls: None,
                },
                Listen {
                    address: SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 25)),
                    tls: None,
                },
            ];
        };
        let mut out = Vec::new();
        let mut seen: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for (i, l) in raw.iter().enumerate() {
            let Some(l) = l else { continue };
            let address = self.socket_address(&l.address, "listen address");
            if let Some(a) = address {
                if let Some(first_line) = seen.get(&a) {
                    self.sink.at(
                        &l.address.span(),
                        format!("duplicate listen address {a} (first on line {first_line})"),
                    );
                } else {
                    let (line, _) = self.sink.position(&l.address.span());
                    seen.insert(a, line);
                }
            }
            let tls = match (&l.tls_cert, &l.tls_key) {
                (Some(cert), Some(key)) => {
                    self.remember(format!("listen[{i}].tls_cert"), &cert.span());
                    self.remember(format!("listen[{i}].tls_key"), &key.span());
                    Some(ListenTls {
                        cert: self.path(cert, "tls_cert"),
                        key: self.path(key, "tls_key"),
                    })
                }
                (Some(cert), None) => {
                    self.sink.at(
                        &cert.span(),
                        "tls_cert needs tls_key (give both or neither)",
                    );
                    None
                }
                (None, Some(key)) => {
                    self.sink
                        .at(&key.span(), "tls_key needs tls_cert (give both or neither)");
                    None
                }
                (None, None) => None,
            };
            if let Some(address) = address {
                out.push(Listen { address, tls });
            }
        }
        out
    }

    fn tables(&mut self, raw: &[(S<String>, S<String>)]) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        for (name, path) in raw {
            self.remember(format!("tables.{}", name.get_ref()), &path.span());
            let path = self.path(path, &format!("tables.{}", name.get_ref()));
            out.insert(name.get_ref().clone(), path);
        }
        out
    }

    /// The name of a table that must exist in `[tables]`.
    fn table_ref(&mut self, value: &S<String>, tables: &BTreeMap<String, PathBuf>) -> String {
        let name = value.get_ref();
        if !tables.contains_key(name) {
            let defined = if tables.is_empty() {
                "none is defined".to_string()
            } else {
                format!(
                    "defined: {}",
                    tables
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            self.sink.at(
                &value.span(),
                format!("table `{name}` is not defined in [tables] ({defined})"),
            );
        }
        name.clone()
    }

    fn actions(
        &mut self,
        raw: &[(S<String>, Option<RawAction>)],
        tables: &BTreeMap<String, PathBuf>,
    ) -> BTreeMap<String, Action> {
        let mut out = BTreeMap::new();
        for (name, action) in raw {
            let Some(action) = action else { continue };
            let action = if action.relay.is_some() {
                self.relay_action(name.get_ref(), action, tables)
            } else if action.mbox.is_some() || action.maildir.is_some() {
                self.local_action(name.get_ref(), action, tables)
                    .map(Action::Local)
            } else {
                self.sink.at(
                    &name.span(),
                    format!(
                        "action `{}` delivers nowhere: give mbox, maildir or relay",
                        name.get_ref()
                    ),
                );
                None
            };
            if let Some(action) = action {
                out.insert(name.get_ref().clone(), action);
            }
        }
        out
    }

    fn local_action(
        &mut self,
        name: &str,
        a: &RawAction,
        tables: &BTreeMap<String, PathBuf>,
    ) -> Option<LocalAction> {
        // Only called without `relay`: the rest of the relay keys are misplaced here.
        let relay_only = [
            ("auth", a.auth.as_ref().map(|v| v.span())),
            ("mail_from", a.mail_from.as_ref().map(|v| v.span())),
            ("ca_file", a.ca_file.as_ref().map(|v| v.span())),
            ("insecure", a.insecure.as_ref().map(|v| v.span())),
            ("alignment", a.alignment.as_ref().map(|v| v.span())),
            (
                "on_misalignment",
                a.on_misalignment.as_ref().map(|v| v.span()),
            ),
            (
                "connect_timeout",
                a.connect_timeout.as_ref().map(|v| v.span()),
            ),
            (
                "command_timeout",
                a.command_timeout.as_ref().map(|v| v.span()),
            ),
            ("data_timeout", a.data_timeout.as_ref().map(|v| v.span())),
            (
                "max_connections",
                a.max_connections.as_ref().map(|v| v.span()),
            ),
            (
                "max_connections_total",
                a.max_connections_total.as_ref().map(|v| v.span()),
            ),
            ("dkim", a.dkim.as_ref().map(|v| v.span())),
            (
                "sign_unaligned",
                a.sign_unaligned.as_ref().map(|v| v.span()),
            ),
        ];
        for (key, span) in relay_only {
            if let Some(span) = span {
                self.sink.at(
                    &span,
                    format!("`{key}` applies to relay actions; `{name}` delivers locally"),
                );
            }
        }
        let mailbox = match (&a.mbox, &a.maildir) {
            (Some(_), Some(maildir)) => {
                self.sink.at(
                    &maildir.span(),
                    format!("action `{name}` gives both mbox and maildir: keep one"),
                );
                return None;
            }
            (Some(mbox), None) => MailboxKind::Mbox(self.path(mbox, "mbox").display().to_string()),
            (None, Some(maildir)) => {
                MailboxKind::Maildir(self.path(maildir, "maildir").display().to_string())
            }
            (None, None) => return None,
        };
        let alias = a.alias.as_ref().map(|v| {
            self.remember(format!("actions.{name}.alias"), &v.span());
            self.table_ref(v, tables)
        });
        // Pipe and file targets are refused in alias tables; the switches that would allow
        // them exist so an smtpd/sendmail habit gets a clear answer rather than a bounce.
        for (key, value) in [
            ("allow_commands", &a.allow_commands),
            ("allow_files", &a.allow_files),
        ] {
            if let Some(v) = value.as_ref().filter(|v| *v.get_ref()) {
                self.sink.at(
                    &v.span(),
                    format!("`{key}` is not supported: aliases cannot run commands or append to files here"),
                );
            }
        }
        Some(LocalAction {
            mailbox,
            alias,
            allow_commands: Self::bool(&a.allow_commands),
            allow_files: Self::bool(&a.allow_files),
        })
    }

    fn relay_action(
        &mut self,
        name: &str,
        a: &RawAction,
        tables: &BTreeMap<String, PathBuf>,
    ) -> Option<Action> {
        let local_only = [
            ("mbox", a.mbox.as_ref().map(|v| v.span())),
            ("maildir", a.maildir.as_ref().map(|v| v.span())),
            ("alias", a.alias.as_ref().map(|v| v.span())),
            (
                "allow_commands",
                a.allow_commands.as_ref().map(|v| v.span()),
            ),
            ("allow_files", a.allow_files.as_ref().map(|v| v.span())),
        ];
        for (key, span) in local_only {
            if let Some(span) = span {
                self.sink.at(
                    &span,
                    format!("`{key}` applies to local actions; `{name}` relays"),
                );
            }
        }
        let relay = a.relay.as_ref()?;
        let items: Vec<S<String>> = match relay.get_ref() {
            OneOrMany::One(url) => vec![toml::Spanned::new(relay.span(), url.clone())],
            OneOrMany::Many(urls) => urls.clone(),
        };
        if items.is_empty() {
            self.sink.at(
                &relay.span(),
                format!("action `{name}`: relay lists no URL"),
            );
        }
        let insecure = Self::bool(&a.insecure);
        let auth = a.auth.as_ref().map(|v| {
            self.remember(format!("actions.{name}.auth"), &v.span());
            self.table_ref(v, tables)
        });
        let mut relays: Vec<RelayUrl> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let span = item.span();
            let url = match item.get_ref().parse::<RelayUrl>() {
                Ok(url) => url,
                Err(e) => {
                    self.sink.at(&span, e.to_string());
                    continue;
                }
            };
            self.remember(format!("actions.{name}.relay[{i}]"), &span);
            if url.security == RelaySecurity::Plain {
                if auth.is_some() {
                    self.sink.at(
                        &span,
                        format!("`auth` over plaintext {url} would send the password in clear: use smtp+tls:// or smtps://"),
                    );
                } else if !insecure {
                    self.sink.at(
                        &span,
                        format!("plaintext relay {url} needs `insecure = true` in action `{name}` (prefer smtp+tls:// or smtps://)"),
                    );
                }
            }
            match (&url.label, &auth) {
                (Some(label), None) => self.sink.at(
                    &span,
                    format!("relay URL names label `{label}` but action `{name}` has no `auth` table"),
                ),
                (None, Some(table)) => self.sink.at(
                    &span,
                    format!("action `{name}` authenticates with table `{table}`: the URL needs a label (smtp+tls://LABEL@host)"),
                ),
                _ => {}
            }
            if relays.contains(&url) {
                self.sink.at(&span, format!("duplicate relay {url}"));
                continue;
            }
            relays.push(url);
        }
        let mail_from = a.mail_from.as_ref().and_then(|v| self.mail_from(v));
        let ca_file = a.ca_file.as_ref().map(|v| {
            self.remember(format!("actions.{name}.ca_file"), &v.span());
            self.path(v, "ca_file")
        });
        let alignment = match &a.alignment {
            Some(v) => self
                .choice(
                    v,
                    "alignment",
                    &[
                        ("strict", AlignmentMode::Strict),
                        ("relaxed", AlignmentMode::Relaxed),
                    ],
                )
                .unwrap_or(AlignmentMode::Relaxed),
            None => AlignmentMode::Relaxed,
        };
        let on_misalignment = match &a.on_misalignment {
            Some(v) => self
                .choice(
                    v,
                    "on_misalignment",
                    &[
                        ("warn", OnMisalignment::Warn),
                        ("reject", OnMisalignment::Reject),
                    ],
                )
                .unwrap_or(OnMisalignment::Warn),
            None => OnMisalignment::Warn,
        };
        let dkim = a
            .dkim
            .as_ref()
            .map(|d| self.dkim(name, d))
            .unwrap_or_default();
        Some(Action::Relay(RelayAction {
            relays,
            auth,
            mail_from,
            ca_file,
            insecure,
            alignment,
            on_misalignment,
            connect_timeout: self.positive_duration(
                &a.connect_timeout,
                "connect_timeout",
                Duration::from_secs(30),
            ),
            command_timeout: self.positive_duration(
                &a.command_timeout,
                "command_timeout",
                Duration::from_secs(5 * 60),
            ),
            data_timeout: self.positive_duration(
                &a.data_timeout,
                "data_timeout",
                Duration::from_secs(10 * 60),
            ),
            max_connections: self.count(&a.max_connections, "max_connections", 10),
            max_connections_total: self.count(
                &a.max_connections_total,
                "max_connections_total",
                20,
            ),
            dkim,
            sign_unaligned: Self::bool(&a.sign_unaligned),
        }))
    }

    fn mail_from(&mut self, value: &S<String>) -> Option<MailFromRewrite> {
        let text = value.get_ref();
        let parsed = match text.strip_prefix('@') {
            Some(domain) if is_host_name(domain) => Ok(MailFromRewrite::Domain(
                domain.trim_end_matches('.').to_ascii_lowercase(),
            )),
            Some(_) => Err("invalid domain".to_string()),
            None => Address::parse(text)
                .map(MailFromRewrite::Address)
                .map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(m) => Some(m),
            Err(why) => {
                self.sink.at(
                    &value.span(),
                    format!("invalid mail_from `{text}` ({why}): expected \"@domain\" or \"user@domain\""),
                );
                None
            }
        }
    }

    fn dkim(&mut self, action: &str, raw: &S<OneOrMany<RawDkim, S<RawDkim>>>) -> Vec<DkimKey> {
        let entries: Vec<(Range<usize>, &RawDkim)> = match raw.get_ref() {
            OneOrMany::One(k) => vec![(raw.span(), k)],
            OneOrMany::Many(ks) => ks.iter().map(|k| (k.span(), k.get_ref())).collect(),
        };
        let mut out: Vec<DkimKey> = Vec::new();
        for (i, (span, k)) in entries.into_iter().enumerate() {
            let domain = self.domain(&k.domain, "dkim domain");
            let selector = k.selector.get_ref();
            if !is_selector(selector) {
                self.sink.at(
                    &k.selector.span(),
                    format!("dkim selector: invalid selector `{selector}`"),
                );
            }
            self.remember(format!("actions.{action}.dkim[{i}].key"), &k.key.span());
            let key = self.path(&k.key, "dkim key");
            let headers = self.dkim_headers(k, span.clone());
            let Some(domain) = domain else { continue };
            if out
                .iter()
                .any(|o| o.domain == domain && &o.selector == selector)
            {
                self.sink.at(
                    &span,
                    format!("duplicate DKIM key {selector}._domainkey.{domain}"),
                );
                continue;
            }
            out.push(DkimKey {
                domain,
                selector: selector.clone(),
                key,
                headers,
            });
        }
        out
    }

    /// `sign_headers` and `oversign_headers`, each replacing its default when given.
    fn dkim_headers(&mut self, k: &RawDkim, entry: Range<usize>) -> DkimHeaders {
        let default = DkimHeaders::default();
        let sign = match &k.sign_headers {
            Some(list) => self.header_names(list, "sign_headers"),
            None => default.sign,
        };
        let oversign = match &k.oversign_headers {
            Some(list) => self.header_names(list, "oversign_headers"),
            None => default.oversign,
        };
        let from_signed = sign
            .iter()
            .chain(&oversign)
            .any(|n| n.eq_ignore_ascii_case("From"));
        if !from_signed {
            let span = k.sign_headers.as_ref().map_or(entry, |l| l.span());
            self.sink.at(
                &span,
                "dkim sign_headers: From must be signed (RFC 6376 §5.4)".to_string(),
            );
        }
        DkimHeaders { sign, oversign }
    }

    /// A list of header field names, each valid (RFC 5322 §3.6.8) and listed once.
    fn header_names(&mut self, list: &S<Vec<S<String>>>, key: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for name in list.get_ref() {
            let text = name.get_ref();
            if !is_field_name(text) {
                self.sink.at(
                    &name.span(),
                    format!("dkim {key}: invalid header field name `{text}`"),
                );
            } else if out.iter().any(|o| o.eq_ignore_ascii_case(text)) {
                self.sink.at(
                    &name.span(),
                    format!("dkim {key}: `{text}` is listed twice"),
                );
            } else {
                out.push(text.clone());
            }
        }
        out
    }

    fn queue(&mut self, raw: Option<&RawQueue>) -> QueueSettings {
        let d = QueueSettings::default();
        let Some(raw) = raw else {
            return d;
        };
        let q = QueueSettings {
            retry_min: self.positive_duration(&raw.retry_min, "retry_min", d.retry_min),
            retry_max: self.positive_duration(&raw.retry_max, "retry_max", d.retry_max),
            lifetime: self.positive_duration(&raw.lifetime, "lifetime", d.lifetime),
            warn_after: self.duration(&raw.warn_after, "warn_after", d.warn_after),
        };
        if q.retry_max < q.retry_min {
            if let Some(span) = raw
                .retry_max
                .as_ref()
                .or(raw.retry_min.as_ref())
                .map(|v| v.span())
            {
                self.sink.at(
                    &span,
                    format!(
                        "retry_max ({}) is shorter than retry_min ({})",
                        format_duration(q.retry_max),
                        format_duration(q.retry_min)
                    ),
                );
            }
        }
        if !q.warn_after.is_zero() && q.warn_after >= q.lifetime {
            if let Some(span) = raw
                .warn_after
                .as_ref()
                .or(raw.lifetime.as_ref())
                .map(|v| v.span())
            {
                self.sink.at(
                    &span,
                    format!(
                        "warn_after ({}) must be shorter than lifetime ({}); \"0\" disables delay notices",
                        format_duration(q.warn_after),
                        format_duration(q.lifetime)
                    ),
                );
            }
        }
        q
    }

    fn metrics(&mut self, raw: &RawMetrics) -> Option<MetricsSettings> {
        let address = self.socket_address(&raw.address, "metrics address")?;
        if !address.ip().is_loopback() && !Self::bool(&raw.allow_non_loopback) {
            self.sink.at(
                &raw.address.span(),
                format!("metrics address {address} is not loopback: set allow_non_loopback = true to expose metrics beyond this host"),
            );
        }
        Some(MetricsSettings { address })
    }

    fn check(&mut self, raw: Option<&RawCheck>) -> CheckSettings {
        let d = CheckSettings::default();
        let Some(raw) = raw else {
            return d;
        };
        let default = d.interval.unwrap_or_default();
        let interval = self.duration(&raw.interval, "interval", default);
        let nameservers = raw
            .nameservers
            .iter()
            .flatten()
            .filter_map(|ns| match ns.get_ref().parse::<std::net::IpAddr>() {
                // A bare address means the DNS port.
                Ok(ip) => Some(SocketAddr::new(ip, 53)),
                Err(_) => self.socket_address(ns, "nameservers"),
            })
            .collect();
        CheckSettings {
            interval: (!interval.is_zero()).then_some(interval),
            nameservers,
        }
    }

    fn log(&mut self, raw: Option<&RawLog>) -> LogSettings {
        match raw.and_then(|r| r.level.as_ref()) {
            Some(level) if level.get_ref().trim().is_empty() => {
                self.sink.at(&level.span(), "log level: empty filter");
                LogSettings::default()
            }
            Some(level) => LogSettings {
                level: level.get_ref().clone(),
            },
            None => LogSettings::default(),
        }
    }

    fn matches(
        &mut self,
        raw: &RawConfig,
        actions: &BTreeMap<String, Action>,
        tables: &BTreeMap<String, PathBuf>,
        local_domains: &[String],
    ) -> Vec<MatchRule> {
        let defined: BTreeSet<&str> = raw
            .actions
            .iter()
            .map(|(n, _)| n.get_ref().as_str())
            .collect();
        let mut out: Vec<MatchRule> = Vec::new();
        // Rules kept for shadowing analysis, with the line of their table.
        let mut earlier: Vec<(MatchRule, usize)> = Vec::new();
        for (span, rule) in &raw.matches {
            let Some(rule) = rule else { continue };
            let from = self.sources(&rule.from);
            let recipients = match &rule.recipients {
                Some(r) => self.for_spec(r),
                None if rule.rcpt_to.is_some() => Some(ForSpec::Any),
                None => {
                    self.sink.at(
                        span,
                        "missing field `for`: give for = \"local\", \"any\" or [domains] (or an rcpt_to list)",
                    );
                    None
                }
            };
            let mail_from = rule
                .mail_from
                .as_ref()
                .map(|m| self.address_match(m, "mail_from", tables));
            let rcpt_to = rule
                .rcpt_to
                .as_ref()
                .map(|m| self.address_match(m, "rcpt_to", tables));
            let action = rule.action.get_ref();
            if !defined.contains(action.as_str()) {
                let known = if defined.is_empty() {
                    "none is defined".to_string()
                } else {
                    format!(
                        "defined: {}",
                        defined.iter().copied().collect::<Vec<_>>().join(", ")
                    )
                };
                self.sink.at(
                    &rule.action.span(),
                    format!("no action named `{action}` ({known})"),
                );
            }
            let (Some(from), Some(recipients), Some(mail_from), Some(rcpt_to)) = (
                from,
                recipients,
                mail_from.map_or(Some(None), |m| m.map(Some)),
                rcpt_to.map_or(Some(None), |m| m.map(Some)),
            ) else {
                continue;
            };
            // The relay is closed to clients that are not on this host, whatever the rules
            // say: there is no SMTP AUTH on the listeners to let anyone else in.
            if matches!(actions.get(action), Some(Action::Relay(_))) && !from.is_local_only() {
                let what = match &from {
                    FromSpec::Source(nets) => {
                        let open: Vec<String> = nets
                            .iter()
                            .filter(|n| !n.is_loopback())
                            .map(|n| n.to_string())
                            .collect();
                        format!("sources {} are not on this host", open.join(", "))
                    }
                    _ => "from = \"any\" includes clients that are not on this host".to_string(),
                };
                self.sink.at(
                    &rule.from.span(),
                    format!("action `{action}` relays, and {what}: that would be an open relay; use from = \"local\", \"socket\" or loopback sources"),
                );
            }
            let rule_out = MatchRule {
                from,
                recipients,
                mail_from,
                rcpt_to,
                action: action.clone(),
            };
            if let Some(why) = never_matches(&rule_out, local_domains) {
                self.warn(span, format!("this rule can never match: {why}"));
            } else if let Some((_, line)) = earlier
                .iter()
                .find(|(e, _)| covers(e, &rule_out, local_domains))
            {
                self.sink.at(
                    &rule.from.span(),
                    format!("this rule is never reached: the rule on line {line} matches all its recipients first"),
                );
            }
            let (line, _) = self.sink.position(span);
            earlier.push((rule_out.clone(), line));
            if actions.contains_key(action) {
                out.push(rule_out);
            }
        }
        out
    }

    fn sources(&mut self, value: &S<RawFrom>) -> Option<FromSpec> {
        match value.get_ref() {
            RawFrom::Name(name) => match name.as_str() {
                "local" => Some(FromSpec::Local),
                "any" => Some(FromSpec::Any),
                "socket" => Some(FromSpec::Socket),
                other => {
                    self.sink.at(
                        &value.span(),
                        format!("from: unknown value \"{other}\", expected \"local\", \"any\", \"socket\" or {{ source = [\"127.0.0.0/8\", \"::1\"] }}"),
                    );
                    None
                }
            },
            RawFrom::Source(list) => {
                let items: Vec<S<String>> = match list.get_ref() {
                    OneOrMany::One(n) => vec![toml::Spanned::new(list.span(), n.clone())],
                    OneOrMany::Many(ns) => ns.clone(),
                };
                if items.is_empty() {
                    self.sink
                        .at(&list.span(), "from source: empty list of networks");
                    return None;
                }
                let mut nets: Vec<IpNet> = Vec::new();
                let mut ok = true;
                for item in &items {
                    match IpNet::parse(item.get_ref()) {
                        Ok(n) if !nets.contains(&n) => nets.push(n),
                        Ok(_) => {}
                        Err(why) => {
                            self.sink.at(&item.span(), format!("from source: {why}"));
                            ok = false;
                        }
                    }
                }
                ok.then_some(FromSpec::Source(nets))
            }
        }
    }

    fn for_spec(&mut self, value: &S<OneOrMany<String, S<String>>>) -> Option<ForSpec> {
        match value.get_ref() {
            OneOrMany::One(s) if s == "local" => Some(ForSpec::Local),
            OneOrMany::One(s) if s == "any" => Some(ForSpec::Any),
            OneOrMany::One(s) => {
                self.sink.at(
                    &value.span(),
                    format!("for: unknown value \"{s}\", expected \"local\", \"any\" or a list of domains such as [\"{s}\"]"),
                );
                None
            }
            OneOrMany::Many(items) => {
                if items.is_empty() {
                    self.sink.at(&value.span(), "for: empty list of domains");
                    return None;
                }
                let mut domains: Vec<String> = Vec::new();
                let mut ok = true;
                for item in items {
                    match self.domain(item, "for") {
                        Some(d) if !domains.contains(&d) => domains.push(d),
                        Some(_) => {}
                        None => ok = false,
                    }
                }
                ok.then_some(ForSpec::Domains(domains))
            }
        }
    }

    /// A `mail_from` or `rcpt_to` condition; `None` after recording what is wrong.
    fn address_match(
        &mut self,
        value: &S<RawAddresses>,
        key: &str,
        tables: &BTreeMap<String, PathBuf>,
    ) -> Option<AddressMatch> {
        let span = value.span();
        let (negated, inner) = match value.get_ref() {
            RawAddresses::Not(inner) => (true, inner.as_ref()),
            _ => (false, value),
        };
        let items: Vec<S<String>> = match inner.get_ref() {
            RawAddresses::Not(_) => {
                self.sink.at(
                    &inner.span(),
                    format!("{key}: `not` inside `not` cancels out: remove both"),
                );
                return None;
            }
            RawAddresses::Table(name) => {
                let name = self.table_ref(name, tables);
                return Some(AddressMatch {
                    negated,
                    list: AddressList::Table(name),
                });
            }
            RawAddresses::One(text) => vec![toml::Spanned::new(inner.span(), text.clone())],
            RawAddresses::Many(items) => items.clone(),
        };
        if items.is_empty() {
            self.sink
                .at(&span, format!("{key}: empty list of addresses"));
            return None;
        }
        let mut patterns: Vec<AddressPattern> = Vec::new();
        let mut ok = true;
        for item in &items {
            match AddressPattern::parse(item.get_ref()) {
                Ok(p) if !patterns.contains(&p) => patterns.push(p),
                Ok(_) => {}
                Err(why) => {
                    self.sink.at(&item.span(), format!("{key}: {why}"));
                    ok = false;
                }
            }
        }
        ok.then_some(AddressMatch {
            negated,
            list: AddressList::Inline(patterns),
        })
    }

    /// Home directories are closed to a daemon that has become `user` (0700 homes, and the
    /// unit's ProtectHome=read-only), so a `~` mailbox would defer every delivery.
    fn mailboxes_in_homes(&mut self, raw: &RawConfig, user: &str) {
        for (_, action) in &raw.actions {
            let Some(action) = action else { continue };
            for (key, value) in [("mbox", &action.mbox), ("maildir", &action.maildir)] {
                let Some(value) = value.as_ref().filter(|v| v.get_ref().starts_with('~')) else {
                    continue;
                };
                self.warn(
                    &value.span(),
                    format!(
                        "{key} `{}` is in home directories, which the daemon cannot enter once it runs as `{user}`: put mailboxes under /var/mail (e.g. \"/var/mail/%u/\"), or remove `user` and run as root",
                        value.get_ref()
                    ),
                );
            }
        }
    }

    /// Warnings for actions no rule uses and tables no action uses.
    fn unused(
        &mut self,
        raw: &RawConfig,
        actions: &BTreeMap<String, Action>,
        matches: &[MatchRule],
    ) {
        for (name, _) in &raw.actions {
            if !matches.iter().any(|m| &m.action == name.get_ref()) {
                self.warn(
                    &name.span(),
                    format!(
                        "action `{}` is not used by any [[match]] rule",
                        name.get_ref()
                    ),
                );
            }
        }
        let mut used: BTreeSet<&str> = actions
            .values()
            .filter_map(|a| match a {
                Action::Local(l) => l.alias.as_deref(),
                Action::Relay(r) => r.auth.as_deref(),
            })
            .collect();
        for rule in matches {
            for condition in [&rule.mail_from, &rule.rcpt_to].into_iter().flatten() {
                if let AddressList::Table(name) = &condition.list {
                    used.insert(name);
                }
            }
        }
        for (name, _) in &raw.tables {
            if !used.contains(name.get_ref().as_str()) {
                self.warn(
                    &name.span(),
                    format!(
                        "table `{}` is not used by any action or match rule",
                        name.get_ref()
                    ),
                );
            }
        }
    }
}

/// Whether every recipient `later` matches is matched by `earlier` first. Conservative: false
/// when it cannot be told from the text (tables, negations against lists).
fn covers(earlier: &MatchRule, later: &MatchRule, local_domains: &[String]) -> bool {
    let from = match (&earlier.from, &later.from) {
        (FromSpec::Any, _) => true,
        (FromSpec::Local, l) => l.is_local_only(),
        (FromSpec::Socket, FromSpec::Socket) => true,
        (FromSpec::Source(e), FromSpec::Source(l)) => {
            l.iter().all(|ln| e.iter().any(|en| en.covers(ln)))
        }
        _ => false,
    };
    let domains_in = |set: &[String], domains: &[String]| domains.iter().all(|d| set.contains(d));
    let recipients = match (&earlier.recipients, &later.recipients) {
        (ForSpec::Any, _) => true,
        (_, ForSpec::Any) => false,
        (ForSpec::Local, ForSpec::Local) => true,
        (ForSpec::Local, ForSpec::Domains(d)) => domains_in(local_domains, d),
        (ForSpec::Domains(e), ForSpec::Local) => domains_in(e, local_domains),
        (ForSpec::Domains(e), ForSpec::Domains(d)) => domains_in(e, d),
    };
    from && recipients
        && list_covers(earlier.mail_from.as_ref(), later.mail_from.as_ref())
        && list_covers(earlier.rcpt_to.as_ref(), later.rcpt_to.as_ref())
}

/// Whether every address `later` admits is admitted by `earlier` (`None`: every address).
fn list_covers(earlier: Option<&AddressMatch>, later: Option<&AddressMatch>) -> bool {
    let Some(e) = earlier else { return true };
    let Some(l) = later else { return false };
    match (&e.list, &l.list, e.negated, l.negated) {
        (AddressList::Table(a), AddressList::Table(b), en, ln) => a == b && en == ln,
        // Every pattern of the later list is inside the earlier one.
        (AddressList::Inline(ep), AddressList::Inline(lp), false, false) => {
            lp.iter().all(|l| ep.iter().any(|e| e.covers(l)))
        }
        // Not in L implies not in E when E is inside L.
        (AddressList::Inline(ep), AddressList::Inline(lp), true, true) => {
            ep.iter().all(|e| lp.iter().any(|l| l.covers(e)))
        }
        _ => false,
    }
}

/// Why a rule matches no recipient at all, if it is plain from the text: every `rcpt_to`
/// address lies outside the domains of `for`.
fn never_matches(rule: &MatchRule, local_domains: &[String]) -> Option<String> {
    let Some(AddressMatch {
        negated: false,
        list: AddressList::Inline(patterns),
    }) = &rule.rcpt_to
    else {
        return None;
    };
    let (domains, what): (&[String], &str) = match &rule.recipients {
        ForSpec::Any => return None,
        ForSpec::Local => (local_domains, "the local domains"),
        ForSpec::Domains(d) => (d, "the domains of `for`"),
    };
    let outside = patterns
        .iter()
        .all(|p| !domains.iter().any(|d| d == p.domain()));
    outside.then(|| {
        format!(
            "every rcpt_to address is outside {what} ({})",
            domains.join(", ")
        )
    })
}

/// A name useradd(8) could have made: no separators, no option look-alike, at most 32 bytes.
fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphanumeric()
                || matches!(c, '_' | '-' | '.')
                || (c == '$' && i == s.len() - 1)
        })
}

/// A header field name: printable ASCII but the colon (RFC 5322 §3.6.8).
fn is_field_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, 33..=57 | 59..=126))
}

/// A DKIM selector: dot-separated DNS labels (RFC 6376 §3.1).
fn is_selector(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The system host name (gethostname(2)); `localhost` if it cannot be had.
fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}
