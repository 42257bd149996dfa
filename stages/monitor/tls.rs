//! The TLS check of a `wss://` relay: one handshake that completes whatever the certificate,
//! then the facts of the presented certificate (subject, issuer, SANs, validity period) and
//! whether the chain verifies for the relay's name against the monitor's roots.

use super::net::{self, Tls};
use super::nip11::note;
use crate::model::RelayUrl;
use crate::relay::transport::TransportConfig;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::Duration;
use x509_parser::extensions::GeneralName;

/// SANs kept: certificates for CDNs list hundreds of names.
const MAX_SANS: usize = 64;

/// Probes the TLS endpoint of `relay`; never fails: errors are in the JSON (`error`).
pub(crate) async fn check(
    relay: &RelayUrl,
    addrs: &[IpAddr],
    tls: &Tls,
    transport: &TransportConfig,
    timeout: Duration,
) -> Value {
    match net::within(timeout, "tls", handshake(relay, addrs, tls, transport)).await {
        Ok(v) => v,
        Err(e) => json!({ "error": note(&e) }),
    }
}

async fn handshake(
    relay: &RelayUrl,
    addrs: &[IpAddr],
    tls: &Tls,
    transport: &TransportConfig,
) -> Result<Value, String> {
    let (host, port) = relay.host_port().ok_or("no host/port")?;
    let (config, capture) = tls.capturing()?;
    let stream = net::dial(&host, port, relay.network(), addrs, transport).await?;
    let conn = net::tls_connect(stream, &host, config).await;
    let seen = capture.take();
    let mut out = match &seen {
        Some(s) => certificate_facts(&s.chain),
        None => Map::new(),
    };
    match (&conn, &seen) {
        (Ok(stream), Some(s)) => {
            let (_, session) = stream.get_ref();
            if let Some(v) = session.protocol_version() {
                out.insert("protocol".into(), Value::String(format!("{v:?}")));
            }
            if let Some(c) = session.negotiated_cipher_suite() {
                out.insert("cipher".into(), Value::String(format!("{:?}", c.suite())));
            }
            out.insert("valid".into(), Value::Bool(s.verdict.is_ok()));
            if let Err(e) = &s.verdict {
                out.insert("invalid_reason".into(), Value::String(note(e)));
            }
        }
        (Err(e), Some(s)) => {
            // The certificate was seen but the handshake failed afterwards (e.g. a bad
            // signature over the handshake): nobody can connect, so it is not valid.
            out.insert("valid".into(), Value::Bool(false));
            out.insert("error".into(), Value::String(note(e)));
            if let Err(e) = &s.verdict {
                out.insert("invalid_reason".into(), Value::String(note(e)));
            }
        }
        (Err(e), None) => return Err(e.clone()),
        (Ok(_), None) => return Err("handshake completed without a certificate".into()),
    }
    Ok(Value::Object(out))
}

/// Subject, issuer, SANs, validity period (unix seconds), serial and SHA-256 fingerprint of
/// the leaf, and the chain length. An unparseable leaf is reported as such.
pub(crate) fn certificate_facts(
    chain: &[rustls::pki_types::CertificateDer<'_>],
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("chain_length".into(), json!(chain.len()));
    let Some(leaf) = chain.first() else {
        return out;
    };
    out.insert(
        "fingerprint_sha256".into(),
        Value::String(hex::encode(Sha256::digest(leaf.as_ref()))),
    );
    let cert = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, c)) => c,
        Err(e) => {
            out.insert("parse_error".into(), Value::String(note(&e.to_string())));
            return out;
        }
    };
    out.insert(
        "subject".into(),
        Value::String(note(&cert.subject().to_string())),
    );
    out.insert(
        "issuer".into(),
        Value::String(note(&cert.issuer().to_string())),
    );
    let first = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(|s| Value::String(note(s)))
    };
    if let Some(cn) = first(cert.subject()) {
        out.insert("subject_cn".into(), cn);
    }
    if let Some(cn) = first(cert.issuer()) {
        out.insert("issuer_cn".into(), cn);
    }
    if let Some(org) = cert
        .issuer()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
    {
        out.insert("issuer_org".into(), Value::String(note(org)));
    }
    let validity = cert.validity();
    out.insert("not_before".into(), json!(validity.not_before.timestamp()));
    out.insert("not_after".into(), json!(validity.not_after.timestamp()));
    out.insert(
        "serial".into(),
        Value::String(note(&cert.raw_serial_as_string())),
    );
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in ext.value.general_names.iter().take(MAX_SANS) {
            match name {
                GeneralName::DNSName(d) => sans.push(Value::String(note(d))),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        sans.push(Value::String(ip.to_string()));
                    }
                }
                _ => {}
            }
        }
    }
    out.insert("sans".into(), Value::Array(sans));
    out
}
