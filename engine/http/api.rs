//! The read-only REST API over the archive (JSON) and its OpenAPI 3 document.
//!
//! Every query is bounded: `limit` is capped at `http.max_limit`, lists in filters at
//! [`MAX_LIST`] items, and the API's connections carry a `statement_timeout` (an expired
//! one is answered 503). Bad parameters are answered 400 with a JSON message naming the
//! parameter, never 500. Pagination is by keyset: each page says where the next begins.
//!
//! Every page is bounded in bytes as well as rows (`http.max_response_bytes`): rows are read
//! from PostgreSQL as a stream and serialised one at a time into the answer, which stops
//! growing before it would pass the budget; such a page says `"truncated": true` and its
//! cursor continues right after its last item. One item larger than the budget is still
//! returned alone, so a page always makes progress. For events the database cuts too: it
//! sums the stored sizes of the page's candidates and sends only the bodies that can fit,
//! so neither side reads hundreds of megabytes to answer one request.

use super::AppState;
use crate::filter_sql::{
    push as push_param, stored_tags_and_content, Conditions, SqlParams, StoredError,
};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bigbrotr_stages::model::{Network, RelayUrl};
use futures_util::TryStreamExt;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use tokio_postgres::error::SqlState;
use utoipa::{OpenApi, ToSchema};

/// Most items accepted in one list parameter (`ids`, `authors`, `kinds`, a tag's values).
pub const MAX_LIST: usize = 1000;

/// Most query parameters accepted in one request.
const MAX_PARAMS: usize = 64;

/// `limit` when the request gives none (then capped at `http.max_limit` too).
const DEFAULT_LIMIT: i64 = 100;

/// Every network name `relays.network` can hold.
const NETWORKS: [Network; 5] = [
    Network::Clearnet,
    Network::Tor,
    Network::I2p,
    Network::Loki,
    Network::Local,
];

/// The OpenAPI document of the whole server.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "bigbrotr",
        description = "Read-only access to a bigbrotr Nostr archive, plus the engine's health, readiness and metrics."
    ),
    paths(
        super::health::health,
        super::health::ready,
        super::metrics::metrics,
        list_relays,
        relay_metadata,
        relay_metadata_history,
        events,
        stats,
        stats_kinds,
        stats_pubkeys,
        stats_relays,
    ),
    components(schemas(
        ErrorBody,
        super::health::Readiness,
        RelaySummary,
        RelaysPage,
        RelayMetadata,
        MetadataSnapshot,
        MetadataHistory,
        NostrEvent,
        EventsPage,
        EventsStatistics,
        KindCount,
        PubkeyCount,
        RelayStatistics,
    )),
    tags(
        (name = "health", description = "Liveness, readiness and Prometheus metrics"),
        (name = "relays", description = "The relay registry and monitoring snapshots"),
        (name = "events", description = "Archived events, NIP-01 filter semantics"),
        (name = "stats", description = "Archive statistics (views computed on read)"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI 3 document of this server.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::dashboard::DashboardDoc::openapi());
    Json(doc)
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong; for a 400, which parameter and why.
    pub error: String,
}

/// An error answer: a status and a message for the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    /// 503 with `message`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }

    /// 500; the detail goes to the log, the client gets `message` only.
    fn internal(message: &str, detail: &dyn std::fmt::Display) -> ApiError {
        tracing::warn!(error = %detail, "{message}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.to_string(),
        }
    }

    /// Maps a database error: an expired `statement_timeout` and a lost connection are 503
    /// (try again, or narrow the query), anything else is 500.
    pub fn from_db(e: &tokio_postgres::Error) -> ApiError {
        match e.code() {
            Some(c) if *c == SqlState::QUERY_CANCELED => ApiError::unavailable(
                "the query ran past the API's statement timeout: narrow the filter or lower the limit",
            ),
            Some(c)
                if *c == SqlState::CHARACTER_NOT_IN_REPERTOIRE
                    || *c == SqlState::UNTRANSLATABLE_CHARACTER =>
            {
                ApiError::bad_request("a parameter holds a character PostgreSQL text cannot (U+0000)")
            }
            Some(c) if c.code().starts_with("08") || c.code().starts_with("57") => {
                ApiError::unavailable("the database is unavailable")
            }
            None if e.is_closed() || e.as_db_error().is_none() => {
                ApiError::unavailable("the database is unavailable")
            }
            _ => ApiError::internal("database error", e),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> ApiError {
        ApiError::from_db(&e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Fallback for paths that match no route.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /openapi.json")
}

type Conn<'a> = super::ReaderConn<'a>;

/// A connection of the read-only pool, or 503.
async fn reader(s: &AppState) -> Result<Conn<'_>, ApiError> {
    let pool = s
        .reader
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("the API is disabled (http.api = false)"))?;
    pool.get(super::READER_CHECKOUT).await.map_err(|e| match e {
        bb8::RunError::User(e) => ApiError::from_db(&e),
        bb8::RunError::TimedOut => {
            ApiError::unavailable("the database is busy: no API connection free in time")
        }
    })
}

// ---------------------------------------------------------------------------------------
// Pages bounded in bytes
// ---------------------------------------------------------------------------------------

/// Bytes kept free in a page's budget for what follows its list (cursor, `truncated`).
const TAIL_RESERVE: usize = 512;

/// A JSON page written item by item within a byte budget: `{<lead fields>, "<list>": [
/// items ], <tail fields>}`. The server holds at most the budget plus the item being added.
pub struct PageWriter {
    buf: Vec<u8>,
    budget: usize,
    items: usize,
    truncated: bool,
}

impl PageWriter {
    /// Starts a page: `lead` fields first, then the list named `list`.
    pub fn new(lead: &[(&str, Value)], list: &str, budget: usize) -> Result<PageWriter, ApiError> {
        let mut w = PageWriter {
            buf: Vec::with_capacity(budget.min(64 << 10)),
            budget,
            items: 0,
            truncated: false,
        };
        w.buf.push(b'{');
        for (k, v) in lead {
            w.field(k, v)?;
            w.buf.push(b',');
        }
        write_json(&mut w.buf, list)?;
        w.buf.extend_from_slice(b":[");
        Ok(w)
    }

    /// Appends `item` unless the page would pass its budget; the first item is always taken.
    /// False means the page is full: stop, and let the cursor continue before this item.
    pub fn push<T: Serialize>(&mut self, item: &T) -> Result<bool, ApiError> {
        let start = self.buf.len();
        if self.items > 0 {
            self.buf.push(b',');
        }
        write_json(&mut self.buf, item)?;
        if self.items > 0 && self.buf.len() + TAIL_RESERVE > self.budget {
            self.buf.truncate(start);
            self.truncated = true;
            return Ok(false);
        }
        self.items += 1;
        Ok(true)
    }

    /// True once an item was refused for the budget.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Closes the list, appends the `tail` fields and `"truncated"`, and answers 200 JSON.
    pub fn finish(mut self, tail: &[(&str, Value)]) -> Result<Response, ApiError> {
        self.buf.push(b']');
        for (k, v) in tail {
            self.buf.push(b',');
            self.field(k, v)?;
        }
        self.buf.push(b',');
        let truncated = Value::Bool(self.truncated);
        self.field("truncated", &truncated)?;
        self.buf.push(b'}');
        Ok(([(CONTENT_TYPE, "application/json")], self.buf).into_response())
    }

    fn field(&mut self, k: &str, v: &Value) -> Result<(), ApiError> {
        write_json(&mut self.buf, k)?;
        self.buf.push(b':');
        write_json(&mut self.buf, v)
    }
}

fn write_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) -> Result<(), ApiError> {
    serde_json::to_writer(buf, v).map_err(|e| ApiError::internal("cannot serialise the answer", &e))
}

