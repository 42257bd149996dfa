//! sink: binary COPY of a batch into staging tables, then `INSERT … ON CONFLICT DO NOTHING`
//! into `events` and `events_relays`, in one transaction; after commit, acknowledge the
//! sightings so relay cursors can advance, and persist the cursors that moved.
//!
//! A batch that fails is retried (with backoff, on a fresh connection) until it commits:
//! accepted data is never dropped, and the bounded channels upstream hold the pipeline back
//! while the database is away.

use crate::model::{now_secs, Batch, Event, Relay};
use bytes::{BufMut, BytesMut};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// The connection pool the sink writes through.
pub type Pool = bb8::Pool<bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>>;

/// Service name under which relay cursors are stored in `service_state`.
pub const CURSOR_SERVICE: &str = "synchronizer";

/// What the sink writes of each event (`[archive]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Keep tags, content and sig; false = a metadata-only archive (id, author, time, kind,
    /// tag-index rows and provenance; every event is still verified before it gets here).
    pub bodies: bool,
    /// Write the tag-index rows (`event_tags`) of each new event.
    pub tag_index: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            bodies: true,
            tag_index: true,
        }
    }
}

/// Sink counters.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Batches committed.
    pub batches: AtomicU64,
    /// New rows in `events`.
    pub events_inserted: AtomicU64,
    /// New rows in `events_relays`.
    pub sightings_inserted: AtomicU64,
    /// Rows offered (bodies + sightings), committed or absorbed as duplicates.
    pub rows: AtomicU64,
    /// Nanoseconds spent in COPY + INSERT + commit.
    pub write_ns: AtomicU64,
    /// Failed attempts (retried).
    pub retries: AtomicU64,
    /// Cursor rows written.
    pub cursor_writes: AtomicU64,
    /// Cursor writes refused because the relay's fleet lease moved on (another worker syncs it).
    pub cursor_fenced: AtomicU64,
    /// Batches written by direct COPY.
    pub direct_batches: AtomicU64,
    /// Direct attempts that met an existing row and fell back to staging.
    pub fallbacks: AtomicU64,
}

/// JSON text sent as `jsonb` in binary format (version byte 1 + text) without building a
/// `serde_json::Value`: the tags are already canonical JSON.
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.put_u8(1);
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

/// Replaces U+0000 in every string of a JSON document (text/jsonb cannot hold it).
fn strip_nul_json(json: &str) -> String {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.contains('\0') => {
                *s = s.replace('\0', "\u{FFFD}");
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            serde_json::Value::Object(o) => o.values_mut().for_each(walk),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut v) => {
            walk(&mut v);
            v.to_string()
        }
        Err(_) => "[]".to_string(),
    }
}

/// At most this many tag-index rows per event: its first indexable tags (see [`tag_keys`]).
pub const MAX_TAG_ROWS: usize = 2000;

