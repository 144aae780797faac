//! Test support: a throwaway Postgres cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod pg;
