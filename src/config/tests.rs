//! End-to-end tests over [`parse`] and [`load`]: what a user sees for a given file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env(name: &str) -> Option<String> {
    match name {
        "DATABASE_URL" => Some("postgres://walhook:hunter2@db/app".into()),
        "ORDERS_TOKEN" => Some("tok-123".into()),
        "ORDERS_WEBHOOK_SECRET" => Some(SECRET.into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn ok(text: &str) -> Config {
    match parse(text, Path::new("walhook.toml"), &env) {
        Ok(c) => c,
        Err(e) => panic!("unexpected config error:\n{e}"),
    }
}

fn err(text: &str) -> ConfigError {
    parse(text, Path::new("walhook.toml"), &env).expect_err("config should be rejected")
}

/// The config with `extra` appended to a valid one-trigger file.
fn with_trigger(extra: &str) -> String {
    format!(
        "[source]\nurl = \"${{DATABASE_URL}}\"\n\n[[trigger]]\nname = \"t\"\ntable = \"orders\"\nurl = \"https://example.com/hook\"\n{extra}"
    )
}

const FULL_EXAMPLE: &str = r#"
[source]
url = "${DATABASE_URL}"        # libpq-style URL
slot = "walhook"
publication = "walhook"

[defaults]
timeout = "10s"
retry = { initial = "1s", max = "10m", park_after = "2m", give_up_after = "3d" }
concurrency = 64
ordering = "row"
batch = 1

[[trigger]]
name = "order-paid"
table = "public.orders"
events = ["create", "update"]
url = "https://api.example.com/hooks/orders"
method = "POST"
headers = { Authorization = "Bearer ${ORDERS_TOKEN}" }
secret = "${ORDERS_WEBHOOK_SECRET}"
when = "record.status == 'paid' && old_record.status != 'paid'"
changed = ["status"]
columns = ["id", "status", "amount"]
"#;

#[test]
fn the_design_example_loads() {
    let c = ok(FULL_EXAMPLE);
    assert_eq!(c.source.url, "postgres://walhook:hunter2@db/app");
    assert_eq!(c.source.slot, "walhook");
    assert_eq!(c.server.listen, Some("0.0.0.0:8187".parse().unwrap()));
    let t = &c.triggers[0];
    assert_eq!(t.name, "order-paid");
    assert_eq!(t.table(), Some(&TableName::new("public", "orders")));
    let (r, d) = (&t.route, &t.delivery);
    assert_eq!(r.events, vec![ChangeKind::Create, ChangeKind::Update]);
    assert_eq!(d.url.as_str(), "https://api.example.com/hooks/orders");
    let headers: Vec<(&str, &[u8])> = d
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    assert_eq!(headers, vec![("authorization", &b"Bearer tok-123"[..])]);
    // The signer is keyed with the secret: it reproduces a signature made with it.
    let expected = crate::delivery::sign::Signer::new(SECRET)
        .unwrap()
        .sign("id", "1", b"{}");
    assert_eq!(d.signer.as_ref().unwrap().sign("id", "1", b"{}"), expected);
    assert_eq!(r.changed, vec!["status"]);
    assert_eq!(
        r.columns.as_deref(),
        Some(&["id".into(), "status".into(), "amount".into()][..])
    );
    let when = r.when.as_ref().unwrap();
    assert_eq!(
        when.columns
            .iter()
            .map(|c| format!("{}.{}", c.variable, c.column))
            .collect::<Vec<_>>(),
        vec!["record.status", "old_record.status"]
    );
    assert_eq!(d.retry, RetrySettings::default());
    assert_eq!(d.timeout, Duration::from_secs(10));
}

#[test]
fn defaults_fill_in_everything_left_out() {
    let c = ok(&with_trigger(""));
    assert_eq!(c.source.slot, "walhook");
    assert_eq!(c.source.publication, "walhook");
    let t = &c.triggers[0];
    let (r, d) = (&t.route, &t.delivery);
    assert_eq!(r.events.len(), 3);
    assert_eq!(d.method, Methods::all(HttpMethod::Post));
    assert_eq!((d.concurrency.get(), d.batch.get()), (64, 1));
    assert_eq!((r.ordering, d.on_4xx), (Ordering::Row, On4xx::Retry));
    assert!(d.signer.is_none() && r.when.is_none() && r.columns.is_none());
    assert!(r.changed.is_empty() && d.headers.is_empty());
}

#[test]
fn triggers_override_defaults_field_by_field() {
    let text = r#"
[source]
url = "postgres://db/app"
[defaults]
retry = { initial = "2s", max = "1m" }
concurrency = 8
[[trigger]]
name = "a"
table = "orders"
url = "http://localhost:8080/a"
[[trigger]]
name = "b"
table = "orders"
url = "http://localhost:8080/b"
retry.max = "5m"
concurrency = 1
ordering = "none"
batch = 100
on_4xx = "dead"
timeout = "500ms"
method = "patch"
"#;
    let c = ok(text);
    let (a, b) = (&c.triggers[0].delivery, &c.triggers[1].delivery);
    assert_eq!(a.retry.initial, Duration::from_secs(2));
    assert_eq!(a.retry.max, Duration::from_secs(60));
    assert_eq!(a.retry.park_after, Duration::from_secs(120));
    assert_eq!(a.concurrency.get(), 8);
    assert_eq!(b.retry.initial, Duration::from_secs(2));
    assert_eq!(b.retry.max, Duration::from_secs(300));
    assert_eq!((b.concurrency.get(), b.batch.get()), (1, 100));
    let ordering = c.triggers[1].route.ordering;
    assert_eq!((ordering, b.on_4xx), (Ordering::None, On4xx::Dead));
    assert_eq!(b.timeout, Duration::from_millis(500));
    assert_eq!(b.method, Methods::all(HttpMethod::Patch));
}

#[test]
fn every_problem_is_reported_at_once_with_its_line() {
    let text = r#"[source]
url = "${DATABASE_URL}"

[[trigger]]
name = "order-paid"
table = "orders"
url = "/hooks/orders"
concurrency = 0
colums = ["id"]

[[trigger]]
name = "order-paid"
table = "orders"
url = "https://example.com"
events = ["insert"]
timeout = "soon"
"#;
    let e = err(text);
    let shown = e.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(
        lines,
        vec![
            "walhook.toml:7: trigger \"order-paid\".url: not a valid URL (relative URL without a base)",
            "walhook.toml:8: trigger \"order-paid\".concurrency: must be between 1 and 10000, not 0",
            "walhook.toml:9: trigger \"order-paid\".colums: unknown key `colums` (did you mean `columns`?)",
            "walhook.toml:12: trigger \"order-paid\".name: duplicate trigger name `order-paid` (first at line 5)",
            "walhook.toml:15: trigger \"order-paid\".events: unknown event `insert` (did you mean \"create\"?); events are \"create\", \"update\", \"delete\", \"truncate\"",
            "walhook.toml:16: trigger \"order-paid\".timeout: `soon` is not a duration like \"10s\", \"2m\" or \"3d\" (expected number at 0)",
        ],
        "{shown}"
    );
}

#[test]
fn toml_syntax_errors_have_a_line() {
    let e = err("[source]\nurl = \"postgres://db\"\nslot = \n");
    assert_eq!(e.problems.len(), 1);
    assert_eq!(e.problems[0].line, Some(3));
    assert!(
        e.to_string()
            .starts_with("walhook.toml:3: TOML syntax error: "),
        "{e}"
    );
}

#[test]
fn wrong_types_say_what_was_expected() {
    let e = err(&with_trigger(
        "batch = \"10\"\nevents = \"create\"\nheaders = 3\n",
    ));
    let shown = e.to_string();
    assert!(
        shown.contains("walhook.toml:8: trigger \"t\".batch: expected an integer, found a string"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "walhook.toml:9: trigger \"t\".events: expected an array of strings, found a string"
        ),
        "{shown}"
    );
    assert!(
        shown
            .contains("walhook.toml:10: trigger \"t\".headers: expected a table, found an integer"),
        "{shown}"
    );
}

#[test]
fn trigger_without_a_valid_name_is_named_by_position() {
    let e = err(&with_trigger("").replace("name = \"t\"", "name = \"order paid\""));
    let shown = e.to_string();
    assert!(
        shown.contains("trigger[1].name: `order paid` is not a valid trigger name"),
        "{shown}"
    );
    let e = err(&with_trigger("").replace("name = \"t\"\n", ""));
    assert!(
        e.to_string()
            .contains("walhook.toml:4: trigger[1].name: missing"),
        "{e}"
    );
}

#[test]
fn urls_must_be_http_or_https_and_are_never_echoed() {
    let e = err(&with_trigger("").replace(
        "https://example.com/hook",
        "ftp://secret-token@example.com/",
    ));
    let shown = e.to_string();
    assert!(
        shown.contains("the URL scheme must be http or https, not `ftp`"),
        "{shown}"
    );
    assert!(!shown.contains("secret-token"), "{shown}");
}

#[test]
fn source_url_and_secrets_never_appear_in_errors() {
    let text = with_trigger(
        "secret = \"whsec_not base64!!\"\nheaders = { X-Token = \"abc\\u0001def\" }\n",
    )
    .replace("${DATABASE_URL}", "mysql://root:hunter2@db");
    let shown = err(&text).to_string();
    assert!(shown.contains("source.url: not a libpq URL"), "{shown}");
    assert!(
        shown.contains("trigger \"t\".secret: the part after `whsec_` is not valid base64"),
        "{shown}"
    );
    assert!(
        shown.contains("trigger \"t\".headers.X-Token: not a valid HTTP header value"),
        "{shown}"
    );
    for leaked in ["hunter2", "not base64", "abc"] {
        assert!(!shown.contains(leaked), "{leaked} leaked in:\n{shown}");
    }
    let shown = err(&with_trigger("secret = \"sk_live_123\"\n")).to_string();
    assert!(
        shown.contains("must start with `whsec_`") && !shown.contains("sk_live"),
        "{shown}"
    );
}

#[test]
fn debug_output_redacts_credentials() {
    let c = ok(FULL_EXAMPLE);
    let shown = format!("{c:?}");
    for leaked in ["hunter2", "tok-123", SECRET] {
        assert!(!shown.contains(leaked), "{leaked} leaked in {shown}");
    }
}

#[test]
fn unset_variables_are_reported_with_the_key() {
    let e = err(&with_trigger("secret = \"${ORDERS_SECRET}\"\n"));
    assert_eq!(
        e.to_string(),
        "walhook.toml:8: trigger \"t\".secret: environment variable ORDERS_SECRET is not set (write ${ORDERS_SECRET:-default} for a fallback)"
    );
}

#[test]
fn no_triggers_is_an_error() {
    let e = err("[source]\nurl = \"postgres://db/app\"\n");
    assert_eq!(
        e.to_string(),
        "walhook.toml: trigger: no triggers: add at least one [[trigger]] table"
    );
    let e = err("[trigger]\nname = \"x\"\n");
    let shown = e.to_string();
    assert!(shown.contains("note the double brackets"), "{shown}");
    assert!(shown.contains("walhook.toml: source: missing"), "{shown}");
}

#[test]
fn server_listen() {
    let c = ok(&format!(
        "[server]\nlisten = \"127.0.0.1:9000\"\n{}",
        with_trigger("")
    ));
    assert_eq!(c.server.listen, Some("127.0.0.1:9000".parse().unwrap()));
    let c = ok(&format!("[server]\nlisten = \"\"\n{}", with_trigger("")));
    assert_eq!(c.server.listen, None);
    let e = err(&format!(
        "[server]\nlisten = \"localhost\"\n{}",
        with_trigger("")
    ));
    assert!(
        e.to_string()
            .starts_with("walhook.toml:2: server.listen: `localhost` is not an address"),
        "{e}"
    );
}

#[test]
fn numeric_and_duration_limits() {
    let shown = err(&with_trigger(
        "batch = 10001\nconcurrency = -1\nretry = { initial = \"5m\", max = \"1m\" }\ntimeout = \"0s\"\n",
    ))
    .to_string();
    assert!(
        shown.contains(":8: trigger \"t\".batch: must be between 1 and 10000, not 10001"),
        "{shown}"
    );
    assert!(
        shown.contains(":9: trigger \"t\".concurrency: must be between 1 and 10000, not -1"),
        "{shown}"
    );
    assert!(
        shown
            .contains(":10: trigger \"t\".retry: retry.initial (5m) is longer than retry.max (1m)"),
        "{shown}"
    );
    assert!(
        shown.contains(":11: trigger \"t\".timeout: must be longer than 0s"),
        "{shown}"
    );
    let shown = err(&format!(
        "[defaults]\nretry = {{ max = \"1s\", initial = \"2s\" }}\n{}",
        with_trigger("")
    ))
    .to_string();
    assert!(
        shown.contains(
            "walhook.toml:2: defaults.retry: retry.initial (2s) is longer than retry.max (1s)"
        ),
        "{shown}"
    );
}

#[test]
fn lists_must_not_be_empty() {
    let shown = err(&with_trigger(
        "changed = []\ncolumns = [\"id\", \"id\"]\nevents = []\n",
    ))
    .to_string();
    assert!(
        shown.contains(":8: trigger \"t\".changed: must not be empty"),
        "{shown}"
    );
    assert!(
        shown.contains(":9: trigger \"t\".columns[2]: `id` is listed twice"),
        "{shown}"
    );
    assert!(
        shown.contains(":10: trigger \"t\".events: must not be empty"),
        "{shown}"
    );
}

#[test]
fn bad_cel_is_reported() {
    let shown = err(&with_trigger("when = \"record.status == \"\n")).to_string();
    assert!(
        shown.starts_with("walhook.toml:8: trigger \"t\".when: not a valid CEL expression: "),
        "{shown}"
    );
    assert!(
        err(&with_trigger("when = \"  \"\n"))
            .to_string()
            .contains("empty expression")
    );
    let shown = err(&with_trigger("when = \"recrod.status == 'paid'\"\n")).to_string();
    assert!(shown.ends_with("when: unknown variable `recrod` (the variables are record, old_record, changed, type, schema, table, id, trigger, key, prefix, content, transactional)"), "{shown}");
    let text = with_trigger(
        "when = \"record.tags.exists(t, t == 'vip') && type(record.id) == int && [1].map(x, x) == [1]\"\n",
    );
    assert!(ok(&text).triggers[0].route.when.is_some());
    let shown = err(&with_trigger("when = \"record.status == \"\n")).to_string();
    assert!(shown.contains(" at 1:"), "{shown}");
}

#[test]
fn header_names_are_checked() {
    let shown = err(&with_trigger(
        "headers = { \"Bad Name\" = \"x\", Webhook-Signature = \"y\", X-A = \"1\", x-a = \"2\" }\n",
    ))
    .to_string();
    assert!(
        shown.contains("headers.Bad Name: not a valid HTTP header name"),
        "{shown}"
    );
    assert!(
        shown.contains("headers.Webhook-Signature: `Webhook-Signature` is set by walhook"),
        "{shown}"
    );
    assert!(shown.contains("headers.x-a: given twice"), "{shown}");
}

#[test]
fn unknown_top_level_and_nested_keys() {
    let text = format!(
        "[sourse]\nx = 1\n[defaults]\nretry = {{ intial = \"1s\" }}\n{}",
        with_trigger("").replace("[source]\n", "[source]\nslot = \"Bad-Slot\"\n")
    );
    let shown = err(&text).to_string();
    assert!(
        shown.contains("walhook.toml:1: sourse: unknown key `sourse` (did you mean `source`?)"),
        "{shown}"
    );
    assert!(
        shown.contains("walhook.toml:6: source.slot: `Bad-Slot` is not a valid slot name"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "walhook.toml:4: defaults.retry.intial: unknown key `intial` (did you mean `initial`?)"
        ),
        "{shown}"
    );
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    let e = load(&path).unwrap_err();
    assert!(e.to_string().contains("cannot read the config file"), "{e}");
    std::fs::write(&path, "[source]\nurl = 1\n").unwrap();
    let e = load(&path).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "{}:2: source.url: expected a string",
            path.display()
        )),
        "{e}"
    );
}