/// The `event_tags` key of a tag value: the first 16 bytes of sha256(letter || 0x00 ||
/// value), over the value's exact UTF-8 (U+0000 included). `tag_key` in sql/013 computes the
/// same.
pub fn tag_key(letter: &str, value: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(letter.as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// Whether a tag name is indexed: one ASCII letter (NIP-01 tag filters).
fn indexable_name(name: &str) -> bool {
    name.len() == 1 && name.as_bytes()[0].is_ascii_alphabetic()
}

/// The distinct `event_tags` keys of an event's tags, given as (name, first value): only
/// single-letter names with a string first value, the first [`MAX_TAG_ROWS`] such tags.
pub fn tag_keys_of<'a>(
    tags: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Vec<[u8; 16]> {
    let mut keys: Vec<[u8; 16]> = tags
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .filter(|(name, _)| indexable_name(name))
        .take(MAX_TAG_ROWS)
        .map(|(name, value)| tag_key(name, value))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The distinct `event_tags` keys of a tags JSON array (an event's `tags_json`, or the text
/// of a jsonb `tags`); values are unescaped, so `\u0000` is matched as U+0000. Malformed
/// JSON yields no key.
pub fn tag_keys(tags_json: &str) -> Vec<[u8; 16]> {
    use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
    use std::borrow::Cow;
    // A tag's name and first value when the first value is a string; the rest skipped.
    struct Head(Option<(String, String)>);
    impl<'de> serde::Deserialize<'de> for Head {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Head, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Head;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a tag")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Head, A::Error> {
                    let name: Option<Cow<'de, str>> =
                        seq.next_element::<Loose>()?.and_then(|l| l.0);
                    let mut out = None;
                    if let Some(name) = name.filter(|n| indexable_name(n)) {
                        if let Some(Loose(Some(v))) = seq.next_element::<Loose>()? {
                            out = Some((name.into_owned(), v.into_owned()));
                        }
                    }
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(Head(out))
                }
                fn visit_unit<E>(self) -> Result<Head, E> {
                    Ok(Head(None))
                }
            }
            d.deserialize_any(V)
        }
    }
    // A string, or anything else (None).
    struct Loose<'de>(Option<Cow<'de, str>>);
    impl<'de> serde::Deserialize<'de> for Loose<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Loose<'de>, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Loose<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a value")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Loose<'de>, E> {
                    Ok(Loose(Some(Cow::Borrowed(v))))
                }
                fn visit_str<E>(self, v: &str) -> Result<Loose<'de>, E> {
                    Ok(Loose(Some(Cow::Owned(v.to_owned()))))
                }
                fn visit_string<E>(self, v: String) -> Result<Loose<'de>, E> {
                    Ok(Loose(Some(Cow::Owned(v))))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose<'de>, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(Loose(None))
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Loose<'de>, A::Error> {
                    while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(Loose(None))
                }
                fn visit_bool<E>(self, _: bool) -> Result<Loose<'de>, E> {
                    Ok(Loose(None))
                }
                fn visit_i64<E>(self, _: i64) -> Result<Loose<'de>, E> {
                    Ok(Loose(None))
                }
                fn visit_u64<E>(self, _: u64) -> Result<Loose<'de>, E> {
                    Ok(Loose(None))
                }
                fn visit_f64<E>(self, _: f64) -> Result<Loose<'de>, E> {
                    Ok(Loose(None))
                }
                fn visit_unit<E>(self) -> Result<Loose<'de>, E> {
                    Ok(Loose(None))
                }
            }
            d.deserialize_any(V)
        }
    }
    let heads: Vec<Head> = match serde_json::from_str(tags_json) {
        Ok(h) => h,
        Err(_) => return Vec::new(),
    };
    tag_keys_of(
        heads
            .iter()
            .filter_map(|h| h.0.as_ref())
            .map(|(n, v)| (n.as_str(), Some(v.as_str()))),
    )
}

/// One `event_tags` row per key of each event of a batch: (key, index of the event); none
/// when the tag index is off.
fn batch_tag_rows(events: &[Event], layout: Layout) -> Vec<([u8; 16], usize)> {
    let mut rows = Vec::new();
    if !layout.tag_index {
        return rows;
    }
    for (i, ev) in events.iter().enumerate() {
        rows.extend(tag_keys(&ev.tags_json).into_iter().map(|k| (k, i)));
    }
    // In index order: consecutive inserts then walk the btree's leaves in one direction and
    // share the hot keys' pages (7–9 % less PostgreSQL time for the index in a SQL
    // experiment, BENCHMARKS.md "Where the cost is").
    rows.sort_unstable_by(|a, b| {
        (a.0, events[a.1].created_at, events[a.1].id).cmp(&(
            b.0,
            events[b.1].created_at,
            events[b.1].id,
        ))
    });
    rows
}

const TAG_TYPES: [Type; 4] = [Type::BYTEA, Type::INT8, Type::BYTEA, Type::INT4];

