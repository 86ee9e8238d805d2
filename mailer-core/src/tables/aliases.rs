//! The aliases(5) table: `name: target, target`.
//!
//! Syntax accepted (the common ground of sendmail, Postfix and OpenSMTPD):
//!
//! * `#` at the start of a line (after optional whitespace) makes it a comment; blank lines are
//!   ignored;
//! * a line starting with whitespace continues the entry above it;
//! * the name is a local part, optionally quoted (`"john doe": jd`); lookups ignore case;
//! * a target is a local name (user or alias), `\name` (a user, never expanded as an alias),
//!   `local@domain`, `:include:/absolute/path`, `|command` or `/file` (the last two only when
//!   the action allows them). A quoted target (`"|cmd arg"`) may contain commas and spaces.
//!
//! `:include:` files are read at load time; their lines hold targets, comma- or line-separated.
//! All errors of a file are collected and reported as `FILE:LINE: reason`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::address::Address;

/// Deepest alias chain followed (sendmail uses 10, Postfix 1000; real tables need a handful).
pub const MAX_DEPTH: usize = 32;
/// Deepest nesting of `:include:` files.
const MAX_INCLUDE_DEPTH: usize = 8;

/// What the delivering action permits besides mailboxes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AliasOptions {
    /// Accept `|command` targets.
    pub allow_commands: bool,
    /// Accept `/path` file targets.
    pub allow_files: bool,
}

/// One error in an aliases or include file. `line` is 1-based; 0 means the file as a whole
/// (e.g. it could not be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

impl std::error::Error for TableError {}

/// Where an expansion ends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AliasTarget {
    /// A local user name (lower-case), to be looked up in the user database.
    User(String),
    /// An address outside the local domains, routed by the match rules like any recipient.
    Address(Address),
    /// A command line (without the leading `|`), run as the target user.
    Command(String),
    /// A file the message is appended to.
    File(PathBuf),
}

/// Why an alias could not be expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpandError {
    /// The chain of names that leads back to one already being expanded, ending with it.
    Loop(Vec<String>),
    /// The chain exceeded [`MAX_DEPTH`].
    TooDeep(Vec<String>),
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpandError::Loop(chain) => write!(f, "alias loop: {}", chain.join(" -> ")),
            ExpandError::TooDeep(chain) => write!(
                f,
                "alias chain deeper than {MAX_DEPTH}: {} -> ...",
                chain.join(" -> ")
            ),
        }
    }
}

impl std::error::Error for ExpandError {}

/// A target as written, before expansion.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A local name: an alias if the table has it, else a user.
    Name(String),
    /// `\name`: a user, never an alias.
    User(String),
    Address(Address),
    Command(String),
    File(PathBuf),
}

#[derive(Clone, Debug)]
struct Entry {
    line: usize,
    targets: Vec<Target>,
}

/// A loaded aliases table.
#[derive(Clone, Debug)]
pub struct Aliases {
    source: PathBuf,
    files: Vec<PathBuf>,
    entries: HashMap<String, Entry>,
}

/// Reads the file an `:include:` names.
pub type Loader<'a> = dyn FnMut(&Path) -> io::Result<String> + 'a;

