//! The value types of configuration keys that are parsed when the file is read, so that a
//! bad value fails the load naming its key (serde_path_to_error supplies the key) and the
//! settings hold what the code uses: a `Duration`, a key pair, a normalized relay URL.

use bigbrotr_stages::model::RelayUrl;
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// Longest duration any key may give, in seconds (ten years): beyond it a deadline is no
/// deadline, and `Instant + Duration` arithmetic downstream could overflow and panic.
pub const MAX_SECONDS: f64 = 315_360_000.0;

/// A duration key written in seconds (a TOML integer or float). At load it must be finite,
/// not negative and at most [`MAX_SECONDS`]; a key where 0 makes no sense is checked by its
/// section with [`Seconds::check_positive`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Seconds(Duration);

impl Seconds {
    /// `s` seconds.
    pub const fn new(s: u64) -> Seconds {
        Seconds(Duration::from_secs(s))
    }

    /// `ms` milliseconds (a fractional number of seconds in the file).
    pub const fn from_millis(ms: u64) -> Seconds {
        Seconds(Duration::from_millis(ms))
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }

    /// The duration, or `None` for keys where 0 means "no bound".
    pub fn nonzero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }

    /// Whole seconds, as SQL and Nostr timestamps count them.
    pub fn whole_secs(self) -> i64 {
        i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX)
    }

    /// Fails naming `file` and `key` when the value is 0 (a wait that would fail at once, or
    /// a loop without pause).
    pub fn check_positive(self, file: &str, key: &str) -> anyhow::Result<()> {
        if self.0.is_zero() {
            anyhow::bail!("{file}: key `{key}` must be a number of seconds above 0 (and at most {MAX_SECONDS}, ten years), got 0");
        }
        Ok(())
    }
}

impl From<Seconds> for Duration {
    fn from(s: Seconds) -> Duration {
        s.0
    }
}

impl fmt::Debug for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        // `Duration::from_secs_f64` panics on inf and NaN: this is the one place it is called.
        if !(0.0..=MAX_SECONDS).contains(&v) {
            return Err(D::Error::custom(format!(
                "must be a number of seconds from 0 to {MAX_SECONDS} (ten years), got {v}"
            )));
        }
        Ok(Seconds(Duration::from_secs_f64(v)))
    }
}

/// A duration key written in whole milliseconds (`*_ms` keys).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Millis(Duration);

impl Millis {
    /// `ms` milliseconds.
    pub const fn new(ms: u64) -> Millis {
        Millis(Duration::from_millis(ms))
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Whole milliseconds (for PostgreSQL's `statement_timeout`).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// The check of a key where 0 makes no sense, for [`super::check_all`].
    pub fn is_positive(self) -> bool {
        !self.0.is_zero()
    }
}

impl From<Millis> for Duration {
    fn from(m: Millis) -> Duration {
        m.0
    }
}

impl fmt::Debug for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v as f64 > MAX_SECONDS * 1000.0 {
            return Err(D::Error::custom(format!(
                "must be a number of milliseconds from 0 to {} (ten years), got {v}",
                MAX_SECONDS * 1000.0
            )));
        }
        Ok(Millis(Duration::from_millis(v)))
    }
}

/// A hex secret key (`monitor.private_key`, `dvm.private_key`), turned into its key pair at
/// load; empty = none. Printing it never prints the key.
#[derive(Clone, Copy, Default, PartialEq)]
pub struct SecretKey(Option<secp256k1::Keypair>);

impl SecretKey {
    /// Parses 64 hex digits ("" = no key).
    pub fn parse(hex_secret: &str) -> Result<SecretKey, &'static str> {
        let s = hex_secret.trim();
        if s.is_empty() {
            return Ok(SecretKey(None));
        }
        let bytes: [u8; 32] = hex::decode(s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("must be a 64-digit hex secret key")?;
        secp256k1::Keypair::from_secret_bytes(bytes)
            .map(|k| SecretKey(Some(k)))
            .map_err(|_| {
                "must be a 64-digit hex secret key (this one is not a valid secp256k1 key)"
            })
    }

    /// The key pair, when a key is set.
    pub fn keypair(&self) -> Option<secp256k1::Keypair> {
        self.0
    }

    /// Whether a key is set.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

impl fmt::Debug for SecretKey {
    // Never the key: the configuration is printed by `bigbrotr config` and in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "\"***\"" } else { "\"\"" })
    }
}

impl<'de> Deserialize<'de> for SecretKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SecretKey::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// A relay URL key, normalized at load (loopback and private addresses allowed: the operator
/// wrote it).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Relay(pub RelayUrl);

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

impl Relay {
    /// Parses and normalizes `s` as the file's loader does.
    pub fn parse(s: &str) -> Result<Relay, String> {
        RelayUrl::parse(s, true)
            .map(Relay)
            .map_err(|e| format!("{s:?} is not a relay URL ({e})"))
    }
}

impl<'de> Deserialize<'de> for Relay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Relay::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// `Relay`s as the `RelayUrl`s the stages take.
pub fn relay_urls(list: &[Relay]) -> Vec<RelayUrl> {
    list.iter().map(|r| r.0.clone()).collect()
}
