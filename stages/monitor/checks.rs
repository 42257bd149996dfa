//! The WebSocket checks of NIP-66: open (handshake time), read (a `REQ` with `limit: 1`
//! answered by an `EVENT` or `EOSE`) and write (an `EVENT` signed with the monitor's key
//! answered by `OK true`), each with its round-trip time in milliseconds.

use super::net::{self, Tls};
use super::nip11::note;
use crate::model::sign::sign;
use crate::model::RelayUrl;
use crate::relay::transport::{Io, TransportConfig, Ws};
use crate::relay::OkReply;
use futures_util::{SinkExt, StreamExt};
use secp256k1::Keypair;
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

/// Messages read while waiting for one answer before the relay is judged to be babbling.
const MAX_FRAMES_PER_ANSWER: usize = 256;

/// What the WebSocket checks need.
#[derive(Debug, Clone)]
pub(crate) struct WsConfig {
    /// Proxy, socket and message limits.
    pub(crate) transport: TransportConfig,
    /// TLS trust for wss.
    pub(crate) tls: Tls,
    /// Budget of each step (open, read, write).
    pub(crate) timeout: Duration,
    /// The key that signs the write probe; `None` skips the write check.
    pub(crate) keypair: Option<Keypair>,
    /// Kind of the write probe (ephemeral by default, so relays do not keep it).
    pub(crate) write_kind: u16,
}

/// The outcome of the WebSocket checks.
#[derive(Debug, Clone, Default)]
pub(crate) struct WsOutcome {
    /// Handshake time, when it succeeded.
    pub(crate) rtt_open: Option<u32>,
    /// Time to the first EVENT or EOSE.
    pub(crate) rtt_read: Option<u32>,
    /// Time to `OK true`.
    pub(crate) rtt_write: Option<u32>,
    /// The handshake succeeded.
    pub(crate) openable: bool,
    /// The REQ was answered with EVENT or EOSE.
    pub(crate) readable: bool,
    /// `None` when the write check was skipped (no key).
    pub(crate) writable: Option<bool>,
    /// The relay asked for NIP-42 authentication (AUTH, `auth-required:`).
    pub(crate) auth_required: bool,
    /// Details: `open`, `read`, `write` objects with `error`/`result`/`message`.
    pub(crate) details: Map<String, Value>,
}

/// Runs open, read and write against `relay`, connecting to `addrs` when given.
pub(crate) async fn check(relay: &RelayUrl, addrs: &[IpAddr], cfg: &WsConfig) -> WsOutcome {
    let mut out = WsOutcome::default();
    let start = Instant::now();
    let ws = match net::within(cfg.timeout, "open", open(relay, addrs, cfg)).await {
        Ok(ws) => ws,
        Err(e) => {
            out.details
                .insert("open".into(), json!({ "error": note(&e) }));
            return out;
        }
    };
    let mut ws = ws;
    out.rtt_open = Some(net::millis_ceil(start.elapsed()));
    out.openable = true;

    let sub = format!("bbmon{:08x}", rand::random::<u32>());
    let read = read_check(&mut ws, &sub, cfg.timeout).await;
    let mut info = Map::new();
    match read {
        Ok(r) => {
            out.rtt_read = r.rtt;
            out.readable = r.rtt.is_some();
            out.auth_required |= r.auth;
            info.insert("result".into(), Value::String(r.result.into()));
            if let Some(m) = r.message {
                info.insert("message".into(), Value::String(note(&m)));
            }
        }
        Err(e) => {
            info.insert("error".into(), Value::String(note(&e)));
        }
    }
    if out.auth_required {
        info.insert("auth_required".into(), Value::Bool(true));
    }
    out.details.insert("read".into(), Value::Object(info));
    let _ = send(&mut ws, format!("[\"CLOSE\",\"{sub}\"]")).await;

    if let Some(kp) = &cfg.keypair {
        let mut info = Map::new();
        match write_check(&mut ws, kp, cfg.write_kind, cfg.timeout).await {
            Ok(w) => {
                out.writable = Some(w.accepted);
                if w.accepted {
                    out.rtt_write = Some(w.rtt);
                }
                out.auth_required |= w.auth;
                info.insert("accepted".into(), Value::Bool(w.accepted));
                if !w.message.is_empty() {
                    info.insert("message".into(), Value::String(note(&w.message)));
                }
            }
            Err(e) => {
                out.writable = Some(false);
                info.insert("error".into(), Value::String(note(&e)));
            }
        }
        out.details.insert("write".into(), Value::Object(info));
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    out
}

/// Opens the WebSocket with the monitor's trust roots (not the connectors' transport, which
/// knows only the webpki roots and the system resolver).
pub(crate) async fn open(relay: &RelayUrl, addrs: &[IpAddr], cfg: &WsConfig) -> Result<Ws, String> {
    let (host, port) = relay.host_port().ok_or("no host/port")?;
    let stream = net::dial(&host, port, relay.network(), addrs, &cfg.transport).await?;
    let stream: Box<dyn Io> = if relay.is_tls() {
        Box::new(net::tls_connect(stream, &host, cfg.tls.strict()).await?)
    } else {
        stream
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        relay.as_str(),
        MaybeTlsStream::Plain(stream),
        Some(cfg.transport.ws_config()),
    )
    .await
    .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| format!("send: {e}"))
}

