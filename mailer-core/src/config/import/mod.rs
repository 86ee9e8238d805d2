//! `mailer config import`: an OpenSMTPD `smtpd.conf` or a Postfix `main.cf` relay setup
//! turned into a commented mailer.toml. Each block of the output quotes the line it came from;
//! each construct that has no equivalent is named with its line, why, and what to do, and
//! makes the translation incomplete.
//!
//! Pure: the files a configuration refers to (Postfix lookup tables) are read through the
//! `read` function the caller gives, so tests and fuzzing run without a file system.

mod postfix;
mod smtpd;

use std::fmt::Write as _;
use std::path::Path;

/// The formats understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Smtpd,
    Postfix,
}

impl Format {
    /// The file name used in quotes (`# smtpd.conf:5: …`).
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Smtpd => "smtpd.conf",
            Format::Postfix => "main.cf",
        }
    }
}

/// What the caller knows besides the file.
pub struct Options<'a> {
    /// `None`: detect from the content.
    pub format: Option<Format>,
    /// The mail name when the file does not say (OpenSMTPD takes it from /etc/mailname or
    /// the system host name).
    pub hostname: Option<String>,
    /// Reads a file the configuration refers to; `None` if it cannot be read.
    pub read: &'a dyn Fn(&Path) -> Option<String>,
}

/// A construct with no translation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// 1-based line in the source; 0 for the file as a whole.
    pub line: usize,
    /// The statement as written (continuations joined).
    pub text: String,
    pub why: String,
    /// What the admin should do instead.
    pub todo: String,
}

/// The result: the mailer.toml text and what it leaves out.
#[derive(Clone, Debug)]
pub struct Translation {
    pub format: Format,
    pub toml: String,
    pub unsupported: Vec<Unsupported>,
}

impl Translation {
    /// Whether the output does all the source did.
    pub fn complete(&self) -> bool {
        self.unsupported.is_empty()
    }
}

/// The content fits neither format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unrecognized(pub String);

impl std::fmt::Display for Unrecognized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which format `text` is in, from its statements: smtpd.conf has `match`/`action`/`listen
/// on`/`table` statements, main.cf has `name = value` parameters Postfix knows.
pub fn detect(text: &str) -> Option<Format> {
    let mut smtpd = 0;
    let mut postfix = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(
            first,
            "match" | "action" | "table" | "pki" | "queue" | "smtp" | "bounce"
        ) || line.starts_with("listen on")
        {
            smtpd += 1;
        }
        if let Some((key, _)) = line.split_once('=') {
            if postfix::is_known(key.trim()) {
                postfix += 1;
            }
        }
    }
    match (smtpd, postfix) {
        (0, 0) => None,
        (s, p) if s >= p => Some(Format::Smtpd),
        _ => Some(Format::Postfix),
    }
}

/// Translates `text`.
pub fn import(text: &str, options: &Options<'_>) -> Result<Translation, Unrecognized> {
    let format = match options.format.or_else(|| detect(text)) {
        Some(f) => f,
        None => {
            return Err(Unrecognized(
                "neither an smtpd.conf nor a Postfix main.cf: no match/action/listen statement and no known main.cf parameter; give --from smtpd or --from postfix".to_string(),
            ))
        }
    };
    let mut out = match format {
        Format::Smtpd => smtpd::translate(text, options),
        Format::Postfix => postfix::translate(text, options),
    };
    out.unsupported.sort_by_key(|u| u.line);
    // What mailer itself would refuse is named too, so that the output is never silently
    // unusable.
    let mut toml = out.render(format);
    if let Err(problems) = crate::config::Config::parse(&toml, Path::new("<translation>")) {
        for p in problems {
            out.unsupported.push(Unsupported {
                line: 0,
                text: format!("the translation, line {}", p.line),
                why: p.message,
                todo: "edit the output where it says so".to_string(),
            });
        }
        toml = out.render(format);
    }
    Ok(Translation {
        format,
        toml,
        unsupported: out.unsupported,
    })
}

/// A source line as quoted in the output.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub line: usize,
    pub text: String,
}

/// One `key = value` line of the output, with the comment it carries.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub key: String,
    /// TOML text of the value.
    pub value: String,
    pub comment: Option<String>,
}

impl Entry {
    pub fn new(key: &str, value: String) -> Entry {
        Entry {
            key: key.to_string(),
            value,
            comment: None,
        }
    }

    pub fn note(mut self, comment: impl Into<String>) -> Entry {
        self.comment = Some(comment.into());
        self
    }
}

/// A block of the output: a table header (or none for top-level keys) and its entries, with
/// the source lines it came from.
#[derive(Clone, Debug, Default)]
pub(crate) struct Block {
    pub origins: Vec<Origin>,
    /// Explanations printed under the quotes.
    pub remarks: Vec<String>,
    pub entries: Vec<Entry>,
}

/// The translation being built, section by section (TOML wants top-level keys first).
#[derive(Default)]
pub(crate) struct Out {
    pub top: Vec<Block>,
    /// `[tables]`: one block per table.
    pub tables: Vec<Block>,
    pub listen: Vec<Block>,
    /// By action name.
    pub actions: Vec<(String, Block)>,
    pub matches: Vec<Block>,
    pub limits: Vec<Block>,
    pub queue: Vec<Block>,
    /// Lines with nothing to translate, and why: quoted so nothing is silently dropped.
    pub ignored: Vec<(Origin, String)>,
    pub unsupported: Vec<Unsupported>,
}

