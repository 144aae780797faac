//! One target's HTTP side: the request parts built once (URI, `host`, fixed headers, signer),
//! and one signed attempt over a lane's [`Connection`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderName,
    HeaderValue, RETRY_AFTER, USER_AGENT,
};
use hyper::{Method, Request, Uri};
use rustls::ClientConfig;

use super::DeliveryError;
use super::Shape;
use super::connection::{Connection, Endpoint, HttpError};
use super::outcome::{self, Verdict};
use super::retry;
use super::sign::Signer;
use crate::config::template::encode_request_target;
use crate::config::{DeliverySpec, EventType, HttpMethod};

const USER_AGENT_VALUE: &str = concat!("walhook/", env!("CARGO_PKG_VERSION"));
/// A response body larger than this is not drained; the connection is dropped instead.
const DRAIN_LIMIT: usize = 64 * 1024;

static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// The result of one attempt.
#[derive(Debug)]
pub struct Attempt {
    /// What it means for delivery.
    pub verdict: Verdict,
    /// The HTTP status, if an answer arrived.
    pub status: Option<u16>,
    /// The server's `Retry-After`, if it sent a valid one.
    pub retry_after: Option<Duration>,
    /// The transport error, if no answer arrived (it never shows the URL).
    pub error: Option<HttpError>,
}

/// A target's request template and signer, shared by its lanes.
#[derive(Debug)]
pub struct Client {
    endpoint: Endpoint,
    /// The method of every event, unless `method` is a map (each event's shape names it).
    method: Option<Method>,
    /// Origin form (`/path?query`), as HTTP/1.1 sends it to the server itself; `None` when
    /// `url` is a template (each event's shape holds its target).
    uri: Option<Uri>,
    /// `host`, content-type, user-agent, URL credentials and the configured headers.
    fixed: HeaderMap,
    signer: Option<Signer>,
    timeout: Duration,
}

impl Client {
    /// Builds the client of one target from its (validated) delivery spec.
    pub fn new(
        target: &str,
        spec: &DeliverySpec,
        tls: &Arc<ClientConfig>,
    ) -> Result<Client, DeliveryError> {
        let url = &spec.url;
        let bad_url = |what| DeliveryError::BadUrl {
            target: target.into(),
            what,
        };
        let endpoint = Endpoint::new(url, tls).map_err(|e| bad_url(e.message()))?;
        let uri = Uri::from_maybe_shared(Bytes::from(origin_form(url)))
            .map_err(|_| bad_url("url path is not a valid request target"))?;
        let mut fixed = HeaderMap::with_capacity(spec.headers.len() + 8);
        // The authority without user info; the port only when it is not the default.
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let host = HeaderValue::try_from(host).map_err(|_| bad_url("url host is not valid"))?;
        fixed.insert(HOST, host);
        fixed.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        fixed.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        for (name, value) in &spec.headers {
            // A user header replaces a default one of the same name (e.g. content-type).
            fixed.insert(name.clone(), value.clone());
        }
        // `https://user:pass@host/` means basic auth, and wins over a configured header
        // (as it did with reqwest, which this client replaced).
        if let Some(auth) = basic_auth(url) {
            let mut value = HeaderValue::try_from(auth)
                .map_err(|_| bad_url("url credentials are not valid"))?;
            value.set_sensitive(true);
            fixed.insert(AUTHORIZATION, value);
        }
        // With a `method` map every event's shape names its method; otherwise this is it.
        let method = spec
            .method
            .is_uniform()
            .then(|| http_method(spec.method.of(EventType::ALL[0])));
        // The URL of a template is a sample (holes as `x`): never a request target.
        let uri = spec.url_template.is_none().then_some(uri);
        Ok(Client {
            endpoint,
            method,
            uri,
            fixed,
            signer: spec.signer.clone(),
            timeout: spec.timeout,
        })
    }

