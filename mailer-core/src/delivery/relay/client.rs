//! One SMTP client connection to one member address: it moves bytes and applies the
//! decisions of [`super::protocol`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;

use super::protocol::{
    auth_login_line, auth_plain_command, dot_stuffed, mail_from_command, pipelined_batch,
    rcpt_to_command, transaction_outcomes, AuthMechanism, Capabilities, Final, Reply, Requirements,
};
use super::{tls, RelaySettings, Security};
use crate::address::Address;
use crate::delivery::{EnhancedStatus, Failure, FailureKind, Outcome};

/// Network trouble: the server may be fine a moment later.
const NETWORK: EnhancedStatus = EnhancedStatus(4, 4, 2);
/// No answer in time (RFC 3463 X.4.1 / X.4.7 are close; X.4.2 is the usual choice for relays).
const TIMED_OUT: EnhancedStatus = EnhancedStatus(4, 4, 2);

/// A temporary failure for a step that did not finish in time, e.g. `host[ip]:25: TLS
/// handshake timed out`.
fn timed_out(label: &str, what: impl std::fmt::Display) -> Failure {
    Failure::temporary(FailureKind::Connect, TIMED_OUT, format!("{label}: {what}"))
}
/// TLS could not be established or verified (RFC 3463 X.7.5 cryptographic failure).
const TLS_FAILED: EnhancedStatus = EnhancedStatus(4, 7, 5);
/// Security or authentication refused.
const SECURITY: EnhancedStatus = EnhancedStatus(4, 7, 0);

/// Anything a connection can run over: TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
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

/// A transaction that stopped on a network or protocol error.
#[derive(Debug)]
pub struct Interrupted {
    pub failure: Failure,
    /// Whether the end of data was sent: if not, nothing was delivered and the message may
    /// go to another connection at once; if so, the server may have taken it.
    pub body_sent: bool,
}

/// An open, greeted, possibly encrypted and authenticated SMTP session.
pub struct Connection {
    stream: BufStream<Box<dyn Io>>,
    receiver: ResponseReceiver,
    read_buf: Vec<u8>,
    read_pos: usize,
    caps: Capabilities,
    tls: bool,
    authenticated: bool,
    label: String,
    command_timeout: Duration,
    data_end_timeout: Duration,
    /// A 421 was received: the server is closing, every later reply is this one.
    closing: Option<Reply>,
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
        let tcp = timeout_at(deadline, TcpStream::connect(endpoint.addr))
            .await
            .map_err(|_| too_slow("connect"))?
            .map_err(|e| {
                Failure::temporary(
                    FailureKind::Connect,
                    NETWORK,
                    format!("{label}: connect failed: {e}"),
                )
            })?;
        // Commands are written in whole batches; waiting for more would only add latency.
        tcp.set_nodelay(true).map_err(|e| {
            Failure::temporary(
                FailureKind::Connect,
                NETWORK,
                format!("{label}: connect failed: {e}"),
            )
        })?;

        let mut stream: Box<dyn Io> = Box::new(tcp);
        let mut tls = false;
        if endpoint.security == Security::Implicit {
            stream = timeout_at(
                deadline,
                handshake(stream, &endpoint.host, &label, tls_config.clone()),
            )
            .await
            .map_err(|_| too_slow("TLS handshake"))??;
            tls = true;
        }
        let mut conn = Connection {
            stream: BufStream::new(stream),
            receiver: ResponseReceiver::default(),
            read_buf: Vec::with_capacity(4096),
            read_pos: 0,
            caps: Capabilities::default(),
            tls,
            authenticated: false,
            label: label.clone(),
            command_timeout: settings.command_timeout,
            data_end_timeout: settings.data_end_timeout,
            closing: None,
        };

        let greeting = timeout_at(deadline, conn.read_reply_untimed())
            .await
            .map_err(|_| too_slow("greeting"))??;
        if !greeting.is_positive() {
            return Err(conn.forced_temporary(&greeting, "greeting"));
        }

        let fallback_allowed =
            endpoint.security == Security::Plain && endpoint.credentials.is_none();
        conn.hello(&settings.helo_name, fallback_allowed).await?;