#[test]
fn park_url_names_another_database_for_parked_events() {
    let c = ok(&with_trigger(""));
    assert_eq!(c.park, None);
    assert_eq!(c.park_url(), "postgres://walhook:hunter2@db/app");
    let text = with_trigger("").replace(
        "[[trigger]]",
        "[park]\nurl = \"postgres://parker@other/park\"\n\n[[trigger]]",
    );
    let c = ok(&text);
    assert_eq!(c.park_url(), "postgres://parker@other/park");
    assert!(!format!("{c:?}").contains("parker"), "the URL is redacted");
    let bad = with_trigger("").replace(
        "[[trigger]]",
        "[park]\nurl = \"mysql://x\"\nsize = 1\n\n[[trigger]]",
    );
    let shown = err(&bad).to_string();
    assert!(shown.contains("park.url: not a libpq URL"), "{shown}");
    assert!(shown.contains("park.size"), "{shown}");
    assert!(!shown.contains("mysql://x"), "{shown}");
}

/// A one-trigger file whose trigger (named "t") is `body`.
fn one_trigger(body: &str) -> String {
    format!("[source]\nurl = \"${{DATABASE_URL}}\"\n\n[[trigger]]\nname = \"t\"\n{body}")
}

#[test]
fn rest_style_triggers_read_method_maps_templates_and_body() {
    let c = ok(&one_trigger(
        r#"table = "items"
url = "https://api.example.com/items/{key.id}?v={{1}}"
method = { create = "POST", update = "PUT", delete = "DELETE" }
headers = { "Idempotency-Key" = "{id}", Accept = "application/{{json}}" }
body = "{'name': record.name}"
"#,
    ));
    let d = &c.triggers[0].delivery;
    assert_eq!(d.url.host_str(), Some("api.example.com"));
    let t = d.url_template.as_ref().unwrap();
    assert_eq!(t.columns.len(), 1);
    assert_eq!(
        (t.columns[0].variable, t.columns[0].column.as_str()),
        ("key", "id")
    );
    assert_eq!(
        d.method.of(EventType::Change(ChangeKind::Delete)),
        HttpMethod::Delete
    );
    assert_eq!(
        d.method.of(EventType::Change(ChangeKind::Update)),
        HttpMethod::Put
    );
    assert!(!d.method.is_uniform());
    assert_eq!(d.header_templates.len(), 1);
    assert_eq!(d.header_templates[0].0.as_str(), "idempotency-key");
    // No holes: a fixed header, its braces unescaped.
    assert_eq!(d.headers["accept"], "application/{json}");
    assert_eq!(d.body.as_ref().unwrap().columns[0].column, "name");
    assert!(d.shapes_requests());

    let c = ok(&one_trigger(
        "table = \"items\"\nurl = \"http://h/x\"\nmethod = \"GET\"\n",
    ));
    assert_eq!(c.triggers[0].delivery.method, Methods::all(HttpMethod::Get));
    assert!(!c.triggers[0].delivery.shapes_requests());
}

