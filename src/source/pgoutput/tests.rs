//! Decoder tests: every message kind from hand-written and captured bytes, corrupt input,
//! and properties (decode inverts encode, never panics).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::fixtures::*;
use super::*;

fn tuple(values: Vec<TupleValue>) -> Tuple {
    Tuple(values)
}

fn col(is_key: bool, name: &str, type_oid: u32, type_modifier: i32) -> RelationColumn {
    RelationColumn {
        is_key,
        name: name.to_owned(),
        type_oid,
        type_modifier,
    }
}

fn ok(data: Bytes) -> PgOutput {
    decode(data.clone()).unwrap_or_else(|e| panic!("decode {data:02x?}: {e}"))
}

fn err(data: Bytes) -> DecodeError {
    match decode(data.clone()) {
        Ok(m) => panic!("decode {data:02x?} should fail, got {m:?}"),
        Err(e) => e,
    }
}

#[test]
fn begin() {
    assert_eq!(
        ok(begin_fixture()),
        PgOutput::Begin(Begin {
            final_lsn: Lsn(0x1_0000_0028),
            commit_time: PgTimestamp(1000),
            xid: 666,
        })
    );
}

#[test]
fn commit() {
    assert_eq!(
        ok(commit_fixture()),
        PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x1_0000_0028),
            end_lsn: Lsn(0x1_0000_0058),
            commit_time: PgTimestamp(-1),
        })
    );
}

#[test]
fn origin() {
    assert_eq!(
        ok(origin_fixture()),
        PgOutput::Origin {
            commit_lsn: Lsn(0x1234),
            name: "node-2".into(),
        }
    );
}

#[test]
fn relation_with_every_replica_identity() {
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        assert_eq!(
            ok(relation_fixture(byte)),
            PgOutput::Relation(Relation {
                id: 16384,
                namespace: "app".into(),
                name: "users".into(),
                replica_identity: identity,
                columns: vec![
                    col(true, "id", 20, -1),
                    col(false, "email", 1043, 68),
                    col(true, "", 25, -1),
                ],
            })
        );
    }
}

