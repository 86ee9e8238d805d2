//! A minimal pipelining SMTP client for load generation: one session sends many messages,
//! MAIL, RCPT and DATA in one write (RFC 2920), and times the reply to the end of data.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Every reply must come within this; a stuck server fails the run instead of hanging it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// How the session is set up before the first message.
#[derive(Clone)]
pub enum Setup {
    /// Plain EHLO, no TLS, no AUTH (a local client of the daemon, as Mastodon is).
    Plain,
    /// STARTTLS verified against `tls`, then AUTH PLAIN (the path the daemon relays over).
    TlsAuth {
        tls: Arc<ClientConfig>,
        user: String,
        password: String,
    },
}

pub struct Client {
    stream: BufReader<Box<dyn Io>>,
    line: String,
}

fn protocol(what: &str, reply: &str) -> io::Error {
    io::Error::other(format!("{what}: unexpected reply {:?}", reply.trim_end()))
}

impl Client {
    /// Connects, reads the greeting and says EHLO (then STARTTLS, EHLO and AUTH if asked).
    pub async fn connect(addr: SocketAddr, setup: &Setup) -> io::Result<Client> {
        let tcp = timeout(REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::other("connect timed out"))??;
        tcp.set_nodelay(true)?;
        let mut c = Client {
            stream: BufReader::with_capacity(16 * 1024, Box::new(tcp)),
            line: String::new(),
        };
        c.expect(220, "greeting").await?;
        c.command("EHLO bench.test\r\n", 250, "EHLO").await?;
        if let Setup::TlsAuth {
            tls,
            user,
            password,
        } = setup
        {
            c.command("STARTTLS\r\n", 220, "STARTTLS").await?;
            if !c.stream.buffer().is_empty() {
                return Err(io::Error::other("data after the STARTTLS reply"));
            }
            let plain = c.stream.into_inner();
            let name = ServerName::try_from(addr.ip().to_string())
                .map_err(|e| io::Error::other(e.to_string()))?;
            let tls = TlsConnector::from(tls.clone()).connect(name, plain).await?;
            c.stream = BufReader::with_capacity(16 * 1024, Box::new(tls));
            c.command("EHLO bench.test\r\n", 250, "EHLO after STARTTLS")
                .await?;
            let token = {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
            };
            c.command(&format!("AUTH PLAIN {token}\r\n"), 235, "AUTH")
                .await?;
        }
        Ok(c)
    }

    /// Sends one message (`wire` is already dot-stuffed and ends with CRLF) and returns how
    /// long the server took from the end-of-data sequence to its 250.
    pub async fn send(&mut self, from: &str, to: &str, wire: &[u8]) -> io::Result<Duration> {
        let envelope = format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n");
        self.write(envelope.as_bytes()).await?;
        self.expect(250, "MAIL FROM").await?;
        self.expect(250, "RCPT TO").await?;
        self.expect(354, "DATA").await?;
        let inner = self.stream.get_mut();
        inner.write_all(wire).await?;
        inner.write_all(b".\r\n").await?;
        inner.flush().await?;
        let data_end = Instant::now();
        self.expect(250, "end of data").await?;
        Ok(data_end.elapsed())
    }

    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = self.expect(221, "QUIT").await;
        }
    }

    async fn command(&mut self, line: &str, code: u16, what: &str) -> io::Result<()> {
        self.write(line.as_bytes()).await?;
        self.expect(code, what).await
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let inner = self.stream.get_mut();
        inner.write_all(bytes).await?;
        inner.flush().await
    }

    /// Reads one (possibly multi-line) reply and checks its code.
    async fn expect(&mut self, code: u16, what: &str) -> io::Result<()> {
        loop {
            self.line.clear();
            let n = timeout(REPLY_TIMEOUT, self.stream.read_line(&mut self.line))
                .await
                .map_err(|_| io::Error::other(format!("{what}: no reply in time")))??;
            if n == 0 {
                return Err(io::Error::other(format!("{what}: connection closed")));
            }
            let got: Option<u16> = self.line.get(..3).and_then(|c| c.parse().ok());
            if got != Some(code) {
                return Err(protocol(what, &self.line));
            }
            if self.line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }
}
