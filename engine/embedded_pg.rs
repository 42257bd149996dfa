//! embedded_pg (in progress)