/// The `$n` parameters of a query, as `query_raw` takes them.
fn raw_params(
    params: &crate::filter_sql::SqlParams,
) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    crate::filter_sql::refs(params)
}

// ---------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------

/// Percent-decoded query parameters, in order.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes a raw query string (`+` and `%xx` understood); at most [`MAX_PARAMS`] pairs.
    pub fn parse(raw: Option<&str>) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .take(MAX_PARAMS + 1)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if pairs.len() > MAX_PARAMS {
            return Err(ApiError::bad_request(format!(
                "too many query parameters (at most {MAX_PARAMS})"
            )));
        }
        Ok(Params(pairs))
    }

    /// Refuses any parameter not in `allowed` (a typo should not silently widen a query).
    fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::bad_request(format!(
                "unknown parameter {k:?}; accepted: {}",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// The value of a parameter that may appear once.
    fn one(&self, key: &str) -> Result<Option<&str>, ApiError> {
        let mut it = self.0.iter().filter(|(k, _)| k == key);
        let first = it.next().map(|(_, v)| v.as_str());
        if it.next().is_some() {
            return Err(ApiError::bad_request(format!(
                "{key}: given more than once"
            )));
        }
        Ok(first)
    }
}

/// `limit`: a positive integer, capped at `max`; [`DEFAULT_LIMIT`] (capped) when absent.
pub fn parse_limit(v: Option<&str>, max: i64) -> Result<i64, ApiError> {
    match v {
        None => Ok(DEFAULT_LIMIT.min(max)),
        Some(s) => {
            let n: i64 = s
                .trim()
                .parse()
                .map_err(|_| ApiError::bad_request(format!("limit: {s:?} is not an integer")))?;
            if n < 1 {
                return Err(ApiError::bad_request(format!(
                    "limit: must be at least 1, got {n}"
                )));
            }
            Ok(n.min(max))
        }
    }
}

fn parse_i64(key: &str, v: &str) -> Result<i64, ApiError> {
    v.trim()
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{key}: {v:?} is not an integer")))
}

/// Splits a comma-separated list (repeated parameters append); empty items and lists longer
/// than [`MAX_LIST`] are refused.
fn push_list(key: &str, v: &str, out: &mut Vec<String>) -> Result<(), ApiError> {
    for item in v.split(',') {
        if item.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{key}: empty item in a comma-separated list"
            )));
        }
        out.push(item.to_string());
    }
    if out.len() > MAX_LIST {
        return Err(ApiError::bad_request(format!(
            "{key}: at most {MAX_LIST} items"
        )));
    }
    Ok(())
}

fn parse_hex32(key: &str, v: &str) -> Result<Vec<u8>, ApiError> {
    match hex::decode(v) {
        Ok(b) if b.len() == 32 => Ok(b),
        _ => Err(ApiError::bad_request(format!(
            "{key}: {v:?} is not 64 hex characters"
        ))),
    }
}

/// A normalized relay URL from a path segment (percent-encoded by the client).
fn parse_relay(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(raw) = p.map_err(|e| ApiError::bad_request(format!("relay URL: {e}")))?;
    RelayUrl::parse(&raw, true)
        .map(|u| u.to_string())
        .map_err(|e| {
            ApiError::bad_request(format!(
                "relay URL: {raw:?} is not a relay URL ({e}); percent-encode it, e.g. wss%3A%2F%2Frelay.example.com"
            ))
        })
}

// ---------------------------------------------------------------------------------------
// Relays
// ---------------------------------------------------------------------------------------

