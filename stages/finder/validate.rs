//! Candidate validation: a relay is real when it opens a WebSocket and answers
//! `REQ {limit:1}` with EOSE, or refuses it with `CLOSED auth-required` (it exists and
//! speaks Nostr; reading it needs NIP-42).

use crate::connect::message::{self, RelayMsg};
use crate::connect::transport::{self, TransportConfig};
use crate::model::{Reason, RelayUrl};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// What a successful validation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Answered the REQ with EOSE.
    Readable,
    /// Refused the REQ with `CLOSED auth-required`.
    AuthRequired,
}

const SUB: &str = "bbfinder";

/// Frames read before giving up on a relay that never sends EOSE (with `limit:1`, a
/// compliant relay sends at most one event first).
const MAX_FRAMES: usize = 64;

/// Connects to `url` and asks for one event; `timeout` bounds the whole exchange.
pub async fn validate(
    url: &RelayUrl,
    transport_cfg: &TransportConfig,
    timeout: Duration,
) -> Result<Validation, String> {
    let deadline = Instant::now() + timeout;
    let mut ws = transport::connect(url, transport_cfg, timeout).await?;
    let req = format!("[\"REQ\",\"{SUB}\",{{\"limit\":1}}]");
    let res = async {
        ws.send(Message::Text(req.into()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::new();
        let mut buffers = simd_json::Buffers::default();
        for _ in 0..MAX_FRAMES {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, ws.next())
                .await
                .map_err(|_| format!("no EOSE within {timeout:?}"))?;
            let data: &[u8] = match &next {
                None => return Err("connection closed before EOSE".to_string()),
                Some(Err(e)) => return Err(format!("read: {e}")),
                Some(Ok(Message::Text(t))) => t.as_bytes(),
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Close(_))) => {
                    return Err("relay closed the connection before EOSE".to_string())
                }
                Some(Ok(_)) => continue,
            };
            let v = match message::decode(data, &mut buf, &mut buffers) {
                Ok(v) => v,
                Err(Reason::TooDeep) => return Err("relay sent JSON nested too deep".to_string()),
                Err(_) => continue,
            };
            match message::parse(&v) {
                Some(RelayMsg::Eose(s)) if s == SUB => return Ok(Validation::Readable),
                Some(RelayMsg::Closed(s, m)) if s == SUB => {
                    return if m.starts_with("auth-required") {
                        Ok(Validation::AuthRequired)
                    } else {
                        Err(format!("CLOSED: {m}"))
                    };
                }
                _ => {}
            }
        }
        Err(format!("no EOSE within {MAX_FRAMES} frames"))
    }
    .await;
    // Be polite either way; the answer is already known.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = ws
            .send(Message::Text(format!("[\"CLOSE\",\"{SUB}\"]").into()))
            .await;
        let _ = ws.close(None).await;
    })
    .await;
    res
}
