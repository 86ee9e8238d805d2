//! Postfix main.cf as a null client or smarthost satellite writes it: `name = value`
//! parameters, continuation lines (leading white space), `$name` / `${name}` expansion, and
//! the lookup tables of sender-dependent relaying read through [`Options::read`].

use std::collections::HashMap;
use std::path::Path;

use super::{list, q, Block, Entry, Options, Origin, Out};
use crate::config::{IpNet, RelayUrl};

/// Parameters translated (or consumed by others).
const KNOWN: &[&str] = &[
    "myhostname",
    "mydomain",
    "mydestination",
    "inet_interfaces",
    "relayhost",
    "smtp_sasl_password_maps",
    "smtp_sasl_auth_enable",
    "smtp_tls_security_level",
    "smtp_tls_wrappermode",
    "smtp_tls_CAfile",
    "sender_canonical_maps",
    "sender_dependent_relayhost_maps",
    "alias_maps",
    "home_mailbox",
    "mail_spool_directory",
    "message_size_limit",
    "maximal_queue_lifetime",
    "mynetworks",
    "smtp_sender_dependent_authentication",
];

/// Parameters with nothing to translate, and why.
const IGNORED: &[(&str, &str)] = &[
    (
        "smtpd_banner",
        "mailer's greeting names the host; it is not configurable",
    ),
    ("biff", "mailer sends no biff notifications"),
    (
        "append_dot_mydomain",
        "mailer never rewrites recipient domains",
    ),
    ("readme_directory", "documentation location"),
    ("compatibility_level", "Postfix release defaults"),
    (
        "alias_database",
        "mailer reads the aliases text file itself (no newaliases database)",
    ),
    (
        "myorigin",
        "mailer's sendmail completes bare local senders with hostname",
    ),
    ("inet_protocols", "mailer listens on the addresses given"),
    ("mailbox_size_limit", "mailer sets no mailbox quota"),
    (
        "smtp_sasl_security_options",
        "mailer sends PLAIN or LOGIN only over verified TLS",
    ),
    (
        "smtp_sasl_tls_security_options",
        "mailer sends PLAIN or LOGIN only over verified TLS",
    ),
    ("smtp_tls_session_cache_database", "a cache"),
    ("smtpd_tls_session_cache_database", "a cache"),
    (
        "smtp_tls_CApath",
        "mailer trusts the system's roots plus ca_file",
    ),
    ("smtp_use_tls", "superseded by smtp_tls_security_level"),
    (
        "smtpd_use_tls",
        "listener TLS: STARTTLS is offered when [[listen]] has tls_cert and tls_key",
    ),
    (
        "smtpd_tls_cert_file",
        "listener TLS: give tls_cert in [[listen]] to offer STARTTLS",
    ),
    (
        "smtpd_tls_key_file",
        "listener TLS: give tls_key in [[listen]] to offer STARTTLS",
    ),
    (
        "smtpd_tls_security_level",
        "listener TLS: STARTTLS is offered when [[listen]] has a certificate",
    ),
    (
        "smtpd_relay_restrictions",
        "mailer relays only for clients on this host, whatever this says",
    ),
    (
        "smtpd_recipient_restrictions",
        "mailer relays only for clients on this host, whatever this says",
    ),
    ("disable_vrfy_command", "mailer has no VRFY"),
    ("smtputf8_enable", "mailer supports SMTPUTF8"),
    (
        "maillog_file",
        "mailer logs to standard error (the journal)",
    ),
];

/// One parameter as written.
struct Param {
    origin: Origin,
    value: String,
}

pub(super) fn is_known(key: &str) -> bool {
    KNOWN.contains(&key) || IGNORED.iter().any(|(k, _)| *k == key)
}