/// A registry relay with the health columns of its newest monitor check (null when never
/// checked).
#[derive(Debug, Serialize, ToSchema)]
pub struct RelaySummary {
    /// Normalized relay URL.
    pub url: String,
    /// clearnet, tor, i2p, loki or local.
    pub network: String,
    /// Unix seconds when the relay entered the registry.
    pub inserted_at: i64,
    /// Unix seconds of the newest check.
    pub checked_at: Option<i64>,
    /// The WebSocket opened at the newest check.
    pub openable: Option<bool>,
    /// A REQ was answered at the newest check.
    pub readable: Option<bool>,
    /// An EVENT was accepted at the newest check.
    pub writable: Option<bool>,
    /// Milliseconds to open the WebSocket.
    pub rtt_open: Option<i32>,
    /// Milliseconds for a REQ to be answered.
    pub rtt_read: Option<i32>,
    /// Milliseconds for an EVENT to be acknowledged.
    pub rtt_write: Option<i32>,
    /// NIP-11 name.
    pub name: Option<String>,
    /// NIP-11 software.
    pub software: Option<String>,
    /// NIP-11 version.
    pub version: Option<String>,
    /// NIP-11 supported_nips.
    pub supported_nips: Option<Vec<i32>>,
}

/// A page of relays, ordered by URL.
#[derive(Debug, Serialize, ToSchema)]
pub struct RelaysPage {
    /// The relays of this page.
    pub relays: Vec<RelaySummary>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<String>,
    /// True when the page was cut by `http.max_response_bytes` before `limit` relays.
    pub truncated: bool,
}

/// Relays of the registry, by URL, with their newest health check.
#[utoipa::path(get, path = "/api/relays", tag = "relays",
    params(
        ("network" = Option<String>, Query, description = "Only this network: clearnet, tor, i2p, loki or local"),
        ("limit" = Option<i64>, Query, description = "Page size (default 100, capped at http.max_limit)"),
        ("after" = Option<String>, Query, description = "Only URLs after this one (the `next` of the previous page)"),
    ),
    responses(
        (status = 200, description = "A page of relays, at most `http.max_response_bytes` (then `truncated`)", body = RelaysPage),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable or statement timeout", body = ErrorBody)))]
pub async fn list_relays(
    State(s): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(q.as_deref())?;
    p.only(&["network", "limit", "after"])?;
    let network = match p.one("network")? {
        None => None,
        Some(n) => match NETWORKS.iter().find(|x| x.as_str() == n) {
            Some(x) => Some(x.as_str().to_string()),
            None => {
                return Err(ApiError::bad_request(format!(
                    "network: {n:?} is not one of {}",
                    NETWORKS.map(|x| x.as_str()).join(", ")
                )))
            }
        },
    };
    let after = p.one("after")?.map(str::to_string);
    let limit = parse_limit(p.one("limit")?, s.max_limit)?;
    let conn = reader(&s).await?;
    let rows = conn
        .query_raw(
            "SELECT r.url, r.network, r.inserted_at, l.generated_at, l.openable, l.readable,
                    l.writable, l.rtt_open, l.rtt_read, l.rtt_write, l.name, l.software,
                    l.version, l.supported_nips
             FROM (SELECT url, network, inserted_at FROM relays
                   WHERE ($1::text IS NULL OR network = $1) AND ($2::text IS NULL OR url > $2)
                   ORDER BY url LIMIT $3) AS r
             LEFT JOIN LATERAL (
                 SELECT * FROM relay_metadata_latest AS m WHERE m.relay_url = r.url
             ) AS l ON TRUE
             ORDER BY r.url",
            [
                &network as &(dyn tokio_postgres::types::ToSql + Sync),
                &after,
                &(limit + 1),
            ],
        )
        .await?;
    let mut rows = std::pin::pin!(rows);
    let mut page = PageWriter::new(&[], "relays", s.max_response_bytes)?;
    let (mut taken, mut more, mut last) = (0i64, false, None::<String>);
    while let Some(r) = rows.try_next().await? {
        if taken == limit {
            more = true;
            break;
        }
        let relay = RelaySummary {
            url: r.try_get(0)?,
            network: r.try_get(1)?,
            inserted_at: r.try_get(2)?,
            checked_at: r.try_get(3)?,
            openable: r.try_get(4)?,
            readable: r.try_get(5)?,
            writable: r.try_get(6)?,
            rtt_open: r.try_get(7)?,
            rtt_read: r.try_get(8)?,
            rtt_write: r.try_get(9)?,
            name: r.try_get(10)?,
            software: r.try_get(11)?,
            version: r.try_get(12)?,
            supported_nips: r.try_get(13)?,
        };
        if !page.push(&relay)? {
            more = true;
            break;
        }
        taken += 1;
        last = Some(relay.url);
    }
    let next = if more { last } else { None };
    page.finish(&[("next", next.map_or(Value::Null, Value::String))])
}

/// The newest monitoring snapshot of a relay.
#[derive(Debug, Serialize, ToSchema)]
pub struct RelayMetadata {
    /// Normalized relay URL.
    pub relay_url: String,
    /// The `relay_metadata_latest` row: NIP-11 fields, check results, raw documents.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

/// 404 naming what is missing: the relay itself, or only its snapshots.
async fn missing_relay(conn: &Conn<'_>, url: &str) -> Result<ApiError, ApiError> {
    let known = conn
        .query_opt("SELECT 1 FROM relays WHERE url = $1", &[&url])
        .await?
        .is_some();
    Ok(if known {
        ApiError::not_found(format!("relay {url} has not been checked yet"))
    } else {
        ApiError::not_found(format!("relay {url} is not in the registry"))
    })
}

/// The newest NIP-11 document and check result of a relay (`relay_metadata_latest`).
#[utoipa::path(get, path = "/api/relays/{url}/metadata", tag = "relays",
    params(("url" = String, Path, description = "Relay URL, percent-encoded (wss%3A%2F%2Frelay.example.com)")),
    responses(
        (status = 200, description = "The newest snapshot", body = RelayMetadata),
        (status = 400, description = "Not a relay URL", body = ErrorBody),
        (status = 404, description = "Unknown relay, or never checked", body = ErrorBody),
        (status = 503, description = "Database unavailable or statement timeout", body = ErrorBody)))]
