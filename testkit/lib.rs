//! bigbrotr's test kit, kept out of the product library: the fault-injecting relay, the event
//! generator and the PostgreSQL cluster the test processes share. The tests and benches use it,
//! and so do `bigbrotr bench`, `bigbrotr testrelay` and `bigbrotr gen`, which is why it must not
//! depend on the `bigbrotr` crate.

pub mod cluster;
pub mod gen;
pub mod relay;
