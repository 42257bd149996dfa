//! The monitor against real sockets on 127.0.0.1: a relay that serves NIP-11 and WebSocket on
//! one port (plain or TLS with a generated CA), a small UDP DNS server, a real PostgreSQL.

mod common;

use bigbrotr::config::{Config, Relay, Seconds, SecretKey};
use bigbrotr::monitor::{self, Monitor};
use bigbrotr::stages::model::RelayUrl;
use bigbrotr::stages::monitor::nip66;
use bigbrotr_testkit::relay::{Behavior, TestRelay};
use common::*;
use futures_util::{SinkExt, StreamExt};
use nostr::JsonUtil;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

/// The monitor's test key (any valid scalar).
const MONITOR_KEY: &str = "3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f";

// ---------------------------------------------------------------------------------------
// A relay serving NIP-11 (HTTP GET with Accept: application/nostr+json) and WebSocket on
// the same port, optionally over TLS.
// ---------------------------------------------------------------------------------------

/// The HTTP answer to a NIP-11 request.
#[derive(Clone)]
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(v: &Value) -> Reply {
        Reply::raw(200, "application/nostr+json", v.to_string().into_bytes())
    }

    fn raw(status: u16, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content_type,
            body,
        }
    }
}

#[derive(Default)]
struct Seen {
    /// Request heads of the plain HTTP requests.
    http: Mutex<Vec<String>>,
    /// Events received in client EVENT messages (wire JSON).
    events: Mutex<Vec<String>>,
    reqs: AtomicUsize,
}

struct Server {
    port: u16,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}", self.port)
    }
}

async fn server(reply: Reply, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let stored = bigbrotr_testkit::gen::generate(&bigbrotr_testkit::gen::GenSpec {
        count: 1,
        ..Default::default()
    })
    .remove(0)
    .json;
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (reply, seen, stored, tls) =
                (reply.clone(), s.clone(), stored.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(cfg) => {
                        if let Ok(t) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                            serve(t, reply, seen, stored).await;
                        }
                    }
                    None => serve(tcp, reply, seen, stored).await,
                }
            });
        }
    });
    Server { port, seen, task }
}

async fn serve<S>(mut s: S, reply: Reply, seen: Arc<Seen>, stored: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        if head.len() > 64 << 10 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if text.contains("upgrade: websocket") {
        let io = Prefixed {
            prefix: head,
            pos: 0,
            inner: s,
        };
        if let Ok(ws) = tokio_tungstenite::accept_async(io).await {
            relay(ws, seen, stored).await;
        }
        return;
    }
    seen.http.lock().expect("lock").push(text.clone());
    let (status, ctype, body) = if text.contains("accept: application/nostr+json") {
        (reply.status, reply.content_type, reply.body)
    } else {
        (404, "text/plain", b"not found".to_vec())
    };
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nServer: bigbrotr-test/1.0\r\nX-Powered-By: tokio\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    let _ = s.write_all(&out).await;
    let _ = s.shutdown().await;
}

async fn relay<S>(mut ws: tokio_tungstenite::WebSocketStream<S>, seen: Arc<Seen>, stored: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        match v[0].as_str() {
            Some("REQ") => {
                seen.reqs.fetch_add(1, Ordering::SeqCst);
                let sub = v[1].to_string();
                let _ = ws
                    .send(Message::Text(format!("[\"EVENT\",{sub},{stored}]").into()))
                    .await;
                let _ = ws
                    .send(Message::Text(format!("[\"EOSE\",{sub}]").into()))
                    .await;
            }
            Some("EVENT") => {
                let ev = v[1].to_string();
                let ok = nostr::Event::from_json(&ev).is_ok_and(|e| e.verify().is_ok());
                seen.events.lock().expect("lock").push(ev);
                let msg = if ok { "" } else { "invalid: bad signature" };
                let _ = ws
                    .send(Message::Text(
                        json!(["OK", v[1]["id"], ok, msg]).to_string().into(),
                    ))
                    .await;
            }
            _ => {}
        }
    }
}

/// A stream that first yields bytes already read (the HTTP head), so the WebSocket
/// handshake can be parsed after we peeked at it.
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------
// A UDP DNS server for the zone `test.`: relay.test is a CNAME (TTL 600) of edge.relay.test,
// which has A 127.0.0.1 and AAAA ::1 (TTL 300). Other names are NXDOMAIN.
// ---------------------------------------------------------------------------------------

const CNAME_TTL: u32 = 600;
const ADDR_TTL: u32 = 300;