pub async fn relay_metadata(
    State(s): State<Arc<AppState>>,
    url: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Json<RelayMetadata>, ApiError> {
    Params::parse(q.as_deref())?.only(&[])?;
    let url = parse_relay(url)?;
    let conn = reader(&s).await?;
    let row = conn
        .query_opt(
            "SELECT to_jsonb(l) || jsonb_build_object(
                        'nip11_id', encode(l.nip11_id, 'hex'),
                        'nip66_id', encode(l.nip66_id, 'hex'))
             FROM relay_metadata_latest AS l WHERE l.relay_url = $1",
            &[&url],
        )
        .await?;
    match row {
        Some(r) => Ok(Json(RelayMetadata {
            relay_url: url,
            metadata: r.try_get(0)?,
        })),
        None => Err(missing_relay(&conn, &url).await?),
    }
}

/// One monitoring snapshot of a relay.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetadataSnapshot {
    /// Unix seconds of the check.
    pub generated_at: i64,
    /// sha256 (hex) of the NIP-11 document, if one was fetched.
    pub nip11_id: Option<String>,
    /// sha256 (hex) of the check result, if checked.
    pub nip66_id: Option<String>,
    /// The NIP-11 document.
    #[schema(value_type = Option<Object>)]
    pub nip11: Option<serde_json::Value>,
    /// The check result (rtt, openable/readable/writable, dns, tls, http, geo).
    #[schema(value_type = Option<Object>)]
    pub nip66: Option<serde_json::Value>,
}

/// Snapshots of one relay, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetadataHistory {
    /// Normalized relay URL.
    pub relay_url: String,
    /// The snapshots of this page.
    pub history: Vec<MetadataSnapshot>,
    /// Pass as `before` for the next page; null on the last page.
    pub next_before: Option<i64>,
    /// True when the page was cut by `http.max_response_bytes` before `limit` snapshots.
    pub truncated: bool,
}

/// Monitoring snapshots of a relay, newest first.
#[utoipa::path(get, path = "/api/relays/{url}/metadata/history", tag = "relays",
    params(
        ("url" = String, Path, description = "Relay URL, percent-encoded"),
        ("limit" = Option<i64>, Query, description = "Page size (default 100, capped at http.max_limit)"),
        ("before" = Option<i64>, Query, description = "Only snapshots generated before this unix time (the `next_before` of the previous page)"),
    ),
    responses(
        (status = 200, description = "A page of snapshots, at most `http.max_response_bytes` (then `truncated`)", body = MetadataHistory),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 404, description = "Unknown relay", body = ErrorBody),
        (status = 503, description = "Database unavailable or statement timeout", body = ErrorBody)))]
pub async fn relay_metadata_history(
    State(s): State<Arc<AppState>>,
    url: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(q.as_deref())?;
    p.only(&["limit", "before"])?;
    let url = parse_relay(url)?;
    let limit = parse_limit(p.one("limit")?, s.max_limit)?;
    let before = p
        .one("before")?
        .map(|v| parse_i64("before", v))
        .transpose()?;
    let conn = reader(&s).await?;
    let budget = i64::try_from(s.max_response_bytes).unwrap_or(i64::MAX);
    // The database sends only the documents whose stored sizes fit the budget (stored sizes
    // may be compressed: the exact cut is made below, on the serialised bytes).
    let rows = conn
        .query_raw(
            "WITH k AS (
                 SELECT m.generated_at, m.nip11_id, m.nip66_id,
                        coalesce(pg_column_size(n11.raw), 0)
                          + coalesce(pg_column_size(n66.raw), 0) + 200 AS sz
                 FROM relay_metadata AS m
                 LEFT JOIN nip11 AS n11 ON n11.id = m.nip11_id
                 LEFT JOIN nip66 AS n66 ON n66.id = m.nip66_id
                 WHERE m.relay_url = $1 AND ($2::bigint IS NULL OR m.generated_at < $2)
                 ORDER BY m.generated_at DESC
                 LIMIT $3
             ), w AS (
                 SELECT *, sum(sz) OVER (ORDER BY generated_at DESC
                                         ROWS UNBOUNDED PRECEDING) - sz AS before,
                        count(*) OVER () AS found
                 FROM k
             )
             SELECT w.generated_at, encode(w.nip11_id, 'hex'), encode(w.nip66_id, 'hex'),
                    n11.raw, n66.raw, w.found
             FROM w
             LEFT JOIN nip11 AS n11 ON n11.id = w.nip11_id
             LEFT JOIN nip66 AS n66 ON n66.id = w.nip66_id
             WHERE w.before < $4
             ORDER BY w.generated_at DESC",
            [
                &url as &(dyn tokio_postgres::types::ToSql + Sync),
                &before,
                &(limit + 1),
                &budget,
            ],
        )
        .await?;
    // Boxed so it can be dropped before the next query on this connection: a live stream
    // that is not read would hold the connection's answers back.
    let mut rows = Box::pin(rows);
    let mut page = PageWriter::new(
        &[("relay_url", Value::String(url.clone()))],
        "history",
        s.max_response_bytes,
    )?;
    let (mut taken, mut found, mut last) = (0i64, 0i64, None::<i64>);
    while let Some(r) = rows.try_next().await? {
        found = r.try_get(5)?;
        if taken == limit {
            break;
        }
        let snap = MetadataSnapshot {
            generated_at: r.try_get(0)?,
            nip11_id: r.try_get(1)?,
            nip66_id: r.try_get(2)?,
            nip11: r.try_get(3)?,
            nip66: r.try_get(4)?,
        };
        if !page.push(&snap)? {
            break;
        }
        taken += 1;
        last = Some(snap.generated_at);
    }
    drop(rows);
    if found == 0 && before.is_none() {
        let known = conn
            .query_opt("SELECT 1 FROM relays WHERE url = $1", &[&url])
            .await?
            .is_some();
        if !known {
            return Err(ApiError::not_found(format!(
                "relay {url} is not in the registry"
            )));
        }
    }
    let next_before = if found > taken { last } else { None };
    page.finish(&[("next_before", next_before.map_or(Value::Null, Value::from))])
}

// ---------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------

