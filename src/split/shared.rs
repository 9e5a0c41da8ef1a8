//! Split state shared by every replica through Redis (with `cluster:` set).
//!
//! One hash per route, `key_prefix + "split:{" + route + "}"`, holds what an operator,
//! the ramp or a rollback set: percent, pause, rollback (rule, reason, time, replica) and
//! a version that every write increments, with the replica that wrote it. A replica
//! applies its own change at once and writes it; a poll every `POLL` reads the hash and
//! applies a newer version, so every replica converges within a second. A replica that
//! starts reads the hash before it serves (`first_sync`), so a rolled-back split stays
//! rolled back across restarts; a hash that does not exist yet is created from the
//! replica's state (only if still absent). A rollback is written only when the hash is not
//! rolled back already, so two replicas tripping at once record one event.
//!
//! Each decision is one key (the hash tag keeps a route's keys in one Redis Cluster slot).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use crate::cluster::{Cluster, Op, Script};

use super::state::{RollbackInfo, RollbackReason, SplitState};

/// How often a replica reads the shared state.
pub const POLL: Duration = Duration::from_millis(400);

/// ARGV: mode (set | init | rollback), writer, percent, paused, rolled_back, rule,
/// reason, at. Returns the new version, or -1 when the write did not apply (init on an
/// existing hash; a rollback of a hash already rolled back).
const WRITE: &str = r#"
if ARGV[1] == 'init' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if ARGV[1] == 'rollback' and redis.call('HGET', KEYS[1], 'rolled_back') == '1' then return -1 end
-- An operator lifting a rollback starts the shared window afresh: the errors that caused
-- it must not trip it again.
if ARGV[5] == '0' and redis.call('HGET', KEYS[1], 'rolled_back') == '1' then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[1], 'percent', ARGV[3], 'paused', ARGV[4], 'rolled_back', ARGV[5],
  'rule', ARGV[6], 'reason', ARGV[7], 'at', ARGV[8], 'writer', ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'version', 1)
"#;

static WRITE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE));

/// The canary's outcomes from every replica: adds this replica's counts since its last
/// flush to the current second (Redis's clock), drops seconds older than the window, and
/// returns {total, errors} over the window. ARGV: window seconds, total, errors.
const WINDOW: &str = r#"
local now = tonumber(redis.call('TIME')[1])
local span = tonumber(ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('HINCRBY', KEYS[1], now .. ':t', ARGV[2])
  redis.call('HINCRBY', KEYS[1], now .. ':e', ARGV[3])
  redis.call('EXPIRE', KEYS[1], span + 5)
end
local all = redis.call('HGETALL', KEYS[1])
local total, errors = 0, 0
for i = 1, #all, 2 do
  local sec, kind = string.match(all[i], '^(%d+):(%a)$')
  sec = tonumber(sec)
  if sec and now - sec < span then
    if kind == 't' then total = total + tonumber(all[i + 1]) else errors = errors + tonumber(all[i + 1]) end
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return {total, errors}
"#;

static WINDOW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(WINDOW));

/// The error-rate part of a split's rollback rule, judged over all replicas.
#[derive(Clone, Copy, Debug)]
pub struct SharedRule {
    pub max_error_rate: f64,
    pub min_requests: u64,
    pub window: Duration,
}

/// A replica's view of the shared hash.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub percent: u32,
    pub paused: bool,
    pub rolled_back: bool,
    pub rollback: Option<RollbackInfo>,
    pub version: u64,
    pub writer: String,
}

impl Snapshot {
    fn from_hash(fields: &HashMap<String, String>) -> Option<Snapshot> {
        let version = fields.get("version")?.parse().ok()?;
        let flag = |name: &str| fields.get(name).is_some_and(|v| v == "1");
        let rolled_back = flag("rolled_back");
        let rule = match fields.get("rule").map(String::as_str) {
            Some("latency") => RollbackReason::Latency,
            _ => RollbackReason::ErrorRate,
        };
        Some(Snapshot {
            percent: fields.get("percent")?.parse().ok()?,
            paused: flag("paused"),
            rolled_back,
            rollback: rolled_back.then(|| RollbackInfo {
                reason: fields.get("reason").cloned().unwrap_or_default(),
                rule,
                at: fields.get("at").cloned().unwrap_or_default(),
                by: fields.get("writer").cloned(),
            }),
            version,
            writer: fields.get("writer").cloned().unwrap_or_default(),
        })
    }
}

/// What kind of write a change is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Set,
    Init,
    Rollback,
}

impl Write {
    fn mode(self) -> &'static str {
        match self {
            Write::Set => "set",
            Write::Init => "init",
            Write::Rollback => "rollback",
        }
    }
}