/// COPYs tag-index rows into `table` (`event_tags` or its staging copy).
async fn copy_tags(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    events: &[Event],
    rows: &[([u8; 16], usize)],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!(
            "COPY {table} (tag, created_at, event_id, kind) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let w = BinaryCopyInWriter::new(sink, &TAG_TYPES);
    tokio::pin!(w);
    for (key, i) in rows {
        let ev = &events[*i];
        let kind = i32::from(ev.kind);
        w.as_mut()
            .write(&[&&key[..], &ev.created_at, &&ev.id[..], &kind])
            .await?;
    }
    w.finish().await
}

const CREATE_STAGING: &str = "\
CREATE TEMP TABLE bb_stage_events (id bytea, pubkey bytea, created_at int8, kind int4, tags jsonb, content text, sig bytea, raw_canonical text) ON COMMIT DROP;
CREATE TEMP TABLE bb_stage_sightings (event_id bytea, relay_url text, seen_at int8, created_at int8) ON COMMIT DROP;
CREATE TEMP TABLE bb_stage_tags (tag bytea, created_at int8, event_id bytea, kind int4) ON COMMIT DROP;";

const EVENT_TYPES: [Type; 8] = [
    Type::BYTEA,
    Type::BYTEA,
    Type::INT8,
    Type::INT4,
    Type::JSONB,
    Type::TEXT,
    Type::BYTEA,
    Type::TEXT,
];
const SIGHTING_TYPES: [Type; 4] = [Type::BYTEA, Type::TEXT, Type::INT8, Type::INT8];

async fn copy_event(
    w: std::pin::Pin<&mut BinaryCopyInWriter>,
    ev: &Event,
    layout: Layout,
    scratch: &mut Vec<u8>,
) -> Result<(), tokio_postgres::Error> {
    let kind = i32::from(ev.kind);
    if !layout.bodies {
        w.write(&[
            &&ev.id[..],
            &&ev.pubkey[..],
            &ev.created_at,
            &kind,
            &None::<Jsonb<'_>>,
            &None::<&str>,
            &None::<&[u8]>,
            &None::<&str>,
        ])
        .await
    } else if ev.has_nul() {
        // Stored losslessly: the exact canonical serialization (NUL escaped as \u0000, so it
        // is valid text) next to a queryable copy with U+0000 replaced.
        ev.canonical_into(scratch);
        let canonical = String::from_utf8_lossy(scratch).into_owned();
        let content = ev.content.replace('\0', "\u{FFFD}");
        let tags = strip_nul_json(&ev.tags_json);
        w.write(&[
            &&ev.id[..],
            &&ev.pubkey[..],
            &ev.created_at,
            &kind,
            &Jsonb(&tags),
            &content,
            &&ev.sig[..],
            &Some(canonical),
        ])
        .await
    } else {
        w.write(&[
            &&ev.id[..],
            &&ev.pubkey[..],
            &ev.created_at,
            &kind,
            &Jsonb(&ev.tags_json),
            &&*ev.content,
            &&ev.sig[..],
            &None::<&str>,
        ])
        .await
    }
}

/// COPYs a batch straight into `events` and `events_relays`: PostgreSQL's multi-row insert
/// path, about a third cheaper than staging + `INSERT … SELECT`, but only possible when none of
/// the rows exist yet. Returns (new events, new sightings).
async fn copy_direct(
    tx: &tokio_postgres::Transaction<'_>,
    batch: &Batch,
    layout: Layout,
) -> Result<(u64, u64), tokio_postgres::Error> {
    let mut scratch = Vec::new();
    let mut events = 0;
    if !batch.events.is_empty() {
        let sink = tx
            .copy_in(
                "COPY events (id, pubkey, created_at, kind, tags, content, sig, raw_canonical) \
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let w = BinaryCopyInWriter::new(sink, &EVENT_TYPES);
        tokio::pin!(w);
        for ev in &batch.events {
            copy_event(w.as_mut(), ev, layout, &mut scratch).await?;
        }
        events = w.finish().await?;
        // Every event is new here (else the COPY above failed): all their tags are too.
        let tags = batch_tag_rows(&batch.events, layout);
        if !tags.is_empty() {
            copy_tags(tx, "event_tags", &batch.events, &tags).await?;
        }
    }
    // A relay that sends an event twice puts the same sighting twice in a batch.
    let mut pairs: HashSet<([u8; 32], usize)> = HashSet::with_capacity(batch.sightings.len());
    let sink = tx
        .copy_in("COPY events_relays (event_id, relay_url, seen_at, created_at) FROM STDIN (FORMAT binary)")
        .await?;
    let w = BinaryCopyInWriter::new(sink, &SIGHTING_TYPES);
    tokio::pin!(w);
    for s in &batch.sightings {
        if pairs.insert((s.id, Arc::as_ptr(&s.ticket.relay) as usize)) {
            w.as_mut()
                .write(&[
                    &&s.id[..],
                    &s.ticket.relay.url.as_str(),
                    &s.seen_at,
                    &s.created_at,
                ])
                .await?;
        }
    }
    let sightings = w.finish().await?;
    Ok((events, sightings))
}

/// How a batch was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// COPY straight into the tables.
    Direct,
    /// COPY into staging tables, then `INSERT … ON CONFLICT DO NOTHING`.
    Staged,
}

/// Writes one batch in one transaction, trying the direct COPY first when `try_direct`: if a
/// row already exists (a re-sync, a restart, another writer), the attempt is rolled back to a
/// savepoint and the batch goes through staging, where duplicates are absorbed. Returns (new
/// events, new sightings, the mode that succeeded).
pub async fn write_batch_adaptive(
    client: &mut tokio_postgres::Client,
    batch: &Batch,
    layout: Layout,
    try_direct: bool,
) -> Result<(u64, u64, WriteMode), tokio_postgres::Error> {
    if try_direct {
        let tx = client.transaction().await?;
        tx.batch_execute("SAVEPOINT bb_direct").await?;
        match copy_direct(&tx, batch, layout).await {
            Ok((e, s)) => {
                tx.commit().await?;
                return Ok((e, s, WriteMode::Direct));
            }
            Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT bb_direct").await?;
                let (e, s) = write_staged(&tx, batch, layout).await?;
                tx.commit().await?;
                return Ok((e, s, WriteMode::Staged));
            }
            Err(err) => return Err(err),
        }
    }
    let (e, s) = write_batch(client, batch, layout).await?;
    Ok((e, s, WriteMode::Staged))
}

