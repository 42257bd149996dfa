//! The DNS check: A, AAAA and CNAME answers with their TTLs, from the system's nameservers or
//! a configured one. The addresses found are also the ones the other probes connect to.

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use serde_json::{json, Map, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Answers kept per record type: a host with more is a round-robin pool, and a bounded
/// sample describes it as well as the whole.
const MAX_ANSWERS: usize = 32;

/// A resolver that does not cache (so TTLs are the servers', not a countdown) and does not
/// read the hosts file (so the answers are what the DNS says).
pub(crate) fn resolver(
    server: Option<SocketAddr>,
    timeout: Duration,
) -> Result<TokioResolver, String> {
    let mut builder = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?,
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = timeout;
    opts.attempts = 2;
    opts.preserve_intermediates = true;
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// The outcome of the DNS check.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// IPv4 addresses first, then IPv6, as answered.
    pub(crate) addrs: Vec<IpAddr>,
    /// `{"a": [{"ip", "ttl"}], "aaaa": [...], "cname": [{"name", "target", "ttl"}],
    /// "ttl": lowest TTL seen, "errors": {"a": ...}}`.
    pub(crate) json: Value,
}

/// Looks up `host` (a domain name, not an IP literal); never fails: errors are in the JSON.
pub(crate) async fn check(resolver: &TokioResolver, host: &str, budget: Duration) -> Resolved {
    let fqdn = if host.ends_with('.') {
        host.to_string()
    } else {
        format!("{host}.")
    };
    let lookup = |t: RecordType| {
        let fqdn = fqdn.clone();
        async move { tokio::time::timeout(budget, resolver.lookup(fqdn.as_str(), t)).await }
    };
    let (a, aaaa, cname) = tokio::join!(
        lookup(RecordType::A),
        lookup(RecordType::AAAA),
        lookup(RecordType::CNAME)
    );
    let mut v4: Vec<(IpAddr, u32)> = Vec::new();
    let mut v6: Vec<(IpAddr, u32)> = Vec::new();
    let mut cnames: Vec<(String, String, u32)> = Vec::new();
    let mut errors = Map::new();
    for (label, r) in [("a", a), ("aaaa", aaaa), ("cname", cname)] {
        let lookup = match r {
            Ok(Ok(l)) => l,
            Ok(Err(e)) if e.is_no_records_found() => continue,
            Ok(Err(e)) => {
                errors.insert(
                    label.into(),
                    Value::String(super::nip11::note(&e.to_string())),
                );
                continue;
            }
            Err(_) => {
                errors.insert(label.into(), Value::String("timed out".into()));
                continue;
            }
        };
        for rec in lookup.answers() {
            let ttl = rec.ttl;
            match &rec.data {
                RData::A(ip) => push(&mut v4, (IpAddr::V4(ip.0), ttl)),
                RData::AAAA(ip) => push(&mut v6, (IpAddr::V6(ip.0), ttl)),
                RData::CNAME(target) => push(
                    &mut cnames,
                    (rec.name.to_string(), target.0.to_string(), ttl),
                ),
                _ => {}
            }
        }
    }
    let ttl = v4
        .iter()
        .chain(v6.iter())
        .map(|(_, t)| *t)
        .chain(cnames.iter().map(|c| c.2))
        .min();
    let mut out = Map::new();
    out.insert(
        "a".into(),
        v4.iter()
            .map(|(ip, t)| json!({"ip": ip.to_string(), "ttl": t}))
            .collect(),
    );
    out.insert(
        "aaaa".into(),
        v6.iter()
            .map(|(ip, t)| json!({"ip": ip.to_string(), "ttl": t}))
            .collect(),
    );
    out.insert(
        "cname".into(),
        cnames
            .iter()
            .map(|(n, t, ttl)| json!({"name": n, "target": t, "ttl": ttl}))
            .collect(),
    );
    if let Some(t) = ttl {
        out.insert("ttl".into(), json!(t));
    }
    if !errors.is_empty() {
        out.insert("errors".into(), Value::Object(errors));
    }
    Resolved {
        addrs: v4.iter().chain(v6.iter()).map(|(ip, _)| *ip).collect(),
        json: Value::Object(out),
    }
}

fn push<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if list.len() < MAX_ANSWERS && !list.contains(&item) {
        list.push(item);
    }
}
