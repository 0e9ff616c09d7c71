//! One subscriber's bounded outbound queue, shared by the hub (which offers records without ever
//! waiting) and the connection task (which drains it into the socket).
//!
//! The queue holds at most `capacity` events; control frames (`subscribed`, `error`, `pong`)
//! are never dropped but are bounded separately so a client that floods requests without
//! reading is closed. When events overflow, the policy applies: `dropOldest` drops the oldest
//! queued events and remembers, per subscription and partition, the range dropped so that the
//! writer sends a `gap` naming it; `disconnect` marks the client closed (close code 4008).
//!
//! While a subscription replays history from Kafka it is *pending*: live records for it are
//! held in a per-subscription buffer (bounded the same way) and queued after the replay, so the
//! client sees history, then `subscribed`, then live records, in offset order.
//!
//! A filtered subscription's `progress` ([`Client::offer_progress`]) is kept aside, one per
//! subscription (a newer one replaces an unwritten older one: positions only move forward), and
//! written after everything queued: it is neither dropped nor counted against either bound.
//!
//! A `retention` gap from the hub ([`Client::offer_gap`]) is queued (or held) in order with the
//! records, never dropped, and not counted against either bound.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use eventstream_crds::v1alpha1::SlowClientPolicy;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::protocol::{Control, GapKind, Positions, SubscribeOptions};
use super::record::{Encoding, Record, WireFrame};

/// Most control frames queued before the client is considered not reading.
pub const MAX_CONTROL_FRAMES: usize = 256;

/// Why a client was closed by the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Events overflowed with policy `disconnect`.
    SlowClient,
    /// Too many unread control frames.
    NotReading,
    /// The connection's token expired and was not refreshed.
    TokenExpired,
}

/// An item ready for the socket.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An event of subscription `subscription`.
    Event {
        /// The subscription (channel or `*`).
        subscription: Arc<str>,
        /// Partition of the record.
        partition: i32,
        /// Offset of the record.
        offset: i64,
        /// Kafka timestamp, for the latency histogram.
        timestamp_ms: Option<i64>,
        /// When the bridge consumed the record (for the latency stages).
        consumed_at: std::time::Instant,
        /// The shared encoded frame.
        frame: WireFrame,
    },
    /// A control frame.
    Control(Control),
    /// Missed range of a subscription: from the drop policy (`slow_client`, reported first) or
    /// from the hub (`retention`, in order with the records).
    Gap {
        /// The subscription.
        subscription: Arc<str>,
        /// First missed offset per partition.
        from: Positions,
        /// One past the last missed offset per partition.
        to: Positions,
        /// Why.
        reason: GapKind,
    },
    /// A filtered subscription's progress: every record of it below `positions` (next
    /// offsets) was sent or dropped by its filter.
    Progress {
        /// The subscription.
        subscription: Arc<str>,
        /// Next offset per partition.
        positions: Arc<Positions>,
        /// The encoded `progress` frame.
        control: Control,
    },
}

/// What a replaying subscription holds for after its replay.
enum Held {
    Record(Arc<Record>),
    Gap {
        partition: i32,
        from: i64,
        to: i64,
        reason: GapKind,
    },
}

impl Held {
    fn is_record(&self) -> bool {
        matches!(self, Held::Record(_))
    }
}

fn gap_item(name: &Arc<str>, partition: i32, from: i64, to: i64, reason: GapKind) -> Outbound {
    Outbound::Gap {
        subscription: name.clone(),
        from: [(partition, from)].into(),
        to: [(partition, to)].into(),
        reason,
    }
}

#[derive(Default)]
struct Subscription {
    /// Live records (and retention gaps) held while the subscription replays.
    pending: Option<VecDeque<Held>>,
    /// Per partition, the last offset the client has already seen (from `since`): records at
    /// or below it are not delivered again (another replica may have delivered them).
    floor: Positions,
}

impl Subscription {
    /// A subscription as the client asked for it.
    fn new(options: &SubscribeOptions) -> Self {
        Self {
            pending: options.since.is_some().then(VecDeque::new),
            floor: options.since.clone().unwrap_or_default(),
        }
    }

    /// Whether `record` is to be delivered on this subscription. Every record offered live or
    /// replayed passes here, so what a subscription wants is decided in this one place.
    fn admits(&self, record: &Record) -> bool {
        self.floor
            .get(&record.partition)
            .is_none_or(|seen| record.offset > *seen)
    }
}

