//! Value conversion against a real Postgres: for sample values of every built-in type
//! (and enums, domains, composites, arrays), the JSON walhook builds from the type's text
//! output must equal `to_jsonb()` of the same value.
//!
//! Equality is strict: both sides are serialized (serde_json with `preserve_order` and
//! `arbitrary_precision`) and compared as text, so key order must match jsonb's and
//! numbers must match digit for digit (`1.50` is not `1.5`), as a webhook receiver would
//! see them.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use support::pg::Cluster;
use tokio_postgres::{NoTls, SimpleQueryMessage};
use walhook::source::pgoutput::{Relation, RelationColumn, ReplicaIdentity};
use walhook::source::relations::{RelationCache, builtin_oids};
use walhook::source::values::{PgType, text_to_json};

/// The replication session's settings (as `source::connection` sets them at startup).
const SESSION: &str = "SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC'; \
    SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; \
    SET client_encoding = 'UTF8'";

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy, "really"');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN label AS text;
CREATE DOMAIN price AS numeric(10,2);
CREATE DOMAIN int_list AS int[];
CREATE TYPE inner_t AS (x int, "label" text, at timestamptz);
CREATE TYPE outer_t AS (id int, "inner" inner_t, tags text[], "a b" numeric, nothing text,
    moods mood[], doc jsonb, j json, zz posint, "Z" bool);
CREATE TYPE dropped_t AS (a int, b text, c float8);
ALTER TYPE dropped_t DROP ATTRIBUTE b;
CREATE DOMAIN inner_d AS inner_t;
CREATE DOMAIN posint_list AS posint[];
CREATE TYPE wide_t AS (r tstzrange, mr text, blob bytea, arr inner_d[], grid int[], sp text, ch char(3)[]);
CREATE TABLE items (id posint PRIMARY KEY, feeling mood, tag label, cost price, body outer_t,
    moods mood[], ids int_list);
"#;