impl Out {
    pub fn unsupported(
        &mut self,
        origin: &Origin,
        why: impl Into<String>,
        todo: impl Into<String>,
    ) {
        self.unsupported.push(Unsupported {
            line: origin.line,
            text: origin.text.clone(),
            why: why.into(),
            todo: todo.into(),
        });
    }

    pub fn ignored(&mut self, origin: &Origin, why: impl Into<String>) {
        self.ignored.push((origin.clone(), why.into()));
    }

    /// Adds an action; a second one of the same name is named as not translated (OpenSMTPD
    /// refuses it too, and TOML cannot hold it).
    pub fn add_action(&mut self, origin: &Origin, name: String, block: Block) -> bool {
        if self.has_action(&name) {
            self.unsupported(
                origin,
                format!("a second action named `{name}`"),
                "give each action its own name",
            );
            return false;
        }
        self.actions.push((name, block));
        true
    }

    /// Adds a `[limits]` (or, with `queue`, a `[queue]`) setting once; a second one of the
    /// same key is named as not translated.
    pub fn add_setting(&mut self, queue: bool, origin: &Origin, block: Block) {
        let section = if queue { &self.queue } else { &self.limits };
        let taken = block.entries.iter().any(|e| {
            section
                .iter()
                .any(|b| b.entries.iter().any(|x| x.key == e.key))
        });
        if taken {
            self.unsupported(
                origin,
                "the setting is given twice",
                "keep one; the first is used",
            );
            return;
        }
        if queue {
            self.queue.push(block);
        } else {
            self.limits.push(block);
        }
    }

    /// Every block of the output.
    pub fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.top
            .iter()
            .chain(&self.tables)
            .chain(&self.listen)
            .chain(self.actions.iter().map(|(_, b)| b))
            .chain(&self.matches)
            .chain(&self.limits)
            .chain(&self.queue)
    }

    pub fn has_action(&self, name: &str) -> bool {
        self.actions.iter().any(|(n, _)| n == name)
    }

    fn render(&self, format: Format) -> String {
        let file = format.file_name();
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# mailer configuration translated from {file} by `mailer config import`."
        );
        let _ = writeln!(
            t,
            "# Each block quotes the {file} line it comes from; check it with `mailer config check`."
        );
        if self.unsupported.is_empty() {
            let _ = writeln!(t, "# The translation is complete.");
        } else {
            let _ = writeln!(
                t,
                "# INCOMPLETE: {} construct(s) could not be translated; see NOT TRANSLATED at the end.",
                self.unsupported.len()
            );
        }
        for block in &self.top {
            t.push('\n');
            write_block(&mut t, file, None, block);
        }
        if !self.tables.is_empty() {
            t.push('\n');
            let _ = writeln!(t, "[tables]");
            for block in &self.tables {
                write_block(&mut t, file, None, block);
            }
        }
        for block in &self.listen {
            t.push('\n');
            write_block(&mut t, file, Some("[[listen]]"), block);
        }
        for (name, block) in &self.actions {
            t.push('\n');
            write_block(
                &mut t,
                file,
                Some(&format!("[actions.{}]", key(name))),
                block,
            );
        }
        for (header, blocks) in [("[limits]", &self.limits), ("[queue]", &self.queue)] {
            if blocks.is_empty() {
                continue;
            }
            t.push('\n');
            let _ = writeln!(t, "{header}");
            for block in blocks {
                write_block(&mut t, file, None, block);
            }
        }
        for block in &self.matches {
            t.push('\n');
            write_block(&mut t, file, Some("[[match]]"), block);
        }
        if !self.ignored.is_empty() {
            t.push('\n');
            let _ = writeln!(t, "# Nothing to translate:");
            for (origin, why) in &self.ignored {
                let _ = writeln!(t, "# {file}:{}: {}", origin.line, one_line(&origin.text));
                let _ = writeln!(t, "#   {}", one_line(why));
            }
        }
        if !self.unsupported.is_empty() {
            t.push('\n');
            let _ = writeln!(t, "# NOT TRANSLATED:");
            for u in &self.unsupported {
                if u.line == 0 {
                    let _ = writeln!(t, "# {}:", one_line(&u.text));
                } else {
                    let _ = writeln!(t, "# {file}:{}: {}", u.line, one_line(&u.text));
                }
                let _ = writeln!(t, "#   why: {}", one_line(&u.why));
                let _ = writeln!(t, "#   what to do: {}", one_line(&u.todo));
            }
        }
        t
    }
}

fn write_block(t: &mut String, file: &str, header: Option<&str>, block: &Block) {
    for o in &block.origins {
        let _ = writeln!(t, "# {file}:{}: {}", o.line, one_line(&o.text));
    }
    for r in &block.remarks {
        let _ = writeln!(t, "#   ({})", one_line(r));
    }
    if let Some(h) = header {
        let _ = writeln!(t, "{h}");
    }
    for e in &block.entries {
        match &e.comment {
            Some(c) => {
                let _ = writeln!(t, "{} = {}   # {}", key(&e.key), e.value, one_line(c));
            }
            None => {
                let _ = writeln!(t, "{} = {}", key(&e.key), e.value);
            }
        }
    }
}

/// Text safe inside a `#` comment: one line, no control characters.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A TOML string.
pub(crate) fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML array of strings.
pub(crate) fn list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

/// A bare TOML key when it can be one, quoted otherwise.
fn key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_string()
    } else {
        q(name)
    }
}

/// A name usable as a mailer action or table name, from an OpenSMTPD one.
pub(crate) fn name(raw: &str) -> String {
    let n: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if n.is_empty() {
        "unnamed".to_string()
    } else {
        n
    }
}

#[cfg(test)]
mod tests;
