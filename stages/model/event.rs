//! Events: a zero-copy view parsed with simd-json, and the compact owned form that travels
//! through the pipeline.

use super::canonical;
use simd_json::{BorrowedValue as Value, StaticNode};

/// Why an event object could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON, or not a NIP-01 event object (missing or mistyped field).
    Malformed,
    /// A field that must be hex of a fixed length is not.
    BadHex,
    /// `tags` is not an array of arrays of strings.
    BadTags,
    /// `kind` is outside 0..=65535 or `created_at` is not an integer.
    BadNumber,
}

/// A parsed event borrowing its strings from the frame buffer.
#[derive(Debug)]
pub struct EventRef<'a> {
    /// The id the relay claims (not yet recomputed).
    pub id: [u8; 32],
    /// Author x-only public key.
    pub pubkey: [u8; 32],
    /// BIP-340 signature.
    pub sig: [u8; 64],
    /// Unix seconds.
    pub created_at: i64,
    /// Event kind.
    pub kind: u16,
    /// The tags, each checked to be an array of strings.
    pub tags: &'a [Value<'a>],
    /// The unescaped content.
    pub content: &'a str,
}

#[inline]
fn hex_field<const N: usize>(v: Option<&Value<'_>>) -> Result<[u8; N], ParseError> {
    let s = match v {
        Some(Value::String(s)) => s,
        Some(_) => return Err(ParseError::Malformed),
        None => return Err(ParseError::Malformed),
    };
    let src = s.as_bytes();
    if src.len() != 2 * N {
        return Err(ParseError::BadHex);
    }
    let mut out = [0u8; N];
    faster_hex::hex_decode(src, &mut out).map_err(|_| ParseError::BadHex)?;
    Ok(out)
}

impl<'a> EventRef<'a> {
    /// Reads an event object out of a parsed JSON value.
    pub fn from_value(v: &'a Value<'a>) -> Result<EventRef<'a>, ParseError> {
        let obj = match v {
            Value::Object(o) => o,
            _ => return Err(ParseError::Malformed),
        };
        let mut id = None;
        let mut pubkey = None;
        let mut sig = None;
        let mut created_at = None;
        let mut kind = None;
        let mut tags = None;
        let mut content = None;
        for (k, val) in obj.iter() {
            match k.as_ref() {
                "id" => id = Some(val),
                "pubkey" => pubkey = Some(val),
                "sig" => sig = Some(val),
                "created_at" => created_at = Some(val),
                "kind" => kind = Some(val),
                "tags" => tags = Some(val),
                "content" => content = Some(val),
                _ => {}
            }
        }
        let created_at = match created_at {
            Some(Value::Static(StaticNode::I64(n))) => *n,
            Some(Value::Static(StaticNode::U64(n))) => {
                i64::try_from(*n).map_err(|_| ParseError::BadNumber)?
            }
            Some(Value::Static(StaticNode::F64(_))) => return Err(ParseError::BadNumber),
            _ => return Err(ParseError::Malformed),
        };
        let kind = match kind {
            Some(Value::Static(StaticNode::I64(n))) => {
                u16::try_from(*n).map_err(|_| ParseError::BadNumber)?
            }
            Some(Value::Static(StaticNode::U64(n))) => {
                u16::try_from(*n).map_err(|_| ParseError::BadNumber)?
            }
            Some(Value::Static(StaticNode::F64(_))) => return Err(ParseError::BadNumber),
            _ => return Err(ParseError::Malformed),
        };
        let tags: &'a [Value<'a>] = match tags {
            Some(Value::Array(a)) => a.as_slice(),
            _ => return Err(ParseError::Malformed),
        };
        for t in tags {
            match t {
                Value::Array(vals) => {
                    if !vals.iter().all(|x| matches!(x, Value::String(_))) {
                        return Err(ParseError::BadTags);
                    }
                }
                _ => return Err(ParseError::BadTags),
            }
        }
        let content: &'a str = match content {
            Some(Value::String(s)) => s.as_ref(),
            _ => return Err(ParseError::Malformed),
        };
        Ok(EventRef {
            id: hex_field(id)?,
            pubkey: hex_field(pubkey)?,
            sig: hex_field(sig)?,
            created_at,
            kind,
            tags,
            content,
        })
    }

    /// Iterates tags as string slices (validated in `from_value`).
    pub fn tag_strs(&self) -> impl Iterator<Item = impl Iterator<Item = &'a str>> + 'a {
        self.tags.iter().map(|t| {
            let vals: &'a [Value<'a>] = match t {
                Value::Array(a) => a.as_slice(),
                _ => &[],
            };
            vals.iter().map(|v| match v {
                Value::String(s) => s.as_ref(),
                _ => "",
            })
        })
    }

    /// Converts to the owned pipeline form, serializing the tags canonically once.
    pub fn to_owned_event(&self, scratch: &mut Vec<u8>) -> Event {
        scratch.clear();
        canonical::write_tags(scratch, self.tag_strs());
        // write_tags only emits valid UTF-8 (escaped copies of &str), so this cannot fail.
        let tags_json = String::from_utf8_lossy(scratch)
            .into_owned()
            .into_boxed_str();
        Event {
            id: self.id,
            pubkey: self.pubkey,
            sig: self.sig,
            created_at: self.created_at,
            kind: self.kind,
            tags_json,
            content: self.content.into(),
        }
    }
}

/// The compact owned event that travels between stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Event id (claimed until `verify` recomputes it).
    pub id: [u8; 32],
    /// Author x-only public key.
    pub pubkey: [u8; 32],
    /// BIP-340 signature over the id.
    pub sig: [u8; 64],
    /// Unix seconds.
    pub created_at: i64,
    /// Event kind.
    pub kind: u16,
    /// Tags as canonical NIP-01 JSON: part of the id preimage and valid JSONB text as is.
    pub tags_json: Box<str>,
    /// Unescaped content.
    pub content: Box<str>,
}