fn params(text: &str) -> (Vec<(String, Param)>, Vec<Origin>) {
    let mut out: Vec<(String, Param)> = Vec::new();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if raw.starts_with(char::is_whitespace) {
            if let Some((_, p)) = out.last_mut() {
                p.value.push(' ');
                p.value.push_str(trimmed);
                p.origin.text.push(' ');
                p.origin.text.push_str(trimmed);
                continue;
            }
        }
        let origin = Origin {
            line: i + 1,
            text: trimmed.to_string(),
        };
        match trimmed.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !k.trim().contains(char::is_whitespace) => {
                out.push((
                    k.trim().to_string(),
                    Param {
                        origin,
                        value: v.trim().to_string(),
                    },
                ));
            }
            _ => bad.push(origin),
        }
    }
    (out, bad)
}

struct Cx<'a> {
    values: HashMap<String, String>,
    out: Out,
    options: &'a Options<'a>,
}

impl Cx<'_> {
    /// `$name`, `${name}` and `$(name)` replaced, to a bounded depth.
    fn expand(&self, s: &str) -> String {
        let mut s = s.to_string();
        for _ in 0..8 {
            if !s.contains('$') {
                break;
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(at) = rest.find('$') {
                out.push_str(&rest[..at]);
                let after = &rest[at + 1..];
                let (name, len) = match after.chars().next() {
                    Some('{') | Some('(') => {
                        let close = if after.starts_with('{') { '}' } else { ')' };
                        match after.find(close) {
                            Some(end) => (&after[1..end], end + 1),
                            None => ("", 0),
                        }
                    }
                    _ => {
                        let end = after
                            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                            .unwrap_or(after.len());
                        (&after[..end], end)
                    }
                };
                if name.is_empty() {
                    out.push('$');
                    rest = after;
                    continue;
                }
                out.push_str(self.values.get(name).map(String::as_str).unwrap_or(""));
                rest = &after[len..];
            }
            out.push_str(rest);
            s = out;
        }
        s
    }

    fn get(&self, key: &str) -> Option<String> {
        self.values.get(key).map(|v| self.expand(v))
    }
}

/// Items of a list parameter: separated by commas and white space.
fn items(v: &str) -> Vec<String> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

