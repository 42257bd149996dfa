//! Where candidate relays come from besides event hints: the seed file and HTTP relay lists.
//!
//! An HTTP list is a JSON document; a configured path (`""` for the top level, `"relays"`,
//! `"data.relays"`, numeric segments index arrays) leads to an array whose elements are URL
//! strings or objects with a `url` string. Responses are read up to a size cap: a larger one
//! is an error, never a partial list.

use serde_json::Value;
use std::time::Duration;

/// One configured HTTP relay list.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSource {
    /// The list's URL (http or https).
    pub url: String,
    /// Dot-separated path to the array of relays inside the JSON document.
    pub json_path: String,
    /// Least time between two fetches of this list.
    pub cooldown: Duration,
}

impl HttpSource {
    /// The name recorded as a candidate's source and as the key of its fetch state.
    pub fn name(&self) -> String {
        format!("http:{}", self.url)
    }
}

/// Why a list could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// The body is not JSON.
    #[error("response is not JSON: {0}")]
    NotJson(String),
    /// The path leads nowhere.
    #[error("json path `{0}` not found")]
    PathNotFound(String),
    /// The path leads to something other than an array.
    #[error("json path `{0}` is not an array")]
    NotAnArray(String),
    /// The body exceeds the cap.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// Transport or HTTP status failure.
    #[error("{0}")]
    Http(String),
}

/// URLs found in a list, and elements that were neither a string nor an object with a
/// string `url`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedList {
    /// The URL strings, as written (normalized later).
    pub urls: Vec<String>,
    /// Elements skipped because of their shape.
    pub skipped: usize,
}

/// Follows `path` inside `v`.
fn follow<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Reads the relay URLs at `json_path` of a JSON document.
pub fn parse_list(body: &[u8], json_path: &str) -> Result<ParsedList, ListError> {
    crate::model::json::check_depth(body).map_err(|e| ListError::NotJson(e.to_string()))?;
    let v: Value = serde_json::from_slice(body).map_err(|e| ListError::NotJson(e.to_string()))?;
    let target =
        follow(&v, json_path.trim()).ok_or_else(|| ListError::PathNotFound(json_path.into()))?;
    let Value::Array(items) = target else {
        return Err(ListError::NotAnArray(json_path.into()));
    };
    let mut out = ParsedList::default();
    for it in items {
        match it {
            Value::String(s) => out.urls.push(s.clone()),
            Value::Object(m) => match m.get("url") {
                Some(Value::String(s)) => out.urls.push(s.clone()),
                _ => out.skipped += 1,
            },
            _ => out.skipped += 1,
        }
    }
    Ok(out)
}

/// The relay lines of a seed file: one URL per line, `#` starts a comment.
pub fn parse_seed_text(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}

/// An HTTP client for relay lists: rustls with the webpki roots, a total timeout, and the
/// SOCKS5 proxy (names resolved by the proxy) for `.onion`/`.i2p`/`.loki` list hosts.
pub fn http_client(
    socks5: Option<&str>,
    timeout: Duration,
) -> Result<reqwest::Client, super::FinderError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("bigbrotr/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::limited(5));
    if let Some(proxy) = socks5 {
        let proxy_url = format!("socks5h://{proxy}");
        let p = reqwest::Proxy::custom(move |u| {
            let overlay = u.host_str().is_some_and(|h| {
                let h = h.trim_end_matches('.');
                h.ends_with(".onion") || h.ends_with(".i2p") || h.ends_with(".loki")
            });
            overlay.then(|| proxy_url.clone())
        });
        b = b.proxy(p);
    }
    b.build().map_err(super::FinderError::HttpClient)
}

/// Fetches `src` and reads its relay URLs; bodies beyond `max_bytes` are refused.
pub async fn fetch(
    client: &reqwest::Client,
    src: &HttpSource,
    max_bytes: usize,
) -> Result<ParsedList, ListError> {
    let mut resp = client
        .get(&src.url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| ListError::Http(format!("GET {}: {e}", src.url)))?;
    if !resp.status().is_success() {
        return Err(ListError::Http(format!(
            "GET {}: HTTP {}",
            src.url,
            resp.status()
        )));
    }
    if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
        return Err(ListError::TooLarge(max_bytes));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ListError::Http(format!("GET {}: {e}", src.url)))?
    {
        if body.len() + chunk.len() > max_bytes {
            return Err(ListError::TooLarge(max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    parse_list(&body, &src.json_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_paths() {
        let doc = br#"{"data":{"relays":["wss://a.com",{"url":"wss://b.com"},3,{"u":"x"}]},"list":[["wss://c.com"]]}"#;
        let p = parse_list(doc, "data.relays").expect("list");
        assert_eq!(p.urls, vec!["wss://a.com", "wss://b.com"]);
        assert_eq!(p.skipped, 2);
        assert_eq!(
            parse_list(doc, "list.0").expect("indexed").urls,
            vec!["wss://c.com"]
        );
        assert_eq!(
            parse_list(doc, "data.nope"),
            Err(ListError::PathNotFound("data.nope".into()))
        );
        assert_eq!(
            parse_list(doc, "data"),
            Err(ListError::NotAnArray("data".into()))
        );
    }

    #[test]
    fn seed_lines() {
        assert_eq!(
            parse_seed_text("# c\nwss://a.com # x\n\n  wss://b.com\n"),
            vec!["wss://a.com", "wss://b.com"]
        );
    }
}
