//! Relay identity: normalized URL, network, and the shared per-relay context.

use super::{progress::Progress, stats::RelayStats};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Which network a relay lives on, from its host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Network {
    /// The public internet.
    Clearnet,
    /// A `.onion` address, reached through SOCKS5.
    Tor,
    /// An `.i2p` address.
    I2p,
    /// A `.loki` (Lokinet) address.
    Loki,
    /// Loopback or private address: only when the configuration allows it.
    Local,
}

impl Network {
    /// Name stored in `relays.network`.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Clearnet => "clearnet",
            Network::Tor => "tor",
            Network::I2p => "i2p",
            Network::Loki => "loki",
            Network::Local => "local",
        }
    }

    /// True for overlay networks reached through a proxy.
    pub fn is_overlay(self) -> bool {
        matches!(self, Network::Tor | Network::I2p | Network::Loki)
    }
}

/// Why a relay URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not parseable as a URL.
    #[error("not a URL")]
    Unparseable,
    /// Scheme other than ws/wss.
    #[error("scheme is not ws or wss")]
    Scheme,
    /// No host.
    #[error("no host")]
    NoHost,
    /// Longer than the cap.
    #[error("longer than {0} bytes")]
    TooLong(usize),
    /// Loopback/private address while local relays are not allowed.
    #[error("local or private address")]
    Local,
    /// Userinfo in the URL.
    #[error("credentials in URL")]
    Credentials,
}

/// Maximum normalized URL length.
pub const MAX_URL_LEN: usize = 512;

/// A normalized relay URL: one relay, one string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayUrl {
    url: Arc<str>,
    network: Network,
}

fn is_local_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_local_ip(IpAddr::V4(v4)))
        }
    }
}

