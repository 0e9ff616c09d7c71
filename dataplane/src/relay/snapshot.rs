//! The `websocket.snapshot` cache: the last record of each channel, sent first to a new
//! subscriber. It owns the bound on that memory: at most `websocket.snapshotMaxChannels`
//! channels are kept, and the least recently used one (published to or read by a subscribe)
//! leaves first, counted in `eventstream_ws_snapshot_evictions_total`. Without the bound a
//! channel per user (`/userId`) kept one record per user ever seen, for the life of the pod.
//!
//! One cache for the whole hub rather than one per shard, so that the limit is exact and the
//! order is truly least-recently-used over every channel. The hub calls it under the shard
//! lock of the channel concerned (shard, then cache: one lock order), which keeps a channel's
//! snapshot below the positions a subscription registers with.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

use super::record::Record;

/// The last record per channel, at most `max` channels, least recently used out.
pub struct SnapshotCache {
    max: usize,
    /// Channel → (its last use, its last record).
    entries: HashMap<Arc<str>, (u64, Arc<Record>)>,
    /// Last use → channel: the first entry is the least recently used.
    order: BTreeMap<u64, Arc<str>>,
    clock: u64,
    evictions: IntCounter,
    channels: IntGauge,
}

impl SnapshotCache {
    /// A cache of at most `max` channels (at least one), counting evictions in `evictions` and
    /// its size in `channels`.
    pub fn new(max: usize, evictions: IntCounter, channels: IntGauge) -> Self {
        Self {
            max: max.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            evictions,
            channels,
        }
    }

    /// A cache whose counters are not registered anywhere (tests, benchmarks).
    pub fn detached(max: usize) -> Self {
        let evictions = IntCounter::new("snapshot_evictions", "detached").expect("valid name");
        let channels = IntGauge::new("snapshot_channels", "detached").expect("valid name");
        Self::new(max, evictions, channels)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Keeps `record` as the last of `channel`, making it the most recently used; evicts the
    /// least recently used channel when that makes one too many.
    pub fn put(&mut self, channel: &Arc<str>, record: Arc<Record>) {
        let now = self.tick();
        match self.entries.get_mut(&**channel) {
            Some((used, last)) => {
                self.order.remove(used);
                *used = now;
                *last = record;
            }
            None => {
                self.entries.insert(channel.clone(), (now, record));
            }
        }
        self.order.insert(now, channel.clone());
        while self.entries.len() > self.max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            self.evictions.inc();
        }
        self.channels.set(self.entries.len() as i64);
    }

    /// The last record of `channel`, making it the most recently used.
    pub fn get(&mut self, channel: &str) -> Option<Arc<Record>> {
        let now = self.tick();
        let (used, record) = self.entries.get_mut(channel)?;
        let name = self.order.remove(used)?;
        *used = now;
        let record = record.clone();
        self.order.insert(now, name);
        Some(record)
    }

    /// Channels kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no channel is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::record::PayloadKind;
    use bytes::Bytes;

    fn rec(offset: i64) -> Arc<Record> {
        Arc::new(Record::new(
            0,
            offset,
            None,
            None,
            Bytes::from_static(b"{}"),
            vec![],
            None,
            PayloadKind::Json,
        ))
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_channel_and_counts_it() {
        let mut cache = SnapshotCache::detached(3);
        let name = |s: &str| -> Arc<str> { s.into() };
        for (i, ch) in ["a", "b", "c"].into_iter().enumerate() {
            cache.put(&name(ch), rec(i as i64));
        }
        // `a` is read (a subscribe) and `b` published to: `c` is now the least recently used.
        assert_eq!(cache.get("a").map(|r| r.offset), Some(0));
        cache.put(&name("b"), rec(10));
        cache.put(&name("d"), rec(11));
        assert_eq!(cache.len(), 3);
        assert!(cache.get("c").is_none(), "c was the least recently used");
        assert_eq!(
            cache.get("b").map(|r| r.offset),
            Some(10),
            "b keeps its newest"
        );
        assert!(cache.get("a").is_some() && cache.get("d").is_some());
        assert_eq!(cache.evictions.get(), 1);
        assert_eq!(cache.channels.get(), 3);
        // A channel per user: memory stays at the limit however many users come by.
        for user in 0..1000 {
            cache.put(&name(&format!("user-{user}")), rec(user));
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.order.len(), 3, "the use order holds no stale entries");
        assert_eq!(cache.evictions.get(), 1001);
        assert_eq!(cache.get("user-999").map(|r| r.offset), Some(999));
    }
}
