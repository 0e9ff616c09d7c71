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
//! Subscribers of a channel are grouped by filter text ([`super::filter`]): a record is
//! evaluated once per group, whatever the number of clients in it. Filtered subscriptions get
//! a `progress` frame in *progress rounds* ([`ProgressRule`]), so that their resume positions
//! move past the records their filter dropped.
//!
//! Every connected client is also registered here, subscribed or not, so that a record with
//! the broadcast marker reaches all of them ([`Hub::connect`]).
//!
//! When Kafka deleted records before the consumer read them, [`Hub::publish_gap`] tells every
//! subscription, in order with the records, and moves every shard's positions past the gap.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Weak, atomic::AtomicU64};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use prometheus::IntCounter;

use super::channel::ALL;
use super::client::Client;
use super::filter::{self, Filter, FilterCounters, Outcome};
use super::protocol::{self, Control, GapKind, Positions, SubscribeOptions};
use super::record::{Encoding, Record};
use super::snapshot::SnapshotCache;
use crate::cel::Activation;

/// Number of channel shards.
pub const SHARDS: usize = 64;

/// The subscribers of one channel with the same filter (or none): evaluated once per record.
struct Group {
    filter: Option<Arc<Filter>>,
    list: Vec<Arc<Client>>,
}

impl Group {
    fn key(&self) -> Option<Arc<str>> {
        self.filter.as_ref().map(|f| f.source().clone())
    }
}

/// The subscribers of one channel, by filter.
#[derive(Default)]
struct Subscribers {
    groups: Vec<Group>,
    /// Filter text (`None`: unfiltered) → index in `groups`.
    by_filter: HashMap<Option<Arc<str>>, usize>,
    /// Client id → (group, index in its list).
    index: HashMap<u64, (usize, usize)>,
}

/// What a change did to the groups (the hub counts filtered groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupChange {
    None,
    /// A filtered group was created or removed.
    Filtered,
}

