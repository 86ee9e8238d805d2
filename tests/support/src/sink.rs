//! A real upstream SMTP server on 127.0.0.1 that records what it accepts: the next hop for
//! relay tests, end-to-end daemon tests and benchmarks. It speaks ESMTP with PIPELINING,
//! 8BITMIME, SMTPUTF8, SIZE, STARTTLS (or implicit TLS) and AUTH PLAIN/LOGIN.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use smtp_proto::{Request, AUTH_LOGIN, AUTH_PLAIN};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::certs::Leaf;

/// Decides a reply for a command argument (an address); `None` lets the default reply stand.
pub type ReplyFn = Arc<dyn Fn(&str) -> Option<(u16, String)> + Send + Sync>;
/// Decides the reply to the end of data, given the transaction as it would be recorded.
pub type DataReplyFn = Arc<dyn Fn(&Received) -> Option<(u16, String)> + Send + Sync>;
/// Decides whether a fault strikes at a point of a session: given the connection's number
/// (1 for the first accepted) and the point; `None` lets the session go on as usual.
pub type FaultFn = Arc<dyn Fn(usize, Stage<'_>) -> Option<Fault> + Send + Sync>;

/// Where in a session a fault can strike.
#[derive(Clone, Copy, Debug)]
pub enum Stage<'a> {
    /// Before the greeting; a fault's reply here is the last word of the session.
    Connect,
    /// Before the reply to MAIL, with the reverse path.
    Mail(&'a str),
    /// Before the reply to RCPT, with the address.
    Rcpt(&'a str),
    /// After the end of data, before the reply, with the transaction.
    DataEnd(&'a Received),
}

/// What a failing upstream does instead of its usual reply.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Closes the connection without a reply, as a crashed server does (no TLS
    /// close_notify). At the end of data the transaction is not recorded.
    Drop,
    /// Says nothing for this long, then goes on as usual: a server stalled past the
    /// client's timeout.
    Stall(Duration),
    /// Answers this instead; `421` then closes the connection. At the end of data the
    /// transaction is not recorded.
    Reply(u16, String),
}

/// How the sink behaves. `Default` is a plain-text server without AUTH that takes everything.
#[derive(Clone, Default)]
pub struct SinkOptions {
    /// Certificate for TLS; with it the sink advertises STARTTLS (unless `implicit_tls`).
    pub tls: Option<Leaf>,
    /// Refuse MAIL before STARTTLS (530 5.7.0).
    pub require_tls: bool,
    /// TLS from the first byte (needs `tls`).
    pub implicit_tls: bool,
    /// Credentials; AUTH is advertised only once TLS is up and required before MAIL.
    pub auth: Option<(String, String)>,
    /// The mechanisms advertised after `AUTH`; `None` means `PLAIN LOGIN`.
    pub auth_mechanisms: Option<String>,
    /// Greet with `421 4.3.2` and hang up.
    pub greeting_421: bool,
    /// Wait this long before greeting (a server that accepts but does not answer).
    pub greeting_delay: Option<Duration>,
    /// Do not advertise PIPELINING.
    pub no_pipelining: bool,
    pub mail_reply: Option<ReplyFn>,
    pub rcpt_reply: Option<ReplyFn>,
    pub data_reply: Option<DataReplyFn>,
    /// Advertised as `SIZE n` and enforced.
    pub max_size: Option<usize>,
    /// Say `421 4.4.2` and hang up on a client silent for this long, as real servers do.
    pub idle_timeout: Option<Duration>,
    /// Faults to inject, consulted at every [`Stage`] before the other options.
    pub fault: Option<FaultFn>,
}

/// One accepted transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The reverse path without brackets; empty for the null sender.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The data as the client meant it: dot-stuffing removed, without the final `.` line.
    pub data: Vec<u8>,
    pub tls: bool,
    pub auth_user: Option<String>,
    /// When the end of data was read, before the reply (for delivery latencies).
    pub arrived: std::time::Instant,
}

struct Shared {
    options: SinkOptions,
    acceptor: Option<TlsAcceptor>,
    messages: Mutex<Vec<Received>>,
    arrived: Notify,
    connections: AtomicUsize,
    auth_attempts: AtomicUsize,
    auth_refusals: AtomicUsize,
    /// Command lines received, by verb (upper case): `RCPT`, `DATA`, ...
    commands: Mutex<HashMap<String, usize>>,
}

/// A running sink. Dropping it stops accepting connections; sessions already open end when
/// their client leaves (or after `idle_timeout`).
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Sink {
    pub async fn start(options: SinkOptions) -> Sink {
        Sink::start_on(0, options).await
    }

    /// Starts on a chosen loopback port (0: any), e.g. to bring back a server that was down.
    pub async fn start_on(port: u16, options: SinkOptions) -> Sink {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound socket has an address");
        let acceptor = options
            .tls
            .as_ref()
            .map(|leaf| TlsAcceptor::from(leaf.server_config()));
        let shared = Arc::new(Shared {
            options,
            acceptor,
            messages: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            connections: AtomicUsize::new(0),
            auth_attempts: AtomicUsize::new(0),
            auth_refusals: AtomicUsize::new(0),
            commands: Mutex::new(HashMap::new()),
        });
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let number = accepting.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let shared = accepting.clone();
                tokio::spawn(async move {
                    // A client hanging up mid-session is normal for a test server.
                    let _ = serve(stream, shared, number).await;
                });
            }
        });
        Sink { addr, shared, task }
    }

    /// A loopback address where nothing listens: connections to it are refused.
    pub fn refusing() -> SocketAddr {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.local_addr().expect("bound socket has an address")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn messages(&self) -> Vec<Received> {
        self.shared
            .messages
            .lock()
            .expect("sink lock is never poisoned")
            .clone()
    }

    /// Messages accepted so far (cheap: nothing is copied).
    pub fn count(&self) -> usize {
        self.shared
            .messages
            .lock()
            .expect("sink lock is never poisoned")
            .len()
    }

    /// Hands over the messages accepted so far and forgets them.
    pub fn take_messages(&self) -> Vec<Received> {
        std::mem::take(
            &mut *self
                .shared
                .messages
                .lock()
                .expect("sink lock is never poisoned"),
        )
    }

    /// Waits until `n` messages arrived or `timeout` passed; returns what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_for_count(n, timeout).await;
        self.messages()
    }

    /// Waits until `n` messages arrived or `timeout` passed; returns how many arrived.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            let count = self.count();
            if count >= n || tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.count();
            }
        }
    }

    /// AUTH commands received, successful or not.
    pub fn auth_attempts(&self) -> usize {
        self.shared.auth_attempts.load(Ordering::SeqCst)
    }

    /// AUTH commands answered 535: credentials this server does not know.
    pub fn auth_refusals(&self) -> usize {
        self.shared.auth_refusals.load(Ordering::SeqCst)
    }

    /// Command lines received with this verb (e.g. `DATA`, `RCPT`), whatever their fate: a
    /// command the server refused or could not parse counts too.
    pub fn command_count(&self, verb: &str) -> usize {
        self.shared
            .commands
            .lock()
            .expect("sink lock is never poisoned")
            .get(&verb.to_ascii_uppercase())
            .copied()
            .unwrap_or(0)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = BufReader<BufWriter<Box<dyn Io>>>;

#[derive(Default)]
struct Transaction {
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

async fn reply(conn: &mut Conn, code: u16, text: &str) -> std::io::Result<()> {
    conn.write_all(format!("{code} {text}\r\n").as_bytes())
        .await
}

/// What the session does after a fault point.
enum AfterFault {
    /// No fault, or a stall that has passed: carry on as usual.
    Proceed,
    /// The fault's reply was sent instead of the usual one.
    Replied,
    /// The connection is to be closed now.
    Close,
}

/// Applies the fault the options choose for `stage`, if any.
async fn strike(
    conn: &mut Conn,
    options: &SinkOptions,
    number: usize,
    stage: Stage<'_>,
) -> std::io::Result<AfterFault> {
    let Some(fault) = options.fault.as_ref().and_then(|f| f(number, stage)) else {
        return Ok(AfterFault::Proceed);
    };
    // Replies to earlier commands leave first, as they would from a real server.
    conn.flush().await?;
    match fault {
        Fault::Drop => Ok(AfterFault::Close),
        Fault::Stall(how_long) => {
            tokio::time::sleep(how_long).await;
            Ok(AfterFault::Proceed)
        }
        Fault::Reply(code, text) => {
            reply(conn, code, &text).await?;
            if code == 421 {
                conn.flush().await?;
                return Ok(AfterFault::Close);
            }
            Ok(AfterFault::Replied)
        }
    }
}

/// Reads one line into `line` (cleared first); flushes pending replies only when the client
/// has nothing more queued, so pipelined commands get their replies in one write.
async fn read_line(
    conn: &mut Conn,
    line: &mut Vec<u8>,
    idle_timeout: Option<Duration>,
) -> std::io::Result<bool> {
    line.clear();
    if conn.buffer().is_empty() {
        conn.flush().await?;
    }
    let read = conn.read_until(b'\n', line);
    let n = match idle_timeout {
        Some(limit) => match tokio::time::timeout(limit, read).await {
            Ok(n) => n?,
            Err(_) => {
                // As Postfix does: say why before hanging up.
                reply(conn, 421, "4.4.2 sink.test idle timeout exceeded").await?;
                conn.flush().await?;
                return Ok(false);
            }
        },
        None => read.await?,
    };
    Ok(n > 0)
}

/// Reads message data up to `<CRLF>.<CRLF>`, dot-stuffing removed; `None` if the client left.
/// Works on whole buffers rather than line by line, so the sink keeps up with a fast client.
async fn read_data(
    conn: &mut Conn,
    partial: &mut Vec<u8>,
    idle_timeout: Option<Duration>,
) -> std::io::Result<Option<Vec<u8>>> {
    conn.flush().await?;
    partial.clear();
    let mut data = Vec::new();
    // Appends one line; true when it is the final dot.
    fn add(line: &[u8], data: &mut Vec<u8>) -> bool {
        if line == b".\r\n" {
            return true;
        }
        data.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        false
    }
    loop {
        let fill = conn.fill_buf();
        let buf = match idle_timeout {
            Some(limit) => match tokio::time::timeout(limit, fill).await {
                Ok(r) => r?,
                Err(_) => return Ok(None),
            },
            None => fill.await?,
        };
        if buf.is_empty() {
            return Ok(None);
        }
        let mut pos = 0;
        let mut done = false;
        while let Some(lf) = buf[pos..].iter().position(|&b| b == b'\n') {
            let end = pos + lf + 1;
            done = if partial.is_empty() {
                add(&buf[pos..end], &mut data)
            } else {
                partial.extend_from_slice(&buf[pos..end]);
                let done = add(partial, &mut data);
                partial.clear();
                done
            };
            pos = end;
            if done {
                break;
            }
        }
        if !done {
            partial.extend_from_slice(&buf[pos..]);
            pos = buf.len();
        }
        conn.consume(pos);
        if done {
            return Ok(Some(data));
        }
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>, number: usize) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let options = &shared.options;
    let mut tls = false;
    let mut io: Box<dyn Io> = Box::new(stream);
    if options.implicit_tls {
        let acceptor = shared
            .acceptor
            .as_ref()
            .expect("implicit_tls needs a certificate");
        io = Box::new(acceptor.accept(io).await?);
        tls = true;
    }
    let mut conn: Conn = BufReader::new(BufWriter::new(io));
    if let Some(delay) = options.greeting_delay {
        tokio::time::sleep(delay).await;
    }
    match strike(&mut conn, options, number, Stage::Connect).await? {
        AfterFault::Proceed => {}
        AfterFault::Replied | AfterFault::Close => return Ok(()),
    }
    if options.greeting_421 {
        reply(&mut conn, 421, "4.3.2 sink.test busy, try later").await?;
        return conn.flush().await;
    }
    reply(&mut conn, 220, "sink.test ESMTP ready").await?;

    let mut line = Vec::with_capacity(1024);
    let mut auth_user: Option<String> = None;
    let mut tx = Transaction::default();
    loop {
        if !read_line(&mut conn, &mut line, options.idle_timeout).await? {
            return Ok(());
        }
        let verb = line
            .split(|b| b.is_ascii_whitespace() || *b == b':')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        *shared
            .commands
            .lock()
            .expect("sink lock is never poisoned")
            .entry(String::from_utf8_lossy(&verb).into_owned())
            .or_default() += 1;
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request.into_owned(),
            Err(_) => {
                reply(&mut conn, 500, "5.5.2 syntax error").await?;
                continue;
            }
        };
        match request {
            Request::Ehlo { .. } => {
                tx = Transaction::default();
                let mut caps = vec![
                    "sink.test".to_string(),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                ];
                caps.push("ENHANCEDSTATUSCODES".into());
                if !options.no_pipelining {
                    caps.push("PIPELINING".into());
                }
                if let Some(max) = options.max_size {
                    caps.push(format!("SIZE {max}"));
                }
                if shared.acceptor.is_some() && !tls {
                    caps.push("STARTTLS".into());
                }
                if options.auth.is_some() && tls {
                    let mechanisms = options.auth_mechanisms.as_deref().unwrap_or("PLAIN LOGIN");
                    caps.push(format!("AUTH {mechanisms}"));
                }
                let last = caps.len() - 1;
                for (i, cap) in caps.iter().enumerate() {
                    let sep = if i == last { ' ' } else { '-' };
                    conn.write_all(format!("250{sep}{cap}\r\n").as_bytes())
                        .await?;
                }
            }
            Request::Helo { .. } => reply(&mut conn, 250, "sink.test").await?,
            Request::StartTls => {
                let Some(acceptor) = shared.acceptor.as_ref().filter(|_| !tls) else {
                    reply(&mut conn, 503, "5.5.1 TLS not available").await?;
                    continue;
                };
                reply(&mut conn, 220, "2.0.0 ready to start TLS").await?;
                conn.flush().await?;
                // RFC 3207 §4.2: whatever the client pipelined before the handshake is dropped.
                let plain = conn.into_inner().into_inner();
                conn = BufReader::new(BufWriter::new(Box::new(acceptor.accept(plain).await?)));
                tls = true;
                auth_user = None;
                tx = Transaction::default();
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                shared.auth_attempts.fetch_add(1, Ordering::SeqCst);
                let Some((user, pass)) = options.auth.as_ref().filter(|_| tls) else {
                    reply(&mut conn, 538, "5.7.11 encryption required for AUTH").await?;
                    continue;
                };
                let given = match mechanism {
                    AUTH_PLAIN => {
                        let response = if initial_response.is_empty() {
                            reply(&mut conn, 334, "").await?;
                            read_line(&mut conn, &mut line, options.idle_timeout).await?;
                            String::from_utf8_lossy(&line).trim().to_string()
                        } else {
                            initial_response
                        };
                        decode(&response).and_then(|plain| {
                            let mut parts = plain.split(|&b| b == 0).skip(1);
                            let u = String::from_utf8(parts.next()?.to_vec()).ok()?;
                            let p = String::from_utf8(parts.next()?.to_vec()).ok()?;
                            Some((u, p))
                        })
                    }
                    AUTH_LOGIN => {
                        reply(&mut conn, 334, "VXNlcm5hbWU6").await?;
                        read_line(&mut conn, &mut line, options.idle_timeout).await?;
                        let u = decode(String::from_utf8_lossy(&line).trim());
                        reply(&mut conn, 334, "UGFzc3dvcmQ6").await?;
                        read_line(&mut conn, &mut line, options.idle_timeout).await?;
                        let p = decode(String::from_utf8_lossy(&line).trim());
                        match (u, p) {
                            (Some(u), Some(p)) => {
                                String::from_utf8(u).ok().zip(String::from_utf8(p).ok())
                            }
                            _ => None,
                        }
                    }
                    _ => {
                        reply(&mut conn, 504, "5.5.4 mechanism not supported").await?;
                        continue;
                    }
                };
                if given.as_ref().is_some_and(|(u, p)| u == user && p == pass) {
                    auth_user = Some(user.clone());
                    reply(&mut conn, 235, "2.7.0 authenticated").await?;
                } else {
                    shared.auth_refusals.fetch_add(1, Ordering::SeqCst);
                    reply(&mut conn, 535, "5.7.8 authentication credentials invalid").await?;
                }
            }
            Request::Mail { from } => {
                match strike(&mut conn, options, number, Stage::Mail(&from.address)).await? {
                    AfterFault::Proceed => {}
                    AfterFault::Replied => continue,
                    AfterFault::Close => return Ok(()),
                }
                let refusal = if options.require_tls && !tls {
                    Some((530, "5.7.0 must issue a STARTTLS command first".to_string()))
                } else if options.auth.is_some() && auth_user.is_none() {
                    Some((530, "5.7.0 authentication required".to_string()))
                } else if options.max_size.is_some_and(|max| from.size > max) {
                    Some((552, "5.3.4 message too big".to_string()))
                } else {
                    options.mail_reply.as_ref().and_then(|f| f(&from.address))
                };
                match refusal {
                    Some((code, text)) => {
                        reply(&mut conn, code, &text).await?;
                        if code == 421 {
                            return conn.flush().await;
                        }
                    }
                    None => {
                        tx = Transaction {
                            mail_from: Some(from.address),
                            rcpt_to: Vec::new(),
                        };
                        reply(&mut conn, 250, "2.1.0 sender ok").await?;
                    }
                }
            }
            Request::Rcpt { to } => {
                if tx.mail_from.is_none() {
                    reply(&mut conn, 503, "5.5.1 MAIL first").await?;
                    continue;
                }
                match strike(&mut conn, options, number, Stage::Rcpt(&to.address)).await? {
                    AfterFault::Proceed => {}
                    AfterFault::Replied => continue,
                    AfterFault::Close => return Ok(()),
                }
                match options.rcpt_reply.as_ref().and_then(|f| f(&to.address)) {
                    Some((code, text)) => {
                        reply(&mut conn, code, &text).await?;
                        if code == 421 {
                            return conn.flush().await;
                        }
                    }
                    None => {
                        tx.rcpt_to.push(to.address);
                        reply(&mut conn, 250, "2.1.5 recipient ok").await?;
                    }
                }
            }
            Request::Data => {
                let Some(mail_from) = tx.mail_from.take().filter(|_| !tx.rcpt_to.is_empty()) else {
                    tx = Transaction::default();
                    reply(&mut conn, 554, "5.5.1 no valid recipients").await?;
                    continue;
                };
                reply(&mut conn, 354, "end data with <CR><LF>.<CR><LF>").await?;
                let Some(data) = read_data(&mut conn, &mut line, options.idle_timeout).await?
                else {
                    return Ok(());
                };
                let received = Received {
                    mail_from,
                    rcpt_to: std::mem::take(&mut tx.rcpt_to),
                    data,
                    tls,
                    auth_user: auth_user.clone(),
                    arrived: std::time::Instant::now(),
                };
                tx = Transaction::default();
                match strike(&mut conn, options, number, Stage::DataEnd(&received)).await? {
                    AfterFault::Proceed => {}
                    AfterFault::Replied => continue,
                    AfterFault::Close => return Ok(()),
                }
                let refusal = if options
                    .max_size
                    .is_some_and(|max| received.data.len() > max)
                {
                    Some((552, "5.3.4 message too big".to_string()))
                } else {
                    options.data_reply.as_ref().and_then(|f| f(&received))
                };
                match refusal {
                    Some((code, text)) => {
                        reply(&mut conn, code, &text).await?;
                        if code == 421 {
                            return conn.flush().await;
                        }
                    }
                    None => {
                        shared
                            .messages
                            .lock()
                            .expect("sink lock is never poisoned")
                            .push(received);
                        shared.arrived.notify_waiters();
                        reply(&mut conn, 250, "2.0.0 queued").await?;
                    }
                }
            }
            Request::Rset => {
                tx = Transaction::default();
                reply(&mut conn, 250, "2.0.0 reset").await?;
            }
            Request::Noop { .. } => reply(&mut conn, 250, "2.0.0 ok").await?,
            Request::Quit => {
                reply(&mut conn, 221, "2.0.0 bye").await?;
                return conn.flush().await;
            }
            _ => reply(&mut conn, 502, "5.5.1 command not implemented").await?,
        }
    }
}

fn decode(b64: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}
