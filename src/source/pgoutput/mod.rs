//! A pure decoder of `pgoutput` messages (logical replication protocol version 1).
//!
//! Input is the payload of one XLogData message; output is a typed [`PgOutput`]. The
//! decoder never panics: any truncated, over-long or unknown input is a [`DecodeError`]
//! that says what was being read. Column values stay as slices of the input buffer
//! (`Bytes`), so decoding copies no row data.
//!
//! Reference: PostgreSQL docs, "Logical Replication Message Formats".

use bytes::{Buf, Bytes};

use crate::lsn::Lsn;

/// Microseconds since 2000-01-01 00:00:00 UTC, as Postgres sends timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutput {
    /// Start of a transaction.
    Begin(Begin),
    /// End of a transaction.
    Commit(Commit),
    /// The transaction came from another node (replication origin).
    Origin {
        /// LSN of the commit on the origin server.
        commit_lsn: Lsn,
        /// Origin name.
        name: String,
    },
    /// Describes a table; sent before its first change in a session and after schema changes.
    Relation(Relation),
    /// Names a non-built-in type used by a following Relation.
    Type {
        /// Type OID.
        id: u32,
        /// Schema of the type.
        namespace: String,
        /// Type name.
        name: String,
    },
    /// A new row.
    Insert {
        /// Relation OID.
        relation: u32,
        /// The new row.
        new: Tuple,
    },
    /// A changed row.
    Update {
        /// Relation OID.
        relation: u32,
        /// Old key ('K') or whole old row ('O'), when Postgres sent one.
        old: Option<OldTuple>,
        /// The new row.
        new: Tuple,
    },
    /// A removed row.
    Delete {
        /// Relation OID.
        relation: u32,
        /// Old key ('K') or whole old row ('O').
        old: OldTuple,
    },
    /// TRUNCATE of one or more relations.
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        /// Relation OIDs.
        relations: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Whether it was emitted inside a transaction.
        transactional: bool,
        /// LSN of the message.
        lsn: Lsn,
        /// Prefix given by the emitter.
        prefix: String,
        /// Content bytes.
        content: Bytes,
    },
}

/// A Begin message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit timestamp.
    pub commit_time: PgTimestamp,
    /// Transaction id.
    pub xid: u32,
}

/// A Commit message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently unused by Postgres).
    pub flags: u8,
    /// LSN of the commit record (equals Begin's `final_lsn`).
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the transaction is delivered.
    pub end_lsn: Lsn,
    /// Commit timestamp.
    pub commit_time: PgTimestamp,
}

/// How the table identifies old rows (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// Primary key columns ('d').
    Default,
    /// Nothing ('n').
    Nothing,
    /// All columns ('f').
    Full,
    /// Columns of a chosen unique index ('i').
    Index,
}

/// One column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
}

/// A Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID, used by the change messages that follow.
    pub id: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Columns in table order (dropped and generated columns excluded by Postgres).
    pub columns: Vec<RelationColumn>,
}

/// One column value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// SQL NULL ('n').
    Null,
    /// A TOASTed value that did not change and was not sent ('u').
    UnchangedToast,
    /// The value in the type's text output format ('t').
    Text(Bytes),
    /// The value in the type's binary format ('b', only with the `binary` option).
    Binary(Bytes),
}

/// A row: one value per column of its Relation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tuple(pub Vec<TupleValue>);

