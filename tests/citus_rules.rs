//! The migrated schema against Citus's rules for distributed tables (docs/SCALING.md), read
//! from the catalog of a real migrated database: Citus cannot be installed here, so the rules
//! it would enforce at `create_distributed_table` / `create_reference_table` are checked
//! directly. A new migration that breaks one fails here, naming the table and the rule.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};

/// Hash-distributed tables and their distribution column (one co-location group).
const DISTRIBUTED: [(&str, &str); 3] = [
    ("events", "id"),
    ("events_relays", "event_id"),
    ("event_tags", "event_id"),
];

/// Small, read-mostly tables replicated to every node.
const REFERENCE: [&str; 4] = ["relays", "nip11", "nip66", "relay_metadata"];

/// Tables that stay on the coordinator (summaries written by one refresher, the finder's and
/// the fleet's bookkeeping, the migrations' own record).
const COORDINATOR: [&str; 18] = [
    "schema_migrations",
    "service_state",
    "candidates",
    "analytics_state",
    "analytics_kinds",
    "analytics_pubkeys",
    "analytics_kind_pubkeys",
    "analytics_minutes",
    "analytics_hours",
    "analytics_relays",
    "analytics_relay_checks",
    "analytics_kind_relays",
    "analytics_pubkey_relays",
    "analytics_seq_marks",
    "analytics_early_sightings",
    "fleet_workers",
    "fleet_leases",
    "fleet_lease_history",
];

/// Statement triggers on distributed and reference tables that docs/SCALING.md replaces
/// under Citus (the analytics refresher's transaction-id capture).
const DOCUMENTED_TRIGGERS: [&str; 3] = [
    "events_analytics_take_xid",
    "events_relays_analytics_take_xid",
    "relay_metadata_analytics_take_xid",
];

