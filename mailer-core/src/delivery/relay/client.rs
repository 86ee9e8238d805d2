//! One SMTP client connection to one member address: TCP, TLS and timeouts around the
//! sans-IO [`ClientSession`], which makes every protocol decision.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;

use super::{tls, RelaySettings, Security};
use crate::address::Address;
use crate::delivery::content::Content;
use crate::delivery::{EnhancedStatus, Failure, FailureKind, Outcome};
use crate::smtp::client::{self, Awaiting, ClientSession, Event, NETWORK, TLS_FAILED};
use crate::smtp::protocol::{BodyFacts, Capabilities, DotStuffer};

pub use crate::smtp::client::Interrupted;

/// No answer in time (RFC 3463 X.4.1 / X.4.7 are close; X.4.2 is the usual choice for relays).
const TIMED_OUT: EnhancedStatus = EnhancedStatus(4, 4, 2);
/// How long a QUIT may take: the transaction is settled, the answer changes nothing.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Body bytes per write: whole chunks of the stuffed body, not its lines.
const BODY_BUFFER: usize = 64 * 1024;
/// The body could not be read from the queue: the server never saw its end, so it has nothing.
const QUEUE_UNREADABLE: EnhancedStatus = EnhancedStatus(4, 3, 0);

/// A temporary failure for a step that did not finish in time, e.g. `host[ip]:25: TLS
/// handshake timed out`.
fn timed_out(label: &str, what: impl std::fmt::Display) -> Failure {
    Failure::temporary(FailureKind::Connect, TIMED_OUT, format!("{label}: {what}"))
}

/// Anything a connection can run over: TCP or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One member address: the name for TLS and the socket address to connect to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub addr: SocketAddr,
    pub security: Security,
    /// The member's own credentials (see [`super::Member::credentials`]).
    pub credentials: Option<super::Credentials>,
}

impl Endpoint {
    /// `host[ip]:port`, the form used in every log line and failure reason.
    pub fn label(&self) -> String {
        format!("{}[{}]:{}", self.host, self.addr.ip(), self.addr.port())
    }
}

/// An open, greeted, possibly encrypted and authenticated SMTP session.
pub struct Connection {
    stream: Box<dyn Io>,
    session: ClientSession,
    read_buf: Box<[u8]>,
    label: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    data_end_timeout: Duration,
    /// Until when the greeting may take (it shares the connect timeout).
    greeting_deadline: Instant,
    /// Until when the awaited reply may take; restarted after each write and each reply.
    reply_deadline: Option<(u64, Instant)>,
}

impl Connection {
    /// Connects, reads the greeting, says EHLO, upgrades to TLS as `endpoint.security` says
    /// and authenticates when the endpoint has credentials. Every failure is temporary.
    pub async fn open(
        endpoint: &Endpoint,
        settings: &RelaySettings,
        tls_config: Arc<ClientConfig>,
    ) -> Result<Connection, Failure> {
        let label = endpoint.label();
        let deadline = Instant::now() + settings.connect_timeout;
        let too_slow = |what: &str| {
            timed_out(
                &label,
                format_args!("{what} timed out after {:?}", settings.connect_timeout),
            )
        };
        let connect_failed = |e: std::io::Error| {
            Failure::temporary(
                FailureKind::Connect,
                NETWORK,
                format!("{label}: connect failed: {e}"),
            )
        };
        let tcp = timeout_at(deadline, TcpStream::connect(endpoint.addr))
            .await
            .map_err(|_| too_slow("connect"))?
            .map_err(connect_failed)?;
        // Commands are written in whole batches; waiting for more would only add latency.
        tcp.set_nodelay(true).map_err(connect_failed)?;

        let mut stream: Box<dyn Io> = Box::new(tcp);
        if endpoint.security == Security::Implicit {
            stream = timeout_at(
                deadline,
                handshake(stream, &endpoint.host, &label, tls_config.clone()),
            )
            .await
            .map_err(|_| too_slow("TLS handshake"))??;
        }
        let session = ClientSession::new(client::Settings {
            server: label.clone(),
            helo_name: settings.helo_name.clone(),
            tls: match endpoint.security {
                Security::Plain => client::Tls::Off,
                Security::StartTls => client::Tls::StartTls,
                Security::Implicit => client::Tls::Implicit,
            },
            credentials: endpoint.credentials.clone(),
            hold_on_deferral: false,
        });
        let mut conn = Connection {
            stream,
            session,
            read_buf: vec![0; 8192].into_boxed_slice(),
            label,
            connect_timeout: settings.connect_timeout,
            command_timeout: settings.command_timeout,
            data_end_timeout: settings.data_end_timeout,
            greeting_deadline: deadline,
            reply_deadline: None,
        };
        loop {
            match conn.next_event().await {
                Event::Ready => break,
                Event::StartTls => {
                    let plain = std::mem::replace(
                        &mut conn.stream,
                        Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
                    );
                    let upgraded = tokio::time::timeout(
                        conn.command_timeout,
                        handshake(plain, &endpoint.host, &conn.label, tls_config.clone()),
                    )
                    .await
                    .map_err(|_| timed_out(&conn.label, "TLS handshake timed out"))??;
                    conn.stream = upgraded;
                    conn.session.tls_established();
                }
                Event::Failed(interrupted) => return Err(interrupted.failure),
                other => return Err(conn.unexpected(&other)),
            }
        }
        tracing::debug!(server = %conn.label, tls = conn.is_tls(), authenticated = conn.is_authenticated(), "relay session ready");
        Ok(conn)
    }

