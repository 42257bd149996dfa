//! Bounds on untrusted JSON, checked before any parser recurses into it.
//!
//! simd-json builds its values (and drops them) recursively: one relay frame of ~20 KB holding
//! `[[[[…]]]]` nested 10,000 levels deep overflowed the stack and aborted the whole process.
//! No parser we use offers a depth limit on that path, so every untrusted document — relay
//! frames, NIP-11 documents, HTTP relay lists, DVM requests — is scanned once for its nesting
//! depth first. A document with no more opening brackets than the limit passes after one
//! SIMD count; others get an iterative scan that skips string bodies with `memchr`.

/// Deepest nesting accepted from the network. A relay message is at most 4 levels deep
/// (`["EVENT", sub, {"tags": [[…]]}]`), a NIP-11 document about 4; 32 leaves room for
/// extensions while keeping any recursion over the value trivially shallow.
pub const MAX_DEPTH: usize = 32;

/// Why a document was refused before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BoundError {
    /// More bytes than the caller accepts.
    #[error("document of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The document's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Arrays and objects nested deeper than the caller accepts.
    #[error("JSON nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
}

/// The deepest array/object nesting of `bytes`, stopping as soon as it exceeds `max` (then
/// returns a value > `max`). Brackets inside strings do not count; malformed input gets some
/// depth and is left to the parser to refuse.
pub fn depth_exceeding(bytes: &[u8], max: usize) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut i = 0usize;
    let n = bytes.len();
    while i < n {
        match bytes[i] {
            b'"' => {
                // Skip the string body: the next unescaped quote ends it.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[i.min(n)..]) {
                        None => return deepest,
                        Some(k) => {
                            i += k;
                            if bytes[i] == b'\\' {
                                i += 2;
                            } else {
                                i += 1;
                                break;
                            }
                        }
                    }
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > deepest {
                    deepest = depth;
                    if deepest > max {
                        return deepest;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// Checks an untrusted document against a size and a depth limit before it is parsed.
pub fn check(bytes: &[u8], max_bytes: usize, max_depth: usize) -> Result<(), BoundError> {
    if bytes.len() > max_bytes {
        return Err(BoundError::TooLarge {
            size: bytes.len(),
            max: max_bytes,
        });
    }
    // Nesting can never exceed the number of opening brackets, and `memchr` finds them with
    // SIMD: most relay frames (a few tags) are cleared here without the string-aware scan.
    if memchr::memchr2_iter(b'[', b'{', bytes)
        .nth(max_depth)
        .is_none()
    {
        return Ok(());
    }
    if depth_exceeding(bytes, max_depth) > max_depth {
        return Err(BoundError::TooDeep { max: max_depth });
    }
    Ok(())
}

/// Checks the depth of an untrusted document (its size is bounded by the transport).
pub fn check_depth(bytes: &[u8]) -> Result<(), BoundError> {
    check(bytes, usize::MAX, MAX_DEPTH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The true nesting depth, computed by serde_json's own (depth-limited) parse.
    fn serde_depth(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(serde_depth).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(serde_depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn counts_nesting_and_ignores_brackets_in_strings() {
        assert_eq!(
            depth_exceeding(br#"["EVENT","s",{"tags":[["p","x"]]}]"#, 32),
            4
        );
        assert_eq!(depth_exceeding(br#"["[[[[","{{\"[[",{}]"#, 32), 2);
        assert_eq!(depth_exceeding(b"42", 32), 0);
        assert_eq!(depth_exceeding(br#""unterminated [[["#, 32), 0);
        assert_eq!(depth_exceeding(br#""ends in a backslash \"#, 32), 0);
    }

    #[test]
    fn a_ten_thousand_level_array_is_refused_early() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(
            check_depth(deep.as_bytes()),
            Err(BoundError::TooDeep { max: MAX_DEPTH })
        );
        assert_eq!(depth_exceeding(deep.as_bytes(), 5), 6);
        // Without the closing half too.
        assert!(check_depth("{\"a\":".repeat(5000).as_bytes()).is_err());
    }

    #[test]
    fn size_is_checked_first() {
        assert_eq!(
            check(b"[1,2,3]", 3, 32),
            Err(BoundError::TooLarge { size: 7, max: 3 })
        );
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            "[\\[\\]{}\"\\\\a-z ]{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(12, 128, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[\\[\\]{}\"a-z]{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The scan agrees with a real parser on every valid document, whatever the strings
        /// hold (brackets, quotes, backslashes).
        #[test]
        fn depth_matches_a_parser(v in json_value()) {
            let text = serde_json::to_string(&v).unwrap();
            prop_assert_eq!(depth_exceeding(text.as_bytes(), usize::MAX), serde_depth(&v));
        }

        /// The bracket-count shortcut and the scan agree on every valid document.
        #[test]
        fn the_shortcut_agrees_with_the_scan(v in json_value(), max in 0usize..14) {
            let text = serde_json::to_string(&v).unwrap();
            let deep = depth_exceeding(text.as_bytes(), max) > max;
            prop_assert_eq!(check(text.as_bytes(), usize::MAX, max).is_err(), deep);
        }

        /// Arbitrary bytes never panic the scan, and whatever it admits simd-json parses
        /// without recursing past the bound.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if check_depth(&bytes).is_ok() {
                let mut buf = bytes.clone();
                let _ = simd_json::to_borrowed_value(&mut buf);
            }
        }
    }
}
