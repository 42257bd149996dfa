//! NIP-01 events in SQL, shared by the REST API and the DVM: filters as conditions over
//! `events AS e`, and stored rows read back as the signed tags and content.

use bigbrotr_stages::model::canonical::write_json_str;
use tokio_postgres::types::ToSql;

/// SQL parameters of a dynamic query, boxed.
pub type SqlParams = Vec<Box<dyn ToSql + Sync + Send>>;

/// Appends a parameter; returns its `$n` number.
pub fn push(p: Box<dyn ToSql + Sync + Send>, params: &mut SqlParams) -> usize {
    params.push(p);
    params.len()
}

/// The parameters as `query` takes them.
pub fn refs(params: &SqlParams) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// The conditions of a NIP-01 filter. `None` sets no condition; `Some` of an empty list
/// matches no event (callers decide which an absent or empty list means to them).
#[derive(Debug, Default)]
pub struct Conditions<'a> {
    /// Event ids (32 bytes each).
    pub ids: Option<Vec<Vec<u8>>>,
    /// Author keys (32 bytes each).
    pub authors: Option<Vec<Vec<u8>>>,
    /// Kinds.
    pub kinds: Option<Vec<i32>>,
    /// Oldest created_at, inclusive.
    pub since: Option<i64>,
    /// Newest created_at, inclusive.
    pub until: Option<i64>,
    /// `#<letter>` filters: (letter, accepted first values).
    pub tags: Vec<(String, &'a [String])>,
    /// Only events strictly before this (created_at, id) in newest-first, id-descending
    /// order (a page cursor).
    pub before: Option<(i64, Vec<u8>)>,
    /// Answer tag filters from `event_tags` (true once [`tag_index_ready`]); else by scanning
    /// each candidate's tags.
    pub tag_index: bool,
    /// At most this many events are wanted, newest first (`None`: all, as a count wants):
    /// lets a few authors be read each from its own index range, at most this many each.
    pub limit: Option<i64>,
}

/// Up to this many authors (and no ids or tag index to drive) are read author by author.
const AUTHORS_ONE_BY_ONE: usize = 20;

/// The query's source and conditions: `SELECT … FROM {from} WHERE TRUE{conditions}`. The
/// rows are `events AS e`; order them by `e.created_at DESC, e.id …`.
#[derive(Debug)]
pub struct FilterSql {
    /// The FROM clause.
    pub from: String,
    /// ` AND <condition>` for each condition.
    pub conditions: String,
    /// The newest-first order (`<created_at> DESC, <id> DESC`) in the columns of the table
    /// that drives the query, so that a tag index range scan serves `ORDER BY … LIMIT`.
    pub order: &'static str,
}

/// Whether `event_tags` covers every event (the backfill of migration 013 has finished).
/// Any error (an archive without the table) reads as not ready.
pub async fn tag_index_ready(client: &tokio_postgres::Client) -> bool {
    client
        .query_opt(
            "SELECT (payload->>'done')::boolean FROM service_state \
             WHERE service_name = 'tag_index' AND state_key = ''",
            &[],
        )
        .await
        .ok()
        .flatten()
        .and_then(|r| r.try_get::<_, Option<bool>>(0).ok().flatten())
        .unwrap_or(false)
}

/// How long a [`TagIndexReady`] answer is trusted: the flag changes once when the backfill
/// ends, or when another process of a fleet turns the index off and on again.
const TAG_INDEX_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// [`tag_index_ready`] asked at most once per [`TAG_INDEX_RECHECK`] by a server: asked on
/// every request it was one more round trip and query per answer (measured in the REST
/// bench with 50 clients, where each millisecond of CPU is queueing for the others).
#[derive(Debug, Default)]
pub struct TagIndexReady {
    last: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

impl TagIndexReady {
    /// Whether tag filters may use `event_tags` now (see [`tag_index_ready`]).
    pub async fn get(&self, client: &tokio_postgres::Client) -> bool {
        let cached = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, ready)) = cached {
            if at.elapsed() < TAG_INDEX_RECHECK {
                return ready;
            }
        }
        let ready = tag_index_ready(client).await;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), ready));
        ready
    }
}