#[test]
fn relation_with_zero_columns() {
    let data = msg(&[b"R", &[0, 0, 0, 1], b"\0", b"t\0", b"d", &[0, 0]]);
    assert_eq!(
        ok(data),
        PgOutput::Relation(Relation {
            id: 1,
            namespace: String::new(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![],
        })
    );
}

#[test]
fn type_message() {
    assert_eq!(
        ok(type_fixture()),
        PgOutput::Type {
            id: 16385,
            namespace: String::new(),
            name: "mood".into(),
        }
    );
}

#[test]
fn insert_with_every_value_kind() {
    assert_eq!(
        ok(insert_fixture()),
        PgOutput::Insert {
            relation: 16384,
            new: tuple(every_kind_values()),
        }
    );
}

#[test]
fn insert_with_zero_columns() {
    assert_eq!(
        ok(insert_zero_columns_fixture()),
        PgOutput::Insert {
            relation: 16384,
            new: Tuple::default(),
        }
    );
}

#[test]
fn update_without_old_tuple() {
    assert_eq!(
        ok(update_plain_fixture()),
        PgOutput::Update {
            relation: 16384,
            old: None,
            new: tuple(vec![text("7"), TupleValue::UnchangedToast]),
        }
    );
}

#[test]
fn update_with_key() {
    assert_eq!(
        ok(update_key_fixture()),
        PgOutput::Update {
            relation: 16384,
            old: Some(OldTuple::Key(tuple(vec![text("7"), TupleValue::Null]))),
            new: tuple(vec![text("8"), text("")]),
        }
    );
}

#[test]
fn update_with_old_row() {
    assert_eq!(
        ok(update_full_fixture()),
        PgOutput::Update {
            relation: 16384,
            old: Some(OldTuple::Full(tuple(every_kind_values()))),
            new: Tuple::default(),
        }
    );
}

#[test]
fn delete_with_key_and_with_old_row() {
    assert_eq!(
        ok(delete_key_fixture()),
        PgOutput::Delete {
            relation: 16384,
            old: OldTuple::Key(tuple(vec![text("7"), TupleValue::Null])),
        }
    );
    assert_eq!(
        ok(delete_full_fixture()),
        PgOutput::Delete {
            relation: u32::MAX,
            old: OldTuple::Full(tuple(every_kind_values())),
        }
    );
}

#[test]
fn truncate_with_options() {
    assert_eq!(
        ok(truncate_fixture()),
        PgOutput::Truncate {
            options: 3,
            relations: vec![16384, 16386],
        }
    );
    assert_eq!(
        ok(truncate_empty_fixture()),
        PgOutput::Truncate {
            options: 0,
            relations: vec![],
        }
    );
}

#[test]
fn message_transactional_and_not() {
    for (flags, transactional) in [(1, true), (0, false)] {
        assert_eq!(
            ok(message_fixture(flags)),
            PgOutput::Message {
                transactional,
                lsn: Lsn(0x0102_0304),
                prefix: "walhook/test".into(),
                content: Bytes::from_static(&[0xde, 0xad, 0, 0xef]),
            }
        );
    }
    assert_eq!(
        ok(message_empty_fixture()),
        PgOutput::Message {
            transactional: false,
            lsn: Lsn(0),
            prefix: String::new(),
            content: Bytes::new(),
        }
    );
}

#[test]
fn values_are_slices_of_the_input() {
    let data = insert_fixture();
    let range = data.as_ptr_range();
    let PgOutput::Insert { new, .. } = ok(data.clone()) else {
        panic!("not an insert");
    };
    let TupleValue::Text(v) = &new.0[2] else {
        panic!("not text");
    };
    assert!(range.contains(&v.as_ptr()), "value was copied");
}

#[test]
fn postgres_transaction_with_origin() {
    // 2024-01-02 03:04:05 UTC in microseconds since 2000-01-01.
    let ts = PgTimestamp(757_479_845_000_000);
    assert_eq!(
        ok(hex(PG_BEGIN)),
        PgOutput::Begin(Begin {
            final_lsn: Lsn(0x155_4698),
            commit_time: ts,
            xid: 754,
        })
    );
    assert_eq!(
        ok(hex(PG_ORIGIN)),
        PgOutput::Origin {
            commit_lsn: Lsn(0xAB_CDEF),
            name: "origin_a".into(),
        }
    );
    assert_eq!(
        ok(hex(PG_COMMIT)),
        PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x155_4698),
            end_lsn: Lsn(0x155_46e0),
            commit_time: ts,
        })
    );
}

#[test]
fn postgres_relations_and_type() {
    let rel = |data: &str| match ok(hex(data)) {
        PgOutput::Relation(r) => r,
        other => panic!("not a relation: {other:?}"),
    };
    assert_eq!(
        rel(PG_REL_DEFAULT),
        Relation {
            id: 16389,
            namespace: "public".into(),
            name: "t_def".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                col(true, "id", 23, -1),
                col(false, "name", 25, -1),
                col(false, "big", 25, -1),
            ],
        }
    );
    // FULL marks every column as part of the key; varchar(10) has typmod 14.
    assert_eq!(
        rel(PG_REL_FULL),
        Relation {
            id: 16396,
            namespace: "public".into(),
            name: "t_full".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![
                col(true, "id", 23, -1),
                col(true, "v", 1043, 14),
                col(true, "m", 16385, -1),
            ],
        }
    );
    assert_eq!(
        rel(PG_REL_INDEX),
        Relation {
            id: 16401,
            namespace: "public".into(),
            name: "t_idx".into(),
            replica_identity: ReplicaIdentity::Index,
            columns: vec![
                col(true, "a", 23, -1),
                col(true, "b", 23, -1),
                col(false, "c", 25, -1),
            ],
        }
    );
    assert_eq!(
        rel(PG_REL_NOTHING),
        Relation {
            id: 16407,
            namespace: "public".into(),
            name: "t_none".into(),
            replica_identity: ReplicaIdentity::Nothing,
            columns: vec![col(false, "x", 23, -1)],
        }
    );
    assert_eq!(rel(PG_REL_EMPTY).columns, vec![]);
    assert_eq!(
        ok(hex(PG_TYPE_MOOD)),
        PgOutput::Type {
            id: 16385,
            namespace: "public".into(),
            name: "mood".into(),
        }
    );
}

