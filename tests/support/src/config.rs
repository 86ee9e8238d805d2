//! One builder for the daemon configurations the end-to-end tests and the benchmark run with.
//!
//! Every rendered configuration keeps the queue, the control socket and any local mailboxes
//! inside the test's directory, listens on 127.0.0.1 only, and turns the deliverability watch
//! off (`[check] interval = "0"`) unless a test points it at its own DNS server: no test ever
//! asks the system resolver.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::daemon::{Daemon, Wrapper};

/// What a `[[match]]` rule's `for` matches.
#[derive(Clone, Debug)]
pub enum For {
    /// `for = "local"`: the local domains.
    Local,
    /// `for = "any"`.
    Any,
    /// `for = ["a.example", ...]`.
    Domains(Vec<String>),
}

impl For {
    /// `for = [domains]`.
    pub fn domains(domains: &[&str]) -> For {
        For::Domains(domains.iter().map(|d| d.to_string()).collect())
    }

    fn render(&self) -> String {
        match self {
            For::Local => quote("local"),
            For::Any => quote("any"),
            For::Domains(d) => list(d.iter().map(String::as_str)),
        }
    }
}

/// One `[actions.NAME]` table that relays.
#[derive(Clone, Debug)]
struct RelayAction {
    name: String,
    lines: Vec<String>,
}

/// Where relay actions send mail and how they authenticate.
#[derive(Clone, Debug)]
struct Upstream {
    urls: Vec<String>,
    /// `auth = "secrets"` and `ca_file`, for an upstream requiring STARTTLS and AUTH.
    auth_ca: Option<PathBuf>,
}

