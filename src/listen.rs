//! `walhook listen`: a local receiver that prints every request as one JSON line and checks
//! its Standard Webhooks signature, for trying triggers out before a real endpoint exists.
//!
//! Each request becomes
//! `{"webhook_id":…,"timestamp":…,"verified":true|false|null,"method":…,"path":…,"body":…}`
//! (`body` is the parsed JSON, or the raw text when it is not JSON; `verified` is null without
//! a secret). Answers: 204 when verified or when no secret is set; **401** when a secret is
//! set and the signature is missing or wrong — the line is still printed, and walhook then
//! logs the 401 and retries, exactly as it would against a real receiver that checks
//! signatures, so a wrong secret shows up on both sides instead of passing silently. 500 if
//! the line cannot be written (so the sender keeps the event). `GET /healthz` answers 200 and
//! is not printed, for container health checks.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{Value, json};

use crate::delivery::sign::Signer;

/// Largest request body accepted (batches can be large).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

struct Listener<W> {
    signer: Option<Signer>,
    out: Mutex<W>,
}

/// Serves on `listener` until it fails, writing one JSON line per request to `out`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    secret: Option<String>,
    out: impl Write + Send + 'static,
) -> std::io::Result<()> {
    let signer = secret
        .as_deref()
        .map(Signer::new)
        .transpose()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let state = Arc::new(Listener {
        signer,
        out: Mutex::new(out),
    });
    let app = Router::new()
        .fallback(receive)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state);
    axum::serve(listener, app).await
}

async fn receive<W: Write + Send + 'static>(
    State(state): State<Arc<Listener<W>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    // A health check: not printed (a GET trigger shows up on any other path).
    if method == Method::GET && uri.path() == "/healthz" {
        return StatusCode::OK;
    }
    let (line, verified) = render(state.signer.as_ref(), &method, &uri, &headers, &body);
    let written = match state.out.lock() {
        Ok(mut out) => out.write_all(line.as_bytes()).and_then(|()| out.flush()),
        Err(_) => Err(std::io::Error::other("output lock poisoned")),
    };
    if let Err(e) = written {
        tracing::error!(error = %e, "cannot write the received request");
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    match verified {
        Some(false) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::NO_CONTENT,
    }
}

/// The output line (with its newline) and the verification result.
fn render(
    signer: Option<&Signer>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (String, Option<bool>) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id = header("webhook-id");
    let timestamp = header("webhook-timestamp");
    let verified = signer.map(|s| match (id, timestamp, header("webhook-signature")) {
        (Some(id), Some(ts), Some(sig)) => s.verify(id, ts, body, sig),
        _ => false,
    });
    let timestamp = timestamp.map(|t| t.parse::<u64>().map_or_else(|_| json!(t), |n| json!(n)));
    // Parsed and re-printed compactly so the line stays one line; preserve_order and
    // arbitrary_precision keep keys and numbers as sent.
    // A GET (or a DELETE without a body) has none: null.
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice::<Value>(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    let mut line = json!({
        "webhook_id": id,
        "timestamp": timestamp,
        "verified": verified,
        "method": method.as_str(),
        "path": uri.path_and_query().map_or("/", |p| p.as_str()),
        "body": body,
    })
    .to_string();
    line.push('\n');
    (line, verified)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_get_has_a_null_body_and_its_query() {
        let uri: Uri = "/search?name=a%20b".parse().unwrap();
        let (line, _) = render(None, &Method::GET, &uri, &HeaderMap::new(), b"");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/search?name=a%20b");
        assert!(v["body"].is_null());
    }

    #[test]
    fn prints_one_verified_line() {
        let signer = Signer::new(SECRET).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let uri: Uri = "/hooks?x=1".parse().unwrap();
        let (line, verified) = render(Some(&signer), &Method::POST, &uri, &h, body);
        assert_eq!(verified, Some(true));
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        assert_eq!(
            line.trim_end(),
            r#"{"webhook_id":"msg_p5jXN8AQM9LWM0D4loKWxJek","timestamp":1614265330,"verified":true,"method":"POST","path":"/hooks?x=1","body":{"test":2432232314}}"#
        );
    }

    #[test]
    fn wrong_or_missing_signature_is_false_and_no_secret_is_null() {
        let signer = Signer::new(SECRET).unwrap();
        let h = headers(&[
            ("webhook-id", "a"),
            ("webhook-timestamp", "1"),
            ("webhook-signature", "v1,bm9wZQ=="),
        ]);
        let uri: Uri = "/".parse().unwrap();
        assert_eq!(
            render(Some(&signer), &Method::PUT, &uri, &h, b"{}").1,
            Some(false)
        );
        assert_eq!(
            render(Some(&signer), &Method::PUT, &uri, &HeaderMap::new(), b"{}").1,
            Some(false)
        );
        let (line, verified) = render(None, &Method::PATCH, &uri, &HeaderMap::new(), b"not json\n");
        assert_eq!(verified, None);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["verified"], Value::Null);
        assert_eq!(v["webhook_id"], Value::Null);
        assert_eq!(v["body"], json!("not json\n"));
        assert_eq!(v["method"], json!("PATCH"));
    }
}
