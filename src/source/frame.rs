//! Backend messages off the wire, one layer like mini-redis's frames: bytes → (tag, body)
//! frames cut from one buffer, a cursor that reads a body without panicking, and the fields
//! of ErrorResponse and NoticeResponse, which every reader of frames has to handle.
//!
//! Reference: PostgreSQL docs, "Message Formats".

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::connection::ConnectError;

/// Largest backend message accepted; Postgres itself never sends more than 1 GiB.
pub(super) const MAX_MESSAGE_LEN: usize = 1 << 30;

/// One backend message: its tag and body (without the 5-byte header).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Frame {
    /// The message type byte.
    pub(super) tag: u8,
    /// Everything after the length field.
    pub(super) body: Bytes,
}

/// Takes one complete message off the front of `buf`, if it holds one.
pub(super) fn take_frame(buf: &mut BytesMut) -> Result<Option<Frame>, ConnectError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len < 4 {
        return Err(ConnectError::Protocol(format!(
            "message '{}' has length {len}, less than its own length field",
            char::from(tag)
        )));
    }
    if len > MAX_MESSAGE_LEN {
        return Err(ConnectError::Protocol(format!(
            "message '{}' claims {len} bytes, more than the 1 GiB Postgres can send",
            char::from(tag)
        )));
    }
    if buf.len() < 1 + len {
        // Grow towards the announced size in steps, so a large message is not read in tiny
        // reads, yet a bogus length cannot make us allocate a gigabyte up front.
        buf.reserve((1 + len - buf.len()).min(1 << 20));
        return Ok(None);
    }
    let mut frame = buf.split_to(1 + len);
    frame.advance(5);
    Ok(Some(Frame {
        tag,
        body: frame.freeze(),
    }))
}

/// Reads until one message is buffered. `Ok(None)`: the peer closed at a message boundary.
/// Cancel-safe: the only await is `read_buf`, and all state lives in `buf`.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<Frame>, ConnectError> {
    loop {
        if let Some(frame) = take_frame(buf)? {
            return Ok(Some(frame));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        if rd.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ConnectError::Closed)
            };
        }
    }
}

/// A cursor over a message body that reports truncation instead of panicking.
pub(super) struct Body<'a>(pub(super) &'a [u8]);

impl<'a> Body<'a> {
    fn truncated() -> ConnectError {
        ConnectError::Protocol("message shorter than its contents".into())
    }

    /// One byte.
    pub(super) fn u8(&mut self) -> Result<u8, ConnectError> {
        let (&b, rest) = self.0.split_first().ok_or_else(Body::truncated)?;
        self.0 = rest;
        Ok(b)
    }

