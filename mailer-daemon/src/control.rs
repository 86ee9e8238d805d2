//! The control socket: queue inspection and control for `mailer queue` and `mailer reload`.
//!
//! Protocol: the client sends one JSON request line, the daemon answers one JSON line,
//! `{"ok": true, "result": …}` or `{"ok": false, "error": "…"}`, and closes. Only root and
//! the daemon's own uid are served (SO_PEERCRED); the socket file is mode 0660.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mailer_core::queue::{Envelope, QueueId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::Engine;

/// One request. `id: None` on flush, hold and release means every message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    List,
    Show { id: String },
    Flush { id: Option<String> },
    Hold { id: Option<String> },
    Release { id: Option<String> },
    Remove { id: String },
    Bounce { id: String },
    Reload,
}

/// What `show` answers: the envelope and the message's header section.
#[derive(Debug, Serialize, Deserialize)]
pub struct Shown {
    pub envelope: Envelope,
    pub headers: String,
}

/// A reload asked for over the socket; answered with a summary or the reason it was refused.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// Largest request line accepted.
const MAX_REQUEST: u64 = 4096;
/// A client that says nothing for this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the control socket (mode 0660), replacing a stale socket file but never a live one.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another daemon answers on it",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Serves the control socket until shutdown, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    engine: Arc<Engine>,
    reload: mpsc::Sender<ReloadRequest>,
    shutdown: watch::Receiver<bool>,
) {
    // SAFETY: geteuid cannot fail and has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    crate::accept::accept_loop("control socket", &listener, shutdown, |stream, _| {
        let engine = engine.clone();
        let reload = reload.clone();
        async move {
            if let Err(e) = handle(stream, own_uid, &engine, &reload).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        }
    })
    .await;
    let _ = std::fs::remove_file(&path);
}

async fn handle(
    stream: UnixStream,
    own_uid: u32,
    engine: &Engine,
    reload: &mpsc::Sender<ReloadRequest>,
) -> io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let response = if uid != 0 && uid != own_uid {
        tracing::warn!(
            uid,
            "control socket: refused a client of a uid not permitted"
        );
        failure(format!(
            "permission denied: uid {uid} may not use the control socket (only root and uid {own_uid})"
        ))
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(read.take(MAX_REQUEST));
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
            Err(_) => return Ok(()),
            Ok(r) => {
                r?;
            }
        }
        match serde_json::from_str::<Request>(line.trim_end()) {
            Ok(request) => execute(request, engine, reload).await,
            Err(e) => failure(format!("malformed request: {e}")),
        }
    };
    let mut bytes = serde_json::to_vec(&response)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

fn failure(error: impl Into<String>) -> Value {
    json!({"ok": false, "error": error.into()})
}

fn success(result: Value) -> Value {
    json!({"ok": true, "result": result})
}

fn parse_id(id: &str) -> Result<QueueId, Value> {
    QueueId::parse(id).ok_or_else(|| failure(format!("not a queue id: {id:?}")))
}

/// The header section of a message: everything before the first empty line.
pub fn header_section(message: &[u8]) -> String {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len());
    String::from_utf8_lossy(&message[..end]).into_owned()
}

async fn execute(request: Request, engine: &Engine, reload: &mpsc::Sender<ReloadRequest>) -> Value {
    match run(request, engine, reload).await {
        Ok(v) => v,
        Err(v) => v,
    }
}

async fn run(
    request: Request,
    engine: &Engine,
    reload: &mpsc::Sender<ReloadRequest>,
) -> Result<Value, Value> {
    let scheduler = engine.scheduler();
    let io_failure = |e: io::Error| failure(format!("cannot update the queue: {e}"));
    let in_flight = |id: &str| {
        failure(format!(
            "{id}: no such message, or it is being delivered right now"
        ))
    };
    let optional = |id: &Option<String>| id.as_deref().map(parse_id).transpose();
    match request {
        Request::List => {
            let list =
                serde_json::to_value(scheduler.snapshot()).map_err(|e| failure(e.to_string()))?;
            Ok(success(list))
        }
        Request::Show { id } => {
            let qid = parse_id(&id)?;
            let envelope = scheduler
                .get(qid)
                .ok_or_else(|| failure(format!("{id}: no such message")))?;
            let spool = engine.spool().clone();
            let message = tokio::task::spawn_blocking(move || spool.read_message(qid))
                .await
                .map_err(|e| failure(e.to_string()))?
                .map_err(|e| failure(format!("{id}: cannot read the message: {e}")))?;
            let shown = Shown {
                envelope,
                headers: header_section(&message),
            };
            Ok(success(
                serde_json::to_value(shown).map_err(|e| failure(e.to_string()))?,
            ))
        }
        Request::Flush { id } => {
            let qid = optional(&id)?;
            let now = std::time::SystemTime::now();
            let n = scheduler.flush(qid, now);
            if qid.is_some() && n == 0 {
                return Err(in_flight(id.as_deref().unwrap_or_default()));
            }
            tracing::info!(
                queue_id = id.as_deref().unwrap_or("all"),
                messages = n,
                "flush"
            );
            Ok(success(json!({ "messages": n })))
        }
        Request::Hold { id } => set_held(engine, id, true),
        Request::Release { id } => set_held(engine, id, false),
        Request::Remove { id } => {
            let qid = parse_id(&id)?;
            if !tokio::task::block_in_place(|| scheduler.remove(qid)).map_err(io_failure)? {
                return Err(in_flight(&id));
            }
            tracing::info!(queue_id = %id, "removed by the administrator");
            Ok(success(json!({ "messages": 1 })))
        }
        Request::Bounce { id } => {
            let qid = parse_id(&id)?;
            if !scheduler
                .bounce_now(
                    qid,
                    "returned to the sender by the mail administrator",
                    std::time::SystemTime::now(),
                )
                .await
                .map_err(io_failure)?
            {
                return Err(in_flight(&id));
            }
            tracing::info!(queue_id = %id, "bounced by the administrator");
            Ok(success(json!({ "messages": 1 })))
        }
        Request::Reload => {
            let (tx, rx) = oneshot::channel();
            reload
                .send(tx)
                .await
                .map_err(|_| failure("the daemon is stopping"))?;
            match rx.await {
                Ok(Ok(summary)) => Ok(success(json!(summary))),
                Ok(Err(e)) => Err(failure(e)),
                Err(_) => Err(failure("the daemon is stopping")),
            }
        }
    }
}

fn set_held(engine: &Engine, id: Option<String>, held: bool) -> Result<Value, Value> {
    let qid = id.as_deref().map(parse_id).transpose()?;
    let n = tokio::task::block_in_place(|| engine.scheduler().set_held(qid, held))
        .map_err(|e| failure(format!("cannot update the queue: {e}")))?;
    if let (Some(id), Some(qid)) = (&id, qid) {
        match engine.scheduler().get(qid) {
            None => return Err(failure(format!("{id}: no such message"))),
            Some(env) if env.held != held => {
                return Err(failure(format!(
                    "{id}: being delivered right now; try again in a moment"
                )))
            }
            Some(_) => {}
        }
    }
    let what = if held { "held" } else { "released" };
    tracing::info!(
        queue_id = id.as_deref().unwrap_or("all"),
        messages = n,
        "{what} by the administrator"
    );
    Ok(success(json!({ "messages": n })))
}
