//! The job kinds the DVM serves and how their parameters are read.
//!
//! | request | result | job | parameters |
//! |---|---|---|---|
//! | 5900 | 6900 | archive count: events matching a NIP-01 filter | `["param","filter",<filter JSON>]` → content `{"count":N}` |
//! | 5901 | 6901 | archive events: events matching a filter, newest first | `["param","filter",<filter JSON>]` → content = JSON array of events, at most `max_limit` |
//! | 5902 | 6902 | relay statistics (`relays_statistics`) | optional `["param","relay",<url>]`, `["param","limit",<n>]` → content = JSON array |
//! | 5903 | 6903 | archive statistics (`events_statistics`) | none → content = JSON object |
//!
//! The filter of 5900/5901 may also come as the first input tag `["i",<filter JSON>,"text"]`
//! when no `filter` param is given. Every message returned here is sent to the customer in a
//! kind 7000 `error` feedback, so it says what was wrong and never echoes secrets.

use crate::model::RelayUrl;
use serde_json::{Map, Value};

/// Archive count: the number of archived events matching a filter.
pub const KIND_COUNT: u16 = 5900;
/// Archive events: the archived events matching a filter, newest first, bounded.
pub const KIND_EVENTS: u16 = 5901;
/// Relay statistics from the `relays_statistics` view.
pub const KIND_RELAY_STATS: u16 = 5902;
/// Archive statistics from the `events_statistics` view.
pub const KIND_ARCHIVE_STATS: u16 = 5903;
/// Every job kind served, in announcement order.
pub const SUPPORTED: [u16; 4] = [
    KIND_COUNT,
    KIND_EVENTS,
    KIND_RELAY_STATS,
    KIND_ARCHIVE_STATS,
];
/// NIP-90 job feedback.
pub const KIND_FEEDBACK: u16 = 7000;
/// NIP-89 handler information (the DVM's announcement).
pub const KIND_HANDLER_INFO: u16 = 31990;
/// The NIP-90 range of job request kinds.
pub const REQUEST_KINDS: std::ops::RangeInclusive<u16> = 5000..=5999;

/// Relays listed by a relay statistics job when the request gives no `limit`.
const DEFAULT_STATS_LIMIT: u64 = 100;

/// The result kind of a request kind (NIP-90: request + 1000).
pub fn result_kind(request_kind: u16) -> u16 {
    request_kind.saturating_add(1000)
}

/// What one job may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most events an events job returns, and most relays a relay statistics job lists.
    pub max_limit: u64,
    /// Most values in one filter, all lists together (`ids`, `authors`, `kinds`, tag values).
    pub max_filter_values: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_limit: 500,
            max_filter_values: 1000,
        }
    }
}

/// A validated NIP-01 filter. An absent list matches everything; an empty one nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event ids.
    pub ids: Option<Vec<[u8; 32]>>,
    /// Author keys.
    pub authors: Option<Vec<[u8; 32]>>,
    /// Kinds.
    pub kinds: Option<Vec<u16>>,
    /// `#<letter>` filters: events with a tag of that letter whose first value is listed.
    pub tags: Vec<(char, Vec<String>)>,
    /// Oldest created_at, inclusive.
    pub since: Option<i64>,
    /// Newest created_at, inclusive.
    pub until: Option<i64>,
    /// Most events wanted (events jobs; count jobs ignore it, as NIP-45 does).
    pub limit: Option<u64>,
}

fn hex32_list(key: &str, v: &Value) -> Result<Vec<[u8; 32]>, String> {
    let arr = v
        .as_array()
        .ok_or_else(|| format!("filter: {key} must be an array of 64-character hex strings"))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            let s = x.as_str().unwrap_or("");
            let mut out = [0u8; 32];
            let lower = s.bytes().all(|b| !b.is_ascii_uppercase());
            if s.len() == 64 && lower && hex::decode_to_slice(s, &mut out).is_ok() {
                Ok(out)
            } else {
                Err(format!(
                    "filter: {key}[{i}] is not 64 lowercase hex characters"
                ))
            }
        })
        .collect()
}