/// Writes one batch in one transaction through staging tables and
/// `INSERT … ON CONFLICT DO NOTHING`; returns (new events, new sightings).
pub async fn write_batch(
    client: &mut tokio_postgres::Client,
    batch: &Batch,
    layout: Layout,
) -> Result<(u64, u64), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let r = write_staged(&tx, batch, layout).await?;
    tx.commit().await?;
    Ok(r)
}

async fn write_staged(
    tx: &tokio_postgres::Transaction<'_>,
    batch: &Batch,
    layout: Layout,
) -> Result<(u64, u64), tokio_postgres::Error> {
    tx.batch_execute(CREATE_STAGING).await?;
    let mut scratch = Vec::new();
    if !batch.events.is_empty() {
        let sink = tx
            .copy_in("COPY bb_stage_events FROM STDIN (FORMAT binary)")
            .await?;
        let w = BinaryCopyInWriter::new(sink, &EVENT_TYPES);
        tokio::pin!(w);
        for ev in &batch.events {
            copy_event(w.as_mut(), ev, layout, &mut scratch).await?;
        }
        w.finish().await?;
    }
    let tags = batch_tag_rows(&batch.events, layout);
    if !tags.is_empty() {
        copy_tags(tx, "bb_stage_tags", &batch.events, &tags).await?;
    }
    let sink = tx
        .copy_in("COPY bb_stage_sightings FROM STDIN (FORMAT binary)")
        .await?;
    let w = BinaryCopyInWriter::new(sink, &SIGHTING_TYPES);
    tokio::pin!(w);
    for s in &batch.sightings {
        w.as_mut()
            .write(&[
                &&s.id[..],
                &s.ticket.relay.url.as_str(),
                &s.seen_at,
                &s.created_at,
            ])
            .await?;
    }
    w.finish().await?;
    let events = if batch.events.is_empty() {
        0
    } else if tags.is_empty() {
        tx.execute(
            "INSERT INTO events (id, pubkey, created_at, kind, tags, content, sig, raw_canonical) \
             SELECT id, pubkey, created_at, kind, tags, content, sig, raw_canonical FROM bb_stage_events \
             ON CONFLICT (id) DO NOTHING",
            &[],
        )
        .await?
    } else {
        // Only the events this statement inserts get their tags indexed: an event already
        // there has its rows (from the writer that inserted it, or the backfill).
        let row = tx
            .query_one(
                "WITH ins AS ( \
                     INSERT INTO events (id, pubkey, created_at, kind, tags, content, sig, raw_canonical) \
                     SELECT id, pubkey, created_at, kind, tags, content, sig, raw_canonical FROM bb_stage_events \
                     ON CONFLICT (id) DO NOTHING RETURNING id), \
                 tg AS ( \
                     INSERT INTO event_tags (tag, created_at, event_id, kind) \
                     SELECT s.tag, s.created_at, s.event_id, s.kind FROM bb_stage_tags AS s \
                     JOIN ins ON ins.id = s.event_id \
                     ON CONFLICT DO NOTHING) \
                 SELECT count(*) FROM ins",
                &[],
            )
            .await?;
        row.get::<_, i64>(0) as u64
    };
    let sightings = tx
        .execute(
            "INSERT INTO events_relays (event_id, relay_url, seen_at, created_at) \
             SELECT event_id, relay_url, seen_at, created_at FROM bb_stage_sightings \
             ON CONFLICT (event_id, relay_url) DO NOTHING",
            &[],
        )
        .await?;
    Ok((events, sightings))
}