/// A NIP-01 filter from query parameters, validated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventFilter {
    /// Event ids (32 bytes each).
    pub ids: Vec<Vec<u8>>,
    /// Author keys (32 bytes each).
    pub authors: Vec<Vec<u8>>,
    /// Kinds.
    pub kinds: Vec<i32>,
    /// Oldest created_at, inclusive.
    pub since: Option<i64>,
    /// Newest created_at, inclusive.
    pub until: Option<i64>,
    /// Single-letter tag filters: (letter, accepted first values).
    pub tags: Vec<(String, Vec<String>)>,
    /// Page size.
    pub limit: i64,
    /// Continue after this (created_at, id) of the previous page.
    pub cursor: Option<(i64, Vec<u8>)>,
}

/// The tag letter of a `#x` or `tag_x` parameter name (NIP-01: one ASCII letter).
fn tag_letter(key: &str) -> Option<&str> {
    let letter = key.strip_prefix('#').or_else(|| key.strip_prefix("tag_"))?;
    (letter.len() == 1 && letter.bytes().all(|b| b.is_ascii_alphabetic())).then_some(letter)
}

/// The opaque page cursor: hex of created_at (8 bytes, big-endian) and the id.
pub fn encode_cursor(created_at: i64, id: &[u8]) -> String {
    let mut b = created_at.to_be_bytes().to_vec();
    b.extend_from_slice(id);
    hex::encode(b)
}

fn decode_cursor(v: &str) -> Result<(i64, Vec<u8>), ApiError> {
    let bad = || ApiError::bad_request("cursor: not a cursor returned by this API");
    let b = hex::decode(v).map_err(|_| bad())?;
    if b.len() != 40 {
        return Err(bad());
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&b[..8]);
    Ok((i64::from_be_bytes(ts), b[8..].to_vec()))
}

impl EventFilter {
    /// Reads `ids`, `authors`, `kinds`, `since`, `until`, `limit`, `cursor` and tag filters
    /// (`#e=` / `%23e=` / `tag_e=`); lists are comma-separated, repeated parameters append.
    pub fn from_params(p: &Params, max_limit: i64) -> Result<EventFilter, ApiError> {
        let mut f = EventFilter::default();
        let (mut ids, mut authors, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
        let mut tags: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in &p.0 {
            match k.as_str() {
                "ids" => push_list(k, v, &mut ids)?,
                "authors" => push_list(k, v, &mut authors)?,
                "kinds" => push_list(k, v, &mut kinds)?,
                "since" | "until" | "limit" | "cursor" => {}
                _ => match tag_letter(k) {
                    Some(letter) => {
                        let i = match tags.iter().position(|(l, _)| l == letter) {
                            Some(i) => i,
                            None => {
                                tags.push((letter.to_string(), Vec::new()));
                                tags.len() - 1
                            }
                        };
                        push_list(k, v, &mut tags[i].1)?;
                    }
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "unknown parameter {k:?}; accepted: ids, authors, kinds, since, until, limit, cursor, #<letter> or tag_<letter>"
                        )))
                    }
                },
            }
        }
        f.ids = ids
            .iter()
            .map(|v| parse_hex32("ids", v))
            .collect::<Result<_, _>>()?;
        f.authors = authors
            .iter()
            .map(|v| parse_hex32("authors", v))
            .collect::<Result<_, _>>()?;
        f.kinds = kinds
            .iter()
            .map(|v| {
                v.trim().parse::<u16>().map(i32::from).map_err(|_| {
                    ApiError::bad_request(format!("kinds: {v:?} is not a kind (0-65535)"))
                })
            })
            .collect::<Result<_, _>>()?;
        f.tags = tags;
        f.since = p.one("since")?.map(|v| parse_i64("since", v)).transpose()?;
        f.until = p.one("until")?.map(|v| parse_i64("until", v)).transpose()?;
        f.limit = parse_limit(p.one("limit")?, max_limit)?;
        f.cursor = p.one("cursor")?.map(decode_cursor).transpose()?;
        Ok(f)
    }

    /// The SQL and its parameters: newest first, at most `limit + 1` candidates (so the
    /// caller knows whether another page follows), each row with `found`, the number of
    /// candidates. Only the candidates whose stored sizes, summed in page order, start
    /// within `budget` bytes are read and sent: their sizes (`octet_length` of a text reads
    /// its TOAST header, not its bytes) estimate the serialised event, which the caller
    /// measures exactly.
    /// `tag_index`: tag filters are served by `event_tags` (see `tag_index_ready`).
    fn query(&self, budget: usize, tag_index: bool) -> (String, SqlParams) {
        let mut params = SqlParams::new();

        // Absent and empty lists both mean "no condition" in query parameters.
        let list = |v: &Vec<_>| (!v.is_empty()).then(|| v.clone());
        let f = Conditions {
            ids: list(&self.ids),
            authors: list(&self.authors),
            kinds: (!self.kinds.is_empty()).then(|| self.kinds.clone()),
            since: self.since,
            until: self.until,
            tags: self
                .tags
                .iter()
                .map(|(l, v)| (l.clone(), v.as_slice()))
                .collect(),
            before: self.cursor.clone(),
            tag_index,
            limit: Some(self.limit + 1),
        }
        .build(&mut params);
        // One pass over the candidates: tags are turned into text once, and `content` /
        // `raw_canonical` travel as TOAST pointers through the window's sort, so only the
        // rows sent are read in full (the first form joined `events` a second time to fetch
        // them: twice the index probes and text conversions of the relay endpoint's query).
        let mut sql = format!(
            "SELECT id, pubkey, created_at, kind, tags, content, sig, raw_canonical, found
             FROM (
                 SELECT c.*,
                        sum(c.sz) OVER (ORDER BY c.created_at DESC, c.id DESC
                                        ROWS UNBOUNDED PRECEDING) - c.sz AS before,
                        count(*) OVER () AS found
                 FROM (
                     SELECT k.*,
                            coalesce(octet_length(k.raw_canonical),
                                     octet_length(k.content) + octet_length(k.tags), 0) + 200 AS sz
                     FROM (
                         SELECT e.id, e.pubkey, e.created_at, e.kind, e.tags::text AS tags,
                                e.content, e.sig, e.raw_canonical
                         FROM {} WHERE TRUE{}",
            f.from, f.conditions
        );
        let n = push_param(Box::new(self.limit + 1), &mut params);
        let b = push_param(
            Box::new(i64::try_from(budget).unwrap_or(i64::MAX)),
            &mut params,
        );
        sql.push_str(&format!(
            " ORDER BY {} LIMIT ${n}
                     ) AS k
                 ) AS c
             ) AS w
             WHERE before < ${b}
             ORDER BY created_at DESC, id DESC",
            f.order
        ));
        (sql, params)
    }
}

