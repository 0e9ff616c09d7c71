//! The hub: which clients are subscribed to which channels, and the delivery of every consumed
//! record to them. Subscriptions are sharded by a hash of the channel (as Centrifugo does), with
//! `*` in its own shard, so there is no global lock on the hot path; the hub only ever *offers*
//! records to client queues and never waits on a client.
//!
//! Each shard also keeps, per partition, the next offset of the records it has published. A
//! subscription registered under the shard lock reads those positions atomically with
//! registration: every record of its channel below them has been published already (so a resume
//! replays up to them from Kafka), every record at or above them will be offered live. That is
//! the whole no-gap/no-duplicate argument.
//!
//! When Kafka deleted records before the consumer read them, [`Hub::publish_gap`] tells every
//! subscription, in order with the records, and moves every shard's positions past the gap.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

use super::channel::ALL;
use super::client::Client;
use super::protocol::{self, Control, GapKind, Positions, SubscribeOptions};
use super::record::Record;
use super::snapshot::SnapshotCache;

/// Number of channel shards.
pub const SHARDS: usize = 64;

#[derive(Default)]
struct Subscribers {
    list: Vec<Arc<Client>>,
    index: HashMap<u64, usize>,
}

impl Subscribers {
    fn insert(&mut self, client: Arc<Client>) -> bool {
        if self.index.contains_key(&client.id) {
            return false;
        }
        self.index.insert(client.id, self.list.len());
        self.list.push(client);
        true
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(i) = self.index.remove(&id) else {
            return false;
        };
        self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.index.insert(moved.id, i);
        }
        true
    }
}

#[derive(Default)]
struct Shard {
    subs: HashMap<Arc<str>, Subscribers>,
    /// Next offset per partition among the records this shard has published.
    positions: Positions,
}

/// What a subscription sees at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// Per partition, the first offset that will be offered live.
    pub positions: Positions,
}

/// Subscriptions and delivery.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    star: Mutex<Shard>,
    /// The last record per channel, when `websocket.snapshot` is on; locked after a shard.
    snapshot: Option<Mutex<SnapshotCache>>,
    hasher: std::collections::hash_map::RandomState,
    partitions: RwLock<Positions>,
    subscriptions: AtomicUsize,
    /// The `*` subscription name, shared by every delivery to it.
    star_name: Arc<str>,
}

impl Hub {
    /// An empty hub; with `snapshot`, the last record of each channel (of at most 10 000, not
    /// counted in any registry) is kept and sent first to new subscribers.
    pub fn new(snapshot: bool) -> Self {
        Self::with_snapshot(snapshot.then(|| SnapshotCache::detached(10_000)))
    }

