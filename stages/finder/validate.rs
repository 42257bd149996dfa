//! Candidate validation: a relay is real when it opens a WebSocket and answers
//! `REQ {limit:1}` with EOSE, or refuses it with `CLOSED auth-required` (it exists and
//! speaks Nostr; reading it needs NIP-42).

use crate::model::{Reason, RelayUrl};
use crate::relay::message::{self, RelayMsg};
use crate::relay::transport::{self, TransportConfig, TransportError};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// What a successful validation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Validation {
    /// Answered the REQ with EOSE.
    Readable,
    /// Refused the REQ with `CLOSED auth-required`.
    AuthRequired,
}

/// Why a candidate did not validate; the text is recorded as the candidate's `last_error`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ValidateError {
    /// The WebSocket could not be opened.
    #[error(transparent)]
    Connect(#[from] TransportError),
    /// The REQ could not be sent.
    #[error("send: {0}")]
    Send(tokio_tungstenite::tungstenite::Error),
    /// Reading the answer failed.
    #[error("read: {0}")]
    Read(tokio_tungstenite::tungstenite::Error),
    /// No EOSE before the timeout.
    #[error("no EOSE within {0:?}")]
    Timeout(Duration),
    /// The connection ended before EOSE.
    #[error("connection closed before EOSE")]
    Dropped,
    /// The relay closed the connection before EOSE.
    #[error("relay closed the connection before EOSE")]
    ClosedByRelay,
    /// A frame nested deeper than we parse.
    #[error("relay sent JSON nested too deep")]
    TooDeep,
    /// The relay refused the REQ, and not for authentication.
    #[error("CLOSED: {0}")]
    Refused(String),
    /// [`MAX_FRAMES`] frames came and none was EOSE.
    #[error("no EOSE within {MAX_FRAMES} frames")]
    TooManyFrames,
}

const SUB: &str = "bbfinder";

/// Frames read before giving up on a relay that never sends EOSE (with `limit:1`, a
/// compliant relay sends at most one event first).
const MAX_FRAMES: usize = 64;

/// Connects to `url` and asks for one event; `timeout` bounds the whole exchange.
pub(crate) async fn validate(
    url: &RelayUrl,
    transport_cfg: &TransportConfig,
    timeout: Duration,
) -> Result<Validation, ValidateError> {
    let deadline = Instant::now() + timeout;
    let mut ws = transport::connect(url, transport_cfg, timeout).await?;
    let req = format!("[\"REQ\",\"{SUB}\",{{\"limit\":1}}]");
    let res = async {
        ws.send(Message::Text(req.into()))
            .await
            .map_err(ValidateError::Send)?;
        let mut buf = Vec::new();
        let mut buffers = simd_json::Buffers::default();
        for _ in 0..MAX_FRAMES {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, ws.next())
                .await
                .map_err(|_| ValidateError::Timeout(timeout))?;
            let msg = match next {
                None => return Err(ValidateError::Dropped),
                Some(Err(e)) => return Err(ValidateError::Read(e)),
                Some(Ok(m)) => m,
            };
            let data: &[u8] = match &msg {
                Message::Text(t) => t.as_bytes(),
                Message::Binary(b) => b,
                Message::Close(_) => return Err(ValidateError::ClosedByRelay),
                _ => continue,
            };
            let v = match message::decode(data, &mut buf, &mut buffers) {
                Ok(v) => v,
                Err(Reason::TooDeep) => return Err(ValidateError::TooDeep),
                Err(_) => continue,
            };
            match message::parse(&v) {
                Some(RelayMsg::Eose(s)) if s == SUB => return Ok(Validation::Readable),
                Some(RelayMsg::Closed(s, m)) if s == SUB => {
                    return if m.starts_with("auth-required") {
                        Ok(Validation::AuthRequired)
                    } else {
                        Err(ValidateError::Refused(m.to_string()))
                    };
                }
                _ => {}
            }
        }
        Err(ValidateError::TooManyFrames)
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
