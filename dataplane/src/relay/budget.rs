//! The per-connection request budget every transport applies to what a client sends: a token
//! bucket of [`REQUEST_BURST`] requests refilled at [`REQUESTS_PER_SECOND`]. A client beyond it
//! is disconnected (`/ws`: close 1008; Socket.IO: a server disconnect), so that one connection
//! cannot keep a bridge busy with requests.

use std::time::Instant;

/// Requests a client may burst; refilled at [`REQUESTS_PER_SECOND`].
pub const REQUEST_BURST: f64 = 100.0;
/// Sustained requests per second per connection; beyond it the connection is closed.
pub const REQUESTS_PER_SECOND: f64 = 50.0;

/// One connection's budget.
#[derive(Debug)]
pub struct RequestBudget {
    tokens: f64,
    at: Instant,
}

impl RequestBudget {
    /// A full bucket.
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: REQUEST_BURST,
            at: now,
        }
    }

    /// Spends one request at `now`; false when the budget is exhausted.
    pub fn take(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens
            + now.saturating_duration_since(self.at).as_secs_f64() * REQUESTS_PER_SECOND)
            .min(REQUEST_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut budget = RequestBudget::new(t0);
        assert!((0..100).all(|_| budget.take(t0)), "the burst");
        assert!(!budget.take(t0), "one more at once is refused");
        // 50 per second refill: one request every 20 ms.
        assert!(budget.take(t0 + Duration::from_millis(20)));
        assert!(!budget.take(t0 + Duration::from_millis(20)));
        // A long pause refills to the burst, not beyond it.
        let later = t0 + Duration::from_secs(10);
        assert!((0..100).all(|_| budget.take(later)));
        assert!(!budget.take(later));
    }
}
