//! `[net]`: socket limits and the SOCKS5 proxy, shared by every stage that opens a relay
//! connection.

use bigbrotr_stages::relay::TransportConfig;
use serde::Deserialize;

/// `[net]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Net {
    /// SOCKS5 proxy `host:port` for Tor/I2P/Lokinet relays (empty = those are skipped).
    pub socks5: String,
    /// Largest WebSocket message (bytes); the connection fails beyond it.
    pub max_message_bytes: usize,
    /// Largest WebSocket frame (bytes).
    pub max_frame_bytes: usize,
    /// Write buffer per connection (bytes).
    pub write_buffer_bytes: usize,
}

impl Default for Net {
    fn default() -> Self {
        Net {
            socks5: String::new(),
            max_message_bytes: 4 << 20,
            max_frame_bytes: 4 << 20,
            write_buffer_bytes: 128 << 10,
        }
    }
}

impl Net {
    /// Checks the `[net]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        if !self.socks5.is_empty() && !self.socks5.contains(':') {
            anyhow::bail!(
                "{file}: key `net.socks5` must be host:port, got {:?}",
                self.socks5
            );
        }
        Ok(())
    }

    /// The socket limits and proxy of every relay connection (connectors, finder, monitor,
    /// DVM): one translation, so the stages cannot drift apart.
    pub fn transport(&self) -> TransportConfig {
        TransportConfig {
            max_message_bytes: self.max_message_bytes,
            max_frame_bytes: self.max_frame_bytes,
            write_buffer_bytes: self.write_buffer_bytes,
            socks5: (!self.socks5.is_empty()).then(|| self.socks5.clone()),
            proxy_all: false,
        }
    }
}