/// Persists a relay's committed cursor state. Under a fleet lease (`relay.fence` set), only
/// while the lease still carries that epoch: returns false, writing nothing, once another
/// worker has taken the relay over.
pub async fn write_cursor(
    client: &tokio_postgres::Client,
    relay: &Relay,
    state: &crate::model::CursorState,
) -> Result<bool, tokio_postgres::Error> {
    let payload = serde_json::to_value(state).unwrap_or(serde_json::Value::Null);
    let fence = relay.fence.load(Relaxed);
    // Unnamed (typed) statements, so a transaction-mode PgBouncer cannot split their prepare
    // and execute across server connections.
    if fence == 0 {
        client
            .execute_typed(
                "INSERT INTO service_state (service_name, state_key, payload, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (service_name, state_key) \
                 DO UPDATE SET payload = EXCLUDED.payload, updated_at = EXCLUDED.updated_at",
                &[
                    (&CURSOR_SERVICE, Type::TEXT),
                    (&relay.url.as_str(), Type::TEXT),
                    (&payload, Type::JSONB),
                    (&now_secs(), Type::INT8),
                ],
            )
            .await?;
        return Ok(true);
    }
    // The lease row is share-locked for the statement: a takeover waits for this write to
    // commit, or this write sees the new epoch and writes nothing.
    let n = client
        .execute_typed(
            "INSERT INTO service_state (service_name, state_key, payload, updated_at) \
             SELECT $1, $2, $3, $4 WHERE EXISTS ( \
                 SELECT 1 FROM fleet_leases \
                 WHERE kind = 'relay' AND key = $2 AND epoch = $5 FOR SHARE) \
             ON CONFLICT (service_name, state_key) \
             DO UPDATE SET payload = EXCLUDED.payload, updated_at = EXCLUDED.updated_at",
            &[
                (&CURSOR_SERVICE, Type::TEXT),
                (&relay.url.as_str(), Type::TEXT),
                (&payload, Type::JSONB),
                (&now_secs(), Type::INT8),
                (&fence, Type::INT8),
            ],
        )
        .await?;
    Ok(n > 0)
}

/// Acknowledges every sighting of a committed batch; returns the relays it touched.
fn acknowledge(batch: &Batch) -> Vec<Relay> {
    let mut touched: HashMap<*const crate::model::RelayCtx, Relay> = HashMap::new();
    let mut run: Option<(&Relay, u64, u64)> = None;
    for s in &batch.sightings {
        match &mut run {
            Some((r, e, n)) if Arc::ptr_eq(r, &s.ticket.relay) && *e == s.ticket.epoch => *n += 1,
            _ => {
                if let Some((r, e, n)) = run.take() {
                    r.progress.complete(e, n);
                    r.stats.committed.fetch_add(n, Relaxed);
                }
                touched
                    .entry(Arc::as_ptr(&s.ticket.relay))
                    .or_insert_with(|| s.ticket.relay.clone());
                run = Some((&s.ticket.relay, s.ticket.epoch, 1));
            }
        }
    }
    if let Some((r, e, n)) = run {
        r.progress.complete(e, n);
        r.stats.committed.fetch_add(n, Relaxed);
    }
    touched.into_values().collect()
}

type Conn<'a> =
    bb8::PooledConnection<'a, bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>>;

