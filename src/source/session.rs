//! Opening a replication session: the catalog connection, the slot, START_REPLICATION with
//! the options this server version understands.

use crate::config::TableName;
use crate::lsn::Lsn;
use crate::source::connection::{ConnectError, ReplicationConnection};
use crate::source::conninfo::{self, ConnInfo};
use crate::source::relations::RelationCache;
use crate::source::setup::{self, quote_ident, quote_literal};
use crate::source::stream::{ReplicationStream, SourceError};

/// Which slot to stream from.
#[derive(Debug, Clone)]
pub enum Slot {
    /// A temporary slot created for this session and dropped by the server when it ends.
    Temporary(String),
    /// A permanent slot, created if missing; streaming resumes at its confirmed position.
    Permanent(String),
    /// A slot that must already exist (not created); streaming starts at its confirmed position.
    Existing(String),
}

impl Slot {
    /// The slot's name.
    pub fn name(&self) -> &str {
        match self {
            Slot::Temporary(n) | Slot::Permanent(n) | Slot::Existing(n) => n,
        }
    }
}

/// Everything needed to start streaming.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Where to connect.
    pub conninfo: ConnInfo,
    /// The slot.
    pub slot: Slot,
    /// The publication to decode.
    pub publication: String,
    /// Make the publication publish exactly these tables (creating it if missing) rather
    /// than requiring that it exists.
    pub publish: Option<Vec<TableName>>,
}

/// The `START_REPLICATION` options for a server version (`server_version_num`).
///
/// `messages` exists from Postgres 14; sending it to 13 fails the command.
pub fn pgoutput_options(publication: &str, server_version_num: u32) -> String {
    let mut options = format!(
        "proto_version '1', publication_names {}",
        quote_literal(&quote_ident(publication))
    );
    if server_version_num >= 140_000 {
        options.push_str(", messages 'true'");
    }
    options
}

/// Connects, checks the preconditions, sets up the publication and the slot as asked, and
/// starts streaming. The catalog connection opened here stays with the stream.
pub async fn open(opts: &SessionOptions) -> Result<ReplicationStream, SourceError> {
    let client = conninfo::connect_sql(&opts.conninfo).await?;
    open_on(client, opts).await
}

/// [`open`] over a catalog connection the caller has already made (and may have used for
/// its own checks).
pub async fn open_on(
    mut client: tokio_postgres::Client,
    opts: &SessionOptions,
) -> Result<ReplicationStream, SourceError> {
    setup::check_wal_level(&client).await?;
    setup::check_replication_role(&client).await?;
    // A standby must not touch the publication the active instance streams with (its
    // triggers, and so its tables, may differ during a rolling deploy).
    if let Slot::Permanent(name) = &opts.slot {
        if let Some(pid) = setup::slot_state(&client, name)
            .await?
            .and_then(|s| s.active_pid)
        {
            return Err(SourceError::SlotActive(pid));
        }
    }
    match &opts.publish {
        Some(tables) => {
            // A trigger table missing from the publication of a slot that already exists
            // may be drift (removed while walhook was not running): its changes since then
            // were not captured. Say so before adding it back.
            if let Slot::Permanent(name) = &opts.slot {
                if let Some(slot) = setup::slot_state(&client, name).await? {
                    for table in
                        setup::missing_from_publication(&client, &opts.publication, tables).await?
                    {
                        tracing::warn!(
                            "publication {:?} lacks {table}, which a trigger names; walhook adds \
                             it now. If it was in the publication and removed while slot {name:?} \
                             existed (confirmed up to {}), its changes committed since then were \
                             not captured; if the trigger is new, there is nothing to worry about",
                            opts.publication,
                            slot.confirmed_flush
                        );
                    }
                }
            }
            let change = setup::sync_publication(&client, &opts.publication, tables).await?;
            tracing::info!(publication = %opts.publication, ?change, "publication");
        }
        None => setup::check_publication(&client, &opts.publication).await?,
    }
    let mut repl = ReplicationConnection::connect(&opts.conninfo).await?;
    // Which pgoutput options to send depends on it: guessing could fail START_REPLICATION
    // (too new) or lose logical messages (too old).
    let version = repl.server_version_num().ok_or_else(|| {
        ConnectError::Protocol("the server did not report a readable server_version".into())
    })?;
    let slot = quote_ident(opts.slot.name());
    let start = match &opts.slot {
        Slot::Temporary(_) => {
            let rows = repl
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT"
                ))
                .await?;
            let text = rows.first().and_then(|r| r.get(1)).unwrap_or_default();
            text.parse::<Lsn>().map_err(|_| setup::SetupError::BadLsn {
                what: "the temporary slot's position",
                value: text.to_owned(),
            })?
        }
        // Never a silent gap: a slot walhook streamed from before must still be there.
        Slot::Permanent(name) => {
            crate::store::slot::open(&mut client, name)
                .await?
                .confirmed_flush
        }
        Slot::Existing(name) => {
            setup::slot_state(&client, name)
                .await?
                .ok_or_else(|| setup::SetupError::NoSlot(name.clone()))?
                .confirmed_flush
        }
    };
    let (reader, writer) = repl
        .start_replication(&format!(
            "START_REPLICATION SLOT {slot} LOGICAL {start} ({})",
            pgoutput_options(&opts.publication, version)
        ))
        .await?;
    tracing::info!(slot = opts.slot.name(), %start, "streaming");
    Ok(ReplicationStream::new(
        reader,
        writer,
        RelationCache::reconnecting(client, opts.conninfo.clone()),
        start,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_follow_the_server_version() {
        assert_eq!(
            pgoutput_options("walhook", 130_012),
            "proto_version '1', publication_names '\"walhook\"'"
        );
        assert!(pgoutput_options("walhook", 150_004).ends_with(", messages 'true'"));
        assert_eq!(
            pgoutput_options("it's", 130_000),
            "proto_version '1', publication_names '\"it''s\"'"
        );
    }
}
