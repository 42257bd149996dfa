//! A fuzz harness for every parser of untrusted JSON: relay frames (connect, finder
//! validation), NIP-11 documents (monitor), HTTP relay lists (finder) and DVM job filters.
//! Each gets the kept crash corpus (`tests/corpus/`: the inputs that once overflowed the
//! stack) and bounded property runs over mutated valid documents, so it runs in CI. A parser
//! may refuse anything; it must never panic, abort or recurse without a bound.

use bigbrotr_stages::dvm::jobs::{Filter, Limits};
use bigbrotr_stages::finder::sources::parse_list;
use bigbrotr_stages::model::{Event, Reason};
use bigbrotr_stages::monitor::nip11::{self, Nip11Info};
use bigbrotr_stages::relay::message::{self, RelayMsg};
use proptest::prelude::*;

/// Every parser in turn over one input.
fn feed_all(input: &[u8]) {
    // Relay frame: decode → message → event → owned event, as the connector does.
    let mut buf = Vec::new();
    let mut buffers = simd_json::Buffers::default();
    if let Ok(v) = message::decode(input, &mut buf, &mut buffers) {
        if let Some(RelayMsg::Event(_, Ok(ev))) = message::parse(&v) {
            let _ = ev.to_owned_event(&mut Vec::new());
        }
    }
    let _ = Event::parse_json(input);
    if let Ok(doc) = nip11::parse_document(input) {
        let _ = Nip11Info::from_value(&doc);
    }
    let _ = parse_list(input, "relays");
    let _ = parse_list(input, "");
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = Filter::parse(text, &Limits::default());
    }
}

#[test]
fn the_crash_corpus_is_refused_without_crashing() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read corpus file");
        feed_all(&bytes);
        n += 1;
    }
    assert!(n >= 6, "corpus files: {n}");
    // The frames that aborted the process are now a counted rejection.
    let deep = std::fs::read(dir.join("deep_event_frame.json")).expect("deep frame");
    let mut buf = Vec::new();
    let mut buffers = simd_json::Buffers::default();
    assert_eq!(
        message::decode(&deep, &mut buf, &mut buffers).err(),
        Some(Reason::TooDeep)
    );
    // Brackets inside a string are not nesting.
    let fine = std::fs::read(dir.join("deep_in_string_is_fine.json")).expect("string");
    assert!(message::decode(&fine, &mut buf, &mut buffers).is_ok());
}

/// Valid documents of each kind, to mutate.
const SEEDS: &[&str] = &[
    r#"["EVENT","bb1",{"id":"5c83da77af1dec6d7289834998ad7aafbd9e2191396d75ec3cc27f5a77226f36","pubkey":"79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798","created_at":1700000000,"kind":1,"tags":[["p","ab"],["e","cd","wss://r"]],"content":"hi \"there\" \\ [x]","sig":"908a15e46fb4d8675bab026fc230a0e3542bfade63da02d542fb78b2a8513fcd0092619a2c8c1221e581946e0191f2af505dfdf8657a414dbca329186f009262"}]"#,
    r#"["EOSE","bb1"]"#,
    r#"["CLOSED","bb1","rate-limited: slow down"]"#,
    r#"{"name":"relay","supported_nips":[1,11,77],"limitation":{"max_limit":500,"auth_required":false},"fees":{"admission":[{"amount":1}]}}"#,
    r#"{"relays":["wss://a.example","wss://b.example",{"url":"wss://c"}]}"#,
    r##"{"kinds":[1,7],"authors":["79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"],"#p":["ab"],"since":1,"until":2,"limit":5}"##,
];

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let op = prop_oneof![
        // (position fraction, what to insert)
        (
            0.0f64..1.0,
            prop::sample::select(vec![
                "[", "]", "{", "}", "\"", "\\", ",", ":", "\u{0}", "[[[[[[[[", "{\"a\":"
            ])
        )
            .prop_map(|(p, s)| (0u8, p, s.to_string())),
        (0.0f64..1.0, Just(String::new())).prop_map(|(p, s)| (1u8, p, s)),
        (0.0f64..1.0, 1usize..5000).prop_map(|(p, n)| (2u8, p, "[".repeat(n))),
    ];
    (
        prop::sample::select(SEEDS.to_vec()),
        prop::collection::vec(op, 1..8),
    )
        .prop_map(|(seed, ops)| {
            let mut doc = seed.as_bytes().to_vec();
            for (kind, p, s) in ops {
                let at = ((doc.len() as f64) * p) as usize;
                let at = at.min(doc.len());
                match kind {
                    0 | 2 => {
                        doc.splice(at..at, s.bytes());
                    }
                    _ => doc.truncate(at),
                }
            }
            doc
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Mutated valid documents (brackets, quotes, escapes, NULs, deep prefixes, truncation).
    #[test]
    fn mutated_documents_never_crash_a_parser(doc in mutated()) {
        feed_all(&doc);
    }

    /// Arbitrary bytes.
    #[test]
    fn arbitrary_bytes_never_crash_a_parser(doc in prop::collection::vec(any::<u8>(), 0..2048)) {
        feed_all(&doc);
    }
}
