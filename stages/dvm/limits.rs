//! Per-customer limits: a token bucket of job requests and a bound on the jobs one customer
//! has running or waiting, so one key cannot take every slot. The table of customers is
//! itself bounded (`max_customers`): customers with nothing to remember (bucket full again,
//! no job) are forgotten first, then the least recently seen without a job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one customer (a request's pubkey) may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerLimits {
    /// Requests a customer may make per minute on average (0 = no rate limit).
    pub jobs_per_minute: u32,
    /// Requests a customer may make at once before the rate applies (the bucket's size).
    pub burst: u32,
    /// Jobs of one customer running or waiting at once (0 = only the global bound).
    pub max_jobs: usize,
    /// Customers remembered at once; beyond, idle ones are forgotten.
    pub max_customers: usize,
}

impl Default for CustomerLimits {
    fn default() -> Self {
        CustomerLimits {
            jobs_per_minute: 30,
            burst: 10,
            max_jobs: 4,
            max_customers: 10_000,
        }
    }
}

/// Why a customer's request is turned away; the text goes into the error feedback.
#[derive(Debug, Clone, PartialEq)]
pub enum Limited {
    /// The bucket is empty; a token is back after `retry_in`.
    TooFast {
        /// Wait until the next request would be accepted.
        retry_in: Duration,
    },
    /// The customer already has `max_jobs` running or waiting.
    TooManyJobs {
        /// The per-customer bound.
        max: usize,
    },
}

impl Limited {
    /// The customer's message, starting with `rate-limited`.
    pub fn message(&self, limits: &CustomerLimits) -> String {
        match self {
            Limited::TooFast { retry_in } => format!(
                "rate-limited: at most {} requests per minute per customer (bursts of {}); try again in {} s",
                limits.jobs_per_minute,
                limits.burst.max(1),
                retry_in.as_secs_f64().ceil().max(1.0)
            ),
            Limited::TooManyJobs { max } => format!(
                "rate-limited: {max} of your jobs are already running or waiting; wait for their results"
            ),
        }
    }
}

/// One customer's state.
struct Customer {
    /// Tokens in the bucket as of `at`.
    tokens: f64,
    /// Last refill (the last request).
    at: Instant,
    /// Jobs running or waiting; each job's [`CustomerJob`] holds a clone.
    jobs: Arc<AtomicUsize>,
}

/// Counts one job of a customer while it lives.
pub struct CustomerJob(Option<Arc<AtomicUsize>>);

impl Drop for CustomerJob {
    fn drop(&mut self) {
        if let Some(n) = &self.0 {
            n.fetch_sub(1, Relaxed);
        }
    }
}

/// The customers seen recently, at most `max_customers` of them.
pub struct Customers {
    limits: CustomerLimits,
    map: HashMap<[u8; 32], Customer>,
}

impl Customers {
    /// An empty table enforcing `limits`.
    pub fn new(limits: CustomerLimits) -> Customers {
        Customers {
            limits,
            map: HashMap::new(),
        }
    }

    /// The limits enforced.
    pub fn limits(&self) -> &CustomerLimits {
        &self.limits
    }