/// A job request the DVM refuses: the text is the customer's `error` feedback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidJob(pub String);

fn integer(key: &str, v: &Value) -> Result<i64, String> {
    v.as_i64()
        .ok_or_else(|| format!("filter: {key} must be an integer (unix seconds)"))
}

impl Filter {
    /// Parses and validates the JSON text of one NIP-01 filter object.
    pub fn parse(text: &str, limits: &Limits) -> Result<Filter, InvalidJob> {
        Self::parse_text(text, limits).map_err(InvalidJob)
    }

    fn parse_text(text: &str, limits: &Limits) -> Result<Filter, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("filter is not valid JSON: {e}"))?;
        let obj = v
            .as_object()
            .ok_or("filter must be a JSON object (one NIP-01 filter)")?;
        Self::from_object(obj, limits)
    }

    fn from_object(obj: &Map<String, Value>, limits: &Limits) -> Result<Filter, String> {
        let mut f = Filter::default();
        let mut values = 0usize;
        for (k, v) in obj {
            match k.as_str() {
                "ids" => f.ids = Some(hex32_list("ids", v)?),
                "authors" => f.authors = Some(hex32_list("authors", v)?),
                "kinds" => {
                    let arr = v
                        .as_array()
                        .ok_or("filter: kinds must be an array of integers")?;
                    let kinds = arr
                        .iter()
                        .enumerate()
                        .map(|(i, x)| {
                            x.as_u64()
                                .and_then(|n| u16::try_from(n).ok())
                                .ok_or_else(|| {
                                    format!("filter: kinds[{i}] is not a kind (0-65535)")
                                })
                        })
                        .collect::<Result<Vec<u16>, String>>()?;
                    f.kinds = Some(kinds);
                }
                "since" => f.since = Some(integer("since", v)?),
                "until" => f.until = Some(integer("until", v)?),
                "limit" => {
                    f.limit = Some(
                        v.as_u64()
                            .ok_or("filter: limit must be a non-negative integer")?,
                    )
                }
                "search" => return Err("filter: search (NIP-50) is not supported".into()),
                key => {
                    let letter = key
                        .strip_prefix('#')
                        .filter(|l| l.len() == 1 && l.bytes().all(|b| b.is_ascii_alphabetic()))
                        .and_then(|l| l.chars().next())
                        .ok_or_else(|| {
                            format!("filter: unknown field {key:?} (ids, authors, kinds, since, until, limit, #<letter>)")
                        })?;
                    let arr = v
                        .as_array()
                        .ok_or_else(|| format!("filter: {key} must be an array of strings"))?;
                    let vals = arr
                        .iter()
                        .enumerate()
                        .map(|(i, x)| {
                            x.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| format!("filter: {key}[{i}] is not a string"))
                        })
                        .collect::<Result<Vec<String>, String>>()?;
                    values += vals.len();
                    f.tags.push((letter, vals));
                }
            }
        }
        values += f.ids.as_ref().map_or(0, Vec::len)
            + f.authors.as_ref().map_or(0, Vec::len)
            + f.kinds.as_ref().map_or(0, Vec::len);
        if values > limits.max_filter_values {
            return Err(format!(
                "filter has {values} values; at most {} are accepted",
                limits.max_filter_values
            ));
        }
        Ok(f)
    }
}

/// One job, validated and ready for the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Count the events matching the filter.
    Count(Filter),
    /// The events matching the filter, newest first (ties by lowest id), at most `limit`.
    Events {
        /// What to match.
        filter: Filter,
        /// The filter's limit capped at [`Limits::max_limit`].
        limit: u64,
    },
    /// Rows of `relays_statistics`: one relay, or the `limit` with most events.
    RelayStats {
        /// Only this relay (normalized URL).
        relay: Option<String>,
        /// Most rows.
        limit: u64,
    },
    /// The `events_statistics` row.
    ArchiveStats,
}

