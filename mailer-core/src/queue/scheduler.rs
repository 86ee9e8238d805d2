//! The scheduler: delivers due messages, records each recipient's outcome durably before
//! moving on, retries with backoff, warns and expires, and bounces to the sender.
//!
//! A recipient marked delivered in the envelope is never sent again; only a delivery in
//! flight at a crash can repeat. Messages enter through [`Scheduler::enqueue`] the moment
//! they are durable, so delivery starts without polling.
//!
//! Time and randomness are parameters: every decision takes `now`, the retry jitter comes
//! from the scheduler's own generator (seedable). Only [`Scheduler::run`], the driver, reads
//! the clock; tests step [`Scheduler::tick`] through days of virtual time.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify, Semaphore};

use super::{Envelope, QueueId, Recipient, RecipientState, Spool};
use crate::address::Address;
use crate::delivery::bounce::{build_dsn, DsnInput, DsnKind, DsnRecipient};
use crate::delivery::dispatch::{Deliverer, Job, Observation};
use crate::delivery::{EnhancedStatus, Failure, FailureKind, Outcome};
use crate::time::{from_unix_seconds, unix_seconds};

/// Retry and expiry settings (the `[queue]` section).
#[derive(Clone, Debug)]
pub struct Timing {
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub lifetime: Duration,
    pub warn_after: Duration,
}

impl From<&crate::config::Config> for Timing {
    fn from(config: &crate::config::Config) -> Timing {
        let q = &config.queue;
        Timing {
            retry_min: q.retry_min,
            retry_max: q.retry_max,
            lifetime: q.lifetime,
            warn_after: q.warn_after,
        }
    }
}

struct State {
    messages: BTreeMap<QueueId, Envelope>,
    in_flight: HashSet<QueueId>,
    /// Messages whose state in memory is newer than on disk (a write failed: disk full, I/O
    /// error), with the unix second of the next write attempt. Until the write succeeds they
    /// are not delivered: what memory says was delivered stays delivered, and nothing more
    /// is sent that a crash could make us send again.
    unsynced: BTreeMap<QueueId, i64>,
}

/// Why an attempt stopped early.
enum Stop {
    /// The message could not be read: nothing was delivered, the state is unchanged.
    Read(io::Error),
    /// A new state could not be written: memory holds it, the disk the previous one.
    Write(io::Error),
}

/// How soon a failed queue write is tried again at most: soon, since deliveries of the
/// message wait for it (never later than `retry_min`), but not in a tight loop on a full disk.
const SYNC_RETRY_MAX: Duration = Duration::from_secs(5);

pub struct Scheduler<D> {
    spool: Arc<Spool>,
    deliverer: Arc<D>,
    /// Swapped on reload; read once per attempt.
    timing: std::sync::RwLock<Timing>,
    hostname: String,
    state: Mutex<State>,
    wake: Notify,
    slots: Arc<Semaphore>,
    /// The retry jitter's source.
    rng: Mutex<fastrand::Rng>,
}

/// How many messages are delivered at once. Each holds an open queue file, its header
/// section and a chunk while it waits for a relay connection, so this stays near the relay's
/// connection limits: more would only queue inside the pool.
const PARALLEL_MESSAGES: usize = 20;

