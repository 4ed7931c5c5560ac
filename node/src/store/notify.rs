//! The notification outbox: every notification gets a sequence number in
//! `notify-outbox-v1`, written in the same transaction as its row in
//! `notifications-v1` (see [`super::Store::notification_put`]); each
//! delivery sink keeps a cursor (the last sequence it delivered) in
//! `notify-sinks-v1`, advanced only after a delivery succeeded. So a
//! notification is delivered at least once, in order, across restarts.
//!
//! | table | key | value |
//! |---|---|---|
//! | `notify-outbox-v1` | sequence `u64` (from 1, contiguous) | entry id `[u8; 32]` (the key of `notifications-v1`) |
//! | `notify-sinks-v1` | sink name (`webhook`, `syslog`) | CBOR [`SinkState`] |
//!
//! Notifications recorded before the outbox existed are given sequences
//! once, when the store opens (`meta-v1` key `notify_outbox_migrated`
//! marks it done), so every sink, configured now or later, delivers them.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::{Deserialize, Serialize};

use super::{NOTIFICATIONS, NotificationRow, StoreError};

pub(super) const OUTBOX: TableDefinition<'_, u64, [u8; 32]> = TableDefinition::new("notify-outbox-v1");
pub(super) const SINKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("notify-sinks-v1");

/// Key in `meta-v1` recording that the notifications recorded before the
/// outbox existed were given sequences ([`super::Store::outbox_migrate`]).
pub(super) const OUTBOX_MIGRATED: &str = "notify_outbox_migrated";

const MAX_SINK_ROW: usize = 64 * 1024;
/// Longest error text kept in a sink's state.
const MAX_ERROR_LEN: usize = 512;

/// One notification in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Its sequence in the outbox.
    pub seq: u64,
    /// The ledger entry it is about (the idempotency key of deliveries).
    pub entry: [u8; 32],
    /// The notification; `None` when its row is missing (never written by
    /// this version: outbox row and notification are one transaction).
    pub row: Option<NotificationRow>,
}

/// Where a delivery sink stands, kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkState {
    /// Row version (1).
    pub v: u32,
    /// The last outbox sequence delivered (0: none).
    pub delivered: u64,
    /// When the last delivery succeeded (Unix seconds).
    #[serde(default)]
    pub delivered_at: Option<i64>,
    /// Failed attempts since the last success.
    #[serde(default)]
    pub failures: u32,
    /// The last failure's reason (no secrets: the sinks never put one there).
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the last failure happened (Unix seconds).
    #[serde(default)]
    pub last_error_at: Option<i64>,
    /// When the next attempt is due after a failure (Unix seconds).
    #[serde(default)]
    pub next_attempt: Option<i64>,
}

fn missing_is_empty<T>(r: Result<T, TableError>) -> Result<Option<T>, TableError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The next sequence of the outbox, inside a write transaction.
pub(super) fn outbox_next(table: &impl ReadableTable<u64, [u8; 32]>) -> Result<u64, redb::StorageError> {
    Ok(table.last()?.map_or(1, |(k, _)| k.value().saturating_add(1)))
}

