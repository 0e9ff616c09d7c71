//! Whether the bridge still hears from Kafka: the time of the last answer it had (a fetched
//! record, or a successful read of the topic's metadata and watermarks), and the rule that turns
//! a silence longer than `server.kafkaUnreadyAfter` into "not ready" on `/readyz` and `/health`.
//!
//! A bridge that lost Kafka still accepts clients and would serve them nothing new: reporting it
//! unready lets the Service send new clients to a replica that can. An idle topic does not make
//! it unready, because the consumer reads the watermarks at least every [`probe_interval`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::consumer::REFRESH_INTERVAL;

/// The last time the bridge heard from Kafka.
#[derive(Debug)]
pub struct KafkaContact {
    origin: Instant,
    /// Milliseconds after `origin` of the last answer; `u64::MAX` before the first one.
    last_ms: AtomicU64,
    unready_after: Duration,
}

impl KafkaContact {
    /// No contact yet; unready after `unready_after` of silence once contact was made.
    pub fn new(unready_after: Duration) -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
            unready_after,
        }
    }

    /// Records an answer from Kafka, now.
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.origin).as_millis() as u64;
        // Concurrent touches: keep the latest (fetch_max treats MAX as "never" wrongly, so
        // replace it first).
        let _ = self
            .last_ms
            .compare_exchange(u64::MAX, ms, Ordering::AcqRel, Ordering::Acquire);
        self.last_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// How long Kafka has been silent at `now`; `None` before the first answer.
    pub fn silent_for_at(&self, now: Instant) -> Option<Duration> {
        let last = self.last_ms.load(Ordering::Acquire);
        if last == u64::MAX {
            return None;
        }
        let now_ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        Some(Duration::from_millis(now_ms.saturating_sub(last)))
    }

    /// How long Kafka has been silent; `None` before the first answer.
    pub fn silent_for(&self) -> Option<Duration> {
        self.silent_for_at(Instant::now())
    }

    /// Whether Kafka answered within `unready_after` of `now` (never, before the first answer).
    pub fn reachable_at(&self, now: Instant) -> bool {
        self.silent_for_at(now)
            .is_some_and(|silence| silence <= self.unready_after)
    }

    /// Whether Kafka answered within `unready_after`.
    pub fn reachable(&self) -> bool {
        self.reachable_at(Instant::now())
    }

    /// The configured silence limit.
    pub fn unready_after(&self) -> Duration {
        self.unready_after
    }
}

/// How often the consumer reads the metadata and watermarks: the partition refresh interval,
/// or more often when needed to look at Kafka at least three times within `unready_after`
/// (one slow answer must not make a healthy bridge unready).
pub fn probe_interval(unready_after: Duration) -> Duration {
    REFRESH_INTERVAL
        .min(unready_after / 3)
        .max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_before_the_first_answer_and_after_a_silence_longer_than_the_limit() {
        let contact = KafkaContact::new(Duration::from_secs(30));
        let t0 = contact.origin;
        assert!(!contact.reachable_at(t0), "no answer yet");
        assert_eq!(contact.silent_for_at(t0), None);
        contact.touch_at(t0 + Duration::from_secs(5));
        assert!(contact.reachable_at(t0 + Duration::from_secs(35)));
        assert!(!contact.reachable_at(t0 + Duration::from_secs(36)));
        assert_eq!(
            contact.silent_for_at(t0 + Duration::from_secs(36)),
            Some(Duration::from_secs(31))
        );
        // Back as soon as Kafka answers again.
        contact.touch_at(t0 + Duration::from_secs(40));
        assert!(contact.reachable_at(t0 + Duration::from_secs(41)));
    }

    #[test]
    fn an_older_answer_recorded_late_does_not_move_the_last_contact_back() {
        let contact = KafkaContact::new(Duration::from_secs(10));
        let t0 = contact.origin;
        contact.touch_at(t0 + Duration::from_secs(20));
        contact.touch_at(t0 + Duration::from_secs(2));
        assert!(contact.reachable_at(t0 + Duration::from_secs(25)));
    }

    #[test]
    fn kafka_is_looked_at_at_least_three_times_within_the_limit() {
        assert_eq!(probe_interval(Duration::from_secs(30)), REFRESH_INTERVAL);
        assert_eq!(
            probe_interval(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert!(probe_interval(Duration::from_secs(90)) <= Duration::from_secs(30));
    }
}
