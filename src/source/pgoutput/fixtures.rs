//! Test input for the decoder: messages written byte by byte from the protocol docs, and
//! messages captured from a real PostgreSQL server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;

use super::TupleValue;

/// Concatenates hand-written message parts into one buffer.
pub(super) fn msg(parts: &[&[u8]]) -> Bytes {
    Bytes::from(parts.concat())
}

/// The bytes a hex string (as `encode(data, 'hex')` prints them) stands for.
pub(super) fn hex(s: &str) -> Bytes {
    assert!(s.len() % 2 == 0, "odd hex length");
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect::<Vec<u8>>();
    Bytes::from(bytes)
}

pub(super) fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

pub(super) fn binary(b: &[u8]) -> TupleValue {
    TupleValue::Binary(Bytes::copy_from_slice(b))
}

// ---------------------------------------------------------------------------------
// Hand-written fixtures, byte by byte from "Logical Replication Message Formats".
// ---------------------------------------------------------------------------------

pub(super) fn begin_fixture() -> Bytes {
    msg(&[
        b"B",
        &[0, 0, 0, 1, 0, 0, 0, 0x28],    // final LSN 1/28
        &[0, 0, 0, 0, 0, 0, 0x03, 0xe8], // commit timestamp 1000 µs
        &[0, 0, 0x02, 0x9a],             // xid 666
    ])
}

pub(super) fn commit_fixture() -> Bytes {
    msg(&[
        b"C",
        &[0],                                              // flags
        &[0, 0, 0, 1, 0, 0, 0, 0x28],                      // commit LSN
        &[0, 0, 0, 1, 0, 0, 0, 0x58],                      // end LSN
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // timestamp -1 (before 2000)
    ])
}

pub(super) fn origin_fixture() -> Bytes {
    msg(&[b"O", &[0, 0, 0, 0, 0, 0, 0x12, 0x34], b"node-2\0"])
}

pub(super) fn relation_fixture(identity: u8) -> Bytes {
    msg(&[
        b"R",
        &[0, 0, 0x40, 0x00], // relation id 16384
        b"app\0",
        b"users\0",
        &[identity],
        &[0, 3], // 3 columns
        &[1],
        b"id\0",
        &[0, 0, 0, 20], // int8
        &[0xff, 0xff, 0xff, 0xff],
        &[0],
        b"email\0",
        &[0, 0, 0x04, 0x13], // varchar
        &[0, 0, 0, 0x44],    // varchar(64): 64 + 4
        &[0x03],             // flags with an unknown bit set: only bit 1 means "key"
        b"\0",               // empty column name
        &[0, 0, 0, 25],
        &[0xff, 0xff, 0xff, 0xff],
    ])
}

pub(super) fn type_fixture() -> Bytes {
    msg(&[b"Y", &[0, 0, 0x40, 0x01], b"\0", b"mood\0"])
}

/// A tuple with one value of every kind: null, unchanged TOAST, text, empty text, binary.
pub(super) fn every_kind_tuple() -> Vec<u8> {
    [
        &[0u8, 5][..],
        b"n",
        b"u",
        b"t",
        &[0, 0, 0, 2],
        b"42",
        b"t",
        &[0, 0, 0, 0],
        b"b",
        &[0, 0, 0, 3],
        &[0, 0xff, 0x80],
    ]
    .concat()
}

pub(super) fn every_kind_values() -> Vec<TupleValue> {
    vec![
        TupleValue::Null,
        TupleValue::UnchangedToast,
        text("42"),
        text(""),
        binary(&[0, 0xff, 0x80]),
    ]
}

pub(super) fn insert_fixture() -> Bytes {
    msg(&[b"I", &[0, 0, 0x40, 0x00], b"N", &every_kind_tuple()])
}

pub(super) fn insert_zero_columns_fixture() -> Bytes {
    msg(&[b"I", &[0, 0, 0x40, 0x00], b"N", &[0, 0]])
}

pub(super) fn update_plain_fixture() -> Bytes {
    msg(&[
        b"U",
        &[0, 0, 0x40, 0x00],
        b"N",
        &[0, 2],
        b"t",
        &[0, 0, 0, 1],
        b"7",
        b"u",
    ])
}

pub(super) fn update_key_fixture() -> Bytes {
    msg(&[
        b"U",
        &[0, 0, 0x40, 0x00],
        b"K",
        &[0, 2],
        b"t",
        &[0, 0, 0, 1],
        b"7",
        b"n",
        b"N",
        &[0, 2],
        b"t",
        &[0, 0, 0, 1],
        b"8",
        b"t",
        &[0, 0, 0, 0],
    ])
}