#[test]
fn postgres_replica_identity_default() {
    assert_eq!(
        ok(hex(PG_INSERT)),
        PgOutput::Insert {
            relation: 16389,
            new: tuple(vec![text("1"), text("a"), TupleValue::Null]),
        }
    );
    assert_eq!(
        ok(hex(PG_INSERT_EMPTY)),
        PgOutput::Insert {
            relation: 16410,
            new: Tuple::default(),
        }
    );
    assert_eq!(
        ok(hex(PG_UPDATE_PLAIN)),
        PgOutput::Update {
            relation: 16389,
            old: None,
            new: tuple(vec![text("1"), text(""), TupleValue::Null]),
        }
    );
    assert_eq!(
        ok(hex(PG_UPDATE_KEY)),
        PgOutput::Update {
            relation: 16389,
            old: Some(OldTuple::Key(tuple(vec![
                text("1"),
                TupleValue::Null,
                TupleValue::Null,
            ]))),
            new: tuple(vec![text("2"), text(""), TupleValue::Null]),
        }
    );
    assert_eq!(
        ok(hex(PG_DELETE_KEY)),
        PgOutput::Delete {
            relation: 16389,
            old: OldTuple::Key(tuple(vec![text("2"), TupleValue::Null, TupleValue::Null,])),
        }
    );
    assert_eq!(
        ok(hex(PG_DELETE_INDEX)),
        PgOutput::Delete {
            relation: 16401,
            old: OldTuple::Key(tuple(vec![text("1"), text("2"), TupleValue::Null])),
        }
    );
}

#[test]
fn postgres_toast() {
    let big = "x".repeat(100_000);
    assert_eq!(
        ok(pg_insert_big()),
        PgOutput::Insert {
            relation: 16389,
            new: tuple(vec![text("3"), text("x"), text(&big)]),
        }
    );
    assert_eq!(
        ok(hex(PG_UPDATE_TOAST)),
        PgOutput::Update {
            relation: 16389,
            old: None,
            new: tuple(vec![text("3"), text("y"), TupleValue::UnchangedToast]),
        }
    );
}

#[test]
fn postgres_replica_identity_full() {
    let old = tuple(vec![text("1"), text("v1"), text("sad")]);
    let new = tuple(vec![text("1"), text("v2"), text("sad")]);
    assert_eq!(
        ok(hex(PG_UPDATE_FULL)),
        PgOutput::Update {
            relation: 16396,
            old: Some(OldTuple::Full(old)),
            new: new.clone(),
        }
    );
    assert_eq!(
        ok(hex(PG_DELETE_FULL)),
        PgOutput::Delete {
            relation: 16396,
            old: OldTuple::Full(new),
        }
    );
}

#[test]
fn postgres_binary_values() {
    assert_eq!(
        ok(hex(PG_INSERT_BINARY)),
        PgOutput::Insert {
            relation: 16389,
            new: tuple(vec![binary(&[0, 0, 0, 1]), binary(b"a"), TupleValue::Null]),
        }
    );
    assert_eq!(
        ok(hex(PG_UPDATE_FULL_BINARY)),
        PgOutput::Update {
            relation: 16396,
            old: Some(OldTuple::Full(tuple(vec![
                binary(&[0, 0, 0, 1]),
                binary(b"v1"),
                binary(b"sad"),
            ]))),
            new: tuple(vec![binary(&[0, 0, 0, 1]), binary(b"v2"), binary(b"sad")]),
        }
    );
}

#[test]
fn postgres_truncate_and_messages() {
    assert_eq!(
        ok(hex(PG_TRUNCATE)),
        PgOutput::Truncate {
            options: 3,
            relations: vec![16407, 16401],
        }
    );
    assert_eq!(
        ok(hex(PG_TRUNCATE_ONE)),
        PgOutput::Truncate {
            options: 0,
            relations: vec![16410],
        }
    );
    assert_eq!(
        ok(hex(PG_MESSAGE_TX)),
        PgOutput::Message {
            transactional: true,
            lsn: Lsn(0x155_4388),
            prefix: "walhook".into(),
            content: Bytes::from_static(b"hello"),
        }
    );
    assert_eq!(
        ok(hex(PG_MESSAGE_NONTX)),
        PgOutput::Message {
            transactional: false,
            lsn: Lsn(0x155_43f0),
            prefix: "nt".into(),
            content: Bytes::new(),
        }
    );
}