/// (SQL expression, minimum server major).
fn samples() -> Vec<(&'static str, u32)> {
    let mut s: Vec<(&'static str, u32)> = vec![
        // bool
        ("true", 0),
        ("false", 0),
        // integers
        ("0::int2", 0),
        ("(-32768)::int2", 0),
        ("2147483647::int4", 0),
        ("(-9223372036854775808)::int8", 0),
        // floats
        ("1.5::float4", 0),
        ("'NaN'::float4", 0),
        ("'-Infinity'::float4", 0),
        ("3.4028235e38::float4", 0),
        ("1e-40::float4", 0),
        ("0.1::float8", 0),
        ("'-0'::float8", 0),
        ("'NaN'::float8", 0),
        ("'Infinity'::float8", 0),
        ("'-Infinity'::float8", 0),
        ("1e-300::float8", 0),
        ("1.7976931348623157e308::float8", 0),
        ("5e-324::float8", 0),
        ("123456789012345.0::float8", 0),
        ("1e15::float8", 0),
        ("1.234e-5::float8", 0),
        ("(-2.5e10)::float8", 0),
        // numeric
        ("1.50::numeric", 0),
        ("0::numeric", 0),
        ("(-0.000)::numeric", 0),
        ("'NaN'::numeric", 0),
        (
            "'123456789012345678901234567890.123456789012345678901234567890'::numeric",
            0,
        ),
        ("1e-100::numeric", 0),
        ("1e100::numeric", 0),
        ("12.34::numeric(10,4)", 0),
        // text-like
        ("'hello'::text", 0),
        (
            "'quote \" backslash \\ tab \t newline \n unicode é 😀'::text",
            0,
        ),
        ("''::text", 0),
        ("'abc'::varchar(10)", 0),
        ("'ab'::char(5)", 0),
        ("'pg_class'::name", 0),
        ("'x'::\"char\"", 0),
        ("'\\x00ff10'::bytea", 0),
        ("''::bytea", 0),
        ("'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid", 0),
        // json / jsonb
        (
            "'{\"b\": 1, \"a\": {\"y\": [1, 2.50, 1e2, -0, true, null]}, \"b\": \"dup\"}'::json",
            0,
        ),
        ("'[1, \"two\", {\"c\": 3, \"bb\": 2, \"a\": 1}]'::json", 0),
        ("'\"just a string\"'::json", 0),
        ("'12.50'::json", 0),
        ("'1E+2'::json", 0),
        ("'null'::json", 0),
        (
            "'[1e1001, 1e-1001, 0e9999, 1.5e3, -0.0e-2, 12345678901234567890e-25, 0.001e5]'::json",
            0,
        ),
        (
            "'{\"b\": 1, \"a\": {\"y\": [1, 2.50, 1e2]}, \"b\": \"dup\"}'::jsonb",
            0,
        ),
        ("'{\"escaped\": \"\\u00e9\\n\\\"\"}'::jsonb", 0),
        ("'[]'::jsonb", 0),
        // date / time
        ("'2024-02-29'::date", 0),
        ("'infinity'::date", 0),
        ("'-infinity'::date", 0),
        ("'0044-03-15 BC'::date", 0),
        ("'10000-01-01'::date", 0),
        ("'2024-01-02 03:04:05'::timestamp", 0),
        ("'2024-01-02 03:04:05.123456'::timestamp", 0),
        ("'2024-01-02 03:04:05.5'::timestamp", 0),
        ("'infinity'::timestamp", 0),
        ("'-infinity'::timestamp", 0),
        ("'0044-03-15 12:00:00 BC'::timestamp", 0),
        ("'2024-01-02 03:04:05.123+05:30'::timestamptz", 0),
        ("'2024-06-30 23:59:59.999999Z'::timestamptz", 0),
        ("'infinity'::timestamptz", 0),
        ("'-infinity'::timestamptz", 0),
        ("'0044-03-15 12:00:00 BC'::timestamptz", 0),
        ("'1900-01-01 00:00:00 Europe/Amsterdam'::timestamptz", 0),
        ("'12:34:56.789'::time", 0),
        ("'12:34:56+05:30'::timetz", 0),
        ("'1 year 2 mons 3 days 04:05:06.7'::interval", 0),
        ("'-1 day'::interval", 0),
        // money, network, bits
        ("12.34::money", 0),
        ("'192.168.0.1/24'::inet", 0),
        ("'10.0.0.1'::inet", 0),
        ("'::1'::inet", 0),
        ("'10.0.0.0/8'::cidr", 0),
        ("'08:00:2b:01:02:03'::macaddr", 0),
        ("'08:00:2b:01:02:03:04:05'::macaddr8", 0),
        ("B'1010'::bit(4)", 0),
        ("B'101'::varbit", 0),
        // geometry
        ("'(1,2)'::point", 0),
        ("'{1,-1,0}'::line", 0),
        ("'[(0,0),(1,1)]'::lseg", 0),
        ("'(1,1),(0,0)'::box", 0),
        ("'[(0,0),(1,1),(2,0)]'::path", 0),
        ("'((0,0),(1,1),(2,0))'::polygon", 0),
        ("'<(0,0),1.5>'::circle", 0),
        // text search, xml, misc
        ("'a fat cat sat on a mat'::tsvector", 0),
        ("'fat & (rat | cat)'::tsquery", 0),
        ("'<a href=\"x\">t</a>'::xml", 0),
        ("'16/B374D848'::pg_lsn", 0),
        ("1259::oid", 0),
        ("'pg_class'::regclass", 0),
        ("'1 2 3'::int2vector", 0),
        ("'1 2'::oidvector", 0),
        ("''::int2vector", 0),
        ("ARRAY['1 2'::int2vector, '3']", 0),
        ("'(0,1)'::tid", 0),
        // ranges
        ("int4range(1, 10)", 0),
        ("'empty'::int4range", 0),
        ("numrange(1.5, NULL)", 0),
        ("tstzrange('2024-01-01', '2024-02-01')", 0),
        ("daterange('2024-01-01', '2024-02-01', '[]')", 0),
        ("int8range(NULL, NULL)", 0),
        // enum and domains
        ("'ok'::mood", 0),
        ("'happy, \"really\"'::mood", 0),
        ("5::posint", 0),
        ("'a label'::label", 0),
        ("9.5::price", 0),
        ("'{1,2}'::int_list", 0),
        // arrays
        ("ARRAY[1, 2, 3]", 0),
        ("ARRAY[[1, 2], [3, 4]]", 0),
        ("ARRAY[[[1], [2]], [[3], [4]]]", 0),
        ("ARRAY[1, NULL, 3]", 0),
        ("'{}'::int[]", 0),
        ("'[0:1]={7,8}'::int[]", 0),
        ("'[-2:-1][1:2]={{1,2},{3,4}}'::int[]", 0),
        (
            "ARRAY['a,b', 'say \"hi\"', 'back\\slash', 'NULL', NULL, '', ' spaced ', '{braces}', 'é']",
            0,
        ),
        ("ARRAY[true, false, NULL]", 0),
        ("ARRAY[1.50, 'NaN', -0.0]::numeric[]", 0),
        ("ARRAY['NaN', '-Infinity', 1e-10, 2.5]::float8[]", 0),
        ("ARRAY['2024-01-01', 'infinity']::date[]", 0),
        (
            "ARRAY['2024-01-01 10:00', '0044-03-15 12:00 BC']::timestamp[]",
            0,
        ),
        (
            "ARRAY['2024-01-01 10:00+02', '-infinity']::timestamptz[]",
            0,
        ),
        (
            "ARRAY['{\"b\": 1, \"a\": [2]}', 'null', '\"s\"']::jsonb[]",
            0,
        ),
        ("ARRAY['{\"b\": 1, \"a\": 2, \"b\": 3}', '1e3']::json[]", 0),
        ("ARRAY['(1,1),(0,0)', '(3,3),(2,2)']::box[]", 0),
        ("ARRAY['\\x01', '\\x']::bytea[]", 0),
        ("ARRAY['10.0.0.1', '::1/64']::inet[]", 0),
        ("ARRAY[int4range(1, 5), 'empty']", 0),
        ("ARRAY['ok', 'happy, \"really\"', NULL]::mood[]", 0),
        ("ARRAY[1, 2]::posint[]", 0),
        ("ARRAY['1 day', '-01:00']::interval[]", 0),
        ("ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11']::uuid[]", 0),
        (
            "ARRAY[ROW(1, 'x', NULL)::inner_t, NULL, ROW(NULL, 'a \"q\" \\ (b,c)', '2024-01-01')::inner_t]",
            0,
        ),
        (
            "ARRAY[[ROW(1, 'x', NULL)::inner_t], [ROW(2, NULL, NULL)::inner_t]]",
            0,
        ),
        // composites
        ("ROW(1, 'a b', NULL)::inner_t", 0),
        ("ROW(NULL, NULL, NULL)::inner_t", 0),
        ("ROW(2, '', 'infinity')::inner_t", 0),
        (
            "ROW(7, ROW(1, 'x, \"y\" (z)', '2024-01-02 03:04:05.6+00')::inner_t, \
             ARRAY['p', 'q r', NULL, '\"'], 1.250, NULL, ARRAY['ok', 'sad']::mood[], \
             '{\"k\": [1, {\"z\": null, \"a\": 1.0}]}', '{\"b\": 1, \"b\": 2, \"a\": 1e1}', \
             3, false)::outer_t",
            0,
        ),
        (
            "ROW(7, NULL, '{}', 'NaN', '', '{}', '\"str\"', '[]', NULL, NULL)::outer_t",
            0,
        ),
        ("ROW(1, 2.5)::dropped_t", 0),
        ("ROW(1, 'y', '-infinity')::inner_d", 0),
        ("'{1,2}'::posint_list", 0),
        ("ARRAY[ROW(1, 'x', NULL)::inner_d]", 0),
        (
            "ROW(tstzrange('2024-01-01', '2024-02-01'), 'a\\b\"c', '\\x5c22', \
             ARRAY[ROW(1, '(\"x\")', NULL)::inner_d, NULL], '{{1,NULL},{3,4}}', '  ', \
             ARRAY['ab', NULL])::wide_t",
            0,
        ),
        (
            "ARRAY[ROW(NULL, NULL, NULL, NULL, NULL, NULL, NULL)::wide_t]",
            0,
        ),
        ("'24:00:00'::time", 0),
        ("ARRAY['ab', ' ']::char(3)[]", 0),
        ("ARRAY[E'tab\\there', E'line\\nbreak', 'x\\y']", 0),
        ("ARRAY['{\"a\": \"back\\\\slash\"}']::jsonb[]", 0),
        (
            "'{\"s\": \"\\u00e9 \\\" \\\\ \\/\", \"n\": -1.5E-3}'::json",
            0,
        ),
        ("'294276-12-31 23:59:59.999999'::timestamp", 0),
        ("'4713-01-01 BC'::date", 0),
        ("'{}'::text[]", 0),
    ];
    s.extend([
        ("'Infinity'::numeric", 14),
        ("'-Infinity'::numeric", 14),
        ("ARRAY['Infinity', 1]::numeric[]", 14),
        ("'{[1,3), [5,7)}'::int4multirange", 14),
        ("'{}'::datemultirange", 14),
    ]);
    s
}