impl<D: Deliverer> Scheduler<D> {
    pub fn new(
        spool: Arc<Spool>,
        deliverer: Arc<D>,
        timing: Timing,
        hostname: String,
    ) -> Arc<Self> {
        Arc::new(Scheduler {
            spool,
            deliverer,
            timing: std::sync::RwLock::new(timing),
            hostname,
            state: Mutex::new(State {
                messages: BTreeMap::new(),
                in_flight: HashSet::new(),
                unsynced: BTreeMap::new(),
            }),
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(PARALLEL_MESSAGES)),
            rng: Mutex::new(fastrand::Rng::new()),
        })
    }

    /// Draws the retry jitter from a generator seeded with `seed`, so a test's schedule
    /// repeats exactly.
    pub fn seed(&self, seed: u64) {
        *self.rng.lock().unwrap_or_else(|p| p.into_inner()) = fastrand::Rng::with_seed(seed);
    }

    /// Reports one recipient's outcome to the deliverer, for logs and metrics.
    fn observe(&self, env: &Envelope, i: usize, outcome: &Outcome, now: SystemTime) {
        let recipient = &env.recipients[i];
        self.deliverer.observe(&Observation {
            queue_id: &env.id,
            to: &recipient.address,
            action: &recipient.action,
            delay: now.duration_since(env.arrived_at()).unwrap_or_default(),
            outcome,
        });
    }

    fn jitter(&self) -> f64 {
        self.rng.lock().unwrap_or_else(|p| p.into_inner()).f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a durable message; it is attempted at once if due.
    pub fn enqueue(&self, envelope: Envelope) {
        self.lock().messages.insert(envelope.id, envelope);
        self.wake.notify_one();
    }

    /// A snapshot of the queue, in arrival order.
    pub fn snapshot(&self) -> Vec<Envelope> {
        self.lock().messages.values().cloned().collect()
    }

    /// Messages queued, messages held, and the arrival (unix seconds) of the oldest: what the
    /// gauges show, without copying the queue.
    pub fn summary(&self) -> (usize, usize, Option<i64>) {
        let state = self.lock();
        let held = state.messages.values().filter(|e| e.held).count();
        let oldest = state.messages.values().map(|e| e.arrived).min();
        (state.messages.len(), held, oldest)
    }

    /// Messages being delivered right now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// Takes a queued message that is not being delivered out of the scheduler's hands until
    /// the caller removes it from `in_flight`; its envelope as it stands.
    fn claim(&self, id: QueueId) -> Option<Envelope> {
        let mut state = self.lock();
        if state.in_flight.contains(&id) {
            return None;
        }
        let env = state.messages.get(&id).cloned()?;
        state.in_flight.insert(id);
        Some(env)
    }

    /// Applies `f` to a queued message that is not being delivered, persisting the change.
    /// Returns false if no such message (or it is in flight). The message is claimed while
    /// its envelope is written, so the write (an fsync) happens outside the lock.
    pub fn modify(&self, id: QueueId, f: impl FnOnce(&mut Envelope)) -> io::Result<bool> {
        let Some(mut updated) = self.claim(id) else {
            return Ok(false);
        };
        f(&mut updated);
        let written = self.spool.update(&updated);
        let mut state = self.lock();
        state.in_flight.remove(&id);
        if written.is_ok() {
            state.messages.insert(id, updated);
            // The whole envelope was written: a write that failed before is made good.
            state.unsynced.remove(&id);
        }
        drop(state);
        self.wake.notify_one();
        written.map(|()| true)
    }

    /// The retry and expiry settings in effect.
    pub fn timing(&self) -> Timing {
        self.timing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the retry and expiry settings (on reload); applies from the next attempt.
    pub fn set_timing(&self, timing: Timing) {
        *self.timing.write().unwrap_or_else(|p| p.into_inner()) = timing;
        self.wake.notify_one();
    }

    /// One queued message, if present.
    pub fn get(&self, id: QueueId) -> Option<Envelope> {
        self.lock().messages.get(&id).cloned()
    }

    /// Holds (`held = true`) or releases messages: one, or every message when `id` is `None`.
    /// Returns how many changed; a message in flight is skipped (its attempt is under way).
    pub fn set_held(&self, id: Option<QueueId>, held: bool) -> io::Result<usize> {
        let ids: Vec<QueueId> = match id {
            Some(id) => vec![id],
            None => self.lock().messages.keys().copied().collect(),
        };
        let mut n = 0;
        for id in ids {
            let mut changed = false;
            if self.modify(id, |env| {
                changed = env.held != held;
                env.held = held;
            })? && changed
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Fails every pending recipient of a message at `now`, with a DSN to its sender, as if
    /// its lifetime had ended. Returns false if no such message, or if it is in flight.
    pub async fn bounce_now(&self, id: QueueId, reason: &str, now: SystemTime) -> io::Result<bool> {
        let Some(env) = self.claim(id) else {
            return Ok(false);
        };
        let result = self.bounce_claimed(env, reason, now).await;
        self.lock().in_flight.remove(&id);
        self.wake.notify_one();
        result.map(|()| true)
    }

    async fn bounce_claimed(
        &self,
        mut env: Envelope,
        reason: &str,
        now: SystemTime,
    ) -> io::Result<()> {
        let spool = self.spool.clone();
        let opened = env.clone();
        let message = blocking(move || spool.open_content(&opened)).await?;
        let mut failed = Vec::new();
        for i in 0..env.recipients.len() {
            if env.recipients[i].state != RecipientState::Pending {
                continue;
            }
            let failure =
                Failure::permanent(FailureKind::Administrative, EnhancedStatus(5, 0, 0), reason);
            self.observe(&env, i, &Outcome::Failed(failure.clone()), now);
            let r = &mut env.recipients[i];
            r.state = RecipientState::Failed;
            r.last_error = Some(reason.to_string());
            failed.push((i, failure));
        }
        // The bounce first: if it cannot be stored, the message stays as it was.
        if !failed.is_empty() {
            self.bounce(&env, message.head(), &failed, DsnKind::Failure, now)
                .await?;
        }
        if let Err(e) = self.sync(&env).await {
            self.keep_unsynced(env, &e, now);
            return Err(e);
        }
        Ok(())
    }

    /// Makes every pending recipient due at `now` (all messages, or one); a message in flight
    /// is skipped (its attempt is under way). Returns how many messages it made due.
    ///
    /// In memory only: a flush asks for an attempt now and changes nothing an attempt would
    /// not, so it is not worth a write per message (on a deep queue, thousands of fsyncs before
    /// the first delivery). The next write of each envelope carries it; if the daemon stops
    /// first, the messages keep the schedule they had on disk.
    pub fn flush(&self, id: Option<QueueId>, now: SystemTime) -> usize {
        let now = unix_seconds(now);
        let mut n = 0;
        let mut state = self.lock();
        let State {
            messages,
            in_flight,
            ..
        } = &mut *state;
        let due = |env: &mut Envelope| {
            for r in &mut env.recipients {
                if r.state == RecipientState::Pending {
                    r.next_attempt = r.next_attempt.min(now);
                }
            }
        };
        match id {
            Some(id) => {
                if let Some(env) = messages.get_mut(&id).filter(|_| !in_flight.contains(&id)) {
                    due(env);
                    n = 1;
                }
            }
            None => {
                for (id, env) in messages.iter_mut() {
                    if !in_flight.contains(id) {
                        due(env);
                        n += 1;
                    }
                }
            }
        }
        drop(state);
        self.wake.notify_one();
        n
    }

    /// Removes a message without delivering it.
    /// The message is claimed while its files go (an fsync), so the lock is not held.
    pub fn remove(&self, id: QueueId) -> io::Result<bool> {
        if self.claim(id).is_none() {
            return Ok(false);
        }
        let removed = self.spool.remove(id);
        let mut state = self.lock();
        state.in_flight.remove(&id);
        if removed.is_ok() {
            state.messages.remove(&id);
            state.unsynced.remove(&id);
        }
        removed.map(|()| true)
    }

    /// The driver: attempts what is due by the system clock, sleeps until the next message
    /// is due or a new one arrives, until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let Some(next) = self.start_due(SystemTime::now()).await.1 else {
                return;
            };
            let sleep = next
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Attempts every message due at `now` and waits for the attempts to finish; returns
    /// when the next message is due. Lets a test step through days in milliseconds.
    pub async fn tick(self: &Arc<Self>, now: SystemTime) -> Option<SystemTime> {
        let (attempts, _) = self.start_due(now).await;
        for attempt in attempts {
            let _ = attempt.await;
        }
        // Asked again: the attempts rescheduled their messages, and bounces arrived.
        let (due, next) = self.schedule(now);
        if due.is_empty() {
            next
        } else {
            Some(now)
        }
    }

    /// Starts an attempt of each message due at `now`, at most [`PARALLEL_MESSAGES`] at a
    /// time. Returns the attempts and when the next message not yet due will be (`None`
    /// outside: the slots are closed, the scheduler is stopping).
    async fn start_due(
        self: &Arc<Self>,
        now: SystemTime,
    ) -> (Vec<tokio::task::JoinHandle<()>>, Option<Option<SystemTime>>) {
        let (due, next) = self.due(now);
        let mut attempts = Vec::with_capacity(due.len());
        for id in due {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return (attempts, None);
            };
            let this = self.clone();
            attempts.push(tokio::spawn(async move {
                this.attempt(id, now).await;
                drop(permit);
            }));
        }
        (attempts, Some(next))
    }

    /// Waits until no delivery is in flight, at most `grace`.
    /// Then tries once more to write what memory knows and the disk does not: a state lost at
    /// exit means its delivered recipients are sent again after the restart.
    pub async fn drain(&self, grace: Duration) -> bool {
        let _ =
            tokio::time::timeout(grace, self.slots.acquire_many(PARALLEL_MESSAGES as u32)).await;
        let unsynced: Vec<Envelope> = {
            let state = self.lock();
            state
                .unsynced
                .keys()
                .filter(|id| !state.in_flight.contains(id))
                .filter_map(|id| state.messages.get(id).cloned())
                .collect()
        };
        for env in unsynced {
            match self.sync(&env).await {
                Ok(()) => {
                    self.lock().unsynced.remove(&env.id);
                }
                Err(e) => tracing::error!(
                    queue_id = %env.id,
                    error = %e,
                    "cannot write the queue at exit; its delivered recipients will be sent again"
                ),
            }
        }
        self.in_flight() == 0
    }

    /// Claims due messages; returns them and the time of the next one that is not yet due.
    fn due(&self, now: SystemTime) -> (Vec<QueueId>, Option<SystemTime>) {
        let (due, next) = self.schedule(now);
        let mut state = self.lock();
        for id in &due {
            state.in_flight.insert(*id);
        }
        (due, next)
    }

    /// The messages due at `now` (not claimed), and when the next one not yet due will be.
    fn schedule(&self, now: SystemTime) -> (Vec<QueueId>, Option<SystemTime>) {
        let now_s = unix_seconds(now);
        let state = self.lock();
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        for (id, env) in &state.messages {
            if state.in_flight.contains(id) {
                continue;
            }
            // A failed write waits for its own retry, held or not.
            let earliest = match state.unsynced.get(id) {
                Some(&retry) => Some(retry),
                None if env.held => continue,
                None => env
                    .recipients
                    .iter()
                    .filter(|r| r.state == RecipientState::Pending)
                    .map(|r| r.next_attempt)
                    .min(),
            };
            match earliest {
                Some(t) if t <= now_s => due.push(*id),
                Some(t) => next = Some(next.map_or(t, |n: i64| n.min(t))),
                // Nothing pending: finished but not yet removed; attempt() cleans it up.
                None => due.push(*id),
            }
        }
        (due, next.map(from_unix_seconds))
    }

    async fn attempt(self: Arc<Self>, id: QueueId, now: SystemTime) {
        let claimed = {
            let state = self.lock();
            state
                .messages
                .get(&id)
                .cloned()
                .map(|env| (env, state.unsynced.contains_key(&id)))
        };
        if let Some((mut env, unsynced)) = claimed {
            self.attempt_claimed(&mut env, unsynced, now).await;
        }
        self.lock().in_flight.remove(&id);
        self.wake.notify_one();
    }

    async fn attempt_claimed(&self, env: &mut Envelope, unsynced: bool, now: SystemTime) {
        let id = env.id;
        if unsynced {
            // The write that failed comes first; nothing is delivered until it is made.
            if let Err(e) = self.sync(env).await {
                let env = env.clone();
                return self.keep_unsynced(env, &e, now);
            }
            self.lock().unsynced.remove(&id);
            tracing::info!(queue_id = %id, "queue state written after an earlier failure");
            if env.is_done() {
                return;
            }
        }
        match self.attempt_message(env, now).await {
            Ok(()) if env.is_done() => {}
            Ok(()) => {
                self.lock().messages.insert(id, env.clone());
            }
            Err(Stop::Read(e)) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read the queued message");
                self.postpone(id, &e, now);
            }
            Err(Stop::Write(e)) => self.keep_unsynced(env.clone(), &e, now),
        }
    }

    /// Keeps `env` as the message's state in memory after its write failed, and schedules
    /// the write again.
    fn keep_unsynced(&self, env: Envelope, error: &io::Error, now: SystemTime) {
        tracing::error!(
            queue_id = %env.id,
            error = %error,
            "cannot write the queue; the message's state is kept in memory and its deliveries wait for the write"
        );
        let wait = self.timing().retry_min.min(SYNC_RETRY_MAX).as_secs().max(1);
        let retry = unix_seconds(now) + wait as i64;
        let mut state = self.lock();
        state.unsynced.insert(env.id, retry);
        state.messages.insert(env.id, env);
    }

    /// Writes the message's state: its envelope, or, once every recipient is done, its
    /// removal from the queue. On success the message leaves memory when done.
    async fn sync(&self, env: &Envelope) -> io::Result<()> {
        let spool = self.spool.clone();
        let id = env.id;
        if env.is_done() {
            blocking(move || spool.remove(id)).await?;
            let mut state = self.lock();
            state.messages.remove(&id);
            state.unsynced.remove(&id);
        } else {
            let env = env.clone();
            blocking(move || spool.update(&env)).await?;
        }
        Ok(())
    }

    /// After the message file could not be read (nothing was delivered) it waits one retry
    /// interval, so a missing or unreadable file is not retried in a tight loop.
    fn postpone(&self, id: QueueId, error: &io::Error, now: SystemTime) {
        let retry = unix_seconds(now) + self.timing().retry_min.as_secs().max(1) as i64;
        if let Some(env) = self.lock().messages.get_mut(&id) {
            for r in &mut env.recipients {
                if r.state == RecipientState::Pending {
                    r.next_attempt = r.next_attempt.max(retry);
                    r.last_error = Some(format!("queue: {error}"));
                }
            }
        }
    }

    /// Delivers the due recipients of `env`, group by group, and records each group's
    /// outcome before the next: the bounce for its failures first, then the new state.
    async fn attempt_message(&self, env: &mut Envelope, now: SystemTime) -> Result<(), Stop> {
        let id = env.id;
        let spool = self.spool.clone();
        let opened = env.clone();
        let message = Arc::new(
            blocking(move || spool.open_content(&opened))
                .await
                .map_err(Stop::Read)?,
        );
        let now_s = unix_seconds(now);
        let timing = self.timing();
        let expires = env.arrived + timing.lifetime.as_secs() as i64;
        let retry_at = |attempts| next_attempt(&timing, now_s, attempts, expires, self.jitter());

        let mut failed = expire(env, now_s, expires);
        failed.extend(self.reroute(env, now_s));
        for (i, f) in &failed {
            self.observe(env, *i, &Outcome::Failed(f.clone()), now);
        }
        let mut settled = false;
        for (action, indices) in due_groups(env, now_s) {
            let job = Job {
                queue_id: id.to_string(),
                action,
                sender: env.sender.clone(),
                recipients: indices
                    .iter()
                    .map(|&i| env.recipients[i].address.clone())
                    .collect(),
                message: message.clone(),
            };
            let attempt = self.deliverer.deliver(job).await;
            for (pos, &i) in indices.iter().enumerate() {
                if let Some(outcome) = attempt.outcomes.get(pos) {
                    self.observe(env, i, outcome, now);
                }
            }
            failed.extend(record(env, &indices, &attempt.outcomes, retry_at));
            for (pos, address) in attempt.forwards {
                let Some(&from) = indices.get(pos) else {
                    continue;
                };
                let action = self.deliverer.route_from(env.sender.as_ref(), &address);
                if let Some(unrouted) = add_forward(env, from, address, action, now_s) {
                    let i = env.recipients.len() - 1;
                    self.observe(env, i, &Outcome::Failed(unrouted.clone()), now);
                    failed.push((i, unrouted));
                }
            }
            // Durable before the next group: a delivered recipient is never sent again.
            self.settle(env, &mut failed, message.head(), now, &retry_at)
                .await?;
            settled = true;
        }
        // Expiries without a delivery, or a message found finished.
        if !failed.is_empty() || (!settled && env.is_done()) {
            self.settle(env, &mut failed, message.head(), now, &retry_at)
                .await?;
        }

        if let Some(delayed) = delay_notice_due(env, &timing, now_s) {
            let until = from_unix_seconds(expires);
            match self
                .bounce(env, message.head(), &delayed, DsnKind::Delay { until }, now)
                .await
            {
                Ok(()) => {
                    env.warned = true;
                    self.sync(env).await.map_err(Stop::Write)?;
                }
                // Not marked as warned: the notice is tried again at the next attempt.
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot queue the delay notice")
                }
            }
        }
        Ok(())
    }

    /// Pending alias targets that had no route (their failure went back to pending because
    /// its bounce could not be stored) are routed again: by the rules in effect now, or
    /// failed again for the bounce.
    fn reroute(&self, env: &mut Envelope, now: i64) -> Vec<(usize, Failure)> {
        let mut failed = Vec::new();
        for i in 0..env.recipients.len() {
            let r = &env.recipients[i];
            if r.state != RecipientState::Pending || !r.action.is_empty() || r.next_attempt > now {
                continue;
            }
            match self.deliverer.route_from(env.sender.as_ref(), &r.address) {
                Some(action) => env.recipients[i].action = action,
                None => {
                    let failure = unrouted(r.original.as_ref().unwrap_or(&r.address), &r.address);
                    env.recipients[i].state = RecipientState::Failed;
                    env.recipients[i].last_error = Some(failure.reason.clone());
                    failed.push((i, failure));
                }
            }
        }
        failed
    }

    /// Makes the outcome so far durable: the DSN for `failed` is stored before the failed
    /// state is written, so a crash in between repeats the bounce instead of losing it. A
    /// DSN that cannot be stored leaves its recipients pending, to fail (and bounce) again
    /// at their next attempt.
    async fn settle(
        &self,
        env: &mut Envelope,
        failed: &mut Vec<(usize, Failure)>,
        head: &[u8],
        now: SystemTime,
        retry_at: &impl Fn(u32) -> i64,
    ) -> Result<(), Stop> {
        if !failed.is_empty() {
            if let Err(e) = self.bounce(env, head, failed, DsnKind::Failure, now).await {
                tracing::error!(queue_id = %env.id, error = %e, "cannot queue the bounce; the recipients stay pending");
                for (i, f) in failed.iter() {
                    let r = &mut env.recipients[*i];
                    r.state = RecipientState::Pending;
                    r.next_attempt = retry_at(r.attempts.max(1));
                    r.last_error = Some(format!(
                        "{} (the bounce could not be queued: {e})",
                        f.reason
                    ));
                }
            }
            failed.clear();
        }
        self.sync(env).await.map_err(Stop::Write)
    }

    /// Queues a DSN about `recipients` to the original sender; never for a bounce. Ok when
    /// the DSN is durable, or when there is nobody to send it to.
    async fn bounce(
        &self,
        env: &Envelope,
        head: &[u8],
        recipients: &[(usize, Failure)],
        kind: DsnKind,
        now: SystemTime,
    ) -> io::Result<()> {
        let Some(sender) = env.sender.clone() else {
            return Ok(());
        };
        let Some(action) = self.deliverer.route(&sender) else {
            tracing::warn!(queue_id = %env.id, to = %sender, "no rule routes the bounce; not sent");
            return Ok(());
        };
        let postmaster = Address::from_parts("MAILER-DAEMON", &self.hostname)
            .unwrap_or_else(|_| Address::parse("MAILER-DAEMON@localhost").expect("valid literal"));
        let dsn_recipients: Vec<DsnRecipient<'_>> = recipients
            .iter()
            .map(|(i, f)| {
                let r = &env.recipients[*i];
                DsnRecipient {
                    original: r.original.as_ref(),
                    final_recipient: &r.address,
                    status: f.status,
                    remote_mta: None,
                    diagnostic: f.remote_reply.as_deref(),
                    reason: &f.reason,
                    last_attempt: Some(now),
                }
            })
            .collect();
        let dsn = build_dsn(&DsnInput {
            reporting_mta: &self.hostname,
            postmaster,
            original_sender: &sender,
            queue_id: &env.id.to_string(),
            arrival: env.arrived_at(),
            now,
            kind,
            recipients: &dsn_recipients,
            original: head,
            message_id_domain: &self.hostname,
        });
        let id = QueueId::generate(now);
        let now_s = unix_seconds(now);
        let bounce = Envelope {
            version: env.version,
            id,
            arrived: now_s,
            sender: None,
            recipients: vec![Recipient {
                address: sender.clone(),
                action,
                state: RecipientState::Pending,
                attempts: 0,
                next_attempt: now_s,
                last_error: None,
                original: None,
            }],
            size: dsn.len() as u64,
            smtputf8: sender.is_utf8(),
            eightbit: false,
            helo: self.hostname.clone(),
            peer: "local".into(),
            held: false,
            warned: false,
            signatures: String::new(),
            eight_bit_content: Some(!dsn.is_ascii()),
        };
        let spool = self.spool.clone();
        let stored = bounce.clone();
        blocking(move || spool.store(&stored, &dsn)).await?;
        tracing::info!(queue_id = %id, about = %env.id, to = %sender, "bounce queued");
        self.enqueue(bounce);
        Ok(())
    }
}

