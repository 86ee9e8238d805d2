//! The one accept loop of every listening socket: SMTP, the control socket, metrics.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;

/// A socket that accepts connections.
pub trait Listener {
    type Stream: Send + 'static;
    type Peer: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    type Peer = std::net::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, Self::Peer)>> + Send {
        TcpListener::accept(self)
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(UnixStream, Self::Peer)>> + Send {
        UnixListener::accept(self)
    }
}

/// Accepts until `shutdown` changes; each connection is served in its own task. A failed
/// accept (EMFILE and friends) backs off for a moment instead of spinning.
pub async fn accept_loop<L, F, Fut>(
    what: &'static str,
    listener: &L,
    mut shutdown: watch::Receiver<bool>,
    mut serve: F,
) where
    L: Listener,
    F: FnMut(L::Stream, L::Peer) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        tokio::spawn(serve(stream, peer));
    }
}