impl Aliases {
    /// Reads and parses the aliases file at `path`.
    pub fn load(path: &Path, opts: AliasOptions) -> Result<Aliases, Vec<TableError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![TableError {
                file: path.to_path_buf(),
                line: 0,
                message: format!("cannot read: {e}"),
            }]
        })?;
        Self::parse(&text, path, opts)
    }

    /// Parses `text`, the contents of `source`; `:include:` files are read from disk.
    pub fn parse(
        text: &str,
        source: &Path,
        opts: AliasOptions,
    ) -> Result<Aliases, Vec<TableError>> {
        Self::parse_with_loader(text, source, opts, &mut |p| std::fs::read_to_string(p))
    }

    /// Parses `text`, reading `:include:` files through `load`.
    pub fn parse_with_loader(
        text: &str,
        source: &Path,
        opts: AliasOptions,
        load: &mut Loader<'_>,
    ) -> Result<Aliases, Vec<TableError>> {
        let mut parser = Parser {
            opts,
            load,
            errors: Vec::new(),
            files: vec![source.to_path_buf()],
        };
        let entries = parser.parse_table(text, source);
        // An empty entry is only known at the next one: restore line order, this file first.
        parser.errors.sort_by(|a, b| {
            (a.file != source, &a.file, a.line).cmp(&(b.file != source, &b.file, b.line))
        });
        if parser.errors.is_empty() {
            Ok(Aliases {
                source: source.to_path_buf(),
                files: parser.files,
                entries,
            })
        } else {
            Err(parser.errors)
        }
    }

    /// The aliases file this table was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Every file read: the aliases file, then the `:include:` files. A change to any of them
    /// calls for a reload.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Number of aliases defined.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every alias name with the line that defines it, in line order.
    pub fn names(&self) -> Vec<(&str, usize)> {
        let mut names: Vec<(&str, usize)> = self
            .entries
            .iter()
            .map(|(name, entry)| (name.as_str(), entry.line))
            .collect();
        names.sort_by_key(|&(_, line)| line);
        names
    }

    /// Whether `local` (case-insensitive, `name+detail` falling back to `name`) is an alias.
    pub fn contains(&self, local: &str) -> bool {
        self.key_for(local).is_some()
    }

    /// The line of the aliases file that defines `local`, if it is an alias.
    pub fn line_of(&self, local: &str) -> Option<usize> {
        self.key_for(local).map(|k| self.entries[&k].line)
    }

    /// Expands `local` fully: `None` if it is no alias, else its targets with aliases replaced
    /// by their own targets, duplicates removed (first occurrence kept). An address whose
    /// domain is one of `local_domains` is treated as its local part.
    pub fn expand(
        &self,
        local: &str,
        local_domains: &[String],
    ) -> Result<Option<Vec<AliasTarget>>, ExpandError> {
        let Some(key) = self.key_for(local) else {
            return Ok(None);
        };
        let mut walk = Walk {
            aliases: self,
            local_domains,
            chain: vec![key.clone()],
            done: HashSet::new(),
            out: Vec::new(),
            seen: HashSet::new(),
        };
        walk.expand_alias(&key)?;
        Ok(Some(walk.out))
    }

    /// The table key for `local`: its normalized form if that is an alias, else its form
    /// without `+detail` if that is one.
    fn key_for(&self, local: &str) -> Option<String> {
        let name = normalize_local(local);
        if self.entries.contains_key(&name) {
            return Some(name);
        }
        let base = strip_detail(&name);
        (base != name && self.entries.contains_key(base)).then(|| base.to_string())
    }
}

/// Lower-cases a local part and removes the quotes of a quoted one, so `"John"` and `john`
/// are the same key.
fn normalize_local(local: &str) -> String {
    let local = local.trim();
    match local
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .filter(|_| local.len() >= 2)
    {
        Some(inner) => unescape(inner).to_lowercase(),
        None => local.to_lowercase(),
    }
}

fn strip_detail(name: &str) -> &str {
    match name.find('+') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    }
}

/// Resolves the quoted-pairs of a quoted string's contents.
fn unescape(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Walk<'a> {
    aliases: &'a Aliases,
    local_domains: &'a [String],
    /// Aliases being expanded, outermost first.
    chain: Vec<String>,
    /// Aliases fully expanded already (their targets are in `out`).
    done: HashSet<String>,
    out: Vec<AliasTarget>,
    seen: HashSet<AliasTarget>,
}

