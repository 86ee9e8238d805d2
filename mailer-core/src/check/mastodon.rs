//! `mailer check --mastodon-env FILE`: does Mastodon's `.env.production` send its mail through
//! this relay, the way the relay expects it?
//!
//! [`parse`] reads the dotenv file (no IO); [`judge`] compares the variables Mastodon's mailer
//! reads (config/email.yml) with the configuration in effect. The one fact that needs the file
//! system — where `SMTP_SENDMAIL_LOCATION` leads — is asked through [`Host`], which the daemon
//! answers.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use super::{Area, Check, Report, Status};
use crate::config::{Action, Config, Listen, MailFromRewrite};
use crate::domain::{aligned, AlignmentMode};

/// The variables of a dotenv file; a name given twice keeps its last value, as dotenv does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The value of `name`, `None` when unset. An empty value counts as unset, as Mastodon's
    /// `ENV.fetch(...).presence` and `ENV['X'].presence` read it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Every variable, by name.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }
}

/// Why a line of the file is not `KEY=value`. The reason is a fixed text: it never shows any
/// part of the line, which may hold a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvError {
    /// 1-based.
    pub line: usize,
    pub reason: &'static str,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.line, self.reason)
    }
}

/// Parses dotenv text: `KEY=value` lines, `export KEY=value`, blank lines and `#` comments,
/// values unquoted (ending at ` #`, trimmed), in single quotes (literal) or in double quotes
/// (`\n`, `\r`, `\t` and `\` before any other character, as the dotenv gem unescapes them);
/// LF or CRLF line ends. `${VAR}` substitution is not performed (Mastodon's sample uses none).
/// Every malformed line is reported.
pub fn parse(text: &str) -> Result<Env, Vec<EnvError>> {
    let mut env = Env::default();
    let mut errors = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match parse_line(line) {
            Ok(Some((key, value))) => {
                env.vars.insert(key.to_string(), value);
            }
            Ok(None) => {}
            Err(reason) => errors.push(EnvError {
                line: i + 1,
                reason,
            }),
        }
    }
    if errors.is_empty() {
        Ok(env)
    } else {
        Err(errors)
    }
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// One line: `None` for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<(&str, String)>, &'static str> {
    let rest = line.trim_start_matches(is_blank);
    if rest.is_empty() || rest.starts_with('#') {
        return Ok(None);
    }
    // `export KEY=v`, but `export = v` sets a variable named `export`.
    let rest = match rest.strip_prefix("export") {
        Some(after)
            if after.starts_with(is_blank)
                && !after.trim_start_matches(is_blank).starts_with('=') =>
        {
            after.trim_start_matches(is_blank)
        }
        _ => rest,
    };
    let key_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(rest.len());
    let key = &rest[..key_end];
    let after_key = rest[key_end..].trim_start_matches(is_blank);
    let Some(raw) = after_key.strip_prefix('=') else {
        return Err(if key.is_empty() {
            "expected KEY=value: no variable name"
        } else {
            "expected KEY=value: no `=` after the variable name"
        });
    };
    if key.is_empty() || key.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(
            "invalid variable name: letters, digits, `_` and `.`, not starting with a digit",
        );
    }
    let raw = raw.trim_start_matches(is_blank);
    let (value, tail) = if let Some(quoted) = raw.strip_prefix('\'') {
        let end = quoted
            .find('\'')
            .ok_or("single-quoted value without its closing quote")?;
        (quoted[..end].to_string(), &quoted[end + 1..])
    } else if let Some(quoted) = raw.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("double-quoted value without its closing quote"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    None => return Err("double-quoted value without its closing quote"),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, c)) => value.push(c),
                },
                Some((_, c)) => value.push(c),
            }
        };
        (value, &quoted[end + 1..])
    } else {
        let end = raw
            .char_indices()
            .find(|&(i, c)| c == '#' && i > 0 && raw[..i].ends_with(is_blank))
            .map_or(raw.len(), |(i, _)| i);
        return Ok(Some((
            key,
            raw[..end].trim_end_matches(is_blank).to_string(),
        )));
    };
    let tail = tail.trim_start_matches(is_blank);
    if !tail.is_empty() && !tail.starts_with('#') {
        return Err("text after the closing quote (only a `#` comment may follow)");
    }
    Ok(Some((key, value)))
}

/// What the judgement needs from the host, answered by the daemon.
pub trait Host {
    /// `path` with every link resolved, `None` when it does not exist.
    fn canonical(&self, path: &Path) -> Option<PathBuf>;
    /// The running `mailer` binary, links resolved.
    fn current_exe(&self) -> Option<PathBuf>;
}

