//! Everything that speaks to Postgres: the replication connection, the pgoutput decoder,
//! the relation and type cache, value conversion, and slot/publication set-up.

pub mod connection;
pub mod conninfo;
pub mod pgoutput;
pub mod protocol;
pub mod relations;
pub mod values;
