//! bigbrotr's pipeline stages and the Nostr model they share.
//!
//! Each stage is a unit with input and output channels and no knowledge of the wiring:
//! `connect` (relay → [`model::RawEvent`]), `verify` (→ [`model::Verified`]), `dedupe`
//! (→ [`model::Item`]), `batch` (→ [`model::Batch`]) and `sink` (→ PostgreSQL, cursor acks).
//! Beside the pipeline: `finder` (new relays), `monitor` (NIP-11/NIP-66 checks) and `dvm`
//! (NIP-90 jobs).
//!
//! Building blocks shared by several stages have their own home rather than living in the
//! stage that needed them first: [`relay`] (transport and the relay-message codec), [`seen`]
//! (bounded key sets), [`model`] (events, canonical serialization, [`model::sign`], relay
//! identity, statistics).
//!
//! Where SQL lives: with the code that decides when it runs. A stage that drives its own
//! database work from its loop keeps its statements in its own module, over [`sink::Pool`]
//! (the one pool type): `sink` (the batch write and cursor acks) and `finder::store`
//! (candidates, list state, catch-up pages). A stage that hands its results or questions to
//! the application holds none: the monitor returns [`monitor::CheckResult`]s and the DVM asks
//! its [`dvm::Backend`]; the engine module that wires them runs that SQL.
//!
//! Errors crossing a stage boundary are typed (one enum per stage, `thiserror`); their text is
//! what reports and logs show. `anyhow` stays in the application.

#![warn(missing_docs, unreachable_pub)]

pub mod batch;
pub mod connect;
pub mod dedupe;
pub mod dvm;
pub mod finder;
pub mod model;
pub mod monitor;
pub mod relay;
pub mod seen;
pub mod sink;
pub mod verify;
