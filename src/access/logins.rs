//! Checking Basic passwords (bcrypt) so that wrong ones hurt nobody else.
//!
//! bcrypt is slow by design (tens to hundreds of milliseconds of one core
//! per check), which makes every password check a lever for a hostile
//! client. This module owns the three defences and nothing else (the htpasswd
//! file, who may pull what and the response are the caller's):
//!
//! 1. **Verified logins do not pay bcrypt again.** A (user, password, stored
//!    hash) that passed is remembered under a keyed hash (HMAC-SHA-256 with a
//!    key drawn at start-up, so the memory holds nothing an attacker could
//!    test passwords against offline); a changed or removed user misses.
//!    A remembered login is answered before any throttle or queue, so a
//!    client with the right password is served whatever others send.
//! 2. **Failures have a budget of their own.** A check from a (client
//!    address, user name) pair with no recent failure and none in flight,
//!    from an address with no other check in that pool, takes one of
//!    `login_concurrency` slots; any other check waits for one of
//!    `failed_login_concurrency` slots, so a flood of wrong passwords
//!    queues behind itself, never in front of someone else's first login.
//!    The address counts too because a user name costs nothing to change:
//!    a flood naming a new user each time would otherwise be all "first
//!    logins" and hold every first slot.
//! 3. **Repeated failures are throttled per pair.** Each failure adds one to
//!    the pair's counter, which loses one every `failed_login_decay`; at
//!    `max_failed_logins` the pair is answered 429 with `Retry-After` and no
//!    bcrypt runs. The pair, not the address, so one bad client behind a
//!    shared address (a node, a NAT) does not lock its neighbours out.
//!    IPv6 clients count by /64, the block a single host usually holds.
//!
//! An unknown user costs the same bcrypt as a wrong password (a hash at the
//! file's cost is computed and thrown away), is counted and throttled alike,
//! and gets the same answer: user names cannot be told apart from outside.
//!
//! Must never: run bcrypt on a throttled pair, log or keep a password (or an
//! unkeyed digest of one), or let a dropped request keep a slot or a pending
//! mark, or escape its failure count by hanging up (the permit, the pending
//! mark and the recording of the outcome move into the blocking task).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

/// The limits, from `[access]` (see `config.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// bcrypt checks at once for pairs without recent failures.
    pub concurrency: u32,
    /// bcrypt checks at once for pairs with recent failures.
    pub failed_concurrency: u32,
    /// Failures per (address, user) before 429.
    pub max_failed: u32,
    /// How long until one failure is forgotten.
    pub decay: Duration,
}

impl Default for LoginLimits {
    fn default() -> LoginLimits {
        LoginLimits {
            concurrency: 2,
            failed_concurrency: 1,
            max_failed: 10,
            decay: Duration::from_secs(30),
        }
    }
}

/// What a password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Accepted,
    /// Wrong password or unknown user (deliberately one answer).
    Refused,
    /// Too many recent failures for this pair: nothing was checked.
    Throttled {
        retry_after: Duration,
    },
}

/// At most this many pairs are tracked; past it, entries with nothing left
/// to remember are dropped, and a new pair that still finds no room is
/// treated as suspect (the small budget) without being tracked.
const MAX_PAIRS: usize = 65_536;

/// The salt of the throw-away hash an unknown user costs.
const DUMMY_SALT: [u8; 16] = *b"wharf-no-such-us";

pub struct Logins {
    /// HMAC key for the verified-login memory and the pair keys.
    key: [u8; 32],
    verified: moka::sync::Cache<[u8; 32], ()>,
    first: Arc<Semaphore>,
    suspect: Arc<Semaphore>,
    failures: Arc<Mutex<Failures>>,
    checks: IntCounterVec,
    throttled: IntCounter,
}

