//! bigbrotr engine: CLI, configuration, pipeline wiring, registry, database and embedded PostgreSQL.

pub mod db;
pub mod embedded_pg;
pub mod gen;
pub mod testrelay;
