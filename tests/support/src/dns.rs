//! An authoritative DNS server on 127.0.0.1 (UDP and TCP, one random port) serving a fixed zone.
//!
//! Records are `(name, type, value)` triples:
//!
//! * `A`, `AAAA`: an address; `MX`: `"10 mx.example.test"`; `CNAME`: the target name;
//! * `TXT`: the text, split into 255-octet character-strings as a zone file would; a value
//!   written as quoted strings (`"v=spf1 " "-all"`) is served as exactly those strings;
//! * `PTR`: the target name;
//! * two fault pseudo-types: `SERVFAIL` (every query for the name is answered SERVFAIL) and
//!   `TIMEOUT` (queries for the name are dropped, so the client times out). Their value is ignored.
//!
//! A name present with other types answers NOERROR with no data; an absent name answers NXDOMAIN.
//! The messages are built with hickory-proto; the server loop is written here so that faults are
//! exact (a SERVFAIL or a silence for one name, everything else answered).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// What the server does for a name besides answering from the zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    ServFail,
    Timeout,
}

#[derive(Default)]
struct Zone {
    records: HashMap<String, Vec<Record>>,
    faults: HashMap<String, Fault>,
}

/// A running test DNS server; stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    let name = format!("{}.", name.trim_end_matches('.'));
    Name::from_ascii(&name).unwrap_or_else(|e| panic!("test zone name {name:?}: {e}"))
}

fn record(name: &str, rtype: &str, value: &str) -> Record {
    let owner = fqdn(name);
    let bad = |e: &dyn std::fmt::Display| -> ! {
        panic!("test zone record {name} {rtype} {value:?}: {e}")
    };
    let rdata = match rtype.to_ascii_uppercase().as_str() {
        "A" => RData::A(A(value.parse().unwrap_or_else(|e| bad(&e)))),
        "AAAA" => RData::AAAA(AAAA(value.parse().unwrap_or_else(|e| bad(&e)))),
        "CNAME" => RData::CNAME(CNAME(fqdn(value))),
        "MX" => {
            let (pref, host) = value
                .split_once(' ')
                .unwrap_or_else(|| bad(&"MX value is \"PREF HOST\""));
            RData::MX(MX::new(
                pref.parse().unwrap_or_else(|e| bad(&e)),
                fqdn(host),
            ))
        }
        "PTR" => RData::PTR(PTR(fqdn(value))),
        "TXT" if value.starts_with('"') => {
            let strings: Vec<&str> = value
                .split('"')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, s)| s)
                .collect();
            RData::TXT(TXT::new(strings.into_iter().map(String::from).collect()))
        }
        "TXT" => {
            let chunks: Vec<&[u8]> = if value.is_empty() {
                vec![b""]
            } else {
                value.as_bytes().chunks(255).collect()
            };
            RData::TXT(TXT::from_bytes(chunks))
        }
        other => bad(&format!("unsupported type {other}")),
    };
    Record::from_rdata(owner, 60, rdata)
}

impl Zone {
    fn answer(&self, request: &Message) -> Option<Message> {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.message_type = MessageType::Response;
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        let Some(query) = request.queries.first() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return Some(response);
        };
        response.add_query(query.clone());
        let mut name = key(&query.name().to_ascii());
        // Follow CNAMEs inside the zone, as an authoritative server does; bounded against loops.
        for _ in 0..8 {
            match self.faults.get(&name) {
                Some(Fault::Timeout) => return None,
                Some(Fault::ServFail) => {
                    response.metadata.response_code = ResponseCode::ServFail;
                    return Some(response);
                }
                None => {}
            }
            let Some(records) = self.records.get(&name) else {
                if response.answers.is_empty() {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                return Some(response);
            };
            let cname = records.iter().find_map(|r| match &r.data {
                RData::CNAME(CNAME(target)) if query.query_type() != RecordType::CNAME => {
                    Some(target.clone())
                }
                _ => None,
            });
            if let Some(target) = cname {
                response.add_answers(
                    records
                        .iter()
                        .filter(|r| r.record_type() == RecordType::CNAME)
                        .cloned(),
                );
                name = key(&target.to_ascii());
                continue;
            }
            response.add_answers(
                records
                    .iter()
                    .filter(|r| r.record_type() == query.query_type())
                    .cloned(),
            );
            return Some(response);
        }
        Some(response)
    }
}

impl DnsServer {
    /// Starts a server for `records` (see the module documentation) on 127.0.0.1, UDP and TCP on
    /// the same random port.
    pub async fn start(records: &[(&str, &str, &str)]) -> DnsServer {
        let mut zone = Zone::default();
        for &(name, rtype, value) in records {
            match rtype.to_ascii_uppercase().as_str() {
                "SERVFAIL" => {
                    zone.faults.insert(key(name), Fault::ServFail);
                }
                "TIMEOUT" => {
                    zone.faults.insert(key(name), Fault::Timeout);
                }
                _ => zone
                    .records
                    .entry(key(name))
                    .or_default()
                    .push(record(name, rtype, value)),
            }
        }
        let zone = Arc::new(zone);
        // Bind TCP first on a random port, then UDP on the same number; retry if UDP is taken.
        for _ in 0..20 {
            let tcp = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a loopback TCP port for the test DNS server");
            let addr = tcp.local_addr().expect("bound listener has an address");
            let Ok(udp) = UdpSocket::bind(addr).await else {
                continue;
            };
            let tasks = vec![
                tokio::spawn(serve_udp(udp, zone.clone())),
                tokio::spawn(serve_tcp(tcp, zone.clone())),
            ];
            return DnsServer { addr, tasks };
        }
        panic!("no loopback port free for both UDP and TCP after 20 tries");
    }

    /// The address to give a resolver as its name server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's IP (127.0.0.1).
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Zone>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let Some(response) = zone.answer(&request) else {
            continue;
        };
        let Ok(mut bytes) = response.to_vec() else {
            continue;
        };
        if bytes.len() > usize::from(request.max_payload()) {
            // Too big for this UDP exchange: a truncated answer makes the client retry over TCP.
            let mut truncated = response.truncate();
            truncated.metadata.truncation = true;
            let Ok(short) = truncated.to_vec() else {
                continue;
            };
            bytes = short;
        }
        let _ = socket.send_to(&bytes, peer).await;
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Zone>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let zone = zone.clone();
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let Ok(request) = Message::from_vec(&buf) else {
                    return;
                };
                let Some(response) = zone.answer(&request) else {
                    continue;
                };
                let Ok(bytes) = response.to_vec() else {
                    return;
                };
                let Ok(len) = u16::try_from(bytes.len()) else {
                    return;
                };
                let mut out = len.to_be_bytes().to_vec();
                out.extend_from_slice(&bytes);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}
