//! The slot walhook streams from, remembered in `walhook.slot_state`: its name, where it
//! started, and a position it had confirmed. A slot that is dropped or invalidated under
//! walhook is then noticed, and walhook stops naming the changes at risk, instead of
//! creating a new slot at the current WAL position and skipping whatever was committed in
//! between. `walhook setup --new-slot` is the explicit way to accept such a gap.
//!
//! The recorded position trails the slot's (it is written every few seconds, not with each
//! status update), so the range an error names starts at or before the real one.

use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::source::conninfo::{self, ConnInfo};
use crate::source::setup::{self, SetupError, SlotState};
use crate::store::{self, StoreError, sql};

/// How the slot walhook streamed from was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// It no longer exists.
    Dropped,
    /// Postgres invalidated it (`wal_status = 'lost'`): the WAL it needed was removed.
    Invalidated,
}

/// Why the slot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Reading or writing the walhook schema failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A slot query or set-up statement failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The slot walhook streamed from is gone: changes after `since` may never be delivered.
    #[error(
        "replication slot {slot:?}, which walhook streams from, {}: changes committed after \
         {since} (the last position walhook recorded) may never be delivered. walhook does not \
         create a new slot by itself; to accept the gap and start a new slot at the current \
         WAL position, run `walhook setup --new-slot` (then deliver what was missed from the \
         tables themselves, e.g. rows changed since the time of {since})",
        match .loss {
            Loss::Dropped => "was dropped",
            Loss::Invalidated =>
                "was invalidated by Postgres (wal_status = lost: it fell further behind than \
                 max_slot_wal_keep_size allows, and the WAL it needed was removed)",
        }
    )]
    Lost {
        /// The slot's name.
        slot: String,
        /// Dropped or invalidated.
        loss: Loss,
        /// The last position known to be confirmed.
        since: Lsn,
    },
}

impl SlotError {
    /// Whether retrying may help (the connection dropped) rather than needing a person.
    pub fn is_transient(&self) -> bool {
        match self {
            SlotError::Store(e) => e.is_transient(),
            SlotError::Setup(e) => e.is_transient(),
            SlotError::Lost { .. } => false,
        }
    }
}

/// A row of `walhook.slot_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRecord {
    /// The database the slot belongs to.
    pub database: String,
    /// Where the slot started when walhook created or adopted it.
    pub created: Lsn,
    /// A position the slot had confirmed.
    pub confirmed: Lsn,
}

/// The recorded state of `slot`, if walhook has streamed from a slot of that name.
pub async fn load(client: &Client, slot: &str) -> Result<Option<SlotRecord>, StoreError> {
    let rows = client
        .query(
            "SELECT database, created_lsn::text, confirmed_lsn::text \
             FROM walhook.slot_state WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("reading walhook.slot_state"))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let text = |i: usize| -> Result<String, StoreError> {
        row.try_get(i).map_err(sql("reading walhook.slot_state"))
    };
    Ok(Some(SlotRecord {
        database: text(0)?,
        created: text(1)?.parse().unwrap_or_default(),
        confirmed: text(2)?.parse().unwrap_or_default(),
    }))
}

/// Records `slot` as the one walhook streams from, starting at `start`.
pub async fn record(client: &Client, slot: &str, state: &SlotState) -> Result<(), StoreError> {
    let start = state.confirmed_flush.to_string();
    client
        .execute(
            "INSERT INTO walhook.slot_state (slot_name, database, created_lsn, confirmed_lsn) \
             VALUES ($1, $2, $3::text::pg_lsn, $3::text::pg_lsn) \
             ON CONFLICT (slot_name) DO UPDATE SET database = EXCLUDED.database, \
                 created_lsn = EXCLUDED.created_lsn, confirmed_lsn = EXCLUDED.confirmed_lsn, \
                 created_at = now(), updated_at = now()",
            &[&slot, &state.database, &start],
        )
        .await
        .map_err(sql("writing walhook.slot_state"))?;
    Ok(())
}

