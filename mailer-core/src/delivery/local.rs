//! A local action: alias expansion, then the recipient's mbox or maildir.
//!
//! Blocking (locks, fsync): the daemon runs it off its async threads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::content::Content;
use super::mailbox_fs::MailboxOwner;
use super::maildir::{deliver_maildir, MaildirOptions};
use super::mbox::{deliver_mbox, expand_path, MboxOptions};
use super::{EnhancedStatus, Failure, FailureKind, Outcome};
use crate::address::Address;
use crate::config::{Config, LocalAction, MailboxKind};
use crate::tables::aliases::{AliasTarget, Aliases};
use crate::tables::users::{lookup_group, lookup_user};

/// What one local delivery produced.
#[derive(Debug, Default)]
pub struct LocalResult {
    /// One outcome per recipient, in order.
    pub outcomes: Vec<Outcome>,
    /// Remote addresses an alias expanded a recipient to: (position, address). They are
    /// routed by the match rules like any recipient.
    pub forwards: Vec<(usize, Address)>,
}

/// A local action ready to deliver.
pub struct LocalDelivery {
    action: LocalAction,
    aliases: Option<Arc<Aliases>>,
    hostname: String,
    local_domains: Vec<String>,
}

impl LocalDelivery {
    /// A local action with its aliases table (loaded by [`super::Tables`]). A relative
    /// mailbox pattern (the embedded default) is taken from the working directory, so it does
    /// not move if that changes later.
    pub fn new(
        config: &Config,
        action: &LocalAction,
        aliases: Option<Arc<Aliases>>,
    ) -> LocalDelivery {
        let mut action = action.clone();
        action.mailbox = absolute_pattern(&action.mailbox);
        LocalDelivery {
            action,
            aliases,
            hostname: config.hostname.clone(),
            local_domains: config.local_domains.clone(),
        }
    }

    /// Whether `rcpt` exists here: an alias, or a system user. `None`: cannot be told now.
    pub fn exists(&self, rcpt: &Address) -> Option<bool> {
        if self
            .aliases
            .as_ref()
            .is_some_and(|a| a.contains(rcpt.local_part()))
        {
            return Some(true);
        }
        lookup_user(&rcpt.user()).ok().map(|found| found.is_some())
    }

    pub fn deliver(
        &self,
        sender: Option<&Address>,
        recipients: &[&Address],
        message: &Content,
    ) -> LocalResult {
        let mut result = LocalResult::default();
        for (pos, rcpt) in recipients.iter().enumerate() {
            let targets = match self.targets(rcpt) {
                Ok(t) => t,
                Err(f) => {
                    result.outcomes.push(Outcome::Failed(f));
                    continue;
                }
            };
            let mut outcome = Outcome::Delivered { reply: None };
            for target in targets {
                let one = match target {
                    AliasTarget::User(user) => self.to_mailbox(&user, rcpt, sender, message),
                    AliasTarget::Address(address) => {
                        result.forwards.push((pos, address));
                        continue;
                    }
                    AliasTarget::Command(_) | AliasTarget::File(_) => {
                        Outcome::Failed(Failure::permanent(
                            FailureKind::Local,
                            EnhancedStatus(5, 3, 0),
                            "command and file alias targets are not delivered by this server",
                        ))
                    }
                };
                outcome = worse(outcome, one);
            }
            result.outcomes.push(outcome);
        }
        result
    }

    /// The alias expansion of a recipient, or the user it names.
    fn targets(&self, rcpt: &Address) -> Result<Vec<AliasTarget>, Failure> {
        let Some(aliases) = &self.aliases else {
            return Ok(vec![AliasTarget::User(rcpt.user())]);
        };
        match aliases.expand(rcpt.local_part(), &self.local_domains) {
            Ok(Some(targets)) => Ok(targets),
            Ok(None) => Ok(vec![AliasTarget::User(rcpt.user())]),
            Err(e) => Err(Failure::permanent(
                FailureKind::Loop,
                EnhancedStatus(5, 4, 6),
                format!("alias expansion failed: {e}"),
            )),
        }
    }

