//! The user registry: user ID → its open connections, across all I/O threads.
//!
//! Sharded by a keyed hash of the user ID so publishers on different threads rarely meet on a lock.
//! A user's ID bytes are stored once (`UserId`, shared with each of its connections); a user with a
//! single connection costs one map entry of 32 bytes plus that allocation.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::handler::ConnId;

/// A user ID, shared between the registry and the user's connections.
pub(crate) type UserId = Arc<[u8]>;

const SHARDS: usize = 64;

/// One user's connections. Almost every user has one or a few, so one inline ID and a boxed slice
/// beyond that (reallocated on change: opening a tab is rare next to publishing to it).
enum ConnSet {
    One(ConnId),
    Many(Box<[ConnId]>),
}

impl ConnSet {
    fn as_slice(&self) -> &[ConnId] {
        match self {
            ConnSet::One(id) => std::slice::from_ref(id),
            ConnSet::Many(ids) => ids,
        }
    }
}

pub(crate) struct Registry {
    shards: Box<[Mutex<HashMap<UserId, ConnSet>>]>,
    shard_hasher: RandomState,
    users: AtomicUsize,
}

/// The user already holds `max_connections_per_user` connections.
pub(crate) struct UserFull;

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            shard_hasher: RandomState::new(),
            users: AtomicUsize::new(0),
        }
    }

    fn shard(&self, user: &[u8]) -> &Mutex<HashMap<UserId, ConnSet>> {
        &self.shards[self.shard_hasher.hash_one(user) as usize % SHARDS]
    }

    /// Registers `conn` under `user`, unless the user already has `limit` connections (0 = no
    /// limit). Returns the shared ID to keep in the connection.
    pub(crate) fn add(&self, user: &[u8], conn: ConnId, limit: usize) -> Result<UserId, UserFull> {
        let mut map = self.shard(user).lock();
        if let Some((key, set)) = map.get_key_value(user) {
            let ids = set.as_slice();
            if limit != 0 && ids.len() >= limit {
                return Err(UserFull);
            }
            let key = key.clone();
            let grown: Box<[ConnId]> = ids.iter().copied().chain(std::iter::once(conn)).collect();
            map.insert(key.clone(), ConnSet::Many(grown));
            return Ok(key);
        }
        let key: UserId = Arc::from(user);
        map.insert(key.clone(), ConnSet::One(conn));
        self.users.fetch_add(1, Ordering::Relaxed);
        Ok(key)
    }

    /// Unregisters `conn` from `user`.
    pub(crate) fn remove(&self, user: &[u8], conn: ConnId) {
        let mut map = self.shard(user).lock();
        let Some(set) = map.get_mut(user) else { return };
        let remaining: Vec<ConnId> = set.as_slice().iter().copied().filter(|&id| id != conn).collect();
        match remaining.as_slice() {
            [] => {
                map.remove(user);
                self.users.fetch_sub(1, Ordering::Relaxed);
                // Give memory back when a shard empties after a storm of disconnects.
                if map.capacity() > 64 && map.len() * 4 < map.capacity() {
                    map.shrink_to_fit();
                }
            }
            [one] => *set = ConnSet::One(*one),
            _ => *set = ConnSet::Many(remaining.into_boxed_slice()),
        }
    }

    /// Calls `f` for each connection of `user` while holding its shard lock (so messages from one
    /// publisher reach each connection in call order); returns how many there were.
    pub(crate) fn for_each_conn(&self, user: &[u8], mut f: impl FnMut(ConnId)) -> usize {
        let map = self.shard(user).lock();
        let Some(set) = map.get(user) else { return 0 };
        let ids = set.as_slice();
        ids.iter().for_each(|&id| f(id));
        ids.len()
    }

    pub(crate) fn user_count(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(registry: &Registry, user: &[u8]) -> Vec<ConnId> {
        let mut out = Vec::new();
        registry.for_each_conn(user, |id| out.push(id));
        out
    }

    #[test]
    fn tabs_share_one_user_id_and_leave_cleanly() {
        let registry = Registry::new();
        let first = registry.add(b"alice", 1, 0).ok().unwrap();
        let second = registry.add(b"alice", 2, 0).ok().unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        registry.add(b"bob", 3, 0).ok().unwrap();
        assert_eq!(conns(&registry, b"alice"), vec![1, 2]);
        assert_eq!(registry.user_count(), 2);
        registry.remove(b"alice", 1);
        assert_eq!(conns(&registry, b"alice"), vec![2]);
        registry.remove(b"alice", 2);
        assert_eq!(conns(&registry, b"alice"), Vec::<ConnId>::new());
        assert_eq!(registry.user_count(), 1);
    }

    #[test]
    fn per_user_limit_holds() {
        let registry = Registry::new();
        assert!(registry.add(b"u", 1, 2).is_ok());
        assert!(registry.add(b"u", 2, 2).is_ok());
        assert!(registry.add(b"u", 3, 2).is_err());
        registry.remove(b"u", 1);
        assert!(registry.add(b"u", 3, 2).is_ok());
    }
}