/// A Nostr event as NIP-01 JSON; its id and signature verify. A metadata-only archive
/// (`[archive] bodies = false`) answers without `tags`, `content` and `sig`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NostrEvent {
    /// sha256 of the canonical serialization, hex.
    pub id: String,
    /// Author key, hex.
    pub pubkey: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Event kind.
    pub kind: i32,
    /// Tags (absent in a metadata-only archive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Vec<String>>>,
    /// Content (absent in a metadata-only archive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// BIP-340 signature, hex (absent in a metadata-only archive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// A page of events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// The events of this page.
    pub events: Vec<NostrEvent>,
    /// Pass as `cursor` (with the same filter) for the next page; null on the last page.
    pub cursor: Option<String>,
    /// True when the page was cut by `http.max_response_bytes` before `limit` events (the
    /// cursor continues after the last event returned).
    pub truncated: bool,
}

/// Lowercase hex by table: `hex::encode` goes through a `char` iterator, 2 % of the CPU of
/// a REST page of 100 events under load (perf, relay endpoint bench).
fn lower_hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    bigbrotr_stages::model::canonical::write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

/// Rebuilds the NIP-01 event of an `events` row (see [`stored_tags_and_content`]).
fn event_from_row(r: &tokio_postgres::Row) -> Result<NostrEvent, ApiError> {
    let id: Vec<u8> = r.try_get(0)?;
    let body = match stored_tags_and_content(r) {
        Ok(b) => Some(b),
        Err(StoredError::NoBody) => None,
        Err(StoredError::Db(e)) => return Err(ApiError::from(e)),
        Err(StoredError::Malformed(column)) => {
            return Err(ApiError::internal(
                &format!("stored event has a malformed {column}"),
                &column,
            ))
        }
    };
    let (tags, content) = body.unzip();
    Ok(NostrEvent {
        id: lower_hex(&id),
        pubkey: lower_hex(r.try_get::<_, &[u8]>(1)?),
        created_at: r.try_get(2)?,
        kind: r.try_get(3)?,
        tags,
        content,
        sig: r.try_get::<_, Option<&[u8]>>(6)?.map(lower_hex),
    })
}

/// Archived events matching a NIP-01 filter, newest first (ties by id), paged by cursor.
#[utoipa::path(get, path = "/api/events", tag = "events",
    params(
        ("ids" = Option<String>, Query, description = "Comma-separated event ids (64 hex, at most 1000)"),
        ("authors" = Option<String>, Query, description = "Comma-separated author keys (64 hex, at most 1000)"),
        ("kinds" = Option<String>, Query, description = "Comma-separated kinds (0-65535, at most 1000)"),
        ("since" = Option<i64>, Query, description = "Oldest created_at, inclusive"),
        ("until" = Option<i64>, Query, description = "Newest created_at, inclusive"),
        ("limit" = Option<i64>, Query, description = "Page size (default 100, capped at http.max_limit)"),
        ("cursor" = Option<String>, Query, description = "The `cursor` of the previous page (same filter)"),
        ("#e" = Option<String>, Query, description = "NIP-01 tag filter (send it percent-encoded: `%23e=`): events with an `e` tag whose first value is one of these (comma-separated, at most 1000). Any single ASCII letter works the same (`#a`..`#z`, `#A`..`#Z`); several tag filters must all match. Served by the tag index (newest first, `limit` read from the index), alone or with `kinds`, `authors`, `since`, `until`"),
        ("#p" = Option<String>, Query, description = "NIP-01 tag filter (`%23p=`): events with a `p` tag (mentioned pubkey, 64 hex) whose first value is one of these (comma-separated)"),
        ("#t" = Option<String>, Query, description = "NIP-01 tag filter (`%23t=`): events with a `t` tag (hashtag) whose first value is one of these (comma-separated)"),
        ("tag_e" = Option<String>, Query, description = "The same as `#e`, without percent-encoding: `tag_<letter>=` works for any single-letter tag"),
        ("tag_p" = Option<String>, Query, description = "The same as `#p`"),
        ("tag_t" = Option<String>, Query, description = "The same as `#t`"),
    ),
    responses(
        (status = 200, description = "A page of events: at most `limit` events and at most `http.max_response_bytes` bytes (default 4 MiB), except that an event larger than that comes alone; a page cut by bytes says `truncated` and its `cursor` continues", body = EventsPage),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable or statement timeout", body = ErrorBody)))]
pub async fn events(
    State(s): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = Params::parse(q.as_deref())?;
    let f = EventFilter::from_params(&p, s.max_limit)?;
    let conn = reader(&s).await?;
    let tag_index = !f.tags.is_empty() && s.tag_index.get(&conn).await;
    let (sql, params) = f.query(s.max_response_bytes, tag_index);
    let rows = conn.query_raw(&sql, raw_params(&params)).await?;
    let mut rows = std::pin::pin!(rows);
    let mut page = PageWriter::new(&[], "events", s.max_response_bytes)?;
    let (mut taken, mut found) = (0i64, 0i64);
    let mut last: Option<(i64, Vec<u8>)> = None;
    while let Some(r) = rows.try_next().await? {
        found = r.try_get(8)?;
        if taken == f.limit {
            break;
        }
        let event = event_from_row(&r)?;
        if !page.push(&event)? {
            break;
        }
        taken += 1;
        last = Some((event.created_at, r.try_get(0)?));
    }
    // `found` counts the candidates (at most limit + 1): more than were sent means a next page.
    let cursor = match last {
        Some((ts, id)) if found > taken => Value::String(encode_cursor(ts, &id)),
        _ => Value::Null,
    };
    page.finish(&[("cursor", cursor)])
}

// ---------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------

/// The `events_statistics` view: global counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsStatistics {
    /// Events archived.
    pub total_events: i64,
    /// Distinct authors.
    pub unique_pubkeys: i64,
    /// Distinct kinds.
    pub unique_kinds: i64,
    /// Regular kinds (NIP-01 ranges).
    pub regular_events: i64,
    /// Replaceable kinds.
    pub replaceable_events: i64,
    /// Ephemeral kinds.
    pub ephemeral_events: i64,
    /// Addressable kinds.
    pub addressable_events: i64,
    /// Kinds in no NIP-01 range.
    pub other_events: i64,
    /// Oldest created_at.
    pub earliest_event_timestamp: Option<i64>,
    /// Newest created_at.
    pub latest_event_timestamp: Option<i64>,
    /// Events created in the last hour.
    pub events_last_hour: i64,
    /// Events created in the last 24 hours.
    pub events_last_24h: i64,
    /// Events created in the last 7 days.
    pub events_last_7d: i64,
}