    pub fn capabilities(&self) -> &Capabilities {
        self.session.capabilities()
    }

    pub fn is_tls(&self) -> bool {
        self.session.is_tls()
    }

    pub fn is_authenticated(&self) -> bool {
        self.session.is_authenticated()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the server is still willing to talk (no 421 seen, no failure).
    pub fn is_usable(&self) -> bool {
        self.session.is_usable()
    }

    /// Sends one message; one outcome per recipient in order. `Err` when the connection broke.
    /// `reused` says the session sat idle before: a 421 to its MAIL is then the server's idle
    /// timeout, not a verdict on this message.
    pub async fn send(
        &mut self,
        sender: Option<&Address>,
        recipients: &[Address],
        body: &Content,
        reused: bool,
    ) -> Result<Vec<Outcome>, Interrupted> {
        let facts = BodyFacts {
            size: body.len(),
            eight_bit: body.is_eight_bit(),
        };
        self.session.send_message(sender, recipients, facts, reused);
        loop {
            match self.next_event().await {
                Event::SendBody => match self.write_body(body).await {
                    Ok(()) => self.session.body_sent(),
                    Err(failure) => self.session.abort(failure),
                },
                Event::Outcomes { outcomes, .. } => return Ok(outcomes),
                Event::Failed(interrupted) => return Err(interrupted),
                other => {
                    return Err(Interrupted {
                        failure: self.unexpected(&other),
                        body_sent: false,
                    })
                }
            }
        }
    }

    /// RSET, so the session is clean for the next message.
    pub async fn reset(&mut self) -> Result<(), Failure> {
        self.session.reset();
        match self.next_event().await {
            Event::Ready => Ok(()),
            Event::Failed(interrupted) => Err(interrupted.failure),
            other => Err(self.unexpected(&other)),
        }
    }

    /// QUIT politely; errors do not matter any more.
    pub async fn quit(mut self) {
        if self.session.is_usable() {
            self.session.quit();
            let _ = tokio::time::timeout(QUIT_TIMEOUT, self.next_event()).await;
        }
        let _ = self.stream.shutdown().await;
    }

    /// Writes what the session has to say and reads until it has something for us.
    async fn next_event(&mut self) -> Event {
        loop {
            let output = self.session.take_output();
            if !output.is_empty() {
                self.reply_deadline = None;
                if let Err(failure) = self.write(&output).await {
                    self.session.abort(failure);
                }
            }
            if let Some(event) = self.session.poll_event() {
                return event;
            }
            let Some(awaiting) = self.session.awaiting() else {
                let failure = Failure::temporary(
                    FailureKind::Protocol,
                    NETWORK,
                    format!("{}: the session stalled", self.label),
                );
                return Event::Failed(Interrupted {
                    failure,
                    body_sent: false,
                });
            };
            let deadline = self.deadline(awaiting);
            match timeout_at(deadline, self.stream.read(&mut self.read_buf)).await {
                Ok(Ok(0)) => self.session.end_of_input(),
                Ok(Ok(n)) => self.session.receive(&self.read_buf[..n]),
                // A TLS peer that closes without close_notify has closed all the same.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    self.session.end_of_input()
                }
                Ok(Err(e)) => {
                    let failure = Failure::temporary(
                        FailureKind::Connect,
                        NETWORK,
                        format!("{}: read failed: {e}", self.label),
                    );
                    self.session.abort(failure);
                }
                Err(_) => {
                    let failure = match awaiting {
                        Awaiting::Greeting => timed_out(
                            &self.label,
                            format_args!("greeting timed out after {:?}", self.connect_timeout),
                        ),
                        Awaiting::Command(what) => timed_out(
                            &self.label,
                            format_args!("no reply to {what} within {:?}", self.command_timeout),
                        ),
                        Awaiting::EndOfData => timed_out(
                            &self.label,
                            format_args!(
                                "no reply to end of data within {:?}",
                                self.data_end_timeout
                            ),
                        ),
                    };
                    self.session.abort(failure);
                }
            }
        }
    }