#[test]
fn postgres_bytes_are_what_encode_writes() {
    for data in PG_ALL.iter().map(|h| hex(h)).chain([pg_insert_big()]) {
        assert_eq!(encode(&ok(data.clone())), data.to_vec());
    }
}

// ---------------------------------------------------------------------------------
// Corrupt input.
// ---------------------------------------------------------------------------------

fn name_of(tag: u8) -> &'static str {
    super::message_name(tag).expect("fixture starts with a known tag")
}

#[test]
fn every_strict_prefix_is_truncated() {
    for data in all_fixtures() {
        ok(data.clone());
        for n in 0..data.len() {
            let expected = if n == 0 { "empty" } else { name_of(data[0]) };
            match decode(data.slice(..n)) {
                Err(DecodeError::Truncated { message, .. }) if message == expected => {}
                other => panic!("prefix {n} of {:02x?}: {other:?}", &data[..]),
            }
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for data in all_fixtures() {
        let mut long = data.to_vec();
        long.push(0);
        assert_eq!(
            err(Bytes::from(long)),
            DecodeError::Trailing {
                message: name_of(data[0]),
                extra: 1,
            }
        );
    }
    assert_eq!(
        err(msg(&[&begin_fixture(), b"xyz"])).to_string(),
        "pgoutput Begin message has 3 trailing bytes"
    );
}

#[test]
fn truncation_errors_name_the_message_and_field() {
    let cases: &[(Bytes, &str)] = &[
        (
            Bytes::new(),
            "pgoutput empty message is truncated while reading message type",
        ),
        (
            msg(&[b"B", &[0; 7]]),
            "pgoutput Begin message is truncated while reading final LSN",
        ),
        (
            msg(&[b"B", &[0; 19]]),
            "pgoutput Begin message is truncated while reading xid",
        ),
        (
            msg(&[b"C", &[0; 24]]),
            "pgoutput Commit message is truncated while reading commit timestamp",
        ),
        (
            msg(&[b"O", &[0; 8], b"abc"]),
            "pgoutput Origin message is truncated while reading origin name",
        ),
        (
            msg(&[b"R", &[0; 4], b"ns\0name"]),
            "pgoutput Relation message is truncated while reading relation name",
        ),
        (
            msg(&[b"R", &[0; 4], b"ns\0name\0"]),
            "pgoutput Relation message is truncated while reading replica identity",
        ),
        (
            msg(&[
                b"R",
                &[0; 4],
                b"\0\0d",
                &[0, 1],
                &[1],
                b"c\0",
                &[0, 0, 0, 23],
            ]),
            "pgoutput Relation message is truncated while reading column type modifier",
        ),
        (
            msg(&[b"Y", &[0; 4], b"\0"]),
            "pgoutput Type message is truncated while reading type name",
        ),
        (
            msg(&[b"I", &[0; 4]]),
            "pgoutput Insert message is truncated while reading tuple marker",
        ),
        (
            msg(&[b"I", &[0; 4], b"N", &[0]]),
            "pgoutput Insert message is truncated while reading column count",
        ),
        (
            msg(&[b"I", &[0; 4], b"N", &[0, 1]]),
            "pgoutput Insert message is truncated while reading column kind",
        ),
        (
            msg(&[b"I", &[0; 4], b"N", &[0, 1], b"t", &[0, 0]]),
            "pgoutput Insert message is truncated while reading value length",
        ),
        (
            msg(&[b"I", &[0; 4], b"N", &[0, 1], b"t", &[0, 0, 0, 3], b"ab"]),
            "pgoutput Insert message is truncated while reading value",
        ),
        (
            msg(&[b"U", &[0; 4], b"K", &[0, 0]]),
            "pgoutput Update message is truncated while reading tuple marker",
        ),
        (
            msg(&[b"D", &[0; 4], b"O", &[0, 1], b"b", &[0, 0, 0, 1]]),
            "pgoutput Delete message is truncated while reading value",
        ),
        (
            msg(&[b"T", &[0, 0, 0, 1]]),
            "pgoutput Truncate message is truncated while reading options",
        ),
        (
            msg(&[b"T", &[0, 0, 0, 2], &[0], &[0; 7]]),
            "pgoutput Truncate message is truncated while reading relation id",
        ),
        (
            msg(&[b"M", &[1], &[0; 8], b"p\0", &[0, 0, 0, 2], b"x"]),
            "pgoutput Message message is truncated while reading content",
        ),
    ];
    for (data, expected) in cases {
        assert_eq!(err(data.clone()).to_string(), *expected, "{data:02x?}");
    }
}

#[test]
fn unknown_message_types() {
    // 'S', 'E', 'c', 'A' are streaming messages of protocol version 2, not v1.
    for tag in [b'Z', b'S', b'E', b'c', b'A', b'b', 0, 0xff] {
        let e = err(msg(&[&[tag], &[0; 32]]));
        assert_eq!(e, DecodeError::UnknownMessage(char::from(tag)));
    }
    assert_eq!(
        err(msg(&[b"Z"])).to_string(),
        "unknown pgoutput message type 'Z'"
    );
}

#[test]
fn bad_tuple_markers() {
    let invalid = |message, value: u8| DecodeError::InvalidByte {
        message,
        field: "tuple marker",
        value: char::from(value),
    };
    // Insert carries only a new tuple.
    for m in [b'K', b'O', b'n', b'X'] {
        assert_eq!(
            err(msg(&[b"I", &[0; 4], &[m], &[0, 0]])),
            invalid("Insert", m)
        );
    }
    // Update: the first marker is K, O or N; after an old tuple, only N.
    assert_eq!(
        err(msg(&[b"U", &[0; 4], b"X", &[0, 0]])),
        invalid("Update", b'X')
    );
    for second in [b'K', b'O', b'X'] {
        assert_eq!(
            err(msg(&[b"U", &[0; 4], b"K", &[0, 0], &[second], &[0, 0]])),
            invalid("Update", second)
        );
    }
    // Delete always has an old tuple.
    for m in [b'N', b'X'] {
        assert_eq!(
            err(msg(&[b"D", &[0; 4], &[m], &[0, 0]])),
            invalid("Delete", m)
        );
    }
    assert_eq!(
        err(msg(&[b"D", &[0; 4], b"N", &[0, 0]])).to_string(),
        "pgoutput Delete message has invalid tuple marker byte 'N'"
    );
}

#[test]
fn bad_column_kind() {
    for kind in [b'x', b'N', b'T', 0] {
        assert_eq!(
            err(msg(&[b"I", &[0; 4], b"N", &[0, 2], b"n", &[kind]])),
            DecodeError::InvalidByte {
                message: "Insert",
                field: "column kind",
                value: char::from(kind),
            }
        );
    }
    assert_eq!(
        err(msg(&[b"U", &[0; 4], b"O", &[0, 1], b"?", b"N", &[0, 0]])).to_string(),
        "pgoutput Update message has invalid column kind byte '?'"
    );
}

#[test]
fn bad_replica_identity() {
    assert_eq!(
        err(msg(&[b"R", &[0; 4], b"\0t\0", b"D", &[0, 0]])).to_string(),
        "pgoutput Relation message has invalid replica identity byte 'D'"
    );
}

#[test]
fn names_must_be_utf8() {
    assert_eq!(
        err(msg(&[b"R", &[0; 4], b"\xff\0t\0d", &[0, 0]])).to_string(),
        "pgoutput Relation message has a namespace that is not UTF-8"
    );
    assert_eq!(
        err(msg(&[
            b"R",
            &[0; 4],
            b"\0t\0d",
            &[0, 1],
            &[0],
            b"\xc3\0",
            &[0; 8]
        ])),
        DecodeError::NotUtf8 {
            message: "Relation",
            field: "column name",
        }
    );
    assert_eq!(
        err(msg(&[b"O", &[0; 8], b"\x80\0"])).to_string(),
        "pgoutput Origin message has a origin name that is not UTF-8"
    );
    assert_eq!(
        err(msg(&[b"M", &[0], &[0; 8], b"\xfe\0", &[0; 4]])),
        DecodeError::NotUtf8 {
            message: "Message",
            field: "prefix",
        }
    );
    // Values are bytes, not strings: invalid UTF-8 in a text value is the caller's to judge.
    assert_eq!(
        ok(msg(&[
            b"I",
            &[0; 4],
            b"N",
            &[0, 1],
            b"t",
            &[0, 0, 0, 1],
            b"\xff"
        ])),
        PgOutput::Insert {
            relation: 0,
            new: tuple(vec![TupleValue::Text(Bytes::from_static(b"\xff"))]),
        }
    );
}

#[test]
fn negative_counts_and_lengths() {
    let cases: &[(Bytes, &str)] = &[
        (
            msg(&[b"I", &[0; 4], b"N", &[0xff, 0xff]]),
            "pgoutput Insert message has a negative column count",
        ),
        (
            msg(&[b"U", &[0; 4], b"O", &[0x80, 0x00], b"N", &[0, 0]]),
            "pgoutput Update message has a negative column count",
        ),
        (
            msg(&[b"R", &[0; 4], b"\0t\0d", &[0xff, 0xfe]]),
            "pgoutput Relation message has a negative column count",
        ),
        (
            msg(&[
                b"I",
                &[0; 4],
                b"N",
                &[0, 1],
                b"t",
                &[0xff, 0xff, 0xff, 0xff],
            ]),
            "pgoutput Insert message has a negative value length",
        ),
        (
            msg(&[b"D", &[0; 4], b"K", &[0, 1], b"b", &[0x80, 0, 0, 0]]),
            "pgoutput Delete message has a negative value length",
        ),
        (
            msg(&[b"M", &[1], &[0; 8], b"p\0", &[0xff, 0xff, 0xff, 0xff], b"x"]),
            "pgoutput Message message has a negative content length",
        ),
    ];
    for (data, expected) in cases {
        assert_eq!(err(data.clone()).to_string(), *expected, "{data:02x?}");
    }
}

#[test]
fn huge_counts_without_data_fail_fast() {
    let start = std::time::Instant::now();
    let cases: &[(Bytes, &str)] = &[
        // i16::MAX columns, no column data.
        (
            msg(&[b"I", &[0; 4], b"N", &[0x7f, 0xff]]),
            "pgoutput Insert message is truncated while reading column kind",
        ),
        (
            msg(&[b"R", &[0; 4], b"\0t\0d", &[0x7f, 0xff]]),
            "pgoutput Relation message is truncated while reading column flags",
        ),
        // i16::MAX null columns then nothing: every column is read, none allocates.
        (
            msg(&[b"I", &[0; 4], b"N", &[0x7f, 0xff], &[b'n'; 1000]]),
            "pgoutput Insert message is truncated while reading column kind",
        ),
        // u32::MAX relations, with and without a few ids.
        (
            msg(&[b"T", &[0xff; 4], &[0]]),
            "pgoutput Truncate message is truncated while reading relation id",
        ),
        (
            msg(&[b"T", &[0xff; 4], &[1], &[0; 12]]),
            "pgoutput Truncate message is truncated while reading relation id",
        ),
        // i32::MAX value and content lengths.
        (
            msg(&[
                b"I",
                &[0; 4],
                b"N",
                &[0, 1],
                b"b",
                &[0x7f, 0xff, 0xff, 0xff],
            ]),
            "pgoutput Insert message is truncated while reading value",
        ),
        (
            msg(&[b"M", &[0], &[0; 8], b"\0", &[0x7f, 0xff, 0xff, 0xff]]),
            "pgoutput Message message is truncated while reading content",
        ),
    ];
    for (data, expected) in cases {
        assert_eq!(err(data.clone()).to_string(), *expected, "{data:02x?}");
    }
    // i16::MAX columns that are all present decode.
    let mut full = msg(&[b"I", &[0; 4], b"N", &[0x7f, 0xff]]).to_vec();
    full.resize(full.len() + 0x7fff, b'u');
    let PgOutput::Insert { new, .. } = ok(Bytes::from(full)) else {
        panic!("not an insert");
    };
    assert_eq!(new.0.len(), 0x7fff);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------

/// Names as Postgres sends them: NUL-terminated, so no NUL inside.
fn arb_name() -> impl Strategy<Value = String> {
    "[^\x00]{0,12}"
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn arb_value() -> impl Strategy<Value = TupleValue> {
    prop_oneof![
        Just(TupleValue::Null),
        Just(TupleValue::UnchangedToast),
        arb_bytes().prop_map(TupleValue::Text),
        arb_bytes().prop_map(TupleValue::Binary),
    ]
}

fn arb_tuple() -> impl Strategy<Value = Tuple> {
    prop::collection::vec(arb_value(), 0..8).prop_map(Tuple)
}

fn arb_old() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        arb_tuple().prop_map(OldTuple::Key),
        arb_tuple().prop_map(OldTuple::Full),
    ]
}

fn arb_lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn arb_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn arb_column() -> impl Strategy<Value = RelationColumn> {
    (any::<bool>(), arb_name(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, type_oid, type_modifier)| RelationColumn {
            is_key,
            name,
            type_oid,
            type_modifier,
        },
    )
}

fn arb_pgoutput() -> impl Strategy<Value = PgOutput> {
    prop_oneof![
        (arb_lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, t, xid)| {
            PgOutput::Begin(Begin {
                final_lsn,
                commit_time: PgTimestamp(t),
                xid,
            })
        }),
        (any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, t)| PgOutput::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time: PgTimestamp(t),
            })
        ),
        (arb_lsn(), arb_name())
            .prop_map(|(commit_lsn, name)| PgOutput::Origin { commit_lsn, name }),
        (
            any::<u32>(),
            arb_name(),
            arb_name(),
            arb_identity(),
            prop::collection::vec(arb_column(), 0..6)
        )
            .prop_map(|(id, namespace, name, replica_identity, columns)| {
                PgOutput::Relation(Relation {
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), arb_name(), arb_name()).prop_map(|(id, namespace, name)| {
            PgOutput::Type {
                id,
                namespace,
                name,
            }
        }),
        (any::<u32>(), arb_tuple()).prop_map(|(relation, new)| PgOutput::Insert { relation, new }),
        (any::<u32>(), prop::option::of(arb_old()), arb_tuple())
            .prop_map(|(relation, old, new)| PgOutput::Update { relation, old, new }),
        (any::<u32>(), arb_old()).prop_map(|(relation, old)| PgOutput::Delete { relation, old }),
        (any::<u8>(), prop::collection::vec(any::<u32>(), 0..8))
            .prop_map(|(options, relations)| PgOutput::Truncate { options, relations }),
        (any::<bool>(), arb_lsn(), arb_name(), arb_bytes()).prop_map(
            |(transactional, lsn, prefix, content)| PgOutput::Message {
                transactional,
                lsn,
                prefix,
                content,
            }
        ),
    ]
}