impl super::Store {
    /// A receiver that sees the outbox's last sequence whenever a
    /// notification is added (for delivery workers to wake up).
    #[must_use]
    pub fn outbox_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.outbox_tx.subscribe()
    }

    pub(super) fn outbox_added(&self, seq: u64) {
        self.outbox_tx.send_replace(seq);
    }

    /// The outbox's last sequence (0 when empty).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn outbox_head(&self) -> Result<u64, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let Some(t) = missing_is_empty(read.open_table(OUTBOX)).map_err(|e| self.err(e))? else {
            return Ok(0);
        };
        Ok(t.last().map_err(|e| self.err(e))?.map_or(0, |(k, _)| k.value()))
    }

    /// At most `limit` notifications of the outbox after sequence `after`,
    /// in order.
    ///
    /// # Errors
    /// [`StoreError::Database`], a notification row that does not decode.
    pub fn outbox_batch(&self, after: u64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let Some(outbox) = missing_is_empty(read.open_table(OUTBOX)).map_err(|e| self.err(e))? else {
            return Ok(Vec::new());
        };
        let rows = read.open_table(NOTIFICATIONS).map_err(|e| self.err(e))?;
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in outbox.range(from..).map_err(|e| self.err(e))?.take(limit) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let entry = v.value();
            let row = match rows.get(entry).map_err(|e| self.err(e))? {
                Some(r) => Some(super::cbor::decode("notification", r.value(), 64 * 1024).map_err(StoreError::Codec)?),
                None => None,
            };
            out.push(OutboxItem {
                seq: k.value(),
                entry,
                row,
            });
        }
        Ok(out)
    }

    /// The one-time migration run when the store opens (before anything
    /// else can write a notification): gives every notification that has
    /// no outbox sequence yet (recorded before the outbox existed) one,
    /// oldest first, after the sequences already given, then records
    /// [`OUTBOX_MIGRATED`] in `meta-v1` in the same transaction. Runs
    /// whether or not a sink is configured and whatever the outbox holds:
    /// the marker, not an empty outbox, says it is done. Idempotent: a
    /// notification that has a sequence is never given a second one.
    /// Returns how many were added.
    ///
    /// # Errors
    /// [`StoreError::Database`], a notification row that does not decode.
    pub(super) fn outbox_migrate(&self) -> Result<u64, StoreError> {
        {
            let read = self.db.begin_read().map_err(|e| self.err(e))?;
            let meta = read.open_table(super::META).map_err(|e| self.err(e))?;
            if meta.get(OUTBOX_MIGRATED).map_err(|e| self.err(e))?.is_some() {
                return Ok(0);
            }
        }
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let (added, head) = {
            let mut meta = txn.open_table(super::META).map_err(|e| self.err(e))?;
            let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
            let mut numbered = std::collections::HashSet::new();
            for item in outbox.iter().map_err(|e| self.err(e))? {
                let (_, v) = item.map_err(|e| self.err(e))?;
                numbered.insert(v.value());
            }
            let rows = txn.open_table(NOTIFICATIONS).map_err(|e| self.err(e))?;
            let mut missing = Vec::new();
            for item in rows.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                if numbered.contains(&k.value()) {
                    continue;
                }
                let row: NotificationRow =
                    super::cbor::decode("notification", v.value(), 64 * 1024).map_err(StoreError::Codec)?;
                missing.push((row.time, row.seq, k.value()));
            }
            missing.sort_unstable();
            let mut seq = outbox_next(&outbox).map_err(|e| self.err(e))?;
            let mut added = 0u64;
            for (_, _, id) in missing {
                outbox.insert(seq, id).map_err(|e| self.err(e))?;
                seq = seq.saturating_add(1);
                added += 1;
            }
            meta.insert(OUTBOX_MIGRATED, [1u8].as_slice())
                .map_err(|e| self.err(e))?;
            (added, seq.saturating_sub(1))
        };
        txn.commit().map_err(|e| self.err(e))?;
        if added > 0 {
            self.outbox_added(head);
            tracing::info!(
                added,
                "notifications recorded before the outbox existed are queued for delivery"
            );
        }
        Ok(added)
    }

    /// The state of delivery sink `sink`, if it was ever configured.
    ///
    /// # Errors
    /// [`StoreError::Database`], a row that does not decode.
    pub fn sink_state(&self, sink: &str) -> Result<Option<SinkState>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let Some(t) = missing_is_empty(read.open_table(SINKS)).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        t.get(sink)
            .map_err(|e| self.err(e))?
            .map(|v| super::cbor::decode("sink state", v.value(), MAX_SINK_ROW).map_err(StoreError::Codec))
            .transpose()
    }

    /// Changes sink `sink`'s state in one write transaction (a new sink
    /// starts at sequence 0: the whole outbox is its backlog).
    fn sink_update<T>(
        &self,
        sink: &str,
        change: impl FnOnce(&mut SinkState) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.local_durability(&mut txn)?;
        let out = {
            let mut t = txn.open_table(SINKS).map_err(|e| self.err(e))?;
            let mut state = match t.get(sink).map_err(|e| self.err(e))? {
                Some(v) => super::cbor::decode("sink state", v.value(), MAX_SINK_ROW).map_err(StoreError::Codec)?,
                None => SinkState {
                    v: 1,
                    ..SinkState::default()
                },
            };
            let out = change(&mut state)?;
            let bytes = super::cbor::encode("sink state", &state).map_err(StoreError::Codec)?;
            t.insert(sink, bytes.as_slice()).map_err(|e| self.err(e))?;
            out
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// The state of sink `sink`, recorded (at sequence 0) if it is new.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn sink_open(&self, sink: &str) -> Result<SinkState, StoreError> {
        if let Some(s) = self.sink_state(sink)? {
            return Ok(s);
        }
        self.sink_update(sink, |s| Ok(s.clone()))
    }

    /// Records that sink `sink` delivered outbox sequence `seq`, which
    /// must be the one after its cursor (deliveries are in order, none
    /// skipped).
    ///
    /// # Errors
    /// [`StoreError::Database`]; `seq` is not the next one.
    pub fn sink_delivered(&self, sink: &str, seq: u64, now: i64) -> Result<(), StoreError> {
        self.sink_update(sink, |s| {
            if Some(seq) != s.delivered.checked_add(1) {
                return Err(StoreError::SinkOrder {
                    sink: sink.to_string(),
                    seq,
                    cursor: s.delivered,
                });
            }
            s.delivered = seq;
            s.delivered_at = Some(now);
            s.failures = 0;
            s.next_attempt = None;
            Ok(())
        })
    }

    /// Records a failed attempt of sink `sink` (the cursor stays).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn sink_failed(&self, sink: &str, reason: &str, now: i64, next_attempt: i64) -> Result<u32, StoreError> {
        self.sink_update(sink, |s| {
            s.failures = s.failures.saturating_add(1);
            let mut reason = reason.to_string();
            if reason.len() > MAX_ERROR_LEN {
                let mut cut = MAX_ERROR_LEN;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
            }
            s.last_error = Some(reason);
            s.last_error_at = Some(now);
            s.next_attempt = Some(next_attempt);
            Ok(s.failures)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::{MasterKey, Passphrase};
    use crate::store::Store;

    fn row(seq: u64, time: i64) -> NotificationRow {
        NotificationRow {
            v: 1,
            author: "12D3KooWpeer".into(),
            seq,
            kind: "transfer-received".into(),
            time,
            study: hex::encode([7u8; 32]),
            noted: time,
            read: false,
        }
    }

    fn id(n: u64) -> [u8; 32] {
        *blake3::hash(&n.to_be_bytes()).as_bytes()
    }

    pub(crate) fn store(dir: &std::path::Path) -> Store {
        let db = dir.join("index.redb");
        let blobs = dir.join("blobs");
        let key = dir.join("master.key");
        let pass = Passphrase::new("correct horse battery".into());
        if db.exists() {
            Store::open(&db, &blobs, MasterKey::unlock(&key, &pass).unwrap(), false).unwrap()
        } else {
            Store::create(&db, &blobs, MasterKey::create(&key, &pass).unwrap(), false).unwrap()
        }
    }

    #[test]
    fn put_assigns_contiguous_sequences_once_per_entry() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut watch = s.outbox_watch();
        assert_eq!(s.outbox_head().unwrap(), 0);
        for n in 1..=5 {
            s.notification_put(&id(n), &row(n, 100 + i64::try_from(n).unwrap()))
                .unwrap();
        }
        // The same entry again: no second outbox row.
        s.notification_put(&id(3), &row(3, 103)).unwrap();
        assert_eq!(s.outbox_head().unwrap(), 5);
        assert!(watch.has_changed().unwrap());
        assert_eq!(*watch.borrow_and_update(), 5);
        let batch = s.outbox_batch(0, 100).unwrap();
        let seqs: Vec<u64> = batch.iter().map(|i| i.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert!(batch.iter().zip(1..).all(|(i, n)| i.entry == id(n) && i.row.is_some()));
    }

    #[test]
    fn batches_are_bounded_and_start_after_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for n in 1..=10 {
            s.notification_put(&id(n), &row(n, 1)).unwrap();
        }
        for (after, limit, want) in [
            (0u64, 3usize, vec![1u64, 2, 3]),
            (3, 3, vec![4, 5, 6]),
            (8, 5, vec![9, 10]),
            (10, 5, vec![]),
            (u64::MAX, 5, vec![]),
            (2, 0, vec![]),
        ] {
            let got: Vec<u64> = s.outbox_batch(after, limit).unwrap().iter().map(|i| i.seq).collect();
            assert_eq!(got, want, "after {after}, limit {limit}");
        }
    }

    #[test]
    fn cursor_moves_only_forward_by_one_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path());
            for n in 1..=4 {
                s.notification_put(&id(n), &row(n, 1)).unwrap();
            }
            assert_eq!(s.sink_state("webhook").unwrap(), None, "unconfigured: no cursor");
            assert_eq!(s.sink_open("webhook").unwrap().delivered, 0);
            s.sink_delivered("webhook", 1, 10).unwrap();
            assert!(s.sink_delivered("webhook", 3, 10).is_err(), "skipping is refused");
            assert!(s.sink_delivered("webhook", 1, 10).is_err(), "going back is refused");
            assert_eq!(s.sink_failed("webhook", "HTTP 503", 11, 12).unwrap(), 1);
            assert_eq!(s.sink_failed("webhook", &"x".repeat(5000), 12, 14).unwrap(), 2);
            let st = s.sink_state("webhook").unwrap().unwrap();
            assert_eq!((st.delivered, st.failures, st.next_attempt), (1, 2, Some(14)));
            assert!(st.last_error.unwrap().len() <= MAX_ERROR_LEN);
            assert_eq!(s.sink_state("syslog").unwrap(), None, "sinks are independent");
        }
        // Restart: the cursor and the outbox are where they were.
        let s = store(dir.path());
        let st = s.sink_open("webhook").unwrap();
        assert_eq!(st.delivered, 1);
        let next: Vec<u64> = s
            .outbox_batch(st.delivered, 10)
            .unwrap()
            .iter()
            .map(|i| i.seq)
            .collect();
        assert_eq!(next, [2, 3, 4]);
        s.sink_delivered("webhook", 2, 20).unwrap();
        let st = s.sink_state("webhook").unwrap().unwrap();
        assert_eq!((st.delivered, st.failures, st.next_attempt), (2, 0, None));
        s.notification_put(&id(5), &row(5, 1)).unwrap();
        assert_eq!(s.outbox_head().unwrap(), 5, "sequences continue after a restart");
    }

    /// Writes notification rows without outbox rows and removes the
    /// migration marker: a store as the version before the outbox left it.
    fn write_old_rows(s: &Store, rows: &[(u64, i64)], unmark: bool) {
        let txn = s.db.begin_write().unwrap();
        {
            let mut t = txn.open_table(NOTIFICATIONS).unwrap();
            for (n, time) in rows {
                let bytes = super::super::cbor::encode("notification", &row(*n, *time)).unwrap();
                t.insert(id(*n), bytes.as_slice()).unwrap();
            }
            if unmark {
                let mut meta = txn.open_table(super::super::META).unwrap();
                meta.remove(OUTBOX_MIGRATED).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// The outbox as (sequence, notification id), in order.
    fn numbered(s: &Store) -> Vec<(u64, [u8; 32])> {
        s.outbox_batch(0, 10)
            .unwrap()
            .iter()
            .map(|i| (i.seq, i.entry))
            .collect()
    }

    #[test]
    fn opening_numbers_old_notifications_oldest_first_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path());
            write_old_rows(&s, &[(1, 30), (2, 10), (3, 20)], true);
            assert_eq!(s.outbox_head().unwrap(), 0);
        }
        // The upgrade: no sink configured, nothing delivered; opening the store numbers them.
        {
            let s = store(dir.path());
            let order = numbered(&s);
            assert_eq!(order, [(1, id(2)), (2, id(3)), (3, id(1))], "oldest first");
            assert_eq!(*s.outbox_watch().borrow(), 3, "delivery is woken");
            assert_eq!(s.outbox_migrate().unwrap(), 0, "only once");
            s.notification_put(&id(4), &row(4, 5)).unwrap();
            assert_eq!(s.outbox_head().unwrap(), 4, "a new notification gets the next number");
        }
        // Opening again changes nothing.
        let s = store(dir.path());
        let seqs = numbered(&s);
        assert_eq!(seqs, [(1, id(2)), (2, id(3)), (3, id(1)), (4, id(4))]);
    }

    #[test]
    fn opening_numbers_old_notifications_even_when_the_outbox_is_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path());
            write_old_rows(&s, &[(1, 30), (2, 10)], true);
            // A notification that arrived (and was numbered) before the old ones were.
            s.notification_put(&id(3), &row(3, 40)).unwrap();
            assert_eq!(s.outbox_head().unwrap(), 1);
        }
        let s = store(dir.path());
        let order = numbered(&s);
        assert_eq!(
            order,
            [(1, id(3)), (2, id(2)), (3, id(1))],
            "none numbered twice, none left out"
        );
    }

    #[test]
    fn a_new_store_is_marked_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path());
            // Rows without outbox rows but with the marker: not numbered again at opening.
            write_old_rows(&s, &[(1, 30)], false);
        }
        let s = store(dir.path());
        assert_eq!(s.outbox_head().unwrap(), 0);
    }
}
