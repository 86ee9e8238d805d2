//! A raw SMTP client for tests that must control every byte: it writes what it is given and
//! reads whole replies, multi-line ones included, checking their form.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bytes out, complete replies in, over plain TCP.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to `addr`; every read waits at most 20 s, so a silent server fails the test.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// The socket, for half-closes, peeks and writes from another thread.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the server");
    }

    /// The next complete reply as `(code, text of the last line)`; `None` at end of stream.
    pub fn reply(&mut self) -> Option<(u16, String)> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                let line = String::from_utf8(line).expect("replies are UTF-8");
                assert!(line.len() >= 6, "malformed reply line {line:?}");
                let code: u16 = line[..3].parse().expect("reply code");
                if line.as_bytes()[3] == b' ' {
                    return Some((code, line[4..line.len() - 2].to_string()));
                }
                assert_eq!(line.as_bytes()[3], b'-', "malformed reply line {line:?}");
                continue;
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read from the server: {e}"),
            }
        }
    }

    /// The code of the next reply, which must come before the end of stream.
    pub fn code(&mut self) -> u16 {
        self.reply().expect("a reply before the end of stream").0
    }

    /// Sends `line` and CRLF; returns the reply code.
    pub fn command(&mut self, line: &str) -> u16 {
        self.send(format!("{line}\r\n").as_bytes());
        self.code()
    }

    /// Reads replies until the end of stream, which must come within `within`.
    pub fn expect_closed(&mut self, within: Duration) {
        let start = Instant::now();
        while self.reply().is_some() {
            assert!(start.elapsed() < within, "connection not closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_multi_line_reply_is_read_whole_and_the_end_of_stream_is_none() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept the client");
            s.write_all(b"220 ready\r\n").expect("greet");
            let mut line = [0u8; 16];
            let n = s.read(&mut line).expect("read EHLO");
            assert_eq!(&line[..n], b"EHLO t\r\n");
            s.write_all(b"250-hello\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
                .expect("answer EHLO");
        });
        let mut c = Client::connect(addr).expect("connect");
        assert_eq!(c.reply(), Some((220, "ready".into())));
        c.send(b"EHLO t\r\n");
        assert_eq!(c.reply(), Some((250, "SIZE 100".into())));
        server.join().expect("the server thread");
        c.expect_closed(Duration::from_secs(5));
        assert_eq!(c.reply(), None);
    }
}