impl Walk<'_> {
    fn expand_alias(&mut self, key: &str) -> Result<(), ExpandError> {
        let entry = &self.aliases.entries[key];
        for target in &entry.targets {
            match target {
                Target::Name(name) => self.expand_name(key, name)?,
                Target::Address(addr) if self.is_local_domain(addr.domain()) => {
                    let name = normalize_local(addr.local_part());
                    self.expand_name(key, &name)?
                }
                Target::Address(addr) => self.push(AliasTarget::Address(addr.clone())),
                Target::User(user) => self.push(AliasTarget::User(user.clone())),
                Target::Command(cmd) => self.push(AliasTarget::Command(cmd.clone())),
                Target::File(path) => self.push(AliasTarget::File(path.clone())),
            }
        }
        self.done.insert(key.to_string());
        Ok(())
    }

    /// A local name found among the targets of alias `current`, already normalized: a second
    /// normalization would unquote `"\"\""` once more, down to an empty user.
    fn expand_name(&mut self, current: &str, name: &str) -> Result<(), ExpandError> {
        let next = match self.aliases.key_for(name) {
            // `root: root, x`: a name listing itself means the user (aliases(5)).
            Some(key) if key == current => None,
            other => other,
        };
        let Some(next) = next else {
            self.push(AliasTarget::User(strip_detail(name).to_string()));
            return Ok(());
        };
        if self.chain.contains(&next) {
            let mut chain = self.chain.clone();
            chain.push(next);
            return Err(ExpandError::Loop(chain));
        }
        if self.done.contains(&next) {
            return Ok(());
        }
        if self.chain.len() >= MAX_DEPTH {
            return Err(ExpandError::TooDeep(self.chain.clone()));
        }
        self.chain.push(next.clone());
        self.expand_alias(&next)?;
        self.chain.pop();
        Ok(())
    }

    fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    fn push(&mut self, target: AliasTarget) {
        if self.seen.insert(target.clone()) {
            self.out.push(target);
        }
    }
}

struct Parser<'l, 'a> {
    opts: AliasOptions,
    load: &'l mut Loader<'a>,
    errors: Vec<TableError>,
    files: Vec<PathBuf>,
}

/// The entry being assembled from a first line and its continuation lines.
enum Current {
    /// Before the first entry.
    Nothing,
    /// The entry's first line was in error; its continuation lines are skipped.
    Broken,
    Entry {
        name: String,
        entry: Entry,
        /// Errors reported before this entry: more means one of its targets was refused.
        errors_before: usize,
    },
}

impl Parser<'_, '_> {
    fn error(&mut self, file: &Path, line: usize, message: impl Into<String>) {
        self.errors.push(TableError {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        });
    }