/// Jittered exponential backoff between retry_min and retry_max, never past expiry; `jitter`
/// in `[0, 1)` picks the point in ±20 %.
fn next_attempt(timing: &Timing, now: i64, attempts: u32, expires: i64, jitter: f64) -> i64 {
    let min = timing.retry_min.as_secs_f64().max(1.0);
    let max = timing.retry_max.as_secs_f64().max(min);
    let base = (min * 2f64.powi(attempts.saturating_sub(1).min(30) as i32)).min(max);
    // ±20 % so that messages deferred together do not retry in lockstep.
    let delay = (base * (0.8 + 0.4 * jitter)).clamp(min.min(max), max);
    (now + delay.round() as i64).min(expires.max(now + 1))
}

/// Runs a spool operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// Fails the pending recipients of a message past its lifetime (those tried at least once),
/// with their last error as the reason.
fn expire(env: &mut Envelope, now: i64, expires: i64) -> Vec<(usize, Failure)> {
    if now < expires {
        return Vec::new();
    }
    let mut failed = Vec::new();
    for (i, r) in env.recipients.iter_mut().enumerate() {
        if r.state == RecipientState::Pending && r.attempts > 0 {
            let reason = format!(
                "gave up after {} attempts: {}",
                r.attempts,
                r.last_error.as_deref().unwrap_or("no delivery possible")
            );
            let failure = Failure::permanent(FailureKind::Expired, EnhancedStatus(4, 4, 7), reason);
            failed.push((i, failure));
            r.state = RecipientState::Failed;
        }
    }
    failed
}

