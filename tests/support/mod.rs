//! Test support: a throwaway Postgres cluster.

pub mod pg;