impl Event {
    /// Parses a standalone event JSON object (used by tests and tools; the connector parses
    /// whole relay messages instead).
    pub fn parse_json(json: &[u8]) -> Result<Event, ParseError> {
        super::json::check_depth(json).map_err(|_| ParseError::Malformed)?;
        let mut buf = json.to_vec();
        let v = simd_json::to_borrowed_value(&mut buf).map_err(|_| ParseError::Malformed)?;
        let r = EventRef::from_value(&v)?;
        Ok(r.to_owned_event(&mut Vec::new()))
    }

    /// Writes the canonical serialization into `buf`.
    pub fn canonical_into(&self, buf: &mut Vec<u8>) {
        canonical::serialize_into(
            buf,
            &self.pubkey,
            self.created_at,
            self.kind,
            &self.tags_json,
            &self.content,
        );
    }

    /// Recomputes the id from the content (NIP-01).
    pub fn compute_id(&self, buf: &mut Vec<u8>) -> [u8; 32] {
        canonical::event_id(
            buf,
            &self.pubkey,
            self.created_at,
            self.kind,
            &self.tags_json,
            &self.content,
        )
    }

    /// True when content or tags hold U+0000, which PostgreSQL text/jsonb cannot store as is.
    pub fn has_nul(&self) -> bool {
        self.content.contains('\0') || self.tags_json.contains("\\u0000")
    }

    /// Approximate heap + inline size, for memory accounting.
    pub fn approx_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.tags_json.len() + self.content.len()
    }

    /// The event as a NIP-01 JSON object.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256 + self.content.len() + self.tags_json.len());
        out.extend_from_slice(b"{\"id\":\"");
        canonical::write_hex(&mut out, &self.id);
        out.extend_from_slice(b"\",\"pubkey\":\"");
        canonical::write_hex(&mut out, &self.pubkey);
        out.extend_from_slice(b"\",\"created_at\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.created_at).as_bytes());
        out.extend_from_slice(b",\"kind\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.kind).as_bytes());
        out.extend_from_slice(b",\"tags\":");
        out.extend_from_slice(self.tags_json.as_bytes());
        out.extend_from_slice(b",\"content\":");
        canonical::write_json_str(&mut out, &self.content);
        out.extend_from_slice(b",\"sig\":\"");
        canonical::write_hex(&mut out, &self.sig);
        out.extend_from_slice(b"\"}");
        // Every part is UTF-8 already: validate in place rather than copy through `lossy`.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EV: &str = r#"{"id":"4376c65d2f232afbe9b882a35baa4f6fe8667c4e684749af565f981833ed6a65","pubkey":"6e468422dfb74a5738702a8823b9b28168abab8655faacb6853cd0ee15deee93","created_at":1673347337,"kind":1,"tags":[["e","3da979448d9ba263864c4d6f14984c423a3838364ec255f03c7904b1ae77f206"],["p","bf2376e17ba4ec269d10fcc996a4746b451152be9031fa48e74553dde5526bce"]],"content":"Walled gardens became prisons, and nostr is the first step towards tearing down the prison walls.","sig":"908a15e46fb4d8675bab026fc230a0e3542bfade63da02d542fb78b2a8513fcd0092619a2c8c1221e581946e0191f2af505dfdf8657a414dbca329186f009262"}"#;

    #[test]
    fn parses_and_recomputes_the_id() {
        let ev = Event::parse_json(EV.as_bytes()).expect("parse");
        assert_eq!(ev.kind, 1);
        assert_eq!(ev.compute_id(&mut Vec::new()), ev.id);
        let again = Event::parse_json(ev.to_json().as_bytes()).expect("reparse");
        assert_eq!(again, ev);
    }

    #[test]
    fn rejects_bad_shapes() {
        let bad = EV.replace("\"kind\":1", "\"kind\":70000");
        assert_eq!(
            Event::parse_json(bad.as_bytes()),
            Err(ParseError::BadNumber)
        );
        let bad = EV.replace("\"kind\":1", "\"kind\":\"1\"");
        assert_eq!(
            Event::parse_json(bad.as_bytes()),
            Err(ParseError::Malformed)
        );
        let bad = EV.replace("[\"p\",", "[1,");
        assert_eq!(Event::parse_json(bad.as_bytes()), Err(ParseError::BadTags));
        let bad = EV.replace("\"id\":\"4376", "\"id\":\"zz76");
        assert_eq!(Event::parse_json(bad.as_bytes()), Err(ParseError::BadHex));
        for (from, to) in [
            ("\"id\":\"4376", "\"id\":\"376"),
            ("\"sig\":\"9", "\"sig\":\"99"),
        ] {
            let bad = EV.replace(from, to);
            assert_eq!(Event::parse_json(bad.as_bytes()), Err(ParseError::BadHex));
        }
        let bad = EV.replace("\"pubkey\":\"6e46", "\"pubkey\":\"6e4g");
        assert_eq!(Event::parse_json(bad.as_bytes()), Err(ParseError::BadHex));
        // Upper-case digits decode to the same bytes (as the hex crate did before).
        let upper = EV.replace(
            "4376c65d2f232afbe9b882a35baa4f6f",
            "4376C65D2F232AFBE9B882A35BAA4F6F",
        );
        let ev = Event::parse_json(EV.as_bytes()).expect("parse");
        assert_eq!(Event::parse_json(upper.as_bytes()).map(|e| e.id), Ok(ev.id));
        assert_eq!(Event::parse_json(b"{\"id\":"), Err(ParseError::Malformed));
    }
}