impl Logins {
    /// Registers its metrics in `registry`.
    pub fn new(limits: LoginLimits, registry: &Registry) -> Logins {
        let checks = IntCounterVec::new(
            Opts::new(
                "wharf_access_password_checks_total",
                "bcrypt password checks run for Basic credentials, by result (an unknown user's check counts as refused)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let throttled = IntCounter::new(
            "wharf_access_login_throttled_total",
            "Basic logins answered 429 without a password check: too many recent failures for that client address and user",
        )
        .expect("valid metric");
        registry
            .register(Box::new(checks.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(throttled.clone()))
            .expect("unique metric");
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).expect("the OS has randomness");
        Logins {
            key,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                // Idle, not total: a client that keeps pulling keeps its
                // login (a changed password or user misses anyway).
                .time_to_idle(Duration::from_secs(600))
                .build(),
            first: Arc::new(Semaphore::new(limits.concurrency as usize)),
            suspect: Arc::new(Semaphore::new(limits.failed_concurrency as usize)),
            failures: Arc::new(Mutex::new(Failures::new(limits))),
            checks,
            throttled,
        }
    }

    /// Checks `pass` for `user` coming from `ip`. `hash` is the user's
    /// bcrypt hash, `None` for an unknown user, who costs a bcrypt at `cost`
    /// (the file's) all the same.
    pub async fn check(
        &self,
        ip: IpAddr,
        user: &str,
        pass: String,
        hash: Option<&str>,
        cost: u32,
    ) -> Checked {
        let remembered = hash.map(|h| self.mac(&[user.as_bytes(), pass.as_bytes(), h.as_bytes()]));
        if remembered.is_some_and(|k| self.verified.contains_key(&k)) {
            return Checked::Accepted;
        }
        let pair = (client_block(ip), self.pair_user(user));
        let now = Instant::now();
        let mut pending = match self.failures.lock().begin(pair, now) {
            Begin::Throttled(retry_after) => return self.throttle(retry_after),
            Begin::Go { clean } => Pending {
                failures: self.failures.clone(),
                pair,
                clean,
                done: false,
            },
        };
        let pool = if pending.clean {
            &self.first
        } else {
            &self.suspect
        };
        let Ok(permit) = pool.clone().acquire_owned().await else {
            return Checked::Refused;
        };
        // While this waited, the same login may have passed (a remembered
        // login is no news about this pair: its count stays), or the pair
        // may have run out of attempts.
        if remembered.is_some_and(|k| self.verified.contains_key(&k)) {
            return Checked::Accepted;
        }
        if let Some(retry_after) = self.failures.lock().throttled(pair, Instant::now()) {
            return self.throttle(retry_after);
        }
        let hash = hash.map(str::to_owned);
        let (checks, verified) = (self.checks.clone(), self.verified.clone());
        // The outcome is recorded by the task itself: a client that hangs
        // up while bcrypt runs still has its failure counted.
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let ok = match hash {
                Some(h) => bcrypt::verify(pass, &h).unwrap_or(false),
                None => {
                    // The same work as a verification, thrown away.
                    let _ = bcrypt::hash_with_salt(pass, cost, DUMMY_SALT);
                    false
                }
            };
            checks
                .with_label_values(&[if ok { "accepted" } else { "refused" }])
                .inc();
            if let (true, Some(k)) = (ok, remembered) {
                verified.insert(k, ());
            }
            pending.finish(ok);
            ok
        })
        .await
        .unwrap_or(false);
        if ok {
            Checked::Accepted
        } else {
            Checked::Refused
        }
    }

    fn throttle(&self, retry_after: Duration) -> Checked {
        self.throttled.inc();
        Checked::Throttled { retry_after }
    }

    /// HMAC-SHA-256 (RFC 2104) under the start-up key of the parts, each
    /// length-prefixed so that no two tuples collide.
    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let pad = |b: u8| {
            let mut k = [b; 64];
            for (k, x) in k.iter_mut().zip(self.key) {
                *k ^= x;
            }
            k
        };
        let mut inner = Sha256::new().chain_update(pad(0x36));
        for p in parts {
            inner.update((p.len() as u64).to_be_bytes());
            inner.update(p);
        }
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner.finalize())
            .finalize()
            .into()
    }

    /// The user half of a pair key: fixed size whatever the client sent.
    fn pair_user(&self, user: &str) -> [u8; 16] {
        let m = self.mac(&[b"pair", user.as_bytes()]);
        m[..16].try_into().expect("16 of 32 bytes")
    }
}

/// The address a client is counted by: IPv4 as is, IPv6 by its /64.
fn client_block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

type Pair = (IpAddr, [u8; 16]);

/// Marks a check in flight for its pair until finished or dropped (a client
/// that went away counts as neither success nor failure).
struct Pending {
    failures: Arc<Mutex<Failures>>,
    pair: Pair,
    clean: bool,
    done: bool,
}

impl Pending {
    fn finish(&mut self, ok: bool) {
        self.done = true;
        self.failures
            .lock()
            .finish(self.pair, self.clean, ok, Instant::now());
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.failures.lock().abandon(self.pair, self.clean);
        }
    }
}

enum Begin {
    Throttled(Duration),
    /// Check, in the first-login pool when `clean`.
    Go {
        clean: bool,
    },
}