pub(super) fn update_full_fixture() -> Bytes {
    msg(&[
        b"U",
        &[0, 0, 0x40, 0x00],
        b"O",
        &every_kind_tuple(),
        b"N",
        &[0, 0], // zero columns
    ])
}

pub(super) fn delete_key_fixture() -> Bytes {
    msg(&[
        b"D",
        &[0, 0, 0x40, 0x00],
        b"K",
        &[0, 2],
        b"t",
        &[0, 0, 0, 1],
        b"7",
        b"n",
    ])
}

pub(super) fn delete_full_fixture() -> Bytes {
    msg(&[b"D", &[0xff, 0xff, 0xff, 0xff], b"O", &every_kind_tuple()])
}

pub(super) fn truncate_fixture() -> Bytes {
    msg(&[
        b"T",
        &[0, 0, 0, 2], // 2 relations
        &[3],          // CASCADE | RESTART IDENTITY
        &[0, 0, 0x40, 0x00],
        &[0, 0, 0x40, 0x02],
    ])
}

pub(super) fn truncate_empty_fixture() -> Bytes {
    msg(&[b"T", &[0, 0, 0, 0], &[0]])
}

pub(super) fn message_fixture(flags: u8) -> Bytes {
    msg(&[
        b"M",
        &[flags],
        &[0, 0, 0, 0, 0x01, 0x02, 0x03, 0x04],
        b"walhook/test\0",
        &[0, 0, 0, 4],
        &[0xde, 0xad, 0, 0xef],
    ])
}

pub(super) fn message_empty_fixture() -> Bytes {
    msg(&[b"M", &[0], &[0; 8], b"\0", &[0, 0, 0, 0]])
}

// ---------------------------------------------------------------------------------
// Real bytes from PostgreSQL 15.18 (pgoutput, proto_version 1), captured with
// pg_logical_slot_peek_binary_changes(..., 'messages', 'true'[, 'binary', 'true']).
//
//   CREATE TYPE mood AS ENUM ('sad', 'happy');
//   CREATE TABLE t_def (id int PRIMARY KEY, name text, big text);      -- oid 16389
//   ALTER TABLE t_def ALTER COLUMN big SET STORAGE EXTERNAL;
//   CREATE TABLE t_full (id int PRIMARY KEY, v varchar(10), m mood);   -- oid 16396
//   ALTER TABLE t_full REPLICA IDENTITY FULL;
//   CREATE TABLE t_idx (a int NOT NULL, b int NOT NULL, c text);       -- oid 16401
//   ALTER TABLE t_idx REPLICA IDENTITY USING INDEX t_idx_ab;           -- (a, b)
//   CREATE TABLE t_none (x int) + REPLICA IDENTITY NOTHING;            -- oid 16407
//   CREATE TABLE t_empty ();                                           -- oid 16410
// ---------------------------------------------------------------------------------

/// BEGIN of the transaction that ran under replication origin `origin_a`, with
/// pg_replication_origin_xact_setup('0/ABCDEF', '2024-01-02 03:04:05+00').
pub(super) const PG_BEGIN: &str = "4200000000015546980002b0ec8515f340000002f2";
pub(super) const PG_ORIGIN: &str = "4f0000000000abcdef6f726967696e5f6100";
pub(super) const PG_COMMIT: &str = "4300000000000155469800000000015546e00002b0ec8515f340";
pub(super) const PG_REL_DEFAULT: &str = "52000040057075626c696300745f646566006400030169640000000017ffffffff006e616d650000000019ffffffff006269670000000019ffffffff";
pub(super) const PG_TYPE_MOOD: &str = "59000040017075626c6963006d6f6f6400";
pub(super) const PG_REL_FULL: &str = "520000400c7075626c696300745f66756c6c006600030169640000000017ffffffff017600000004130000000e016d0000004001ffffffff";
pub(super) const PG_REL_INDEX: &str = "52000040117075626c696300745f6964780069000301610000000017ffffffff01620000000017ffffffff00630000000019ffffffff";
pub(super) const PG_REL_NOTHING: &str =
    "52000040177075626c696300745f6e6f6e65006e000100780000000017ffffffff";