async fn flush_cursors(pool: &Pool, relays: &[Relay], stats: &SinkStats) {
    for relay in relays {
        let Some(state) = relay.progress.take_dirty() else {
            continue;
        };
        let mut delay = Duration::from_millis(100);
        loop {
            let res = match pool.get().await {
                Ok(c) => write_cursor(&c, relay, &state)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match res {
                Ok(true) => {
                    stats.cursor_writes.fetch_add(1, Relaxed);
                    break;
                }
                Ok(false) => {
                    // Not ours any more: the worker that holds the lease now writes it.
                    stats.cursor_fenced.fetch_add(1, Relaxed);
                    tracing::warn!(relay = %relay.url, "cursor not written: the relay's lease moved to another worker");
                    break;
                }
                Err(e) => {
                    tracing::warn!(relay = %relay.url, error = %e, "cursor write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// The events of each committed batch, for live subscribers (the relay endpoint streams them
/// after EOSE). A batch is sent only while someone subscribes, so the feed costs nothing
/// otherwise; a subscriber that falls behind the channel's capacity is told it lagged (tokio's
/// broadcast), never blocks the sink. Events a staged batch found already archived are sent
/// too (a re-sync's overlap): a subscriber may see an id twice, never a forged one.
pub type Committed = tokio::sync::broadcast::Sender<Arc<[Event]>>;

/// Runs until the batch channel closes: writes batches on up to `writers` connections at once,
/// acknowledges each after its commit, persists cursors (also those moved by rejections
/// upstream, announced on `cursors`).
///
/// Several writers let PostgreSQL work on more than one core: one transaction at a time keeps
/// a single backend busy while the engine waits. Commits may land out of order; that is safe
/// because a relay's progress counts completed events per window and a cursor moves only past
/// windows that are complete. Cursor rows are written from this loop alone, so a relay's
/// persisted position never goes back.
pub async fn run(
    pool: Pool,
    input: flume::Receiver<Batch>,
    cursors: flume::Receiver<Relay>,
    stats: Arc<SinkStats>,
    writers: usize,
    layout: Layout,
    committed: Committed,
) {
    let writers = writers.max(1);
    let mut input_open = true;
    // After a fallback, the next batches likely overlap the archive too (a re-sync): they go
    // straight to staging for a while before the direct path is tried again.
    let mut staged_for = 0u32;
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    while input_open || !in_flight.is_empty() {
        tokio::select! {
            b = input.recv_async(), if input_open && in_flight.len() < writers => match b {
                Ok(batch) => {
                    let (pool, stats) = (pool.clone(), stats.clone());
                    let try_direct = staged_for == 0;
                    staged_for = staged_for.saturating_sub(1);
                    in_flight.push(async move {
                        let mode = commit_with_retry(&pool, &batch, layout, &stats, try_direct).await;
                        (batch, try_direct && mode == WriteMode::Staged)
                    });
                }
                Err(_) => input_open = false,
            },
            Some((batch, fell_back)) = futures_util::StreamExt::next(&mut in_flight) => {
                if fell_back {
                    staged_for = STAGED_AFTER_FALLBACK;
                }
                if committed.receiver_count() > 0 && !batch.events.is_empty() {
                    let _ = committed.send(batch.events.clone().into());
                }
                let touched = acknowledge(&batch);
                flush_cursors(&pool, &touched, &stats).await;
            }
            Ok(relay) = cursors.recv_async() => {
                flush_cursors(&pool, &[relay], &stats).await;
            }
        }
    }
    let rest: Vec<Relay> = cursors.drain().collect();
    flush_cursors(&pool, &rest, &stats).await;
}

/// Batches sent to staging after a direct attempt fell back.
const STAGED_AFTER_FALLBACK: u32 = 16;

async fn commit_with_retry(
    pool: &Pool,
    batch: &Batch,
    layout: Layout,
    stats: &SinkStats,
    try_direct: bool,
) -> WriteMode {
    let mut delay = Duration::from_millis(100);
    loop {
        let t = Instant::now();
        let res = match pool.get().await {
            Ok(mut c) => {
                let c: &mut Conn<'_> = &mut c;
                write_batch_adaptive(c, batch, layout, try_direct)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok((events, sightings, mode)) => {
                match (try_direct, mode) {
                    (_, WriteMode::Direct) => stats.direct_batches.fetch_add(1, Relaxed),
                    (true, WriteMode::Staged) => stats.fallbacks.fetch_add(1, Relaxed),
                    (false, WriteMode::Staged) => 0,
                };
                stats
                    .write_ns
                    .fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
                stats.batches.fetch_add(1, Relaxed);
                stats.events_inserted.fetch_add(events, Relaxed);
                stats.sightings_inserted.fetch_add(sightings, Relaxed);
                stats.rows.fetch_add(batch.rows() as u64, Relaxed);
                return mode;
            }
            Err(e) => {
                stats.retries.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, rows = batch.rows(), "batch write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