/// The pending recipients due now, grouped by the action that delivers them.
fn due_groups(env: &Envelope, now: i64) -> BTreeMap<String, Vec<usize>> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in env.recipients.iter().enumerate() {
        if r.state == RecipientState::Pending && r.next_attempt <= now {
            groups.entry(r.action.clone()).or_default().push(i);
        }
    }
    groups
}

/// Records one attempt's outcomes on the recipients at `indices`; returns the permanent
/// failures. `retry_at(attempts)` schedules a temporary failure.
fn record(
    env: &mut Envelope,
    indices: &[usize],
    outcomes: &[Outcome],
    retry_at: impl Fn(u32) -> i64,
) -> Vec<(usize, Failure)> {
    let mut failed = Vec::new();
    for (pos, &i) in indices.iter().enumerate() {
        let r = &mut env.recipients[i];
        r.attempts += 1;
        match outcomes.get(pos) {
            Some(Outcome::Delivered { .. }) => {
                r.state = RecipientState::Delivered;
                r.last_error = None;
            }
            Some(Outcome::Failed(f)) if f.permanent => {
                r.state = RecipientState::Failed;
                r.last_error = Some(f.reason.clone());
                failed.push((i, f.clone()));
            }
            Some(Outcome::Failed(f)) => {
                r.last_error = Some(f.reason.clone());
                r.next_attempt = retry_at(r.attempts);
            }
            None => {
                r.last_error = Some("delivery gave no result".into());
                r.next_attempt = retry_at(r.attempts);
            }
        }
    }
    failed
}