        if endpoint.security == Security::StartTls {
            if !conn.caps.starttls {
                return Err(Failure::temporary(
                    FailureKind::Tls,
                    SECURITY,
                    format!(
                        "{}: STARTTLS is required but the server does not offer it",
                        conn.label
                    ),
                ));
            }
            conn.send_line("STARTTLS\r\n").await?;
            let reply = conn.read_reply(conn.command_timeout, "STARTTLS").await?;
            if reply.code != 220 {
                return Err(conn.forced_temporary(&reply, "STARTTLS"));
            }
            if conn.read_pos < conn.read_buf.len() {
                // Bytes sent before the handshake would be trusted after it (CVE-2011-0411).
                return Err(Failure::temporary(
                    FailureKind::Protocol,
                    TLS_FAILED,
                    format!("{}: server sent data after its STARTTLS reply", conn.label),
                ));
            }
            let plain = std::mem::replace(
                &mut conn.stream,
                BufStream::new(Box::new(tokio::io::join(
                    tokio::io::empty(),
                    tokio::io::sink(),
                ))),
            );
            let upgraded = tokio::time::timeout(
                conn.command_timeout,
                handshake(plain.into_inner(), &endpoint.host, &conn.label, tls_config),
            )
            .await
            .map_err(|_| timed_out(&conn.label, "TLS handshake timed out"))??;
            conn.stream = BufStream::new(upgraded);
            conn.tls = true;
            conn.receiver = ResponseReceiver::default();
            // RFC 3207 §4.2: forget everything learned before TLS.
            conn.hello(&settings.helo_name, false).await?;
        }

        if let Some(credentials) = &endpoint.credentials {
            conn.authenticate(&credentials.user, &credentials.password)
                .await?;
        }
        tracing::debug!(server = %conn.label, tls = conn.tls, authenticated = conn.authenticated, "relay session ready");
        Ok(conn)
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the server is still willing to talk (no 421 seen).
    pub fn is_usable(&self) -> bool {
        self.closing.is_none()
    }

