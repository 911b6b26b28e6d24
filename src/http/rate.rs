//! `--max-member-posts-per-minute`: how fast one member token may post messages and files.
//!
//! A token bucket per token: full at `n` posts, refilled at `n` per minute, so a member may post
//! `n` at once and then one every `60/n` seconds. Admins are not limited (they may do anything,
//! deleting everything included). A post over the budget answers 429 `rate_limited` with
//! `Retry-After`.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] tokens are remembered. A bucket that has refilled is
//! the same as no bucket, so those are forgotten first; if every remembered token is still
//! draining, a new one is refused until one has refilled (only an issuer of that many member
//! tokens can get there).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ErrorBody, ErrorDetail};

/// Tokens remembered at once: about 40 bytes each, so at most a few MB.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug)]
pub struct PostLimiter {
    /// Posts per minute; 0 means unlimited.
    per_minute: u32,
    max_tracked: usize,
    /// Hash of the token → its bucket. The token itself is not kept.
    buckets: Mutex<HashMap<u64, Bucket>>,
    /// Keyed at start, so nobody can aim tokens at one bucket.
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    posts: f64,
    at: Instant,
}

impl PostLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, MAX_TRACKED)
    }

    fn with_capacity(per_minute: u32, max_tracked: usize) -> Self {
        PostLimiter {
            per_minute,
            max_tracked,
            buckets: Mutex::new(HashMap::new()),
            hasher: Default::default(),
        }
    }

    /// Takes one post from `token`'s budget; `Err` says how long until the next one is allowed.
    pub fn take(&self, token: &str) -> Result<(), Duration> {
        self.take_at(token, Instant::now())
    }

    fn take_at(&self, token: &str, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let full = f64::from(self.per_minute);
        let per_second = full / 60.0;
        let level = |b: &Bucket| (b.posts + now.saturating_duration_since(b.at).as_secs_f64() * per_second).min(full);
        let key = self.hasher.hash_one(token);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= self.max_tracked {
            buckets.retain(|_, b| level(b) < full);
            if buckets.len() >= self.max_tracked {
                return Err(Duration::from_secs(60) / self.per_minute);
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket { posts: full, at: now });
        let posts = level(bucket);
        if posts >= 1.0 {
            *bucket = Bucket {
                posts: posts - 1.0,
                at: now,
            };
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - posts) / per_second))
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

/// 429 `rate_limited`, with `Retry-After` in whole seconds (at least 1).
pub fn refusal(retry_after: Duration) -> Response {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let body = ErrorBody {
        error: ErrorDetail {
            code: "rate_limited".to_owned(),
            message: format!("too many posts from this token: try again in {seconds} s"),
            details: None,
        },
    };
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_posts_its_budget_at_once_then_at_the_refill_rate() {
        let limiter = PostLimiter::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take_at("a", t0).is_ok());
        }
        let wait = limiter.take_at("a", t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(21),
            "{wait:?}"
        );
        // Another token has its own budget.
        assert!(limiter.take_at("b", t0).is_ok());
        assert!(limiter.take_at("a", t0 + Duration::from_secs(20)).is_ok());
        assert!(limiter.take_at("a", t0 + Duration::from_secs(21)).is_err());
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = PostLimiter::new(0);
        for _ in 0..1000 {
            assert!(limiter.take("a").is_ok());
        }
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn the_map_never_grows_past_its_cap() {
        let limiter = PostLimiter::with_capacity(2, 10);
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(limiter.take_at(&format!("t{i}"), t0).is_ok());
        }
        // Every remembered token is still draining: a new one waits rather than evicting one.
        assert!(limiter.take_at("new", t0).is_err());
        assert_eq!(limiter.tracked(), 10);
        // Once they have refilled they are forgotten, and room is made.
        let later = t0 + Duration::from_secs(60);
        assert!(limiter.take_at("new", later).is_ok());
        assert_eq!(limiter.tracked(), 1);
        for i in 0..1000 {
            let _ = limiter.take_at(&format!("u{i}"), later);
        }
        assert!(limiter.tracked() <= 10);
    }
}