/// A client's subscriptions. The first one lives inline (next to the queue's lock) and is found
/// by pointer when the hub offers with the same `Arc<str>` it registered (the hub's canonical
/// name): with thousands of clients on `*`, a hash-table lookup per client and record costs
/// two or three cache misses, most of the hub's fan-out time.
#[derive(Default)]
struct Subs {
    first: Option<(Arc<str>, Subscription)>,
    rest: HashMap<Arc<str>, Subscription>,
}

impl Subs {
    fn insert(&mut self, name: Arc<str>, sub: Subscription) {
        match &mut self.first {
            Some((first, slot)) if **first == *name => *slot = sub,
            Some(_) => {
                self.rest.insert(name, sub);
            }
            None => {
                self.rest.remove(&name);
                self.first = Some((name, sub));
            }
        }
    }

    fn remove(&mut self, name: &str) {
        if self
            .first
            .as_ref()
            .is_some_and(|(first, _)| &**first == name)
        {
            self.first = None;
        } else {
            self.rest.remove(name);
        }
    }

    /// By pointer first, then by name.
    fn get_arc_mut(&mut self, name: &Arc<str>) -> Option<&mut Subscription> {
        match &mut self.first {
            Some((first, sub)) if Arc::ptr_eq(first, name) || **first == **name => Some(sub),
            _ => self.rest.get_mut(&**name),
        }
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Subscription> {
        match &mut self.first {
            Some((first, sub)) if &**first == name => Some(sub),
            _ => self.rest.get_mut(name),
        }
    }

    fn get(&self, name: &str) -> Option<&Subscription> {
        match &self.first {
            Some((first, sub)) if &**first == name => Some(sub),
            _ => self.rest.get(name),
        }
    }

    fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.first
            .iter()
            .map(|(name, _)| name)
            .chain(self.rest.keys())
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }
}

#[derive(Default)]
struct State {
    items: VecDeque<Outbound>,
    events: usize,
    controls: usize,
    /// Dropped ranges not yet reported, per subscription: (from, to).
    gaps: HashMap<Arc<str>, (Positions, Positions)>,
    subs: Subs,
    /// The latest unwritten progress per subscription.
    progress: HashMap<Arc<str>, (Arc<Positions>, Control)>,
    closed: Option<Closed>,
    dropped: u64,
}

/// What [`Client::drain`] returns.
pub struct Drained {
    /// Items in the order they must be written (gaps first).
    pub items: Vec<Outbound>,
    /// Set when the client must be closed after writing.
    pub closed: Option<Closed>,
    /// Events dropped since the previous drain.
    pub dropped: u64,
}

/// One connection's queue.
pub struct Client {
    /// Unique id within the process.
    pub id: u64,
    /// Wire encoding of this client.
    pub encoding: Encoding,
    capacity: usize,
    policy: SlowClientPolicy,
    state: Mutex<State>,
    /// Woken whenever something is queued or the client is closed.
    pub notify: Notify,
    /// Woken when events leave the queue (replay waits on it for space).
    space: Notify,
    /// Counts dropped events as they are dropped (the writer may be blocked on the socket).
    drop_counter: Option<prometheus::IntCounter>,
    /// Set while a deferred wake is owed (see [`Client::offer_deferred`]).
    wake_pending: AtomicBool,
    /// Signalled when the queue closes the client, so a writer blocked on the socket stops.
    closed_signal: Notify,
}

impl Client {
    /// A client with an event queue of `capacity`.
    pub fn new(id: u64, encoding: Encoding, capacity: usize, policy: SlowClientPolicy) -> Self {
        Self {
            id,
            encoding,
            capacity: capacity.max(1),
            policy,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            space: Notify::new(),
            drop_counter: None,
            wake_pending: AtomicBool::new(false),
            closed_signal: Notify::new(),
        }
    }

    /// The queue item of `record` for subscription `name`, with the shared frame.
    fn event(&self, name: &Arc<str>, record: &Record) -> Outbound {
        Outbound::Event {
            subscription: name.clone(),
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            consumed_at: record.consumed_at,
            frame: record.frame(name, self.encoding),
        }
    }

    /// Counts every dropped event in `counter` at the moment it is dropped.
    pub fn with_drop_counter(mut self, counter: prometheus::IntCounter) -> Self {
        self.drop_counter = Some(counter);
        self
    }

