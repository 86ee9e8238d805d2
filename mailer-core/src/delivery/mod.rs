//! Delivery: how a queued message leaves. [`relay`] hands it to a smarthost pool, [`mbox`] and
//! [`maildir`] to a local mailbox, [`bounce`] builds the DSN when it cannot be delivered.
//!
//! Every way out reports one [`Outcome`] per recipient; a [`Failure`] says at once whether to
//! retry, so the queue never has to interpret transport-specific errors.

pub mod bounce;
pub mod dispatch;
pub mod dkim;
pub mod local;
pub mod mailbox_fs;
pub mod maildir;
pub mod mbox;
pub mod relay;

pub use crate::outcome::{EnhancedStatus, Failure, FailureKind, Outcome};

/// Alias targets that no match rule routes, one warning each as `FILE:LINE: reason`: mail to
/// them bounces (5.4.4), which an admin wants to learn from `mailer config check`, not from
/// a bounce. Tables that do not load are reported by [`preflight`].
pub fn alias_warnings(config: &crate::config::Config) -> Vec<String> {
    use crate::config::Action;
    use crate::tables::aliases::AliasTarget;
    let router = crate::policy::Router::new(config);
    let mut out = Vec::new();
    for action in config.actions.values() {
        let Action::Local(local) = action else {
            continue;
        };
        let Some(Ok(aliases)) = local::load_aliases(config, local) else {
            continue;
        };
        for (name, line) in aliases.names() {
            let Ok(Some(targets)) = aliases.expand(name, &config.local_domains) else {
                continue;
            };
            for target in targets {
                if let AliasTarget::Address(address) = target {
                    if router.action_for(true, &address).is_none() {
                        out.push(format!(
                            "{}:{line}: alias `{name}` expands to {address}, which no match rule routes: mail to it will bounce",
                            aliases.source().display()
                        ));
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Everything delivery needs from files, checked before the daemon starts or reloads and by
/// `mailer config check`: the configuration's own file checks, then alias tables and DKIM keys,
/// each problem as `FILE:LINE[:COL]: reason`.
pub fn preflight(config: &crate::config::Config) -> Vec<String> {
    use crate::config::{Action, Diagnostic};
    let file_problems = config.check_files();
    let mut problems: Vec<String> = file_problems.iter().map(|d| d.to_string()).collect();
    for (name, action) in &config.actions {
        match action {
            Action::Local(local) => {
                // A missing table was reported above, at the line that names it.
                let exists = local
                    .alias
                    .as_ref()
                    .and_then(|t| config.tables.get(t))
                    .is_some_and(|p| p.exists());
                if let Some(Err(errors)) = local::load_aliases(config, local).filter(|_| exists) {
                    problems.extend(errors);
                }
            }
            // Key files that exist and are private enough but hold no usable key.
            Action::Relay(relay) if file_problems.is_empty() => {
                for (i, key) in relay.dkim.iter().enumerate() {
                    if let Err(e) = dkim::read_key(&key.key) {
                        let (line, col) = config
                            .positions
                            .get(&format!("actions.{name}.dkim[{i}].key"));
                        problems.push(
                            Diagnostic::new(&config.source, line, col, e.to_string()).to_string(),
                        );
                    }
                }
            }
            Action::Relay(_) => {}
        }
    }
    problems
}