    /// An empty hub keeping the last record of each channel in `snapshot`, when given, and
    /// sending it first to new subscribers.
    pub fn with_snapshot(snapshot: Option<SnapshotCache>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            star: Mutex::new(Shard::default()),
            snapshot: snapshot.map(Mutex::new),
            hasher: Default::default(),
            partitions: RwLock::new(Positions::new()),
            subscriptions: AtomicUsize::new(0),
            star_name: ALL.into(),
        }
    }

    fn shard(&self, channel: &str) -> &Mutex<Shard> {
        if channel == ALL {
            return &self.star;
        }
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Adds partitions starting at the given next offsets (the consumer's start positions).
    /// Partitions already known keep their positions.
    pub fn add_partitions(&self, start: &Positions) {
        {
            let mut known = self.partitions.write();
            for (p, o) in start {
                known.entry(*p).or_insert(*o);
            }
        }
        for shard in self.shards.iter().chain(std::iter::once(&self.star)) {
            let mut shard = shard.lock();
            for (p, o) in start {
                shard.positions.entry(*p).or_insert(*o);
            }
        }
    }

    /// Partitions the hub serves, with the offset it started from.
    pub fn partitions(&self) -> Positions {
        self.partitions.read().clone()
    }

    /// Offers `records` (in order) to their subscribers, waking each touched client once at
    /// the end so that its writer sends the whole batch with one flush.
    pub fn publish_batch(&self, records: &[Arc<Record>]) {
        let mut touched: Vec<Arc<Client>> = Vec::new();
        for record in records {
            if let Some(channel) = &record.channel {
                let mut shard = self.shard(channel).lock();
                // The map's key is the name every subscriber registered (see `subscribe`), so
                // clients find their subscription by pointer.
                if let Some((name, subs)) = shard.subs.get_key_value(&**channel) {
                    for client in &subs.list {
                        if client.offer_deferred(name, record) {
                            touched.push(client.clone());
                        }
                    }
                }
                shard.positions.insert(record.partition, record.offset + 1);
                if let Some(snapshot) = &self.snapshot {
                    snapshot.lock().put(channel, record.clone());
                }
            }
            let mut star = self.star.lock();
            if let Some(subs) = star.subs.get(ALL) {
                for client in &subs.list {
                    if client.offer_deferred(&self.star_name, record) {
                        touched.push(client.clone());
                    }
                }
            }
            star.positions.insert(record.partition, record.offset + 1);
        }
        for client in touched {
            client.wake();
        }
        if let Some(first) = records.first()
            && super::metrics::STAGES.enabled()
        {
            super::metrics::STAGES
                .fanout
                .record(first.consumed_at.elapsed());
        }
    }

    /// Tells every subscription (every channel and `*`) that offsets `from..to` of `partition`
    /// will never be delivered: Kafka deleted them (retention) before the bridge read them, so
    /// nobody can know their channels. Call it in order with [`publish_batch`](Self::publish_batch):
    /// each client queues the gap after the records published before and before those published
    /// after (a replaying subscription holds it with its live records). Every shard's position
    /// of `partition` moves to at least `to`, so a subscription registered afterwards starts
    /// after the gap. Returns the number of subscriptions told.
    pub fn publish_gap(&self, partition: i32, from: i64, to: i64) -> usize {
        let mut touched: Vec<Arc<Client>> = Vec::new();
        let mut told = 0;
        for shard in self.shards.iter().chain(std::iter::once(&self.star)) {
            let mut guard = shard.lock();
            let shard = &mut *guard;
            let position = shard.positions.entry(partition).or_insert(to);
            *position = (*position).max(to);
            for (name, subs) in &shard.subs {
                for client in &subs.list {
                    told += 1;
                    if client.offer_gap(name, partition, from, to, GapKind::Retention) {
                        touched.push(client.clone());
                    }
                }
            }
        }
        for client in touched {
            client.wake();
        }
        told
    }

    /// Registers `client` on the channel of `options`. With `since` (a resume), live records are
    /// held by the client until its replay ends; without, the snapshot (if enabled) and
    /// `subscribed` are queued now, inside the shard lock, so they precede every live record.
    pub fn subscribe(
        &self,
        client: &Arc<Client>,
        options: &SubscribeOptions,
    ) -> Option<Registered> {
        let name = &options.channel;
        let mut shard = self.shard(name).lock();
        // One `Arc<str>` per channel, shared by every subscriber and passed back on every
        // offer, so that a client finds its subscription by pointer.
        let canonical = if &**name == ALL {
            self.star_name.clone()
        } else {
            match shard.subs.get_key_value(&**name) {
                Some((key, _)) => key.clone(),
                None => name.clone(),
            }
        };
        let subs = shard.subs.entry(canonical.clone()).or_default();
        if !subs.insert(client.clone()) {
            return None;
        }
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        client.add_subscription(canonical, options);
        let positions = shard.positions.clone();
        if options.since.is_none() {
            let last = self
                .snapshot
                .as_ref()
                .and_then(|snapshot| snapshot.lock().get(name));
            if let Some(last) = last {
                // The snapshot record is below `positions`, so it never repeats a live one.
                client.control(Control::snapshot(last.frame(name, client.encoding)));
            }
            client.control(protocol::subscribed(client.encoding, name, &positions));
        }
        Some(Registered { positions })
    }

    /// Removes `client` from `name`.
    pub fn unsubscribe(&self, client: &Client, name: &str) -> bool {
        let mut shard = self.shard(name).lock();
        let removed = match shard.subs.get_mut(name) {
            Some(subs) => {
                let removed = subs.remove(client.id);
                if subs.list.is_empty() {
                    shard.subs.remove(name);
                }
                removed
            }
            None => false,
        };
        drop(shard);
        if removed {
            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
            client.remove_subscription(name);
        }
        removed
    }

    /// Removes every subscription of `client` (on disconnect).
    pub fn remove_client(&self, client: &Client) {
        for name in client.subscriptions() {
            self.unsubscribe(client, &name);
        }
    }

    /// Current number of subscriptions over all clients.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Next offset per partition among the records published to `channel`'s shard: a lower
    /// bound of the positions a subscription to `channel` registered now would get.
    pub fn channel_positions(&self, channel: &str) -> Positions {
        self.shard(channel).lock().positions.clone()
    }

    /// Next offset per partition over every record published (the `*` shard sees them all).
    pub fn live_positions(&self) -> Positions {
        self.star.lock().positions.clone()
    }

    /// Next offset of `partition` over every record published (0 for an unknown partition).
    pub fn next_offset(&self, partition: i32) -> i64 {
        self.star
            .lock()
            .positions
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::client::Outbound;
    use crate::relay::record::{Encoding, PayloadKind};
    use bytes::Bytes;
    use eventstream_crds::v1alpha1::SlowClientPolicy;

    fn rec(channel: &str, partition: i32, offset: i64) -> Arc<Record> {
        Arc::new(Record::new(
            partition,
            offset,
            None,
            None,
            Bytes::from_static(b"{}"),
            vec![],
            Some(channel.into()),
            PayloadKind::Json,
        ))
    }

    fn client(id: u64) -> Arc<Client> {
        Arc::new(Client::new(
            id,
            Encoding::Json,
            100,
            SlowClientPolicy::DropOldest,
        ))
    }

    fn events(c: &Client) -> Vec<(String, i32, i64)> {
        c.drain()
            .items
            .into_iter()
            .filter_map(|i| match i {
                Outbound::Event {
                    subscription,
                    partition,
                    offset,
                    ..
                } => Some((subscription.to_string(), partition, offset)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn records_reach_exactly_their_channels_and_star() {
        let hub = Hub::new(false);
        hub.add_partitions(&[(0, 0), (1, 0)].into());
        let (a, b, all) = (client(1), client(2), client(3));
        hub.subscribe(&a, &SubscribeOptions::new("a")).expect("new");
        hub.subscribe(&b, &SubscribeOptions::new("b")).expect("new");
        hub.subscribe(&all, &SubscribeOptions::new("*"))
            .expect("new");
        hub.publish_batch(&[rec("a", 0, 0)]);
        hub.publish_batch(&[rec("b", 1, 0)]);
        hub.publish_batch(&[rec("a", 0, 1)]);
        assert_eq!(events(&a), [("a".into(), 0, 0), ("a".into(), 0, 1)]);
        assert_eq!(events(&b), [("b".into(), 1, 0)]);
        assert_eq!(events(&all).len(), 3);
        assert_eq!(hub.subscription_count(), 3);
    }

    #[test]
    fn registration_positions_split_history_from_live() {
        let hub = Hub::new(false);
        hub.add_partitions(&[(0, 100)].into());
        hub.publish_batch(&[rec("a", 0, 100)]);
        hub.publish_batch(&[rec("z", 0, 101)]);
        let c = client(1);
        let reg = hub
            .subscribe(&c, &SubscribeOptions::new("*").since(Positions::new()))
            .expect("new");
        assert_eq!(reg.positions, [(0, 102)].into());
        hub.publish_batch(&[rec("a", 0, 102)]);
        // Held while replaying, nothing queued yet.
        assert!(events(&c).is_empty());
    }

    #[test]
    fn snapshot_is_sent_first() {
        let hub = Hub::new(true);
        hub.add_partitions(&[(0, 0)].into());
        hub.publish_batch(&[rec("a", 0, 0)]);
        hub.publish_batch(&[rec("a", 0, 1)]);
        let c = client(1);
        hub.subscribe(&c, &SubscribeOptions::new("a")).expect("new");
        hub.publish_batch(&[rec("a", 0, 2)]);
        let items = c.drain().items;
        assert_eq!(items.len(), 3, "snapshot, subscribed, live");
        let Outbound::Control(Control {
            kind: protocol::ControlKind::Snapshot,
            frame: crate::relay::record::WireFrame::Text(t),
        }) = &items[0]
        else {
            panic!("snapshot first")
        };
        assert!(t.as_str().contains(r#""offset":1"#), "{}", t.as_str());
    }

    #[test]
    fn a_client_with_several_subscriptions_gets_each() {
        let hub = Hub::new(false);
        hub.add_partitions(&[(0, 0)].into());
        let c = client(1);
        for name in ["a", "b", "*"] {
            hub.subscribe(&c, &SubscribeOptions::new(name))
                .expect("new");
        }
        // Another subscriber of `a`, registering its own `Arc<str>`.
        let d = client(2);
        hub.subscribe(&d, &SubscribeOptions::new(Arc::<str>::from("a")))
            .expect("new");
        hub.publish_batch(&[rec("a", 0, 0)]);
        hub.publish_batch(&[rec("b", 0, 1)]);
        assert_eq!(
            events(&c),
            [
                ("a".into(), 0, 0),
                ("*".into(), 0, 0),
                ("b".into(), 0, 1),
                ("*".into(), 0, 1)
            ]
        );
        assert_eq!(events(&d), [("a".into(), 0, 0)]);
        // The inline (first) subscription goes and comes back.
        assert!(hub.unsubscribe(&c, "a"));
        hub.publish_batch(&[rec("a", 0, 2)]);
        assert_eq!(events(&c), [("*".into(), 0, 2)]);
        assert_eq!(events(&d), [("a".into(), 0, 2)]);
        hub.subscribe(&c, &SubscribeOptions::new("a"))
            .expect("again");
        hub.publish_batch(&[rec("a", 0, 3)]);
        assert_eq!(events(&c), [("a".into(), 0, 3), ("*".into(), 0, 3)]);
        assert_eq!(c.subscription_count(), 3);
    }

    #[test]
    fn double_subscribe_and_unsubscribe() {
        let hub = Hub::new(false);
        let c = client(1);
        assert!(hub.subscribe(&c, &SubscribeOptions::new("a")).is_some());
        assert!(hub.subscribe(&c, &SubscribeOptions::new("a")).is_none());
        assert!(hub.unsubscribe(&c, "a"));
        assert!(!hub.unsubscribe(&c, "a"));
        hub.publish_batch(&[rec("a", 0, 0)]);
        assert!(events(&c).is_empty());
        assert_eq!(hub.subscription_count(), 0);
    }

    #[test]
    fn removing_one_client_keeps_the_others() {
        let hub = Hub::new(false);
        let clients: Vec<_> = (0..5).map(client).collect();
        for c in &clients {
            hub.subscribe(c, &SubscribeOptions::new("a")).expect("new");
        }
        hub.remove_client(&clients[1]);
        hub.remove_client(&clients[3]);
        hub.publish_batch(&[rec("a", 0, 7)]);
        for (i, c) in clients.iter().enumerate() {
            let got = events(c);
            assert_eq!(got.len(), usize::from(i != 1 && i != 3), "client {i}");
        }
    }

    #[test]
    fn a_retention_gap_reaches_every_subscription_and_moves_positions() {
        let hub = Hub::new(false);
        hub.add_partitions(&[(0, 0), (1, 0)].into());
        let (a, b, all) = (client(1), client(2), client(3));
        hub.subscribe(&a, &SubscribeOptions::new("a")).expect("new");
        hub.subscribe(&b, &SubscribeOptions::new("b")).expect("new");
        hub.subscribe(&all, &SubscribeOptions::new("*"))
            .expect("new");
        for c in [&a, &b, &all] {
            c.drain();
        }
        hub.publish_batch(&[rec("a", 0, 4)]);
        assert_eq!(hub.publish_gap(0, 5, 40), 3);
        hub.publish_batch(&[rec("a", 0, 40)]);
        let gap = |c: &Client| {
            c.drain()
                .items
                .into_iter()
                .map(|i| match i {
                    Outbound::Event { offset, .. } => format!("event {offset}"),
                    Outbound::Gap {
                        subscription,
                        from,
                        to,
                        reason,
                    } => format!("gap {subscription} {from:?}..{to:?} {reason:?}"),
                    Outbound::Control(_) => "control".into(),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            gap(&a),
            ["event 4", "gap a {0: 5}..{0: 40} Retention", "event 40"]
        );
        assert_eq!(gap(&b), ["gap b {0: 5}..{0: 40} Retention"]);
        assert_eq!(
            gap(&all),
            ["event 4", "gap * {0: 5}..{0: 40} Retention", "event 40"]
        );
        // A subscription registered after the gap starts after it, on every shard. Which shard a
        // channel lands on depends on the hub's randomly seeded hasher, so the test covers every
        // shard instead of one channel name: on `a`'s shard the position is past event 40 (41),
        // on every other one it is the end of the gap (40).
        let late = client(4);
        let mut covered = std::collections::HashSet::new();
        for i in 0.. {
            let name: Arc<str> = format!("late-{i}").into();
            let shard = hub.shard(&name) as *const Mutex<Shard>;
            if !covered.insert(shard) {
                continue;
            }
            let reg = hub
                .subscribe(&late, &SubscribeOptions::new(name.clone()))
                .expect("new");
            let expected = if std::ptr::eq(shard, hub.shard("a")) {
                41
            } else {
                40
            };
            assert_eq!(reg.positions[&0], expected, "channel {name}");
            if covered.len() == SHARDS {
                break;
            }
        }
    }
}