/// One set of Mastodon's SMTP variables: `SMTP_*` or `BULK_SMTP_*`.
struct Set<'a> {
    env: &'a Env,
    prefix: &'static str,
}

impl<'a> Set<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.env.get(&format!("{}{name}", self.prefix))
    }

    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// The ids of one set of Mastodon's SMTP settings.
struct Ids {
    prefix: &'static str,
    server: &'static str,
    auth: &'static str,
    tls: &'static str,
    from: &'static str,
    delivery: &'static str,
}

const MAIN: Ids = Ids {
    prefix: "SMTP_",
    server: "mastodon.server",
    auth: "mastodon.auth",
    tls: "mastodon.tls",
    from: "mastodon.from",
    delivery: "mastodon.delivery",
};

const BULK: Ids = Ids {
    prefix: "BULK_SMTP_",
    server: "mastodon.bulk.server",
    auth: "mastodon.bulk.auth",
    tls: "mastodon.bulk.tls",
    from: "mastodon.bulk.from",
    delivery: "mastodon.bulk.delivery",
};

/// Mastodon's defaults (config/email.yml).
const DEFAULT_SERVER: &str = "localhost";
const DEFAULT_PORT: u16 = 25;
const DEFAULT_FROM: &str = "notifications@localhost";
const DEFAULT_SENDMAIL: &str = "/usr/sbin/sendmail";

/// Judges the Mastodon settings in `env` against `config`; `source` names the file in the
/// report. The `BULK_SMTP_*` set is judged too when any of its variables is present.
pub fn judge(env: &Env, config: &Config, host: &dyn Host, source: &str) -> Report {
    let mut checks = judge_set(env, config, host, &MAIN);
    if env.vars.keys().any(|k| k.starts_with(BULK.prefix)) {
        checks.extend(judge_set(env, config, host, &BULK));
    }
    Report::new(source, checks)
}

fn judge_set(env: &Env, config: &Config, host: &dyn Host, ids: &Ids) -> Vec<Check> {
    let set = Set {
        env,
        prefix: ids.prefix,
    };
    let mut checks = Vec::new();

    // The bulk set has no delivery method of its own: it is always SMTP.
    let method = if ids.prefix == MAIN.prefix {
        set.get("DELIVERY_METHOD").unwrap_or("smtp")
    } else {
        "smtp"
    };
    match method {
        "smtp" => {
            if ids.prefix == MAIN.prefix {
                checks.push(Check::new(
                    Area::Mastodon,
                    ids.delivery,
                    Status::Pass,
                    "SMTP_DELIVERY_METHOD=smtp: Mastodon connects to SMTP_SERVER",
                ));
            }
            let listener = server(config, ids, &set, &mut checks);
            checks.push(auth(ids, &set));
            checks.push(tls(ids, &set, listener));
        }
        "sendmail" => checks.push(sendmail(ids, &set, host)),
        _ => checks.push(
            Check::new(
                Area::Mastodon,
                ids.delivery,
                Status::Fail,
                "SMTP_DELIVERY_METHOD is neither smtp nor sendmail: Mastodon does not send mail",
            )
            .hint("set SMTP_DELIVERY_METHOD=smtp"),
        ),
    }
    if ids.prefix == MAIN.prefix || set.get("FROM_ADDRESS").is_some() {
        checks.push(from(config, ids, &set));
    }
    checks
}