/// Adds an alias target of recipient `from` as a new recipient (unless already there). A
/// target no rule routes is added as failed, and its failure returned for the DSN: mail to
/// an alias must never vanish with only a log line.
fn add_forward(
    env: &mut Envelope,
    from: usize,
    address: Address,
    action: Option<String>,
    now: i64,
) -> Option<Failure> {
    if env.recipients.iter().any(|r| r.address == address) {
        return None;
    }
    let source = &env.recipients[from];
    let original = source
        .original
        .clone()
        .unwrap_or_else(|| source.address.clone());
    let unrouted = action
        .is_none()
        .then(|| unrouted(&source.address, &address));
    env.recipients.push(Recipient {
        action: action.unwrap_or_default(),
        state: if unrouted.is_some() {
            RecipientState::Failed
        } else {
            RecipientState::Pending
        },
        attempts: 0,
        next_attempt: now,
        last_error: unrouted.as_ref().map(|f| f.reason.clone()),
        original: Some(original),
        address,
    });
    unrouted
}

/// The failure of an alias target no match rule routes.
fn unrouted(alias: &Address, target: &Address) -> Failure {
    Failure::permanent(
        FailureKind::Unrouted,
        EnhancedStatus(5, 4, 4),
        format!("alias {alias} expands to {target}, which no match rule routes"),
    )
}