    /// The next `n` bytes.
    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ConnectError> {
        if self.0.len() < n {
            return Err(Body::truncated());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A big-endian Int16.
    pub(super) fn i16(&mut self) -> Result<i16, ConnectError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian Int32.
    pub(super) fn i32(&mut self) -> Result<i32, ConnectError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated UTF-8 string.
    pub(super) fn cstr(&mut self) -> Result<&'a str, ConnectError> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| ConnectError::Protocol("string without terminator".into()))?;
        let s = std::str::from_utf8(&self.0[..end])
            .map_err(|_| ConnectError::Protocol("string is not UTF-8".into()))?;
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    /// Everything not read yet.
    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// The fields of an ErrorResponse or NoticeResponse.
fn error_fields(body: &[u8]) -> Result<HashMap<u8, String>, ConnectError> {
    let mut b = Body(body);
    let mut fields = HashMap::new();
    loop {
        match b.u8()? {
            0 => return Ok(fields),
            kind => {
                // Messages are in the server's language and may not be UTF-8 before the
                // client_encoding takes effect; keep them readable rather than failing.
                let end =
                    b.0.iter()
                        .position(|&c| c == 0)
                        .ok_or_else(Body::truncated)?;
                let value = String::from_utf8_lossy(b.bytes(end)?).into_owned();
                b.u8()?;
                fields.insert(kind, value);
            }
        }
    }
}

/// An ErrorResponse as a [`ConnectError::Server`] (a [`ConnectError::Protocol`] if malformed).
pub(super) fn server_error(body: &[u8]) -> ConnectError {
    let mut f = match error_fields(body) {
        Ok(f) => f,
        Err(e) => return e,
    };
    ConnectError::Server {
        // 'V' is the untranslated severity (9.6+); 'S' may be localized.
        severity: f
            .remove(&b'V')
            .or_else(|| f.remove(&b'S'))
            .unwrap_or_else(|| "ERROR".into()),
        code: f.remove(&b'C').unwrap_or_else(|| "XX000".into()),
        message: f.remove(&b'M').unwrap_or_default(),
        detail: f.remove(&b'D'),
        hint: f.remove(&b'H'),
    }
}

/// Logs a NoticeResponse at info level.
pub(super) fn log_notice(body: &[u8]) {
    if let Ok(f) = error_fields(body) {
        let get = |k: u8| f.get(&k).map(String::as_str).unwrap_or("");
        log_server_notice(get(b'V'), get(b'C'), get(b'M'), get(b'D'));
    }
}

/// A NoticeResponse in walhook's log, on either kind of connection: WARNING as a warning;
/// NOTICE, INFO, LOG and DEBUG (`… does not exist, skipping` and the like, whose outcome
/// walhook reports in its own words) at debug level.
pub(crate) fn log_server_notice(severity: &str, code: &str, message: &str, detail: &str) {
    // PostgreSQL 18 decodes past changes written while the publication did not exist (it was
    // dropped and created again) and only warns: those changes are gone from the stream.
    if message.starts_with("skipped loading publication") {
        metrics::counter!("walhook_drift_total", "kind" => "publication").increment(1);
        tracing::error!(
            code,
            detail,
            "drift: postgres: {message}: changes written while the publication did not exist \
             (it was dropped and created again) are skipped by the server and not delivered; \
             deliver the rows changed in that time from the tables themselves"
        );
        return;
    }
    if severity == "WARNING" {
        tracing::warn!(code, detail, "postgres: {message}");
    } else {
        tracing::debug!(severity, code, detail, "postgres: {message}");
    }
}

/// A message the protocol does not allow at this point.
pub(super) fn unexpected(tag: u8, during: &str) -> ConnectError {
    ConnectError::Protocol(format!(
        "unexpected message '{}' {during}",
        char::from(tag).escape_default()
    ))
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // tests may panic on bad fixtures
mod tests {
    use std::time::Duration;

    use bytes::BufMut;
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn frames_split_across_reads_and_many_per_read() {
        let mut wire = msg(b'd', b"hello");
        wire.extend(msg(b'd', b""));
        wire.extend(msg(b'c', b""));
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in &wire {
            buf.put_u8(*byte);
            while let Some(f) = take_frame(&mut buf).expect("valid") {
                frames.push(f);
            }
        }
        let all_at_once = {
            let mut buf = BytesMut::from(wire.as_slice());
            let mut v = Vec::new();
            while let Some(f) = take_frame(&mut buf).expect("valid") {
                v.push(f);
            }
            v
        };
        assert_eq!(frames, all_at_once);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].body.as_ref(), b"hello");
        assert_eq!(frames[2].tag, b'c');
    }

    #[test]
    fn absurd_lengths_are_errors_not_allocations() {
        let mut buf = BytesMut::from(&[b'd', 0x7F, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(
            take_frame(&mut buf),
            Err(ConnectError::Protocol(_))
        ));
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(matches!(
            take_frame(&mut buf),
            Err(ConnectError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn recv_is_cancel_safe() {
        let (mut server, client) = tokio::io::duplex(64);
        let (rd, _wr) = tokio::io::split(client);
        // Stand-in reader over the duplex: same read_frame as ReplicationReader.
        let mut rd = rd;
        let mut buf = BytesMut::new();
        let wire = [msg(b'd', b"first"), msg(b'd', b"second")].concat();
        server.write_all(&wire[..7]).await.expect("write");
        // Cancel a read that has consumed part of a message.
        let r = tokio::time::timeout(Duration::from_millis(20), read_frame(&mut rd, &mut buf));
        assert!(r.await.is_err(), "no complete frame yet");
        server.write_all(&wire[7..]).await.expect("write");
        drop(server);
        let a = read_frame(&mut rd, &mut buf)
            .await
            .expect("ok")
            .expect("frame");
        let b = read_frame(&mut rd, &mut buf)
            .await
            .expect("ok")
            .expect("frame");
        assert_eq!(
            (a.body.as_ref(), b.body.as_ref()),
            (&b"first"[..], &b"second"[..])
        );
        assert!(read_frame(&mut rd, &mut buf).await.expect("ok").is_none());
    }

    #[tokio::test]
    async fn eof_inside_a_message_is_an_error() {
        let wire = msg(b'd', b"payload");
        let mut rd = &wire[..6];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_frame(&mut rd, &mut buf).await,
            Err(ConnectError::Closed)
        ));
    }

    #[test]
    fn server_errors_read_as_one_line() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0Done\ntwo\0\0";
        let e = server_error(body);
        assert_eq!(e.code(), Some("28P01"));
        assert!(!e.is_transient());
        assert_eq!(
            e.to_string(),
            "FATAL 28P01: password authentication failed for user \"x\". DETAIL: one two"
        );
        // Truncated field lists become protocol errors, not panics.
        assert!(matches!(server_error(b"C28P01"), ConnectError::Protocol(_)));
    }
}