/// The listener `SMTP_SERVER:SMTP_PORT` reaches, if any; pushes the `server` check.
fn server<'c>(
    config: &'c Config,
    ids: &Ids,
    set: &Set<'_>,
    checks: &mut Vec<Check>,
) -> Option<&'c Listen> {
    let area = Area::Mastodon;
    let id = ids.server;
    let (server_var, port_var) = (set.name("SERVER"), set.name("PORT"));
    let server = set.get("SERVER").unwrap_or(DEFAULT_SERVER);
    let port = match set.get("PORT").map(str::parse::<u16>) {
        None => DEFAULT_PORT,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            checks.push(
                Check::new(
                    area,
                    id,
                    Status::Fail,
                    format!("{port_var} is not a port number"),
                )
                .hint(format!("set {port_var}=25")),
            );
            return None;
        }
    };
    let listeners: Vec<String> = config
        .listen
        .iter()
        .map(|l| l.address.to_string())
        .collect();
    let listeners = if listeners.is_empty() {
        "none".to_string()
    } else {
        listeners.join(", ")
    };
    let host = server.trim_start_matches('[').trim_end_matches(']');
    let candidates: Vec<IpAddr> = if host.eq_ignore_ascii_case("localhost") {
        vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        vec![ip]
    } else {
        checks.push(
            Check::new(
                area,
                id,
                Status::Warn,
                format!(
                    "{server_var}={server} is a host name mailer check does not resolve; \
                     the listeners are {listeners}"
                ),
            )
            .hint(format!(
                "set {server_var}=127.0.0.1 (a loopback address of a [[listen]])"
            )),
        );
        return None;
    };
    let covering = |ip: IpAddr, port: u16| {
        config.listen.iter().find(|l| {
            l.address.port() == port
                && (l.address.ip() == ip
                    || (l.address.ip().is_unspecified() && l.address.is_ipv4() == ip.is_ipv4()))
        })
    };
    let covered: Vec<(IpAddr, &Listen)> = candidates
        .iter()
        .filter_map(|&ip| covering(ip, port).map(|l| (ip, l)))
        .collect();
    match covered.as_slice() {
        [] => {
            let other_port = candidates.iter().find_map(|&ip| {
                config
                    .listen
                    .iter()
                    .find(|l| covering(ip, l.address.port()).is_some())
                    .map(|l| l.address.port())
            });
            let hint = match other_port {
                Some(p) => format!("set {port_var}={p}"),
                None => format!(
                    "set {server_var}=127.0.0.1 and {port_var} to the port of a [[listen]], \
                     or add a [[listen]] on {server}:{port}"
                ),
            };
            checks.push(
                Check::new(
                    area,
                    id,
                    Status::Fail,
                    format!("{server}:{port} reaches no listener (listeners: {listeners})"),
                )
                .hint(hint),
            );
            None
        }
        [(ip, listener)] if candidates.len() == 2 => {
            let other = candidates
                .iter()
                .find(|c| *c != ip)
                .expect("localhost has two addresses");
            checks.push(
                Check::new(
                    area,
                    id,
                    Status::Warn,
                    format!(
                        "{server}:{port} reaches the listener on {} only: {server} also resolves \
                         to {other}, which may be tried first and is refused",
                        listener.address
                    ),
                )
                .hint(format!(
                    "set {server_var}={} (or add a [[listen]] on {})",
                    bracketed(*ip),
                    std::net::SocketAddr::new(*other, port)
                )),
            );
            Some(listener)
        }
        [(_, listener), ..] => {
            checks.push(Check::new(
                area,
                id,
                Status::Pass,
                format!(
                    "{server}:{port} reaches the listener on {}",
                    listener.address
                ),
            ));
            Some(listener)
        }
    }
}

fn bracketed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn auth(ids: &Ids, set: &Set<'_>) -> Check {
    let (method_var, login_var, password_var) = (
        set.name("AUTH_METHOD"),
        set.name("LOGIN"),
        set.name("PASSWORD"),
    );
    // net-smtp authenticates only when a user name is given (Net::SMTP#do_start).
    let method_none = set.get("AUTH_METHOD") == Some("none");
    let login = set.get("LOGIN").is_some();
    if method_none || !login {
        let how = if method_none {
            format!("{method_var}=none")
        } else {
            format!("no {login_var}")
        };
        return Check::new(
            Area::Mastodon,
            ids.auth,
            Status::Pass,
            format!("{how}: Mastodon does not try AUTH, which the listener does not offer"),
        );
    }
    Check::new(
        Area::Mastodon,
        ids.auth,
        Status::Fail,
        format!(
            "{login_var} is set, so Mastodon tries AUTH, which the listener does not offer: \
             every mail fails"
        ),
    )
    .hint(format!(
        "set {method_var}=none and remove {login_var} and {password_var}"
    ))
}

