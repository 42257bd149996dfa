//! Signing events we publish (the monitor's NIP-66 events and write probe, the DVM's results
//! and feedback): canonical id, BIP-340 signature, wire JSON.

use super::canonical;
use secp256k1::Keypair;

/// A signed event: its id and its wire JSON (the object sent inside `["EVENT", …]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEvent {
    /// The NIP-01 id.
    pub id: [u8; 32],
    /// The event object as JSON.
    pub json: String,
}

/// Signs an event with `keypair` (BIP-340, fresh auxiliary randomness).
pub fn sign(
    keypair: &Keypair,
    created_at: i64,
    kind: u16,
    tags: &[Vec<String>],
    content: &str,
) -> SignedEvent {
    let pubkey = keypair.x_only_public_key().0.to_byte_array();
    let mut tags_json = Vec::new();
    canonical::write_tags(
        &mut tags_json,
        tags.iter().map(|t| t.iter().map(String::as_str)),
    );
    // write_tags only emits JSON string literals around valid UTF-8 input.
    let tags_json = String::from_utf8_lossy(&tags_json).into_owned();
    let mut buf = Vec::new();
    let id = canonical::event_id(&mut buf, &pubkey, created_at, kind, &tags_json, content);
    let aux: [u8; 32] = rand::random();
    let sig = secp256k1::schnorr::sign_with_aux_rand(&id, keypair, &aux).to_byte_array();
    let mut json = Vec::with_capacity(buf.len() + 200);
    json.extend_from_slice(b"{\"id\":\"");
    canonical::write_hex(&mut json, &id);
    json.extend_from_slice(b"\",\"pubkey\":\"");
    canonical::write_hex(&mut json, &pubkey);
    json.extend_from_slice(b"\",\"created_at\":");
    json.extend_from_slice(created_at.to_string().as_bytes());
    json.extend_from_slice(b",\"kind\":");
    json.extend_from_slice(kind.to_string().as_bytes());
    json.extend_from_slice(b",\"tags\":");
    json.extend_from_slice(tags_json.as_bytes());
    json.extend_from_slice(b",\"content\":");
    canonical::write_json_str(&mut json, content);
    json.extend_from_slice(b",\"sig\":\"");
    canonical::write_hex(&mut json, &sig);
    json.extend_from_slice(b"\"}");
    SignedEvent {
        id,
        json: String::from_utf8_lossy(&json).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_event_ids_match_the_canonical_serialization() {
        let kp = Keypair::from_secret_bytes([7u8; 32]).expect("key");
        let tags = vec![
            vec!["d".to_string(), "wss://x".into()],
            vec!["N".into(), "1".into()],
        ];
        let ev = sign(&kp, 1_700_000_000, 30166, &tags, "{\"name\":\"é\\n\"}");
        let v: serde_json::Value = serde_json::from_str(&ev.json).expect("json");
        let ser = serde_json::to_string(&serde_json::json!([
            0,
            v["pubkey"],
            v["created_at"],
            v["kind"],
            v["tags"],
            v["content"]
        ]))
        .expect("ser");
        use sha2::Digest;
        let id: [u8; 32] = sha2::Sha256::digest(ser.as_bytes()).into();
        assert_eq!(id, ev.id);
        assert_eq!(v["id"], hex::encode(id));
        let sig = secp256k1::schnorr::Signature::from_byte_array(
            <[u8; 64]>::try_from(hex::decode(v["sig"].as_str().expect("sig")).expect("hex"))
                .expect("64"),
        );
        secp256k1::schnorr::verify(&sig, &id, &kp.x_only_public_key().0).expect("verifies");
    }
}
