//! Live events on the relay endpoint: after a REQ's EOSE, events the sink commits from then on
//! are matched against the subscription's filters in memory and sent (NIP-01 keeps a
//! subscription open until CLOSE).
//!
//! The feed is the sink's [`Committed`](bigbrotr_stages::sink::Committed) broadcast. A
//! connection subscribes to it before its first REQ's query runs, so an event committed while
//! the query reads is either in the answer or in the feed (possibly both: a client may see an
//! id twice, never miss one). A connection that falls more than the feed's capacity behind gets
//! `CLOSED` on its live subscriptions, saying so, instead of a silent gap.

use bigbrotr_stages::dvm::jobs::Filter;
use bigbrotr_stages::model::Event;
use bigbrotr_stages::sink::{tag_key, tag_keys};

/// An event's tag keys, computed once per event and only when a filter asks for tags.
pub struct EventKeys<'a> {
    event: &'a Event,
    keys: Option<Vec<[u8; 16]>>,
}

impl<'a> EventKeys<'a> {
    /// The keys of `event`, not computed yet.
    pub fn new(event: &'a Event) -> EventKeys<'a> {
        EventKeys { event, keys: None }
    }

    fn keys(&mut self) -> &[[u8; 16]] {
        self.keys
            .get_or_insert_with(|| tag_keys(&self.event.tags_json))
    }
}

/// Whether `f` matches the event (NIP-01; tag filters match a single-letter tag's first value,
/// exactly as the archive's tag index does).
pub fn matches(f: &Filter, ev: &mut EventKeys<'_>) -> bool {
    let e = ev.event;
    if f.ids.as_ref().is_some_and(|ids| !ids.contains(&e.id))
        || f.authors.as_ref().is_some_and(|a| !a.contains(&e.pubkey))
        || f.kinds.as_ref().is_some_and(|k| !k.contains(&e.kind))
        || f.since.is_some_and(|s| e.created_at < s)
        || f.until.is_some_and(|u| e.created_at > u)
    {
        return false;
    }
    for (letter, values) in &f.tags {
        let mut buf = [0u8; 4];
        let letter = letter.encode_utf8(&mut buf);
        let keys = ev.keys();
        if !values
            .iter()
            .any(|v| keys.binary_search(&tag_key(letter, v)).is_ok())
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use bigbrotr_stages::dvm::jobs::Limits;

    fn event(kind: u16, created_at: i64, tags: &str) -> Event {
        Event {
            id: [1; 32],
            pubkey: [2; 32],
            sig: [3; 64],
            created_at,
            kind,
            tags_json: tags.into(),
            content: "hi".into(),
        }
    }

    fn filter(json: &str) -> Filter {
        Filter::parse(json, &Limits::default()).expect("filter")
    }

    #[test]
    fn nip01_matching() {
        let e = event(
            1,
            100,
            r##"[["t","nostr"],["p","ab","wss://x"],["e"],["x",1]]"##,
        );
        let yes = [
            "{}",
            r##"{"kinds":[1,7]}"##,
            r##"{"since":100,"until":100}"##,
            r##"{"#t":["nostr","other"]}"##,
            r##"{"#t":["nostr"],"#p":["ab"],"kinds":[1]}"##,
            &format!(r#"{{"ids":["{}"]}}"#, "01".repeat(32)),
            &format!(r#"{{"authors":["{}"]}}"#, "02".repeat(32)),
        ];
        for f in yes {
            assert!(matches(&filter(f), &mut EventKeys::new(&e)), "{f}");
        }
        let no = [
            r##"{"kinds":[7]}"##,
            r##"{"since":101}"##,
            r##"{"until":99}"##,
            r##"{"#t":["Nostr"]}"##,
            r##"{"#p":["wss://x"]}"##,
            r##"{"#e":[""]}"##,
            r##"{"#t":["nostr"],"#p":["cd"]}"##,
            &format!(r#"{{"ids":["{}"]}}"#, "03".repeat(32)),
        ];
        for f in no {
            assert!(!matches(&filter(f), &mut EventKeys::new(&e)), "{f}");
        }
    }
}
