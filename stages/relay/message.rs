//! Relay-to-client messages (NIP-01, NIP-42, NIP-45, NIP-77) read from a simd-json value, and
//! the `OK` reply for readers that hold a serde_json value.

use crate::model::{json, EventRef, ParseError, Reason};
use simd_json::BorrowedValue as Value;

/// Parses one frame from a relay into `buf`: refused as [`Reason::TooDeep`] before parsing
/// when nested deeper than [`json::MAX_DEPTH`] (simd-json recurses over the value), or
/// [`Reason::Malformed`] when it is not JSON. The one entry point for relay frames, so no
/// reader can forget the bound.
pub fn decode<'a>(
    data: &[u8],
    buf: &'a mut Vec<u8>,
    buffers: &mut simd_json::Buffers,
) -> Result<Value<'a>, Reason> {
    json::check_depth(data).map_err(|_| Reason::TooDeep)?;
    buf.clear();
    buf.extend_from_slice(data);
    simd_json::to_borrowed_value_with_buffers(buf, buffers).map_err(|_| Reason::Malformed)
}

/// One message from a relay.
#[derive(Debug)]
pub enum RelayMsg<'a> {
    /// `["EVENT", sub, event]`; the event may be malformed.
    Event(&'a str, Result<EventRef<'a>, ParseError>),
    /// `["EOSE", sub]`
    Eose(&'a str),
    /// `["CLOSED", sub, message]`
    Closed(&'a str, &'a str),
    /// `["NOTICE", message]`
    Notice(&'a str),
    /// `["AUTH", challenge]`
    Auth(&'a str),
    /// `["OK", id, accepted, message]`
    Ok(OkReply<'a>),
    /// `["COUNT", sub, {"count": n, "approximate": bool}]` (NIP-45): `None` when the count
    /// is missing or not a non-negative integer.
    Count(&'a str, Option<u64>, bool),
    /// `["NEG-MSG", sub, hex]` (NIP-77)
    NegMsg(&'a str, &'a str),
    /// `["NEG-ERR", sub, reason]` (NIP-77)
    NegErr(&'a str, &'a str),
    /// Anything else that is a JSON array starting with a string.
    Other(&'a str),
}

/// A relay's answer to an event we published: `["OK", id, accepted, message]` (NIP-01). A
/// missing id or message reads as empty, anything but `true` as refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OkReply<'a> {
    /// The event id, hex as the relay wrote it.
    pub id: &'a str,
    /// Whether the relay stored the event.
    pub accepted: bool,
    /// The relay's reason (`prefix: text`), empty when it gave none.
    pub message: &'a str,
}

impl<'a> OkReply<'a> {
    /// Reads an `OK` from a frame its reader parsed with serde_json (the monitor's probes and
    /// publisher, the DVM, which keep the frame as a [`serde_json::Value`]); `None` for any
    /// other message.
    pub fn from_json(a: &'a [serde_json::Value]) -> Option<OkReply<'a>> {
        if a.first()?.as_str()? != "OK" {
            return None;
        }
        Some(OkReply {
            id: a.get(1).and_then(serde_json::Value::as_str).unwrap_or(""),
            accepted: a
                .get(2)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            message: a.get(3).and_then(serde_json::Value::as_str).unwrap_or(""),
        })
    }
}

fn s<'a>(v: Option<&'a Value<'a>>) -> Option<&'a str> {
    match v {
        Some(Value::String(s)) => Some(s.as_ref()),
        _ => None,
    }
}

/// Reads a message; `None` when it is not an array starting with a string label.
pub fn parse<'a>(v: &'a Value<'a>) -> Option<RelayMsg<'a>> {
    let Value::Array(a) = v else { return None };
    let label = s(a.first())?;
    Some(match label {
        "EVENT" => {
            let sub = s(a.get(1))?;
            match a.get(2) {
                Some(ev) => RelayMsg::Event(sub, EventRef::from_value(ev)),
                None => RelayMsg::Event(sub, Err(ParseError::Malformed)),
            }
        }
        "EOSE" => RelayMsg::Eose(s(a.get(1))?),
        "CLOSED" => RelayMsg::Closed(s(a.get(1))?, s(a.get(2)).unwrap_or("")),
        "NOTICE" => RelayMsg::Notice(s(a.get(1)).unwrap_or("")),
        "AUTH" => RelayMsg::Auth(s(a.get(1)).unwrap_or("")),
        "OK" => RelayMsg::Ok(OkReply {
            id: s(a.get(1)).unwrap_or(""),
            accepted: matches!(
                a.get(2),
                Some(Value::Static(simd_json::StaticNode::Bool(true)))
            ),
            message: s(a.get(3)).unwrap_or(""),
        }),
        "COUNT" => {
            let sub = s(a.get(1))?;
            let (mut n, mut approximate) = (None, false);
            if let Some(Value::Object(o)) = a.get(2) {
                n = match o.get("count") {
                    Some(Value::Static(simd_json::StaticNode::U64(n))) => Some(*n),
                    Some(Value::Static(simd_json::StaticNode::I64(n))) => u64::try_from(*n).ok(),
                    _ => None,
                };
                approximate = matches!(
                    o.get("approximate"),
                    Some(Value::Static(simd_json::StaticNode::Bool(true)))
                );
            }
            RelayMsg::Count(sub, n, approximate)
        }
        "NEG-MSG" => RelayMsg::NegMsg(s(a.get(1))?, s(a.get(2))?),
        "NEG-ERR" => RelayMsg::NegErr(s(a.get(1))?, s(a.get(2)).unwrap_or("")),
        other => RelayMsg::Other(other),
    })
}