    /// Registers a subscription under `name` (the hub's canonical name of its channel). With
    /// `since`, it replays: live records are held until [`finish_replay`](Self::finish_replay),
    /// and nothing at or below `since` is ever queued.
    pub fn add_subscription(&self, name: Arc<str>, options: &SubscribeOptions) {
        self.state
            .lock()
            .subs
            .insert(name, Subscription::new(options));
    }

    /// Forgets a subscription and anything queued for it that is not yet written.
    pub fn remove_subscription(&self, name: &str) {
        let mut st = self.state.lock();
        st.subs.remove(name);
        st.gaps.remove(name);
        st.progress.remove(name);
        let mut removed = 0;
        st.items.retain(|item| match item {
            Outbound::Event { subscription, .. } => {
                let keep = &**subscription != name;
                removed += usize::from(!keep);
                keep
            }
            Outbound::Gap { subscription, .. } => &**subscription != name,
            Outbound::Control(_) | Outbound::Progress { .. } => true,
        });
        st.events -= removed;
        drop(st);
        // Always: a replay of this subscription may be waiting for space in a queue full of
        // another subscription's events, and must learn that its subscription is gone (or it
        // would hold its replay slot until the connection ends).
        self.space.notify_waiters();
    }

    /// Offers a live record without waking the writer: returns `true` when the caller must
    /// call [`wake`](Self::wake) once it has offered its whole batch (the first offer since the
    /// last wake). Waking once per batch lets the writer send the batch in one flush.
    pub fn offer_deferred(&self, name: &Arc<str>, record: &Arc<Record>) -> bool {
        self.enqueue(name, record) && !self.wake_pending.swap(true, Ordering::AcqRel)
    }

    /// Wakes the writer after [`offer_deferred`](Self::offer_deferred).
    pub fn wake(&self) {
        self.wake_pending.store(false, Ordering::Release);
        self.notify.notify_one();
    }

