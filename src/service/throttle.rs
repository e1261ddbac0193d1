//! Login throttling that an attacker cannot turn against the users it protects.
//!
//! Three buckets count the attempts of each login, each over a window that starts at its first
//! counted attempt:
//! - (account, address): `max` attempts. Guessing one account's password from one place stops
//!   here, and it stops nobody else: the account's owner logs in from another address.
//! - account: [`WIDE_FACTOR`] × `max`, the slower global limit against guessing one account
//!   from many addresses.
//! - address: [`WIDE_FACTOR`] × `max`, against one address spraying many accounts.
//!
//! Check and count are one step ([`Throttle::begin`] under one lock): an attempt is counted
//! before its password is hashed, and given back when it succeeds or ends without a verdict,
//! so a concurrent burst cannot get more than the limit through. Memory is bounded: the table
//! holds at most [`CAPACITY`] entries, keyed by a keyed 64-bit hash (no attacker-chosen string
//! is kept); when full, expired entries go, then the eighth with the fewest attempts, so a
//! spray of one-off logins cannot flush the bucket that blocks a guesser.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};

/// Entries kept at most (about 48 bytes each, so a few MiB at worst).
pub const CAPACITY: usize = 65_536;
/// How many times the per-(account, address) limit the account-wide and address-wide limits
/// are.
pub const WIDE_FACTOR: u32 = 20;

/// Attempts counted for one bucket.
#[derive(Debug, Clone, Copy)]
struct Count {
    /// When the first counted attempt of this window was made.
    first: i64,
    /// When this bucket was last counted (for eviction).
    last: i64,
    /// Attempts counted in the window (failures, and attempts still being checked).
    attempts: u32,
}

/// The buckets of one login: (account, address), account, address, as table keys.
type Keys = [u64; 3];

/// Attempt counts per bucket.
#[derive(Debug)]
pub struct Throttle {
    /// Limit of the (account, address) bucket; the others have `WIDE_FACTOR` times it.
    max: u32,
    /// Window length in seconds.
    window: i64,
    /// Keys the table by a per-process random hash, so nobody can aim at collisions.
    hasher: std::collections::hash_map::RandomState,
    table: Mutex<HashMap<u64, Count>>,
}

/// One login attempt, counted against its buckets. Dropping it gives the count back (no
/// verdict: the hash queue was full, the store failed); [`Attempt::failed`] keeps it, and
/// [`Attempt::succeeded`] forgets the (account, address) failures too.
#[must_use = "dropping the attempt gives its count back"]
#[derive(Debug)]
pub struct Attempt {
    throttle: Arc<Throttle>,
    keys: Keys,
    settled: bool,
}