/// The distinct `event_tags` keys of a tag filter's values.
fn filter_keys(letter: &str, values: &[String]) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = values
        .iter()
        .map(|v| bigbrotr_stages::sink::tag_key(letter, v).to_vec())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl Conditions<'_> {
    /// Appends ` AND <condition>` to `sql` for each condition, its values to `params`, over
    /// `events AS e` (tag filters scan the tags whatever `tag_index` says).
    pub fn append_to(mut self, sql: &mut String, params: &mut SqlParams) {
        self.tag_index = false;
        let f = self.build(params);
        sql.push_str(&f.conditions);
    }

    /// The FROM clause and conditions of the filter, its values appended to `params`.
    ///
    /// With `tag_index`, the tag filter with the fewest values drives the query: its
    /// `event_tags` rows are read newest first from the (tag, created_at, event_id) index
    /// (one ordered range per value, merged; an event matching several values once) and
    /// joined to `events`, so `ORDER BY e.created_at DESC … LIMIT n` stops after about n
    /// index entries when the other conditions hold; the other tag filters are index probes.
    pub fn build(self, params: &mut SqlParams) -> FilterSql {
        let mut from = String::from("events AS e");
        let mut sql = String::new();
        // The tag filter that drives, by fewest values.
        let driver = if self.tag_index {
            self.tags
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, v))| v.len())
                .map(|(i, _)| i)
        } else {
            None
        };
        // The created_at / id columns range conditions go to: the driver's, when one drives.
        let (ts, id) = match driver {
            Some(_) => ("t.created_at", "t.event_id"),
            None => ("e.created_at", "e.id"),
        };
        if let Some(d) = driver {
            let (letter, values) = &self.tags[d];
            let keys = filter_keys(letter, values);
            match keys.len() {
                0 => {
                    // Nothing can match; `t` still names the columns the ranges use.
                    from = "event_tags AS t JOIN events AS e ON e.id = t.event_id".into();
                    sql.push_str(" AND FALSE");
                }
                1 => {
                    let k = push(Box::new(keys[0].clone()), params);
                    // Joined on the id alone: adding `created_at` (equal by construction)
                    // makes PostgreSQL multiply the two selectivities, expect one row, and
                    // sort every match of a hot value instead of reading the index in order.
                    from = "event_tags AS t JOIN events AS e ON e.id = t.event_id".into();
                    sql.push_str(&format!(" AND t.tag = ${k}"));
                    if let Some(kinds) = &self.kinds {
                        let n = push(Box::new(kinds.clone()), params);
                        sql.push_str(&format!(" AND t.kind = ANY(${n})"));
                    }
                }
                _ => {
                    let kinds = self
                        .kinds
                        .as_ref()
                        .map(|k| push(Box::new(k.clone()), params));
                    let branches: Vec<String> = keys
                        .into_iter()
                        .map(|k| {
                            let n = push(Box::new(k), params);
                            let by_kind = kinds
                                .map(|m| format!(" AND kind = ANY(${m})"))
                                .unwrap_or_default();
                            format!(
                                "SELECT created_at, event_id FROM event_tags \
                                 WHERE tag = ${n}{by_kind}"
                            )
                        })
                        .collect();
                    from = format!(
                        "(SELECT DISTINCT ON (u.created_at, u.event_id) u.created_at, u.event_id \
                          FROM ({}) AS u ORDER BY u.created_at DESC, u.event_id DESC) AS t \
                         JOIN events AS e ON e.id = t.event_id",
                        branches.join(" UNION ALL ")
                    );
                }
            }
        }
        let has_ids = self.ids.is_some();
        if let Some(ids) = self.ids {
            let n = push(Box::new(ids), params);
            sql.push_str(&format!(" AND e.id = ANY(${n})"));
        }
        // One author or one kind is compared with `=`, not `= ANY(…)`: PostgreSQL 15 reads a
        // btree in order only for `=`, so an author's newest events come from (pubkey,
        // created_at) with an incremental sort on the id, where `= ANY` made it scan the
        // newest-first index of all events and filter (an author with 0.24 % of 5M events:
        // 38,754 rows read, 185 ms cold, up to 2.3 s under load; now ~101 rows).
        // A few authors: each one's newest events from (pubkey, created_at) in order, at most
        // `limit` each, then merged. As one `pubkey = ANY(…)` PostgreSQL read every event of
        // those authors and sorted them (3 prolific authors on 5M events: 19,263 rows, 63 ms
        // warm and more each day) or walked the newest-first index of all events.
        let mut one_by_one = None;
        if let Some(mut authors) = self.authors {
            authors.sort_unstable();
            authors.dedup();
            if driver.is_none() && !has_ids && (2..=AUTHORS_ONE_BY_ONE).contains(&authors.len()) {
                one_by_one = Some(push(Box::new(authors), params));
            } else {
                sql.push_str(&equal_or_any("e.pubkey", authors, params));
            }
        }
        if let Some(kinds) = self.kinds {
            sql.push_str(&equal_or_any("e.kind", kinds, params));
        }
        if let Some(v) = self.since {
            let n = push(Box::new(v), params);
            sql.push_str(&format!(" AND {ts} >= ${n}"));
        }
        if let Some(v) = self.until {
            let n = push(Box::new(v), params);
            sql.push_str(&format!(" AND {ts} <= ${n}"));
        }
        if let Some((t, i)) = self.before {
            let a = push(Box::new(t), params);
            let b = push(Box::new(i), params);
            sql.push_str(&format!(" AND ({ts}, {id}) < (${a}, ${b})"));
        }
        for (i, (letter, values)) in self.tags.into_iter().enumerate() {
            if Some(i) == driver {
                continue;
            }
            if self.tag_index {
                let keys = filter_keys(&letter, values);
                let n = push(Box::new(keys), params);
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM event_tags AS x WHERE x.tag = ANY(${n}) \
                      AND x.created_at = e.created_at AND x.event_id = e.id)"
                ));
                continue;
            }
            // NIP-01 matches a tag's first value only, whatever follows it (relay hints,
            // markers). Rows with raw_canonical hold tags whose U+0000 was replaced in the
            // jsonb copy: those are matched exactly in the canonical text instead, where a
            // tag starting with this letter and value reads `["<letter>","<value>"` followed
            // by `,` or `]` (a `["` never occurs inside a canonical string: quotes are escaped).
            let plain: Vec<String> = values
                .iter()
                .filter(|v| !v.contains('\0'))
                .cloned()
                .collect();
            let prefixes: Vec<String> = values
                .iter()
                .map(|v| canonical_tag_prefix(&letter, v))
                .collect();
            let a = push(Box::new(letter), params);
            let b = push(Box::new(plain), params);
            let c = push(Box::new(prefixes), params);
            sql.push_str(&format!(
                " AND CASE WHEN e.raw_canonical IS NULL
                      THEN EXISTS (SELECT 1 FROM jsonb_array_elements(e.tags) AS t
                                   WHERE t->>0 = ${a} AND t->>1 = ANY(${b}))
                      ELSE EXISTS (SELECT 1 FROM unnest(${c}::text[]) AS p
                                   WHERE strpos(e.raw_canonical, p || ',') > 0
                                      OR strpos(e.raw_canonical, p || ']') > 0)
                  END"
            ));
        }
        if let Some(a) = one_by_one {
            // Without a limit (a count) nothing is cut, so nothing needs ordering.
            let each = self
                .limit
                .map(|l| {
                    let n = push(Box::new(l), params);
                    format!(" ORDER BY e.created_at DESC, e.id DESC LIMIT ${n}")
                })
                .unwrap_or_default();
            from = format!(
                "unnest(${a}::bytea[]) AS a (pk) CROSS JOIN LATERAL \
                 (SELECT e.* FROM events AS e WHERE e.pubkey = a.pk{sql}{each}) AS e"
            );
            sql = String::new();
        }
        FilterSql {
            from,
            conditions: sql,
            order: match driver {
                Some(_) => "t.created_at DESC, t.event_id DESC",
                None => "e.created_at DESC, e.id DESC",
            },
        }
    }
}

