//! The SMTP listener edge: accepts connections and drives a `Session` over each socket, on
//! the TCP listeners and on the local submission socket, where `mailer sendmail` speaks and
//! the kernel tells who the client is.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailer_core::intake::{
    reply::replies, Event, Peer, QueueRefused, Session, SessionConfig, Submitter,
};
use mailer_core::policy::Router;
use mailer_core::queue::spool::QueueFile;
use mailer_core::queue::QueueId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::engine::Engine;

/// What every connection of one listener shares.
pub struct Intake {
    pub session: Arc<SessionConfig>,
    pub router: Arc<Router>,
    pub engine: Arc<Engine>,
    pub connections: Arc<Semaphore>,
    /// Bounds the TLS handshake and each write of replies (the session keeps its own
    /// deadlines for what the client sends).
    pub idle_timeout: Duration,
    /// Flips to true when the daemon stops.
    pub shutdown: watch::Receiver<bool>,
}

/// Accepts until shutdown; each connection runs in its own task.
pub async fn listen(listener: TcpListener, tls: Option<TlsAcceptor>, intake: Arc<Intake>) {
    let shutdown = intake.shutdown.clone();
    crate::accept::accept_loop("smtp", &listener, shutdown, |stream, peer| {
        let intake = intake.clone();
        let tls = tls.clone();
        async move {
            let _ = stream.set_nodelay(true);
            within_limit(&intake, stream, |stream| {
                serve_connection(stream, peer, tls, &intake)
            })
            .await;
        }
    })
    .await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    intake: &Intake,
) {
    let router: Arc<dyn mailer_core::intake::RecipientPolicy> = intake.router.clone();
    let mut session = Session::new(
        intake.session.clone(),
        router,
        Peer {
            addr: Some(peer),
            submitter: None,
        },
        SystemTime::now(),
    );
    intake.engine.metrics().session();
    match drive(stream, &mut session, intake).await {
        Ok(Some(stream)) => {
            let Some(acceptor) = tls else { return };
            // A client that never completes the handshake must not keep its slot.
            match tokio::time::timeout(intake.idle_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    session.tls_established(SystemTime::now());
                    let _ = drive(tls_stream, &mut session, intake).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended"),
    }
}

/// Serves a connection while it holds a slot of the connection limit; without a free slot
/// the client hears `421` and the connection closes.
async fn within_limit<S, F, Fut>(intake: &Intake, mut stream: S, serve: F)
where
    S: AsyncWrite + Unpin,
    F: FnOnce(S) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    match intake.connections.clone().try_acquire_owned() {
        Ok(permit) => {
            serve(stream).await;
            drop(permit);
        }
        Err(_) => {
            intake.engine.metrics().rejected("connections");
            let _ = stream
                .write_all(&replies::too_many_connections().to_bytes())
                .await;
        }
    }
}

/// Binds the submission socket, mode 0666: any local user may submit, and is known by uid.
/// A stale socket is replaced, a live one (another daemon on this queue) is an error.
pub fn bind_local(path: &Path) -> std::io::Result<UnixListener> {
    let listener = crate::control::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Accepts local submissions until shutdown. Each connection takes the intake settings in
/// effect when it arrives (`intake` follows reloads) and a slot of the same connection limit
/// as SMTP.
pub async fn listen_local(listener: UnixListener, intake: watch::Receiver<Arc<Intake>>) {
    let shutdown = intake.borrow().shutdown.clone();
    crate::accept::accept_loop("submission", &listener, shutdown, |stream, _| {
        let intake = intake.borrow().clone();
        async move {
            within_limit(&intake, stream, |stream| serve_local(stream, &intake)).await;
        }
    })
    .await;
}

async fn serve_local(stream: UnixStream, intake: &Intake) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            tracing::debug!(error = %e, "submission socket: no peer credentials");
            return;
        }
    };
    let submitter = submitter(uid).await;
    let router: Arc<dyn mailer_core::intake::RecipientPolicy> = intake.router.clone();
    let mut session = Session::new(
        intake.session.clone(),
        router,
        Peer {
            addr: None,
            submitter: Some(submitter),
        },
        SystemTime::now(),
    );
    intake.engine.metrics().session();
    // Never asks for TLS: the session does not offer STARTTLS here.
    if let Err(e) = drive(stream, &mut session, intake).await {
        tracing::debug!(uid, error = %e, "submission ended");
    }
}

