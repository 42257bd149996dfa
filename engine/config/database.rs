//! `[database]` and `[embedded]`: where the archive lives.

use super::check_all;
use serde::Deserialize;
use std::path::PathBuf;

/// `[database]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// libpq connection string or postgres:// URL; empty = embedded cluster.
    pub url: String,
    /// Connections in the writer pool.
    pub pool_size: u32,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: String::new(),
            pool_size: 8,
        }
    }
}

/// `[embedded]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Embedded {
    /// Directory holding the cluster (created on first start).
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1 (0 = pick a free one once and remember it).
    pub port: u16,
    /// Database name.
    pub db_name: String,
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded {
            data_dir: PathBuf::from("data/postgres"),
            port: 0,
            db_name: "bigbrotr".into(),
        }
    }
}

impl Database {
    /// Checks the `[database]` values; errors name `file` and the key.
    pub fn validate(&self, file: &str) -> anyhow::Result<()> {
        check_all(
            file,
            &[(
                self.pool_size >= 2,
                "database.pool_size",
                "must be at least 2",
            )],
        )
    }
}
