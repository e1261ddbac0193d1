//! Login throttling: after `max` failures for one key (account or client address) within
//! `window` seconds, further attempts are refused until the oldest failure leaves the window.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Keys kept before stale ones are pruned, bounding memory under a spray of addresses.
const PRUNE_AT: usize = 100_000;

/// Failure log per key.
#[derive(Debug)]
pub struct Throttle {
    max: usize,
    window: i64,
    failures: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl Throttle {
    /// A throttle allowing `max` failures per key within `window` seconds.
    pub fn new(max: u32, window: i64) -> Self {
        Self {
            max: usize::try_from(max).unwrap_or(usize::MAX).max(1),
            window: window.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when any of `keys` has used up its failures at `now`.
    pub fn check(&self, keys: &[&str], now: i64) -> Result<(), u64> {
        let map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut wait = 0;
        for key in keys {
            if let Some(log) = map.get(*key) {
                let recent: Vec<i64> = log
                    .iter()
                    .copied()
                    .filter(|&t| t > now - self.window)
                    .collect();
                if recent.len() >= self.max {
                    let oldest = recent[recent.len() - self.max];
                    wait = wait.max(oldest + self.window - now);
                }
            }
        }
        if wait > 0 {
            Err(u64::try_from(wait).unwrap_or(1))
        } else {
            Ok(())
        }
    }

    /// Records a failure for each of `keys` at `now`.
    pub fn fail(&self, keys: &[&str], now: i64) {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= PRUNE_AT {
            let window = self.window;
            map.retain(|_, log| log.back().is_some_and(|&t| t > now - window));
        }
        for key in keys {
            let log = map.entry((*key).to_owned()).or_default();
            log.push_back(now);
            while log.len() > self.max || log.front().is_some_and(|&t| t <= now - self.window) {
                log.pop_front();
            }
        }
    }

    /// Forgets the failures of `key` (after a successful login for that account).
    pub fn clear(&self, key: &str) {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn sixth_attempt_waits_until_the_window_passes() {
        let t = Throttle::new(5, 60);
        for i in 0..5 {
            assert_eq!(t.check(&["a"], 100 + i), Ok(()));
            t.fail(&["a"], 100 + i);
        }
        assert_eq!(t.check(&["a"], 105), Err(55));
        assert_eq!(t.check(&["b"], 105), Ok(()));
        assert_eq!(t.check(&["b", "a"], 159), Err(1));
        assert_eq!(t.check(&["a"], 160), Ok(()));
    }

    #[test]
    fn clear_forgets_a_key() {
        let t = Throttle::new(1, 60);
        t.fail(&["a", "ip"], 0);
        t.clear("a");
        assert_eq!(t.check(&["a"], 1), Ok(()));
        assert!(t.check(&["ip"], 1).is_err());
    }
}