pub(super) fn translate(text: &str, options: &Options<'_>) -> Out {
    let (params, bad) = params(text);
    let mut cx = Cx {
        values: HashMap::new(),
        out: Out::default(),
        options,
    };
    for o in &bad {
        cx.out
            .unsupported(o, "not a `name = value` line", "fix or remove the line");
    }
    let origins: HashMap<String, Origin> = params
        .iter()
        .map(|(k, p)| (k.clone(), p.origin.clone()))
        .collect();
    for (k, p) in &params {
        cx.values.insert(k.clone(), p.value.clone());
    }
    // Postfix's defaults that expansions refer to.
    let hostname = cx
        .values
        .get("myhostname")
        .map(|h| cx.expand(h))
        .or_else(|| options.hostname.clone());
    if let Some(h) = &hostname {
        cx.values
            .entry("myhostname".into())
            .or_insert_with(|| h.clone());
        let domain = h
            .split_once('.')
            .map_or("localdomain", |(_, d)| d)
            .to_string();
        cx.values.entry("mydomain".into()).or_insert(domain);
    }
    cx.values
        .entry("mydestination".into())
        .or_insert_with(|| "$myhostname, localhost.$mydomain, localhost".into());
    let at = |k: &str| origins.get(k).cloned();

    // Top level: host name and local domains.
    let mut top = Block::default();
    if let Some(o) = at("myhostname") {
        top.origins.push(o);
    }
    if let Some(h) = &hostname {
        top.entries.push(Entry::new("hostname", q(h)));
    } else {
        top.remarks
            .push("hostname: the system host name, as Postfix's default myhostname".into());
    }
    let mut local_domains: Vec<String> = Vec::new();
    let dest_origin = at("mydestination");
    let dest = cx.get("mydestination").unwrap_or_default();
    for d in items(&dest) {
        if d.contains(':') {
            if let Some(o) = &dest_origin {
                cx.out.unsupported(
                    o,
                    format!("`{d}`: a lookup table of destinations"),
                    "list the domains in local_domains",
                );
            }
            continue;
        }
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        if hostname.is_none() && (d.is_empty() || d.contains("$")) {
            continue;
        }
        if !d.is_empty()
            && !local_domains.contains(&d)
            && crate::config::AddressPattern::parse(&format!("@{d}")).is_ok()
        {
            local_domains.push(d);
        }
    }
    if let Some(o) = dest_origin.clone() {
        top.origins.push(o);
    }
    let has_local = !local_domains.is_empty();
    top.entries.push(
        Entry::new("local_domains", list(&local_domains))
            .note("mydestination: what `for = \"local\"` matches"),
    );
    cx.out.top.push(top);

    // Listeners.
    let iface_origin = at("inet_interfaces");
    let ifaces = cx.get("inet_interfaces").unwrap_or_else(|| "all".into());
    let mut open_to_all = false;
    let mut addresses: Vec<String> = Vec::new();
    for i in items(&ifaces) {
        match i.as_str() {
            "loopback-only" | "localhost" => {
                addresses.extend(["127.0.0.1:25".to_string(), "[::1]:25".to_string()])
            }
            "all" => {
                open_to_all = true;
                addresses.extend(["0.0.0.0:25".to_string(), "[::]:25".to_string()]);
            }
            ip => match ip
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
            {
                Ok(std::net::IpAddr::V4(v4)) => {
                    open_to_all |= !v4.is_loopback();
                    addresses.push(format!("{v4}:25"));
                }
                Ok(std::net::IpAddr::V6(v6)) => {
                    open_to_all |= !v6.is_loopback();
                    addresses.push(format!("[{v6}]:25"));
                }
                Err(_) => {
                    let o = iface_origin.clone().unwrap_or(Origin {
                        line: 0,
                        text: "inet_interfaces".into(),
                    });
                    cx.out.unsupported(
                        &o,
                        format!("`{ip}` is not an address"),
                        "write [[listen]] address = \"ADDRESS:25\"",
                    );
                }
            },
        }
    }
    addresses.dedup();
    for (n, a) in addresses.iter().enumerate() {
        let mut b = Block {
            entries: vec![Entry::new("address", q(a))],
            ..Block::default()
        };
        if n == 0 {
            match &iface_origin {
                Some(o) => b.origins.push(o.clone()),
                None => b
                    .remarks
                    .push("inet_interfaces not set: Postfix's default is all".into()),
            }
        }
        cx.out.listen.push(b);
    }

    // Local delivery.
    if has_local {
        let mut b = Block::default();
        let home = cx.get("home_mailbox").filter(|h| !h.is_empty());
        if let Some(h) = home {
            b.origins.extend(at("home_mailbox"));
            if h.ends_with('/') {
                b.entries.push(Entry::new("maildir", q(&format!("~/{h}"))));
            } else {
                b.entries.push(Entry::new("mbox", q(&format!("~/{h}"))));
            }
        } else {
            let spool = cx
                .get("mail_spool_directory")
                .unwrap_or_else(|| "/var/mail".into());
            b.origins.extend(at("mail_spool_directory"));
            if at("mail_spool_directory").is_none() {
                b.remarks
                    .push("Postfix's default mailbox: /var/mail/USER".into());
            }
            let spool = spool.trim_end_matches('/');
            b.entries
                .push(Entry::new("mbox", q(&format!("{spool}/%u"))));
        }
        if let Some(aliases) = cx.get("alias_maps") {
            let o = at("alias_maps").expect("alias_maps was read from the file");
            b.origins.push(o.clone());
            let mut used = false;
            for map in items(&aliases) {
                match map.split_once(':') {
                    Some(("hash" | "lmdb" | "btree" | "texthash" | "cdb" | "dbm", path))
                        if !used =>
                    {
                        used = true;
                        cx.out.tables.push(Block {
                            origins: vec![o.clone()],
                            remarks: Vec::new(),
                            entries: vec![Entry::new("aliases", q(path))],
                        });
                        b.entries.push(
                            Entry::new("alias", q("aliases"))
                                .note("mailer reads the text file; no newaliases database"),
                        );
                    }
                    _ => cx.out.unsupported(
                        &o,
                        format!("alias map `{map}`: mailer reads one aliases(5) text file"),
                        "merge its entries into the first aliases file",
                    ),
                }
            }
        }
        cx.out.actions.push(("local_mail".into(), b));
    }

    // Relaying.
    let sasl_origin = at("smtp_sasl_password_maps");
    let sasl = cx
        .get("smtp_sasl_auth_enable")
        .is_some_and(|v| v.eq_ignore_ascii_case("yes"))
        && cx
            .get("smtp_sasl_password_maps")
            .is_some_and(|v| !v.is_empty());
    let wrapper = cx
        .get("smtp_tls_wrappermode")
        .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    let level = cx.get("smtp_tls_security_level").unwrap_or_default();
    let ca_file = cx.get("smtp_tls_CAfile").filter(|c| !c.is_empty());
    let mail_from = sender_rewrite(&mut cx, at("sender_canonical_maps"));
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut relay_block =
        |cx: &mut Cx<'_>, hosts: &str, origin: &Origin, label_hint: &str| -> Option<Block> {
            let mut b = Block {
                origins: vec![origin.clone()],
                ..Block::default()
            };
            let mut urls = Vec::new();
            for (n, h) in items(hosts).iter().enumerate() {
                let label = if sasl {
                    Some(if n == 0 {
                        label_hint.to_string()
                    } else {
                        format!("{label_hint}{}", n + 1)
                    })
                } else {
                    None
                };
                match relay_url(h, wrapper, &level, label.as_deref()) {
                    Ok((u, remarks)) => {
                        b.remarks.extend(remarks);
                        if let Some(l) = label {
                            labels.push((l, h.clone()));
                        }
                        urls.push(u);
                    }
                    Err(why) => {
                        cx.out.unsupported(
                            origin,
                            why,
                            "write relay = \"smtp+tls://[label@]host[:port]\"",
                        );
                        return None;
                    }
                }
            }
            if urls.is_empty() {
                return None;
            }
            b.entries.push(Entry::new(
                "relay",
                if urls.len() == 1 {
                    q(&urls[0])
                } else {
                    list(&urls)
                },
            ));
            if sasl {
                b.entries.push(Entry::new("auth", q("secrets")));
            }
            if let Some((m, o)) = &mail_from {
                b.origins.push(o.clone());
                b.entries.push(Entry::new("mail_from", q(m)));
            }
            if let Some(ca) = &ca_file {
                b.entries.push(Entry::new("ca_file", q(ca)));
            }
            for k in [
                "smtp_tls_security_level",
                "smtp_tls_wrappermode",
                "smtp_sasl_password_maps",
            ] {
                if let Some(o) = origins.get(k) {
                    if !b.origins.iter().any(|x| x.line == o.line) {
                        b.origins.push(o.clone());
                    }
                }
            }
            Some(b)
        };
    let relayhost = cx.get("relayhost").filter(|r| !r.is_empty());
    let mut relay_rules: Vec<Block> = Vec::new();
    if let Some(o) = at("sender_dependent_relayhost_maps") {
        let map = cx
            .get("sender_dependent_relayhost_maps")
            .unwrap_or_default();
        match read_map(&map, options) {
            Ok(entries) => {
                for (sender, host) in entries {
                    let pattern = if sender.starts_with('@') || sender.contains('@') {
                        sender.clone()
                    } else {
                        format!("@{sender}")
                    };
                    if crate::config::AddressPattern::parse(&pattern).is_err() {
                        cx.out.unsupported(
                            &o,
                            format!("map entry `{sender}` is not an address or @domain"),
                            "add a rule with mail_from for it",
                        );
                        continue;
                    }
                    let action = format!("relay_{}", super::name(pattern.trim_start_matches('@')));
                    let hint = super::name(pattern.trim_start_matches('@')).replace('_', "-");
                    let Some(mut b) = relay_block(&mut cx, &host, &o, &hint) else {
                        continue;
                    };
                    b.remarks.insert(0, format!("{map}: {sender} {host}"));
                    if !cx.out.add_action(&o, action.clone(), b) {
                        continue;
                    }
                    relay_rules.push(Block {
                        origins: vec![o.clone()],
                        remarks: vec![format!("{sender} {host}")],
                        entries: vec![
                            Entry::new("from", q("local")),
                            Entry::new("for", q("any")),
                            Entry::new("mail_from", q(&pattern)),
                            Entry::new("action", q(&action)),
                        ],
                    });
                }
            }
            Err(why) => cx.out.unsupported(
                &o,
                why,
                "add a relay action and a [[match]] rule with mail_from for each sender",
            ),
        }
    }
    if let Some(hosts) = &relayhost {
        let o = at("relayhost").expect("relayhost was read from the file");
        if let Some(b) = relay_block(&mut cx, hosts, &o, "relay") {
            cx.out.actions.push(("outbound".into(), b));
        }
    }
    if sasl {
        let o = sasl_origin
            .clone()
            .expect("smtp_sasl_password_maps was read from the file");
        let map = cx.get("smtp_sasl_password_maps").unwrap_or_default();
        cx.out.tables.push(Block {
            origins: vec![o.clone()],
            remarks: vec![
                "mailer's secrets file: `LABEL USER:PASSWORD` per line, mode 0600".into(),
            ],
            entries: vec![Entry::new("secrets", q("/etc/mailer/secrets"))],
        });
        let shown: Vec<String> = labels
            .iter()
            .map(|(l, h)| format!("`{l}` for {h}"))
            .collect();
        cx.out.unsupported(&o, format!("the passwords of {map} stay where they are: mailer reads its own secrets file, keyed by a label in the relay URL"), format!("create /etc/mailer/secrets (mode 0600, owner mailer) with one `LABEL USER:PASSWORD` line per relay: {}", shown.join(", ")));
    }

    // Rules: local first, then each sender's relay, then the default relay.
    if has_local {
        let mut b = Block::default();
        b.remarks.push("mydestination: delivered here".into());
        b.origins.extend(dest_origin.clone());
        b.entries.push(Entry::new(
            "from",
            q(if open_to_all { "any" } else { "local" }),
        ));
        b.entries.push(Entry::new("for", q("local")));
        b.entries.push(Entry::new("action", q("local_mail")));
        cx.out.matches.push(b);
    }
    cx.out.matches.extend(relay_rules);
    if cx.out.has_action("outbound") {
        let o = at("relayhost").expect("relayhost was read from the file");
        cx.out.matches.push(Block {
            origins: vec![o],
            remarks: vec!["everything else from this host goes to the relay host".into()],
            entries: vec![
                Entry::new("from", q("local")),
                Entry::new("for", q("any")),
                Entry::new("action", q("outbound")),
            ],
        });
    }

    // Limits.
    if let (Some(o), Some(v)) = (at("message_size_limit"), cx.get("message_size_limit")) {
        match v.parse::<u64>() {
            Ok(0) => cx.out.unsupported(
                &o,
                "0 means no limit; mailer always has one",
                "set [limits] max_message_size to the largest size you accept",
            ),
            Ok(n) => cx.out.limits.push(Block {
                origins: vec![o],
                remarks: Vec::new(),
                entries: vec![Entry::new("max_message_size", n.to_string())],
            }),
            Err(_) => {
                cx.out
                    .unsupported(&o, "not a number of bytes", "set [limits] max_message_size")
            }
        }
    }
    if let (Some(o), Some(v)) = (
        at("maximal_queue_lifetime"),
        cx.get("maximal_queue_lifetime"),
    ) {
        match postfix_duration(&v) {
            Some(d) => cx.out.queue.push(Block {
                origins: vec![o],
                remarks: Vec::new(),
                entries: vec![Entry::new("lifetime", q(&d))],
            }),
            None => cx.out.unsupported(
                &o,
                format!("`{v}` is not a duration"),
                "set [queue] lifetime = \"5d\"",
            ),
        }
    }
    if let (Some(o), Some(v)) = (at("mynetworks"), cx.get("mynetworks")) {
        let all_loopback = items(&v).iter().all(|n| {
            IpNet::parse(
                n.trim_matches(|c| c == '[' || c == ']')
                    .replace("]/", "/")
                    .as_str(),
            )
            .is_ok_and(|n| n.is_loopback())
        });
        if all_loopback {
            cx.out
                .ignored(&o, "loopback only: mailer relays for this host alone");
        } else {
            cx.out.unsupported(&o, "it lets other hosts relay; mailer relays only for clients on this host", "have those hosts send through their own relay, or through a submission server with AUTH");
        }
    }

    // Everything else.
    for (k, p) in &params {
        if KNOWN.contains(&k.as_str()) {
            continue;
        }
        if let Some((_, why)) = IGNORED.iter().find(|(i, _)| i == k) {
            cx.out.ignored(&p.origin, *why);
        } else if k == "recipient_delimiter" && p.value.is_empty() {
            cx.out.ignored(&p.origin, "empty: no sub-addressing");
        } else if k == "mailbox_command" && p.value.is_empty() {
            cx.out
                .ignored(&p.origin, "empty: mailer writes mailboxes itself");
        } else {
            cx.out.unsupported(
                &p.origin,
                format!("`{k}` has no equivalent in mailer"),
                "remove it, or keep this function outside mailer",
            );
        }
    }
    for k in [
        "mydomain",
        "smtp_sasl_auth_enable",
        "smtp_tls_CAfile",
        "smtp_sender_dependent_authentication",
    ] {
        if let Some(o) = origins.get(k) {
            if !cx
                .out
                .actions
                .iter()
                .any(|(_, b)| b.origins.iter().any(|x| x.line == o.line))
            {
                cx.out.ignored(o, "used by the lines that refer to it");
            }
        }
    }
    // Every line is accounted for: what no block quotes had no effect here.
    let quoted: std::collections::HashSet<usize> = cx
        .out
        .blocks()
        .flat_map(|b| b.origins.iter().map(|o| o.line))
        .chain(cx.out.ignored.iter().map(|(o, _)| o.line))
        .chain(cx.out.unsupported.iter().map(|u| u.line))
        .collect();
    for (k, p) in &params {
        if !quoted.contains(&p.origin.line) {
            let why = match k.as_str() {
                "home_mailbox" | "mail_spool_directory" | "alias_maps" => {
                    "no local delivery here: mydestination is empty"
                }
                "smtp_sasl_password_maps" => "smtp_sasl_auth_enable is not yes: no AUTH",
                _ => "no effect in this setup",
            };
            cx.out.ignored(&p.origin, why);
        }
    }
    cx.out
}