/// Failure counters per pair, with decay. Pure: every call is given `now`,
/// so tests need no clock.
struct Failures {
    limits: LoginLimits,
    pairs: HashMap<Pair, Entry>,
    /// Checks in the first-login pool (queued or running) per client
    /// block; an entry lives only while its count is above zero, so this
    /// holds no more than the checks in flight.
    first: HashMap<IpAddr, u32>,
}

#[derive(Clone, Copy)]
struct Entry {
    /// Failures as of `at`; decays by one per `limits.decay`.
    count: f64,
    at: Instant,
    /// Checks in flight.
    pending: u32,
}

impl Entry {
    fn count_at(&self, now: Instant, decay: Duration) -> f64 {
        let forgotten = now.saturating_duration_since(self.at).as_secs_f64() / decay.as_secs_f64();
        (self.count - forgotten).max(0.0)
    }
}

impl Failures {
    fn new(limits: LoginLimits) -> Failures {
        Failures {
            limits,
            pairs: HashMap::new(),
            first: HashMap::new(),
        }
    }

    fn count(&self, e: &Entry, now: Instant) -> f64 {
        e.count_at(now, self.limits.decay)
    }

    /// `Some(wait)` when the pair may not try now: until its count falls
    /// under the limit.
    fn throttled(&self, pair: Pair, now: Instant) -> Option<Duration> {
        let e = self.pairs.get(&pair)?;
        let over = self.count(e, now) - f64::from(self.limits.max_failed) + 1.0;
        (over > 0.0).then(|| {
            let secs = (over * self.limits.decay.as_secs_f64()).ceil().max(1.0);
            Duration::from_secs_f64(secs)
        })
    }

    fn begin(&mut self, pair: Pair, now: Instant) -> Begin {
        if let Some(wait) = self.throttled(pair, now) {
            return Begin::Throttled(wait);
        }
        if !self.pairs.contains_key(&pair) && self.pairs.len() >= MAX_PAIRS {
            let decay = self.limits.decay;
            self.pairs
                .retain(|_, e| e.pending > 0 || e.count_at(now, decay) > 0.0);
            if self.pairs.len() >= MAX_PAIRS {
                return Begin::Go { clean: false };
            }
        }
        let count = self.pairs.get(&pair).map(|e| self.count(e, now));
        let e = self.pairs.entry(pair).or_insert(Entry {
            count: 0.0,
            at: now,
            pending: 0,
        });
        let clean =
            e.pending == 0 && count.unwrap_or(0.0) == 0.0 && !self.first.contains_key(&pair.0);
        e.count = count.unwrap_or(0.0);
        e.at = now;
        e.pending += 1;
        if clean {
            *self.first.entry(pair.0).or_default() += 1;
        }
        Begin::Go { clean }
    }

