//! NIP-11: the relay information document, fetched over HTTP(S) from the relay's own URL with
//! `Accept: application/nostr+json`, kept raw, and read leniently (documents in the wild put
//! strings where numbers belong, pubkeys that are not hex, fields long removed from the spec).

use super::net::{self, Tls};
use crate::model::{Network, RelayUrl};
use crate::relay::transport::{Io, TransportConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{self, HeaderMap};
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use std::time::Duration;

/// The media type NIP-11 documents are asked for with.
pub const MEDIA_TYPE: &str = "application/nostr+json";

/// Redirects followed before giving up (relays behind proxies often redirect http → https).
const MAX_REDIRECTS: usize = 3;

/// Longest header value or error text kept in the check result.
const MAX_NOTE: usize = 512;

/// How to fetch a document.
#[derive(Debug, Clone)]
pub(crate) struct FetchConfig {
    /// Proxy and socket settings.
    pub(crate) transport: TransportConfig,
    /// TLS trust for https.
    pub(crate) tls: Tls,
    /// Budget for the whole fetch, redirects included.
    pub(crate) timeout: Duration,
    /// Largest body accepted.
    pub(crate) max_bytes: usize,
}

/// The outcome of a fetch: the document when one was obtained, and the HTTP facts (status,
/// `Server`, `X-Powered-By`, size, and why no document was kept) for the check result.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    /// The document, a JSON object free of U+0000; `None` when none could be kept.
    pub(crate) doc: Option<Value>,
    /// HTTP facts: `status`, `server`, `x_powered_by`, `content_type`, `bytes`, `error`,
    /// `nip11_error`, `url` (the final URL after redirects).
    pub(crate) http: Value,
}

/// Fetches the NIP-11 document of `relay`, connecting to `addrs` when given (see
/// [`net::dial`]). Never fails: what went wrong is in [`Fetched::http`].
pub(crate) async fn fetch(relay: &RelayUrl, addrs: &[IpAddr], cfg: &FetchConfig) -> Fetched {
    let mut http = Map::new();
    let r = net::within(
        cfg.timeout,
        "nip11",
        fetch_following(relay, addrs, cfg, &mut http),
    )
    .await;
    let doc = match r {
        Ok((status, headers, body)) => interpret(status, &headers, &body, &mut http),
        Err(e) => {
            http.insert("error".into(), Value::String(note(&e)));
            None
        }
    };
    Fetched {
        doc,
        http: Value::Object(http),
    }
}

async fn fetch_following(
    relay: &RelayUrl,
    addrs: &[IpAddr],
    cfg: &FetchConfig,
    http: &mut Map<String, Value>,
) -> Result<(u16, HeaderMap, Bytes), String> {
    let mut target = relay.clone();
    let mut addrs = addrs.to_vec();
    for _ in 0..=MAX_REDIRECTS {
        let (status, headers, body) = request(&target, &addrs, cfg).await?;
        let location = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .filter(|_| matches!(status, 301 | 302 | 303 | 307 | 308));
        let Some(location) = location else {
            if &target != relay {
                http.insert("url".into(), Value::String(http_url(&target)));
            }
            return Ok((status, headers, body));
        };
        let next = redirect_target(&target, location, relay.network() == Network::Local)
            .ok_or_else(|| format!("HTTP {status} to an unusable location {}", note(location)))?;
        if next.host_port() != target.host_port() {
            // Our resolver's answers were for the original host; the system resolves others.
            addrs.clear();
        }
        target = next;
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

/// The http(s) URL a relay serves its document at.
pub(crate) fn http_url(relay: &RelayUrl) -> String {
    let s = relay.as_str();
    if let Some(rest) = s.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = s.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        s.to_string()
    }
}

/// A redirect location, resolved against the current URL, as a relay URL (ws/wss standing
/// for http/https) so that the same dialing applies; `None` for other schemes or local
/// addresses that the original relay was not on.
fn redirect_target(current: &RelayUrl, location: &str, allow_local: bool) -> Option<RelayUrl> {
    let base = url::Url::parse(&http_url(current)).ok()?;
    let next = base.join(location).ok()?;
    let ws = match next.scheme() {
        "https" => format!("wss{}", &next.as_str()[5..]),
        "http" => format!("ws{}", &next.as_str()[4..]),
        _ => return None,
    };
    RelayUrl::parse(&ws, allow_local).ok()
}

async fn request(
    target: &RelayUrl,
    addrs: &[IpAddr],
    cfg: &FetchConfig,
) -> Result<(u16, HeaderMap, Bytes), String> {
    let (host, port) = target.host_port().ok_or("no host/port")?;
    let stream = net::dial(&host, port, target.network(), addrs, &cfg.transport).await?;
    let io: Box<dyn Io> = if target.is_tls() {
        Box::new(net::tls_connect(stream, &host, cfg.tls.strict()).await?)
    } else {
        stream
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("http handshake: {e}"))?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let path = url::Url::parse(target.as_str())
        .map(|u| u.path().to_string())
        .unwrap_or_else(|_| "/".into());
    let default_port = if target.is_tls() { 443 } else { 80 };
    let host_hdr = match (host.contains(':'), port == default_port) {
        (true, true) => format!("[{host}]"),
        (true, false) => format!("[{host}]:{port}"),
        (false, true) => host.clone(),
        (false, false) => format!("{host}:{port}"),
    };
    let req = hyper::Request::get(if path.is_empty() { "/" } else { &path })
        .header(header::HOST, host_hdr)
        .header(header::ACCEPT, MEDIA_TYPE)
        .header(header::USER_AGENT, "bigbrotr-monitor")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, cfg.max_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                format!("body larger than {} bytes", cfg.max_bytes)
            } else {
                format!("http body: {e}")
            }
        })?
        .to_bytes();
    drop(driver);
    Ok((parts.status.as_u16(), parts.headers, body))
}