/// Events per kind (`kind_counts_total`).
#[derive(Debug, Serialize, ToSchema)]
pub struct KindCount {
    /// Event kind.
    pub kind: i32,
    /// Events of this kind.
    pub event_count: i64,
    /// Distinct authors of this kind.
    pub unique_pubkeys: i64,
}

/// Events per author (`pubkey_counts_total`).
#[derive(Debug, Serialize, ToSchema)]
pub struct PubkeyCount {
    /// Author key, hex.
    pub pubkey: String,
    /// Events of this author.
    pub event_count: i64,
    /// Distinct kinds of this author.
    pub unique_kinds: i64,
}

/// Per relay (`relays_statistics`).
#[derive(Debug, Serialize, ToSchema)]
pub struct RelayStatistics {
    /// Normalized relay URL.
    pub relay_url: String,
    /// Network.
    pub network: String,
    /// Unix seconds when the relay entered the registry.
    pub inserted_at: i64,
    /// Events seen on this relay.
    pub event_count: i64,
    /// First sighting, unix seconds.
    pub first_seen_at: Option<i64>,
    /// Last sighting, unix seconds.
    pub last_seen_at: Option<i64>,
    /// Mean open RTT over the last 10 checks, ms.
    pub avg_rtt_open: Option<f64>,
    /// Mean read RTT over the last 10 checks, ms.
    pub avg_rtt_read: Option<f64>,
    /// Mean write RTT over the last 10 checks, ms.
    pub avg_rtt_write: Option<f64>,
}

/// Global event statistics (scans the archive: bounded by the statement timeout).
#[utoipa::path(get, path = "/api/stats", tag = "stats",
    responses(
        (status = 200, description = "Counts", body = EventsStatistics),
        (status = 503, description = "Database unavailable or statement timeout", body = ErrorBody)))]