pub(super) const PG_REL_EMPTY: &str = "520000401a7075626c696300745f656d70747900640000";
/// INSERT INTO t_def VALUES (1, 'a', NULL)
pub(super) const PG_INSERT: &str = "49000040054e00037400000001317400000001616e";
/// INSERT INTO t_empty DEFAULT VALUES
pub(super) const PG_INSERT_EMPTY: &str = "490000401a4e0000";
/// UPDATE t_def SET name = '' WHERE id = 1
pub(super) const PG_UPDATE_PLAIN: &str = "55000040054e000374000000013174000000006e";
/// UPDATE t_def SET id = 2 WHERE id = 1
pub(super) const PG_UPDATE_KEY: &str =
    "55000040054b00037400000001316e6e4e000374000000013274000000006e";
/// UPDATE t_def SET name = 'y' WHERE id = 3, with big = repeat('x', 100000) stored
/// out of line
pub(super) const PG_UPDATE_TOAST: &str = "55000040054e000374000000013374000000017975";
/// DELETE FROM t_def WHERE id = 2
pub(super) const PG_DELETE_KEY: &str = "44000040054b00037400000001326e6e";
/// UPDATE t_full SET v = 'v2' WHERE id = 1
pub(super) const PG_UPDATE_FULL: &str = "550000400c4f00037400000001317400000002763174000000037361644e0003740000000131740000000276327400000003736164";
/// DELETE FROM t_full WHERE id = 1
pub(super) const PG_DELETE_FULL: &str =
    "440000400c4f0003740000000131740000000276327400000003736164";
/// DELETE FROM t_idx (key (a, b) = (1, 2))
pub(super) const PG_DELETE_INDEX: &str = "44000040114b00037400000001317400000001326e";
/// TRUNCATE t_none, t_idx RESTART IDENTITY CASCADE
pub(super) const PG_TRUNCATE: &str = "5400000002030000401700004011";
/// TRUNCATE t_empty
pub(super) const PG_TRUNCATE_ONE: &str = "5400000001000000401a";
/// pg_logical_emit_message(true, 'walhook', 'hello')
pub(super) const PG_MESSAGE_TX: &str = "4d01000000000155438877616c686f6f6b000000000568656c6c6f";
/// pg_logical_emit_message(false, 'nt', ''::bytea)
pub(super) const PG_MESSAGE_NONTX: &str = "4d0000000000015543f06e740000000000";
/// The t_def insert with binary = true.
pub(super) const PG_INSERT_BINARY: &str = "49000040054e00036200000004000000016200000001616e";
/// The t_full update with binary = true.
pub(super) const PG_UPDATE_FULL_BINARY: &str = "550000400c4f00036200000004000000016200000002763162000000037361644e0003620000000400000001620000000276326200000003736164";

/// INSERT INTO t_def VALUES (3, 'x', repeat('x', 100000)): the captured message is
/// this header followed by exactly 100000 bytes of 'x' (checked on the server).
pub(super) fn pg_insert_big() -> Bytes {
    let mut data = hex("49000040054e000374000000013374000000017874000186a0").to_vec();
    data.resize(data.len() + 100_000, b'x');
    Bytes::from(data)
}

pub(super) const PG_ALL: &[&str] = &[
    PG_BEGIN,
    PG_ORIGIN,
    PG_COMMIT,
    PG_REL_DEFAULT,
    PG_TYPE_MOOD,
    PG_REL_FULL,
    PG_REL_INDEX,
    PG_REL_NOTHING,
    PG_REL_EMPTY,
    PG_INSERT,
    PG_INSERT_EMPTY,
    PG_UPDATE_PLAIN,
    PG_UPDATE_KEY,
    PG_UPDATE_TOAST,
    PG_DELETE_KEY,
    PG_UPDATE_FULL,
    PG_DELETE_FULL,
    PG_DELETE_INDEX,
    PG_TRUNCATE,
    PG_TRUNCATE_ONE,
    PG_MESSAGE_TX,
    PG_MESSAGE_NONTX,
    PG_INSERT_BINARY,
    PG_UPDATE_FULL_BINARY,
];

pub(super) fn all_fixtures() -> Vec<Bytes> {
    let mut all = vec![
        begin_fixture(),
        commit_fixture(),
        origin_fixture(),
        type_fixture(),
        insert_fixture(),
        insert_zero_columns_fixture(),
        update_plain_fixture(),
        update_key_fixture(),
        update_full_fixture(),
        delete_key_fixture(),
        delete_full_fixture(),
        truncate_fixture(),
        truncate_empty_fixture(),
        message_fixture(0),
        message_fixture(1),
        message_empty_fixture(),
        pg_insert_big(),
    ];
    all.extend(b"dnfi".iter().map(|&b| relation_fixture(b)));
    all.extend(PG_ALL.iter().map(|h| hex(h)));
    all
}