    /// Sends one request over `conn`, signed at send time, and classifies the answer. The
    /// target's timeout covers everything: connecting, the answer and draining its body.
    pub async fn send(
        &self,
        conn: &mut Connection,
        id: &str,
        body: Bytes,
        shape: Option<&Shape>,
    ) -> Attempt {
        let now = SystemTime::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let make = || self.request(id, now, body.clone(), shape);
        let response =
            match tokio::time::timeout_at(deadline, conn.send(&self.endpoint, make)).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return failed(e),
                Err(_) => {
                    conn.close(); // the request may be half written
                    return failed(HttpError::Timeout(self.timeout));
                }
            };
        let status = response.status().as_u16();
        let verdict = outcome::classify_status(status);
        let retry_after = match verdict {
            Verdict::Delivered => None,
            _ => response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry::parse_retry_after(v, now)),
        };
        let close = wants_close(response.headers());
        // Drain the (small) body so the connection can carry the next request. A failure
        // here does not change the verdict: the status was already received.
        let drained =
            tokio::time::timeout_at(deadline, conn.drain(response.into_body(), DRAIN_LIMIT))
                .await
                .unwrap_or(false);
        if close || !drained {
            conn.close();
        }
        Attempt {
            verdict,
            status: Some(status),
            retry_after,
            error: None,
        }
    }

    /// The request: the fixed parts, the event's shape (method, target, templated
    /// headers), id, timestamp, signature and length. A GET carries no body and no
    /// content-type; its signature covers the empty body it sends.
    fn request(
        &self,
        id: &str,
        now: SystemTime,
        body: Bytes,
        shape: Option<&Shape>,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        if let Some(error) = shape.and_then(|s| s.unsendable.as_ref()) {
            return Err(HttpError::Unsendable(error.clone()));
        }
        // A parked row without a stored method or target was parked under another config
        // (before `method` was a map, or `url` a template): sending it would guess.
        let method = match (shape.and_then(|s| s.method), &self.method) {
            (Some(m), _) => http_method(m),
            (None, Some(m)) => m.clone(),
            (None, None) => {
                return Err(HttpError::Unsendable(
                    "no method was stored for it (it was parked before `method` was a map)".into(),
                ));
            }
        };
        let uri = match shape.and_then(|s| s.target.as_deref()) {
            // A parked row's target is its path, unless a JetStream trigger parked it.
            Some(subject) if !subject.starts_with('/') => {
                return Err(HttpError::Unsendable(format!(
                    "`{subject}` is a subject, not a URL path: it was parked when this trigger published to JetStream"
                )));
            }
            Some(target) => Uri::from_maybe_shared(Bytes::copy_from_slice(target.as_bytes()))
                .map_err(|_| {
                    HttpError::Unsendable("the rendered URL is not a valid request target".into())
                })?,
            None => self.uri.clone().ok_or_else(|| {
                HttpError::Unsendable(
                    "no URL path was stored for it (it was parked before `url` was a template)"
                        .into(),
                )
            })?,
        };
        let get = method == Method::GET;
        let body = if get { Bytes::new() } else { body };
        let timestamp = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let id = header_safe(id);
        let mut headers = HeaderMap::with_capacity(self.fixed.len() + 4);
        for (name, value) in &self.fixed {
            headers.insert(name.clone(), value.clone());
        }
        if get {
            headers.remove(CONTENT_TYPE);
        }
        for (name, value) in shape.map(|s| s.headers.as_slice()).unwrap_or_default() {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| HttpError::Unsendable(format!("`{name}` is not a header name")))?;
            let mut value = HeaderValue::try_from(value.as_str()).map_err(|_| {
                HttpError::Unsendable(format!("header {name}: not a valid header value"))
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        // Base64, visible ASCII (header_safe) and digits: these conversions do not fail, but
        // if one ever did, the request must not go out unsigned or without its id.
        if let Some(signer) = &self.signer {
            let signature = signer.sign(&id, &timestamp, &body);
            let v = HeaderValue::try_from(signature)
                .map_err(|_| HttpError::Request("the signature is not a valid header value"))?;
            headers.insert(WEBHOOK_SIGNATURE.clone(), v);
        }
        let v = HeaderValue::try_from(id.into_owned())
            .map_err(|_| HttpError::Request("the event id is not a valid header value"))?;
        headers.insert(WEBHOOK_ID.clone(), v);
        let v = HeaderValue::try_from(timestamp)
            .map_err(|_| HttpError::Request("the timestamp is not a valid header value"))?;
        headers.insert(WEBHOOK_TIMESTAMP.clone(), v);
        if !get {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

fn http_method(m: HttpMethod) -> Method {
    match m {
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Get => Method::GET,
        HttpMethod::Delete => Method::DELETE,
    }
}

fn failed(error: HttpError) -> Attempt {
    Attempt {
        verdict: outcome::classify_error(&error),
        status: None,
        retry_after: None,
        error: Some(error),
    }
}

/// `connection: close` (a token of the header, any case): the server will close after this.
fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

/// `/path?query` of `url` (the fragment is never sent).
/// The URL's request target, normalised as a template's literal text is (`{`, `|`, `^` in
/// a query are percent-encoded too).
fn origin_form(url: &url::Url) -> String {
    let mut out = String::new();
    encode_request_target(url.path(), &mut out);
    if let Some(query) = url.query() {
        out.push('?');
        encode_request_target(query, &mut out);
    }
    out
}

/// `Basic base64(user:password)` from the URL's user info (percent-decoded), if any.
fn basic_auth(url: &url::Url) -> Option<String> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let mut credentials = percent_decode(url.username());
    credentials.push(b':');
    credentials.extend(percent_decode(url.password().unwrap_or("")));
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    Some(format!("Basic {encoded}"))
}

/// `%XX` → the byte; anything else (including a malformed escape) is kept as is.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                // Two hex digits are at most 255.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'%'));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Header values must be visible ASCII; event ids are, but never let one stall a lane.
fn header_safe(id: &str) -> std::borrow::Cow<'_, str> {
    if id.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        std::borrow::Cow::Borrowed(id)
    } else {
        std::borrow::Cow::Owned(
            id.chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '_' })
                .collect(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_made_header_safe() {
        assert_eq!(header_safe("0/16B3748-3"), "0/16B3748-3");
        assert_eq!(header_safe("a b\né"), "a_b__");
    }

    #[test]
    fn user_agent_names_the_version() {
        assert_eq!(
            USER_AGENT_VALUE,
            format!("walhook/{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn url_credentials_become_basic_auth() {
        let url = url::Url::parse("https://us%40r:p%3Ass@example.com/x").unwrap();
        let want = base64::engine::general_purpose::STANDARD.encode("us@r:p:ss");
        assert_eq!(basic_auth(&url), Some(format!("Basic {want}")));
        let plain = url::Url::parse("https://example.com/x").unwrap();
        assert_eq!(basic_auth(&plain), None);
        assert_eq!(percent_decode("a%2"), b"a%2");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
    }

    #[test]
    fn request_target_and_host_come_from_the_url() {
        let url = url::Url::parse("http://u:p@127.0.0.1:8080/a/b?x=1#frag").unwrap();
        assert_eq!(origin_form(&url), "/a/b?x=1");
        let tls = super::super::connection::tls_config().unwrap();
        let c = Client::new("t", &DeliverySpec::new(url), &tls).unwrap();
        let req = c
            .request("evt_1", SystemTime::now(), Bytes::from_static(b"{}"), None)
            .unwrap();
        assert_eq!(req.uri(), "/a/b?x=1");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(req.headers()[CONTENT_LENGTH], "2");
        assert_eq!(req.headers()["webhook-id"], "evt_1");
        assert!(req.headers()[AUTHORIZATION].is_sensitive());
        let default_port = url::Url::parse("https://[::1]:443/").unwrap();
        let mut spec = DeliverySpec::new(default_port);
        spec.headers
            .insert(HOST, HeaderValue::from_static("override"));
        let c = Client::new("t", &spec, &tls).unwrap();
        assert_eq!(c.fixed[HOST], "override", "a configured header wins");
        assert_eq!(c.uri.unwrap(), "/");
        // A URL without holes is normalised as a template's literal text is.
        let braces = url::Url::parse("http://h/p?a={x}|^").unwrap();
        assert_eq!(origin_form(&braces), "/p?a=%7Bx%7D%7C%5E");
    }

    #[test]
    fn a_parked_row_without_its_stored_request_is_never_sent_to_a_guess() {
        let tls = super::super::connection::tls_config().unwrap();
        let config = crate::config::parse(
            "[source]\nurl = \"postgres://h/db\"\n[[trigger]]\nname = \"t\"\ntable = \"t\"\n\
             url = \"http://h/items/{key.id}\"\n\
             method = { create = \"POST\", update = \"PUT\", delete = \"DELETE\" }\n",
            std::path::Path::new("walhook.toml"),
            &|_| None,
        )
        .unwrap();
        let c = Client::new("t", &config.triggers[0].delivery, &tls).unwrap();
        let body = Bytes::from_static(b"{}");
        // Parked under the plain config: no stored method, no stored target.
        let err = c
            .request("e", SystemTime::now(), body.clone(), None)
            .unwrap_err();
        assert!(
            err.to_string().contains("before `method` was a map"),
            "{err}"
        );
        let method_only = Shape {
            method: Some(HttpMethod::Put),
            ..Shape::default()
        };
        let err = c
            .request("e", SystemTime::now(), body.clone(), Some(&method_only))
            .unwrap_err();
        assert!(
            err.to_string().contains("before `url` was a template"),
            "{err}"
        );
        // Parked by a JetStream trigger of the same name: a subject is no path.
        let subject = Shape {
            method: Some(HttpMethod::Put),
            target: Some("cdc.items".into()),
            ..Shape::default()
        };
        let err = c
            .request("e", SystemTime::now(), body.clone(), Some(&subject))
            .unwrap_err();
        assert!(err.to_string().contains("is a subject"), "{err}");
        let stored = Shape {
            method: Some(HttpMethod::Put),
            target: Some("/items/7".into()),
            ..Shape::default()
        };
        let req = c
            .request("e", SystemTime::now(), body, Some(&stored))
            .unwrap();
        assert_eq!(
            (req.method(), req.uri().to_string().as_str()),
            (&Method::PUT, "/items/7")
        );
    }

    #[test]
    fn connection_close_is_a_token() {
        let mut h = HeaderMap::new();
        assert!(!wants_close(&h));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Close"));
        assert!(wants_close(&h));
    }
}