/// Moves the recorded position forward to `confirmed` (never back).
pub async fn advance(client: &Client, slot: &str, confirmed: Lsn) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE walhook.slot_state SET confirmed_lsn = greatest(confirmed_lsn, $2::text::pg_lsn), \
                 updated_at = now() WHERE slot_name = $1",
            &[&slot, &confirmed.to_string()],
        )
        .await
        .map_err(sql("writing walhook.slot_state"))?;
    Ok(())
}

/// [`advance`] over a connection of its own, opened for this one statement (so no idle
/// session is left that would hold off a smart shutdown).
pub async fn advance_at(info: &ConnInfo, slot: &str, confirmed: Lsn) -> Result<(), String> {
    let client = conninfo::connect_sql(info)
        .await
        .map_err(|e| e.to_string())?;
    advance(&client, slot, confirmed)
        .await
        .map_err(|e| e.to_string())
}

/// Forgets `slot` (after `teardown` dropped it); whether a row was removed. A database
/// without the walhook schema has nothing to forget.
pub async fn forget(client: &Client, slot: &str) -> Result<bool, StoreError> {
    if store::current_version(client).await?.is_none() {
        return Ok(false);
    }
    let n = client
        .execute(
            "DELETE FROM walhook.slot_state WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("writing walhook.slot_state"))?;
    Ok(n > 0)
}

/// The slot to stream from: created (and recorded) on first start, adopted and recorded if
/// it exists but was never recorded, and refused with [`SlotError::Lost`] if walhook
/// streamed from it before and it has been dropped or invalidated since.
pub async fn open(client: &mut Client, slot: &str) -> Result<SlotState, SlotError> {
    match store::migrate(client).await {
        Ok(_) => {}
        // A role that may not create the schema still streams, unguarded, and says so
        // (check warns about it too).
        Err(e @ StoreError::Privilege { .. }) => {
            tracing::warn!(
                "cannot record the slot, so a slot dropped under walhook would not be noticed: {e}"
            );
            return Ok(setup::ensure_slot(client, slot).await?);
        }
        Err(e) => return Err(e.into()),
    }
    let record = load(client, slot).await?;
    let state = setup::slot_state(client, slot).await?;
    let lost = |loss, since| SlotError::Lost {
        slot: slot.to_string(),
        loss,
        since,
    };
    match (&record, &state) {
        (Some(r), None) => return Err(lost(Loss::Dropped, r.confirmed)),
        (r, Some(s)) if s.is_lost() => {
            let since = r
                .as_ref()
                .map_or(s.confirmed_flush, |r| r.confirmed.max(s.confirmed_flush));
            return Err(lost(Loss::Invalidated, since));
        }
        _ => {}
    }
    let state = setup::ensure_slot(client, slot).await?;
    if record.is_none() {
        record_state(client, slot, &state).await?;
    }
    Ok(state)
}

async fn record_state(client: &Client, slot: &str, state: &SlotState) -> Result<(), SlotError> {
    record(client, slot, state).await?;
    tracing::info!(slot, start = %state.confirmed_flush, "recorded the slot in walhook.slot_state");
    Ok(())
}

/// What `walhook setup --new-slot` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSlot {
    /// The last recorded position of the lost slot, if there was one.
    pub lost_since: Option<Lsn>,
    /// The slot now recorded.
    pub state: SlotState,
}

/// Accepts a gap: drops the slot if Postgres invalidated it, creates one if missing, and
/// records it as the slot walhook streams from. A healthy slot is kept as it is.
pub async fn start_new(client: &mut Client, slot: &str) -> Result<NewSlot, SlotError> {
    store::migrate(client).await?;
    let record = load(client, slot).await?;
    let existing = setup::slot_state(client, slot).await?;
    let mut lost_since = None;
    match &existing {
        Some(s) if s.is_lost() => {
            lost_since = Some(
                record
                    .as_ref()
                    .map_or(s.confirmed_flush, |r| r.confirmed.max(s.confirmed_flush)),
            );
            setup::drop_slot(client, slot).await?;
        }
        Some(_) => {}
        None => lost_since = record.as_ref().map(|r| r.confirmed),
    }
    let state = setup::ensure_slot(client, slot).await?;
    record_state(client, slot, &state).await?;
    Ok(NewSlot { lost_since, state })
}