struct Dns {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn record(out: &mut Vec<u8>, name: &str, rtype: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(&encode_name(name));
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// Answers one query; `None` for datagrams that are not a well-formed single question.
fn answer(q: &[u8]) -> Option<Vec<u8>> {
    const A: u16 = 1;
    const CNAME: u16 = 5;
    const AAAA: u16 = 28;
    if q.len() < 12 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let name = labels.join(".");
    let mut answers = Vec::new();
    let mut count = 0u16;
    let edge = "edge.relay.test";
    let addr = |answers: &mut Vec<u8>, count: &mut u16| match qtype {
        A => {
            record(answers, edge, A, ADDR_TTL, &Ipv4Addr::LOCALHOST.octets());
            *count += 1;
        }
        AAAA => {
            record(answers, edge, AAAA, ADDR_TTL, &Ipv6Addr::LOCALHOST.octets());
            *count += 1;
        }
        _ => {}
    };
    let rcode = match name.as_str() {
        "relay.test" => {
            record(
                &mut answers,
                "relay.test",
                CNAME,
                CNAME_TTL,
                &encode_name(edge),
            );
            count += 1;
            addr(&mut answers, &mut count);
            0
        }
        "edge.relay.test" => {
            addr(&mut answers, &mut count);
            0
        }
        _ => 3,
    };
    let mut out = Vec::new();
    out.extend_from_slice(&q[0..2]);
    // QR, opcode 0, AA, RD copied; RA; rcode.
    out.push(0x84 | (q[2] & 0x01));
    out.push(0x80 | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(question);
    out.extend_from_slice(&answers);
    Some(out)
}

async fn dns_server() -> Dns {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
    let addr = sock.local_addr().expect("addr");
    let queries = Arc::new(AtomicUsize::new(0));
    let q = queries.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            if let Some(resp) = answer(&buf[..n]) {
                q.fetch_add(1, Ordering::SeqCst);
                let _ = sock.send_to(&resp, from).await;
            }
        }
    });
    Dns {
        addr,
        queries,
        task,
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------

fn monitor_config(db: &str) -> Config {
    let mut c = config(db);
    c.monitor.timeout_clearnet = Seconds::new(5);
    c.monitor.max_parallel_clearnet = 4;
    c
}

fn nip11_doc() -> Value {
    json!({
        "name": "bigbrotr test relay",
        "description": "serves the monitor's tests",
        "pubkey": "not-a-hex-pubkey",
        "supported_nips": [1, 11, "66"],
        "software": "https://example.invalid/relay",
        "version": "1.2.3",
        "limitation": {
            "max_limit": 300,
            "max_subscriptions": "10",
            "auth_required": false,
            "payment_required": true,
            "restricted_writes": false
        },
        "language_tags": ["en"],
        "tags": ["testing"],
        "x_custom": {"kept": true}
    })
}

/// The newest snapshot of `url` as JSON (every column of relay_metadata_latest).
async fn latest(pool: &bigbrotr::db::Pool, url: &str) -> Value {
    let c = pool.get().await.expect("conn");
    let row = c
        .query_one(
            "SELECT to_jsonb(l) FROM relay_metadata_latest AS l WHERE relay_url = $1",
            &[&url],
        )
        .await
        .expect("one snapshot");
    row.get::<_, Value>(0)
}

async fn count(pool: &bigbrotr::db::Pool, sql: &str) -> i64 {
    let c = pool.get().await.expect("conn");
    c.query_one(sql, &[]).await.expect("count").get::<_, i64>(0)
}

fn tag_values<'a>(tags: &'a Value, name: &str) -> Vec<&'a str> {
    tags.as_array()
        .expect("tags")
        .iter()
        .filter(|t| t[0] == name)
        .map(|t| t[1].as_str().expect("tag value"))
        .collect()
}

/// Parses and verifies an event with the `nostr` crate; returns it as JSON.
fn verified(json: &str) -> Value {
    let ev = nostr::Event::from_json(json).expect("nostr parses the event");
    ev.verify().expect("the event verifies");
    serde_json::from_str(json).expect("json")
}