/// ` AND <column> = $n` for one value, else ` AND <column> = ANY($n)`.
fn equal_or_any<T>(column: &str, mut values: Vec<T>, params: &mut SqlParams) -> String
where
    T: ToSql + Sync + Send + 'static,
    Vec<T>: ToSql + Sync + Send,
{
    if values.len() == 1 {
        if let Some(one) = values.pop() {
            let n = push(Box::new(one), params);
            return format!(" AND {column} = ${n}");
        }
    }
    let n = push(Box::new(values), params);
    format!(" AND {column} = ANY(${n})")
}

/// The start of a tag `[letter, value, ...]` in NIP-01 canonical JSON, without the
/// character that follows the value (`,` or `]`).
pub fn canonical_tag_prefix(letter: &str, value: &str) -> String {
    let mut out = vec![b'['];
    write_json_str(&mut out, letter);
    out.push(b',');
    write_json_str(&mut out, value);
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a stored event could not be read back.
#[derive(Debug)]
pub enum StoredError {
    /// The database (a column missing or of another type).
    Db(tokio_postgres::Error),
    /// The stored text does not parse: which column.
    Malformed(&'static str),
    /// The row has no tags, content or signature: a metadata-only archive (`[archive]
    /// bodies = false`).
    NoBody,
}

impl From<tokio_postgres::Error> for StoredError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoredError::Db(e)
    }
}

/// Tags and content of an `events` row selected as `id, pubkey, created_at, kind, tags::text,
/// content, sig, raw_canonical`. Rows with `raw_canonical` hold content or tags with U+0000
/// that `text`/`jsonb` could not: those come from the canonical text, so they are exactly the
/// signed ones.
pub fn stored_tags_and_content(
    r: &tokio_postgres::Row,
) -> Result<(Vec<Vec<String>>, String), StoredError> {
    use serde::de::IgnoredAny;
    type Canonical = (
        IgnoredAny,
        IgnoredAny,
        IgnoredAny,
        IgnoredAny,
        Vec<Vec<String>>,
        String,
    );
    match r.try_get::<_, Option<String>>(7)? {
        Some(canonical) => {
            let (_, _, _, _, tags, content): Canonical = serde_json::from_str(&canonical)
                .map_err(|_| StoredError::Malformed("raw_canonical"))?;
            Ok((tags, content))
        }
        None => {
            let Some(text) = r.try_get::<_, Option<String>>(4)? else {
                return Err(StoredError::NoBody);
            };
            let tags = serde_json::from_str(&text).map_err(|_| StoredError::Malformed("tags"))?;
            Ok((tags, r.try_get(5)?))
        }
    }
}
