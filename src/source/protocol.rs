//! The messages inside CopyBoth mode (PostgreSQL docs, "Streaming Replication Protocol"):
//! the server's XLogData (`w`) and primary keepalive (`k`), and our standby status update
//! (`r`). Pure functions over bytes; the socket lives in [`super::connection`].
//!
//! Subtle points:
//! - XLogData's `data` is one pgoutput message, sliced out of the frame without copying.
//! - A keepalive's `wal_end` is the server's current WAL end, not a transaction boundary: it
//!   may be confirmed only while no transaction is in flight (a transaction sent before it
//!   may still be undelivered; see `progress`).
//! - `reply_requested` means "answer now or be timed out by `wal_sender_timeout`"; the reply
//!   should carry the last *safe* flush position, never a position ahead of delivery.
//! - Times are microseconds since 2000-01-01 UTC ([`crate::event::PG_EPOCH_OFFSET_MICROS`]).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};

use crate::event::PG_EPOCH_OFFSET_MICROS;
use crate::lsn::Lsn;

/// One CopyData payload from the walsender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// A chunk of WAL: for logical replication, one pgoutput message.
    XLogData {
        /// Where this message starts in the WAL.
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server clock when sent (µs since 2000-01-01).
        server_time: i64,
        /// The message (a pgoutput message for logical slots).
        data: Bytes,
    },
    /// A heartbeat; may ask for an immediate status update.
    Keepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server clock when sent (µs since 2000-01-01).
        server_time: i64,
        /// The server wants a standby status update now.
        reply_requested: bool,
    },
}

/// A CopyData payload that is not a well-formed replication message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The payload had no bytes at all.
    #[error("empty replication message")]
    Empty,
    /// The payload is shorter than its fixed header.
    #[error("replication message '{tag}' is {len} bytes, shorter than its {need}-byte header")]
    Truncated {
        /// The message tag.
        tag: char,
        /// Bytes received.
        len: usize,
        /// Bytes required.
        need: usize,
    },
    /// A tag this protocol version does not define.
    #[error("unknown replication message tag {0:#04x}")]
    UnknownTag(u8),
}

const XLOG_HEADER: usize = 1 + 8 + 8 + 8;
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

/// Parses one CopyData payload (`w` XLogData or `k` keepalive).
pub fn parse(mut payload: Bytes) -> Result<ReplicationMessage, ProtocolError> {
    let tag = *payload.first().ok_or(ProtocolError::Empty)?;
    let need = match tag {
        b'w' => XLOG_HEADER,
        b'k' => KEEPALIVE_LEN,
        other => return Err(ProtocolError::UnknownTag(other)),
    };
    if payload.len() < need {
        return Err(ProtocolError::Truncated {
            tag: char::from(tag),
            len: payload.len(),
            need,
        });
    }
    payload.advance(1);
    let wal_start_or_end = Lsn(payload.get_u64());
    Ok(if tag == b'w' {
        let wal_end = Lsn(payload.get_u64());
        let server_time = payload.get_i64();
        ReplicationMessage::XLogData {
            wal_start: wal_start_or_end,
            wal_end,
            server_time,
            data: payload,
        }
    } else {
        let server_time = payload.get_i64();
        ReplicationMessage::Keepalive {
            wal_end: wal_start_or_end,
            server_time,
            reply_requested: payload.get_u8() != 0,
        }
    })
}

/// `now` as Postgres counts time: microseconds since 2000-01-01 UTC.
pub fn pg_timestamp(now: SystemTime) -> i64 {
    let unix_micros = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros())
            .map(|m| -m)
            .unwrap_or(i64::MIN),
    };
    unix_micros.saturating_sub(PG_EPOCH_OFFSET_MICROS)
}

