//! Relay hints carried by events.
//!
//! Where events name relays:
//! - any value of any tag, in any kind, that is a `ws://` or `wss://` URL (as BigBrotr mines
//!   every tag value): NIP-65 relay lists' `r` tags, the relay slot of `e`/`p`/`a`/`q` tags,
//!   `relay` tags (kind 10050, NIP-51 sets, NIP-42), NIP-66 `d` tags, and `r` tags or any
//!   other tag naming a relay in a note;
//! - the legacy relay map in kind 3 content: `{"wss://…": {"read": true, "write": true}}`.
//!
//! Extraction returns the raw strings (trimmed, `ws://` or `wss://`, bounded length);
//! normalization with [`crate::model::RelayUrl::parse`] is the finder's job. The check that
//! decides whether an event needs parsing at all ([`may_carry_hints`]) is a substring scan,
//! cheap enough for the dedupe hot path.

use serde::de::IgnoredAny;
use std::collections::BTreeMap;

/// Longest hint passed on; anything longer is not a usable relay URL.
pub const MAX_HINT_LEN: usize = 1024;

/// NIP-02 follow list: carries the legacy relay map in its content.
pub const KIND_CONTACTS: u16 = 3;

/// True if `s` holds something shaped like `ws://` or `wss://` (any case).
pub fn has_ws_url(s: &str) -> bool {
    let b = s.as_bytes();
    s.match_indices("://").any(|(i, _)| {
        let pre = &b[..i];
        pre.len() >= 2 && pre[pre.len() - 2..].eq_ignore_ascii_case(b"ws")
            || pre.len() >= 3 && pre[pre.len() - 3..].eq_ignore_ascii_case(b"wss")
    })
}

/// True if the event may carry relay hints: only such events are parsed.
pub fn may_carry_hints(kind: u16, tags_json: &str, content: &str) -> bool {
    has_ws_url(tags_json) || (kind == KIND_CONTACTS && has_ws_url(content))
}

/// `s` trimmed if it looks like a WebSocket URL of bounded length.
pub fn as_ws_url(s: &str) -> Option<&str> {
    let t = s.trim();
    if t.is_empty() || t.len() > MAX_HINT_LEN {
        return None;
    }
    let b = t.as_bytes();
    let ok = (b.len() > 5 && b[..5].eq_ignore_ascii_case(b"ws://"))
        || (b.len() > 6 && b[..6].eq_ignore_ascii_case(b"wss://"));
    ok.then_some(t)
}

/// Calls `out` with every relay hint in `tags`: each value (after the tag's name) that is a
/// WebSocket URL, whatever the tag and the kind.
pub fn from_tags<S: AsRef<str>>(tags: &[Vec<S>], out: &mut impl FnMut(&str)) {
    for t in tags {
        for v in t.iter().skip(1) {
            if let Some(u) = as_ws_url(v.as_ref()) {
                out(u);
            }
        }
    }
}

/// Calls `out` with every relay of a kind 3 legacy relay map (`content`); other content is
/// ignored.
pub fn from_contacts_content(content: &str, out: &mut impl FnMut(&str)) {
    let c = content.trim_start();
    if !c.starts_with('{') {
        return;
    }
    if let Ok(map) = serde_json::from_str::<BTreeMap<String, IgnoredAny>>(c) {
        for k in map.keys() {
            if let Some(u) = as_ws_url(k) {
                out(u);
            }
        }
    }
}

/// Calls `out` with every relay hint of an event given its kind, canonical tags JSON and
/// content. Malformed tags JSON yields nothing (stored events always have valid tags).
pub fn extract(kind: u16, tags_json: &str, content: &str, out: &mut impl FnMut(&str)) {
    if has_ws_url(tags_json) {
        // Canonical tags are mostly escape-free: borrow when possible, own otherwise.
        match serde_json::from_str::<Vec<Vec<&str>>>(tags_json) {
            Ok(tags) => from_tags(&tags, out),
            Err(_) => {
                if let Ok(tags) = serde_json::from_str::<Vec<Vec<String>>>(tags_json) {
                    from_tags(&tags, out);
                }
            }
        }
    }
    if kind == KIND_CONTACTS && has_ws_url(content) {
        from_contacts_content(content, out);
    }
}

/// Every relay hint of an event, in order of appearance (duplicates kept).
pub fn extract_vec(kind: u16, tags_json: &str, content: &str) -> Vec<String> {
    let mut v = Vec::new();
    extract(kind, tags_json, content, &mut |u| v.push(u.to_string()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_only_ws_urls() {
        assert!(has_ws_url(r#"[["e","x","wss://a.com"]]"#));
        assert!(has_ws_url(r#"[["e","x","WS://a.com"]]"#));
        assert!(!has_ws_url(r#"[["r","https://a.com"]]"#));
        assert!(!has_ws_url("://"));
        assert_eq!(as_ws_url(" wss://a.com "), Some("wss://a.com"));
        assert_eq!(as_ws_url("wss://"), None);
        assert_eq!(as_ws_url("https://a.com"), None);
        assert_eq!(as_ws_url(&format!("wss://{}", "a".repeat(2000))), None);
    }

    #[test]
    fn escaped_tags_still_parse() {
        let tags = r#"[["t","say \"hi\""],["e","00","wss://r.example"]]"#;
        assert_eq!(extract_vec(1, tags, ""), vec!["wss://r.example"]);
    }
}
