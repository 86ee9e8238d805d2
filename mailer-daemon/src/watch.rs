//! The deliverability watch: `mailer check` run by the daemon at start and every
//! `[check] interval`, so DNS drifting away from the relay setup is noticed. Each failing
//! check is logged once when it starts failing and once when it recovers; the latest status of
//! every check is kept for the metrics endpoint.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use mailer_core::check::{run_checks, CheckInput, Status};
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
