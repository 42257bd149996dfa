//! NIP-01 canonical serialization: `[0,"<pubkey>",<created_at>,<kind>,<tags>,"<content>"]`.
//!
//! Written by hand rather than through serde_json because the hot path serializes every
//! event once and must do it into a reused buffer without building a `Value`; the property
//! tests check it byte for byte against serde_json.

use sha2::{Digest, Sha256};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string literal with NIP-01 escaping (the seven short escapes, other
/// C0 controls as lowercase `\u00xx`, everything else verbatim).
#[inline]
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Most content needs no escape: skip eight bytes at a time while none may need one.
        if let Some(word) = bytes[i..].first_chunk::<8>() {
            if !may_need_escape(u64::from_le_bytes(*word)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
                i += 1;
                start = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any of the eight bytes of `w` may be `"`, `\\` or below 0x20. Written by hand (SWAR,
/// "has a byte less than n" / "has a zero byte"): no false negatives; a rare false positive only
/// sends that word through the byte-by-byte path.
#[inline(always)]
fn may_need_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b;
    (control | quote | backslash) & HIGH != 0
}

/// Appends lowercase hex of `bytes`.
#[inline]
pub fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 0xf) as usize]);
    }
}

/// Writes the canonical serialization into `out` (cleared first) from already-canonical tags JSON.
pub fn serialize_into(
    out: &mut Vec<u8>,
    pubkey: &[u8; 32],
    created_at: i64,
    kind: u16,
    tags_json: &str,
    content: &str,
) {
    out.clear();
    out.extend_from_slice(b"[0,\"");
    write_hex(out, pubkey);
    out.extend_from_slice(b"\",");
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(num.format(created_at).as_bytes());
    out.push(b',');
    out.extend_from_slice(num.format(kind).as_bytes());
    out.push(b',');
    out.extend_from_slice(tags_json.as_bytes());
    out.push(b',');
    write_json_str(out, content);
    out.push(b']');
}

/// SHA-256 of the canonical serialization: the event id.
pub fn event_id(
    buf: &mut Vec<u8>,
    pubkey: &[u8; 32],
    created_at: i64,
    kind: u16,
    tags_json: &str,
    content: &str,
) -> [u8; 32] {
    serialize_into(buf, pubkey, created_at, kind, tags_json, content);
    Sha256::digest(&buf[..]).into()
}

/// Appends the canonical JSON of a tag list (`[["a","b"],[]]`).
pub fn write_tags<'a, T, S>(out: &mut Vec<u8>, tags: T)
where
    T: IntoIterator<Item = S>,
    S: IntoIterator<Item = &'a str>,
{
    out.push(b'[');
    for (i, tag) in tags.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        for (j, v) in tag.into_iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            write_json_str(out, v);
        }
        out.push(b']');
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(s: &str) -> String {
        let mut v = Vec::new();
        write_json_str(&mut v, s);
        String::from_utf8(v).expect("utf8")
    }

    #[test]
    fn escapes_per_nip01() {
        assert_eq!(ours("a\"b\\c\n\r\t\u{8}\u{c}"), r#""a\"b\\c\n\r\t\b\f""#);
        assert_eq!(ours("\u{0}\u{1f}\u{7f}"), "\"\\u0000\\u001f\u{7f}\"");
        assert_eq!(ours("é/ü🎉<>&"), "\"é/ü🎉<>&\"");
    }

    proptest! {
        #[test]
        fn string_matches_serde_json(s in any::<String>()) {
            prop_assert_eq!(ours(&s), serde_json::to_string(&s).expect("ser"));
        }

        /// Mostly plain ASCII with escapes at every offset: exercises the word-at-a-time skip.
        #[test]
        fn mostly_ascii_matches_serde_json(chars in proptest::collection::vec(prop_oneof![
            8 => proptest::char::range(' ', '~'),
            1 => proptest::sample::select(vec!['"', '\\', '\n', '\u{0}', '\u{1f}', '\u{7f}', 'é', '🎉']),
        ], 0..96)) {
            let s: String = chars.into_iter().collect();
            prop_assert_eq!(ours(&s), serde_json::to_string(&s).expect("ser"));
        }

        #[test]
        fn serialization_matches_serde_json(
            pk in any::<[u8; 32]>(),
            ts in any::<i64>(),
            kind in any::<u16>(),
            tags in proptest::collection::vec(proptest::collection::vec(any::<String>(), 0..4), 0..4),
            content in any::<String>(),
        ) {
            let mut tj = Vec::new();
            write_tags(&mut tj, tags.iter().map(|t| t.iter().map(String::as_str)));
            let tj = String::from_utf8(tj).expect("utf8");
            let mut buf = Vec::new();
            serialize_into(&mut buf, &pk, ts, kind, &tj, &content);
            let expected = serde_json::to_string(&serde_json::json!([0, hex::encode(pk), ts, kind, tags, content])).expect("ser");
            prop_assert_eq!(String::from_utf8(buf).expect("utf8"), expected);
        }
    }
}