fn monitor_pubkey() -> String {
    let kp = secp256k1::Keypair::from_secret_bytes(
        <[u8; 32]>::try_from(hex::decode(MONITOR_KEY).expect("hex")).expect("32"),
    )
    .expect("key");
    hex::encode(kp.x_only_public_key().0.to_byte_array())
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

/// `monitor --once` over the registry: the relay is found through the configured DNS server
/// (CNAME, A, AAAA and their TTLs recorded), its NIP-11 document is fetched with the NIP-11
/// Accept header and stored content-addressed, open/read/write are measured (the write probe
/// is signed with the monitor key), and relay_limits exposes what the connectors need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_a_relay_found_through_dns() {
    let dns = dns_server().await;
    let relay = server(Reply::json(&nip11_doc()), None).await;
    let url = relay.url("ws", "relay.test");
    let (pool, db) = test_db().await;
    let mut cfg = monitor_config(&db);
    cfg.monitor.dns_server = dns.addr.to_string();
    cfg.monitor.private_key = SecretKey::parse(MONITOR_KEY).expect("key");
    bigbrotr::register_relays(&pool, &[relay_url(&url)])
        .await
        .expect("register");

    let report = monitor::run_once(&cfg, &pool, None, None)
        .await
        .expect("pass");
    print!("{}", report.render());
    assert_eq!(
        (
            report.checked,
            report.openable,
            report.readable,
            report.writable
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(
        (report.nip11, report.stored, report.store_errors),
        (1, 1, 0)
    );
    assert!(report.published.is_empty(), "publishing is off by default");
    assert!(
        dns.queries.load(Ordering::SeqCst) >= 3,
        "A, AAAA and CNAME asked"
    );

    let row = latest(&pool, &url).await;
    assert_eq!(row["network"], "clearnet");
    assert_eq!(row["name"], "bigbrotr test relay");
    assert_eq!(row["supported_nips"], json!([1, 11, 66]));
    assert_eq!(row["pubkey"], "not-a-hex-pubkey");
    assert_eq!(row["software"], "https://example.invalid/relay");
    assert_eq!(row["limitation"]["max_limit"], 300);
    assert_eq!(row["extra_fields"]["x_custom"], json!({"kept": true}));
    assert_eq!(row["nip11_raw"], nip11_doc());
    for rtt in ["rtt_open", "rtt_read", "rtt_write"] {
        assert!(
            row[rtt].as_i64().is_some_and(|v| v > 0),
            "{rtt}: {}",
            row[rtt]
        );
    }
    assert_eq!(
        (&row["openable"], &row["readable"], &row["writable"]),
        (&json!(true), &json!(true), &json!(true))
    );

    let d = &row["dns"];
    assert_eq!(d["a"], json!([{"ip": "127.0.0.1", "ttl": ADDR_TTL}]), "{d}");
    assert_eq!(d["aaaa"], json!([{"ip": "::1", "ttl": ADDR_TTL}]), "{d}");
    assert_eq!(
        d["cname"],
        json!([{"name": "relay.test.", "target": "edge.relay.test.", "ttl": CNAME_TTL}]),
        "{d}"
    );
    assert_eq!(d["ttl"], ADDR_TTL);

    let http = &row["http"];
    assert_eq!(http["status"], 200);
    assert_eq!(http["server"], "bigbrotr-test/1.0");
    assert_eq!(http["x_powered_by"], "tokio");
    assert!(row["tls"].is_null(), "no TLS facts for ws://");
    let heads = relay.seen.http.lock().expect("lock").clone();
    assert!(
        heads
            .iter()
            .any(|h| h.contains("accept: application/nostr+json")
                && h.contains(&format!("host: relay.test:{}", relay.port))),
        "{heads:?}"
    );

    // The write probe reached the relay signed by the monitor key.
    let probes = relay.seen.events.lock().expect("lock").clone();
    assert_eq!(probes.len(), 1);
    let probe = verified(&probes[0]);
    assert_eq!(probe["pubkey"], monitor_pubkey());
    assert_eq!(probe["kind"], cfg.monitor.write_kind);
    assert!(relay.seen.reqs.load(Ordering::SeqCst) >= 1);

    // Two more checks: new snapshots, the same NIP-11 document row.
    let m = Monitor::new(&cfg).expect("monitor");
    let mut r = m.checker().check(&relay_url(&url)).await;
    for _ in 0..2 {
        r.generated_at += 10;
        assert!(monitor::store(&pool, &r).await.expect("store"));
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM relay_metadata").await, 3);
    assert_eq!(count(&pool, "SELECT count(*) FROM nip11").await, 1);
    assert!(
        !monitor::store(&pool, &r).await.expect("store again"),
        "same second: kept"
    );

    let limits = monitor::relay_limits(&pool).await.expect("limits");
    assert_eq!(
        limits.get(&url),
        Some(&monitor::RelayLimits {
            max_limit: Some(300),
            max_subscriptions: Some(10),
            auth_required: false,
            reachable: true,
        })
    );
}

/// Without a key the write check is skipped (writable NULL), the rest still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_write_check_is_skipped() {
    let relay = server(Reply::json(&nip11_doc()), None).await;
    let url = relay.url("ws", "127.0.0.1");
    let (pool, db) = test_db().await;
    let cfg = monitor_config(&db);
    let report = monitor::run_once(&cfg, &pool, Some(vec![relay_url(&url)]), None)
        .await
        .expect("pass");
    assert_eq!(
        (report.checked, report.openable, report.writable),
        (1, 1, 0)
    );
    let row = latest(&pool, &url).await;
    assert_eq!(row["network"], "local");
    assert!(row["rtt_open"].as_i64().is_some_and(|v| v > 0));
    assert!(row["rtt_read"].as_i64().is_some_and(|v| v > 0));
    assert!(
        row["rtt_write"].is_null() && row["writable"].is_null(),
        "{row}"
    );
    assert!(row["dns"].is_null(), "IP literals get no DNS check");
    assert!(relay.seen.events.lock().expect("lock").is_empty());
}

struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

/// A CA and a server certificate for 127.0.0.1 and localhost signed by it.
fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bigbrotr test CA");
    ca_params
        .distinguished_name
        .push(DnType::OrganizationName, "bigbrotr tests");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf params");
    leaf.distinguished_name
        .push(DnType::CommonName, "test relay");
    let cert = leaf.signed_by(&leaf_key, &*ca).expect("leaf");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("server config");
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

/// A wss relay with a certificate from a private CA: trusted through `monitor.tls_ca_file`,
/// the certificate facts are recorded as valid and every check works over TLS; without the
/// CA the same facts are recorded as invalid, and nothing else can connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_tls_certificates_valid_or_not() {
    let pki = pki();
    let relay = server(Reply::json(&nip11_doc()), Some(pki.server.clone())).await;
    let url = relay.url("wss", "127.0.0.1");
    let ca_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(ca_file.path(), &pki.ca_pem).expect("write ca");
    let now = bigbrotr::stages::model::now_secs();

    // Trusted.
    let (pool, db) = test_db().await;
    let mut cfg = monitor_config(&db);
    cfg.monitor.tls_ca_file = ca_file.path().display().to_string();
    cfg.monitor.private_key = SecretKey::parse(MONITOR_KEY).expect("key");
    let report = monitor::run_once(&cfg, &pool, Some(vec![relay_url(&url)]), None)
        .await
        .expect("pass");
    assert_eq!(
        (
            report.openable,
            report.readable,
            report.writable,
            report.nip11
        ),
        (1, 1, 1, 1)
    );
    let row = latest(&pool, &url).await;
    let tls = &row["tls"];
    assert_eq!(tls["valid"], true, "{tls}");
    assert_eq!(tls["issuer_cn"], "bigbrotr test CA", "{tls}");
    assert_eq!(tls["issuer_org"], "bigbrotr tests", "{tls}");
    assert_eq!(tls["subject_cn"], "test relay", "{tls}");
    assert_eq!(tls["sans"], json!(["127.0.0.1", "localhost"]), "{tls}");
    assert_eq!(tls["chain_length"], 2, "{tls}");
    let (nb, na) = (
        tls["not_before"].as_i64().expect("not_before"),
        tls["not_after"].as_i64().expect("not_after"),
    );
    assert!(nb < now && now < na, "{nb} < {now} < {na}");
    assert!(tls["fingerprint_sha256"]
        .as_str()
        .is_some_and(|f| f.len() == 64));
    assert!(tls["protocol"].as_str().is_some(), "{tls}");
    assert_eq!(row["name"], "bigbrotr test relay", "NIP-11 over https");
    assert!(row["rtt_write"].as_i64().is_some_and(|v| v > 0));

    // Not trusted: the certificate is still described, as invalid.
    let (pool, db) = test_db().await;
    let cfg = monitor_config(&db);
    let report = monitor::run_once(&cfg, &pool, Some(vec![relay_url(&url)]), None)
        .await
        .expect("pass");
    assert_eq!(
        (report.checked, report.openable, report.nip11, report.stored),
        (1, 0, 0, 1)
    );
    let row = latest(&pool, &url).await;
    let tls = &row["tls"];
    assert_eq!(tls["valid"], false, "{tls}");
    assert!(
        tls["invalid_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{tls}"
    );
    assert_eq!(tls["issuer_cn"], "bigbrotr test CA", "{tls}");
    assert_eq!(tls["sans"], json!(["127.0.0.1", "localhost"]), "{tls}");
    assert_eq!(row["openable"], false);
    assert!(row["nip11_id"].is_null());
    assert!(row["http"]["error"].as_str().is_some(), "{}", row["http"]);
    assert!(row["nip66_raw"]["open"]["error"].as_str().is_some());
}

/// Kind 30166 and 10166 are signed by the monitor key, verify, and carry the NIP-66 tags;
/// with `publish_relays` set they are sent to each relay and answered OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_nip66_events_that_verify() {
    let dns = dns_server().await;
    let relay = server(Reply::json(&nip11_doc()), None).await;
    let url = relay.url("ws", "relay.test");
    let sink = server(Reply::json(&json!({})), None).await;
    let test_relay = TestRelay::start(Vec::new(), Behavior::default())
        .await
        .expect("test relay");
    let (pool, db) = test_db().await;
    let mut cfg = monitor_config(&db);
    cfg.monitor.dns_server = dns.addr.to_string();
    cfg.monitor.private_key = SecretKey::parse(MONITOR_KEY).expect("key");
    cfg.monitor.interval = Seconds::new(1800);
    cfg.monitor.publish_relays = [sink.url("ws", "127.0.0.1"), test_relay.url()]
        .iter()
        .map(|u| Relay::parse(u).expect("url"))
        .collect();
    cfg.validate().expect("valid config");

    // The events themselves.
    let m = Monitor::new(&cfg).expect("monitor");
    let r = m.checker().check(&relay_url(&url)).await;
    let kp = cfg.monitor.keypair().expect("key");
    let ev = verified(&nip66::discovery_event(&kp, &r, 1_700_000_000).json);
    assert_eq!(ev["kind"], 30166);
    assert_eq!(ev["pubkey"], monitor_pubkey());
    let tags = &ev["tags"];
    assert_eq!(tag_values(tags, "d"), vec![url.as_str()]);
    assert_eq!(tag_values(tags, "n"), vec!["clearnet"]);
    assert_eq!(tag_values(tags, "N"), vec!["1", "11", "66"]);
    let mut req = tag_values(tags, "R");
    req.sort_unstable();
    assert_eq!(req, vec!["!auth", "!writes", "payment"]);
    for t in ["rtt-open", "rtt-read", "rtt-write"] {
        let v = tag_values(tags, t);
        assert_eq!(v.len(), 1, "{t}");
        assert!(v[0].parse::<u32>().is_ok_and(|ms| ms > 0), "{t}: {v:?}");
    }
    assert_eq!(tag_values(tags, "t"), vec!["testing"]);
    assert_eq!(tag_values(tags, "l"), vec!["en"]);
    let content: Value =
        serde_json::from_str(ev["content"].as_str().expect("content")).expect("content is JSON");
    assert_eq!(content, nip11_doc());

    let ann = verified(&nip66::announcement_event(&kp, &m.announcement(), 1_700_000_000).json);
    assert_eq!(ann["kind"], 10166);
    assert_eq!(tag_values(&ann["tags"], "frequency"), vec!["1800"]);
    assert_eq!(
        tag_values(&ann["tags"], "c"),
        vec!["open", "read", "write", "nip11", "dns", "ssl"]
    );
    let timeouts: Vec<&Value> = ann["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter(|t| t[0] == "timeout")
        .collect();
    assert!(
        timeouts.contains(&&json!(["timeout", "open", "5000"])),
        "{timeouts:?}"
    );

    // Publishing during a pass.
    let report = monitor::run_once(&cfg, &pool, Some(vec![relay_url(&url)]), None)
        .await
        .expect("pass");
    print!("{}", report.render());
    assert_eq!(report.events_built, 1);
    assert_eq!(report.published.len(), 2);
    for p in &report.published {
        assert_eq!((p.accepted, p.rejected, p.failed), (2, 0, 0), "{p:?}");
    }
    assert_eq!(test_relay.counters().published.load(Ordering::SeqCst), 2);
    let got = sink.seen.events.lock().expect("lock").clone();
    let mut kinds: Vec<i64> = got
        .iter()
        .map(|j| verified(j)["kind"].as_i64().expect("kind"))
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, vec![10166, 30166]);
    test_relay.stop().await;
}

/// Documents that are not JSON, not objects, of the wrong types, with U+0000, too large or
/// behind an error status: each check is stored, the document kept when it is an object
/// (leniently parsed) and otherwise NULL with the reason in the check result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_nip11_documents_are_stored_leniently() {
    let (pool, db) = test_db().await;
    let mut cfg = monitor_config(&db);
    cfg.monitor.private_key = SecretKey::parse(MONITOR_KEY).expect("key");
    let m = Monitor::new(&cfg).expect("monitor");
    let kp = cfg.monitor.keypair().expect("key");
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let cases: Vec<(&str, Reply, Option<&str>)> = vec![
        (
            "html",
            Reply::raw(200, "text/html", b"<html>hello</html>".to_vec()),
            Some("not JSON"),
        ),
        (
            "array",
            Reply::raw(200, "application/nostr+json", b"[1,2,3]".to_vec()),
            Some("array"),
        ),
        (
            "nul",
            Reply::raw(
                200,
                "application/nostr+json",
                br#"{"name":"a\u0000b","description":"x"}"#.to_vec(),
            ),
            Some("U+0000"),
        ),
        (
            "too deep",
            Reply::raw(200, "application/nostr+json", deep.into_bytes()),
            Some("not JSON"),
        ),
        (
            "too large",
            Reply::json(&json!({"name": "x".repeat(300 << 10)})),
            Some("larger than"),
        ),
        (
            "error status",
            Reply::raw(500, "application/nostr+json", br#"{"name":"x"}"#.to_vec()),
            Some("HTTP status 500"),
        ),
        (
            "wrong types",
            Reply::json(&json!({
                "name": 5,
                "supported_nips": [1, "11", "x", 2.5, null],
                "pubkey": "zz-not-hex",
                "software": {"url": "x"},
                "limitation": {"max_limit": "300", "max_subscriptions": "lots", "auth_required": "true"},
                "x-extension": {"a": [1, 2]}
            })),
            None,
        ),
    ];
    for (what, reply, error) in cases {
        let relay = server(reply, None).await;
        let url = relay.url("ws", "127.0.0.1");
        let r = m.checker().check(&relay_url(&url)).await;
        assert!(r.openable, "{what}: the relay itself works");
        assert!(monitor::store(&pool, &r).await.expect("store"), "{what}");
        let row = latest(&pool, &url).await;
        // A 30166 can be built for every case and verifies.
        let ev = verified(&nip66::discovery_event(&kp, &r, 1_700_000_000).json);
        match error {
            Some(e) => {
                assert!(row["nip11_id"].is_null(), "{what}: {row}");
                let why = row["http"]["nip11_error"]
                    .as_str()
                    .or(row["http"]["error"].as_str())
                    .unwrap_or_default();
                assert!(why.contains(e), "{what}: {why:?} should mention {e:?}");
                assert_eq!(ev["content"], "", "{what}");
                assert!(tag_values(&ev["tags"], "N").is_empty());
            }
            None => {
                assert_eq!(row["name"], "5", "{what}");
                assert_eq!(row["supported_nips"], json!([1, 11]), "{what}");
                assert_eq!(row["pubkey"], "zz-not-hex");
                assert!(row["software"].is_null());
                assert_eq!(row["extra_fields"]["x-extension"], json!({"a": [1, 2]}));
                assert_eq!(row["nip11_raw"]["limitation"]["max_subscriptions"], "lots");
                assert_eq!(tag_values(&ev["tags"], "N"), vec!["1", "11"]);
                assert_eq!(tag_values(&ev["tags"], "R"), vec!["auth"]);
                let limits = monitor::relay_limits(&pool).await.expect("limits");
                let l = limits.get(&url).expect("limits of the relay");
                assert_eq!(
                    (
                        l.max_limit,
                        l.max_subscriptions,
                        l.auth_required,
                        l.reachable
                    ),
                    (Some(300), None, true, true)
                );
            }
        }
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM relay_metadata").await, 7);
    assert_eq!(count(&pool, "SELECT count(*) FROM nip11").await, 1);
}

/// A relay that is down is still recorded: a snapshot saying nothing could be obtained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_relay_is_recorded_as_such() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("ws://127.0.0.1:{port}");
    let (pool, db) = test_db().await;
    let cfg = monitor_config(&db);
    let report = monitor::run_once(&cfg, &pool, Some(vec![relay_url(&url)]), None)
        .await
        .expect("pass");
    assert_eq!((report.checked, report.openable, report.stored), (1, 0, 1));
    let row = latest(&pool, &url).await;
    assert_eq!(row["openable"], false);
    assert_eq!(row["readable"], false);
    assert!(row["rtt_open"].is_null());
    assert!(row["nip11_id"].is_null());
    let limits = monitor::relay_limits(&pool).await.expect("limits");
    assert!(limits.get(&url).is_some_and(|l| !l.reachable));
}

/// A publish relay that is down does not stop the pass: its events are counted as failed
/// (after the first failure without waiting again), the checks are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_publish_relay_is_reported_not_waited_for() {
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(server(Reply::json(&nip11_doc()), None).await);
    }
    let (pool, db) = test_db().await;
    let mut cfg = monitor_config(&db);
    cfg.monitor.private_key = SecretKey::parse(MONITOR_KEY).expect("key");
    cfg.monitor.publish_relays =
        vec![Relay::parse(&format!("ws://127.0.0.1:{port}")).expect("url")];
    let urls = servers
        .iter()
        .map(|s| relay_url(&s.url("ws", "127.0.0.1")))
        .collect();
    let report = monitor::run_once(&cfg, &pool, Some(urls), None)
        .await
        .expect("pass");
    assert_eq!(
        (report.checked, report.stored, report.events_built),
        (3, 3, 3)
    );
    let p = &report.published[0];
    assert_eq!((p.accepted, p.rejected, p.failed), (0, 0, 4), "{p:?}");
    assert!(p.last_error.is_some());
}