/// What `walhook setup --skip-unpublished` did: decoding failed from `from` because changes
/// were written while the publication did not exist; the slot now starts at `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// The slot's confirmed position before.
    pub from: Lsn,
    /// Its position now: the first from which decoding works.
    pub to: Lsn,
}

/// Finds the first position at or after the slot's confirmed one from which pgoutput can
/// decode with `publication` (changes written while the publication did not exist fail with
/// "publication does not exist" for ever), moves the slot there, and records it. `None` when
/// decoding already works from the confirmed position. The slot must not be in use.
///
/// Each probe decodes from a temporary copy of the slot up to the flushed position, so the
/// slot itself only moves once, to the answer; probes bisect the WAL between the confirmed
/// and the flushed position (whether decoding from X works is monotonic in X: it fails while
/// an unpublished change lies ahead). Each probe decodes the rest of the WAL, so on a large
/// backlog this takes a while; it runs once, by hand.
pub async fn skip_unpublished(
    client: &Client,
    slot: &str,
    publication: &str,
) -> Result<Option<Skipped>, SlotError> {
    let state = setup::slot_state(client, slot)
        .await?
        .ok_or_else(|| SetupError::NoSlot(slot.to_owned()))?;
    let from = state.confirmed_flush;
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(sql("looking up the publication"))?;
    if !exists {
        return Err(SetupError::NoPublication(publication.to_owned()).into());
    }
    let end: String = client
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(sql("reading the WAL position"))?;
    let end: Lsn = end.parse().map_err(|_| SetupError::BadLsn {
        what: "pg_current_wal_flush_lsn()",
        value: end.clone(),
    })?;
    if probe(client, slot, publication, from, end).await? {
        return Ok(None);
    }
    if !probe(client, slot, publication, end, end).await? {
        return Err(SetupError::NoPublication(publication.to_owned()).into());
    }
    let (mut bad, mut good) = (from.0, end.0);
    while good - bad > 1 {
        let mid = bad + (good - bad) / 2;
        if probe(client, slot, publication, Lsn(mid), end).await? {
            good = mid;
        } else {
            bad = mid;
        }
    }
    let to = Lsn(good);
    client
        .execute(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&slot, &to.to_string()],
        )
        .await
        .map_err(sql("moving the slot"))?;
    advance(client, slot, to).await?;
    Ok(Some(Skipped { from, to }))
}

/// Whether pgoutput decodes the slot's changes from `at` up to `end` without an error.
async fn probe(
    client: &Client,
    slot: &str,
    publication: &str,
    at: Lsn,
    end: Lsn,
) -> Result<bool, SlotError> {
    let probe = format!("walhook_probe_{}", std::process::id());
    client
        .execute(
            "SELECT pg_copy_logical_replication_slot($1, $2, true)",
            &[&slot, &probe],
        )
        .await
        .map_err(sql("copying the slot to probe it"))?;
    let decoded = async {
        client
            .execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&probe, &at.to_string()],
            )
            .await?;
        client
            .execute(
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, $3::text::pg_lsn, \
                 NULL, 'proto_version', '1', 'publication_names', $2)",
                &[
                    &probe,
                    &crate::source::setup::quote_ident(publication),
                    &end.to_string(),
                ],
            )
            .await
    }
    .await;
    client
        // An error in the probe already dropped it (temporary slots go with an error).
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&probe],
        )
        .await
        .map_err(sql("dropping the probe slot"))?;
    match decoded {
        Ok(_) => Ok(true),
        // undefined_object: "publication … does not exist" as of a change ahead
        Err(e)
            if e.code().map(|c| c.code()) == Some("42704")
                && e.as_db_error()
                    .is_some_and(|d| d.message().contains("publication")) =>
        {
            Ok(false)
        }
        Err(e) => Err(sql("probing the slot")(e).into()),
    }
}