    /// Customers remembered now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no customer is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn per_sec(&self) -> f64 {
        f64::from(self.limits.jobs_per_minute) / 60.0
    }

    fn burst(&self) -> f64 {
        f64::from(self.limits.burst.max(1))
    }

    /// The customer's entry, created with a full bucket (making room first when the table
    /// is full).
    fn entry(&mut self, who: [u8; 32], now: Instant) -> &mut Customer {
        if !self.map.contains_key(&who) && self.map.len() >= self.limits.max_customers.max(1) {
            self.make_room(now);
        }
        let burst = self.burst();
        let per_sec = self.per_sec();
        let c = self.map.entry(who).or_insert_with(|| Customer {
            tokens: burst,
            at: now,
            jobs: Arc::new(AtomicUsize::new(0)),
        });
        let elapsed = now.saturating_duration_since(c.at).as_secs_f64();
        c.tokens = (c.tokens + elapsed * per_sec).min(burst);
        c.at = now;
        c
    }

    /// Forgets customers until the table is at most three quarters full: first those with
    /// nothing to remember (a full bucket, no job), then the least recently seen without a
    /// job. Forgetting one gives it back a full bucket, no more than a fresh key gets.
    fn make_room(&mut self, now: Instant) {
        let (burst, per_sec) = (self.burst(), self.per_sec());
        let rate_limited = self.limits.jobs_per_minute > 0;
        self.map.retain(|_, c| {
            let refilled =
                c.tokens + now.saturating_duration_since(c.at).as_secs_f64() * per_sec >= burst;
            c.jobs.load(Relaxed) > 0 || (rate_limited && !refilled)
        });
        let target = self.limits.max_customers.max(1) * 3 / 4;
        if self.map.len() <= target {
            return;
        }
        let mut idle: Vec<(Instant, [u8; 32])> = self
            .map
            .iter()
            .filter(|(_, c)| c.jobs.load(Relaxed) == 0)
            .map(|(k, c)| (c.at, *k))
            .collect();
        idle.sort_unstable();
        let excess = self.map.len() - target;
        for (_, k) in idle.into_iter().take(excess) {
            self.map.remove(&k);
        }
    }

    /// Takes one token for a request of `who` at `now`.
    pub fn take(&mut self, who: [u8; 32], now: Instant) -> Result<(), Limited> {
        if self.limits.jobs_per_minute == 0 {
            return Ok(());
        }
        let per_sec = self.per_sec();
        let c = self.entry(who, now);
        if c.tokens >= 1.0 {
            c.tokens -= 1.0;
            return Ok(());
        }
        let retry_in = Duration::from_secs_f64(((1.0 - c.tokens) / per_sec).clamp(0.0, 3600.0));
        Err(Limited::TooFast { retry_in })
    }

    /// Counts a new job of `who` unless it has `max_jobs` running or waiting; the job holds
    /// the returned guard until it ends.
    pub fn start_job(&mut self, who: [u8; 32], now: Instant) -> Result<CustomerJob, Limited> {
        let max = self.limits.max_jobs;
        if max == 0 {
            return Ok(CustomerJob(None));
        }
        let c = self.entry(who, now);
        if c.jobs.load(Relaxed) >= max {
            return Err(Limited::TooManyJobs { max });
        }
        c.jobs.fetch_add(1, Relaxed);
        Ok(CustomerJob(Some(c.jobs.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_minute: u32, burst: u32, max_jobs: usize, max_customers: usize) -> Customers {
        Customers::new(CustomerLimits {
            jobs_per_minute: per_minute,
            burst,
            max_jobs,
            max_customers,
        })
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_the_rate() {
        let mut c = limits(60, 3, 0, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            c.take([1; 32], t0).expect("within the burst");
        }
        let Err(Limited::TooFast { retry_in }) = c.take([1; 32], t0) else {
            panic!("the fourth is limited")
        };
        assert!(retry_in <= Duration::from_secs(1), "{retry_in:?}");
        // Another customer has its own bucket.
        c.take([2; 32], t0).expect("another customer");
        // One per second comes back, never more than the burst.
        c.take([1; 32], t0 + Duration::from_millis(1001))
            .expect("refilled");
        assert!(c.take([1; 32], t0 + Duration::from_millis(1002)).is_err());
        for _ in 0..3 {
            c.take([1; 32], t0 + Duration::from_secs(100))
                .expect("full again");
        }
        assert!(c.take([1; 32], t0 + Duration::from_secs(100)).is_err());
    }

    #[test]
    fn jobs_per_customer_are_bounded_until_they_end() {
        let mut c = limits(0, 1, 2, 10);
        let now = Instant::now();
        let a = c.start_job([1; 32], now).expect("first");
        let _b = c.start_job([1; 32], now).expect("second");
        assert_eq!(
            c.start_job([1; 32], now).err(),
            Some(Limited::TooManyJobs { max: 2 })
        );
        let _other = c.start_job([2; 32], now).expect("another customer");
        drop(a);
        let _c = c.start_job([1; 32], now).expect("a slot came back");
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_customers_with_jobs() {
        let mut c = limits(1, 1, 1, 100);
        let now = Instant::now();
        let busy = c.start_job([0; 32], now).expect("job");
        for i in 1..=10_000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            let _ = c.take(k, now + Duration::from_millis(u64::from(i)));
            assert!(c.len() <= 100, "{} customers remembered", c.len());
        }
        // The customer with a job running is still counted: a second job is refused.
        assert!(c.start_job([0; 32], now).is_err());
        drop(busy);
    }
}
