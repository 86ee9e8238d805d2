//! smtpd.conf(5) as a relay or local-delivery host writes it: macros, line continuations,
//! `table`, `pki`, `listen on`, `action`, `match` and the global limits.

use std::collections::HashMap;

use super::{list, name, q, Block, Entry, Options, Origin, Out};
use crate::config::{IpNet, RelayUrl};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(String),
    /// `<name>`
    Table(String),
    LBrace,
    RBrace,
    Comma,
    Eq,
    Bang,
}

impl Tok {
    /// The text of a word or string.
    fn text(&self) -> Option<&str> {
        match self {
            Tok::Word(s) | Tok::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One statement: its tokens, first line and text.
struct Statement {
    origin: Origin,
    toks: Vec<Tok>,
}

/// Lines joined at trailing backslashes, comments removed, tokenized.
fn statements(text: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut pending = String::new();
    let mut first = 0;
    for (i, raw) in text.lines().enumerate() {
        if pending.is_empty() {
            first = i + 1;
        }
        let (line, continued) = match raw.trim_end().strip_suffix('\\') {
            Some(l) => (l, true),
            None => (raw, false),
        };
        pending.push_str(line);
        pending.push(' ');
        if continued {
            continue;
        }
        let stmt = std::mem::take(&mut pending);
        let toks = tokenize(&stmt);
        if !toks.is_empty() {
            out.push(Statement {
                origin: Origin {
                    line: first,
                    text: strip_comment(&stmt)
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                },
                toks,
            });
        }
    }
    if !pending.trim().is_empty() {
        let toks = tokenize(&pending);
        if !toks.is_empty() {
            out.push(Statement {
                origin: Origin {
                    line: first,
                    text: pending.trim().to_string(),
                },
                toks,
            });
        }
    }
    out
}

fn strip_comment(s: &str) -> &str {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &s[..i],
            _ => {}
        }
    }
    s
}

fn tokenize(s: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '#' => break,
            c if c.is_whitespace() => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut v = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    v.push(c);
                }
                toks.push(Tok::Str(v));
            }
            '<' => {
                chars.next();
                let mut v = String::new();
                for c in chars.by_ref() {
                    if c == '>' {
                        break;
                    }
                    v.push(c);
                }
                toks.push(Tok::Table(v.trim().to_string()));
            }
            '{' | '}' | ',' | '=' | '!' => {
                chars.next();
                toks.push(match c {
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    ',' => Tok::Comma,
                    '=' => Tok::Eq,
                    _ => Tok::Bang,
                });
            }
            _ => {
                let mut v = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "\"<{},=!#".contains(c) {
                        break;
                    }
                    v.push(c);
                    chars.next();
                }
                toks.push(Tok::Word(v));
            }
        }
    }
    toks
}

/// A `table` definition.
#[derive(Clone, Debug)]
enum TableDef {
    File(String),
    Inline(Vec<String>),
    /// A backend mailer does not read (db:, ldap:, …), as written.
    Other(String),
}

struct Cx<'a> {
    out: Out,
    macros: HashMap<String, String>,
    tables: HashMap<String, (TableDef, Origin)>,
    /// pki name → (cert, key)
    pki: HashMap<String, (Option<String>, Option<String>)>,
    /// smtpd table name → the name it has in `[tables]`.
    table_names: HashMap<String, String>,
    /// Actions translated, and whether each relays.
    actions: HashMap<String, bool>,
    hostname: Option<String>,
    options: &'a Options<'a>,
}