/// `uid` with its login name; the password database may be a network service, so it is
/// asked off the runtime's threads.
pub async fn submitter(uid: u32) -> Submitter {
    let login = tokio::task::spawn_blocking(move || crate::sendmail::login_of(uid))
        .await
        .ok()
        .flatten();
    Submitter { uid, login }
}

/// Runs the session over `stream` until it closes (None) or asks for TLS (Some(stream)).
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    session: &mut Session,
    intake: &Intake,
) -> std::io::Result<Option<S>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut shutdown = intake.shutdown.clone();
    let mut stopping = *shutdown.borrow();
    if stopping {
        session.begin_shutdown();
    }
    // The queue file of the message being received, once its content outgrew a chunk.
    let mut file: Option<(QueueId, std::io::Result<QueueFile>)> = None;
    loop {
        // Handle every event before reading more, so pipelined replies keep their order
        // and nothing is read while a message is being made durable.
        while let Some(event) = session.poll_event() {
            match event {
                Event::Content { id, bytes } => {
                    // A file of an earlier message that was refused is dropped, and removed.
                    if file.as_ref().is_none_or(|(of, _)| *of != id) {
                        file = Some((id, intake.engine.spool().create(id)));
                    }
                    // Written without fsync, to the page cache: one copy, not worth a hand-off
                    // to the blocking pool. The fsync happens once, when the message is whole.
                    // A failure is kept and answered at the end of the data, like a full disk.
                    if let Some((_, Ok(f))) = file.as_mut() {
                        if let Err(e) = f.write(&bytes) {
                            file = Some((id, Err(e)));
                        }
                    }
                }
                Event::Message(incoming) => {
                    let written = match file.take() {
                        Some((id, written)) if id == incoming.id => written.map(Some),
                        _ => Ok(None),
                    };
                    let result = match written {
                        Ok(written) => intake.engine.accept(*incoming, written).await,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot queue a message");
                            Err(e)
                        }
                    };
                    let result = result.map_err(|e| QueueRefused::of(&e));
                    session.queued(result, SystemTime::now());
                }
                Event::StartTls => {
                    send(&mut stream, &session.take_output(), intake.idle_timeout).await?;
                    return Ok(Some(stream));
                }
                Event::Close => {
                    let out = session.take_output();
                    if !out.is_empty() {
                        send(&mut stream, &out, intake.idle_timeout).await?;
                    }
                    let _ = tokio::time::timeout(intake.idle_timeout, stream.shutdown()).await;
                    return Ok(None);
                }
                Event::Rejected(reason) => intake.engine.metrics().rejected(reason),
            }
        }
        if session.has_output() {
            send(&mut stream, &session.take_output(), intake.idle_timeout).await?;
        }
        if session.is_closed() {
            return Ok(None);
        }
        // The session's own deadline, on the runtime's clock.
        let wait = session
            .poll_timeout()
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(intake.idle_timeout);
        let deadline = tokio::time::Instant::now() + wait;
        tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.read(&mut buf)) => match r {
                Ok(Ok(0)) => session.end_of_input(),
                Ok(Ok(n)) => session.receive(&buf[..n], SystemTime::now()),
                Ok(Err(e)) => return Err(e),
                Err(_) => session.handle_timeout(SystemTime::now()),
            },
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                session.begin_shutdown();
            }
        }
    }
}

/// Writes replies, bounded in time: a client that stops reading (its window full) must not
/// hold the session and its slot forever.
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    within: Duration,
) -> std::io::Result<()> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    tokio::time::timeout(within, write).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client did not read its replies in time",
        )
    })?
}
