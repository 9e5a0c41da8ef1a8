//! Request coalescing: while one request ("the leader") fetches a key from the upstream,
//! concurrent requests for the same key wait for its outcome instead of stampeding the
//! upstream. The leader's guard removes the flight when it finishes *or is dropped*
//! (client gone, upstream error), so waiters never hang and errors are never cached:
//! waiters of a failed flight simply try again themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::key::Key;
use super::store::Entry;

#[derive(Clone, Debug)]
pub enum Landing {
    /// The leader stored this entry.
    Stored(Arc<Entry>),
    /// The response could not be shared (not storable, too large, error): fetch yourself.
    NotStored,
}

type Slot = watch::Receiver<Option<Landing>>;

#[derive(Default)]
pub struct Flights {
    // Sharded so that misses on unrelated keys rarely meet on one lock; held only to
    // look up or insert, never across an await.
    shards: [Mutex<HashMap<Key, (u64, Slot)>>; 16],
    next_id: std::sync::atomic::AtomicU64,
}

pub enum Join<'a> {
    Leader(Leader<'a>),
    Waiter(Slot),
}

pub struct Leader<'a> {
    flights: &'a Flights,
    key: Key,
    id: u64,
    tx: watch::Sender<Option<Landing>>,
}

impl Flights {
    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, (u64, Slot)>> {
        use std::hash::{Hash, Hasher};
        // A fixed hasher: the shard must be the same on every call for one key.
        let mut fixed = std::hash::DefaultHasher::new();
        key.hash(&mut fixed);
        &self.shards[(fixed.finish() % 16) as usize]
    }

    pub fn join(&self, key: &Key) -> Join<'_> {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, rx)) = map.get(key) {
            return Join::Waiter(rx.clone());
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), (id, rx));
        Join::Leader(Leader {
            flights: self,
            key: key.clone(),
            id,
            tx,
        })
    }
}

impl Leader<'_> {
    /// Tells the waiters what became of the fetch (dropping without landing tells them
    /// nothing; they see the channel close and fetch themselves).
    pub fn land(self, landing: Landing) {
        let _ = self.tx.send(Some(landing));
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut map = self
            .flights
            .shard(&self.key)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

/// Waits for a leader. `None` when it went away without landing.
pub async fn wait(mut slot: Slot) -> Option<Landing> {
    let landed = match slot.wait_for(|v| v.is_some()).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    };
    landed.or_else(|| slot.borrow().clone())
}
