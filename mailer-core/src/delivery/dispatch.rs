//! The hand-off between the queue and the ways out: the scheduler gives a [`Job`] (one
//! message, the recipients one action takes) to a [`Deliverer`] and records the [`Attempt`]
//! it gets back. [`Dispatch`] is the deliverer the daemon runs: the actions of the
//! configuration in effect, replaced whole on reload.
//!
//! The types here carry addresses and the message's [`Content`] (read a chunk at a time),
//! not the queue's envelope, so delivery never depends on how the queue stores a message.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::address::Address;
use crate::config::{Action, Config};
use crate::delivery::content::Content;
use crate::delivery::local::LocalDelivery;
use crate::delivery::relay::{MemberFault, MemberStatus, RelayDelivery, Resolve};
use crate::delivery::{EnhancedStatus, Failure, FailureKind, Outcome, Tables};
use crate::policy::router::{LocalCheck, Origin};
use crate::policy::Router;

/// One delivery attempt: the recipients of one message that one action handles.
pub struct Job {
    /// The queue id, for log lines.
    pub queue_id: String,
    pub action: String,
    pub sender: Option<Address>,
    pub recipients: Vec<Address>,
    /// Read a chunk at a time, by every job of the message.
    pub message: Arc<Content>,
}

/// What an attempt produced.
#[derive(Default)]
pub struct Attempt {
    /// One outcome per job recipient, in order.
    pub outcomes: Vec<Outcome>,
    /// Addresses a job recipient was expanded to (aliases), to be routed as new recipients:
    /// (position in the job, address).
    pub forwards: Vec<(usize, Address)>,
    /// The header From did not align with the rewritten envelope sender.
    pub misaligned: bool,
    /// Relay pool members that failed on the way, each with its failure's kind.
    pub faults: Vec<MemberFault>,
}

impl Attempt {
    pub fn of(outcomes: Vec<Outcome>) -> Attempt {
        Attempt {
            outcomes,
            ..Attempt::default()
        }
    }
}

/// One recipient's outcome, as the scheduler reports it.
pub struct Observation<'a> {
    pub queue_id: &'a dyn Display,
    pub to: &'a Address,
    pub action: &'a str,
    /// Since the message arrived, at the scheduler's `now`.
    pub delay: Duration,
    pub outcome: &'a Outcome,
}

impl Observation<'_> {
    /// What happened, as logs and metrics name it.
    pub fn event(&self) -> &'static str {
        match self.outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Failed(f) if f.kind == FailureKind::Expired => "expired",
            Outcome::Failed(f) if f.permanent => "bounced",
            Outcome::Failed(_) => "deferred",
        }
    }
}

/// How mail leaves, as the scheduler sees it.
pub trait Deliverer: Send + Sync + 'static {
    fn deliver(&self, job: Job) -> impl Future<Output = Attempt> + Send;
    /// The action for a new recipient (a bounce's, or an alias target's); `None` if no rule
    /// matches.
    fn route(&self, recipient: &Address) -> Option<String>;
    /// The action for a new recipient of a message from `sender` (an alias target keeps the
    /// message's sender, so `mail_from` rules see it).
    fn route_from(&self, sender: Option<&Address>, recipient: &Address) -> Option<String> {
        let _ = sender;
        self.route(recipient)
    }
    /// Called once per recipient outcome, for logs and metrics.
    fn observe(&self, _observation: &Observation<'_>) {}
}

/// The ways out of one configuration, by action name.
pub struct Ways {
    router: Router,
    locals: HashMap<String, LocalDelivery>,
    relays: HashMap<String, RelayDelivery>,
    /// Where each action's mail goes, as log lines name it: made once, read per outcome.
    via: HashMap<String, String>,
}