#[test]
fn shaping_mistakes_are_reported() {
    for (body, want) in [
        (
            "table = \"items\"\nurl = \"http://h/x\"\nmethod = { create = \"POST\" }\n",
            "method: no method for update, delete",
        ),
        (
            "table = \"items\"\nurl = \"http://h/x\"\nmethod = { insert = \"POST\" }\n",
            "unknown event type `insert`",
        ),
        (
            "table = \"items\"\nurl = \"http://h/x\"\nmethod = \"HEAD\"\n",
            "method",
        ),
        (
            "table = \"items\"\nurl = \"http://h/x\"\nmethod = \"GET\"\nbatch = 10\n",
            "batch > 1 cannot be used with GET",
        ),
        (
            "table = \"items\"\nurl = \"http://{record.host}/x\"\n",
            "scheme, user info, host or port",
        ),
        (
            "table = \"items\"\nurl = \"http:/{record.host}/x\"\n",
            "scheme, user info, host or port",
        ),
        (
            "table = \"items\"\nurl = \"http://h/x\"\nevents = [\"create\"]\nmethod = { create = \"POST\", delete = \"DELETE\" }\n",
            "does not fire on delete (it fires on create)",
        ),
        (
            "table = \"items\"\nurl = \"http://h/x\"\nmethod = \"GET\"\nbody = \"record\"\n",
            "every event of this trigger is sent with GET; remove `body`",
        ),
        (
            "table = \"items\"\nurl = \"http://h/x\"\nbody = \"record\"\ncolumns = [\"id\"]\n",
            "`columns` trims the default envelope and does nothing with `body`",
        ),
        (
            "table = \"items\"\nurl = \"http://h/{recrod.id}\"\n",
            "unknown variable `recrod`",
        ),
        (
            "table = \"items\"\nurl = \"http://h/x\"\nheaders = { X-Id = \"{id\" }\n",
            "never closed",
        ),
        (
            "table = \"items\"\nurl = \"http://h/x\"\nbody = \"\"\n",
            "empty expression",
        ),
        (
            "table = \"items\"\nurl = \"http://h/x\"\nbody = \"content\"\n",
            "`content` is a message's variable",
        ),
        (
            "message = \"orders.*\"\nurl = \"http://h/{record.id}\"\n",
            "`record` is a row change's variable",
        ),
        (
            "message = \"orders.*\"\ntable = \"items\"\nurl = \"http://h/x\"\n",
            "not both",
        ),
        (
            "message = \"orders.*\"\nurl = \"http://h/x\"\nevents = [\"create\"]\n",
            "`events` is for table triggers",
        ),
        (
            "message = \"or*ders\"\nurl = \"http://h/x\"\n",
            "may only end",
        ),
        ("message = \"\"\nurl = \"http://h/x\"\n", "empty"),
        ("url = \"http://h/x\"\n", "message = \"orders.shipped\""),
    ] {
        let shown = err(&one_trigger(body)).to_string();
        assert!(shown.contains(want), "{body}: {shown}");
    }
}

