//! Opening a WebSocket to a relay: TCP or SOCKS5 (the proxy resolving the name), then TLS
//! for `wss://` (rustls with the webpki roots), then the WebSocket handshake with our limits.

use crate::model::RelayUrl;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A byte stream we can run TLS and WebSocket over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open relay connection.
pub type Ws = WebSocketStream<MaybeTlsStream<Box<dyn Io>>>;

/// Connection limits and proxy.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest WebSocket message accepted (the connection fails beyond it).
    pub max_message_bytes: usize,
    /// Largest single frame accepted.
    pub max_frame_bytes: usize,
    /// Outgoing buffer before a flush is forced.
    pub write_buffer_bytes: usize,
    /// SOCKS5 proxy (`host:port`) for overlay networks (Tor, I2P, Lokinet).
    pub socks5: Option<String>,
    /// Send clearnet traffic through the proxy too.
    pub proxy_all: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_message_bytes: 4 << 20,
            max_frame_bytes: 4 << 20,
            write_buffer_bytes: 128 << 10,
            socks5: None,
            proxy_all: false,
        }
    }
}

impl TransportConfig {
    /// The tungstenite configuration with our bounds instead of its 64 MiB defaults.
    pub fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_frame_bytes))
            .read_buffer_size(64 << 10)
            .write_buffer_size(self.write_buffer_bytes)
            .max_write_buffer_size(self.write_buffer_bytes * 4 + (1 << 20))
    }
}

fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Several rustls providers can be linked in (ours and dependencies'); pick one
        // explicitly so building a ClientConfig never panics on ambiguity.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Why a relay could not be opened; the text is what reports and logs show.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The URL names no host and port to dial.
    #[error("no host/port")]
    NoHostPort,
    /// The SOCKS5 proxy refused or failed the connection.
    #[error("socks5 {proxy}: {source}")]
    Socks5 {
        /// The proxy (`host:port`).
        proxy: String,
        /// What the proxy answered.
        source: tokio_socks::Error,
    },
    /// An overlay address (Tor, I2P, Lokinet) and no proxy to reach it.
    #[error("{0} needs a SOCKS5 proxy (net.socks5)")]
    NeedsProxy(&'static str),
    /// The TCP connection failed.
    #[error("tcp: {0}")]
    Tcp(std::io::Error),
    /// TLS or the WebSocket handshake failed.
    #[error("handshake: {0}")]
    Handshake(Box<tokio_tungstenite::tungstenite::Error>),
    /// The whole opening took longer than allowed.
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
}

/// Opens a WebSocket to `url` within `timeout`.
pub async fn connect(
    url: &RelayUrl,
    cfg: &TransportConfig,
    timeout: Duration,
) -> Result<Ws, TransportError> {
    install_crypto();
    let (host, port) = url.host_port().ok_or(TransportError::NoHostPort)?;
    let fut = async {
        let stream: Box<dyn Io> = match (&cfg.socks5, url.network().is_overlay() || cfg.proxy_all) {
            (Some(proxy), true) => Box::new(
                tokio_socks::tcp::Socks5Stream::connect(proxy.as_str(), (host.as_str(), port))
                    .await
                    .map_err(|source| TransportError::Socks5 {
                        proxy: proxy.clone(),
                        source,
                    })?,
            ),
            (None, true) if url.network().is_overlay() => {
                return Err(TransportError::NeedsProxy(url.network().as_str()))
            }
            _ => {
                let s = tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(TransportError::Tcp)?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
        };
        let (ws, _resp) = tokio_tungstenite::client_async_tls_with_config(
            url.as_str(),
            stream,
            Some(cfg.ws_config()),
            None,
        )
        .await
        .map_err(|e| TransportError::Handshake(Box::new(e)))?;
        Ok(ws)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::TimedOut(timeout)),
    }
}