impl Ways {
    /// Every action of `config`, ready to deliver with the `tables` read for it; relay hosts
    /// are resolved with `resolver`.
    pub fn new(
        config: &Config,
        tables: &Tables,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Ways, String> {
        let mut locals = HashMap::new();
        let mut relays = HashMap::new();
        for (name, action) in &config.actions {
            match action {
                Action::Local(local) => {
                    let delivery = LocalDelivery::new(config, local, tables.aliases(name));
                    locals.insert(name.clone(), delivery);
                }
                Action::Relay(relay) => {
                    let secrets = relay.auth.as_deref().and_then(|t| tables.secrets(t));
                    let delivery = RelayDelivery::new(config, relay, secrets, resolver.clone())
                        .map_err(|e| format!("action {name}: {e}"))?;
                    relays.insert(name.clone(), delivery);
                }
            }
        }
        let via = config
            .actions
            .keys()
            .map(|name| {
                let via = match relays.get(name) {
                    Some(relay) => relay.hosts().collect::<Vec<_>>().join(","),
                    None => "mailbox".to_string(),
                };
                (name.clone(), via)
            })
            .collect();
        Ok(Ways {
            router: Router::new(config).with_lists(tables.lists()),
            locals,
            relays,
            via,
        })
    }

    /// Whether a local recipient exists. `None`: not a local action, or cannot be told now.
    pub fn local_exists(&self, action: &str, rcpt: &Address) -> Option<bool> {
        self.locals.get(action)?.exists(rcpt)
    }

    pub async fn deliver(&self, job: &Job) -> Attempt {
        if let Some(local) = self.locals.get(&job.action) {
            let recipients: Vec<&Address> = job.recipients.iter().collect();
            // Mailbox writes block (locks, fsync): keep them off the runtime's threads.
            let result = tokio::task::block_in_place(|| {
                local.deliver(job.sender.as_ref(), &recipients, &job.message)
            });
            return Attempt {
                outcomes: result.outcomes,
                forwards: result.forwards,
                ..Attempt::default()
            };
        }
        if let Some(relay) = self.relays.get(&job.action) {
            let result = relay
                .deliver(
                    &job.queue_id,
                    job.sender.as_ref(),
                    &job.recipients,
                    &job.message,
                )
                .await;
            return Attempt {
                outcomes: result.outcomes,
                forwards: Vec::new(),
                misaligned: result.misaligned,
                faults: result.faults,
            };
        }
        let failure = Failure::temporary(
            FailureKind::Unrouted,
            EnhancedStatus(4, 3, 5),
            format!("action {} is not configured", job.action),
        );
        Attempt::of(Outcome::all_failed(job.recipients.len(), &failure))
    }

    /// Where an action's mail goes, for log lines: relay hosts, or `mailbox`.
    pub fn via(&self, action: &str) -> &str {
        self.via.get(action).map_or("none", String::as_str)
    }

    /// The state of every relay pool member, for metrics.
    pub fn relay_status(&self) -> Vec<MemberStatus> {
        self.relays
            .values()
            .flat_map(|r| r.pool().status())
            .collect()
    }
}

/// What the daemon counts about deliveries (metrics live at the edge).
pub trait Observer: Send + Sync + 'static {
    /// After each attempt.
    fn attempt(&self, _job: &Job, _attempt: &Attempt) {}
    /// After each recipient outcome.
    fn outcome(&self, _observation: &Observation<'_>) {}
}

impl Observer for () {}

/// The ways out in effect. Replaced whole on reload: an attempt under way keeps the ways it
/// started with, the next one takes the new.
pub struct Dispatch<O = ()> {
    current: RwLock<Arc<Ways>>,
    observer: O,
}

impl<O: Observer> Dispatch<O> {
    pub fn new(ways: Ways, observer: O) -> Dispatch<O> {
        Dispatch {
            current: RwLock::new(Arc::new(ways)),
            observer,
        }
    }

    pub fn current(&self) -> Arc<Ways> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, ways: Ways) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ways);
    }

    /// The RCPT-time check of local recipients, against the aliases in effect at that moment.
    pub fn local_check(self: &Arc<Self>) -> Arc<LocalCheck> {
        let dispatch = Arc::downgrade(self);
        Arc::new(move |action: &str, rcpt: &Address| {
            dispatch.upgrade()?.current().local_exists(action, rcpt)
        })
    }
}

impl<O: Observer> Deliverer for Dispatch<O> {
    async fn deliver(&self, job: Job) -> Attempt {
        let attempt = self.current().deliver(&job).await;
        self.observer.attempt(&job, &attempt);
        attempt
    }

    fn route(&self, recipient: &Address) -> Option<String> {
        self.route_from(None, recipient)
    }

    fn route_from(&self, sender: Option<&Address>, recipient: &Address) -> Option<String> {
        self.current()
            .router
            .action_for(Origin::Internal, sender, recipient)
            .map(str::to_string)
    }

    fn observe(&self, o: &Observation<'_>) {
        self.observer.outcome(o);
        let (status, detail, kind) = match o.outcome {
            Outcome::Delivered { reply } => ("2.0.0".to_string(), reply.as_deref(), None),
            Outcome::Failed(f) => (
                f.status.to_string(),
                Some(f.reason.as_str()),
                Some(f.kind.label()),
            ),
        };
        let event = o.event();
        tracing::info!(
            queue_id = %o.queue_id,
            recipient = %o.to,
            action = %o.action,
            relay = %self.current().via(o.action),
            status = %status,
            kind = kind,
            delay = format_args!("{}s", o.delay.as_secs()),
            detail = %detail.unwrap_or_default(),
            "{event}"
        );
    }
}