/// Aborts the connection task when the fetch ends or is cancelled by its timeout.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records the HTTP facts and returns the document when the response holds one.
fn interpret(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    http: &mut Map<String, Value>,
) -> Option<Value> {
    http.insert("status".into(), json!(status));
    for (name, key) in [
        (header::SERVER, "server"),
        (header::CONTENT_TYPE, "content_type"),
    ] {
        if let Some(v) = headers.get(&name) {
            http.insert(
                key.into(),
                Value::String(note(&String::from_utf8_lossy(v.as_bytes()))),
            );
        }
    }
    if let Some(v) = headers.get("x-powered-by") {
        http.insert(
            "x_powered_by".into(),
            Value::String(note(&String::from_utf8_lossy(v.as_bytes()))),
        );
    }
    http.insert("bytes".into(), json!(body.len()));
    if !(200..300).contains(&status) {
        http.insert(
            "nip11_error".into(),
            Value::String(format!("HTTP status {status}")),
        );
        return None;
    }
    match parse_document(body) {
        Ok(doc) => Some(doc),
        Err(e) => {
            http.insert("nip11_error".into(), Value::String(e));
            None
        }
    }
}

/// Parses a response body as a NIP-11 document: a JSON object (a UTF-8 BOM is tolerated)
/// with no U+0000 anywhere, since PostgreSQL `jsonb` cannot hold it. Anything else is an
/// error saying why, never a panic.
pub fn parse_document(body: &[u8]) -> Result<Value, String> {
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    crate::model::json::check_depth(body).map_err(|e| note(&format!("not JSON: {e}")))?;
    let v: Value = serde_json::from_slice(body).map_err(|e| note(&format!("not JSON: {e}")))?;
    let kind = match &v {
        Value::Object(_) => None,
        Value::Array(_) => Some("an array"),
        Value::String(_) => Some("a string"),
        Value::Number(_) => Some("a number"),
        Value::Bool(_) => Some("a boolean"),
        Value::Null => Some("null"),
    };
    if let Some(k) = kind {
        return Err(format!("not a JSON object but {k}"));
    }
    if has_nul(&v) {
        return Err("contains U+0000, which jsonb cannot store".into());
    }
    Ok(v)
}

/// True when a string or key anywhere in `v` contains U+0000.
pub(crate) fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// `s` cut to a bounded length, U+0000 replaced: safe to keep in a `jsonb` check result.
pub(crate) fn note(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_NOTE).collect();
    if out.contains('\0') {
        out = out.replace('\0', "\u{fffd}");
    }
    out
}

/// `limitation` fields the connectors and the NIP-66 tags use, read leniently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limitation {
    /// Largest `limit` the relay honours.
    pub max_limit: Option<usize>,
    /// Concurrent subscriptions allowed per connection.
    pub max_subscriptions: Option<usize>,
    /// Largest message accepted, in bytes.
    pub max_message_length: Option<usize>,
    /// NIP-42 authentication required.
    pub auth_required: Option<bool>,
    /// Payment required.
    pub payment_required: Option<bool>,
    /// Writes restricted to some users.
    pub restricted_writes: Option<bool>,
    /// Proof-of-work difficulty required on events.
    pub min_pow_difficulty: Option<u64>,
}

impl Limitation {
    /// Reads a `limitation` object; other shapes give the empty limitation.
    pub fn from_value(v: &Value) -> Limitation {
        let Some(o) = v.as_object() else {
            return Limitation::default();
        };
        let int = |k: &str| o.get(k).and_then(lenient_uint);
        Limitation {
            max_limit: int("max_limit").and_then(|n| usize::try_from(n).ok()),
            max_subscriptions: int("max_subscriptions").and_then(|n| usize::try_from(n).ok()),
            max_message_length: int("max_message_length").and_then(|n| usize::try_from(n).ok()),
            auth_required: o.get("auth_required").and_then(lenient_bool),
            payment_required: o.get("payment_required").and_then(lenient_bool),
            restricted_writes: o.get("restricted_writes").and_then(lenient_bool),
            min_pow_difficulty: int("min_pow_difficulty"),
        }
    }
}