impl Throttle {
    /// A throttle allowing `max` attempts per (account, address) within `window` seconds.
    #[must_use]
    pub fn new(max: u32, window: i64) -> Self {
        Self {
            max: max.max(1),
            window: window.max(1),
            hasher: std::collections::hash_map::RandomState::new(),
            table: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, part: impl Hash) -> u64 {
        self.hasher.hash_one(part)
    }

    fn keys(&self, account: &str, address: &str) -> Keys {
        [
            self.key(("pair", account, address)),
            self.key(("account", account)),
            self.key(("address", address)),
        ]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Count>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks and counts one attempt for `account` (already normalised) from `address` at
    /// `now`, atomically.
    ///
    /// # Errors
    /// `Err(seconds to wait)` when a bucket is full; nothing is counted then.
    pub fn begin(self: &Arc<Self>, account: &str, address: &str, now: i64) -> Result<Attempt, u64> {
        let keys = self.keys(account, address);
        let limits = [
            self.max,
            self.max.saturating_mul(WIDE_FACTOR),
            self.max.saturating_mul(WIDE_FACTOR),
        ];
        let mut table = self.lock();
        let mut wait = 0;
        for (key, limit) in keys.iter().zip(limits) {
            if let Some(c) = table.get(key)
                && c.first > now - self.window
                && c.attempts >= limit
            {
                wait = wait.max(c.first + self.window - now);
            }
        }
        if wait > 0 {
            return Err(u64::try_from(wait).unwrap_or(1));
        }
        for key in keys {
            if !table.contains_key(&key) && table.len() >= CAPACITY {
                self.make_room(&mut table, now);
            }
            let c = table.entry(key).or_insert(Count {
                first: now,
                last: now,
                attempts: 0,
            });
            if c.first <= now - self.window {
                *c = Count {
                    first: now,
                    last: now,
                    attempts: 0,
                };
            }
            c.attempts += 1;
            c.last = now;
        }
        Ok(Attempt {
            throttle: Arc::clone(self),
            keys,
            settled: false,
        })
    }

    /// Drops expired entries, then, if that freed less than an eighth, the eighth with the
    /// fewest attempts (the least recently counted first among equals): a spray of one-off
    /// logins evicts its own kind, while a bucket that is blocking someone outlasts it (so a
    /// full table costs one scan per `CAPACITY / 8` new entries).
    fn make_room(&self, table: &mut HashMap<u64, Count>, now: i64) {
        let window = self.window;
        table.retain(|_, c| c.first > now - window);
        let evict = CAPACITY / 8;
        if table.len() > CAPACITY - evict {
            let mut ranked: Vec<(u32, i64, u64)> = table
                .iter()
                .map(|(&key, c)| (c.attempts, c.last, key))
                .collect();
            ranked.select_nth_unstable(evict);
            for (_, _, key) in &ranked[..evict] {
                table.remove(key);
            }
        }
    }

    /// Entries held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no entry is held.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes one count back from each of `keys` (and forgets `forget` entirely).
    fn give_back(&self, keys: &Keys, forget: Option<u64>) {
        let mut table = self.lock();
        for key in keys {
            if Some(*key) == forget {
                table.remove(key);
            } else if let Some(c) = table.get_mut(key) {
                c.attempts = c.attempts.saturating_sub(1);
                if c.attempts == 0 {
                    table.remove(key);
                }
            }
        }
    }
}

impl Attempt {
    /// The login failed: the count stays.
    pub fn failed(mut self) {
        self.settled = true;
    }

    /// The login succeeded: the count goes back, and the failures of this (account, address)
    /// are forgotten.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.throttle.give_back(&self.keys, Some(self.keys[0]));
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.throttle.give_back(&self.keys, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Arc, CAPACITY, Throttle, WIDE_FACTOR};

    fn throttle(max: u32, window: i64) -> Arc<Throttle> {
        Arc::new(Throttle::new(max, window))
    }

    #[test]
    fn sixth_attempt_waits_until_the_window_passes() {
        let t = throttle(5, 60);
        for i in 0..5 {
            t.begin("a", "ip", 100 + i).unwrap().failed();
        }
        assert_eq!(t.begin("a", "ip", 105).unwrap_err(), 55);
        assert!(t.begin("b", "ip", 105).is_ok());
        assert_eq!(t.begin("a", "ip", 159).unwrap_err(), 1);
        assert!(t.begin("a", "ip", 160).is_ok());
    }

    /// Regression (issue 16): 5 failures from one address locked the account everywhere.
    #[test]
    fn failures_from_one_address_do_not_lock_the_account_elsewhere() {
        let t = throttle(5, 60);
        for _ in 0..5 {
            t.begin("admin", "attacker", 0).unwrap().failed();
        }
        assert!(t.begin("admin", "attacker", 1).is_err());
        t.begin("admin", "office", 1).unwrap().succeeded();
    }

    #[test]
    fn the_account_wide_limit_is_slower_but_holds() {
        let t = throttle(2, 60);
        for i in 0..2 * WIDE_FACTOR {
            t.begin("admin", &format!("10.0.0.{i}"), 0)
                .unwrap()
                .failed();
        }
        assert_eq!(t.begin("admin", "elsewhere", 10).unwrap_err(), 50);
        assert!(t.begin("other", "elsewhere", 10).is_ok());
    }

    #[test]
    fn the_address_wide_limit_stops_spraying_accounts() {
        let t = throttle(2, 60);
        for i in 0..2 * WIDE_FACTOR {
            t.begin(&format!("user{i}"), "sprayer", 0).unwrap().failed();
        }
        assert!(t.begin("fresh", "sprayer", 1).is_err());
        assert!(t.begin("fresh", "someone else", 1).is_ok());
    }

    #[test]
    fn success_forgets_the_pair_and_a_dropped_attempt_gives_its_count_back() {
        let t = throttle(1, 60);
        t.begin("a", "ip", 0).unwrap().failed();
        assert!(t.begin("a", "ip", 1).is_err());
        let t = throttle(1, 60);
        drop(t.begin("a", "ip", 0).unwrap());
        t.begin("a", "ip", 1).unwrap().succeeded();
        assert!(t.is_empty(), "{}", t.len());
    }

    /// Regression (issue 16): check and count were two steps, so attempts checked at once all
    /// passed. Now the count is taken with the check: only `max` of a burst get through.
    #[test]
    fn a_concurrent_burst_gets_no_more_than_the_limit() {
        let t = throttle(5, 60);
        let passed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..32)
                .map(|_| {
                    let t = &t;
                    s.spawn(move || match t.begin("admin", "ip", 0) {
                        Ok(attempt) => {
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            attempt.failed();
                            1
                        }
                        Err(_) => 0,
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(passed, 5);
    }

    /// Regression (issue 16): every distinct login and address stayed in memory until stale.
    #[test]
    fn the_table_stays_within_its_capacity() {
        let t = throttle(1_000_000, 3600);
        for i in 0..3 * CAPACITY {
            t.begin(&format!("bogus{i}"), &format!("addr{}", i % 1000), 0)
                .unwrap()
                .failed();
            assert!(t.len() <= CAPACITY);
        }
        assert!(t.len() <= CAPACITY);
    }

    /// A spray of one-off logins filling the table cannot flush a bucket that blocks someone.
    #[test]
    fn a_spray_does_not_evict_a_blocking_bucket() {
        let t = throttle(5, 3600);
        for _ in 0..5 {
            t.begin("admin", "attacker", 0).unwrap().failed();
        }
        for i in 0..2 * CAPACITY {
            t.begin(&format!("bogus{i}"), &format!("addr{i}"), 1)
                .unwrap()
                .failed();
        }
        assert!(t.len() <= CAPACITY);
        assert!(t.begin("admin", "attacker", 2).is_err());
    }
}
