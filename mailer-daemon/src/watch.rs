//! The deliverability watch: `mailer check` run by the daemon at start and every
//! `[check] interval`, so DNS drifting away from the relay setup is noticed. Each failing
//! check is logged once when it starts failing and once when it recovers; the latest status of
//! every check is kept for the metrics endpoint. The relay pool probe runs beside it, at the
//! same interval, and exports each member's results and certificate expiry.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailer_core::check::probe::{self, ActionPlan};
use mailer_core::check::{run_checks, CheckInput, Status};
use mailer_core::delivery::relay::Resolve;
use tokio::sync::watch;

use crate::metrics::Metrics;

pub async fn run(
    input: CheckInput,
    interval: Duration,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failing: HashSet<&'static str> = HashSet::new();
    let mut unreachable = false;
    loop {
        match run_checks(&input).await {
            Ok(report) => {
                if std::mem::take(&mut unreachable) {
                    tracing::info!(domain = %input.domain, "deliverability check runs again");
                }
                for check in &report.checks {
                    metrics.check_status(check.id, check.status);
                    if check.status == Status::Unknown {
                        // Neither failed nor recovered: the next run tells.
                        continue;
                    }
                    let fails = check.status == Status::Fail;
                    if fails && failing.insert(check.id) {
                        tracing::warn!(
                            domain = %input.domain,
                            check = check.id,
                            message = %check.message,
                            hint = %check.hint,
                            "deliverability check failed"
                        );
                    } else if !fails && failing.remove(check.id) {
                        tracing::info!(domain = %input.domain, check = check.id, "deliverability check recovered");
                    }
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut unreachable, true) {
                    tracing::warn!(domain = %input.domain, error = %e, "deliverability check could not run");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How long the watch's probe waits for each step of each member.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The relay pool probe (`mailer check --probe`) at start and every `interval`: each check of
/// each member address that starts failing is logged once, and once when it recovers; the
/// latest results and certificate expiry go to the metrics endpoint.
pub async fn run_probe(
    plans: Vec<ActionPlan>,
    interval: Duration,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let resolver = system_resolver();
    let mut failing: HashSet<(String, String, &'static str)> = HashSet::new();
    loop {
        let report = probe::run(&plans, &*resolver, PROBE_TIMEOUT, SystemTime::now()).await;
        metrics.relay_probe(&report, mailer_core::time::unix_seconds(SystemTime::now()));
        for member in &report.members {
            let address = member.address.clone().unwrap_or_default();
            for check in &member.checks {
                let key = (member.relay.clone(), address.clone(), check.id);
                let fails = check.status == Status::Fail;
                if fails && !failing.contains(&key) {
                    tracing::warn!(
                        relay = %member.relay,
                        address = %address,
                        check = check.id,
                        message = %check.message,
                        hint = %check.hint,
                        "relay probe check failed"
                    );
                    failing.insert(key);
                } else if !fails && failing.remove(&key) {
                    tracing::info!(relay = %member.relay, address = %address, check = check.id, "relay probe check recovered");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The system's resolver, as the relay uses it; one that fails every lookup (saying why)
/// when the system configuration cannot be read, so IP literal members are still probed.
pub fn system_resolver() -> Arc<dyn Resolve> {
    let built = hickory_resolver::TokioResolver::builder_tokio()
        .map_err(|e| format!("cannot read the system DNS configuration: {e}"))
        .and_then(|b| {
            b.build()
                .map_err(|e| format!("cannot set up DNS resolution: {e}"))
        });
    match built {
        Ok(r) => Arc::new(r),
        Err(why) => Arc::new(NoResolver(why)),
    }
}

struct NoResolver(String);

impl Resolve for NoResolver {
    fn lookup<'a>(
        &'a self,
        _host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        let why = self.0.clone();
        Box::pin(async move { Err(io::Error::other(why)) })
    }
}
