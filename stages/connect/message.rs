//! Relay-to-client messages (NIP-01, NIP-42, NIP-45) read from a simd-json value.

use crate::model::{EventRef, ParseError};
use simd_json::BorrowedValue as Value;

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
    Ok(&'a str, bool, &'a str),
    /// Anything else that is a JSON array starting with a string.
    Other(&'a str),
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
        "OK" => RelayMsg::Ok(
            s(a.get(1)).unwrap_or(""),
            matches!(
                a.get(2),
                Some(Value::Static(simd_json::StaticNode::Bool(true)))
            ),
            s(a.get(3)).unwrap_or(""),
        ),
        other => RelayMsg::Other(other),
    })
}