    /// Queues (or holds) the record; `true` when the writer has something new to do.
    fn enqueue(&self, name: &Arc<str>, record: &Arc<Record>) -> bool {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return false;
        }
        let Some(sub) = st.subs.get_arc_mut(name) else {
            return false;
        };
        if !sub.admits(record) {
            return false;
        }
        if let Some(pending) = &mut sub.pending {
            pending.push_back(Held::Record(record.clone()));
            if pending.len() > self.capacity
                && let Some(i) = pending.iter().position(Held::is_record)
                && let Some(Held::Record(dropped)) = pending.remove(i)
            {
                self.overflow(&mut st, name, dropped.partition, dropped.offset);
            }
            // Held records need no writer, unless the policy just closed the client.
            return st.closed.is_some();
        }
        let item = self.event(name, record);
        self.push_event(&mut st, item);
        true
    }

    fn push_event(&self, st: &mut State, item: Outbound) {
        st.items.push_back(item);
        st.events += 1;
        if st.events > self.capacity {
            // Drop the oldest queued event.
            if let Some(pos) = st
                .items
                .iter()
                .position(|i| matches!(i, Outbound::Event { .. }))
                && let Some(Outbound::Event {
                    subscription,
                    partition,
                    offset,
                    ..
                }) = st.items.remove(pos)
            {
                st.events -= 1;
                self.overflow(st, &subscription, partition, offset);
            }
        }
    }

    /// Applies the slow-client policy to one dropped event.
    fn overflow(&self, st: &mut State, name: &Arc<str>, partition: i32, offset: i64) {
        st.dropped += 1;
        if let Some(counter) = &self.drop_counter {
            counter.inc();
        }
        match self.policy {
            SlowClientPolicy::DropOldest => {
                let (from, to) = st.gaps.entry(name.clone()).or_default();
                let f = from.entry(partition).or_insert(offset);
                *f = (*f).min(offset);
                let t = to.entry(partition).or_insert(offset + 1);
                *t = (*t).max(offset + 1);
            }
            SlowClientPolicy::Disconnect => {
                st.closed = Some(Closed::SlowClient);
                self.closed_signal.notify_one();
                st.items.clear();
                st.progress.clear();
                st.events = 0;
                st.controls = 0;
                self.space.notify_waiters();
            }
        }
    }

    /// Queues (or, while `name` replays, holds) a gap: offsets `from..to` of `partition` will not
    /// be delivered on subscription `name`. Offsets the client has already seen (its `since`)
    /// are left out. Like [`offer_deferred`](Self::offer_deferred), returns `true` when the
    /// caller must [`wake`](Self::wake) the writer.
    pub fn offer_gap(
        &self,
        name: &Arc<str>,
        partition: i32,
        from: i64,
        to: i64,
        reason: GapKind,
    ) -> bool {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return false;
        }
        let Some(sub) = st.subs.get_arc_mut(name) else {
            return false;
        };
        let from = match sub.floor.get(&partition) {
            Some(seen) if *seen + 1 >= to => return false,
            Some(seen) => from.max(seen + 1),
            None => from,
        };
        if let Some(pending) = &mut sub.pending {
            pending.push_back(Held::Gap {
                partition,
                from,
                to,
                reason,
            });
            return false;
        }
        st.items
            .push_back(gap_item(name, partition, from, to, reason));
        !self.wake_pending.swap(true, Ordering::AcqRel)
    }

    /// Keeps `control` (a `progress` frame at `positions`) for subscription `name`, replacing an
    /// unwritten older one; ignored while `name` replays (its `subscribed` covers as much).
    /// Like [`offer_deferred`](Self::offer_deferred), returns `true` when the caller must
    /// [`wake`](Self::wake) the writer.
    pub fn offer_progress(
        &self,
        name: &Arc<str>,
        positions: &Arc<Positions>,
        control: Control,
    ) -> bool {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return false;
        }
        match st.subs.get_arc_mut(name) {
            Some(sub) if sub.pending.is_none() => {}
            _ => return false,
        }
        st.progress
            .insert(name.clone(), (positions.clone(), control));
        !self.wake_pending.swap(true, Ordering::AcqRel)
    }

    /// Closes the client because its token expired: nothing queued is written any more (the
    /// token no longer allows it; the client resumes from the events it did receive).
    pub fn expire(&self) {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return;
        }
        st.closed = Some(Closed::TokenExpired);
        st.items.clear();
        st.gaps.clear();
        st.progress.clear();
        st.events = 0;
        st.controls = 0;
        drop(st);
        self.closed_signal.notify_one();
        // A replay waiting for space must learn the client is gone, and the writer must wake.
        self.space.notify_waiters();
        self.notify.notify_one();
    }

    /// Queues a control frame (never dropped; too many unread closes the client).
    pub fn control(&self, control: Control) {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return;
        }
        st.items.push_back(Outbound::Control(control));
        st.controls += 1;
        if st.controls > MAX_CONTROL_FRAMES {
            st.closed = Some(Closed::NotReading);
            self.closed_signal.notify_one();
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Queues a replayed record for a pending subscription, waiting while the queue is full.
    /// Returns `false` when the client is closed or the subscription is gone.
    pub async fn replay(&self, name: &Arc<str>, record: &Record) -> bool {
        loop {
            let space = self.space.notified();
            {
                let mut st = self.state.lock();
                let Some(sub) = st.subs.get(name) else {
                    return false;
                };
                if st.closed.is_some() {
                    return false;
                }
                if st.events < self.capacity {
                    if !sub.admits(record) {
                        return true;
                    }
                    st.items.push_back(self.event(name, record));
                    st.events += 1;
                    drop(st);
                    self.notify.notify_one();
                    return true;
                }
            }
            self.notify.notify_one();
            space.await;
        }
    }

    /// Ends the replay of `name`: queues `subscribed` (and anything in `before`, e.g. a gap),
    /// then the live records held meanwhile, and makes the subscription live.
    pub fn finish_replay(&self, name: &Arc<str>, subscribed: Control) {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return;
        }
        let held = match st.subs.get_mut(name) {
            Some(sub) => sub.pending.take().unwrap_or_default(),
            None => return,
        };
        st.items.push_back(Outbound::Control(subscribed));
        st.controls += 1;
        for held in held {
            match held {
                Held::Record(record) => {
                    let item = self.event(name, &record);
                    self.push_event(&mut st, item);
                }
                Held::Gap {
                    partition,
                    from,
                    to,
                    reason,
                } => st
                    .items
                    .push_back(gap_item(name, partition, from, to, reason)),
            }
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Takes everything queued, gaps first.
    pub fn drain(&self) -> Drained {
        let mut st = self.state.lock();
        let mut items = Vec::with_capacity(st.items.len() + st.gaps.len());
        for (subscription, (from, to)) in st.gaps.drain() {
            items.push(Outbound::Gap {
                subscription,
                from,
                to,
                reason: GapKind::SlowClient,
            });
        }
        items.extend(st.items.drain(..));
        for (subscription, (positions, control)) in st.progress.drain() {
            items.push(Outbound::Progress {
                subscription,
                positions,
                control,
            });
        }
        let had_events = st.events > 0;
        st.events = 0;
        st.controls = 0;
        let dropped = std::mem::take(&mut st.dropped);
        let closed = st.closed;
        drop(st);
        if had_events {
            self.space.notify_waiters();
        }
        Drained {
            items,
            closed,
            dropped,
        }
    }

    /// Completes when the queue closes the client (slow-client policy or unread replies).
    pub async fn wait_closed(&self) {
        self.closed_signal.notified().await;
    }

    /// Whether the queue closed the client.
    pub fn closed(&self) -> Option<Closed> {
        self.state.lock().closed
    }

    /// Names of the current subscriptions.
    pub fn subscriptions(&self) -> Vec<Arc<str>> {
        self.state.lock().subs.keys().cloned().collect()
    }

    /// Number of current subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.state.lock().subs.len()
    }

    /// Whether `name` is subscribed.
    pub fn is_subscribed(&self, name: &str) -> bool {
        self.state.lock().subs.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::record::PayloadKind;
    use bytes::Bytes;

    fn rec(partition: i32, offset: i64) -> Arc<Record> {
        Arc::new(Record::new(
            partition,
            offset,
            None,
            None,
            Bytes::from_static(b"{}"),
            vec![],
            Some("c".into()),
            PayloadKind::Json,
        ))
    }

    fn subscribed() -> Control {
        crate::relay::protocol::subscribed(Encoding::Json, "c", &Positions::new())
    }

    /// What the hub does with one record: offer it, wake the writer if told to.
    fn offer(c: &Client, name: &Arc<str>, record: &Arc<Record>) {
        if c.offer_deferred(name, record) {
            c.wake();
        }
    }

    fn offsets(items: &[Outbound]) -> Vec<i64> {
        items
            .iter()
            .filter_map(|i| match i {
                Outbound::Event { offset, .. } => Some(*offset),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_reports_the_gap() {
        let c = Client::new(1, Encoding::Json, 3, SlowClientPolicy::DropOldest);
        let name: Arc<str> = "c".into();
        c.add_subscription(name.clone(), &SubscribeOptions::new("c"));
        for o in 0..10 {
            offer(&c, &name, &rec(0, o));
        }
        let d = c.drain();
        assert_eq!(offsets(&d.items), [7, 8, 9]);
        assert_eq!(d.dropped, 7);
        let Outbound::Gap { from, to, .. } = &d.items[0] else {
            panic!("gap first")
        };
        assert_eq!((from[&0], to[&0]), (0, 7));
        assert!(d.closed.is_none());
    }

    #[test]
    fn disconnect_policy_closes_and_frees_the_queue() {
        let c = Client::new(1, Encoding::Json, 2, SlowClientPolicy::Disconnect);
        let name: Arc<str> = "c".into();
        c.add_subscription(name.clone(), &SubscribeOptions::new("c"));
        for o in 0..3 {
            offer(&c, &name, &rec(0, o));
        }
        let d = c.drain();
        assert_eq!(d.closed, Some(Closed::SlowClient));
        assert!(d.items.is_empty());
    }

    #[test]
    fn floor_skips_what_the_client_has_seen() {
        let c = Client::new(1, Encoding::Json, 10, SlowClientPolicy::DropOldest);
        let name: Arc<str> = "c".into();
        c.add_subscription(
            name.clone(),
            &SubscribeOptions::new("c").since([(0, 5)].into()),
        );
        // Nothing to replay (the client is ahead): the subscription goes live at once, and
        // its `since` still holds back what the client has seen.
        c.finish_replay(&name, subscribed());
        for o in 3..8 {
            offer(&c, &name, &rec(0, o));
        }
        offer(&c, &name, &rec(1, 0));
        assert_eq!(offsets(&c.drain().items), [6, 7, 0]);
    }

    #[test]
    fn pending_subscriptions_hold_live_records_until_replay_ends() {
        let c = Client::new(1, Encoding::Json, 10, SlowClientPolicy::DropOldest);
        let name: Arc<str> = "c".into();
        c.add_subscription(
            name.clone(),
            &SubscribeOptions::new("c").since(Positions::new()),
        );
        offer(&c, &name, &rec(0, 10));
        offer(&c, &name, &rec(0, 11));
        assert!(c.drain().items.is_empty());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            assert!(c.replay(&name, &rec(0, 8)).await);
            assert!(c.replay(&name, &rec(0, 9)).await);
        });
        c.finish_replay(&name, subscribed());
        offer(&c, &name, &rec(0, 12));
        let items = c.drain().items;
        assert_eq!(offsets(&items), [8, 9, 10, 11, 12]);
        assert!(
            matches!(&items[2], Outbound::Control(_)),
            "subscribed after replay"
        );
    }

    #[test]
    fn unread_control_frames_close_the_client() {
        let c = Client::new(1, Encoding::Json, 10, SlowClientPolicy::DropOldest);
        for _ in 0..=MAX_CONTROL_FRAMES {
            c.control(crate::relay::protocol::pong(Encoding::Json, None));
        }
        assert_eq!(c.closed(), Some(Closed::NotReading));
    }

    #[test]
    fn unsubscribe_discards_queued_events() {
        let c = Client::new(1, Encoding::Json, 10, SlowClientPolicy::DropOldest);
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        c.add_subscription(a.clone(), &SubscribeOptions::new("a"));
        c.add_subscription(b.clone(), &SubscribeOptions::new("b"));
        offer(&c, &a, &rec(0, 1));
        offer(&c, &b, &rec(0, 1));
        c.remove_subscription("a");
        offer(&c, &a, &rec(0, 2));
        let items = c.drain().items;
        assert_eq!(items.len(), 1);
    }

    /// (kind, partition, offset or from..to) of queued items, for order checks.
    fn shape(items: &[Outbound]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Outbound::Event {
                    partition, offset, ..
                } => format!("event {partition}:{offset}"),
                Outbound::Gap {
                    from, to, reason, ..
                } => format!("gap {from:?}..{to:?} {reason:?}"),
                Outbound::Control(_) => "control".into(),
                Outbound::Progress { .. } => "progress".into(),
            })
            .collect()
    }

    #[test]
    fn a_retention_gap_keeps_its_place_among_the_records() {
        let c = Client::new(1, Encoding::Json, 10, SlowClientPolicy::DropOldest);
        let name: Arc<str> = "c".into();
        c.add_subscription(name.clone(), &SubscribeOptions::new("c"));
        assert!(c.offer_deferred(&name, &rec(0, 4)));
        assert!(
            !c.offer_gap(&name, 0, 5, 9, GapKind::Retention),
            "one wake per batch"
        );
        c.wake();
        offer(&c, &name, &rec(0, 9));
        assert_eq!(
            shape(&c.drain().items),
            ["event 0:4", "gap {0: 5}..{0: 9} Retention", "event 0:9"]
        );
    }

    #[test]
    fn a_replaying_subscription_holds_the_gap_with_its_live_records() {
        let c = Client::new(1, Encoding::Json, 10, SlowClientPolicy::DropOldest);
        let name: Arc<str> = "c".into();
        // The client saw up to offset 6: the gap starts after it.
        c.add_subscription(
            name.clone(),
            &SubscribeOptions::new("c").since([(0, 6)].into()),
        );
        offer(&c, &name, &rec(0, 10));
        c.offer_gap(&name, 0, 5, 20, GapKind::Retention);
        offer(&c, &name, &rec(0, 20));
        assert!(c.drain().items.is_empty(), "held while replaying");
        c.finish_replay(&name, subscribed());
        assert_eq!(
            shape(&c.drain().items),
            [
                "control",
                "event 0:10",
                "gap {0: 7}..{0: 20} Retention",
                "event 0:20"
            ]
        );
        // A gap entirely below what the client has seen is not sent.
        assert!(!c.offer_gap(&name, 0, 1, 5, GapKind::Retention));
        assert!(c.drain().items.is_empty());
    }

    #[test]
    fn unsubscribing_wakes_a_replay_waiting_for_space() {
        let c = Arc::new(Client::new(
            1,
            Encoding::Json,
            1,
            SlowClientPolicy::DropOldest,
        ));
        let (full, replaying): (Arc<str>, Arc<str>) = ("full".into(), "replaying".into());
        c.add_subscription(full.clone(), &SubscribeOptions::new("full"));
        c.add_subscription(
            replaying.clone(),
            &SubscribeOptions::new("replaying").since(Positions::new()),
        );
        offer(&c, &full, &rec(0, 1));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let waiting = {
                let c = c.clone();
                let name = replaying.clone();
                tokio::spawn(async move { c.replay(&name, &rec(0, 0)).await })
            };
            tokio::task::yield_now().await;
            c.remove_subscription(&replaying);
            let done = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
            assert!(
                matches!(done, Ok(Ok(false))),
                "the replay learns its subscription is gone: {done:?}"
            );
        });
    }
}