fn tls(ids: &Ids, set: &Set<'_>, listener: Option<&Listen>) -> Check {
    let area = Area::Mastodon;
    let id = ids.tls;
    let fail =
        |message: String, hint: String| Check::new(area, id, Status::Fail, message).hint(hint);
    for implicit in ["TLS", "SSL"] {
        if set
            .get(implicit)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            let n = set.name(implicit);
            return fail(
                format!(
                    "{n}=true asks for implicit TLS (SMTPS), which the listener does not offer"
                ),
                format!("remove {n} (or set {n}=false)"),
            );
        }
    }
    let starttls_var = set.name("ENABLE_STARTTLS");
    let starttls = match set.get("ENABLE_STARTTLS") {
        Some(v @ ("always" | "never" | "auto")) => v,
        Some(_) => {
            return fail(
                format!("{starttls_var} is not always, never or auto"),
                format!("set {starttls_var}=auto"),
            )
        }
        None => match set.get("ENABLE_STARTTLS_AUTO") {
            Some("false") => "never",
            _ => "auto",
        },
    };
    let verify_var = set.name("OPENSSL_VERIFY_MODE");
    let verify = match set.get("OPENSSL_VERIFY_MODE") {
        None | Some("peer") => true,
        Some("none") => false,
        Some(_) => {
            return fail(
                format!("{verify_var} is not none or peer"),
                format!("set {verify_var}=none"),
            )
        }
    };
    let Some(listener) = listener else {
        return Check::new(
            area,
            id,
            Status::Info,
            "not judged: the server settings reach no listener",
        );
    };
    let offered = listener.tls.is_some();
    match (offered, starttls) {
        (false, "always") => fail(
            format!(
                "{starttls_var}=always, but the listener on {} offers no STARTTLS",
                listener.address
            ),
            format!("set {starttls_var}=auto"),
        ),
        (false, _) => Check::new(
            area,
            id,
            Status::Pass,
            format!(
                "{starttls_var}={starttls} and the listener on {} offers no STARTTLS: \
                 plain SMTP on loopback",
                listener.address
            ),
        ),
        (true, "never") => Check::new(
            area,
            id,
            Status::Pass,
            format!("{starttls_var}=never: the STARTTLS the listener offers is not used"),
        ),
        (true, _) if !verify => Check::new(
            area,
            id,
            Status::Pass,
            format!(
                "{starttls_var}={starttls} with {verify_var}=none: the listener's certificate \
                 is not verified"
            ),
        ),
        (true, _) => Check::new(
            area,
            id,
            Status::Warn,
            format!(
                "{starttls_var}={starttls} and the listener on {} offers STARTTLS: Mastodon \
                 verifies its certificate for the server name, and a self-signed or \
                 differently named certificate makes every mail fail",
                listener.address
            ),
        )
        .hint(format!(
            "set {verify_var}=none (the connection stays on this host)"
        )),
    }
}

