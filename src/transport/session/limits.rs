//! What one connection may ask for, and how often (README "Security: auth and limits"): client
//! frames per second, snapshots per second, bad frames per window. Each budget is the
//! connection's own, so one abusive client costs only itself.

use std::time::{Duration, Instant};

/// The window over which bad frames, and frames refused for the rate, are counted.
pub const ERROR_WINDOW: Duration = Duration::from_secs(10);
/// Bad frames tolerated per [`ERROR_WINDOW`]; past that the connection is closed with 1008.
const ERROR_BUDGET: u32 = 20;

/// A token bucket: `rate` per second, up to `burst` at once.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: a fresh connection may use its whole burst at once.
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to do with a client frame, by the frame rate.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameCheck {
    Ok,
    /// Over the rate: answered `rate_limited`, not handled.
    Excess,
    /// Over the rate for long: the client ignores `rate_limited`, so it is closed with 1008.
    Abuse,
}

/// Client frames: `rate` per second, bursts of `2 × rate`. More than `5 × rate` refused within
/// [`ERROR_WINDOW`] is abuse.
#[derive(Debug)]
pub struct FrameLimit {
    bucket: TokenBucket,
    /// Start of the current window and the frames refused in it.
    refused: (Instant, u32),
}

impl FrameLimit {
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        FrameLimit {
            bucket: TokenBucket::new(rate, 2.0 * rate),
            refused: (Instant::now(), 0),
        }
    }

    pub fn check(&mut self) -> FrameCheck {
        if self.bucket.take() {
            return FrameCheck::Ok;
        }
        let now = Instant::now();
        if now.duration_since(self.refused.0) > ERROR_WINDOW {
            self.refused = (now, 0);
        }
        self.refused.1 += 1;
        if f64::from(self.refused.1) > 5.0 * self.bucket.rate {
            FrameCheck::Abuse
        } else {
            FrameCheck::Excess
        }
    }
}

/// Bad frames: a few mistakes are answered and forgiven, a burst of them is a broken or hostile
/// client, and closing it stops it from costing an answer per frame.
#[derive(Debug)]
pub struct ErrorBudget {
    /// Start of the current window and the bad frames seen in it.
    window: (Instant, u32),
}

impl ErrorBudget {
    pub fn new() -> Self {
        ErrorBudget {
            window: (Instant::now(), 0),
        }
    }

    /// Counts one bad frame; false once the window holds more than the budget.
    pub fn spend(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window.0) > ERROR_WINDOW {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        self.window.1 <= ERROR_BUDGET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_refuses() {
        let mut bucket = TokenBucket::new(0.001, 3.0);
        assert!((0..3).all(|_| bucket.take()));
        assert!(!bucket.take());
    }

    #[test]
    fn frames_past_the_burst_are_excess_then_abuse() {
        let mut limit = FrameLimit::new(1);
        assert_eq!(limit.check(), FrameCheck::Ok);
        assert_eq!(limit.check(), FrameCheck::Ok);
        for _ in 0..5 {
            assert_eq!(limit.check(), FrameCheck::Excess);
        }
        assert_eq!(limit.check(), FrameCheck::Abuse);
    }

    #[test]
    fn the_error_budget_allows_twenty_bad_frames_per_window() {
        let mut budget = ErrorBudget::new();
        assert!((0..ERROR_BUDGET).all(|_| budget.spend()));
        assert!(!budget.spend());
    }
}