/// `sender_canonical_maps` when it rewrites every sender into one domain or address.
fn sender_rewrite(cx: &mut Cx<'_>, origin: Option<Origin>) -> Option<(String, Origin)> {
    let o = origin?;
    let map = cx.get("sender_canonical_maps").unwrap_or_default();
    let todo = "set mail_from = \"@domain\" on the relay action if every sender is rewritten into one domain";
    let result = if let Some(addr) = map.strip_prefix("static:") {
        Ok(addr.trim().to_string())
    } else {
        match read_map(&map, cx.options) {
            Ok(entries)
                if entries.len() == 1
                    && entries[0].1.starts_with('@')
                    && (map.starts_with("regexp:")
                        || map.starts_with("pcre:")
                        || entries[0].0.starts_with('@')) =>
            {
                Ok(entries[0].1.clone())
            }
            Ok(entries) if entries.len() == 1 && entries[0].1.contains("${1}@") => Ok(format!(
                "@{}",
                entries[0].1.rsplit('@').next().unwrap_or("")
            )),
            Ok(_) => Err(
                "it maps senders one by one; mailer applies a single rewrite to every sender"
                    .to_string(),
            ),
            Err(why) => Err(why),
        }
    };
    match result {
        Ok(m) if crate::config::AddressPattern::parse(&m).is_ok() => Some((m, o)),
        Ok(m) => {
            cx.out
                .unsupported(&o, format!("`{m}` is not an address or @domain"), todo);
            None
        }
        Err(why) => {
            cx.out.unsupported(&o, why, todo);
            None
        }
    }
}