async fn connect(cluster: &Cluster, db: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&cluster.url(db), NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(SESSION)
        .await
        .expect("session settings");
    client
}

struct Sample {
    expr: &'static str,
    type_oid: u32,
    type_name: String,
    text: String,
    jsonb: String,
}

/// Runs every sample in one round trip. The simple query protocol returns values in their
/// text output format, exactly what pgoutput sends (unlike `v::text`, which for bool, inet
/// and char(n) is a different function).
async fn fetch(client: &tokio_postgres::Client, exprs: &[&'static str]) -> Vec<Sample> {
    let sql: String = exprs
        .iter()
        .map(|e| {
            format!(
                "SELECT pg_typeof(v)::oid, format_type(pg_typeof(v), NULL), v, to_jsonb(v) \
                 FROM (SELECT {e} AS v) s;\n"
            )
        })
        .collect();
    let messages = client.simple_query(&sql).await.expect("sample query");
    let rows: Vec<_> = messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), exprs.len());
    rows.into_iter()
        .zip(exprs)
        .map(|(r, &expr)| Sample {
            expr,
            type_oid: r.get(0).expect("oid").parse().expect("oid number"),
            type_name: r.get(1).expect("type name").to_string(),
            text: r.get(2).expect("value is not null").to_string(),
            jsonb: r.get(3).expect("to_jsonb is not null").to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_matches_to_jsonb() {
    let cluster = Cluster::start();
    let major = cluster.major();
    let db = cluster.create_db("values_test");
    cluster.psql(&db, SCHEMA);
    let client = connect(&cluster, &db).await;
    let mut cache = RelationCache::new(connect(&cluster, &db).await);

    let exprs: Vec<&'static str> = samples()
        .into_iter()
        .filter(|&(_, min)| major >= min)
        .map(|(e, _)| e)
        .collect();
    let samples = fetch(&client, &exprs).await;

    // WALHOOK_VALUES_DUMP=1 prints every sample's text and JSON, for review.
    let dump = std::env::var_os("WALHOOK_VALUES_DUMP").is_some();
    let mut failures = Vec::new();
    let mut verified = BTreeSet::new();
    for s in &samples {
        let ty = cache.resolve_type(s.type_oid).await.expect("type resolves");
        let expected: serde_json::Value = serde_json::from_str(&s.jsonb).expect("jsonb parses");
        let expected = serde_json::to_string(&expected).expect("serializes");
        match text_to_json(&ty, &s.text) {
            Ok(got) => {
                let got = serde_json::to_string(&got).expect("serializes");
                if dump {
                    println!("{} [{}]\n    {}\n => {got}", s.expr, s.type_name, s.text);
                }
                if got == expected {
                    verified.insert(s.type_name.clone());
                } else {
                    failures.push(format!(
                        "{}  [{}]\n   text:     {}\n   to_jsonb: {expected}\n   walhook:  {got}",
                        s.expr, s.type_name, s.text
                    ));
                }
            }
            Err(e) => failures.push(format!(
                "{}  [{}]\n   text: {}\n   error: {e}",
                s.expr, s.type_name, s.text
            )),
        }
    }
    println!(
        "PostgreSQL {major}: {} samples, {} types verified: {}",
        samples.len(),
        verified.len(),
        verified.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    assert!(
        failures.is_empty(),
        "{} of {} samples differ from to_jsonb:\n{}",
        failures.len(),
        samples.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_table_agrees_with_the_catalog() {
    let cluster = Cluster::start();
    let mut cache = RelationCache::new(connect(&cluster, "postgres").await);
    for oid in builtin_oids() {
        let fast = walhook::source::relations::builtin_type(oid).expect("listed");
        let slow = cache
            .resolve_type_from_catalog(oid)
            .await
            .unwrap_or_else(|e| panic!("oid {oid}: {e}"));
        assert_eq!(
            *slow, fast,
            "built-in mapping of type {oid} differs from pg_type"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relation_with_domain_enum_and_composite_columns_resolves() {
    let cluster = Cluster::start();
    let db = cluster.create_db("relations_test");
    cluster.psql(&db, SCHEMA);
    let client = connect(&cluster, &db).await;
    let rows = client
        .query(
            "SELECT c.oid, a.attname::text, a.atttypid, a.atttypmod FROM pg_class c \
             JOIN pg_attribute a ON a.attrelid = c.oid \
             WHERE c.relname = 'items' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[],
        )
        .await
        .expect("columns");
    let relation = Relation {
        id: rows[0].get(0),
        namespace: "public".into(),
        name: "items".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: rows
            .iter()
            .map(|r| RelationColumn {
                is_key: r.get::<_, String>(1) == "id",
                name: r.get(1),
                type_oid: r.get(2),
                type_modifier: r.get(3),
            })
            .collect(),
    };
    let id = relation.id;
    let mut cache = RelationCache::new(client);
    cache
        .on_relation(relation)
        .await
        .expect("relation resolves");
    let cached = cache.get(id).expect("cached");
    assert_eq!(&*cached.schema, "public");
    assert_eq!(&*cached.table, "items");
    let kinds: Vec<&str> = cached.types.iter().map(|t| t.kind()).collect();
    assert_eq!(
        kinds,
        [
            "number",
            "text",
            "text",
            "number",
            "composite",
            "array",
            "array"
        ]
    );
    let PgType::Composite(body) = &*cached.types[4] else {
        panic!("body is not a composite");
    };
    let names: Vec<&str> = body.fields().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "id", "inner", "tags", "a b", "nothing", "moods", "doc", "j", "zz", "Z"
        ]
    );

    // A type that is gone is a permanent, named error.
    let err = cache
        .resolve_type(4_000_000_000)
        .await
        .expect_err("no such type");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("4000000000"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_is_transient() {
    let mut cluster = Cluster::start();
    let mut cache = RelationCache::new(connect(&cluster, "postgres").await);
    cluster.kill();
    let err = cache
        .resolve_type(2249) // record: not in the built-in table, so it needs a query
        .await
        .expect_err("server is gone");
    assert!(err.is_transient(), "{err}");
}
