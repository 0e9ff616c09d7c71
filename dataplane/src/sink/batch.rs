//! Batching: records collected per partition until `maxRows`, a byte budget or `maxDelay` says
//! the batch is due (I/O-free).
//!
//! Each partition's part of a batch is a [`Slice`] that remembers `from`, the offset from which
//! the consumer's stream for that partition is known to be complete. The writer refuses a slice
//! whose `from` is ahead of the offset stored in PostgreSQL, which is how a gap can never be
//! committed (see [`writer`](super::writer)).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::record::Entry;

/// One partition's records in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// The consumer has every record of the partition from this offset up to the last entry.
    pub from: i64,
    /// Records in offset order.
    pub entries: Vec<Entry>,
}

impl Slice {
    /// The offset after the last entry (`from` when empty).
    pub fn end(&self) -> i64 {
        self.entries
            .last()
            .map_or(self.from, |e| e.record().offset + 1)
    }
}

/// A batch ready for one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Positioning generation of the consumer when the batch was built; results of batches from
    /// an older generation are ignored.
    pub generation: u64,
    /// Per-partition slices.
    pub slices: BTreeMap<i32, Slice>,
}

impl Batch {
    /// Number of entries (rows and dead letters).
    pub fn len(&self) -> usize {
        self.slices.values().map(|s| s.entries.len()).sum()
    }

    /// Whether the batch has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Collects entries into the next batch.
#[derive(Debug)]
pub struct BatchBuilder {
    max_rows: usize,
    max_bytes: usize,
    max_delay: Duration,
    slices: BTreeMap<i32, Slice>,
    rows: usize,
    bytes: usize,
    opened: Option<Instant>,
}

impl BatchBuilder {
    /// A builder that closes a batch at `max_rows` entries, `max_bytes` bytes of record data, or
    /// `max_delay` after its first entry.
    pub fn new(max_rows: usize, max_bytes: usize, max_delay: Duration) -> Self {
        Self {
            max_rows: max_rows.max(1),
            max_bytes: max_bytes.max(1),
            max_delay,
            slices: BTreeMap::new(),
            rows: 0,
            bytes: 0,
            opened: None,
        }
    }

    /// Adds `entry`; `from` is used when this opens the partition's slice.
    pub fn push(&mut self, from: i64, entry: Entry, now: Instant) {
        self.opened.get_or_insert(now);
        self.rows += 1;
        self.bytes += entry.record().size();
        let partition = entry.record().partition;
        self.slices
            .entry(partition)
            .or_insert_with(|| Slice {
                from,
                entries: Vec::new(),
            })
            .entries
            .push(entry);
    }

    /// Entries collected so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether nothing is collected.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// When the open batch must be written, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.max_delay)
    }

    /// Whether the batch must be written now.
    pub fn is_due(&self, now: Instant) -> bool {
        self.rows >= self.max_rows
            || self.bytes >= self.max_bytes
            || self.deadline().is_some_and(|d| now >= d)
    }

    /// Takes the collected entries as a batch (`None` when empty).
    pub fn take(&mut self, generation: u64) -> Option<Batch> {
        if self.rows == 0 {
            return None;
        }
        let slices = std::mem::take(&mut self.slices);
        self.rows = 0;
        self.bytes = 0;
        self.opened = None;
        Some(Batch { generation, slices })
    }

    /// Drops everything collected (the consumer repositions from PostgreSQL afterwards).
    pub fn clear(&mut self) {
        self.slices.clear();
        self.rows = 0;
        self.bytes = 0;
        self.opened = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::Record;
    use super::*;

    fn entry(partition: i32, offset: i64) -> Entry {
        Entry::Row(Record {
            partition,
            offset,
            key: None,
            payload: Some(vec![b'x'; 10]),
            headers: vec![],
            timestamp_ms: 0,
        })
    }

    #[test]
    fn closes_at_max_rows() {
        let now = Instant::now();
        let mut b = BatchBuilder::new(3, 1 << 20, Duration::from_secs(5));
        b.push(0, entry(0, 0), now);
        b.push(10, entry(1, 10), now);
        assert!(!b.is_due(now));
        b.push(0, entry(0, 1), now);
        assert!(b.is_due(now));
        let batch = b.take(4).expect("batch");
        assert_eq!(batch.generation, 4);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.slices[&0].from, 0);
        assert_eq!(batch.slices[&0].end(), 2);
        assert_eq!(batch.slices[&1].from, 10);
        assert!(b.is_empty());
        assert_eq!(b.take(5), None);
    }

    #[test]
    fn closes_after_max_delay_from_the_first_entry() {
        let now = Instant::now();
        let mut b = BatchBuilder::new(100, 1 << 20, Duration::from_millis(50));
        assert_eq!(b.deadline(), None);
        b.push(0, entry(0, 0), now);
        assert!(!b.is_due(now + Duration::from_millis(49)));
        assert!(b.is_due(now + Duration::from_millis(50)));
    }

    #[test]
    fn closes_at_the_byte_budget() {
        let now = Instant::now();
        let mut b = BatchBuilder::new(100, 25, Duration::from_secs(5));
        b.push(0, entry(0, 0), now);
        b.push(0, entry(0, 1), now);
        assert!(!b.is_due(now));
        b.push(0, entry(0, 2), now);
        assert!(b.is_due(now));
    }

    #[test]
    fn the_slice_start_is_the_first_push() {
        let now = Instant::now();
        let mut b = BatchBuilder::new(100, 1 << 20, Duration::from_secs(5));
        b.push(3, entry(0, 5), now);
        b.push(99, entry(0, 6), now);
        let batch = b.take(0).expect("batch");
        assert_eq!(batch.slices[&0].from, 3);
        assert_eq!(batch.slices[&0].end(), 7);
    }
}