    /// Until when the awaited reply may take: each reply gets the whole timeout.
    fn deadline(&mut self, awaiting: Awaiting) -> Instant {
        let limit = match awaiting {
            Awaiting::Greeting => return self.greeting_deadline,
            Awaiting::Command(_) => self.command_timeout,
            Awaiting::EndOfData => self.data_end_timeout,
        };
        let replies = self.session.replies_received();
        match self.reply_deadline {
            Some((counted, deadline)) if counted == replies => deadline,
            _ => {
                let deadline = Instant::now() + limit;
                self.reply_deadline = Some((replies, deadline));
                deadline
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let result = tokio::time::timeout(self.command_timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::temporary(
                FailureKind::Connect,
                NETWORK,
                format!("{}: write failed: {e}", self.label),
            )),
            Err(_) => Err(timed_out(&self.label, "write timed out")),
        }
    }

    /// The body, read from the queue a chunk at a time, dot-stuffed and terminated, gathered
    /// into large writes. A chunk that cannot be read stops the data before its end, so the
    /// server discards what it got.
    async fn write_body(&mut self, body: &Content) -> Result<(), Failure> {
        self.reply_deadline = None;
        let mut unreadable = None;
        let written = tokio::time::timeout(self.data_end_timeout, async {
            let mut stuffer = DotStuffer::new();
            let mut reader = body.reader();
            let mut wire = Vec::with_capacity(3 * BODY_BUFFER);
            loop {
                let chunk = match reader.next_chunk() {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => {
                        unreadable = Some(e);
                        return Ok(());
                    }
                };
                stuffer.push(chunk, &mut wire);
                let full = wire.len() - wire.len() % BODY_BUFFER;
                for piece in wire[..full].chunks(BODY_BUFFER) {
                    self.stream.write_all(piece).await?;
                }
                wire.drain(..full);
            }
            wire.extend_from_slice(stuffer.finish());
            self.stream.write_all(&wire).await?;
            self.stream.flush().await
        })
        .await;
        if let Some(e) = unreadable {
            return Err(Failure::temporary(
                FailureKind::Local,
                QUEUE_UNREADABLE,
                format!(
                    "{}: cannot read the message from the queue: {e}",
                    self.label
                ),
            ));
        }
        let reason = match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => format!("{}: connection lost while sending data: {e}", self.label),
            Err(_) => format!("{}: sending data timed out", self.label),
        };
        Err(Failure::temporary(FailureKind::Connect, NETWORK, reason))
    }

    /// An event the session does not give at this point: a broken session, not a message.
    fn unexpected(&self, event: &Event) -> Failure {
        Failure::temporary(
            FailureKind::Protocol,
            NETWORK,
            format!("{}: unexpected session event {event:?}", self.label),
        )
    }
}

async fn handshake(
    stream: Box<dyn Io>,
    host: &str,
    label: &str,
    config: Arc<ClientConfig>,
) -> Result<Box<dyn Io>, Failure> {
    Ok(Box::new(tls_connect(stream, host, label, config).await?))
}

/// The TLS handshake of the relay, verifying `host` as `config` says; the stream stays
/// unboxed so a caller can read what was negotiated.
pub(crate) async fn tls_connect(
    stream: Box<dyn Io>,
    host: &str,
    label: &str,
    config: Arc<ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<Box<dyn Io>>, Failure> {
    let name = tls::server_name(host)
        .map_err(|e| Failure::temporary(FailureKind::Tls, TLS_FAILED, format!("{label}: {e}")))?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| {
            Failure::temporary(
                FailureKind::Tls,
                TLS_FAILED,
                format!("{label}: {}", tls::describe_error(&e)),
            )
        })
}