impl Subscribers {
    /// Adds `client` to the group of `filter`; `None` when it is already subscribed. A filter
    /// whose text a group already has is dropped in favour of the group's.
    fn insert(&mut self, client: Arc<Client>, filter: Option<Arc<Filter>>) -> Option<GroupChange> {
        if self.index.contains_key(&client.id) {
            return None;
        }
        let key = filter.as_ref().map(|f| f.source().clone());
        let mut change = GroupChange::None;
        let g = match self.by_filter.get(&key) {
            Some(g) => *g,
            None => {
                if filter.is_some() {
                    change = GroupChange::Filtered;
                }
                self.groups.push(Group {
                    filter,
                    list: Vec::new(),
                });
                self.by_filter.insert(key, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let list = &mut self.groups[g].list;
        self.index.insert(client.id, (g, list.len()));
        list.push(client);
        Some(change)
    }

    fn remove(&mut self, id: u64) -> Option<GroupChange> {
        let (g, i) = self.index.remove(&id)?;
        let list = &mut self.groups[g].list;
        list.swap_remove(i);
        if let Some(moved) = list.get(i) {
            self.index.insert(moved.id, (g, i));
        }
        if !list.is_empty() {
            return Some(GroupChange::None);
        }
        let removed = self.groups.swap_remove(g);
        self.by_filter.remove(&removed.key());
        if let Some(moved) = self.groups.get(g) {
            self.by_filter.insert(moved.key(), g);
            for (i, c) in moved.list.iter().enumerate() {
                self.index.insert(c.id, (g, i));
            }
        }
        Some(if removed.filter.is_some() {
            GroupChange::Filtered
        } else {
            GroupChange::None
        })
    }

    fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// When filtered subscriptions get a `progress` frame: a round runs after a published batch
/// once `every_records` records were published since the last round, or `interval` has passed
/// since it (checked as records arrive). Each round sends every filtered subscription the
/// hub's live positions, so a resume re-reads at most the records of about one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressRule {
    /// Records published between rounds, at most.
    pub every_records: u64,
    /// Longest time between rounds while records arrive.
    pub interval: Duration,
}

impl ProgressRule {
    /// The rule for a stream whose resumes replay at most `replay_max_messages` per partition:
    /// a round at least every half of that (so that what a filtered subscription has not been
    /// told about never reaches the replay limit on its own), and every second.
    pub fn for_replay_limit(replay_max_messages: u32) -> Self {
        Self {
            every_records: u64::from(replay_max_messages / 2).max(1),
            interval: Duration::from_secs(1),
        }
    }
}

impl Default for ProgressRule {
    fn default() -> Self {
        Self::for_replay_limit(eventstream_crds::defaults::REPLAY_MAX_MESSAGES)
    }
}

struct ProgressState {
    records: u64,
    last: Instant,
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
    /// Groups with a filter, over all shards (progress rounds run only when there are some).
    filtered_groups: AtomicUsize,
    progress_rule: ProgressRule,
    progress: Mutex<ProgressState>,
    /// Every connected client, for broadcasts.
    clients: Mutex<HashMap<u64, Weak<Client>>>,
    filter_counters: FilterCounters,
    broadcasts: IntCounter,
    /// Progress rounds run (tests, benchmarks).
    progress_rounds: AtomicU64,
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
            filtered_groups: AtomicUsize::new(0),
            progress_rule: ProgressRule::default(),
            progress: Mutex::new(ProgressState {
                records: 0,
                last: Instant::now(),
            }),
            clients: Mutex::new(HashMap::new()),
            filter_counters: FilterCounters::detached(),
            broadcasts: IntCounter::new("broadcasts", "detached").expect("valid name"),
            progress_rounds: AtomicU64::new(0),
        }
    }

    /// Counts filter evaluations and broadcasts in these metrics.
    pub fn with_metrics(mut self, filter: FilterCounters, broadcasts: IntCounter) -> Self {
        self.filter_counters = filter;
        self.broadcasts = broadcasts;
        self
    }

    /// Runs progress rounds by `rule`.
    pub fn with_progress(mut self, rule: ProgressRule) -> Self {
        self.progress_rule = rule;
        self
    }

    /// Registers a connected client (broadcasts reach it, subscribed or not).
    pub fn connect(&self, client: &Arc<Client>) {
        self.clients
            .lock()
            .insert(client.id, Arc::downgrade(client));
    }

    /// Forgets a client (on disconnect).
    pub fn disconnect(&self, id: u64) {
        self.clients.lock().remove(&id);
    }

    /// Progress rounds run so far.
    pub fn progress_rounds(&self) -> u64 {
        self.progress_rounds.load(Ordering::Relaxed)
    }

    /// Queues `record` as a `broadcast` frame to every connected client (encoded once per
    /// encoding). Returns the number of clients it was queued to.
    pub fn broadcast(&self, record: &Record) -> usize {
        let mut frames: [Option<Control>; 2] = [None, None];
        let clients: Vec<Arc<Client>> = self
            .clients
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for client in &clients {
            let slot = match client.encoding {
                Encoding::Json => 0,
                Encoding::Proto => 1,
            };
            let control = frames[slot]
                .get_or_insert_with(|| protocol::broadcast(client.encoding, record))
                .clone();
            client.control(control);
        }
        self.broadcasts.inc_by(clients.len() as u64);
        clients.len()
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
            if record.broadcast {
                self.broadcast(record);
            }
            // The record's variables, built on the first filter that needs them and shared by
            // every other filter of its channel and of `*`.
            let mut activation: Option<Activation> = None;
            let mut evaluate = |filter: &Filter| -> Outcome {
                let a = activation.get_or_insert_with(|| filter::activation(record));
                let outcome = filter.evaluate(a);
                self.filter_counters.count(outcome);
                outcome
            };
            if let Some(channel) = &record.channel {
                let mut shard = self.shard(channel).lock();
                // The map's key is the name every subscriber registered (see `subscribe`), so
                // clients find their subscription by pointer.
                if !record.broadcast
                    && let Some((name, subs)) = shard.subs.get_key_value(&**channel)
                {
                    offer(name, subs, record, &mut evaluate, &mut touched);
                }
                shard.positions.insert(record.partition, record.offset + 1);
                if let Some(snapshot) = &self.snapshot
                    && !record.broadcast
                {
                    snapshot.lock().put(channel, record.clone());
                }
            }
            let mut star = self.star.lock();
            if !record.broadcast
                && let Some(subs) = star.subs.get(ALL)
            {
                offer(&self.star_name, subs, record, &mut evaluate, &mut touched);
            }
            star.positions.insert(record.partition, record.offset + 1);
        }
        if !records.is_empty() && self.filtered_groups.load(Ordering::Relaxed) > 0 {
            let due = {
                let mut progress = self.progress.lock();
                progress.records += records.len() as u64;
                let now = Instant::now();
                let due = progress.records >= self.progress_rule.every_records
                    || now.duration_since(progress.last) >= self.progress_rule.interval;
                if due {
                    progress.records = 0;
                    progress.last = now;
                }
                due
            };
            if due {
                self.progress_round(&mut touched);
            }
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

    /// Sends every filtered subscription that is live the hub's live positions as a `progress`
    /// frame (encoded once per group and encoding). Called by the publisher after a batch, so
    /// every record below those positions has been offered to every group already.
    fn progress_round(&self, touched: &mut Vec<Arc<Client>>) {
        self.progress_rounds.fetch_add(1, Ordering::Relaxed);
        let positions = Arc::new(self.live_positions());
        for shard in self.shards.iter().chain(std::iter::once(&self.star)) {
            let shard = shard.lock();
            for (name, subs) in &shard.subs {
                for group in subs.groups.iter().filter(|g| g.filter.is_some()) {
                    let mut frames: [Option<Control>; 2] = [None, None];
                    for client in &group.list {
                        let slot = match client.encoding {
                            Encoding::Json => 0,
                            Encoding::Proto => 1,
                        };
                        let control = frames[slot]
                            .get_or_insert_with(|| {
                                protocol::progress(client.encoding, name, &positions)
                            })
                            .clone();
                        if client.offer_progress(name, &positions, control) {
                            touched.push(client.clone());
                        }
                    }
                }
            }
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
                for client in subs.groups.iter().flat_map(|g| &g.list) {
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
    /// `filter` is the compiled `options.filter`: the client joins the group of its text.
    pub fn subscribe(
        &self,
        client: &Arc<Client>,
        options: &SubscribeOptions,
        filter: Option<Arc<Filter>>,
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
        if subs.insert(client.clone(), filter)? == GroupChange::Filtered {
            self.filtered_groups.fetch_add(1, Ordering::Relaxed);
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

    /// The compiled filter a subscription of `channel` already uses for `text`, if any: 10 000
    /// clients subscribing with one filter compile it once.
    pub fn known_filter(&self, channel: &str, text: &str) -> Option<Arc<Filter>> {
        let shard = self.shard(channel).lock();
        let subs = shard.subs.get(channel)?;
        let key: Option<Arc<str>> = Some(text.into());
        let g = *subs.by_filter.get(&key)?;
        subs.groups.get(g)?.filter.clone()
    }

    /// Removes `client` from `name`.
    pub fn unsubscribe(&self, client: &Client, name: &str) -> bool {
        let mut shard = self.shard(name).lock();
        let removed = match shard.subs.get_mut(name) {
            Some(subs) => {
                let removed = subs.remove(client.id);
                if subs.is_empty() {
                    shard.subs.remove(name);
                }
                removed
            }
            None => None,
        };
        drop(shard);
        if removed == Some(GroupChange::Filtered) {
            self.filtered_groups.fetch_sub(1, Ordering::Relaxed);
        }
        let removed = removed.is_some();
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

/// Offers `record` to every group of `subs` whose filter admits it (one evaluation per group).
fn offer(
    name: &Arc<str>,
    subs: &Subscribers,
    record: &Arc<Record>,
    evaluate: &mut impl FnMut(&Filter) -> Outcome,
    touched: &mut Vec<Arc<Client>>,
) {
    for group in &subs.groups {
        if let Some(filter) = &group.filter
            && !evaluate(filter).delivers()
        {
            continue;
        }
        for client in &group.list {
            if client.offer_deferred(name, record) {
                touched.push(client.clone());
            }
        }
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
        hub.subscribe(&a, &SubscribeOptions::new("a"), None)
            .expect("new");
        hub.subscribe(&b, &SubscribeOptions::new("b"), None)
            .expect("new");
        hub.subscribe(&all, &SubscribeOptions::new("*"), None)
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
            .subscribe(
                &c,
                &SubscribeOptions::new("*").since(Positions::new()),
                None,
            )
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
        hub.subscribe(&c, &SubscribeOptions::new("a"), None)
            .expect("new");
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
            hub.subscribe(&c, &SubscribeOptions::new(name), None)
                .expect("new");
        }
        // Another subscriber of `a`, registering its own `Arc<str>`.
        let d = client(2);
        hub.subscribe(&d, &SubscribeOptions::new(Arc::<str>::from("a")), None)
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
        hub.subscribe(&c, &SubscribeOptions::new("a"), None)
            .expect("again");
        hub.publish_batch(&[rec("a", 0, 3)]);
        assert_eq!(events(&c), [("a".into(), 0, 3), ("*".into(), 0, 3)]);
        assert_eq!(c.subscription_count(), 3);
    }

    #[test]
    fn double_subscribe_and_unsubscribe() {
        let hub = Hub::new(false);
        let c = client(1);
        assert!(
            hub.subscribe(&c, &SubscribeOptions::new("a"), None)
                .is_some()
        );
        assert!(
            hub.subscribe(&c, &SubscribeOptions::new("a"), None)
                .is_none()
        );
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
            hub.subscribe(c, &SubscribeOptions::new("a"), None)
                .expect("new");
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
        hub.subscribe(&a, &SubscribeOptions::new("a"), None)
            .expect("new");
        hub.subscribe(&b, &SubscribeOptions::new("b"), None)
            .expect("new");
        hub.subscribe(&all, &SubscribeOptions::new("*"), None)
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
                    Outbound::Progress { .. } => "progress".into(),
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
                .subscribe(&late, &SubscribeOptions::new(name.clone()), None)
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

    fn metric_rec(channel: &str, offset: i64, cpu: i64, broadcast: bool) -> Arc<Record> {
        let headers = if broadcast {
            vec![(
                super::super::record::HEADER_BROADCAST.to_string(),
                Bytes::from_static(b"1"),
            )]
        } else {
            vec![]
        };
        let payload = format!(r#"{{"cpu":{cpu}}}"#);
        Arc::new(Record::new(
            0,
            offset,
            None,
            None,
            Bytes::from(payload),
            headers,
            Some(channel.into()),
            PayloadKind::Json,
        ))
    }

    fn hub_with_counters() -> (Hub, FilterCounters) {
        let counters = FilterCounters::detached();
        let hub = Hub::new(false)
            .with_metrics(
                counters.clone(),
                IntCounter::new("b", "detached").expect("valid"),
            )
            .with_progress(ProgressRule {
                every_records: 5,
                interval: Duration::from_secs(3600),
            });
        hub.add_partitions(&[(0, 0)].into());
        (hub, counters)
    }

    fn compiled(text: &str) -> Option<Arc<Filter>> {
        Some(Filter::compile("a", text).expect("compiles"))
    }

    #[test]
    fn one_evaluation_per_record_and_distinct_filter() {
        let (hub, counters) = hub_with_counters();
        let hot: Vec<_> = (1..=3).map(client).collect();
        for c in &hot {
            let options = SubscribeOptions::new("a").filter("data.cpu > 90");
            hub.subscribe(c, &options, compiled("data.cpu > 90"))
                .expect("new");
        }
        let cold = client(4);
        hub.subscribe(
            &cold,
            &SubscribeOptions::new("a"),
            compiled("data.cpu < 10"),
        )
        .expect("new");
        let plain = client(5);
        hub.subscribe(&plain, &SubscribeOptions::new("a"), None)
            .expect("new");
        // A later subscriber with the same text reuses the compiled filter.
        assert!(hub.known_filter("a", "data.cpu > 90").is_some());
        assert!(hub.known_filter("a", "data.cpu > 91").is_none());
        assert!(hub.known_filter("b", "data.cpu > 90").is_none());
        hub.publish_batch(&[metric_rec("a", 0, 95, false), metric_rec("a", 1, 50, false)]);
        hub.publish_batch(&[metric_rec("a", 2, 5, false)]);
        let evaluations = counters.matched.get() + counters.dropped.get() + counters.failed.get();
        assert_eq!(evaluations, 6, "3 records x 2 distinct filters");
        for c in &hot {
            assert_eq!(events(c), [("a".into(), 0, 0)]);
        }
        assert_eq!(events(&cold), [("a".into(), 0, 2)]);
        assert_eq!(events(&plain).len(), 3);
        // Leaving a group keeps the others intact, whatever the order.
        assert!(hub.unsubscribe(&hot[0], "a"));
        assert!(hub.unsubscribe(&cold, "a"));
        hub.publish_batch(&[metric_rec("a", 3, 99, false)]);
        assert_eq!(events(&hot[2]), [("a".into(), 0, 3)]);
        assert!(events(&hot[0]).is_empty());
        assert_eq!(hub.filtered_groups.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn progress_rounds_move_filtered_subscriptions_past_dropped_records() {
        let (hub, _) = hub_with_counters();
        let c = client(1);
        hub.subscribe(&c, &SubscribeOptions::new("a"), compiled("data.cpu > 90"))
            .expect("new");
        let plain = client(2);
        hub.subscribe(&plain, &SubscribeOptions::new("b"), None)
            .expect("new");
        let _ = c.drain();
        let _ = plain.drain();
        hub.publish_batch(&[metric_rec("a", 0, 1, false), metric_rec("b", 1, 1, false)]);
        assert_eq!(hub.progress_rounds(), 0, "fewer than every_records");
        hub.publish_batch(&[
            metric_rec("a", 2, 99, false),
            metric_rec("b", 3, 1, false),
            metric_rec("a", 4, 1, false),
        ]);
        assert_eq!(hub.progress_rounds(), 1);
        let items = c.drain().items;
        assert_eq!(items.len(), 2, "the match, then progress: {items:?}");
        let Outbound::Progress { positions, .. } = &items[1] else {
            panic!("progress last: {items:?}")
        };
        assert_eq!(**positions, [(0, 5)].into(), "past every published record");
        assert!(
            plain
                .drain()
                .items
                .iter()
                .all(|i| !matches!(i, Outbound::Progress { .. })),
            "unfiltered subscriptions get no progress"
        );
    }

    #[test]
    fn broadcasts_reach_every_connected_client_and_no_subscription() {
        let (hub, _) = hub_with_counters();
        let (subscribed, idle) = (client(1), client(2));
        hub.connect(&subscribed);
        hub.connect(&idle);
        hub.subscribe(&subscribed, &SubscribeOptions::new("*"), None)
            .expect("new");
        hub.subscribe(&idle, &SubscribeOptions::new("a"), compiled("false"))
            .expect("new");
        let _ = subscribed.drain();
        let _ = idle.drain();
        hub.publish_batch(&[metric_rec("a", 0, 1, true)]);
        for c in [&subscribed, &idle] {
            let items = c.drain().items;
            assert_eq!(items.len(), 1, "the broadcast and no event: {items:?}");
            assert!(matches!(
                &items[0],
                Outbound::Control(Control {
                    kind: protocol::ControlKind::Broadcast,
                    ..
                })
            ));
        }
        assert_eq!(
            hub.live_positions(),
            [(0, 1)].into(),
            "positions move past it"
        );
        hub.disconnect(idle.id);
        hub.publish_batch(&[metric_rec("a", 1, 1, true)]);
        assert!(idle.drain().items.is_empty(), "disconnected");
        assert_eq!(subscribed.drain().items.len(), 1);
    }
}