/// A standby status update (`r`): written, flushed and applied positions, our clock, and
/// whether we want an immediate keepalive back.
pub fn standby_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    now: SystemTime,
    reply_requested: bool,
) -> [u8; 34] {
    let mut out = [0u8; 34];
    out[0] = b'r';
    out[1..9].copy_from_slice(&write.0.to_be_bytes());
    out[9..17].copy_from_slice(&flush.0.to_be_bytes());
    out[17..25].copy_from_slice(&apply.0.to_be_bytes());
    out[25..33].copy_from_slice(&pg_timestamp(now).to_be_bytes());
    out[33] = u8::from(reply_requested);
    out
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn xlogdata_slices_the_message() {
        let mut wire = vec![b'w'];
        wire.extend(0x0000_0001_0000_0010u64.to_be_bytes());
        wire.extend(0x0000_0001_0000_0020u64.to_be_bytes());
        wire.extend(1_000_000i64.to_be_bytes());
        wire.extend(b"Bpayload");
        let frame = Bytes::from(wire);
        let msg = parse(frame.clone()).expect("valid");
        let ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            server_time,
            data,
        } = msg
        else {
            panic!("not XLogData: {msg:?}");
        };
        assert_eq!(wal_start.to_string(), "1/10");
        assert_eq!(wal_end.to_string(), "1/20");
        assert_eq!(server_time, 1_000_000);
        assert_eq!(data.as_ref(), b"Bpayload");
        // Zero-copy: the data points into the frame's allocation.
        assert_eq!(data.as_ptr(), frame[25..].as_ptr());
    }

    #[test]
    fn xlogdata_may_be_empty() {
        let wire = [&[b'w'][..], &[0; 24]].concat();
        assert!(matches!(
            parse(Bytes::from(wire)),
            Ok(ReplicationMessage::XLogData { data, .. }) if data.is_empty()
        ));
    }

    #[test]
    fn keepalive() {
        let mut wire = vec![b'k'];
        wire.extend(0x16_B374_D848u64.to_be_bytes());
        wire.extend((-5i64).to_be_bytes());
        wire.push(1);
        assert_eq!(
            parse(Bytes::from(wire)),
            Ok(ReplicationMessage::Keepalive {
                wal_end: Lsn(0x16_B374_D848),
                server_time: -5,
                reply_requested: true
            })
        );
    }

    #[test]
    fn truncated_empty_and_unknown() {
        assert_eq!(parse(Bytes::new()), Err(ProtocolError::Empty));
        for len in 1..XLOG_HEADER {
            let wire = [&[b'w'][..], &[0; 30][..len - 1]].concat();
            assert!(matches!(
                parse(Bytes::from(wire)),
                Err(ProtocolError::Truncated { tag: 'w', .. })
            ));
        }
        for len in 1..KEEPALIVE_LEN {
            let wire = [&[b'k'][..], &[0; 30][..len - 1]].concat();
            assert!(matches!(
                parse(Bytes::from(wire)),
                Err(ProtocolError::Truncated { tag: 'k', .. })
            ));
        }
        assert_eq!(
            parse(Bytes::from_static(b"zzzzzzzzzzzzzzzzzzzzzzzzzz")),
            Err(ProtocolError::UnknownTag(b'z'))
        );
    }

    #[test]
    fn status_update_layout() {
        let now = UNIX_EPOCH + Duration::from_micros(PG_EPOCH_OFFSET_MICROS as u64 + 42);
        let msg = standby_status_update(Lsn(1), Lsn(2), Lsn(3), now, true);
        let mut expected = vec![b'r'];
        for v in [1u64, 2, 3, 42] {
            expected.extend(v.to_be_bytes());
        }
        expected.push(1);
        assert_eq!(msg.as_slice(), expected.as_slice());
        assert_eq!(
            standby_status_update(Lsn(0), Lsn(0), Lsn(0), now, false)[33],
            0
        );
    }

    #[test]
    fn clock_before_the_epochs() {
        assert_eq!(pg_timestamp(UNIX_EPOCH), -PG_EPOCH_OFFSET_MICROS);
        let before = UNIX_EPOCH - Duration::from_micros(1);
        assert_eq!(pg_timestamp(before), -PG_EPOCH_OFFSET_MICROS - 1);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(wire in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse(Bytes::from(wire));
        }
    }
}
