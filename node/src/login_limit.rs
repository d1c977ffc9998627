//! Limits on guessing secrets: failed logins per account and per source
//! address earn a growing wait, and the argon2 work behind every check is
//! bounded so parallel attempts cannot exhaust memory.
//!
//! An account or source is free to fail a few times; after that each
//! further failure doubles the wait before the next attempt is even looked
//! at (up to [`MAX_WAIT`]). While waiting, every attempt — the right secret
//! included — is refused without hashing anything. A success clears the
//! account's record (not the source's: one's own account must not launder
//! guesses at others'). Records are forgotten [`FORGET_AFTER`] after the
//! last failure, and the table holds at most [`MAX_ENTRIES`].
//!
//! Must never: hold its lock across an await, or keep a secret.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// Failures allowed before waits begin, per account.
const FREE_PER_ACCOUNT: u32 = 5;
/// Failures allowed before waits begin, per source address (more: several
/// people may share one address).
const FREE_PER_SOURCE: u32 = 20;
/// The longest wait.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// A record with no failure for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(900);
/// The most records kept; past it, forgotten and then oldest ones go first.
const MAX_ENTRIES: usize = 65_536;
/// Secret checks waiting for a hasher, at most.
const HASH_QUEUE: usize = 256;
/// How long an attempt waits for a place in that queue before it is told
/// the node is busy.
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Who {
    Account(String),
    Source(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    blocked_until: Instant,
}

/// Work for a hasher thread.
type Job = Box<dyn FnOnce() + Send>;

/// The login limiter of a node.
pub struct LoginLimiter {
    records: Mutex<HashMap<Who, Record>>,
    /// Jobs for the hasher threads. A fixed set of threads (not the
    /// blocking pool, whose threads come and go) keeps argon2's memory to
    /// one buffer per thread: the allocator keeps each thread's arena.
    hashers: mpsc::Sender<Job>,
}

/// The one-line refusal a caller sees while it must wait.
fn too_many(wait: Duration) -> Status {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Status::resource_exhausted(format!(
        "Too many login attempts, try again in {}s",
        secs.max(1)
    ))
}

impl LoginLimiter {
    /// A limiter with `hashers` threads for secret checks.
    pub fn new(hashers: usize) -> LoginLimiter {
        let (tx, rx) = mpsc::channel::<Job>(HASH_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..hashers.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("micro-hasher-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).blocking_recv();
                    match job {
                        Some(job) => job(),
                        None => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a hasher thread: {e}");
            }
        }
        LoginLimiter {
            records: Mutex::new(HashMap::new()),
            hashers: tx,
        }
    }

    /// As many hashers as cores, at least two: argon2 takes ~19 MiB each.
    pub fn for_this_machine() -> LoginLimiter {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        LoginLimiter::new(cores.max(2))
    }

    fn keys(account: &str, source: Option<IpAddr>) -> impl Iterator<Item = Who> {
        std::iter::once(Who::Account(account.to_string())).chain(source.map(Who::Source))
    }

    /// Refuses the attempt while the account or the source must wait.
    pub fn check(&self, account: &str, source: Option<IpAddr>) -> Result<(), Status> {
        self.check_at(account, source, Instant::now())
    }

    fn check_at(&self, account: &str, source: Option<IpAddr>, now: Instant) -> Result<(), Status> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let wait = Self::keys(account, source)
            .filter_map(|k| records.get(&k))
            .map(|r| r.blocked_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() {
            Ok(())
        } else {
            Err(too_many(wait))
        }
    }

    /// Records a failed attempt.
    pub fn failed(&self, account: &str, source: Option<IpAddr>) {
        self.failed_at(account, source, Instant::now())
    }

    fn failed_at(&self, account: &str, source: Option<IpAddr>, now: Instant) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= MAX_ENTRIES {
            records.retain(|_, r| now.duration_since(r.last_failure) < FORGET_AFTER);
            if records.len() >= MAX_ENTRIES {
                // Still full: drop the eighth with the oldest failures.
                let mut ages: Vec<Instant> = records.values().map(|r| r.last_failure).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 8];
                records.retain(|_, r| r.last_failure > cut);
            }
        }
        for key in Self::keys(account, source) {
            let free = match key {
                Who::Account(_) => FREE_PER_ACCOUNT,
                Who::Source(_) => FREE_PER_SOURCE,
            };
            let r = records.entry(key).or_insert(Record {
                failures: 0,
                last_failure: now,
                blocked_until: now,
            });
            if now.duration_since(r.last_failure) >= FORGET_AFTER {
                r.failures = 0;
            }
            r.failures = r.failures.saturating_add(1);
            r.last_failure = now;
            if r.failures >= free {
                let doublings = (r.failures - free).min(16);
                let wait = Duration::from_secs(1u64 << doublings).min(MAX_WAIT);
                r.blocked_until = now + wait;
            }
        }
    }

    /// Records a successful login: the account starts afresh.
    pub fn succeeded(&self, account: &str) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.remove(&Who::Account(account.to_string()));
    }

    /// Runs a secret hash or check on a hasher thread; refuses when the
    /// queue stays full.
    pub async fn hash<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
        });
        self.hashers
            .send_timeout(job, HASH_QUEUE_WAIT)
            .await
            .map_err(|_| Status::unavailable("the node is busy checking secrets; try again"))?;
        rx.await
            .map_err(|_| Status::internal("a secret check failed"))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.records.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));

    #[test]
    fn failures_past_the_free_ones_wait_longer_and_longer() {
        let l = LoginLimiter::new(1);
        let t = Instant::now();
        for _ in 0..FREE_PER_ACCOUNT - 1 {
            l.failed_at("admin", IP, t);
            assert!(l.check_at("admin", IP, t).is_ok());
        }
        l.failed_at("admin", IP, t);
        let e = l.check_at("admin", IP, t).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(e.message(), "Too many login attempts, try again in 1s");
        assert!(l.check_at("admin", IP, t + Duration::from_secs(1)).is_ok());
        l.failed_at("admin", IP, t + Duration::from_secs(1));
        assert_eq!(
            l.check_at("admin", IP, t + Duration::from_secs(1))
                .unwrap_err()
                .message(),
            "Too many login attempts, try again in 2s"
        );
        for _ in 0..100 {
            l.failed_at("admin", IP, t + Duration::from_secs(2));
        }
        let e = l
            .check_at("admin", None, t + Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(
            e.message(),
            format!(
                "Too many login attempts, try again in {}s",
                MAX_WAIT.as_secs()
            )
        );
        // another account from another address is not held up
        assert!(l.check_at("jane", None, t).is_ok());
    }

    #[test]
    fn a_source_guessing_many_accounts_is_held_up() {
        let l = LoginLimiter::new(1);
        let t = Instant::now();
        for i in 0..FREE_PER_SOURCE {
            l.failed_at(&format!("user{i}"), IP, t);
        }
        assert!(l.check_at("fresh-account", IP, t).is_err());
        assert!(l.check_at("fresh-account", None, t).is_ok());
    }

    #[test]
    fn success_clears_the_account_but_not_the_source() {
        let l = LoginLimiter::new(1);
        let t = Instant::now();
        for _ in 0..FREE_PER_SOURCE {
            l.failed_at("admin", IP, t);
        }
        l.succeeded("admin");
        assert!(l.check_at("admin", None, t).is_ok());
        assert!(l.check_at("admin", IP, t).is_err());
    }

    #[test]
    fn old_failures_are_forgotten_and_the_table_stays_bounded() {
        let l = LoginLimiter::new(1);
        let t = Instant::now();
        for _ in 0..FREE_PER_ACCOUNT {
            l.failed_at("admin", None, t);
        }
        let later = t + FORGET_AFTER + MAX_WAIT;
        assert!(l.check_at("admin", None, later).is_ok());
        l.failed_at("admin", None, later);
        assert!(
            l.check_at("admin", None, later).is_ok(),
            "the count started again"
        );
        for i in 0..MAX_ENTRIES + 10 {
            l.failed_at(&format!("a{i}"), None, t);
        }
        assert!(l.len() <= MAX_ENTRIES);
    }

    #[tokio::test]
    async fn hashing_is_bounded() {
        let l = Arc::new(LoginLimiter::new(2));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (l, running, most) = (l.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                l.hash(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = running.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, SeqCst);
                })
                .await
                .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
