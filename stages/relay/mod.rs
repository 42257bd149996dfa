//! Talking to a relay, shared by every stage that opens one (connect, finder, monitor, DVM):
//! the [`transport`] (TCP or SOCKS5, TLS, WebSocket with our limits) and the relay-message
//! codec ([`message`]: the one place a relay's frame is decoded and read).

pub mod message;
pub mod transport;

pub use message::{OkReply, RelayMsg};
pub use transport::{TransportConfig, TransportError, Ws};
