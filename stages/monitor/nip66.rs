//! NIP-66 events: kind 30166 (what the monitor learned about one relay) and kind 10166 (the
//! monitor's own announcement), signed with [`crate::model::sign`].

use super::CheckResult;
use crate::model::sign::{sign, SignedEvent};
use crate::model::Network;
use secp256k1::Keypair;

/// Kind of a relay discovery event.
pub const KIND_DISCOVERY: u16 = 30166;
/// Kind of a monitor announcement.
pub const KIND_ANNOUNCEMENT: u16 = 10166;

fn tag(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The `n` value for a network; `None` for local addresses, which NIP-66 has no name for.
pub fn network_tag(n: Network) -> Option<&'static str> {
    match n {
        Network::Clearnet => Some("clearnet"),
        Network::Tor => Some("tor"),
        Network::I2p => Some("i2p"),
        Network::Loki => Some("loki"),
        Network::Local => None,
    }
}

/// The tags of a kind 30166 event for one check: `d` (normalized URL), `rtt-open`,
/// `rtt-read`, `rtt-write` (ms, when measured), `n`, one `N` per supported NIP, `R` for
/// each known requirement (`!` prefix for false), `t` topics, `l` languages, `g` geohash.
pub fn discovery_tags(r: &CheckResult) -> Vec<Vec<String>> {
    let mut tags = vec![tag(&["d", r.relay.as_str()])];
    for (name, v) in [
        ("rtt-open", r.rtt_open),
        ("rtt-read", r.rtt_read),
        ("rtt-write", r.rtt_write),
    ] {
        if let Some(ms) = v {
            tags.push(vec![name.to_string(), ms.to_string()]);
        }
    }
    if let Some(n) = network_tag(r.relay.network()) {
        tags.push(tag(&["n", n]));
    }
    if let Some(info) = &r.info {
        for nip in &info.supported_nips {
            tags.push(vec!["N".into(), nip.to_string()]);
        }
        let l = &info.limitation;
        let auth = match (l.auth_required, r.auth_observed) {
            (_, true) => Some(true),
            (v, false) => v,
        };
        let pow = l.min_pow_difficulty.map(|d| d > 0);
        for (name, v) in [
            ("auth", auth),
            ("payment", l.payment_required),
            ("writes", l.restricted_writes),
            ("pow", pow),
        ] {
            match v {
                Some(true) => tags.push(tag(&["R", name])),
                Some(false) => tags.push(vec!["R".into(), format!("!{name}")]),
                None => {}
            }
        }
        for t in info.tags.iter().take(32) {
            tags.push(tag(&["t", t]));
        }
        for l in info.language_tags.iter().take(32) {
            tags.push(tag(&["l", l, "ISO-639-1"]));
        }
    } else if r.auth_observed {
        tags.push(tag(&["R", "auth"]));
    }
    if let Some(g) = &r.geohash {
        tags.push(tag(&["g", g]));
    }
    tags
}

/// The kind 30166 event for one check; the content is the NIP-11 document as a JSON string
/// (empty when none was obtained).
pub fn discovery_event(keypair: &Keypair, r: &CheckResult, created_at: i64) -> SignedEvent {
    let content = r.nip11.as_ref().map(|d| d.to_string()).unwrap_or_default();
    sign(
        keypair,
        created_at,
        KIND_DISCOVERY,
        &discovery_tags(r),
        &content,
    )
}

/// What the monitor announces in kind 10166.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// Seconds between passes.
    pub frequency_secs: u64,
    /// `(check, ms)`: the timeout of each check.
    pub timeouts: Vec<(String, u64)>,
    /// Checks performed, lowercase (`open`, `read`, `write`, `nip11`, `dns`, `ssl`, `geo`).
    pub checks: Vec<String>,
    /// The monitor's own location, if configured.
    pub geohash: Option<String>,
}

/// The tags of a kind 10166 event: `frequency`, one `timeout` per check (the example's
/// `["timeout", <check>, <ms>]` order), one `c` per check, and `g`.
pub fn announcement_tags(a: &Announcement) -> Vec<Vec<String>> {
    let mut tags = vec![vec!["frequency".into(), a.frequency_secs.to_string()]];
    for (check, ms) in &a.timeouts {
        tags.push(vec!["timeout".into(), check.clone(), ms.to_string()]);
    }
    for c in &a.checks {
        tags.push(vec!["c".into(), c.clone()]);
    }
    if let Some(g) = &a.geohash {
        tags.push(vec!["g".into(), g.clone()]);
    }
    tags
}

/// The kind 10166 event.
pub fn announcement_event(keypair: &Keypair, a: &Announcement, created_at: i64) -> SignedEvent {
    sign(
        keypair,
        created_at,
        KIND_ANNOUNCEMENT,
        &announcement_tags(a),
        "",
    )
}

/// The geohash of a position (base 32, `precision` characters, 1–12).
pub fn geohash(lat: f64, lon: f64, precision: usize) -> String {
    const BASE32: &[u8; 32] = b"0123456789bcdefghjkmnpqrstuvwxyz";
    let (mut lat_r, mut lon_r) = ((-90.0f64, 90.0f64), (-180.0f64, 180.0f64));
    let lat = lat.clamp(-90.0, 90.0);
    let lon = lon.clamp(-180.0, 180.0);
    let mut out = String::new();
    let mut even = true;
    let (mut bits, mut ch) = (0u8, 0usize);
    while out.len() < precision.clamp(1, 12) {
        let (range, v) = if even {
            (&mut lon_r, lon)
        } else {
            (&mut lat_r, lat)
        };
        let mid = (range.0 + range.1) / 2.0;
        ch <<= 1;
        if v >= mid {
            ch |= 1;
            range.0 = mid;
        } else {
            range.1 = mid;
        }
        even = !even;
        bits += 1;
        if bits == 5 {
            out.push(BASE32[ch] as char);
            bits = 0;
            ch = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geohash_matches_known_values() {
        // Reference values from the geohash specification's examples.
        assert_eq!(geohash(57.64911, 10.40744, 11), "u4pruydqqvj");
        assert_eq!(geohash(42.6, -5.6, 5), "ezs42");
    }
}