/// The old row of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the replica identity key columns are meaningful; the rest are null ('K').
    Key(Tuple),
    /// The whole old row, under REPLICA IDENTITY FULL ('O').
    Full(Tuple),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// The bytes were not a valid pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ended before a field was complete.
    #[error("pgoutput {message} message is truncated while reading {field}")]
    Truncated {
        /// Message kind.
        message: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// The first byte is not a message type this decoder knows.
    #[error("unknown pgoutput message type {0:?}")]
    UnknownMessage(char),
    /// A byte that selects a variant had a value outside the protocol.
    #[error("pgoutput {message} message has invalid {field} byte {value:?}")]
    InvalidByte {
        /// Message kind.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// The byte found.
        value: char,
    },
    /// A name was not valid UTF-8.
    #[error("pgoutput {message} message has a {field} that is not UTF-8")]
    NotUtf8 {
        /// Message kind.
        message: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// A count or length was negative.
    #[error("pgoutput {message} message has a negative {field}")]
    Negative {
        /// Message kind.
        message: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// Bytes were left after the message ended.
    #[error("pgoutput {message} message has {extra} trailing bytes")]
    Trailing {
        /// Message kind.
        message: &'static str,
        /// Bytes left over.
        extra: usize,
    },
}

/// A cursor over one message that knows which message it is reading, for error messages.
struct Reader {
    buf: Bytes,
    message: &'static str,
}

impl Reader {
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
            });
        }
        Ok(())
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_i16())
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_i32())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_i64())
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.need(8, field)?;
        Ok(Lsn(self.buf.get_u64()))
    }

    fn count(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let n = self.i16(field)?;
        usize::try_from(n).map_err(|_| DecodeError::Negative {
            message: self.message,
            field,
        })
    }

    /// A NUL-terminated string.
    fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated {
                message: self.message,
                field,
            })?;
        let bytes = self.buf.split_to(end);
        self.buf.advance(1);
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8 {
            message: self.message,
            field,
        })
    }

    fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(len, field)?;
        Ok(self.buf.split_to(len))
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.count("column count")?;
        // Each column takes at least one byte: cap the allocation by what is there.
        let mut values = Vec::with_capacity(n.min(self.buf.remaining()));
        for _ in 0..n {
            let kind = self.u8("column kind")?;
            values.push(match kind {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' | b'b' => {
                    let len = self.i32("value length")?;
                    let len = usize::try_from(len).map_err(|_| DecodeError::Negative {
                        message: self.message,
                        field: "value length",
                    })?;
                    let data = self.bytes(len, "value")?;
                    if kind == b't' {
                        TupleValue::Text(data)
                    } else {
                        TupleValue::Binary(data)
                    }
                }
                other => {
                    return Err(DecodeError::InvalidByte {
                        message: self.message,
                        field: "column kind",
                        value: char::from(other),
                    });
                }
            });
        }
        Ok(Tuple(values))
    }

    fn old_tuple(&mut self, marker: u8) -> Result<OldTuple, DecodeError> {
        match marker {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            other => Err(DecodeError::InvalidByte {
                message: self.message,
                field: "tuple marker",
                value: char::from(other),
            }),
        }
    }

    fn expect_new(&mut self, marker: u8) -> Result<(), DecodeError> {
        if marker == b'N' {
            Ok(())
        } else {
            Err(DecodeError::InvalidByte {
                message: self.message,
                field: "tuple marker",
                value: char::from(marker),
            })
        }
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.buf.has_remaining() {
            return Err(DecodeError::Trailing {
                message: self.message,
                extra: self.buf.remaining(),
            });
        }
        Ok(())
    }
}

/// The name of the message a tag byte starts, as error messages call it.
pub(crate) fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        _ => return None,
    })
}