    /// Sends one message; one outcome per recipient in order. `Err` when the connection broke.
    /// `reused` says the session sat idle before: a 421 to its MAIL is then the server's idle
    /// timeout (Postfix says `421 4.4.2 … timeout exceeded`), not a verdict on this message.
    pub async fn send(
        &mut self,
        sender: Option<&Address>,
        recipients: &[Address],
        body: &[u8],
        reused: bool,
    ) -> Result<Vec<Outcome>, Interrupted> {
        let before_body = |failure: Failure| Interrupted {
            failure,
            body_sent: false,
        };
        if recipients.is_empty() {
            return Ok(Vec::new());
        }
        let req = Requirements::of(sender, recipients, body);
        if let Err(failure) = req.check(&self.caps, &self.label) {
            return Ok(recipients
                .iter()
                .map(|_| Outcome::Failed(failure.clone()))
                .collect());
        }
        let mail_from = mail_from_command(sender, &req, &self.caps);
        let timeout = self.command_timeout;

        let mut rcpt_replies = Vec::with_capacity(recipients.len());
        let (mail, data) = if self.caps.pipelining {
            let batch = pipelined_batch(&mail_from, recipients);
            self.send_bytes(&batch).await.map_err(before_body)?;
            let mail = self
                .read_reply(timeout, "MAIL FROM")
                .await
                .map_err(before_body)?;
            for _ in recipients {
                rcpt_replies.push(
                    self.read_reply(timeout, "RCPT TO")
                        .await
                        .map_err(before_body)?,
                );
            }
            let data = self
                .read_reply(timeout, "DATA")
                .await
                .map_err(before_body)?;
            (mail, Some(data))
        } else {
            self.send_line(&mail_from).await.map_err(before_body)?;
            let mail = self
                .read_reply(timeout, "MAIL FROM")
                .await
                .map_err(before_body)?;
            if reused && mail.code == 421 {
                return Err(before_body(
                    mail.failure(&format!("{}: idle session closed", self.label)),
                ));
            }
            if !mail.is_positive() {
                return Ok(transaction_outcomes(
                    &self.label,
                    recipients,
                    &mail,
                    &[],
                    None,
                ));
            }
            for rcpt in recipients {
                self.send_line(&rcpt_to_command(rcpt))
                    .await
                    .map_err(before_body)?;
                rcpt_replies.push(
                    self.read_reply(timeout, "RCPT TO")
                        .await
                        .map_err(before_body)?,
                );
            }
            if rcpt_replies.iter().any(Reply::is_positive) {
                self.send_line("DATA\r\n").await.map_err(before_body)?;
                (
                    mail,
                    Some(
                        self.read_reply(timeout, "DATA")
                            .await
                            .map_err(before_body)?,
                    ),
                )
            } else {
                (mail, None)
            }
        };

        if reused && mail.code == 421 {
            return Err(before_body(
                mail.failure(&format!("{}: idle session closed", self.label)),
            ));
        }
        let any_accepted = mail.is_positive() && rcpt_replies.iter().any(Reply::is_positive);
        let data = match data {
            Some(data) if data.is_intermediate() && !any_accepted => {
                // RFC 2920 §3.1: DATA was accepted with no recipient; end it empty.
                self.send_bytes(b".\r\n").await.map_err(before_body)?;
                self.read_reply(timeout, "end of data")
                    .await
                    .map_err(before_body)?;
                return Ok(transaction_outcomes(
                    &self.label,
                    recipients,
                    &mail,
                    &rcpt_replies,
                    None,
                ));
            }
            Some(data) if any_accepted => data,
            _ => {
                return Ok(transaction_outcomes(
                    &self.label,
                    recipients,
                    &mail,
                    &rcpt_replies,
                    None,
                ))
            }
        };
        if !data.is_intermediate() {
            return Ok(transaction_outcomes(
                &self.label,
                recipients,
                &mail,
                &rcpt_replies,
                Some(Final::Data(&data)),
            ));
        }

        let written = tokio::time::timeout(self.data_end_timeout, async {
            for segment in dot_stuffed(body) {
                self.stream.write_all(segment).await?;
            }
            self.stream.flush().await
        })
        .await;
        let sent = match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "{}: connection lost while sending data: {e}",
                self.label
            )),
            Err(_) => Err(format!("{}: sending data timed out", self.label)),
        };
        if let Err(reason) = sent {
            // The terminating dot may have left: the server may hold the message.
            return Err(Interrupted {
                failure: Failure::temporary(FailureKind::Connect, NETWORK, reason),
                body_sent: true,
            });
        }
        let end = self
            .read_reply(self.data_end_timeout, "end of data")
            .await
            .map_err(|mut failure| {
                // The one window where a retry may deliver twice (RFC 1047): say so.
                failure
                    .reason
                    .push_str(" (after the end of data: the server may have taken the message)");
                Interrupted {
                    failure,
                    body_sent: true,
                }
            })?;
        Ok(transaction_outcomes(
            &self.label,
            recipients,
            &mail,
            &rcpt_replies,
            Some(Final::EndOfData(&end)),
        ))
    }

    /// RSET, so the session is clean for the next message.
    pub async fn reset(&mut self) -> Result<(), Failure> {
        self.send_line("RSET\r\n").await?;
        let reply = self.read_reply(self.command_timeout, "RSET").await?;
        if reply.is_positive() {
            Ok(())
        } else {
            Err(self.forced_temporary(&reply, "RSET"))
        }
    }

    /// QUIT politely; errors do not matter any more.
    pub async fn quit(mut self) {
        if self.closing.is_none() && self.send_line("QUIT\r\n").await.is_ok() {
            let _ = self.read_reply(Duration::from_secs(5), "QUIT").await;
        }
        let _ = self.stream.shutdown().await;
    }

    async fn hello(&mut self, helo_name: &str, helo_fallback: bool) -> Result<(), Failure> {
        self.send_line(&format!("EHLO {helo_name}\r\n")).await?;
        let reply = self.read_reply(self.command_timeout, "EHLO").await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo_text(&reply.text);
            return Ok(());
        }
        if !(helo_fallback && reply.is_permanent_failure()) {
            return Err(self.forced_temporary(&reply, "EHLO"));
        }
        self.send_line(&format!("HELO {helo_name}\r\n")).await?;
        let reply = self.read_reply(self.command_timeout, "HELO").await?;
        if !reply.is_positive() {
            return Err(self.forced_temporary(&reply, "HELO"));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), Failure> {
        if !self.tls {
            return Err(Failure::temporary(
                FailureKind::Auth,
                SECURITY,
                format!(
                    "{}: credentials are set but the connection is not encrypted; AUTH not sent",
                    self.label
                ),
            ));
        }
        let Some(mechanism) = self.caps.auth_mechanism() else {
            return Err(Failure::temporary(
                FailureKind::Auth,
                SECURITY,
                format!("{}: credentials are set but the server offers neither AUTH PLAIN nor AUTH LOGIN", self.label),
            ));
        };
        let timeout = self.command_timeout;
        let reply = match mechanism {
            AuthMechanism::Plain => {
                self.send_line(&auth_plain_command(user, password)).await?;
                self.read_reply(timeout, "AUTH PLAIN").await?
            }
            AuthMechanism::Login => {
                self.send_line("AUTH LOGIN\r\n").await?;
                let mut reply = self.read_reply(timeout, "AUTH LOGIN").await?;
                for secret in [user, password] {
                    if reply.code != 334 {
                        break;
                    }
                    self.send_line(&auth_login_line(secret)).await?;
                    reply = self.read_reply(timeout, "AUTH LOGIN").await?;
                }
                reply
            }
        };
        if reply.code != 235 {
            // Kept temporary: the administrator can fix the secret before the mail expires.
            let mut failure = reply
                .failure(&format!("{}: AUTH", self.label))
                .made_temporary();
            failure.kind = FailureKind::Auth;
            failure
                .reason
                .push_str(" (authentication failures are retried: check the relay credentials)");
            return Err(failure);
        }
        self.authenticated = true;
        Ok(())
    }

    /// A negative reply at session setup: a failure of this member, never of the message.
    fn forced_temporary(&self, reply: &Reply, what: &str) -> Failure {
        reply
            .failure(&format!("{}: {what}", self.label))
            .made_temporary()
    }

    async fn send_line(&mut self, line: &str) -> Result<(), Failure> {
        self.send_bytes(line.as_bytes()).await
    }

    async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        if let Some(reply) = &self.closing {
            return Err(reply.failure(&format!("{}: server closing", self.label)));
        }
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

    async fn read_reply(&mut self, timeout: Duration, what: &str) -> Result<Reply, Failure> {
        if let Some(reply) = &self.closing {
            return Ok(reply.clone());
        }
        let reply = tokio::time::timeout(timeout, self.read_reply_untimed())
            .await
            .map_err(|_| {
                timed_out(
                    &self.label,
                    format_args!("no reply to {what} within {timeout:?}"),
                )
            })??;
        if reply.code == 421 {
            self.closing = Some(reply.clone());
        }
        Ok(reply)
    }

    async fn read_reply_untimed(&mut self) -> Result<Reply, Failure> {
        loop {
            if self.read_pos < self.read_buf.len() {
                let mut bytes = self.read_buf[self.read_pos..].iter();
                let parsed = self.receiver.parse(&mut bytes);
                self.read_pos = self.read_buf.len() - bytes.len();
                match parsed {
                    Ok(response) => {
                        self.receiver.reset();
                        return Ok(Reply::from_proto(response));
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                    Err(e) => {
                        return Err(Failure::temporary(
                            FailureKind::Protocol,
                            NETWORK,
                            format!("{}: malformed reply: {e:?}", self.label),
                        ))
                    }
                }
            }
            self.read_buf.clear();
            self.read_pos = 0;
            match self.stream.read_buf(&mut self.read_buf).await {
                Ok(0) => {
                    return Err(Failure::temporary(
                        FailureKind::Connect,
                        NETWORK,
                        format!("{}: connection closed by the server", self.label),
                    ))
                }
                Ok(_) => {}
                // A TLS peer that closes without close_notify has closed all the same.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(Failure::temporary(
                        FailureKind::Connect,
                        NETWORK,
                        format!("{}: connection closed by the server", self.label),
                    ))
                }
                Err(e) => {
                    return Err(Failure::temporary(
                        FailureKind::Connect,
                        NETWORK,
                        format!("{}: read failed: {e}", self.label),
                    ))
                }
            }
        }
    }
}

async fn handshake(
    stream: Box<dyn Io>,
    host: &str,
    label: &str,
    config: Arc<ClientConfig>,
) -> Result<Box<dyn Io>, Failure> {
    let name = tls::server_name(host)
        .map_err(|e| Failure::temporary(FailureKind::Tls, TLS_FAILED, format!("{label}: {e}")))?;
    match TlsConnector::from(config).connect(name, stream).await {
        Ok(tls) => Ok(Box::new(tls)),
        Err(e) => Err(Failure::temporary(
            FailureKind::Tls,
            TLS_FAILED,
            format!("{label}: {}", tls::describe_error(&e)),
        )),
    }
}