    fn to_mailbox(
        &self,
        user: &str,
        rcpt: &Address,
        sender: Option<&Address>,
        message: &Content,
    ) -> Outcome {
        let account = match lookup_user(user) {
            Ok(Some(u)) => u,
            Ok(None) => {
                return Outcome::Failed(Failure::permanent(
                    FailureKind::Local,
                    EnhancedStatus(5, 1, 1),
                    format!("no such local user: {user}"),
                ))
            }
            Err(e) => {
                return Outcome::Failed(Failure::temporary(
                    FailureKind::Local,
                    EnhancedStatus(4, 3, 0),
                    format!("cannot look up user {user}: {e}"),
                ))
            }
        };
        let owner = if can_chown() {
            match lookup_group("mail") {
                Ok(mail_gid) => Some(MailboxOwner {
                    user: account.name.clone(),
                    uid: account.uid,
                    gid: account.gid,
                    mail_gid,
                }),
                Err(e) => {
                    return Outcome::Failed(Failure::temporary(
                        FailureKind::Local,
                        EnhancedStatus(4, 3, 0),
                        format!("cannot look up group mail: {e}"),
                    ))
                }
            }
        } else {
            None
        };
        let (pattern, maildir) = match &self.action.mailbox {
            MailboxKind::Mbox(p) => (p, false),
            MailboxKind::Maildir(p) => (p, true),
        };
        let path = match expand_path(pattern, user, rcpt.domain(), Some(&account.home)) {
            Ok(p) => p,
            Err(e) => {
                return Outcome::Failed(Failure::temporary(
                    FailureKind::Local,
                    EnhancedStatus(4, 3, 5),
                    format!("mailbox path {pattern}: {e}"),
                ))
            }
        };
        let written = if maildir {
            let mut opts = MaildirOptions::new(self.hostname.clone());
            opts.owner = owner;
            deliver_maildir(&path, message, &opts).map(|_| ())
        } else {
            let opts = MboxOptions {
                owner,
                ..MboxOptions::default()
            };
            deliver_mbox(&path, sender, SystemTime::now(), message, &opts)
        };
        match written {
            Ok(()) => Outcome::Delivered {
                reply: Some(path.display().to_string()),
            },
            Err(f) => Outcome::Failed(f),
        }
    }
}

/// The outcome of a recipient with several targets: the worst one wins, a temporary failure
/// over a permanent one (so the whole recipient is retried), and the first mailbox for logs.
fn worse(so_far: Outcome, next: Outcome) -> Outcome {
    match (&so_far, &next) {
        (Outcome::Delivered { reply: None }, Outcome::Delivered { .. }) => next,
        (Outcome::Delivered { .. }, Outcome::Delivered { .. }) => so_far,
        (Outcome::Delivered { .. }, Outcome::Failed(_)) => next,
        (Outcome::Failed(prev), Outcome::Failed(f)) if prev.permanent && !f.permanent => next,
        _ => so_far,
    }
}

/// Whether mailboxes can be given to their users: as root, or with CAP_CHOWN (the systemd
/// unit runs as an unprivileged user with that capability). A wrong guess is caught where
/// the owner is set: EPERM there is a temporary failure that says so.
fn can_chown() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        const CAP_CHOWN: u64 = 1 << 0;
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .is_some_and(|caps| caps & CAP_CHOWN != 0)
    })
}

fn absolute_pattern(kind: &MailboxKind) -> MailboxKind {
    let fix = |p: &String| -> String {
        if p.starts_with('/') || p.starts_with('~') {
            return p.clone();
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        cwd.join(p).display().to_string()
    };
    match kind {
        MailboxKind::Mbox(p) => MailboxKind::Mbox(fix(p)),
        MailboxKind::Maildir(p) => MailboxKind::Maildir(fix(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(permanent: bool) -> Outcome {
        Outcome::Failed(Failure {
            kind: FailureKind::Local,
            permanent,
            status: EnhancedStatus(if permanent { 5 } else { 4 }, 0, 0),
            remote_reply: None,
            reason: String::new(),
        })
    }

    #[test]
    fn the_worst_target_outcome_decides_a_recipient() {
        let ok = || Outcome::Delivered {
            reply: Some("/var/mail/a".into()),
        };
        assert_eq!(worse(Outcome::Delivered { reply: None }, ok()), ok());
        assert_eq!(worse(ok(), failed(true)), failed(true));
        assert_eq!(worse(failed(true), failed(false)), failed(false));
        assert_eq!(worse(failed(false), failed(true)), failed(false));
        assert_eq!(worse(failed(false), ok()), failed(false));
    }
}