pub async fn stats(
    State(s): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<EventsStatistics>, ApiError> {
    Params::parse(q.as_deref())?.only(&[])?;
    let conn = reader(&s).await?;
    let r = conn
        .query_one(
            "SELECT total_events, unique_pubkeys, unique_kinds, regular_events,
                    replaceable_events, ephemeral_events, addressable_events, other_events,
                    earliest_event_timestamp, latest_event_timestamp, events_last_hour,
                    events_last_24h, events_last_7d
             FROM events_statistics",
            &[],
        )
        .await?;
    Ok(Json(EventsStatistics {
        total_events: r.try_get(0)?,
        unique_pubkeys: r.try_get(1)?,
        unique_kinds: r.try_get(2)?,
        regular_events: r.try_get(3)?,
        replaceable_events: r.try_get(4)?,
        ephemeral_events: r.try_get(5)?,
        addressable_events: r.try_get(6)?,
        other_events: r.try_get(7)?,
        earliest_event_timestamp: r.try_get(8)?,
        latest_event_timestamp: r.try_get(9)?,
        events_last_hour: r.try_get(10)?,
        events_last_24h: r.try_get(11)?,
        events_last_7d: r.try_get(12)?,
    }))
}

/// Reads the only parameter of the ranked statistics, `limit`.
fn stats_limit(q: Option<&str>, max: i64) -> Result<i64, ApiError> {
    let p = Params::parse(q)?;
    p.only(&["limit"])?;
    parse_limit(p.one("limit")?, max)
}

/// Kinds by number of events, most first.
#[utoipa::path(get, path = "/api/stats/kinds", tag = "stats",
    params(("limit" = Option<i64>, Query, description = "How many (default 100, capped at http.max_limit)")),
    responses(
        (status = 200, description = "Kinds", body = Vec<KindCount>),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable or statement timeout", body = ErrorBody)))]
pub async fn stats_kinds(
    State(s): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<KindCount>>, ApiError> {
    let limit = stats_limit(q.as_deref(), s.max_limit)?;
    let conn = reader(&s).await?;
    let rows = conn
        .query(
            "SELECT kind, event_count, unique_pubkeys FROM kind_counts_total
             ORDER BY event_count DESC, kind LIMIT $1",
            &[&limit],
        )
        .await?;
    let out = rows
        .iter()
        .map(|r| {
            Ok(KindCount {
                kind: r.try_get(0)?,
                event_count: r.try_get(1)?,
                unique_pubkeys: r.try_get(2)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok(Json(out))
}

/// Authors by number of events, most first.
#[utoipa::path(get, path = "/api/stats/pubkeys", tag = "stats",
    params(("limit" = Option<i64>, Query, description = "How many (default 100, capped at http.max_limit)")),
    responses(
        (status = 200, description = "Authors", body = Vec<PubkeyCount>),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable or statement timeout", body = ErrorBody)))]
pub async fn stats_pubkeys(
    State(s): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<PubkeyCount>>, ApiError> {
    let limit = stats_limit(q.as_deref(), s.max_limit)?;
    let conn = reader(&s).await?;
    let rows = conn
        .query(
            "SELECT pubkey_hex, event_count, unique_kinds FROM pubkey_counts_total
             ORDER BY event_count DESC, pubkey_hex LIMIT $1",
            &[&limit],
        )
        .await?;
    let out = rows
        .iter()
        .map(|r| {
            Ok(PubkeyCount {
                pubkey: r.try_get(0)?,
                event_count: r.try_get(1)?,
                unique_kinds: r.try_get(2)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok(Json(out))
}

/// Relays by number of events seen on them, most first.
#[utoipa::path(get, path = "/api/stats/relays", tag = "stats",
    params(("limit" = Option<i64>, Query, description = "How many (default 100, capped at http.max_limit)")),
    responses(
        (status = 200, description = "Relays", body = Vec<RelayStatistics>),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 503, description = "Database unavailable or statement timeout", body = ErrorBody)))]
pub async fn stats_relays(
    State(s): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<RelayStatistics>>, ApiError> {
    let limit = stats_limit(q.as_deref(), s.max_limit)?;
    let conn = reader(&s).await?;
    let rows = conn
        .query(
            "SELECT relay_url, network, inserted_at, event_count, first_seen_at, last_seen_at,
                    avg_rtt_open::float8, avg_rtt_read::float8, avg_rtt_write::float8
             FROM relays_statistics
             ORDER BY event_count DESC, relay_url LIMIT $1",
            &[&limit],
        )
        .await?;
    let out = rows
        .iter()
        .map(|r| {
            Ok(RelayStatistics {
                relay_url: r.try_get(0)?,
                network: r.try_get(1)?,
                inserted_at: r.try_get(2)?,
                event_count: r.try_get(3)?,
                first_seen_at: r.try_get(4)?,
                last_seen_at: r.try_get(5)?,
                avg_rtt_open: r.try_get(6)?,
                avg_rtt_read: r.try_get(7)?,
                avg_rtt_write: r.try_get(8)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter_sql::canonical_tag_prefix;

    /// `/openapi.json` documents the dashboard's endpoints beside the API's.
    #[tokio::test]
    async fn openapi_lists_the_dashboard_endpoints() {
        let Json(doc) = openapi_json().await;
        let v = serde_json::to_value(doc).expect("json");
        for path in [
            "/api/events",
            "/api/dashboard/overview",
            "/api/dashboard/relays",
        ] {
            assert!(v["paths"].get(path).is_some(), "{path} in /openapi.json");
        }
    }

    fn filter(q: &str) -> Result<EventFilter, ApiError> {
        EventFilter::from_params(&Params::parse(Some(q))?, 500)
    }

    #[test]
    fn parses_nip01_filters() {
        let id = "ab".repeat(32);
        let f = filter(&format!(
            "ids={id}&kinds=1,7&kinds=30023&since=10&until=20&%23e=x,y&tag_p=z&limit=900"
        ))
        .expect("valid");
        assert_eq!(f.ids, vec![vec![0xab; 32]]);
        assert_eq!(f.kinds, vec![1, 7, 30023]);
        assert_eq!((f.since, f.until), (Some(10), Some(20)));
        assert_eq!(
            f.tags,
            vec![
                ("e".to_string(), vec!["x".to_string(), "y".to_string()]),
                ("p".to_string(), vec!["z".to_string()])
            ]
        );
        assert_eq!(f.limit, 500, "capped at max_limit");
        assert_eq!(filter("").expect("empty").limit, 100);
    }

    #[test]
    fn refuses_bad_parameters() {
        for q in [
            "ids=xyz",
            "authors=abcd",
            "kinds=70000",
            "kinds=1,,2",
            "limit=-1",
            "limit=0",
            "limit=lots",
            "since=yesterday",
            "cursor=zz",
            "cursor=00",
            "#ee=x",
            "tag_1=x",
            "foo=bar",
            "since=1&since=2",
        ] {
            let e = filter(q).expect_err(q);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{q}");
            assert!(!e.message().is_empty());
        }
    }

    #[test]
    fn tag_prefix_is_canonical_json() {
        assert_eq!(
            canonical_tag_prefix("t", "a\u{0}\"b"),
            "[\"t\",\"a\\u0000\\\"b\""
        );
    }

    #[test]
    fn cursor_round_trips() {
        let id = [7u8; 32];
        for ts in [0i64, 1_700_000_000, -5] {
            let c = encode_cursor(ts, &id);
            assert_eq!(decode_cursor(&c).expect("decodes"), (ts, id.to_vec()));
        }
    }

    #[test]
    fn query_numbers_its_parameters() {
        let f = filter("kinds=1&%23e=x&tag_t=y&cursor=")
            .map(|_| ())
            .expect_err("empty cursor");
        assert_eq!(f.status(), StatusCode::BAD_REQUEST);
        let f = filter(&format!(
            "kinds=1&%23e=x&tag_t=y&cursor={}",
            encode_cursor(5, &[1; 32])
        ))
        .expect("valid");
        let (sql, params) = f.query(4 << 20, false);
        assert_eq!(params.len(), 11);
        assert!(sql.contains("$11") && !sql.contains("$12"), "{sql}");
        // From the tag index: one key drives (and filters kinds there too), one probes.
        let (sql, params) = f.query(4 << 20, true);
        assert_eq!(params.len(), 8);
        assert!(sql.contains("$8") && !sql.contains("$9"), "{sql}");
        assert!(sql.contains("event_tags AS t"), "{sql}");
    }
}