pub(super) fn translate(text: &str, options: &Options<'_>) -> Out {
    let mut cx = Cx {
        out: Out::default(),
        macros: HashMap::new(),
        tables: HashMap::new(),
        pki: HashMap::new(),
        table_names: HashMap::new(),
        actions: HashMap::new(),
        hostname: options.hostname.clone(),
        options,
    };
    let stmts = statements(text);
    // Definitions first, as smtpd reads them before use anyway.
    for s in &stmts {
        let toks = cx.expand(&s.toks);
        match toks.first().and_then(Tok::text) {
            Some("table") => cx.table(&s.origin, &toks),
            Some("pki") => cx.pki(&toks),
            _ => {}
        }
    }
    for s in &stmts {
        if let [Tok::Word(n), Tok::Eq, rest @ ..] = s.toks.as_slice() {
            let value = rest
                .iter()
                .filter_map(Tok::text)
                .collect::<Vec<_>>()
                .join(" ");
            cx.macros.insert(n.clone(), value);
            cx.out
                .ignored(&s.origin, "a macro, expanded where it is used");
            continue;
        }
        let toks = cx.expand(&s.toks);
        let origin = &s.origin;
        match toks.first().and_then(Tok::text) {
            Some("table") => {}
            Some("pki") => cx
                .out
                .ignored(origin, "certificate paths, used where the pki is named"),
            Some("listen") => cx.listen(origin, &toks),
            Some("action") => cx.action(origin, &toks),
            Some("match") => cx.rule(origin, &toks),
            Some("smtp") => cx.smtp(origin, &toks),
            Some("queue") => cx.queue(origin, &toks),
            Some("bounce") => cx.bounce(origin, &toks),
            Some("include") => cx.out.unsupported(
                origin,
                "included files are not read",
                "translate the included file separately and merge the output",
            ),
            Some(other) => {
                let other = other.to_string();
                cx.out.unsupported(
                    origin,
                    format!("`{other}` has no equivalent in mailer"),
                    "remove it, or keep this function outside mailer",
                );
            }
            None => cx
                .out
                .unsupported(origin, "not a statement", "fix or remove the line"),
        }
    }
    cx.finish();
    cx.out
}