/// The `["param", name, value]` tags of a request, checked for shape and duplicates.
fn params(tags: &[Vec<String>]) -> Result<Vec<(&str, &str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for t in tags
        .iter()
        .filter(|t| t.first().is_some_and(|n| n == "param"))
    {
        let (Some(name), Some(value)) = (t.get(1), t.get(2)) else {
            return Err("a param tag needs a name and a value: [\"param\", name, value]".into());
        };
        if out.iter().any(|(n, _)| *n == name.as_str()) {
            return Err(format!("param {name:?} is given more than once"));
        }
        out.push((name.as_str(), value.as_str()));
    }
    Ok(out)
}

fn only(kind: u16, params: &[(&str, &str)], allowed: &[&str]) -> Result<(), String> {
    match params.iter().find(|(n, _)| !allowed.contains(n)) {
        Some((n, _)) if allowed.is_empty() => Err(format!(
            "unknown param {n:?}: job kind {kind} takes no params"
        )),
        Some((n, _)) => Err(format!(
            "unknown param {n:?} for job kind {kind} (accepted: {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

/// The filter text of a 5900/5901 request: the `filter` param, else the first `i` input,
/// which must be of type `text`.
fn filter_text<'a>(params: &[(&str, &'a str)], tags: &'a [Vec<String>]) -> Result<&'a str, String> {
    if let Some((_, v)) = params.iter().find(|(n, _)| *n == "filter") {
        return Ok(v);
    }
    match tags.iter().find(|t| t.first().is_some_and(|n| n == "i")) {
        Some(t) => match (t.get(1), t.get(2).map(String::as_str)) {
            (Some(data), Some("text")) => Ok(data.as_str()),
            (Some(_), other) => Err(format!(
                "input type {:?} is not supported: give the filter as [\"param\",\"filter\",<JSON>] or [\"i\",<JSON>,\"text\"]",
                other.unwrap_or("")
            )),
            (None, _) => Err("an i tag needs data: [\"i\", <data>, <type>]".into()),
        },
        None => Err("missing filter: add [\"param\",\"filter\",<NIP-01 filter JSON>]".into()),
    }
}

/// Reads the job of a request of `kind` from its tags.
pub fn parse_job(kind: u16, tags: &[Vec<String>], limits: &Limits) -> Result<Job, InvalidJob> {
    job_of(kind, tags, limits).map_err(InvalidJob)
}

fn job_of(kind: u16, tags: &[Vec<String>], limits: &Limits) -> Result<Job, String> {
    let params = params(tags)?;
    match kind {
        KIND_COUNT => {
            only(kind, &params, &["filter"])?;
            Ok(Job::Count(Filter::parse_text(
                filter_text(&params, tags)?,
                limits,
            )?))
        }
        KIND_EVENTS => {
            only(kind, &params, &["filter"])?;
            let filter = Filter::parse_text(filter_text(&params, tags)?, limits)?;
            let limit = filter
                .limit
                .map_or(limits.max_limit, |l| l.min(limits.max_limit));
            Ok(Job::Events { filter, limit })
        }
        KIND_RELAY_STATS => {
            only(kind, &params, &["relay", "limit"])?;
            let relay = match params.iter().find(|(n, _)| *n == "relay") {
                Some((_, v)) => Some(
                    RelayUrl::parse(v, true)
                        .map_err(|e| format!("param relay: {v:?} is not a relay URL ({e})"))?
                        .to_string(),
                ),
                None => None,
            };
            let limit = match params.iter().find(|(n, _)| *n == "limit") {
                Some((_, v)) => match v.trim().parse::<u64>() {
                    Ok(n) if n >= 1 => n.min(limits.max_limit),
                    _ => return Err(format!("param limit: {v:?} is not a positive integer")),
                },
                None => DEFAULT_STATS_LIMIT.min(limits.max_limit),
            };
            Ok(Job::RelayStats { relay, limit })
        }
        KIND_ARCHIVE_STATS => {
            only(kind, &params, &[])?;
            Ok(Job::ArchiveStats)
        }
        other => Err(format!(
            "unsupported job kind {other}; this service answers {}",
            SUPPORTED.map(|k| k.to_string()).join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&[&str]]) -> Vec<Vec<String>> {
        list.iter()
            .map(|t| t.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn reads_filters_and_caps_the_limit() {
        let id = "ab".repeat(32);
        let lim = Limits {
            max_limit: 50,
            max_filter_values: 10,
        };
        let f = format!(
            r##"{{"ids":["{id}"],"kinds":[1,7],"#t":["x"],"since":5,"until":9,"limit":900}}"##
        );
        let job = parse_job(KIND_EVENTS, &tags(&[&["param", "filter", &f]]), &lim).expect("valid");
        let Job::Events { filter, limit } = job else {
            panic!("events job")
        };
        assert_eq!(limit, 50);
        assert_eq!(filter.ids, Some(vec![[0xab; 32]]));
        assert_eq!(filter.kinds, Some(vec![1, 7]));
        assert_eq!(filter.tags, vec![('t', vec!["x".to_string()])]);
        assert_eq!((filter.since, filter.until), (Some(5), Some(9)));
        // The filter may come as a text input instead.
        let job = parse_job(KIND_COUNT, &tags(&[&["i", "{}", "text"]]), &lim).expect("valid");
        assert_eq!(job, Job::Count(Filter::default()));
    }

    #[test]
    fn refuses_bad_requests_with_a_reason() {
        let lim = Limits {
            max_limit: 50,
            max_filter_values: 3,
        };
        let cases: &[(u16, &[&[&str]], &str)] = &[
            (KIND_COUNT, &[], "missing filter"),
            (
                KIND_COUNT,
                &[&["param", "filter", "{not json"]],
                "not valid JSON",
            ),
            (KIND_COUNT, &[&["param", "filter", "[{}]"]], "JSON object"),
            (
                KIND_COUNT,
                &[&["param", "filter", r#"{"ids":["xyz"]}"#]],
                "ids[0]",
            ),
            (
                KIND_COUNT,
                &[&["param", "filter", r#"{"kinds":[70000]}"#]],
                "kinds[0]",
            ),
            (
                KIND_COUNT,
                &[&["param", "filter", r#"{"kinds":[1,2,3,4]}"#]],
                "at most 3",
            ),
            (
                KIND_COUNT,
                &[&["param", "filter", r##"{"#tt":["x"]}"##]],
                "unknown field",
            ),
            (
                KIND_COUNT,
                &[&["param", "filter", r#"{"search":"x"}"#]],
                "search",
            ),
            (
                KIND_COUNT,
                &[&["param", "filter", r#"{"since":"yesterday"}"#]],
                "since",
            ),
            (
                KIND_COUNT,
                &[&["param", "filter", "{}"], &["param", "filter", "{}"]],
                "more than once",
            ),
            (KIND_COUNT, &[&["param", "filter"]], "name and a value"),
            (
                KIND_COUNT,
                &[&["param", "filter", "{}"], &["param", "x", "1"]],
                "unknown param",
            ),
            (KIND_COUNT, &[&["i", "https://x", "url"]], "input type"),
            (
                KIND_RELAY_STATS,
                &[&["param", "limit", "0"]],
                "positive integer",
            ),
            (
                KIND_RELAY_STATS,
                &[&["param", "relay", "http://x"]],
                "not a relay URL",
            ),
            (
                KIND_ARCHIVE_STATS,
                &[&["param", "x", "1"]],
                "takes no params",
            ),
            (5950, &[], "unsupported job kind 5950"),
        ];
        for (kind, t, want) in cases {
            let e = parse_job(*kind, &tags(t), &lim).expect_err(want);
            assert!(e.0.contains(want), "{kind} {t:?}: {e}");
        }
    }

    #[test]
    fn relay_stats_normalizes_and_caps() {
        let lim = Limits {
            max_limit: 20,
            max_filter_values: 3,
        };
        let job = parse_job(
            KIND_RELAY_STATS,
            &tags(&[
                &["param", "relay", "wss://Relay.Example.com/"],
                &["param", "limit", "99"],
            ]),
            &lim,
        )
        .expect("valid");
        assert_eq!(
            job,
            Job::RelayStats {
                relay: Some("wss://relay.example.com".into()),
                limit: 20
            }
        );
    }
}