/// The address of `SMTP_FROM_ADDRESS`, also in its `"Name" <addr>` form.
pub fn from_address(value: &str) -> &str {
    let value = value.trim();
    match (value.rfind('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => value[open + 1..close].trim(),
        _ => value,
    }
}

fn from(config: &Config, ids: &Ids, set: &Set<'_>) -> Check {
    let area = Area::Mastodon;
    let id = ids.from;
    let from_var = set.name("FROM_ADDRESS");
    let value = set.get("FROM_ADDRESS").unwrap_or(DEFAULT_FROM);
    let address = from_address(value);
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
    // Each domain the relay puts on the mail, with the relay's alignment mode.
    let mut domains: Vec<(&'static str, String, AlignmentMode)> = Vec::new();
    for action in config.actions.values() {
        let Action::Relay(relay) = action else {
            continue;
        };
        match &relay.mail_from {
            Some(MailFromRewrite::Domain(d)) => {
                domains.push(("the rewrite domain", d.clone(), relay.alignment))
            }
            Some(MailFromRewrite::Address(a)) => domains.push((
                "the rewrite domain",
                a.domain().to_string(),
                relay.alignment,
            )),
            None => {}
        }
        for key in &relay.dkim {
            domains.push(("the DKIM key domain", key.domain.clone(), relay.alignment));
        }
    }
    let Some((_, suggested, _)) = domains.first() else {
        return Check::new(
            area,
            id,
            Status::Warn,
            format!(
                "{from_var}={address}: no relay action rewrites the sender or signs with DKIM, \
                 so alignment cannot be judged"
            ),
        )
        .hint("set mail_from (and a DKIM key) on the relay action");
    };
    let local = address.rsplit_once('@').map_or("notifications", |(l, _)| l);
    let local = if local.is_empty() {
        "notifications"
    } else {
        local
    };
    let matching: Vec<String> = domains
        .iter()
        .filter(|(_, d, mode)| aligned(domain, d, *mode))
        .map(|(what, d, mode)| format!("{what} {d} ({})", mode_name(*mode)))
        .collect();
    if matching.is_empty() {
        let default = if set.get("FROM_ADDRESS").is_none() {
            " (Mastodon's default)"
        } else {
            ""
        };
        Check::new(
            area,
            id,
            Status::Fail,
            format!(
                "{from_var}={address}{default} aligns with neither the rewrite domain nor a DKIM \
                 key domain of the relay: DMARC fails"
            ),
        )
        .hint(format!("set {from_var}={local}@{suggested}"))
    } else {
        Check::new(
            area,
            id,
            Status::Pass,
            format!("{address} aligns with {}", matching.join(" and ")),
        )
    }
}

fn mode_name(mode: AlignmentMode) -> &'static str {
    match mode {
        AlignmentMode::Strict => "strict",
        AlignmentMode::Relaxed => "relaxed",
    }
}

fn sendmail(ids: &Ids, set: &Set<'_>, host: &dyn Host) -> Check {
    let area = Area::Mastodon;
    let id = ids.delivery;
    let location = set.get("SENDMAIL_LOCATION").unwrap_or(DEFAULT_SENDMAIL);
    let Some(exe) = host.current_exe() else {
        return Check::new(
            area,
            id,
            Status::Warn,
            format!("SMTP_DELIVERY_METHOD=sendmail runs {location}; the mailer binary's own path is unknown"),
        )
        .hint(format!("ln -sf /usr/local/bin/mailer {location}"));
    };
    let fix = format!("ln -sf {} {location}", exe.display());
    match host.canonical(Path::new(location)) {
        None => Check::new(
            area,
            id,
            Status::Fail,
            format!("SMTP_DELIVERY_METHOD=sendmail runs {location}, which does not exist"),
        )
        .hint(fix),
        Some(target) if target == exe => Check::new(
            area,
            id,
            Status::Pass,
            format!("SMTP_DELIVERY_METHOD=sendmail runs {location}, which is this mailer"),
        ),
        Some(target) => Check::new(
            area,
            id,
            Status::Fail,
            format!(
                "SMTP_DELIVERY_METHOD=sendmail runs {location}, which is {}, not this mailer ({})",
                target.display(),
                exe.display()
            ),
        )
        .hint(fix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap().vars.into_iter().collect()
    }

    fn one(text: &str) -> String {
        let v = vars(text);
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].1.clone()
    }

    #[test]
    fn unquoted_values_end_at_a_comment_after_a_blank() {
        assert_eq!(one("A=b c # comment"), "b c");
        assert_eq!(one("A=b#c"), "b#c");
        assert_eq!(one("A=  spaced  "), "spaced");
        assert_eq!(one("A="), "");
        assert_eq!(one("A = b"), "b");
        assert_eq!(vars("export = b"), vec![("export".into(), "b".into())]);
    }

    #[test]
    fn single_quotes_are_literal() {
        assert_eq!(one(r"A='x\ny # z'"), r"x\ny # z");
        assert_eq!(one("A='v' # after"), "v");
    }

    #[test]
    fn double_quotes_unescape_as_dotenv_does() {
        assert_eq!(one(r#"A="a\nb\"c\\d\$e#f""#), "a\nb\"c\\d$e#f");
        assert_eq!(
            one(r#"SMTP_FROM_ADDRESS="\"Mastodon\" <notifications@ublog.tech>""#),
            "\"Mastodon\" <notifications@ublog.tech>"
        );
    }

    #[test]
    fn comments_blanks_export_and_crlf() {
        let v = vars("# head\r\n\r\n  export SMTP_PORT=25\r\nexport_X=1\r\n\t# x\r\nB='q'\r\n");
        assert_eq!(
            v,
            vec![
                ("B".to_string(), "q".to_string()),
                ("SMTP_PORT".to_string(), "25".to_string()),
                ("export_X".to_string(), "1".to_string()),
            ]
        );
    }

    #[test]
    fn the_last_definition_wins_and_empty_counts_as_unset() {
        let env = parse("A=1\nA=2\nB=\n").unwrap();
        assert_eq!(env.get("A"), Some("2"));
        assert_eq!(env.get("B"), None);
    }

    #[test]
    fn malformed_lines_are_reported_by_number_without_their_text() {
        let text = "OK=1\nhunter2\nSMTP_PASSWORD=\"secret\nX='open\n1A=b\nY=\"v\" trailing\n=v\n";
        let errors = parse(text).unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7]);
        for e in &errors {
            let shown = e.to_string();
            for secret in ["hunter2", "secret", "open", "trailing", "1A"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
    }

    #[test]
    fn from_address_takes_the_angle_form() {
        assert_eq!(
            from_address("\"Mastodon\" <notifications@ublog.tech>"),
            "notifications@ublog.tech"
        );
        assert_eq!(from_address(" a@b.c "), "a@b.c");
    }
}