impl Cx<'_> {
    /// Macros (`$name`) replaced outside quotes.
    fn expand(&self, toks: &[Tok]) -> Vec<Tok> {
        toks.iter()
            .map(|t| match t {
                Tok::Word(w) if w.starts_with('$') => match self.macros.get(&w[1..]) {
                    Some(v) => Tok::Str(v.clone()),
                    None => t.clone(),
                },
                _ => t.clone(),
            })
            .collect()
    }

    fn table(&mut self, origin: &Origin, toks: &[Tok]) {
        let Some(tname) = toks.get(1).and_then(Tok::text) else {
            self.out
                .unsupported(origin, "a table needs a name", "fix the line");
            return;
        };
        let def = match toks.get(2) {
            Some(Tok::LBrace) => {
                let mut items = Vec::new();
                for t in &toks[3..] {
                    match t {
                        Tok::RBrace => break,
                        Tok::Comma => {}
                        Tok::Eq => {
                            // `key = value` pairs: a mapping, not a list.
                            self.tables.insert(
                                tname.to_string(),
                                (
                                    TableDef::Other("a key = value mapping".into()),
                                    origin.clone(),
                                ),
                            );
                            return;
                        }
                        t => items.extend(t.text().map(str::to_string)),
                    }
                }
                TableDef::Inline(items)
            }
            Some(t) => match t.text() {
                Some(v) if v.starts_with("file:") => TableDef::File(v["file:".len()..].to_string()),
                Some(v) if v.starts_with('/') => TableDef::File(v.to_string()),
                Some(v) => TableDef::Other(v.to_string()),
                None => TableDef::Other(String::new()),
            },
            None => TableDef::Other(String::new()),
        };
        self.tables.insert(tname.to_string(), (def, origin.clone()));
    }

    fn pki(&mut self, toks: &[Tok]) {
        let (Some(n), Some(kind), Some(path)) = (
            toks.get(1).and_then(Tok::text),
            toks.get(2).and_then(Tok::text),
            toks.get(3).and_then(Tok::text),
        ) else {
            return;
        };
        let entry = self.pki.entry(n.to_string()).or_default();
        match kind {
            "cert" => entry.0 = Some(path.to_string()),
            "key" => entry.1 = Some(path.to_string()),
            _ => {}
        }
    }

    /// The mailer name of a file table, declared in `[tables]` on first use; `Err` says why a
    /// table cannot be used.
    fn file_table(&mut self, tname: &str) -> Result<String, String> {
        match self.tables.get(tname).cloned() {
            Some((TableDef::File(path), origin)) => {
                if let Some(n) = self.table_names.get(tname) {
                    return Ok(n.clone());
                }
                // Two smtpd names may make the same mailer name: each table keeps its own.
                let base = name(tname);
                let mut n = base.clone();
                let mut k = 1;
                while self.table_names.values().any(|v| *v == n) {
                    k += 1;
                    n = format!("{base}_{k}");
                }
                self.table_names.insert(tname.to_string(), n.clone());
                self.out.tables.push(Block {
                    origins: vec![origin],
                    remarks: Vec::new(),
                    entries: vec![Entry::new(&n, q(&path))],
                });
                Ok(n)
            }
            Some((TableDef::Inline(_), _)) => Err(format!(
                "<{tname}> is an inline list; mailer needs a file here"
            )),
            Some((TableDef::Other(kind), _)) => Err(format!(
                "<{tname}> is `{kind}`, a table backend mailer does not read; use a file: table"
            )),
            None => Err(format!("table <{tname}> is not defined")),
        }
    }

    /// The values of `<t>` (inline) or a literal.
    fn values(&self, tok: Option<&Tok>) -> Result<Vec<String>, String> {
        match tok {
            Some(Tok::Table(t)) => match self.tables.get(t) {
                Some((TableDef::Inline(items), _)) => Ok(items.clone()),
                Some((TableDef::File(path), _)) => Err(format!(
                    "<{t}> is the file {path}; mailer needs the values written in the rule here"
                )),
                Some((TableDef::Other(kind), _)) => Err(format!(
                    "<{t}> is `{kind}`, a table backend mailer does not read"
                )),
                None => Err(format!("table <{t}> is not defined")),
            },
            Some(t) => t
                .text()
                .map(|v| vec![v.to_string()])
                .ok_or_else(|| "a value is missing".to_string()),
            None => Err("a value is missing".to_string()),
        }
    }

    fn set_hostname(&mut self, host: &str, origin: &Origin) -> bool {
        match &self.hostname {
            Some(h) => h.eq_ignore_ascii_case(host),
            None => {
                self.hostname = Some(host.to_string());
                self.out
                    .ignored(origin, format!("its name `{host}` becomes `hostname`"));
                true
            }
        }
    }

    fn listen(&mut self, origin: &Origin, toks: &[Tok]) {
        if toks.get(1).and_then(Tok::text) != Some("on") {
            self.out
                .unsupported(origin, "expected `listen on`", "fix the line");
            return;
        }
        let Some(iface) = toks.get(2).and_then(Tok::text).map(str::to_string) else {
            self.out.unsupported(origin, "no interface", "fix the line");
            return;
        };
        if iface == "socket" {
            self.out.ignored(
                origin,
                "mailer always takes sendmail submissions on <queue_dir>/submit.sock",
            );
            return;
        }
        let mut port: u16 = 25;
        let mut tls: Option<String> = None;
        let mut pki: Option<String> = None;
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut i = 3;
        while i < toks.len() {
            let word = toks[i].text().unwrap_or("").to_string();
            let arg = toks.get(i + 1);
            match word.as_str() {
                "port" => {
                    match arg.and_then(Tok::text).and_then(|p| p.parse().ok()) {
                        Some(p) => port = p,
                        None => problems
                            .push(("the port is not a number".into(), "fix the port".into())),
                    }
                    i += 1;
                }
                "tls" => tls = Some(word.clone()),
                "tls-require" | "smtps" => {
                    problems.push((format!("`{word}`: mailer offers STARTTLS on a listener but cannot require it or speak implicit TLS"), "listen with tls_cert/tls_key (STARTTLS offered), or keep this listener elsewhere".into()));
                    tls = Some(word.clone());
                }
                "pki" => {
                    pki = arg.and_then(Tok::text).map(str::to_string);
                    i += 1;
                }
                "hostname" => {
                    if let Some(h) = arg.and_then(Tok::text) {
                        let h = h.to_string();
                        if !self.set_hostname(&h, origin) {
                            problems.push((
                                format!("a second host name `{h}`: mailer has one `hostname`"),
                                "keep one name".into(),
                            ));
                        }
                    }
                    i += 1;
                }
                "family" | "inet4" | "inet6" => {
                    if word == "family" {
                        i += 1;
                    }
                }
                "mask-src" | "no-dsn" | "received-auth" => {}
                "auth" | "auth-optional" => {
                    problems.push((format!("`{word}`: mailer has no SMTP AUTH for clients, so it offers no submission service to other hosts"), "keep a submission server for remote users, or send from this host".into()));
                    if matches!(arg, Some(Tok::Table(_))) {
                        i += 1;
                    }
                }
                "" => {}
                other => {
                    problems.push((
                        format!("listener option `{other}` has no equivalent"),
                        "remove it".into(),
                    ));
                    if matches!(arg, Some(Tok::Table(_)) | Some(Tok::Str(_))) {
                        i += 1;
                    }
                }
            }
            i += 1;
        }
        let addresses: Vec<String> = match iface.as_str() {
            "localhost" | "lo" | "lo0" => {
                vec![format!("127.0.0.1:{port}"), format!("[::1]:{port}")]
            }
            "0.0.0.0" | "::" | "all" => {
                if iface == "::" {
                    vec![format!("[::]:{port}")]
                } else if iface == "0.0.0.0" {
                    vec![format!("0.0.0.0:{port}")]
                } else {
                    vec![format!("0.0.0.0:{port}"), format!("[::]:{port}")]
                }
            }
            ip => match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(v4)) => vec![format!("{v4}:{port}")],
                Ok(std::net::IpAddr::V6(v6)) => vec![format!("[{v6}]:{port}")],
                Err(_) => {
                    self.out.unsupported(origin, format!("`{ip}` names an interface or group; mailer listens on addresses"), format!("write [[listen]] address = \"ADDRESS:{port}\" for each address of {ip}"));
                    return;
                }
            },
        };
        let mut tls_entries = Vec::new();
        if tls.is_some() {
            let p = pki.clone().unwrap_or_else(|| iface.clone());
            match self.pki.get(&p) {
                Some((Some(cert), Some(key))) => {
                    tls_entries.push(Entry::new("tls_cert", q(cert)));
                    tls_entries.push(Entry::new("tls_key", q(key)));
                }
                _ => problems.push((
                    format!("no `pki {p} cert` and `pki {p} key` to offer STARTTLS with"),
                    "add tls_cert and tls_key to this [[listen]]".into(),
                )),
            }
        }
        if !problems.is_empty() {
            // A listener that cannot be set up as written is left out rather than opened
            // with weaker settings.
            for (why, todo) in problems {
                self.out
                    .unsupported(origin, format!("{why}; the listener is left out"), todo);
            }
            return;
        }
        for (n, address) in addresses.iter().enumerate() {
            let mut entries = vec![Entry::new("address", q(address))];
            entries.extend(tls_entries.iter().cloned());
            self.out.listen.push(Block {
                origins: if n == 0 {
                    vec![origin.clone()]
                } else {
                    Vec::new()
                },
                remarks: Vec::new(),
                entries,
            });
        }
    }

    fn action(&mut self, origin: &Origin, toks: &[Tok]) {
        let Some(raw_name) = toks.get(1).and_then(Tok::text) else {
            self.out
                .unsupported(origin, "an action needs a name", "fix the line");
            return;
        };
        let action = name(raw_name);
        let Some(method) = toks.get(2).and_then(Tok::text).map(str::to_string) else {
            self.out
                .unsupported(origin, "an action needs a method", "fix the line");
            return;
        };
        let mut block = Block {
            origins: vec![origin.clone()],
            ..Block::default()
        };
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut relays = false;
        let mut i = 3;
        match method.as_str() {
            "mbox" => block
                .entries
                .push(Entry::new("mbox", q("/var/mail/%u")).note("OpenSMTPD's mbox location")),
            "maildir" => {
                let path = match toks.get(3) {
                    Some(Tok::Str(p)) => {
                        i += 1;
                        maildir_path(p)
                    }
                    _ => Ok("~/Maildir/".to_string()),
                };
                match path {
                    Ok(p) => block.entries.push(Entry::new("maildir", q(&p))),
                    Err(why) => problems.push((
                        why,
                        "write maildir = \"...\" with %u (user) and %d (domain)".into(),
                    )),
                }
            }
            "relay" => relays = true,
            "lmtp" | "mda" | "forward-only" | "expand-only" => {
                self.out.unsupported(origin, format!("`{method}` delivery has no equivalent: mailer delivers to mbox or maildir, or relays"), "deliver to mbox or maildir, or keep that delivery agent behind a relay");
                return;
            }
            other => {
                self.out.unsupported(
                    origin,
                    format!("unknown delivery method `{other}`"),
                    "fix the line",
                );
                return;
            }
        }
        let mut has_host = false;
        let mut auth: Option<String> = None;
        let mut url: Option<String> = None;
        // An option given twice would be a key written twice: not TOML.
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        while i < toks.len() {
            let word = toks[i].text().unwrap_or("").to_string();
            let arg = toks.get(i + 1);
            let mut takes_arg = true;
            let repeated = seen.contains(&word);
            match (word.as_str(), relays) {
                ("alias" | "host" | "auth" | "mail-from", _) if repeated => {
                    takes_arg = matches!(arg, Some(Tok::Table(_)) | Some(Tok::Str(_)));
                    problems.push((
                        format!("`{word}` is given twice (OpenSMTPD refuses that too)"),
                        "keep one".into(),
                    ));
                }
                ("alias", false) => match arg {
                    Some(Tok::Table(t)) => match self.file_table(t) {
                        Ok(n) => block.entries.push(Entry::new("alias", q(&n))),
                        Err(why) => {
                            problems.push((why, "name an aliases(5) file in a file: table".into()))
                        }
                    },
                    _ => problems.push(("alias needs <table>".into(), "fix the line".into())),
                },
                ("junk", false) => {
                    takes_arg = false;
                    problems.push((
                        "`junk` (spam folder) has no equivalent".into(),
                        "remove it; filter in the mail client".into(),
                    ));
                }
                ("host", true) => {
                    has_host = true;
                    match arg.and_then(Tok::text) {
                        Some(u) => url = Some(u.to_string()),
                        None => problems.push((
                            "a pool of relay hosts in a table".into(),
                            "write relay = [\"smtp+tls://…\", …]".into(),
                        )),
                    }
                }
                ("auth", true) => match arg {
                    Some(Tok::Table(t)) => match self.file_table(t) {
                        Ok(n) => auth = Some(n),
                        Err(why) => problems.push((
                            why,
                            "name an OpenSMTPD secrets file in a file: table".into(),
                        )),
                    },
                    _ => problems.push(("auth needs <table>".into(), "fix the line".into())),
                },
                ("mail-from", true) => match arg.and_then(Tok::text) {
                    Some(m) => block.entries.push(Entry::new("mail_from", q(m))),
                    None => {
                        problems.push(("mail-from needs an address".into(), "fix the line".into()))
                    }
                },
                ("tls", true) => {
                    if arg.and_then(Tok::text) == Some("no-verify") {
                        problems.push((
                            "`tls no-verify`: mailer always verifies the relay's certificate"
                                .into(),
                            "give the relay's CA with ca_file = \"/path/ca.pem\"".into(),
                        ));
                    } else {
                        takes_arg = false;
                    }
                }
                ("helo", true) => {
                    if let Some(h) = arg.and_then(Tok::text) {
                        let h = h.to_string();
                        if !self.set_hostname(&h, origin) {
                            problems.push((format!("EHLO name `{h}` differs from the host name: mailer greets every relay with `hostname`"), "set hostname to the name the relay expects".into()));
                        }
                    }
                }
                ("", _) => takes_arg = false,
                (other, _) => {
                    takes_arg = matches!(arg, Some(Tok::Table(_)) | Some(Tok::Str(_)));
                    problems.push((
                        format!("action option `{other}` has no equivalent"),
                        "remove it, or keep this function outside mailer".into(),
                    ));
                }
            }
            if !repeated {
                seen.insert(word);
            }
            i += if takes_arg { 2 } else { 1 };
        }
        if relays {
            if !has_host {
                self.out.unsupported(origin, "`relay` without `host` delivers to each domain's MX; mailer relays through a smarthost only", "add `host \"smtp+tls://…\"` with your provider's relay, or keep OpenSMTPD for direct delivery");
                return;
            }
            let Some(url) = url else {
                for (why, todo) in problems {
                    self.out.unsupported(origin, why, todo);
                }
                return;
            };
            match relay_url(&url, auth.is_some()) {
                Ok((u, remark, insecure)) => {
                    block.entries.insert(0, Entry::new("relay", q(&u)));
                    if let Some(r) = remark {
                        block.remarks.push(r);
                    }
                    if insecure {
                        block.entries.push(Entry::new("insecure", "true".into()));
                    }
                }
                Err((why, todo)) => {
                    problems.push((why, todo));
                    for (why, todo) in problems {
                        self.out.unsupported(origin, why, todo);
                    }
                    return;
                }
            }
            if let Some(a) = auth {
                block.entries.insert(1, Entry::new("auth", q(&a)));
            }
        }
        let failed = block
            .entries
            .iter()
            .all(|e| e.key != "relay" && e.key != "mbox" && e.key != "maildir");
        for (why, todo) in problems {
            self.out.unsupported(origin, why, todo);
        }
        if failed {
            return;
        }
        if self.out.add_action(origin, action, block) {
            self.actions.insert(raw_name.to_string(), relays);
        }
    }

    fn rule(&mut self, origin: &Origin, toks: &[Tok]) {
        let mut from: Option<String> = None;
        let mut recipients: Option<String> = None;
        let mut mail_from: Option<String> = None;
        let mut rcpt_to: Option<String> = None;
        let mut action: Option<String> = None;
        let mut local_only = true;
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut i = 1;
        while i < toks.len() {
            let negated = toks[i] == Tok::Bang;
            if negated {
                i += 1;
            }
            let word = toks.get(i).and_then(Tok::text).unwrap_or("").to_string();
            let sub = toks.get(i + 1).and_then(Tok::text).map(str::to_string);
            let arg = toks.get(i + 2);
            let mut used = 2;
            match (word.as_str(), sub.as_deref()) {
                ("from", Some("local")) if !negated => from = Some(q("local")),
                ("from", Some("any")) if !negated => {
                    from = Some(q("any"));
                    local_only = false;
                }
                ("from", Some("socket")) if !negated => from = Some(q("socket")),
                ("from", Some("src")) if !negated => {
                    used = 3;
                    match self.values(arg).and_then(|v| sources(&v)) {
                        Ok(nets) => {
                            local_only = nets.iter().all(IpNet::is_loopback);
                            let shown: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
                            from = Some(format!("{{ source = {} }}", list(&shown)));
                        }
                        Err(why) => problems.push((
                            why,
                            "write from = { source = [\"ADDRESS/PREFIX\", …] }".into(),
                        )),
                    }
                }
                ("from", Some("mail-from"))
                | ("mail-from", _)
                | ("for", Some("rcpt-to"))
                | ("rcpt-to", _) => {
                    // `from mail-from <t>` and `mail-from <t>` are one condition (likewise
                    // for rcpt-to): the table follows the keyword either way.
                    let (value, key) = match word.as_str() {
                        "from" | "for" => {
                            used = 3;
                            (arg, sub.as_deref().unwrap_or_default())
                        }
                        _ => (toks.get(i + 1), word.as_str()),
                    };
                    let (field, slot) = if key == "mail-from" {
                        ("mail_from", &mut mail_from)
                    } else {
                        ("rcpt_to", &mut rcpt_to)
                    };
                    match self.addresses(value, negated) {
                        Ok(v) => *slot = Some(v),
                        Err(why) => problems.push((
                            why,
                            format!("write {field} = [\"user@domain\", \"@domain\"] or {{ table = \"NAME\" }}"),
                        )),
                    }
                }
                ("for", Some("local")) if !negated => recipients = Some(q("local")),
                ("for", Some("any")) if !negated => recipients = Some(q("any")),
                ("for", Some("domain")) => {
                    used = 3;
                    match self.values(arg) {
                        Ok(domains) if negated => {
                            let at: Vec<String> = domains.iter().map(|d| format!("@{d}")).collect();
                            rcpt_to = Some(format!("{{ not = {} }}", list(&at)));
                        }
                        Ok(domains) => recipients = Some(list(&domains)),
                        Err(why) => problems.push((why, "write for = [\"domain\", …]".into())),
                    }
                }
                ("action", Some(a)) if !negated => action = Some(a.to_string()),
                ("reject", _) if !negated => {
                    used = 1;
                    problems.push((
                        "`reject` rules: mailer refuses what no rule matches".into(),
                        "remove it; make sure no later rule matches these recipients".into(),
                    ));
                }
                (w, s) => {
                    let shown = if negated {
                        format!("! {w} {}", s.unwrap_or(""))
                    } else {
                        format!("{w} {}", s.unwrap_or(""))
                    };
                    problems.push((
                        format!("condition `{}` has no equivalent", shown.trim()),
                        "remove it, or express it with from, for, mail_from and rcpt_to".into(),
                    ));
                    used = if matches!(arg, Some(Tok::Table(_))) {
                        3
                    } else {
                        2
                    };
                }
            }
            i += used;
        }
        let what = "the rule is left out, so the mail it matched is refused (or taken by a later rule) until you add an equivalent";
        if !problems.is_empty() {
            for (why, todo) in problems {
                self.out.unsupported(origin, format!("{why}; {what}"), todo);
            }
            return;
        }
        let Some(action) = action else {
            self.out
                .unsupported(origin, "a match without an action", "fix the line");
            return;
        };
        let Some(&relays) = self.actions.get(&action) else {
            self.out.unsupported(
                origin,
                format!("action `{action}` was not translated; {what}"),
                "see the action's line",
            );
            return;
        };
        if relays && !local_only {
            self.out.unsupported(origin, format!("it relays for clients not on this host; mailer never does (no SMTP AUTH): {what}"), "send from this host, or use loopback sources only");
            return;
        }
        let mut block = Block {
            origins: vec![origin.clone()],
            ..Block::default()
        };
        // smtpd.conf's defaults: from local, for local.
        block
            .entries
            .push(Entry::new("from", from.unwrap_or_else(|| q("local"))));
        if recipients.is_some() || rcpt_to.is_none() {
            block
                .entries
                .push(Entry::new("for", recipients.unwrap_or_else(|| q("local"))));
        }
        if let Some(m) = mail_from {
            block.entries.push(Entry::new("mail_from", m));
        }
        if let Some(r) = rcpt_to {
            block.entries.push(Entry::new("rcpt_to", r));
        }
        block.entries.push(Entry::new("action", q(&name(&action))));
        self.out.matches.push(block);
    }

    /// A `mail_from`/`rcpt_to` value from a literal or a table.
    fn addresses(&mut self, tok: Option<&Tok>, negated: bool) -> Result<String, String> {
        let value = match tok {
            Some(Tok::Table(t)) if matches!(self.tables.get(t), Some((TableDef::File(_), _))) => {
                let n = self.file_table(t)?;
                format!("{{ table = {} }}", q(&n))
            }
            tok => {
                let items: Vec<String> = self
                    .values(tok)?
                    .into_iter()
                    .map(|v| if v.contains('@') { v } else { format!("@{v}") })
                    .collect();
                for v in &items {
                    crate::config::AddressPattern::parse(v)?;
                }
                if items.len() == 1 {
                    q(&items[0])
                } else {
                    list(&items)
                }
            }
        };
        Ok(if negated {
            format!("{{ not = {value} }}")
        } else {
            value
        })
    }

    fn smtp(&mut self, origin: &Origin, toks: &[Tok]) {
        let words: Vec<&str> = toks.iter().filter_map(Tok::text).collect();
        match words.as_slice() {
            ["smtp", "max-message-size", size] => match crate::config::parse_size(size) {
                Ok(_) => self.limit(origin, "max_message_size", q(size)),
                Err(why) => {
                    self.out
                        .unsupported(origin, why, "write [limits] max_message_size = \"35M\"")
                }
            },
            ["smtp", "limit", "max-rcpt", n] => match n.parse::<u64>() {
                Ok(n) => self.limit(origin, "max_recipients", n.to_string()),
                Err(_) => self.out.unsupported(
                    origin,
                    "not a number",
                    "write [limits] max_recipients = N",
                ),
            },
            ["smtp", "sub-addr-delim", ..] => self.out.unsupported(
                origin,
                "sub-addressing (user+tag) is not supported",
                "use aliases for the tagged addresses",
            ),
            _ => self.out.unsupported(
                origin,
                "this smtp option has no equivalent",
                "see [limits] in mailer.toml(5)",
            ),
        }
    }

    fn limit(&mut self, origin: &Origin, key: &str, value: String) {
        self.out.add_setting(
            false,
            origin,
            Block {
                origins: vec![origin.clone()],
                remarks: Vec::new(),
                entries: vec![Entry::new(key, value)],
            },
        );
    }

    fn queue(&mut self, origin: &Origin, toks: &[Tok]) {
        let words: Vec<&str> = toks.iter().filter_map(Tok::text).collect();
        match words.as_slice() {
            ["queue", "ttl", d] => match crate::config::parse_duration(d) {
                Ok(_) => self.out.add_setting(
                    true,
                    origin,
                    Block {
                        origins: vec![origin.clone()],
                        remarks: Vec::new(),
                        entries: vec![Entry::new("lifetime", q(d))],
                    },
                ),
                Err(why) => self
                    .out
                    .unsupported(origin, why, "write [queue] lifetime = \"4d\""),
            },
            ["queue", "compression"] => self
                .out
                .ignored(origin, "mailer stores queued messages as they are"),
            _ => self.out.unsupported(
                origin,
                "this queue option has no equivalent",
                "see [queue] in mailer.toml(5)",
            ),
        }
    }

    fn bounce(&mut self, origin: &Origin, toks: &[Tok]) {
        let words: Vec<&str> = toks.iter().filter_map(Tok::text).collect();
        match words.as_slice() {
            ["bounce", "warn-interval", first, rest @ ..] => {
                if crate::config::parse_duration(first).is_err() {
                    self.out.unsupported(
                        origin,
                        format!("`{first}` is not a duration"),
                        "write [queue] warn_after = \"4h\"",
                    );
                    return;
                }
                let mut block = Block {
                    origins: vec![origin.clone()],
                    remarks: Vec::new(),
                    entries: vec![Entry::new("warn_after", q(first))],
                };
                if !rest.is_empty() {
                    block
                        .remarks
                        .push("mailer sends one delay notice, at the first interval".into());
                }
                self.out.add_setting(true, origin, block);
            }
            _ => self.out.unsupported(
                origin,
                "this bounce option has no equivalent",
                "see [queue] in mailer.toml(5)",
            ),
        }
    }

    /// The top-level keys, once the host name is known.
    fn finish(&mut self) {
        let mut top = Block::default();
        match &self.hostname {
            Some(h) => {
                top.entries.push(Entry::new("hostname", q(h)));
                let mut domains = vec!["localhost".to_string()];
                if !h.eq_ignore_ascii_case("localhost") {
                    domains.push(h.to_ascii_lowercase());
                }
                top.entries.push(Entry::new("local_domains", list(&domains)).note("what `for local` matches"));
            }
            None => top.remarks.push("hostname and local_domains: the system host name, as OpenSMTPD takes it (set hostname if /etc/mailname says otherwise)".into()),
        }
        if self.options.hostname.is_some() {
            top.remarks
                .push("hostname: the mail name of this host, given to the import".into());
        }
        self.out.top.insert(0, top);
    }
}

