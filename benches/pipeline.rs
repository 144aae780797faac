//! Per-event costs of the daemon's hot path, stage by stage, on the 6-column table that
//! `bench/run` streams (`cargo bench --bench pipeline`):
//!
//! CopyData frame → `protocol::parse` → `pgoutput::decode` → `changes::insert`/`update` (row →
//! JSON values) → `Router::route` (trigger match, optional CEL `when`, event JSON) → signing.
//! `pipeline/*` runs every stage for one event, as the daemon does before handing it to
//! delivery.

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use walhook::config;
use walhook::delivery::sign::Signer;
use walhook::event::{Change, Event};
use walhook::lsn::Lsn;
use walhook::source::changes::{self, TxnContext};
use walhook::source::pgoutput::{
    self, PgOutput, PgTimestamp, Relation, RelationColumn, ReplicaIdentity, Tuple, TupleValue,
};
use walhook::source::protocol::{self, ReplicationMessage};
use walhook::source::relations::CachedRelation;
use walhook::source::values::PgType;
use walhook::triggers::Router;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const REL_ID: u32 = 16_400;

/// `bench (id bigserial PRIMARY KEY, account int, label text, amount numeric(12,2), paid bool,
/// created_at timestamptz)`, as the relation cache would hold it.
fn relation() -> CachedRelation {
    let col = |name: &str, oid: u32, is_key: bool| RelationColumn {
        is_key,
        name: name.into(),
        type_oid: oid,
        type_modifier: -1,
    };
    let relation = Relation {
        id: REL_ID,
        namespace: "public".into(),
        name: "bench".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            col("id", 20, true),
            col("account", 23, false),
            col("label", 25, false),
            col("amount", 1700, false),
            col("paid", 16, false),
            col("created_at", 1184, false),
        ],
    };
    let types = [
        PgType::Number,
        PgType::Number,
        PgType::Text,
        PgType::Number,
        PgType::Bool,
        PgType::Timestamptz,
    ]
    .into_iter()
    .map(Arc::new)
    .collect();
    CachedRelation {
        schema: Arc::from("public"),
        table: Arc::from("bench"),
        types,
        key_columns: vec![0],
        key_names: Arc::from(vec![relation.columns[0].name.clone()]),
        relation,
    }
}

fn row(paid: bool) -> Tuple {
    let t = |s: &str| TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()));
    Tuple(vec![
        t("1234567"),
        t("48213"),
        t("order 48213"),
        t(if paid { "483.13" } else { "482.13" }),
        t(if paid { "t" } else { "f" }),
        t("2026-11-30 09:55:19.123456+00"),
    ])
}

/// One CopyData payload as the walsender sends it: XLogData header + pgoutput message.
fn frame(msg: &PgOutput) -> Bytes {
    let body = pgoutput::encode(msg);
    let mut out = BytesMut::with_capacity(25 + body.len());
    out.put_u8(b'w');
    out.put_u64(0x1_6B37_4800);
    out.put_u64(0x1_6B37_4900);
    out.put_i64(849_000_000_000_000);
    out.put_slice(&body);
    out.freeze()
}

fn txn() -> TxnContext {
    TxnContext {
        commit_lsn: Lsn(0x1_6B37_4900),
        xid: 771_234,
        committed_at: PgTimestamp(849_000_000_123_456),
    }
}

fn router(when: Option<&str>) -> Router {
    let when = when.map_or(String::new(), |w| format!("when = {w:?}\n"));
    let text = format!(
        "[source]\nurl = \"postgres://u@localhost/db\"\n\n[[trigger]]\nname = \"bench\"\n\
         table = \"public.bench\"\nurl = \"http://127.0.0.1:9000/hook\"\nsecret = \"{SECRET}\"\n{when}"
    );
    let config = config::parse(&text, Path::new("bench.toml"), &|_| None).expect("config");
    Router::new(&config.triggers)
}

/// Decodes a frame into the change the stream would yield.
fn to_change(rel: &CachedRelation, txn: &TxnContext, frame: Bytes) -> Change {
    let ReplicationMessage::XLogData { data, .. } = protocol::parse(frame).unwrap() else {
        unreachable!("an XLogData frame")
    };
    match pgoutput::decode(data).unwrap() {
        PgOutput::Insert { new, .. } => changes::insert(rel, txn, 0, &new).unwrap(),
        PgOutput::Update { old, new, .. } => {
            changes::update(rel, txn, 1, old.as_ref(), &new).unwrap()
        }
        other => unreachable!("{other:?}"),
    }
}

fn benches(c: &mut Criterion) {
    let rel = relation();
    let txn = txn();
    let insert = frame(&PgOutput::Insert {
        relation: REL_ID,
        new: row(false),
    });
    let update = frame(&PgOutput::Update {
        relation: REL_ID,
        old: None,
        new: row(true),
    });
    let plain = router(None);
    let filtered = router(Some("record.paid == true && record.amount > 100"));
    let signer = Signer::new(SECRET).unwrap();
    let change = to_change(&rel, &txn, insert.clone());
    let body = plain.route(&change).remove(0).body;
    let id = change.event_id(Some("bench"));

    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(1));
    g.bench_function("protocol_parse+pgoutput_decode/insert", |b| {
        b.iter(|| {
            let ReplicationMessage::XLogData { data, .. } =
                protocol::parse(black_box(insert.clone())).unwrap()
            else {
                unreachable!()
            };
            pgoutput::decode(data).unwrap()
        })
    });
    let PgOutput::Insert { new, .. } =
        pgoutput::decode(Bytes::from(pgoutput::encode(&PgOutput::Insert {
            relation: REL_ID,
            new: row(false),
        })))
        .unwrap()
    else {
        unreachable!()
    };
    g.bench_function("changes_insert (row → JSON values)", |b| {
        b.iter(|| changes::insert(black_box(&rel), &txn, 0, black_box(&new)).unwrap())
    });
    g.bench_function("event_to_json", |b| {
        b.iter(|| Event::of(black_box(&change), Some("bench")).to_json())
    });
    g.bench_function("route/no_filter (match + event JSON)", |b| {
        b.iter(|| plain.route(black_box(&change)))
    });
    g.bench_function("route/cel_filter (match + when + event JSON)", |b| {
        b.iter(|| filtered.route(black_box(&change)))
    });
    g.bench_function("sign (HMAC-SHA256 + base64)", |b| {
        b.iter(|| signer.sign(black_box(&id), "1796032519", black_box(&body)))
    });
    g.finish();

    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in [("insert", &insert), ("update", &update)] {
        g.bench_function(format!("{name}/no_filter"), |b| {
            b.iter(|| {
                let change = to_change(&rel, &txn, black_box(frame.clone()));
                let routed = plain.route(&change);
                signer.sign(&routed[0].id, "1796032519", &routed[0].body)
            })
        });
    }
    g.bench_function("update/cel_filter", |b| {
        b.iter(|| {
            let change = to_change(&rel, &txn, black_box(update.clone()));
            let routed = filtered.route(&change);
            signer.sign(&routed[0].id, "1796032519", &routed[0].body)
        })
    });
    g.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