    fn parse_table(&mut self, text: &str, source: &Path) -> HashMap<String, Entry> {
        let mut entries: HashMap<String, Entry> = HashMap::new();
        let mut current = Current::Nothing;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if raw.starts_with([' ', '\t']) {
                match &mut current {
                    Current::Nothing => self.error(
                        source,
                        line_no,
                        "continuation line (leading whitespace) without an alias before it",
                    ),
                    Current::Broken => {}
                    Current::Entry { entry, .. } => {
                        self.parse_targets(trimmed, source, line_no, 0, &mut entry.targets)
                    }
                }
                continue;
            }
            let previous = std::mem::replace(&mut current, Current::Nothing);
            self.finish(previous, source, &mut entries);
            current = match split_name(raw) {
                Err(message) => {
                    self.error(source, line_no, message);
                    Current::Broken
                }
                Ok((name, rest)) => {
                    let errors_before = self.errors.len();
                    let mut targets = Vec::new();
                    self.parse_targets(rest, source, line_no, 0, &mut targets);
                    Current::Entry {
                        name,
                        entry: Entry {
                            line: line_no,
                            targets,
                        },
                        errors_before,
                    }
                }
            };
        }
        self.finish(current, source, &mut entries);
        entries
    }

    fn finish(&mut self, current: Current, source: &Path, entries: &mut HashMap<String, Entry>) {
        let Current::Entry {
            name,
            entry,
            errors_before,
        } = current
        else {
            return;
        };
        if let Some(first) = entries.get(&name) {
            let message = format!("alias `{name}` already defined at line {}", first.line);
            self.error(source, entry.line, message);
        } else if entry.targets.is_empty() {
            // A refused target already explains why the list is empty.
            if self.errors.len() == errors_before {
                self.error(source, entry.line, format!("alias `{name}` has no targets"));
            }
        } else {
            entries.insert(name, entry);
        }
    }

    /// Parses the comma-separated targets on one line, appending them to `out`.
    fn parse_targets(
        &mut self,
        text: &str,
        file: &Path,
        line: usize,
        include_depth: usize,
        out: &mut Vec<Target>,
    ) {
        let pieces = match split_targets(text) {
            Ok(pieces) => pieces,
            Err(message) => return self.error(file, line, message),
        };
        for piece in pieces {
            if let Some(path) = piece.strip_prefix(":include:") {
                self.include(path.trim(), file, line, include_depth, out);
                continue;
            }
            match parse_target(piece, self.opts) {
                Ok(target) => out.push(target),
                Err(message) => self.error(file, line, message),
            }
        }
    }

    fn include(
        &mut self,
        path: &str,
        file: &Path,
        line: usize,
        depth: usize,
        out: &mut Vec<Target>,
    ) {
        let path = Path::new(path);
        if !path.is_absolute() {
            let message = format!(":include: needs an absolute path, not `{}`", path.display());
            return self.error(file, line, message);
        }
        if depth >= MAX_INCLUDE_DEPTH {
            let message = format!(":include: nested deeper than {MAX_INCLUDE_DEPTH} files");
            return self.error(file, line, message);
        }
        let text = match (self.load)(path) {
            Ok(text) => text,
            Err(e) => {
                let message = format!("cannot read :include: file {}: {e}", path.display());
                return self.error(file, line, message);
            }
        };
        if !self.files.iter().any(|f| f == path) {
            self.files.push(path.to_path_buf());
        }
        for (i, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            self.parse_targets(trimmed, path, i + 1, depth + 1, out);
        }
    }
}

/// Splits an entry's first line into the normalized name and the text after the colon.
fn split_name(line: &str) -> Result<(String, &str), String> {
    let (name, rest) = if let Some(quoted) = line.strip_prefix('"') {
        let end = closing_quote(quoted).ok_or("unterminated quote in alias name")?;
        let name = unescape(&quoted[..end]);
        let rest = quoted[end + 1..].trim_start();
        let rest = rest
            .strip_prefix(':')
            .ok_or("missing ':' after alias name")?;
        (name, rest)
    } else {
        let colon = line.find(':').ok_or("missing ':' after alias name")?;
        let name = line[..colon].trim();
        if name.chars().any(char::is_whitespace) {
            return Err(format!(
                "alias name `{name}` contains whitespace (quote it)"
            ));
        }
        if name.contains('"') {
            return Err("unterminated quote in alias name".to_string());
        }
        (name.to_string(), &line[colon + 1..])
    };
    if name.is_empty() {
        return Err("empty alias name".to_string());
    }
    if name.contains('@') && !line.starts_with('"') {
        return Err(format!(
            "alias name `{name}` is an address; aliases(5) names are local parts"
        ));
    }
    Ok((name.to_lowercase(), rest))
}

/// Byte offset of the quote that closes a quoted string whose opening quote was just consumed.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits at commas outside quoted strings; empty pieces are dropped (`a, , b` and a trailing
/// comma before a continuation line are common).
fn split_targets(text: &str) -> Result<Vec<&str>, String> {
    let mut pieces = Vec::new();
    let (mut start, mut in_quotes, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                pieces.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err(format!("unterminated quote in `{}`", text[start..].trim()));
    }
    pieces.push(&text[start..]);
    Ok(pieces
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect())
}