/// A state's link to the shared hash.
pub struct Link {
    pub cluster: Arc<Cluster>,
    pub key: String,
    /// The shared outcome window (same hash tag, same Redis Cluster slot).
    pub window_key: String,
    pub replica: Arc<str>,
}

impl Link {
    pub fn new(cluster: &Arc<Cluster>, route: &str) -> Link {
        Link {
            cluster: cluster.clone(),
            key: format!("{}split:{{{route}}}", cluster.key_prefix),
            window_key: format!("{}split:{{{route}}}:w", cluster.key_prefix),
            replica: cluster.replica.clone(),
        }
    }

    pub async fn read(&self) -> Result<Option<Snapshot>, crate::cluster::ClusterError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&self.key);
        let fields: HashMap<String, String> = self.cluster.query(Op::Split, &cmd).await?;
        Ok(Snapshot::from_hash(&fields))
    }

    /// Writes `snapshot`'s values; the new version, or None when it did not apply.
    pub async fn write(
        &self,
        kind: Write,
        snapshot: &Snapshot,
    ) -> Result<Option<u64>, crate::cluster::ClusterError> {
        let rollback = snapshot.rollback.as_ref();
        let mut call = WRITE_SCRIPT.call(2);
        call.arg(&self.key)
            .arg(&self.window_key)
            .arg(kind.mode())
            .arg(&*self.replica)
            .arg(snapshot.percent)
            .arg(u8::from(snapshot.paused))
            .arg(u8::from(snapshot.rolled_back))
            .arg(rollback.map_or("", |r| r.rule.label()))
            .arg(rollback.map_or("", |r| r.reason.as_str()))
            .arg(rollback.map_or("", |r| r.at.as_str()));
        let version: i64 = self.cluster.eval(Op::Split, &WRITE_SCRIPT, &call).await?;
        Ok(u64::try_from(version).ok())
    }
}

impl Link {
    /// Adds `total`/`errors` to the shared window; the window's figures over all replicas.
    pub async fn add_outcomes(
        &self,
        span: Duration,
        total: u64,
        errors: u64,
    ) -> Result<(u64, u64), crate::cluster::ClusterError> {
        let mut call = WINDOW_SCRIPT.call(1);
        call.arg(&self.window_key)
            .arg(span.as_secs().max(1))
            .arg(total)
            .arg(errors);
        self.cluster.eval(Op::Split, &WINDOW_SCRIPT, &call).await
    }
}

/// Polls the shared hash for `state` until the state is gone.
pub async fn follow(state: Weak<SplitState>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        state.sync().await;
    }
}