/// The recipients to name in a delay notice, if one is due: once per message, after
/// `warn_after`, while some recipient is still pending.
fn delay_notice_due(env: &Envelope, timing: &Timing, now: i64) -> Option<Vec<(usize, Failure)>> {
    if env.warned
        || timing.warn_after.is_zero()
        || now < env.arrived + timing.warn_after.as_secs() as i64
    {
        return None;
    }
    let delayed: Vec<(usize, Failure)> = env
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| r.state == RecipientState::Pending)
        .map(|(i, r)| {
            let reason = r
                .last_error
                .clone()
                .unwrap_or_else(|| "not yet delivered".into());
            let notice = Failure::temporary(FailureKind::Delayed, EnhancedStatus(4, 4, 1), reason);
            (i, notice)
        })
        .collect();
    (!delayed.is_empty()).then_some(delayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(recipients: &[(&str, &str)]) -> Envelope {
        Envelope {
            version: 1,
            id: QueueId::generate(from_unix_seconds(1_000)),
            arrived: 1_000,
            sender: Some(Address::parse("app@ublog.tech").unwrap()),
            recipients: recipients
                .iter()
                .map(|(a, action)| Recipient {
                    address: Address::parse(a).unwrap(),
                    action: action.to_string(),
                    state: RecipientState::Pending,
                    attempts: 0,
                    next_attempt: 1_000,
                    last_error: None,
                    original: None,
                })
                .collect(),
            size: 1,
            smtputf8: false,
            eightbit: false,
            helo: "h".into(),
            peer: "local".into(),
            held: false,
            warned: false,
            signatures: String::new(),
            eight_bit_content: None,
        }
    }

    fn timing() -> Timing {
        Timing {
            retry_min: Duration::from_secs(300),
            retry_max: Duration::from_secs(3600),
            lifetime: Duration::from_secs(4 * 86_400),
            warn_after: Duration::from_secs(4 * 3600),
        }
    }

    #[test]
    fn each_recipient_keeps_its_own_outcome() {
        let mut env = envelope(&[("a@x.org", "out"), ("b@x.org", "out"), ("c@x.org", "out")]);
        let outcomes = [
            Outcome::Delivered { reply: None },
            Outcome::Failed(Failure::permanent(
                FailureKind::Local,
                EnhancedStatus(5, 1, 1),
                "no such user",
            )),
            Outcome::Failed(Failure::temporary(
                FailureKind::Local,
                EnhancedStatus(4, 2, 0),
                "mailbox busy",
            )),
        ];
        let failed = record(&mut env, &[0, 1, 2], &outcomes, |_| 9_999);
        let states: Vec<_> = env.recipients.iter().map(|r| r.state).collect();
        assert_eq!(
            states,
            [
                RecipientState::Delivered,
                RecipientState::Failed,
                RecipientState::Pending
            ]
        );
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 1);
        assert_eq!(env.recipients[2].next_attempt, 9_999);
        assert_eq!(
            env.recipients[2].last_error.as_deref(),
            Some("mailbox busy")
        );
        assert!(env.recipients.iter().all(|r| r.attempts == 1));
    }

    #[test]
    fn groups_hold_only_due_pending_recipients_by_action() {
        let mut env = envelope(&[
            ("a@x.org", "out"),
            ("root@localhost", "local"),
            ("b@x.org", "out"),
        ]);
        env.recipients[2].next_attempt = 2_000;
        let groups = due_groups(&env, 1_500);
        assert_eq!(groups["out"], [0]);
        assert_eq!(groups["local"], [1]);
    }

    #[test]
    fn expiry_fails_tried_pending_recipients_with_their_last_error() {
        let mut env = envelope(&[("a@x.org", "out"), ("b@x.org", "out")]);
        env.recipients[0].attempts = 3;
        env.recipients[0].last_error = Some("connection refused".into());
        assert!(expire(&mut env, 1_999, 2_000).is_empty());
        let failed = expire(&mut env, 2_000, 2_000);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].1.status, EnhancedStatus(4, 4, 7));
        assert_eq!(
            failed[0].1.reason,
            "gave up after 3 attempts: connection refused"
        );
        assert_eq!(env.recipients[1].state, RecipientState::Pending);
    }

    #[test]
    fn backoff_grows_from_retry_min_to_retry_max_and_stops_at_expiry() {
        let t = timing();
        for jitter in [0.0, 0.25, 0.5, 0.999] {
            let first = next_attempt(&t, 0, 1, i64::MAX, jitter);
            assert!((240..=360).contains(&first), "{first}");
            let later = next_attempt(&t, 0, 20, i64::MAX, jitter);
            assert!((2880..=3600).contains(&later), "{later}");
            assert_eq!(next_attempt(&t, 0, 1, 100, jitter), 100);
        }
        // The bounds of the jitter: ±20 % of the base.
        assert_eq!(
            next_attempt(&t, 0, 1, i64::MAX, 0.0),
            300,
            "never under retry_min"
        );
        assert_eq!(next_attempt(&t, 0, 2, i64::MAX, 0.0), 480);
        assert_eq!(next_attempt(&t, 0, 2, i64::MAX, 0.999_999), 720);
    }

    #[test]
    fn a_delay_notice_is_due_once_after_warn_after() {
        let t = timing();
        let mut env = envelope(&[("a@x.org", "out")]);
        assert!(delay_notice_due(&env, &t, 1_000 + 4 * 3600 - 1).is_none());
        assert_eq!(
            delay_notice_due(&env, &t, 1_000 + 4 * 3600).map(|d| d.len()),
            Some(1)
        );
        env.warned = true;
        assert!(delay_notice_due(&env, &t, 1_000 + 5 * 3600).is_none());
    }

    #[test]
    fn forwards_remember_the_original_recipient_once() {
        let mut env = envelope(&[("root@localhost", "local")]);
        let pim = Address::parse("pim@example.org").unwrap();
        assert!(add_forward(&mut env, 0, pim.clone(), Some("out".into()), 1_000).is_none());
        assert!(add_forward(&mut env, 0, pim.clone(), Some("out".into()), 1_000).is_none());
        assert_eq!(env.recipients.len(), 2);
        assert_eq!(
            env.recipients[1].original.as_ref().unwrap().to_string(),
            "root@localhost"
        );
        assert_eq!(env.recipients[1].state, RecipientState::Pending);
    }

    #[test]
    fn an_unrouted_alias_target_is_a_failed_recipient_not_a_silent_drop() {
        let mut env = envelope(&[("root@localhost", "local")]);
        let me = Address::parse("me@example.org").unwrap();
        let failure = add_forward(&mut env, 0, me.clone(), None, 1_000).expect("a failure");
        assert!(failure.permanent);
        assert_eq!(failure.status, EnhancedStatus(5, 4, 4));
        assert_eq!(
            failure.reason,
            "alias root@localhost expands to me@example.org, which no match rule routes"
        );
        let r = &env.recipients[1];
        assert_eq!((&r.address, r.state), (&me, RecipientState::Failed));
        assert_eq!(r.original.as_ref().unwrap().to_string(), "root@localhost");
    }
}