fn parse_target(piece: &str, opts: AliasOptions) -> Result<Target, String> {
    // A fully quoted target: a command or file with spaces, or a quoted local name.
    if let Some(inner) = piece.strip_prefix('"') {
        if let Some(end) = closing_quote(inner) {
            if end + 1 == inner.len() {
                let inner = unescape(&inner[..end]);
                if inner.starts_with('|') || inner.starts_with('/') {
                    return parse_target(&inner, opts);
                }
                return user_name(&inner).map(Target::Name);
            }
        }
    }
    if let Some(cmd) = piece.strip_prefix('|') {
        let cmd = cmd.trim();
        if cmd.is_empty() {
            return Err("empty command after `|`".to_string());
        }
        if !opts.allow_commands {
            return Err(format!(
                "command target `{piece}` refused: the action does not set allow_commands"
            ));
        }
        return Ok(Target::Command(cmd.to_string()));
    }
    if piece.starts_with('/') {
        if !opts.allow_files {
            return Err(format!(
                "file target `{piece}` refused: the action does not set allow_files"
            ));
        }
        return Ok(Target::File(PathBuf::from(piece)));
    }
    if piece.starts_with(':') {
        return Err(format!("unknown target `{piece}`"));
    }
    if let Some(user) = piece.strip_prefix('\\') {
        let user = check_local(user)?;
        return Ok(Target::User(strip_detail(&user).to_string()));
    }
    if piece.contains('@') {
        let address =
            Address::parse(piece).map_err(|e| format!("invalid address `{piece}`: {e}"))?;
        // In a local domain the local part is expanded as a name: it must name someone.
        user_name(address.local_part())?;
        return Ok(Target::Address(address));
    }
    check_local(piece).map(Target::Name)
}

/// Validates a bare local name and returns it lower-cased.
fn check_local(name: &str) -> Result<String, String> {
    if name.chars().any(char::is_whitespace) {
        return Err(format!(
            "target `{name}` contains whitespace (missing comma?)"
        ));
    }
    Address::from_parts(name, "localhost")
        .map_err(|e| format!("invalid local name `{name}`: {e}"))?;
    user_name(name)
}

/// The one way a written name becomes a table key or a user name: normalized once, and never
/// empty (`""`, `\""` and `"  "` all name nobody).
fn user_name(written: &str) -> Result<String, String> {
    let name = normalize_local(written);
    let bare = strip_detail(&name);
    if bare.trim().is_empty() {
        return Err(format!(
            "target `{written}` names no user (empty local part)"
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    #[test]
    fn a_quoted_blank_target_is_an_error_not_an_empty_user() {
        // Found by the aliases fuzz target: `"\x0c"` expanded to the user "".
        let errors = Aliases::parse_with_loader(
            "urooxkm:, \"\x0c\x0c\"\n",
            Path::new("aliases"),
            AliasOptions::default(),
            &mut |_| Err(io::Error::from(io::ErrorKind::NotFound)),
        )
        .unwrap_err();
        assert_eq!(errors[0].line, 1);
        assert!(errors[0].message.contains("names no user"), "{}", errors[0]);
    }

    fn parse(text: &str) -> Result<Aliases, Vec<TableError>> {
        Aliases::parse_with_loader(
            text,
            Path::new("aliases"),
            AliasOptions::default(),
            &mut |_| Err(io::Error::from(io::ErrorKind::NotFound)),
        )
    }

    #[test]
    fn an_escaped_quoted_empty_name_is_an_error_not_an_empty_user() {
        // Found by the aliases fuzz target: `\""` unquoted to the user "".
        for text in [
            "ticon: \\\"\"\n",
            "a: \"\\\"\\\"\"\n",
            "a: \"\"@localhost\n",
        ] {
            match parse(text) {
                Err(errors) => assert!(
                    errors[0].line == 1 && errors[0].message.contains("names no user"),
                    "{text:?}: {}",
                    errors[0]
                ),
                Ok(aliases) => {
                    let targets = aliases.expand("a", &["localhost".into()]).unwrap();
                    for t in targets.into_iter().flatten() {
                        assert_ne!(t, AliasTarget::User(String::new()), "{text:?}");
                    }
                }
            }
        }
    }
}
