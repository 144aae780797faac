//! Request bodies and webhook ids, built from the raw job bytes (never re-serialised).
//!
//! With `batch = 1` a request is the event itself and `webhook-id` is the event id. With
//! `batch > 1` every request, even one holding a single event, is `{"events":[e1,e2,…]}` so a
//! receiver sees one shape, and its id is `{first id}-{count}-{h}` where `h` is 16 hex digits
//! of SHA-256 over the member ids. The hash matters: receivers deduplicate on `webhook-id`, and
//! after a restart with other settings a batch may start with the same event but hold others;
//! `first-count` alone would then let a receiver discard events it never saw.

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::Job;

const OPEN: &[u8] = br#"{"events":["#;
const CLOSE: &[u8] = b"]}";

/// The body of a batch request: `{"events":[<body1>,<body2>,...]}`.
pub fn body<'a>(bodies: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
    let (count, len) = bodies
        .clone()
        .fold((0, 0), |(n, l), b| (n + 1, l + b.len()));
    let mut out = BytesMut::with_capacity(OPEN.len() + len + count + CLOSE.len());
    out.put_slice(OPEN);
    for (i, b) in bodies.enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(b);
    }
    out.put_slice(CLOSE);
    out.freeze()
}

/// The `webhook-id` of a batch request (see the module doc).
pub fn id<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    let mut hash = Sha256::new();
    let mut first = None;
    let mut count = 0usize;
    for id in ids {
        first.get_or_insert(id);
        count += 1;
        hash.update(id.as_bytes());
        hash.update(b"\n");
    }
    let digest = hash.finalize();
    let mut out = String::with_capacity(first.map_or(0, str::len) + 24);
    out.push_str(first.unwrap_or(""));
    out.push('-');
    out.push_str(&count.to_string());
    out.push('-');
    for byte in &digest[..8] {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The id and body of one request carrying `jobs` (non-empty) for a target with `batch`.
pub fn request<'a, I>(jobs: I, batch: usize) -> (String, Bytes)
where
    I: Iterator<Item = &'a Job> + Clone,
{
    if batch <= 1 {
        if let Some(job) = jobs.clone().next() {
            return (job.id.clone(), job.body.clone());
        }
    }
    (
        id(jobs.clone().map(|j| j.id.as_str())),
        body(jobs.map(|j| &j.body)),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn job(id: &str, body: &'static str) -> Job {
        Job {
            id: id.into(),
            body: Bytes::from_static(body.as_bytes()),
            order_key: 0,
            txn: super::super::Ack { session: 0, txn: 0 },
            shape: None,
        }
    }

    #[test]
    fn batch_body_embeds_raw_bytes() {
        let jobs = [job("a", r#"{"x": 1.50}"#), job("b", r#"{"y":[1, 2]}"#)];
        let (_, body) = request(jobs.iter(), 10);
        assert_eq!(&body[..], br#"{"events":[{"x": 1.50},{"y":[1, 2]}]}"#);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn single_event_of_a_batch_target_is_still_wrapped() {
        let jobs = [job("a", "{}")];
        let (id, body) = request(jobs.iter(), 10);
        assert_eq!(&body[..], br#"{"events":[{}]}"#);
        assert!(id.starts_with("a-1-"), "{id}");
    }

    #[test]
    fn batch_one_sends_the_event_itself() {
        let jobs = [job("evt_1", r#"{"a":1}"#)];
        let (id, body) = request(jobs.iter(), 1);
        assert_eq!(id, "evt_1");
        assert_eq!(&body[..], br#"{"a":1}"#);
    }

    #[test]
    fn batch_ids_are_stable_and_distinguish_members() {
        let ab = id(["a", "b"].into_iter());
        assert_eq!(ab, id(["a", "b"].into_iter()));
        assert_ne!(
            ab,
            id(["a", "c"].into_iter()),
            "same first id and count, other members"
        );
        assert!(ab.starts_with("a-2-"));
        assert_eq!(ab.len(), "a-2-".len() + 16);
        assert!(!ab.contains('.'), "'.' separates the signed fields");
    }
}