/// The `key value` entries of a lookup table: `inline:{ k = v, … }` from the text, `hash:`,
/// `texthash:`, `lmdb:`, `regexp:` and `pcre:` from the source file (the one postmap reads).
fn read_map(map: &str, options: &Options<'_>) -> Result<Vec<(String, String)>, String> {
    let map = map.trim();
    if let Some(inline) = map.strip_prefix("inline:") {
        let body = inline.trim().trim_start_matches('{').trim_end_matches('}');
        return Ok(body
            .split(',')
            .filter_map(|kv| {
                let kv = kv.trim().trim_start_matches('{').trim_end_matches('}');
                let (k, v) = kv.split_once('=')?;
                Some((k.trim().to_string(), v.trim().to_string()))
            })
            .collect());
    }
    let Some((kind, path)) = map.split_once(':') else {
        return Err(format!("`{map}` is not a lookup table"));
    };
    let regexp = matches!(kind, "regexp" | "pcre");
    if !regexp && !matches!(kind, "hash" | "texthash" | "lmdb" | "btree" | "cdb") {
        return Err(format!("`{kind}:` tables are not read by the import"));
    }
    let text = (options.read)(Path::new(path)).ok_or_else(|| format!("cannot read {path}"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if regexp {
            // `/pattern/ replacement`; anything else is not an entry (and may start with a
            // character of several octets, so no slicing before the check).
            let Some(end) = line.strip_prefix('/').and_then(|rest| rest.find('/')) else {
                continue;
            };
            out.push((
                line[..end + 2].to_string(),
                line[end + 2..].trim().to_string(),
            ));
        } else if let Some((k, v)) = line.split_once(char::is_whitespace) {
            out.push((k.to_string(), v.trim().to_string()));
        }
    }
    Ok(out)
}

/// A Postfix time (`5d`, `3600s`, `1w`, a bare number of days) as mailer writes it.
fn postfix_duration(v: &str) -> Option<String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "" | "d" => format!("{n}d"),
        "w" => format!("{}d", n.checked_mul(7)?),
        "s" | "m" | "h" => format!("{n}{unit}"),
        _ => return None,
    })
}