/// A Tor relay is reached only through `net.socks5` (the proxy resolves the name, the monitor
/// does no DNS check), and counted against the overlay concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_tor_relays_through_the_socks5_proxy() {
    let proxy = socks_proxy().await;
    let relay = server(Reply::json(&nip11_doc()), None).await;
    let onion = "bigbrotrtestrelayxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.onion";
    let url = relay.url("ws", onion);
    let (pool, db) = test_db().await;
    let mut cfg = monitor_config(&db);
    cfg.monitor.max_parallel_tor = 1;
    bigbrotr::register_relays(&pool, &[relay_url(&url)])
        .await
        .expect("register");

    // Without a proxy the registry's Tor relays are left out.
    let report = monitor::run_once(&cfg, &pool, None, None)
        .await
        .expect("pass");
    assert_eq!(report.checked, 0);

    cfg.net.socks5 = proxy.addr.to_string();
    let report = monitor::run_once(&cfg, &pool, None, None)
        .await
        .expect("pass");
    assert_eq!(
        (
            report.checked,
            report.openable,
            report.readable,
            report.nip11
        ),
        (1, 1, 1, 1)
    );
    let row = latest(&pool, &url).await;
    assert_eq!(row["network"], "tor");
    assert_eq!(row["name"], "bigbrotr test relay");
    assert!(row["dns"].is_null(), "the proxy resolves .onion names");
    let names = proxy.names.lock().expect("lock").clone();
    assert!(
        names.len() >= 2 && names.iter().all(|n| n == onion),
        "{names:?}"
    );
    let heads = relay.seen.http.lock().expect("lock").clone();
    assert!(
        heads
            .iter()
            .any(|h| h.contains(&format!("host: {onion}:{}", relay.port))),
        "{heads:?}"
    );
}

