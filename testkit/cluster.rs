//! The PostgreSQL cluster every test process of a checkout shares: one throwaway cluster under
//! the temp dir, a fresh database per test.

use std::path::PathBuf;

use anyhow::Result;
use bigbrotr_pgcluster::{EmbeddedPg, MAINTENANCE_DB};

/// A cluster shared by every test process of this checkout, under the temp dir, started once under a file lock and reused afterwards; never stopped by tests.
pub async fn shared_for_tests() -> Result<EmbeddedPg> {
    // Tests of one binary share a process (cargo test): pay the lock and status checks once.
    static SHARED: tokio::sync::OnceCell<EmbeddedPg> = tokio::sync::OnceCell::const_new();
    let pg = SHARED
        .get_or_try_init(|| async {
            let mut pg = EmbeddedPg::start(&shared_test_dir(), 0, MAINTENANCE_DB, true).await?;
            pg.stop_on_drop = false;
            pg.drop_orphaned_databases().await;
            Ok::<_, anyhow::Error>(pg)
        })
        .await?;
    Ok(pg.attached_handle())
}

/// Per user, so two users' test runs on one machine never fight over a data directory;
/// `scripts/test` stops the cluster found here when the suite ends.
fn shared_test_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("bigbrotr-test-pg-{uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bigbrotr_pgcluster::database_creator;
    use tokio_postgres::NoTls;

    #[tokio::test]
    async fn shared_cluster_hands_out_isolated_databases() {
        let pg = shared_for_tests()
            .await
            .expect("shared test cluster starts");
        let url = pg
            .create_database("embedded_pg")
            .await
            .expect("fresh database");
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .expect("connect to the fresh database");
        tokio::spawn(connection);
        let one: i32 = client
            .query_one("SELECT 1", &[])
            .await
            .expect("SELECT 1")
            .get(0);
        assert_eq!(one, 1);
        let db: String = client
            .query_one("SELECT current_database()::text", &[])
            .await
            .expect("current_database")
            .get(0);
        assert!(url.ends_with(&format!("dbname={db}")), "{url} vs {db}");
        assert_eq!(database_creator(&db), Some(std::process::id()));

        let again = shared_for_tests().await.expect("second call");
        assert_eq!(again.port(), pg.port());

        // Past the in-process cache: what another test process does, attach to the running server.
        let attached = EmbeddedPg::start(&shared_test_dir(), 0, MAINTENANCE_DB, true)
            .await
            .expect("attach to the running cluster");
        assert_eq!(attached.port(), pg.port());
        assert!(
            !attached.stop_on_drop,
            "attaching must never stop a shared server"
        );
    }
}