    /// A check of the first-login pool is over (done or dropped).
    fn leave_first(&mut self, ip: IpAddr) {
        if let Some(n) = self.first.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.first.remove(&ip);
            }
        }
    }

    fn finish(&mut self, pair: Pair, clean: bool, ok: bool, now: Instant) {
        if clean {
            self.leave_first(pair.0);
        }
        let Some(e) = self.pairs.get(&pair).copied() else {
            return;
        };
        let count = if ok { 0.0 } else { self.count(&e, now) + 1.0 };
        let pending = e.pending.saturating_sub(1);
        if count == 0.0 && pending == 0 {
            self.pairs.remove(&pair);
        } else {
            self.pairs.insert(
                pair,
                Entry {
                    count,
                    at: now,
                    pending,
                },
            );
        }
    }

    fn abandon(&mut self, pair: Pair, clean: bool) {
        if clean {
            self.leave_first(pair.0);
        }
        if let Some(e) = self.pairs.get_mut(&pair) {
            e.pending = e.pending.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits {
            concurrency: 2,
            failed_concurrency: 1,
            max_failed: 3,
            decay: Duration::from_secs(10),
        }
    }

    fn pair(ip: [u8; 4], user: u8) -> Pair {
        (IpAddr::from(ip), [user; 16])
    }

    fn go(f: &mut Failures, p: Pair, now: Instant) -> bool {
        match f.begin(p, now) {
            Begin::Go { clean } => clean,
            Begin::Throttled(d) => panic!("throttled for {d:?}"),
        }
    }

    #[test]
    fn failures_throttle_their_pair_only_and_decay() {
        let mut f = Failures::new(limits());
        let t0 = Instant::now();
        let x = pair([10, 0, 0, 1], 1);
        // The first check of a pair is clean; a concurrent one is not.
        assert!(go(&mut f, x, t0));
        assert!(!go(&mut f, x, t0));
        f.finish(x, true, false, t0);
        f.finish(x, false, false, t0);
        // Recent failures: the small budget, then the throttle.
        assert!(!go(&mut f, x, t0));
        f.finish(x, false, false, t0);
        match f.begin(x, t0) {
            Begin::Throttled(d) => assert_eq!(d, Duration::from_secs(10)),
            Begin::Go { .. } => panic!("three failures of three allowed"),
        }
        // Another user at the same address, the same user elsewhere: clean.
        assert!(go(&mut f, pair([10, 0, 0, 1], 2), t0));
        f.finish(pair([10, 0, 0, 1], 2), true, true, t0);
        assert!(go(&mut f, pair([10, 0, 0, 2], 1), t0));
        f.finish(pair([10, 0, 0, 2], 1), true, true, t0);
        // One failure forgotten per decay period.
        assert!(f.throttled(x, t0 + Duration::from_secs(9)).is_some());
        assert!(f.throttled(x, t0 + Duration::from_secs(10)).is_none());
        assert!(!go(&mut f, x, t0 + Duration::from_secs(10)));
        // A success clears the pair.
        f.finish(x, false, true, t0 + Duration::from_secs(10));
        assert!(go(&mut f, x, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn abandoned_checks_release_their_mark() {
        let mut f = Failures::new(limits());
        let t0 = Instant::now();
        let x = pair([10, 0, 0, 1], 1);
        assert!(go(&mut f, x, t0));
        f.abandon(x, true);
        assert!(go(&mut f, x, t0));
    }

    #[test]
    fn a_new_user_name_per_try_does_not_make_a_flood_first_logins() {
        let mut f = Failures::new(limits());
        let t0 = Instant::now();
        let flooder = [10, 0, 0, 66];
        // Concurrent checks naming a new user each: one first-login slot
        // for the address, the rest in the failed-login pool.
        assert!(go(&mut f, pair(flooder, 1), t0));
        for user in 2..50 {
            assert!(!go(&mut f, pair(flooder, user), t0), "user {user}");
        }
        // Someone else's first login is still one.
        assert!(go(&mut f, pair([10, 0, 0, 7], 1), t0));
        // The address's first-login check over (done or dropped), its
        // next new pair is a first login again; nothing is left behind.
        f.finish(pair(flooder, 1), true, false, t0);
        assert!(go(&mut f, pair(flooder, 99), t0));
        f.abandon(pair(flooder, 99), true);
        f.finish(pair([10, 0, 0, 7], 1), true, true, t0);
        assert!(f.first.is_empty());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(client_block(a), client_block(b));
        let v4: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_block(v4), IpAddr::from([10, 1, 2, 3]));
    }

    #[tokio::test]
    async fn unknown_users_cost_a_check_and_answer_like_wrong_passwords() {
        let reg = Registry::new();
        let l = Logins::new(limits(), &reg);
        let hash = bcrypt::hash("right", 4).unwrap();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let refused = || l.checks.with_label_values(&["refused"]).get();
        assert_eq!(
            l.check(ip, "alice", "wrong".into(), Some(&hash), 4).await,
            Checked::Refused
        );
        assert_eq!(refused(), 1);
        assert_eq!(
            l.check(ip, "nobody", "wrong".into(), None, 4).await,
            Checked::Refused
        );
        assert_eq!(refused(), 2, "an unknown user runs a bcrypt too");
        assert_eq!(
            l.check(ip, "alice", "right".into(), Some(&hash), 4).await,
            Checked::Accepted
        );
        // Remembered: no second bcrypt.
        assert_eq!(
            l.check(ip, "alice", "right".into(), Some(&hash), 4).await,
            Checked::Accepted
        );
        assert_eq!(l.checks.with_label_values(&["accepted"]).get(), 1);
        // Three failures for nobody@ip: throttled without a check, and a
        // remembered login of the same address is still accepted.
        for _ in 0..2 {
            l.check(ip, "nobody", "x".into(), None, 4).await;
        }
        assert!(matches!(
            l.check(ip, "nobody", "x".into(), None, 4).await,
            Checked::Throttled { .. }
        ));
        assert_eq!(refused(), 4);
        assert_eq!(l.throttled.get(), 1);
        assert_eq!(
            l.check(ip, "alice", "right".into(), Some(&hash), 4).await,
            Checked::Accepted
        );
    }
}
