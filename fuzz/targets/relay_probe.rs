//! The relay probe's dialogue fed arbitrary server replies, split at arbitrary points.
//!
//! Input: `flags`, `split seed`, then the bytes the server sends. Flags: bits 0-1 pick the
//! TLS mode (off, STARTTLS, implicit, off), bit 2 gives credentials, bit 3 makes the TLS
//! handshake succeed when STARTTLS is accepted (else it fails).
//!
//! Invariants: only the probe's commands are written (EHLO, STARTTLS, AUTH and its LOGIN
//! lines, MAIL FROM, RSET, QUIT), never RCPT or DATA; nothing of AUTH, nor the password in any
//! encoding, before TLS is established; MAIL FROM at most once; nothing after the dialogue
//! finished; a finished dialogue awaits nothing.

use mailer_core::address::Address;
use mailer_core::check::probe::{ProbeEvent, ProbeSession};
use mailer_core::smtp::client::Tls;
use mailer_core::smtp::protocol::{auth_login_line, auth_plain_command};
use mailer_core::tables::secrets::Credentials;

use super::chunks;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";

pub fn run(data: &[u8]) {
    let [flags, seed, server @ ..] = data else {
        return;
    };
    let tls = match flags & 3 {
        1 => Tls::StartTls,
        2 => Tls::Implicit,
        _ => Tls::Off,
    };
    let credentials = (flags & 4 != 0).then(|| Credentials {
        user: USER.into(),
        password: PASSWORD.into(),
    });
    let handshake_succeeds = flags & 8 != 0;
    let sender = Address::parse("postmaster@ublog.test").expect("literal");
    let mut session = ProbeSession::new("mx.test", tls, credentials, sender);
    let secrets = [
        auth_plain_command(USER, PASSWORD),
        auth_login_line(PASSWORD).trim_end().to_string(),
    ];
    let mut tls_up = tls == Tls::Implicit;
    let mut finished = false;
    let mut written: Vec<u8> = Vec::new();
    let mut auth_login_lines = 0;
    let mut check_output = |session: &mut ProbeSession, tls_up: bool, finished: bool| {
        let out = session.take_output();
        if out.is_empty() {
            return;
        }
        assert!(!finished, "written after the dialogue finished: {out:?}");
        assert!(out.ends_with(b"\r\n"), "partial command line: {out:?}");
        let text = String::from_utf8(out.clone()).expect("commands are UTF-8");
        for line in text.split_terminator("\r\n") {
            let verb = line
                .split([' ', ':'])
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" | "STARTTLS" | "RSET" | "QUIT" => {}
                "MAIL" => assert!(
                    !String::from_utf8_lossy(&written).contains("MAIL FROM"),
                    "MAIL FROM twice"
                ),
                "AUTH" => {
                    assert!(tls_up, "AUTH before TLS: {line}");
                    if line == "AUTH LOGIN" {
                        auth_login_lines = 2;
                    }
                }
                _ if auth_login_lines > 0 => {
                    assert!(tls_up, "credentials before TLS");
                    auth_login_lines -= 1;
                }
                other => panic!("the probe wrote {other:?}: {line:?}"),
            }
        }
        if !tls_up {
            for secret in &secrets {
                assert!(
                    !text.contains(secret.trim_end()),
                    "credentials before TLS: {text:?}"
                );
            }
        }
        written.extend_from_slice(&out);
    };
    for chunk in chunks(server, *seed) {
        session.receive(chunk);
        loop {
            check_output(&mut session, tls_up, finished);
            match session.poll_event() {
                Some(ProbeEvent::StartTls) => {
                    assert!(!tls_up, "STARTTLS twice");
                    if handshake_succeeds {
                        tls_up = true;
                        session.tls_established();
                    } else {
                        session.abort("TLS handshake failed");
                    }
                }
                Some(ProbeEvent::Finished) => {
                    assert!(!finished, "finished twice");
                    finished = true;
                    assert!(session.awaiting().is_none());
                }
                None => break,
            }
        }
    }
    session.end_of_input();
    check_output(&mut session, tls_up, finished);
    assert!(
        session.awaiting().is_none(),
        "awaits a reply after the end of input"
    );
    let text = String::from_utf8_lossy(&written);
    assert!(!text.contains("RCPT") && !text.contains("DATA"), "{text:?}");
}
