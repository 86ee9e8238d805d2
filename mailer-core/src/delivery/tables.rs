//! What delivery reads from files: alias tables, secrets and DKIM keys. They are read once
//! per start or reload and shared by everything built from them, so the checks, the ways out
//! and the signer all see the same contents, and a file edited in between cannot make them
//! disagree.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Action, AddressList, Config, Diagnostic, LocalAction};
use crate::delivery::dkim::DkimSigning;
use crate::tables::addresses::AddressTable;
use crate::tables::aliases::{AliasOptions, Aliases};
use crate::tables::secrets::Secrets;

/// The loaded tables and keys of one configuration.
#[derive(Default)]
pub struct Tables {
    /// By local action name.
    aliases: HashMap<String, Arc<Aliases>>,
    /// By table name.
    secrets: HashMap<String, Arc<Secrets>>,
    /// The relay actions' DKIM keys.
    pub dkim: Arc<DkimSigning>,
    /// Address tables of the match rules, by table name.
    lists: HashMap<String, Arc<AddressTable>>,
}

impl Tables {
    /// Reads every table and key the actions use, each file once. Every problem is returned,
    /// as `FILE:LINE[:COL]: reason`.
    pub fn load(config: &Config) -> Result<Tables, Vec<String>> {
        let mut tables = Tables::default();
        let mut problems = Vec::new();
        let mut alias_files: HashMap<(&str, AliasOptions), Arc<Aliases>> = HashMap::new();
        for (name, action) in &config.actions {
            match action {
                Action::Local(local) => {
                    let Some(table) = &local.alias else { continue };
                    let Some(path) = config.tables.get(table) else {
                        continue;
                    };
                    let opts = alias_options(local);
                    if let Some(loaded) = alias_files.get(&(table.as_str(), opts)) {
                        tables.aliases.insert(name.clone(), loaded.clone());
                        continue;
                    }
                    match Aliases::load(path, opts) {
                        Ok(aliases) => {
                            let aliases = Arc::new(aliases);
                            alias_files.insert((table, opts), aliases.clone());
                            tables.aliases.insert(name.clone(), aliases);
                        }
                        Err(errors) => problems.extend(errors.iter().map(|e| e.to_string())),
                    }
                }
                Action::Relay(relay) => {
                    let Some(table) = &relay.auth else { continue };
                    if !tables.secrets.contains_key(table) {
                        let Some(path) = config.tables.get(table) else {
                            continue;
                        };
                        match Secrets::load(path) {
                            Ok(secrets) => {
                                tables.secrets.insert(table.clone(), Arc::new(secrets));
                            }
                            Err(errors) => {
                                problems.extend(errors.iter().map(|e| e.to_string()));
                                continue;
                            }
                        }
                    }
                    let secrets = &tables.secrets[table];
                    for (i, url) in relay.relays.iter().enumerate() {
                        let Some(label) = &url.label else { continue };
                        if secrets.get(label).is_none() {
                            let path = config.tables.get(table).map(|p| p.display().to_string());
                            problems.push(at(
                                config,
                                &format!("actions.{name}.relay[{i}]"),
                                format!(
                                    "secrets table `{table}` ({}) has no label `{label}`",
                                    path.unwrap_or_default()
                                ),
                            ));
                        }
                    }
                }
            }
        }
        for rule in &config.matches {
            for condition in [&rule.mail_from, &rule.rcpt_to].into_iter().flatten() {
                let AddressList::Table(name) = &condition.list else {
                    continue;
                };
                if tables.lists.contains_key(name) {
                    continue;
                }
                let Some(path) = config.tables.get(name) else {
                    continue;
                };
                match AddressTable::load(path) {
                    Ok(list) => {
                        tables.lists.insert(name.clone(), Arc::new(list));
                    }
                    Err(errors) => problems.extend(errors.iter().map(|e| e.to_string())),
                }
            }
        }
        match DkimSigning::from_config(config) {
            Ok(dkim) => tables.dkim = Arc::new(dkim),
            Err(errors) => problems.extend(errors),
        }
        if problems.is_empty() {
            Ok(tables)
        } else {
            problems.sort();
            problems.dedup();
            Err(problems)
        }
    }

    /// The aliases table of a local action, if it has one.
    pub fn aliases(&self, action: &str) -> Option<Arc<Aliases>> {
        self.aliases.get(action).cloned()
    }

    /// The match rules' address tables, for [`crate::policy::Router::with_lists`].
    pub fn lists(&self) -> HashMap<String, Arc<AddressTable>> {
        self.lists.clone()
    }

    /// A secrets table by name.
    pub fn secrets(&self, table: &str) -> Option<&Secrets> {
        self.secrets.get(table).map(|s| &**s)
    }
}

fn alias_options(action: &LocalAction) -> AliasOptions {
    AliasOptions {
        allow_commands: action.allow_commands,
        allow_files: action.allow_files,
    }
}

/// A problem at the position of a configuration key.
pub(crate) fn at(config: &Config, key: &str, message: String) -> String {
    let (line, col) = config.positions.get(key);
    Diagnostic::new(&config.source, line, col, message).to_string()
}
