//! Delivery: how a queued message leaves. [`relay`] hands it to a smarthost pool, [`mbox`] and
//! [`maildir`] to a local mailbox, [`bounce`] builds the DSN when it cannot be delivered.
//!
//! Every way out reports one [`Outcome`] per recipient; a [`Failure`] says at once whether to
//! retry, so the queue never has to interpret transport-specific errors.

pub mod bounce;
pub mod content;
pub mod dispatch;
pub mod dkim;
pub mod local;
pub mod mailbox_fs;
pub mod maildir;
pub mod mbox;
pub mod relay;
pub mod tables;

pub use crate::outcome::{EnhancedStatus, Failure, FailureKind, Outcome};
pub use tables::Tables;

/// Alias targets that no match rule routes, one warning each as `FILE:LINE: reason`: mail to
/// them bounces (5.4.4), which an admin wants to learn from `mailer config check`, not from
/// a bounce.
pub fn alias_warnings(config: &crate::config::Config, tables: &Tables) -> Vec<String> {
    use crate::tables::aliases::AliasTarget;
    let router = crate::policy::Router::new(config).with_lists(tables.lists());
    let mut out = Vec::new();
    for name in config.actions.keys() {
        let Some(aliases) = tables.aliases(name) else {
            continue;
        };
        for (alias, line) in aliases.names() {
            let Ok(Some(targets)) = aliases.expand(alias, &config.local_domains) else {
                continue;
            };
            for target in targets {
                if let AliasTarget::Address(address) = target {
                    if router
                        .action_for(crate::policy::router::Origin::Internal, None, &address)
                        .is_none()
                    {
                        out.push(format!(
                            "{}:{line}: alias `{alias}` expands to {address}, which no match rule routes: mail to it will bounce",
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
/// `mailer config check`: the configuration's own file checks (present, readable, private
/// enough), then the contents of alias tables, secrets and DKIM keys, read once into the
/// [`Tables`] the daemon then runs with. Each problem is `FILE:LINE[:COL]: reason`.
pub fn preflight(config: &crate::config::Config) -> Result<Tables, Vec<String>> {
    let problems = config.check_files();
    if !problems.is_empty() {
        return Err(problems.iter().map(|d| d.to_string()).collect());
    }
    Tables::load(config)
}