/// A daemon configuration, built up by its parts and rendered as TOML.
#[derive(Clone, Debug)]
pub struct TestConfig {
    dir: PathBuf,
    port: u16,
    hostname: String,
    local_domains: Option<Vec<String>>,
    limits: Vec<String>,
    more_listeners: Vec<u16>,
    aliases: Option<PathBuf>,
    secrets: Option<PathBuf>,
    local_mail: Option<PathBuf>,
    upstream: Option<Upstream>,
    mail_from: Option<String>,
    relay_actions: Vec<RelayAction>,
    check_nameservers: Option<(String, Vec<SocketAddr>)>,
    queue: Vec<(&'static str, String)>,
    metrics: Option<u16>,
    log_level: Option<String>,
    routes: Vec<(For, String)>,
    extra: Vec<String>,
}

impl TestConfig {
    /// A daemon named `mx.test` with its queue in `dir/queue` and its control socket at
    /// `dir/control.sock`, listening on `127.0.0.1:port`. It has no action until one is added.
    pub fn new(dir: &Path, port: u16) -> TestConfig {
        TestConfig {
            dir: dir.to_path_buf(),
            port,
            hostname: "mx.test".into(),
            local_domains: None,
            limits: Vec::new(),
            more_listeners: Vec::new(),
            aliases: None,
            secrets: None,
            local_mail: None,
            upstream: None,
            mail_from: None,
            relay_actions: Vec::new(),
            check_nameservers: None,
            queue: Vec::new(),
            metrics: None,
            log_level: None,
            routes: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// The directory the configuration keeps its state in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The SMTP port of the first listener.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `queue_dir`: `dir/queue`.
    pub fn queue_dir(&self) -> PathBuf {
        self.dir.join("queue")
    }

    /// `hostname` (default `mx.test`).
    pub fn hostname(mut self, name: &str) -> TestConfig {
        self.hostname = name.into();
        self
    }

    /// `local_domains` (default: the daemon's, localhost and the hostname).
    pub fn local_domains(mut self, domains: &[&str]) -> TestConfig {
        self.local_domains = Some(domains.iter().map(|d| d.to_string()).collect());
        self
    }

    /// Raw `key = value` lines for `[limits]`; may be called more than once.
    pub fn limits(mut self, lines: &str) -> TestConfig {
        self.limits.push(lines.into());
        self
    }

    /// A further `[[listen]]` on `127.0.0.1:port`.
    pub fn listen_also(mut self, port: u16) -> TestConfig {
        self.more_listeners.push(port);
        self
    }

    /// `[tables] aliases = path`, used by the local_mail action (`alias = "aliases"`).
    pub fn aliases(mut self, path: &Path) -> TestConfig {
        self.aliases = Some(path.to_path_buf());
        self
    }

    /// `[actions.local_mail] mbox = "mail_dir/%u"`, routed `for = "local"` unless routes are
    /// given.
    pub fn local_mail(mut self, mail_dir: &Path) -> TestConfig {
        self.local_mail = Some(mail_dir.to_path_buf());
        self
    }

    /// `[actions.outbound]` relaying to `smtp+tls://label@127.0.0.1:PORT` for each of `ports`
    /// (a pool when more than one), with `auth = "secrets"` from `[tables] secrets = secrets`
    /// and the upstream's certificate trusted through `ca_file`. Routed `for = "any"` unless
    /// routes are given.
    pub fn relay_to(
        mut self,
        label: &str,
        ports: &[u16],
        secrets: &Path,
        ca_file: &Path,
    ) -> TestConfig {
        self.secrets = Some(secrets.to_path_buf());
        self.upstream = Some(Upstream {
            urls: ports
                .iter()
                .map(|p| format!("smtp+tls://{label}@127.0.0.1:{p}"))
                .collect(),
            auth_ca: Some(ca_file.to_path_buf()),
        });
        self.ensure_outbound()
    }

    /// `[actions.outbound]` relaying to `smtp+tls://127.0.0.1:port` without AUTH or a CA file:
    /// with a port where nothing listens, accepted mail stays queued.
    pub fn relay_without_auth(mut self, port: u16) -> TestConfig {
        self.upstream = Some(Upstream {
            urls: vec![format!("smtp+tls://127.0.0.1:{port}")],
            auth_ca: None,
        });
        self.ensure_outbound()
    }

    fn ensure_outbound(mut self) -> TestConfig {
        if !self.relay_actions.iter().any(|a| a.name == "outbound") {
            self.relay_actions.insert(
                0,
                RelayAction {
                    name: "outbound".into(),
                    lines: Vec::new(),
                },
            );
        }
        self
    }

    /// A further relay action `name` to the same upstream as `outbound` (set by
    /// [`relay_to`](Self::relay_to) or [`relay_without_auth`](Self::relay_without_auth)).
    pub fn relay_action(mut self, name: &str) -> TestConfig {
        self.relay_actions.push(RelayAction {
            name: name.into(),
            lines: Vec::new(),
        });
        self
    }

    /// `mail_from` of every relay action, e.g. `@ublog.tech`.
    pub fn mail_from(mut self, rewrite: &str) -> TestConfig {
        self.mail_from = Some(rewrite.into());
        self
    }

    /// Raw `key = value` lines added to the relay action `name`.
    pub fn action_lines(mut self, name: &str, lines: &str) -> TestConfig {
        let action = self
            .relay_actions
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no relay action {name:?} in the test configuration"));
        action.lines.push(lines.into());
        self
    }

    /// `[queue] retry_min` and `retry_max`.
    pub fn retry(self, min: &str, max: &str) -> TestConfig {
        self.queue_key("retry_min", min).queue_key("retry_max", max)
    }

    /// `[queue] warn_after` and `lifetime`.
    pub fn warn_and_expire(self, warn_after: &str, lifetime: &str) -> TestConfig {
        self.queue_key("warn_after", warn_after)
            .queue_key("lifetime", lifetime)
    }

    fn queue_key(mut self, key: &'static str, value: &str) -> TestConfig {
        self.queue.retain(|(k, _)| *k != key);
        self.queue.push((key, value.into()));
        self
    }

    /// `[metrics] address = "127.0.0.1:port"`.
    pub fn metrics(mut self, port: u16) -> TestConfig {
        self.metrics = Some(port);
        self
    }

    /// Turns the deliverability watch on, every `interval`, asking only `nameservers`.
    pub fn watch(mut self, interval: &str, nameservers: &[SocketAddr]) -> TestConfig {
        self.check_nameservers = Some((interval.into(), nameservers.to_vec()));
        self
    }

    /// `[log] level`.
    pub fn log_level(mut self, level: &str) -> TestConfig {
        self.log_level = Some(level.into());
        self
    }

    /// A `[[match]] from = "local"` rule. Once any is given, they replace the default rules
    /// (local_mail for local, then outbound for any).
    pub fn route(mut self, for_: For, action: &str) -> TestConfig {
        self.routes.push((for_, action.into()));
        self
    }

    /// Raw TOML placed after the other sections and before the `[[match]]` rules; it should
    /// begin with a table header.
    pub fn extra(mut self, toml: &str) -> TestConfig {
        self.extra.push(toml.into());
        self
    }

    /// The configuration as the daemon reads it.
    pub fn render(&self) -> String {
        let dir = self.dir.display().to_string();
        let mut t = String::new();
        line(&mut t, &format!("hostname = {}", quote(&self.hostname)));
        if let Some(d) = &self.local_domains {
            line(
                &mut t,
                &format!("local_domains = {}", list(d.iter().map(String::as_str))),
            );
        }
        line(
            &mut t,
            &format!("queue_dir = {}", quote(&format!("{dir}/queue"))),
        );
        line(
            &mut t,
            &format!("control_socket = {}", quote(&format!("{dir}/control.sock"))),
        );
        if !self.limits.is_empty() {
            line(&mut t, "\n[limits]");
            for l in &self.limits {
                line(&mut t, l);
            }
        }
        for port in std::iter::once(self.port).chain(self.more_listeners.iter().copied()) {
            line(&mut t, "\n[[listen]]");
            line(
                &mut t,
                &format!("address = {}", quote(&format!("127.0.0.1:{port}"))),
            );
        }
        if self.aliases.is_some() || self.secrets.is_some() {
            line(&mut t, "\n[tables]");
            if let Some(a) = &self.aliases {
                line(&mut t, &format!("aliases = {}", path(a)));
            }
            if let Some(s) = &self.secrets {
                line(&mut t, &format!("secrets = {}", path(s)));
            }
        }
        if let Some(mail) = &self.local_mail {
            line(&mut t, "\n[actions.local_mail]");
            line(&mut t, &format!("mbox = {}", path(&mail.join("%u"))));
            if self.aliases.is_some() {
                line(&mut t, "alias = \"aliases\"");
            }
        }
        for action in &self.relay_actions {
            let upstream = self.upstream.as_ref().unwrap_or_else(|| {
                panic!(
                    "relay action {:?} without an upstream: call relay_to first",
                    action.name
                )
            });
            line(&mut t, &format!("\n[actions.{}]", action.name));
            let relay = match upstream.urls.as_slice() {
                [one] => quote(one),
                many => list(many.iter().map(String::as_str)),
            };
            line(&mut t, &format!("relay = {relay}"));
            if upstream.auth_ca.is_some() {
                line(&mut t, "auth = \"secrets\"");
            }
            if let Some(m) = &self.mail_from {
                line(&mut t, &format!("mail_from = {}", quote(m)));
            }
            if let Some(ca) = &upstream.auth_ca {
                line(&mut t, &format!("ca_file = {}", path(ca)));
            }
            for l in &action.lines {
                line(&mut t, l);
            }
        }
        match &self.check_nameservers {
            None => {
                line(
                    &mut t,
                    "\n# The deliverability watch would ask the system resolver: not in tests.",
                );
                line(&mut t, "[check]\ninterval = \"0\"");
            }
            Some((interval, nameservers)) => {
                line(&mut t, "\n[check]");
                line(&mut t, &format!("interval = {}", quote(interval)));
                let ns: Vec<String> = nameservers.iter().map(|a| a.to_string()).collect();
                line(
                    &mut t,
                    &format!("nameservers = {}", list(ns.iter().map(String::as_str))),
                );
            }
        }
        if !self.queue.is_empty() {
            line(&mut t, "\n[queue]");
            for (k, v) in &self.queue {
                line(&mut t, &format!("{k} = {}", quote(v)));
            }
        }
        if let Some(port) = self.metrics {
            line(&mut t, "\n[metrics]");
            line(
                &mut t,
                &format!("address = {}", quote(&format!("127.0.0.1:{port}"))),
            );
        }
        if let Some(level) = &self.log_level {
            line(&mut t, "\n[log]");
            line(&mut t, &format!("level = {}", quote(level)));
        }
        for e in &self.extra {
            line(&mut t, "");
            line(&mut t, e.trim_end());
        }
        let defaults;
        let routes = if self.routes.is_empty() {
            let mut d = Vec::new();
            if self.local_mail.is_some() {
                d.push((For::Local, "local_mail".to_string()));
            }
            if self.relay_actions.iter().any(|a| a.name == "outbound") {
                d.push((For::Any, "outbound".to_string()));
            }
            defaults = d;
            &defaults
        } else {
            &self.routes
        };
        for (for_, action) in routes {
            line(&mut t, "\n[[match]]\nfrom = \"local\"");
            line(&mut t, &format!("for = {}", for_.render()));
            line(&mut t, &format!("action = {}", quote(action)));
        }
        t
    }

    /// Writes the configuration to `dir/mailer.toml` and starts `bin serve` on it.
    pub fn start(&self, bin: &Path) -> Daemon {
        Daemon::start(bin, &self.dir, self.port, &self.render())
    }

    /// As [`start`](Self::start), under `wrapper` (e.g. with the queue on a small tmpfs).
    pub fn start_wrapped(&self, bin: &Path, wrapper: Wrapper) -> Daemon {
        Daemon::start_wrapped(bin, &self.dir, self.port, &self.render(), wrapper)
    }
}

/// Writes an OpenSMTPD-format secrets table `label user:password` to `path`, mode 0600 as the
/// daemon requires.
pub fn write_secrets(path: &Path, label: &str, user: &str, password: &str) {
    fs::write(path, format!("{label} {user}:{password}\n")).expect("write the secrets table");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod the secrets table");
}

fn line(t: &mut String, s: &str) {
    t.push_str(s);
    t.push('\n');
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path(p: &Path) -> String {
    quote(&p.display().to_string())
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    format!("[{}]", items.map(quote).collect::<Vec<_>>().join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_configuration_renders_every_block_and_turns_the_watch_off() {
        let dir = Path::new("/tmp/t");
        let text = TestConfig::new(dir, 2525)
            .hostname("mx.ublog.tech")
            .local_domains(&["localhost"])
            .relay_to(
                "papmx",
                &[26, 27],
                &dir.join("secrets"),
                &dir.join("ca.pem"),
            )
            .mail_from("@ublog.tech")
            .action_lines("outbound", "connect_timeout = \"5s\"")
            .retry("1s", "2s")
            .render();
        assert_eq!(
            text,
            r#"hostname = "mx.ublog.tech"
local_domains = ["localhost"]
queue_dir = "/tmp/t/queue"
control_socket = "/tmp/t/control.sock"

[[listen]]
address = "127.0.0.1:2525"

[tables]
secrets = "/tmp/t/secrets"

[actions.outbound]
relay = ["smtp+tls://papmx@127.0.0.1:26", "smtp+tls://papmx@127.0.0.1:27"]
auth = "secrets"
mail_from = "@ublog.tech"
ca_file = "/tmp/t/ca.pem"
connect_timeout = "5s"

# The deliverability watch would ask the system resolver: not in tests.
[check]
interval = "0"

[queue]
retry_min = "1s"
retry_max = "2s"

[[match]]
from = "local"
for = "any"
action = "outbound"
"#
        );
    }

    #[test]
    fn local_mail_routes_local_before_outbound_and_explicit_routes_replace_both() {
        let dir = Path::new("/tmp/t");
        let base = TestConfig::new(dir, 25)
            .aliases(&dir.join("aliases"))
            .local_mail(&dir.join("mail"))
            .relay_without_auth(9);
        let text = base.render();
        assert!(text.contains(
            "[tables]\naliases = \"/tmp/t/aliases\"\n\n[actions.local_mail]\nmbox = \"/tmp/t/mail/%u\"\nalias = \"aliases\"\n"
        ), "{text}");
        assert!(
            text.contains("relay = \"smtp+tls://127.0.0.1:9\"\n\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "[[match]]\nfrom = \"local\"\nfor = \"local\"\naction = \"local_mail\"\n\n\
             [[match]]\nfrom = \"local\"\nfor = \"any\"\naction = \"outbound\"\n"
            ),
            "{text}"
        );
        let routed = base
            .route(For::domains(&["example.org"]), "outbound")
            .render();
        assert!(
            routed.ends_with(
                "\n[[match]]\nfrom = \"local\"\nfor = [\"example.org\"]\naction = \"outbound\"\n"
            ),
            "{routed}"
        );
        assert_eq!(routed.matches("[[match]]").count(), 1);
    }

    #[test]
    fn a_watch_with_nameservers_replaces_the_off_switch_and_extra_toml_comes_last() {
        let ns: SocketAddr = "127.0.0.1:5353".parse().expect("a socket address");
        let text = TestConfig::new(Path::new("/d"), 1)
            .watch("1h", &[ns])
            .extra("[log]\nlevel = \"debug\"\n")
            .render();
        assert!(text.ends_with("\n\n[log]\nlevel = \"debug\"\n"), "{text}");
        assert!(text.contains("[check]\ninterval = \"1h\"\nnameservers = [\"127.0.0.1:5353\"]\n"));
        assert!(!text.contains("interval = \"0\""));
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