async fn tables(c: &tokio_postgres::Client) -> BTreeSet<String> {
    c.query(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')",
        &[],
    )
    .await
    .expect("tables")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn every_table_is_classified_for_citus() {
    let (pool, _) = test_db().await;
    let c = pool.get().await.expect("conn");
    let all = tables(&c).await;
    let known: BTreeSet<String> = DISTRIBUTED
        .iter()
        .map(|(t, _)| *t)
        .chain(REFERENCE)
        .chain(COORDINATOR)
        .map(String::from)
        .collect();
    let unclassified: Vec<&String> = all.difference(&known).collect();
    assert!(
        unclassified.is_empty(),
        "tables without a place in docs/SCALING.md (distributed, reference or coordinator): {unclassified:?}"
    );
    for (t, _) in DISTRIBUTED {
        assert!(all.contains(t), "distributed table {t} exists");
    }
    for t in REFERENCE {
        assert!(all.contains(t), "reference table {t} exists");
    }
}

#[tokio::test]
async fn unique_indexes_of_distributed_tables_include_the_distribution_column() {
    let (pool, _) = test_db().await;
    let c = pool.get().await.expect("conn");
    let mut checked = 0;
    for (table, col) in DISTRIBUTED {
        let rows = c
            .query(
                "SELECT i.relname,
                        ARRAY(SELECT a.attname::text FROM unnest(x.indkey) AS k(n)
                              JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n),
                        x.indisprimary, x.indexprs IS NOT NULL
                 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                 WHERE x.indrelid = $1::text::regclass AND x.indisunique",
                &[&table],
            )
            .await
            .expect("indexes");
        for r in rows {
            let (name, cols, _pk, expr): (String, Vec<String>, bool, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            assert!(
                cols.iter().any(|c| c == col),
                "unique index {name} on {table} ({cols:?}) lacks the distribution column {col}: Citus refuses it"
            );
            assert!(!expr, "unique index {name} on {table} is on an expression");
            checked += 1;
        }
        // Exclusion constraints must also include it; none exist.
        let excl: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = $1::text::regclass AND contype = 'x'",
                &[&table],
            )
            .await
            .expect("exclusion")
            .get(0);
        assert_eq!(excl, 0, "exclusion constraint on {table}");
    }
    assert!(
        checked >= 3,
        "the primary keys and the tag index were checked ({checked})"
    );
}

#[tokio::test]
async fn distribution_columns_are_hashable_and_co_located() {
    let (pool, _) = test_db().await;
    let c = pool.get().await.expect("conn");
    let mut types = BTreeSet::new();
    for (table, col) in DISTRIBUTED {
        let r = c
            .query_one(
                "SELECT a.atttypid::regtype::text, a.attnotnull,
                        EXISTS (SELECT 1 FROM pg_opclass o JOIN pg_am m ON m.oid = o.opcmethod
                                WHERE m.amname = 'hash' AND o.opcintype = a.atttypid AND o.opcdefault)
                 FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attname = $2",
                &[&table, &col],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}.{col}: {e}"));
        let (ty, not_null, hashable): (String, bool, bool) = (r.get(0), r.get(1), r.get(2));
        assert!(
            hashable,
            "{table}.{col} ({ty}) has no default hash operator class"
        );
        assert!(not_null, "{table}.{col} may be NULL: a row without a shard");
        types.insert(ty);
    }
    assert_eq!(
        types.len(),
        1,
        "co-located tables share the distribution column's type: {types:?}"
    );
}

#[tokio::test]
async fn foreign_keys_follow_the_citus_rules() {
    let (pool, _) = test_db().await;
    let c = pool.get().await.expect("conn");
    let dist: BTreeMap<&str, &str> = DISTRIBUTED.into_iter().collect();
    let reference: BTreeSet<&str> = REFERENCE.into_iter().collect();
    let rows = c
        .query(
            "SELECT con.conname, src.relname, dst.relname,
                    ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(n, o)
                          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
                    ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(n, o)
                          JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o)
             FROM pg_constraint con
             JOIN pg_class src ON src.oid = con.conrelid
             JOIN pg_class dst ON dst.oid = con.confrelid
             JOIN pg_namespace n ON n.oid = src.relnamespace
             WHERE con.contype = 'f' AND n.nspname = 'public'",
            &[],
        )
        .await
        .expect("foreign keys");
    for r in rows {
        let (name, src, dst, cols, fcols): (String, String, String, Vec<String>, Vec<String>) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        match (dist.get(src.as_str()), dist.get(dst.as_str())) {
            (Some(sc), Some(dc)) => {
                // Between distributed tables: co-located, and the key pairs the two
                // distribution columns.
                let pos = cols.iter().position(|c| c == sc);
                assert!(
                    pos.is_some_and(|p| fcols.get(p).map(String::as_str) == Some(*dc)),
                    "foreign key {name} {src}({cols:?}) -> {dst}({fcols:?}) does not pair {src}.{sc} with {dst}.{dc}"
                );
            }
            (Some(_), None) => assert!(
                reference.contains(dst.as_str()),
                "foreign key {name}: distributed {src} references {dst}, which is neither distributed nor a reference table"
            ),
            (None, Some(_)) => panic!(
                "foreign key {name}: {src} (reference or coordinator) references distributed {dst}: Citus refuses it"
            ),
            (None, None) => {
                if reference.contains(src.as_str()) {
                    assert!(
                        reference.contains(dst.as_str()),
                        "foreign key {name}: reference table {src} references coordinator table {dst}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn defaults_and_triggers_of_distributed_tables_are_known() {
    let (pool, _) = test_db().await;
    let c = pool.get().await.expect("conn");
    let shared = DISTRIBUTED.iter().map(|(t, _)| *t).chain(REFERENCE);
    for table in shared {
        // Sequences behind defaults must be bigint (Citus gives each node its own range).
        let rows = c
            .query(
                "SELECT a.attname::text, s.seqtypid::regtype::text
                 FROM pg_attribute a
                 JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                 JOIN pg_depend dep ON dep.objid = d.oid AND dep.classid = 'pg_attrdef'::regclass
                                   AND dep.refclassid = 'pg_class'::regclass
                 JOIN pg_sequence s ON s.seqrelid = dep.refobjid
                 WHERE a.attrelid = $1::text::regclass",
                &[&table],
            )
            .await
            .expect("defaults");
        for r in rows {
            let (col, ty): (String, String) = (r.get(0), r.get(1));
            assert_eq!(ty, "bigint", "{table}.{col} defaults to a {ty} sequence");
        }
        let triggers: Vec<String> = c
            .query(
                "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1::text::regclass AND NOT tgisinternal",
                &[&table],
            )
            .await
            .expect("triggers")
            .iter()
            .map(|r| r.get(0))
            .collect();
        for t in triggers {
            assert!(
                DOCUMENTED_TRIGGERS.contains(&t.as_str()),
                "trigger {t} on {table}: Citus runs triggers on shards only with \
                 citus.enable_unsafe_triggers; say in docs/SCALING.md what replaces it"
            );
        }
    }
    let doc = include_str!("../docs/SCALING.md");
    for t in DOCUMENTED_TRIGGERS {
        assert!(doc.contains(t), "docs/SCALING.md explains {t}");
    }
    for (t, col) in DISTRIBUTED {
        assert!(
            doc.contains(&format!("create_distributed_table('{t}', '{col}'")),
            "docs/SCALING.md distributes {t} by {col}"
        );
    }
    for t in REFERENCE {
        assert!(
            doc.contains(&format!("create_reference_table('{t}')")),
            "docs/SCALING.md makes {t} a reference table"
        );
    }
}