/// A state's shared half: the link (None without `cluster:`), the version last applied
/// or written, the follow task, and whether the first read has happened.
#[derive(Default)]
pub struct Slot {
    link: arc_swap::ArcSwapOption<Link>,
    applied: Arc<AtomicU64>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    synced: AtomicBool,
    first: tokio::sync::Notify,
    /// The replica that wrote the version last applied.
    writer: Arc<std::sync::Mutex<String>>,
    /// Canary outcomes seen here since the last flush to the shared window.
    pending_total: AtomicU64,
    pending_errors: AtomicU64,
    rule: std::sync::Mutex<Option<SharedRule>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

impl SplitState {
    /// Shares this state through `cluster` (or stops sharing without one): starts the
    /// follow task once. Called when a Runtime goes into service.
    pub fn share_through(self: &Arc<Self>, cluster: Option<&Arc<Cluster>>) {
        let same = match (self.shared.link.load().as_ref(), cluster) {
            (Some(link), Some(c)) => Arc::ptr_eq(&link.cluster, c),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.shared
            .link
            .store(cluster.map(|c| Arc::new(Link::new(c, &self.route))));
        let mut task = self.shared.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = task.take() {
            old.abort();
        }
        if cluster.is_some() {
            self.shared.synced.store(false, Ordering::Release);
            *task = Some(tokio::spawn(follow(Arc::downgrade(self))));
        }
    }

    /// The rule judged over all replicas' outcomes (set on every activation).
    pub fn share_rule(&self, rule: Option<SharedRule>) {
        if let Ok(mut r) = self.shared.rule.lock() {
            *r = rule;
        }
    }

    /// Counts a canary outcome for the shared window (a no-op without `cluster:`).
    pub(super) fn share_outcome(&self, error: bool) {
        if self.shared.link.load().is_none() {
            return;
        }
        self.shared.pending_total.fetch_add(1, Ordering::Relaxed);
        if error {
            self.shared.pending_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds what this replica saw to the shared window and rolls back when the figures
    /// of all replicas together meet the rule.
    async fn judge(&self, link: &Link) {
        let Some(rule) = self.shared.rule.lock().ok().and_then(|r| *r) else {
            return;
        };
        let total = self.shared.pending_total.swap(0, Ordering::AcqRel);
        let errors = self.shared.pending_errors.swap(0, Ordering::AcqRel);
        let Ok((all, failed)) = link.add_outcomes(rule.window, total, errors).await else {
            // Not counted anywhere else: put them back for the next flush.
            self.shared
                .pending_total
                .fetch_add(total, Ordering::Relaxed);
            self.shared
                .pending_errors
                .fetch_add(errors, Ordering::Relaxed);
            return;
        };
        if self.rolled_back() || all < rule.min_requests || all == 0 {
            return;
        }
        let rate = failed as f64 / all as f64;
        if rate >= rule.max_error_rate {
            self.roll_back(
                RollbackReason::ErrorRate,
                format!(
                    "canary error rate {:.1}% ({failed} of {all} requests over all replicas in the last {}s) reached max_error_rate {}%",
                    rate * 100.0,
                    rule.window.as_secs(),
                    (rule.max_error_rate * 100_000.0).round() / 1000.0,
                ),
            );
        }
    }

    /// Waits (at most `within`) for the first read of the shared state, so a replica
    /// that starts serves with it.
    pub async fn first_sync(&self, within: Duration) {
        if self.shared.link.load().is_none() {
            return;
        }
        let waiting = self.shared.first.notified();
        if self.shared.synced.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(within, waiting).await;
    }

    pub(super) fn replica(&self) -> Option<String> {
        self.shared
            .link
            .load()
            .as_ref()
            .map(|l| l.replica.to_string())
    }

    /// The shared version, its last writer and this replica, for `GET /splits`.
    pub fn shared_view(&self) -> Option<(u64, String, Arc<str>)> {
        let link = self.shared.link.load_full()?;
        let writer = self
            .shared
            .writer
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default();
        Some((
            self.shared.applied.load(Ordering::Acquire),
            writer,
            link.replica.clone(),
        ))
    }

    fn snapshot(&self) -> Snapshot {
        let book = self.book();
        Snapshot {
            percent: self.percent(),
            paused: self.paused(),
            rolled_back: self.rolled_back(),
            rollback: book.rollback.clone(),
            version: self.shared.applied.load(Ordering::Acquire),
            writer: String::new(),
        }
    }

    /// Writes a local change to the shared hash, in the background.
    pub(super) fn push(&self, kind: Write) {
        let Some(link) = self.shared.link.load_full() else {
            return;
        };
        let snapshot = self.snapshot();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let applied = self.shared.applied.clone();
        let writer = self.shared.writer.clone();
        runtime.spawn(async move {
            match link.write(kind, &snapshot).await {
                Ok(Some(version)) => {
                    if applied.fetch_max(version, Ordering::AcqRel) < version {
                        if let Ok(mut w) = writer.lock() {
                            *w = link.replica.to_string();
                        }
                    }
                }
                // Not applied (another replica's rollback came first): the next read
                // brings its state.
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "split change not shared: it holds on this replica only until the next change"),
            }
        });
    }

    /// One read of the shared hash: applies a newer version, or creates the hash from
    /// this replica's state when there is none.
    pub(super) async fn sync(&self) {
        let Some(link) = self.shared.link.load_full() else {
            return;
        };
        self.judge(&link).await;
        match link.read().await {
            Ok(Some(remote)) => {
                if remote.version > self.shared.applied.load(Ordering::Acquire) {
                    self.apply_remote(&remote);
                }
            }
            Ok(None) => {
                let snapshot = self.snapshot();
                if let Ok(Some(version)) = link.write(Write::Init, &snapshot).await {
                    self.shared.applied.fetch_max(version, Ordering::AcqRel);
                    if let Ok(mut w) = self.shared.writer.lock() {
                        *w = link.replica.to_string();
                    }
                }
            }
            Err(_) => {}
        }
        if !self.shared.synced.swap(true, Ordering::AcqRel) {
            self.shared.first.notify_waiters();
        }
    }

    fn apply_remote(&self, remote: &Snapshot) {
        let mut book = self.book();
        let was_rolled_back = self.rolled_back.swap(remote.rolled_back, Ordering::AcqRel);
        if was_rolled_back && !remote.rolled_back {
            self.fresh_window();
        }
        book.rollback = remote.rollback.clone();
        self.paused.store(remote.paused, Ordering::Release);
        let percent = if remote.rolled_back {
            0
        } else {
            remote.percent
        };
        self.percent.store(percent, Ordering::Release);
        self.shared.applied.store(remote.version, Ordering::Release);
        if let Ok(mut w) = self.shared.writer.lock() {
            w.clone_from(&remote.writer);
        }
        tracing::info!(route = %self.route, percent = super::state::percent_of(percent), version = remote.version, writer = %remote.writer, "split state from the shared store");
        self.log_change(&mut book, percent, &format!("shared: {}", remote.writer));
        drop(book);
        self.wake.notify_one();
    }
}
