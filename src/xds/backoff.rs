//! Jittered exponential backoff for reconnects (Envoy's defaults: 500 ms base, 30 s cap).
//!
//! Owns: the delay sequence. Must not sleep itself; the caller does, with `tokio::time`.

use std::time::Duration;

use rand::{Rng, SeedableRng};

#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: rand::rngs::SmallRng,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max, attempt: 0, rng: rand::rngs::SmallRng::from_os_rng() }
    }

    /// Deterministic jitter for tests.
    pub fn with_seed(base: Duration, max: Duration, seed: u64) -> Self {
        Backoff { base, max, attempt: 0, rng: rand::rngs::SmallRng::seed_from_u64(seed) }
    }

    /// The next delay: uniform in [ceiling/2, ceiling], ceiling = min(max, base * 2^attempt).
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(self.rng.random_range(ms / 2..=ms))
    }

    /// After a healthy stream: start again from the base delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_jittered_and_caps() {
        let mut b = Backoff::with_seed(Duration::from_millis(500), Duration::from_secs(30), 7);
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] <= Duration::from_millis(500));
        assert!(delays[3] >= Duration::from_secs(2) && delays[3] <= Duration::from_secs(4));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(delays[9] >= Duration::from_secs(15));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }
}