/// The next relay message as a JSON array, within `deadline`.
async fn next_array(ws: &mut Ws, deadline: Instant) -> Result<Vec<Value>, String> {
    for _ in 0..MAX_FRAMES_PER_ANSWER {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return Err("timed out".into()),
            Ok(None) => return Err("connection closed".into()),
            Ok(Some(Err(e))) => return Err(format!("receive: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        let text = match &msg {
            Message::Text(t) => t.as_str(),
            Message::Binary(b) => std::str::from_utf8(b).unwrap_or(""),
            Message::Close(_) => return Err("relay closed the connection".into()),
            _ => continue,
        };
        if crate::model::json::check_depth(text.as_bytes()).is_err() {
            continue;
        }
        if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(text) {
            return Ok(a);
        }
    }
    Err(format!("{MAX_FRAMES_PER_ANSWER} frames without an answer"))
}

struct Read {
    rtt: Option<u32>,
    result: &'static str,
    message: Option<String>,
    auth: bool,
}

async fn read_check(ws: &mut Ws, sub: &str, timeout: Duration) -> Result<Read, String> {
    let start = Instant::now();
    let deadline = start + timeout;
    send(ws, format!("[\"REQ\",\"{sub}\",{{\"limit\":1}}]")).await?;
    let mut auth = false;
    loop {
        let a = next_array(ws, deadline).await?;
        let label = a.first().and_then(Value::as_str).unwrap_or("");
        let for_us = a.get(1).and_then(Value::as_str) == Some(sub);
        match label {
            "EVENT" | "EOSE" if for_us => {
                return Ok(Read {
                    rtt: Some(net::millis_ceil(start.elapsed())),
                    result: if label == "EVENT" { "event" } else { "eose" },
                    message: None,
                    auth,
                })
            }
            "CLOSED" if for_us => {
                let m = a.get(2).and_then(Value::as_str).unwrap_or("").to_string();
                auth |= m.starts_with("auth-required");
                return Ok(Read {
                    rtt: None,
                    result: "closed",
                    message: Some(m),
                    auth,
                });
            }
            "AUTH" => auth = true,
            _ => {}
        }
    }
}

struct Write {
    rtt: u32,
    accepted: bool,
    message: String,
    auth: bool,
}

async fn write_check(
    ws: &mut Ws,
    kp: &Keypair,
    kind: u16,
    timeout: Duration,
) -> Result<Write, String> {
    let now = crate::model::now_secs();
    let ev = sign(kp, now, kind, &[], "bigbrotr monitor write check");
    let id = hex::encode(ev.id);
    let start = Instant::now();
    let deadline = start + timeout;
    send(ws, format!("[\"EVENT\",{}]", ev.json)).await?;
    let mut auth = false;
    loop {
        let a = next_array(ws, deadline).await?;
        match OkReply::from_json(&a) {
            Some(ok) if ok.id == id => {
                auth |= ok.message.starts_with("auth-required");
                return Ok(Write {
                    rtt: net::millis_ceil(start.elapsed()),
                    accepted: ok.accepted,
                    message: ok.message.to_string(),
                    auth,
                });
            }
            _ if a.first().and_then(Value::as_str) == Some("AUTH") => auth = true,
            _ => {}
        }
    }
}