#[test]
fn message_and_truncate_triggers() {
    let c = ok(&one_trigger(
        "message = \"orders.*\"\nurl = \"http://h/{prefix}\"\nmethod = { message = \"PUT\" }\nwhen = \"content.total > 10\"\n",
    ));
    let t = &c.triggers[0];
    assert!(t.table().is_none());
    let Watch::Message(m) = &t.watch else {
        panic!("a message trigger")
    };
    assert!(m.matches("orders.shipped") && !m.matches("order"));
    assert_eq!(t.delivery.method, Methods::all(HttpMethod::Put));
    let exact = MessagePattern {
        prefix: "orders.shipped".into(),
        wildcard: false,
    };
    assert!(exact.matches("orders.shipped") && !exact.matches("orders.shipped.x"));

    let c = ok(&one_trigger(
        "table = \"items\"\nurl = \"http://h/x\"\nevents = [\"truncate\", \"delete\"]\n",
    ));
    assert_eq!(
        c.triggers[0].route.events,
        vec![ChangeKind::Truncate, ChangeKind::Delete]
    );
}

#[test]
fn batch_linger_is_a_short_duration_zero_included() {
    let c = ok(&with_trigger("batch = 100\nbatch_linger = \"0s\"\n"));
    assert_eq!(c.triggers[0].delivery.batch_linger, Duration::ZERO);
    let c = ok(&with_trigger("batch = 100\n"));
    assert_eq!(c.triggers[0].delivery.batch_linger, DEFAULT_BATCH_LINGER);
    let shown = err(&with_trigger("batch_linger = \"2s\"\n")).to_string();
    assert!(shown.contains("batch_linger: at most 1s"), "{shown}");
}