/// The fields of a document the monitor itself uses, each read on its own so that one
/// malformed field never loses the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nip11Info {
    /// `name`.
    pub name: Option<String>,
    /// `supported_nips`: integers, numeric strings and integral floats; other entries skipped.
    pub supported_nips: Vec<u32>,
    /// `software`.
    pub software: Option<String>,
    /// `version`.
    pub version: Option<String>,
    /// `limitation`.
    pub limitation: Limitation,
    /// `language_tags` (removed from the spec, still common).
    pub language_tags: Vec<String>,
    /// `tags`: topics (removed from the spec, still common).
    pub tags: Vec<String>,
}

impl Nip11Info {
    /// Reads a document leniently.
    pub fn from_value(doc: &Value) -> Nip11Info {
        let text = |k: &str| match doc.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let mut nips: Vec<u32> = match doc.get("supported_nips") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(lenient_uint)
                .filter_map(|n| u32::try_from(n).ok())
                .collect(),
            Some(v) => lenient_uint(v)
                .and_then(|n| u32::try_from(n).ok())
                .into_iter()
                .collect(),
            None => Vec::new(),
        };
        nips.sort_unstable();
        nips.dedup();
        Nip11Info {
            name: text("name"),
            supported_nips: nips,
            software: text("software"),
            version: text("version"),
            limitation: doc
                .get("limitation")
                .map(Limitation::from_value)
                .unwrap_or_default(),
            language_tags: strings(doc.get("language_tags")),
            tags: strings(doc.get("tags")),
        }
    }
}

/// A list of strings from an array (non-strings skipped) or a single string.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Some(Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_string()],
        _ => Vec::new(),
    }
}

/// A non-negative integer from a number (integral floats too) or a numeric string.
pub fn lenient_uint(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
}

/// A boolean from a boolean, 0/1, or "true"/"false"/"yes"/"no"/"1"/"0".
pub fn lenient_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Some(true),
            "false" | "no" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_that_are_not_objects_are_refused_with_a_reason() {
        assert!(parse_document(b"<html>")
            .unwrap_err()
            .starts_with("not JSON"));
        assert!(parse_document(b"[1,2]").unwrap_err().contains("array"));
        assert!(parse_document(b"\"x\"").unwrap_err().contains("string"));
        assert!(parse_document(br#"{"name":"a\u0000b"}"#)
            .unwrap_err()
            .contains("U+0000"));
        assert!(parse_document(br#"{"a\u0000":1}"#).is_err());
        let ok = parse_document(b"\xef\xbb\xbf{\"name\":\"x\"}").expect("BOM tolerated");
        assert_eq!(ok["name"], "x");
    }

    #[test]
    fn wrong_types_lose_only_their_own_field() {
        let doc: Value = serde_json::from_str(
            r#"{"name": 42, "supported_nips": [1, "11", 40.0, "x", -3, null, 1],
                "pubkey": "not hex", "software": ["x"],
                "limitation": {"max_limit": "500", "max_subscriptions": "many",
                               "auth_required": "true", "payment_required": 0,
                               "restricted_writes": "maybe", "min_pow_difficulty": 8.0},
                "language_tags": "en", "tags": ["bitcoin", 3, " "]}"#,
        )
        .expect("json");
        let i = Nip11Info::from_value(&doc);
        assert_eq!(i.name.as_deref(), Some("42"));
        assert_eq!(i.supported_nips, vec![1, 11, 40]);
        assert_eq!(i.software, None);
        assert_eq!(i.limitation.max_limit, Some(500));
        assert_eq!(i.limitation.max_subscriptions, None);
        assert_eq!(i.limitation.auth_required, Some(true));
        assert_eq!(i.limitation.payment_required, Some(false));
        assert_eq!(i.limitation.restricted_writes, None);
        assert_eq!(i.limitation.min_pow_difficulty, Some(8));
        assert_eq!(i.language_tags, vec!["en"]);
        assert_eq!(i.tags, vec!["bitcoin"]);
        assert_eq!(Limitation::from_value(&json!([1])), Limitation::default());
    }

    #[test]
    fn http_url_maps_schemes() {
        let u = RelayUrl::parse("wss://relay.example.com/path", false).expect("url");
        assert_eq!(http_url(&u), "https://relay.example.com/path");
        let u = RelayUrl::parse("ws://relay.example.com:8080", false).expect("url");
        assert_eq!(http_url(&u), "http://relay.example.com:8080");
        let next = redirect_target(&u, "https://other.example.com/x", false).expect("redirect");
        assert_eq!(next.as_str(), "wss://other.example.com/x");
        let rel = redirect_target(&u, "/y", false).expect("relative");
        assert_eq!(rel.as_str(), "ws://relay.example.com:8080/y");
        assert!(redirect_target(&u, "ftp://x/", false).is_none());
        assert!(redirect_target(&u, "http://127.0.0.1/", false).is_none());
    }
}