// ---------------------------------------------------------------------------------------
// A minimal MaxMind DB (format 2.0, IPv4, 24-bit records) mapping 127.0.0.0/8 to one record.
// ---------------------------------------------------------------------------------------

enum Mm {
    Str(&'static str),
    F64(f64),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'static str, Mm)>),
    Arr(Vec<Mm>),
}

fn mm_uint(out: &mut Vec<u8>, ctrl_type: u8, extended: Option<u8>, v: u64) {
    let bytes: Vec<u8> = v
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    out.push(ctrl_type << 5 | bytes.len() as u8);
    if let Some(e) = extended {
        out.push(e);
    }
    out.extend_from_slice(&bytes);
}

fn mm_encode(out: &mut Vec<u8>, v: &Mm) {
    match v {
        Mm::Str(s) => {
            // Sizes from 29 to 284 take one extra byte holding size - 29.
            if s.len() < 29 {
                out.push(2 << 5 | s.len() as u8);
            } else {
                out.push(2 << 5 | 29);
                out.push((s.len() - 29) as u8);
            }
            out.extend_from_slice(s.as_bytes());
        }
        Mm::F64(f) => {
            out.push(3 << 5 | 8);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Mm::U16(n) => mm_uint(out, 5, None, u64::from(*n)),
        Mm::U32(n) => mm_uint(out, 6, None, u64::from(*n)),
        // uint64 is extended type 9 (written as 9 - 7 after a zero type field).
        Mm::U64(n) => mm_uint(out, 0, Some(2), *n),
        Mm::Map(pairs) => {
            out.push(7 << 5 | pairs.len() as u8);
            for (k, v) in pairs {
                mm_encode(out, &Mm::Str(k));
                mm_encode(out, v);
            }
        }
        // array is extended type 11.
        Mm::Arr(items) => {
            out.push(items.len() as u8);
            out.push(4);
            for i in items {
                mm_encode(out, i);
            }
        }
    }
}

fn mmdb(database_type: &'static str, record: Mm) -> Vec<u8> {
    const NODES: u32 = 8;
    let first_octet = 127u8;
    let data_ptr = NODES + 16;
    let mut out = Vec::new();
    for depth in 0..NODES {
        let bit = (first_octet >> (7 - depth)) & 1;
        let next = if depth + 1 == NODES {
            data_ptr
        } else {
            depth + 1
        };
        let (left, right) = if bit == 0 {
            (next, NODES)
        } else {
            (NODES, next)
        };
        out.extend_from_slice(&left.to_be_bytes()[1..]);
        out.extend_from_slice(&right.to_be_bytes()[1..]);
    }
    out.extend_from_slice(&[0u8; 16]);
    mm_encode(&mut out, &record);
    out.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
    mm_encode(
        &mut out,
        &Mm::Map(vec![
            ("binary_format_major_version", Mm::U16(2)),
            ("binary_format_minor_version", Mm::U16(0)),
            ("build_epoch", Mm::U64(1_700_000_000)),
            ("database_type", Mm::Str(database_type)),
            (
                "description",
                Mm::Map(vec![("en", Mm::Str("bigbrotr test"))]),
            ),
            ("ip_version", Mm::U16(4)),
            ("languages", Mm::Arr(vec![Mm::Str("en")])),
            ("node_count", Mm::U32(NODES)),
            ("record_size", Mm::U16(24)),
        ]),
    );
    out
}

/// With GeoIP City and ASN databases configured, the relay's address is located: country,
/// city, coordinates, geohash (also the 30166 `g` tag) and network owner are recorded, and
/// kind 10166 announces the `geo` check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locates_relays_with_geoip_databases() {
    let dir = tempfile::tempdir().expect("tmp");
    let city = dir.path().join("city.mmdb");
    let asn = dir.path().join("asn.mmdb");
    let city_record = Mm::Map(vec![
        (
            "city",
            Mm::Map(vec![("names", Mm::Map(vec![("en", Mm::Str("Testville"))]))]),
        ),
        ("continent", Mm::Map(vec![("code", Mm::Str("EU"))])),
        (
            "country",
            Mm::Map(vec![
                ("iso_code", Mm::Str("IT")),
                ("names", Mm::Map(vec![("en", Mm::Str("Italy"))])),
            ]),
        ),
        (
            "location",
            Mm::Map(vec![
                ("accuracy_radius", Mm::U16(50)),
                ("latitude", Mm::F64(41.9)),
                ("longitude", Mm::F64(12.5)),
                ("time_zone", Mm::Str("Europe/Rome")),
            ]),
        ),
    ]);
    std::fs::write(&city, mmdb("GeoLite2-City", city_record)).expect("write city");
    let asn_record = Mm::Map(vec![
        ("autonomous_system_number", Mm::U32(64500)),
        ("autonomous_system_organization", Mm::Str("Test Networks")),
    ]);
    std::fs::write(&asn, mmdb("GeoLite2-ASN", asn_record)).expect("write asn");

    let relay = server(Reply::json(&nip11_doc()), None).await;
    let url = relay.url("ws", "127.0.0.1");
    let (pool, db) = test_db().await;
    let mut cfg = monitor_config(&db);
    cfg.monitor.geoip_db = city.display().to_string();
    cfg.monitor.asn_db = asn.display().to_string();
    cfg.monitor.private_key = SecretKey::parse(MONITOR_KEY).expect("key");
    let m = Monitor::new(&cfg).expect("monitor");
    let r = m.checker().check(&relay_url(&url)).await;
    assert!(monitor::store(&pool, &r).await.expect("store"));
    let row = latest(&pool, &url).await;
    let geo = &row["geo"];
    let hash = nip66::geohash(41.9, 12.5, 9);
    assert_eq!(
        geo,
        &json!({
            "ip": "127.0.0.1", "country": "IT", "country_name": "Italy", "continent": "EU",
            "city": "Testville", "time_zone": "Europe/Rome", "accuracy_radius": 50,
            "latitude": 41.9, "longitude": 12.5, "geohash": hash,
            "asn": 64500, "as_org": "Test Networks"
        })
    );
    let kp = cfg.monitor.keypair().expect("key");
    let ev = verified(&nip66::discovery_event(&kp, &r, 1_700_000_000).json);
    assert_eq!(tag_values(&ev["tags"], "g"), vec![hash.as_str()]);
    assert!(m.announcement().checks.contains(&"geo".to_string()));

    // A configured database that cannot be read is a clear error, not a silent skip.
    cfg.monitor.asn_db = dir.path().join("missing.mmdb").display().to_string();
    let e = Monitor::new(&cfg)
        .err()
        .expect("missing database")
        .to_string();
    assert!(e.contains("missing.mmdb"), "{e}");
}

/// The configuration refuses bad monitor keys with the key's name.
#[test]
fn monitor_configuration_errors_name_the_key() {
    let e = Config::parse(
        "[monitor]\nprivate_key = \"xyz\"\n",
        std::path::Path::new("x.toml"),
    )
    .expect_err("bad key")
    .to_string();
    assert!(e.contains("monitor.private_key"), "{e}");
    let mut c = Config::default();
    c.monitor.dns_server = "not an address".into();
    let e = c.validate().expect_err("bad dns").to_string();
    assert!(e.contains("monitor.dns_server"), "{e}");
    let mut c = Config::default();
    c.monitor.publish_relays = vec![Relay::parse("wss://relay.example.com").expect("url")];
    let e = c.validate().expect_err("no key").to_string();
    assert!(e.contains("monitor.private_key"), "{e}");
    let e = Config::parse("[monitor]\nintervall = 5\n", std::path::Path::new("x.toml"))
        .expect_err("unknown key")
        .to_string();
    assert!(e.contains("intervall"), "{e}");
    let u = RelayUrl::parse("ws://relay.test:7777", false).expect("relay.test is a public name");
    assert_eq!(nip66::network_tag(u.network()), Some("clearnet"));
}