/// A relayhost entry as a mailer relay URL, with remarks on what changed.
fn relay_url(
    host: &str,
    wrapper: bool,
    level: &str,
    label: Option<&str>,
) -> Result<(String, Vec<String>), String> {
    let mut remarks = Vec::new();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{host}`: unclosed ["))?;
        (
            name.to_string(),
            after.strip_prefix(':').map(str::to_string),
        )
    } else {
        remarks.push(format!(
            "{host}: Postfix looks up its MX; mailer connects to the host's own addresses"
        ));
        match host.rsplit_once(':') {
            Some((n, p)) => (n.to_string(), Some(p.to_string())),
            None => (host.to_string(), None),
        }
    };
    let port: Option<u16> = match port {
        Some(p) => Some(
            p.parse()
                .map_err(|_| format!("`{host}`: port `{p}` is not a number"))?,
        ),
        None => None,
    };
    let scheme = if wrapper || port == Some(465) {
        "smtps"
    } else {
        match level {
            "encrypt" | "verify" | "secure" | "dane" | "dane-only" => "smtp+tls",
            "none" if label.is_none() => "smtp",
            other => {
                remarks.push(format!("smtp_tls_security_level = {}: mailer requires STARTTLS and verifies the relay's certificate", if other.is_empty() { "(default)" } else { other }));
                "smtp+tls"
            }
        }
    };
    let host_part = if name.contains(':') {
        format!("[{name}]")
    } else {
        name.clone()
    };
    let text = match (label, port) {
        (Some(l), Some(p)) => format!("{scheme}://{l}@{host_part}:{p}"),
        (Some(l), None) => format!("{scheme}://{l}@{host_part}"),
        (None, Some(p)) => format!("{scheme}://{host_part}:{p}"),
        (None, None) => format!("{scheme}://{host_part}"),
    };
    let url: RelayUrl = text
        .parse()
        .map_err(|e: crate::config::RelayUrlError| e.to_string())?;
    if scheme == "smtp" {
        return Err(format!("`{host}` without TLS (smtp_tls_security_level = none): write relay = \"{url}\" with insecure = true if the relay really has no TLS"));
    }
    Ok((url.to_string(), remarks))
}