/// Bytes that look like the start of a message more often than uniform noise does.
fn arb_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (
            prop::sample::select(b"BCORYIUDTM".to_vec()),
            prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    prop::sample::select(b"NKOnutb\0\xff\x7f".to_vec())
                ],
                0..64
            )
        )
            .prop_map(|(tag, rest)| [vec![tag], rest].concat()),
    ]
}

/// A valid message with some bytes overwritten, some inserted, or the tail cut.
fn arb_mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        arb_pgoutput(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    )
        .prop_map(|(m, edits)| {
            let mut data = encode(&m);
            for (at, byte, op) in edits {
                let i = at.index(data.len() + 1);
                match op {
                    0 if i < data.len() => data[i] = byte,
                    1 => data.insert(i, byte),
                    _ => data.truncate(i),
                }
            }
            data
        })
}

proptest! {
    #[test]
    fn decode_inverts_encode(m in arb_pgoutput()) {
        let data = encode(&m);
        prop_assert_eq!(decode(Bytes::from(data.clone())), Ok(m.clone()));
        // Every strict prefix of a valid message is a truncation, never a panic.
        for n in 0..data.len() {
            let is_truncated = matches!(
                decode(Bytes::copy_from_slice(&data[..n])),
                Err(DecodeError::Truncated { .. })
            );
            prop_assert!(is_truncated, "prefix {} of {:02x?}", n, data);
        }
    }

    #[test]
    fn decode_never_panics(data in arb_input()) {
        if let Ok(m) = decode(Bytes::from(data)) {
            prop_assert_eq!(decode(Bytes::from(encode(&m))), Ok(m));
        }
    }

    #[test]
    fn decode_never_panics_on_mutated_messages(data in arb_mutated()) {
        if let Ok(m) = decode(Bytes::from(data)) {
            prop_assert_eq!(decode(Bytes::from(encode(&m))), Ok(m));
        }
    }
}
