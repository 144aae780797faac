//! Everything that speaks to Postgres: the replication connection, the pgoutput decoder,
//! the relation and type cache, value conversion, and slot/publication set-up.

pub mod changes;
pub mod connection;
pub mod conninfo;
pub mod frame;
pub mod libpq_files;
pub mod pgoutput;
pub mod protocol;
pub mod relations;
pub mod session;
pub mod setup;
pub mod stream;
pub mod tls;
pub mod values;