impl RelayUrl {
    /// Normalizes `input`: lower-case scheme and host, IDN to punycode, default port dropped,
    /// trailing slashes and host dot dropped, query and fragment dropped, IPv6 compressed.
    pub fn parse(input: &str, allow_local: bool) -> Result<RelayUrl, UrlError> {
        let trimmed = input.trim();
        let mut u = url::Url::parse(trimmed).map_err(|_| UrlError::Unparseable)?;
        if u.scheme() != "ws" && u.scheme() != "wss" {
            return Err(UrlError::Scheme);
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(UrlError::Credentials);
        }
        u.set_query(None);
        u.set_fragment(None);
        let host = match u.host() {
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.');
                if d.is_empty() {
                    return Err(UrlError::NoHost);
                }
                // Dropping the dots can turn a name into an IPv4 address ("0.." is "0", which
                // is 0.0.0.0): parse the host again so it is written and classified as what
                // it now is, and normalizing twice gives the same URL.
                url::Host::parse(d).map_err(|_| UrlError::Unparseable)?
            }
            Some(url::Host::Ipv4(a)) => url::Host::Ipv4(a),
            Some(url::Host::Ipv6(a)) => url::Host::Ipv6(a),
            None => return Err(UrlError::NoHost),
        };
        let network = match &host {
            url::Host::Domain(d) => {
                if d.ends_with(".onion") {
                    Network::Tor
                } else if d.ends_with(".i2p") {
                    Network::I2p
                } else if d.ends_with(".loki") {
                    Network::Loki
                } else if d == "localhost" || d.ends_with(".localhost") {
                    Network::Local
                } else {
                    Network::Clearnet
                }
            }
            url::Host::Ipv4(a) if is_local_ip(IpAddr::V4(*a)) => Network::Local,
            url::Host::Ipv6(a) if is_local_ip(IpAddr::V6(*a)) => Network::Local,
            _ => Network::Clearnet,
        };
        if network == Network::Local && !allow_local {
            return Err(UrlError::Local);
        }
        let host_str = match &host {
            url::Host::Domain(d) => d.clone(),
            url::Host::Ipv4(a) => a.to_string(),
            url::Host::Ipv6(a) => format!("[{a}]"),
        };
        let path = u.path().trim_end_matches('/');
        let mut s = format!("{}://{}", u.scheme(), host_str);
        if let Some(p) = u.port() {
            s.push(':');
            s.push_str(&p.to_string());
        }
        s.push_str(path);
        if s.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong(MAX_URL_LEN));
        }
        Ok(RelayUrl {
            url: s.into(),
            network,
        })
    }

    /// The normalized URL.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The network the host belongs to.
    pub fn network(&self) -> Network {
        self.network
    }

    /// Host and port to connect to (default ports filled in).
    pub fn host_port(&self) -> Option<(String, u16)> {
        let u = url::Url::parse(&self.url).ok()?;
        let host = match u.host()? {
            url::Host::Domain(d) => d.to_string(),
            url::Host::Ipv4(a) => a.to_string(),
            url::Host::Ipv6(a) => a.to_string(),
        };
        Some((host, u.port_or_known_default()?))
    }

    /// True for `wss://`.
    pub fn is_tls(&self) -> bool {
        self.url.starts_with("wss://")
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Everything the stages share about one relay.
#[derive(Debug)]
pub struct RelayCtx {
    /// Normalized URL.
    pub url: RelayUrl,
    /// Counters.
    pub stats: RelayStats,
    /// Sync progress, advanced by the sink as windows commit.
    pub progress: Progress,
    /// Whether the relay speaks NIP-77, once known ([`NIP77_UNKNOWN`], [`NIP77_YES`],
    /// [`NIP77_NO`]): remembered for the process so a relay without it is probed once.
    pub nip77: std::sync::atomic::AtomicU8,
    /// Whether the relay answers exact NIP-45 COUNTs, once known (same values as `nip77`).
    pub nip45: std::sync::atomic::AtomicU8,
    /// The epoch of the fleet lease this relay is synced under (0: no lease, as in
    /// `sync --once`): the sink writes the cursor only while the lease still has this epoch.
    pub fence: std::sync::atomic::AtomicI64,
}

/// [`RelayCtx::nip77`]: not probed yet.
pub const NIP77_UNKNOWN: u8 = 0;
/// [`RelayCtx::nip77`]: answered a reconciliation.
pub const NIP77_YES: u8 = 1;
/// [`RelayCtx::nip77`]: does not speak it (or speaks it badly): the walk is used.
pub const NIP77_NO: u8 = 2;

impl RelayCtx {
    /// A context starting from a persisted cursor state.
    pub fn new(url: RelayUrl, state: super::CursorState) -> Arc<RelayCtx> {
        Arc::new(RelayCtx {
            url,
            stats: RelayStats::default(),
            progress: Progress::new(state),
            nip77: std::sync::atomic::AtomicU8::new(NIP77_UNKNOWN),
            nip45: std::sync::atomic::AtomicU8::new(NIP77_UNKNOWN),
            fence: std::sync::atomic::AtomicI64::new(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> String {
        RelayUrl::parse(s, true)
            .map(|u| u.to_string())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn normalizes() {
        assert_eq!(n("WSS://Relay.Damus.IO/"), "wss://relay.damus.io");
        assert_eq!(n("wss://relay.damus.io:443"), "wss://relay.damus.io");
        assert_eq!(
            n("ws://relay.example.com:80/path//"),
            "ws://relay.example.com/path"
        );
        assert_eq!(
            n("wss://relay.example.com./?x=1#f"),
            "wss://relay.example.com"
        );
        assert_eq!(n("wss://bücher.example"), "wss://xn--bcher-kva.example");
        assert_eq!(n("ws://[0:0:0:0:0:0:0:1]:7777"), "ws://[::1]:7777");
        assert_eq!(n("wss://0.."), "wss://0.0.0.0");
        assert_eq!(
            RelayUrl::parse("wss://127.0.0.1..", false),
            Err(UrlError::Local)
        );
        assert_eq!(n("https://x.com"), "ERR scheme is not ws or wss");
        let tor = RelayUrl::parse("ws://abc.onion", false).expect("tor");
        assert_eq!(tor.network(), Network::Tor);
        assert_eq!(
            RelayUrl::parse("ws://127.0.0.1:1", false),
            Err(UrlError::Local)
        );
        assert_eq!(
            RelayUrl::parse("ws://10.1.2.3", false),
            Err(UrlError::Local)
        );
        assert_eq!(
            RelayUrl::parse("ws://127.0.0.1:1", true).map(|u| u.network()),
            Ok(Network::Local)
        );
    }

    proptest! {
        /// Normalization never panics, is idempotent, keeps the network, respects the length
        /// cap and never lets a local address through when local relays are refused, over
        /// URL-shaped inputs (mixed case, IPv4/IPv6 hosts, IDN, ports, dots, paths, queries).
        #[test]
        fn idempotent_over_url_shapes(
            scheme in "(?i)(ws|wss)",
            host in prop_oneof![
                "[a-zA-Z0-9ü-]{1,12}(\\.[a-zA-Z0-9-]{1,8}){0,3}\\.?",
                "(10|127|192|172|8|100|169)\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.?",
                "\\[(::ffff:)?[0-9a-fA-F:]{2,20}\\]",
                "[a-z2-7]{16}\\.onion",
            ],
            port in proptest::option::of(any::<u16>()),
            path in "(/[a-zA-Z0-9%._~ -]{0,6}){0,3}/?",
            tail in "(\\?[a-z=&]{0,6})?(#[a-z]{0,4})?",
        ) {
            let input = match port {
                Some(p) => format!("{scheme}://{host}:{p}{path}{tail}"),
                None => format!("{scheme}://{host}{path}{tail}"),
            };
            if let Ok(u) = RelayUrl::parse(&input, true) {
                prop_assert!(u.as_str().len() <= MAX_URL_LEN);
                prop_assert!(!u.as_str().contains('?') && !u.as_str().contains('#'));
                prop_assert!(!u.as_str().ends_with('/'));
                let again = RelayUrl::parse(u.as_str(), true).expect("normalized parses");
                prop_assert_eq!(again.as_str(), u.as_str());
                prop_assert_eq!(again.network(), u.network());
                let strict = RelayUrl::parse(&input, false);
                if u.network() == Network::Local {
                    prop_assert_eq!(strict, Err(UrlError::Local));
                } else {
                    prop_assert_eq!(strict.map(|s| s.to_string()), Ok(u.to_string()));
                }
            }
        }

        #[test]
        fn idempotent_and_total(s in "\\PC{0,60}", host in "[a-zA-Z0-9.-]{1,20}", port in proptest::option::of(any::<u16>()), path in "[a-zA-Z0-9/]{0,10}") {
            let _ = RelayUrl::parse(&s, true);
            let input = match port { Some(p) => format!("wss://{host}:{p}/{path}"), None => format!("wss://{host}/{path}") };
            if let Ok(u) = RelayUrl::parse(&input, true) {
                let again = RelayUrl::parse(u.as_str(), true).expect("normalized parses");
                prop_assert_eq!(again.as_str(), u.as_str());
            }
        }
    }
}