/// Decodes one pgoutput message (the data of one XLogData).
pub fn decode(data: Bytes) -> Result<PgOutput, DecodeError> {
    let mut r = Reader {
        buf: data,
        message: "empty",
    };
    let tag = r.u8("message type")?;
    r.message = message_name(tag).ok_or(DecodeError::UnknownMessage(char::from(tag)))?;
    let msg = match tag {
        b'B' => PgOutput::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time: PgTimestamp(r.i64("commit timestamp")?),
            xid: r.u32("xid")?,
        }),
        b'C' => PgOutput::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time: PgTimestamp(r.i64("commit timestamp")?),
        }),
        b'O' => PgOutput::Origin {
            commit_lsn: r.lsn("commit LSN")?,
            name: r.cstr("origin name")?,
        },
        b'R' => {
            let id = r.u32("relation id")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = match r.u8("replica identity")? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                other => {
                    return Err(DecodeError::InvalidByte {
                        message: r.message,
                        field: "replica identity",
                        value: char::from(other),
                    });
                }
            };
            let n = r.count("column count")?;
            let mut columns = Vec::with_capacity(n.min(r.buf.remaining()));
            for _ in 0..n {
                columns.push(RelationColumn {
                    is_key: r.u8("column flags")? & 1 == 1,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            PgOutput::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => PgOutput::Type {
            id: r.u32("type id")?,
            namespace: r.cstr("namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let relation = r.u32("relation id")?;
            let marker = r.u8("tuple marker")?;
            r.expect_new(marker)?;
            PgOutput::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32("relation id")?;
            let marker = r.u8("tuple marker")?;
            let old = if marker == b'N' {
                None
            } else {
                let old = r.old_tuple(marker)?;
                let marker = r.u8("tuple marker")?;
                r.expect_new(marker)?;
                Some(old)
            };
            PgOutput::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32("relation id")?;
            let marker = r.u8("tuple marker")?;
            PgOutput::Delete {
                relation,
                old: r.old_tuple(marker)?,
            }
        }
        b'T' => {
            let n = r.u32("relation count")?;
            let options = r.u8("options")?;
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            let mut relations = Vec::with_capacity(n.min(r.buf.remaining() / 4));
            for _ in 0..n {
                relations.push(r.u32("relation id")?);
            }
            PgOutput::Truncate { options, relations }
        }
        _ => {
            // 'M': the only tag left after the match above.
            let flags = r.u8("flags")?;
            let lsn = r.lsn("LSN")?;
            let prefix = r.cstr("prefix")?;
            let len = r.i32("content length")?;
            let len = usize::try_from(len).map_err(|_| DecodeError::Negative {
                message: "Message",
                field: "content length",
            })?;
            PgOutput::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.bytes(len, "content")?,
            }
        }
    };
    r.finish()?;
    Ok(msg)
}

/// Encodes a message the way Postgres does: the inverse of [`decode`], for tests and fuzzing.
pub fn encode(msg: &PgOutput) -> Vec<u8> {
    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    fn tuple(out: &mut Vec<u8>, t: &Tuple) {
        out.extend_from_slice(&(t.0.len() as i16).to_be_bytes());
        for v in &t.0 {
            match v {
                TupleValue::Null => out.push(b'n'),
                TupleValue::UnchangedToast => out.push(b'u'),
                TupleValue::Text(b) | TupleValue::Binary(b) => {
                    out.push(if matches!(v, TupleValue::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }
    fn old(out: &mut Vec<u8>, o: &OldTuple) {
        out.push(match o {
            OldTuple::Key(_) => b'K',
            OldTuple::Full(_) => b'O',
        });
        tuple(out, o.tuple());
    }
    let mut out = Vec::new();
    match msg {
        PgOutput::Begin(b) => {
            out.push(b'B');
            out.extend_from_slice(&b.final_lsn.0.to_be_bytes());
            out.extend_from_slice(&b.commit_time.0.to_be_bytes());
            out.extend_from_slice(&b.xid.to_be_bytes());
        }
        PgOutput::Commit(c) => {
            out.push(b'C');
            out.push(c.flags);
            out.extend_from_slice(&c.commit_lsn.0.to_be_bytes());
            out.extend_from_slice(&c.end_lsn.0.to_be_bytes());
            out.extend_from_slice(&c.commit_time.0.to_be_bytes());
        }
        PgOutput::Origin { commit_lsn, name } => {
            out.push(b'O');
            out.extend_from_slice(&commit_lsn.0.to_be_bytes());
            cstr(&mut out, name);
        }
        PgOutput::Relation(r) => {
            out.push(b'R');
            out.extend_from_slice(&r.id.to_be_bytes());
            cstr(&mut out, &r.namespace);
            cstr(&mut out, &r.name);
            out.push(match r.replica_identity {
                ReplicaIdentity::Default => b'd',
                ReplicaIdentity::Nothing => b'n',
                ReplicaIdentity::Full => b'f',
                ReplicaIdentity::Index => b'i',
            });
            out.extend_from_slice(&(r.columns.len() as i16).to_be_bytes());
            for c in &r.columns {
                out.push(u8::from(c.is_key));
                cstr(&mut out, &c.name);
                out.extend_from_slice(&c.type_oid.to_be_bytes());
                out.extend_from_slice(&c.type_modifier.to_be_bytes());
            }
        }
        PgOutput::Type {
            id,
            namespace,
            name,
        } => {
            out.push(b'Y');
            out.extend_from_slice(&id.to_be_bytes());
            cstr(&mut out, namespace);
            cstr(&mut out, name);
        }
        PgOutput::Insert { relation, new } => {
            out.push(b'I');
            out.extend_from_slice(&relation.to_be_bytes());
            out.push(b'N');
            tuple(&mut out, new);
        }
        PgOutput::Update {
            relation,
            old: o,
            new,
        } => {
            out.push(b'U');
            out.extend_from_slice(&relation.to_be_bytes());
            if let Some(o) = o {
                old(&mut out, o);
            }
            out.push(b'N');
            tuple(&mut out, new);
        }
        PgOutput::Delete { relation, old: o } => {
            out.push(b'D');
            out.extend_from_slice(&relation.to_be_bytes());
            old(&mut out, o);
        }
        PgOutput::Truncate { options, relations } => {
            out.push(b'T');
            out.extend_from_slice(&(relations.len() as u32).to_be_bytes());
            out.push(*options);
            for r in relations {
                out.extend_from_slice(&r.to_be_bytes());
            }
        }
        PgOutput::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => {
            out.push(b'M');
            out.push(u8::from(*transactional));
            out.extend_from_slice(&lsn.0.to_be_bytes());
            cstr(&mut out, prefix);
            out.extend_from_slice(&(content.len() as i32).to_be_bytes());
            out.extend_from_slice(content);
        }
    }
    out
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