/// An OpenSMTPD maildir path in mailer's pattern.
fn maildir_path(p: &str) -> Result<String, String> {
    let out = p
        .replace("%{user.username}", "%u")
        .replace("%{dest.user}", "%u")
        .replace("%{rcpt.user}", "%u")
        .replace("%{dest.domain}", "%d")
        .replace("%{rcpt.domain}", "%d")
        .replace("%{user.directory}", "~");
    if out.contains("%{") {
        return Err(format!(
            "maildir path `{p}` uses a format mailer does not know"
        ));
    }
    Ok(if out.ends_with('/') {
        out
    } else {
        format!("{out}/")
    })
}

/// Networks from `src` values.
fn sources(values: &[String]) -> Result<Vec<IpNet>, String> {
    if values.is_empty() {
        return Err("an empty list of sources".into());
    }
    values.iter().map(|v| IpNet::parse(v)).collect()
}

/// An OpenSMTPD relay URL as mailer writes it; a remark on what changed, and whether it
/// needs `insecure`.
fn relay_url(url: &str, auth: bool) -> Result<(String, Option<String>, bool), (String, String)> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("smtp", url));
    let (scheme, remark, insecure) = match scheme {
        "smtp+tls" => ("smtp+tls", None, false),
        "smtps" => ("smtps", None, false),
        "smtp" => ("smtp+tls", Some("OpenSMTPD's smtp:// uses STARTTLS when offered; mailer's smtp+tls:// requires it and verifies the certificate".to_string()), false),
        "smtp+notls" if auth => return Err(("a password over a connection without TLS".into(), "use smtp+tls:// or smtps://; mailer never sends credentials in clear".into())),
        "smtp+notls" => ("smtp", None, true),
        other => return Err((format!("relay scheme `{other}://` is not supported"), "use smtp+tls:// or smtps://".into())),
    };
    let text = format!("{scheme}://{rest}");
    match text.parse::<RelayUrl>() {
        Ok(mut u) => {
            let mut remark = remark;
            if auth && u.label.is_none() {
                // OpenSMTPD looks a relay without a label up by its host name.
                u.label = Some(u.host.clone());
                remark = Some(format!(
                    "{}the secrets table is searched for the label `{}`, as OpenSMTPD searches it for the host name",
                    remark.map(|r| format!("{r}; ")).unwrap_or_default(),
                    u.host
                ));
            }
            Ok((u.to_string(), remark, insecure))
        }
        Err(e) => Err((e.to_string(), "fix the relay URL".into())),
    }
}
