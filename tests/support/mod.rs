//! Test support: a throwaway Postgres cluster and a recording HTTP receiver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod daemon;
pub mod nats;
pub mod pg;
pub mod receiver;
