//! bigbrotr's pipeline stages and the Nostr model they share.
//!
//! Each stage is a unit with input and output channels and no knowledge of the wiring:
//! `connect` (relay → [`model::RawEvent`]), `verify` (→ [`model::Verified`]), `dedupe`
//! (→ [`model::Item`]), `batch` (→ [`model::Batch`]) and `sink` (→ PostgreSQL, cursor acks).

pub mod batch;
pub mod connect;
pub mod dedupe;
pub mod dvm;
pub mod finder;
pub mod model;
pub mod monitor;
pub mod sink;
pub mod verify;
