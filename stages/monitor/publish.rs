//! Publishing the monitor's events: one task per destination relay keeps a connection open,
//! sends each event as `["EVENT", ev]`, waits for its `OK`, and reconnects once when the
//! connection broke.

use super::nip11::note;
use crate::model::RelayUrl;
use crate::model::SignedEvent;
use crate::relay::transport::{self, TransportConfig, Ws};
use crate::relay::OkReply;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Messages read while waiting for an `OK` before the relay is judged to be babbling.
const MAX_FRAMES_PER_OK: usize = 256;

/// After a failed delivery the relay is left alone this long: events meanwhile count as
/// failed at once, so a dead destination cannot stall a pass for a timeout per event.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// What happened to the events sent to one relay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// The destination.
    pub relay: String,
    /// Answered `OK true`.
    pub accepted: u64,
    /// Answered `OK false`.
    pub rejected: u64,
    /// Not delivered (connect failure, timeout, no OK).
    pub failed: u64,
    /// The last rejection or failure reason.
    pub last_error: Option<String>,
}

/// Sends every event received on `events` to `relay` until the channel closes.
pub async fn run(
    relay: RelayUrl,
    events: flume::Receiver<Arc<SignedEvent>>,
    transport: TransportConfig,
    timeout: Duration,
) -> PublishReport {
    let mut report = PublishReport {
        relay: relay.to_string(),
        ..PublishReport::default()
    };
    let mut ws: Option<Ws> = None;
    let mut down_until: Option<Instant> = None;
    while let Ok(ev) = events.recv_async().await {
        if down_until.is_some_and(|t| Instant::now() < t) {
            report.failed += 1;
            continue;
        }
        let mut outcome = Err(String::new());
        for _attempt in 0..2 {
            if ws.is_none() {
                match transport::connect(&relay, &transport, timeout).await {
                    Ok(w) => ws = Some(w),
                    Err(e) => {
                        outcome = Err(e.to_string());
                        break;
                    }
                }
            }
            let Some(conn) = ws.as_mut() else { break };
            outcome = send_one(conn, &ev, timeout).await;
            if outcome.is_ok() {
                break;
            }
            // Any failure (broken connection, no OK in time) gets one try on a fresh connection.
            ws = None;
        }
        match outcome {
            Ok((true, _)) => report.accepted += 1,
            Ok((false, msg)) => {
                report.rejected += 1;
                report.last_error = Some(note(&msg));
            }
            Err(e) => {
                report.failed += 1;
                report.last_error = Some(note(&e));
                down_until = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }
    if let Some(mut w) = ws {
        let _ = tokio::time::timeout(Duration::from_secs(1), w.close(None)).await;
    }
    report
}

/// Sends one event and waits for its `OK`: `(accepted, message)`.
pub(crate) async fn send_one(
    ws: &mut Ws,
    ev: &SignedEvent,
    timeout: Duration,
) -> Result<(bool, String), String> {
    let id = hex::encode(ev.id);
    let deadline = Instant::now() + timeout;
    ws.send(Message::Text(format!("[\"EVENT\",{}]", ev.json).into()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    for _ in 0..MAX_FRAMES_PER_OK {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return Err("no OK before the timeout".into()),
            Ok(None) => return Err("connection closed".into()),
            Ok(Some(Err(e))) => return Err(format!("receive: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        let Message::Text(t) = msg else { continue };
        if crate::model::json::check_depth(t.as_bytes()).is_err() {
            continue;
        }
        let Ok(Value::Array(a)) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        if let Some(ok) = OkReply::from_json(&a).filter(|ok| ok.id == id) {
            return Ok((ok.accepted, ok.message.to_string()));
        }
    }
    Err(format!("{MAX_FRAMES_PER_OK} frames without an OK"))
}
