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
}

impl Conditions<'_> {
    /// Appends ` AND <condition>` to `sql` for each condition, its values to `params`.
    pub fn append_to(self, sql: &mut String, params: &mut SqlParams) {
        if let Some(ids) = self.ids {
            let n = push(Box::new(ids), params);
            sql.push_str(&format!(" AND e.id = ANY(${n})"));
        }
        if let Some(authors) = self.authors {
            let n = push(Box::new(authors), params);
            sql.push_str(&format!(" AND e.pubkey = ANY(${n})"));
        }
        if let Some(kinds) = self.kinds {
            let n = push(Box::new(kinds), params);
            sql.push_str(&format!(" AND e.kind = ANY(${n})"));
        }
        if let Some(v) = self.since {
            let n = push(Box::new(v), params);
            sql.push_str(&format!(" AND e.created_at >= ${n}"));
        }
        if let Some(v) = self.until {
            let n = push(Box::new(v), params);
            sql.push_str(&format!(" AND e.created_at <= ${n}"));
        }
        for (letter, values) in self.tags {
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
    }
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
            let text: String = r.try_get(4)?;
            let tags = serde_json::from_str(&text).map_err(|_| StoredError::Malformed("tags"))?;
            Ok((tags, r.try_get(5)?))
        }
    }
}
