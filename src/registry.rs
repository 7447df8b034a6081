//! The user registry: user ID → its open connections, across all I/O threads.
//!
//! Memory is the whole game here (one entry per idle user), so the registry stores no user bytes:
//! a user is keyed by a 64-bit keyed hash of its ID (SipHash-1-3, random key per server), and a
//! user with one or two connections costs one 16-byte entry per connection in a packed table
//! ([`KeyMap`]: 18-21 bytes with its spare room). The ID bytes live only in the connections
//! (inline when short). Two users whose keys collide (probability ~2^-64 per pair) are told apart
//! by a second, independent 64-bit keyed hash, the [`UserCheck`], that travels with every publish
//! and that the owning I/O thread compares before delivering: a message never reaches another
//! user's connection; only the counts returned for such a pair could be off. Shards keep
//! publishers on different threads off each other's lock.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::keymap::KeyMap;
use crate::keymap::UserKey;
use crate::types::ConnId;

const SHARDS: usize = 64;
/// User IDs up to this length are stored inside the connection without an allocation.
const INLINE_USER: usize = 22;

/// A user ID as a connection keeps it: inline when short, else on the heap.
pub(crate) enum UserId {
    Inline { len: u8, bytes: [u8; INLINE_USER] },
    Heap(Box<[u8]>),
}

impl UserId {
    /// Whether an ID of `len` bytes is kept without an allocation.
    pub(crate) fn is_inline(len: usize) -> bool {
        len <= INLINE_USER
    }

    pub(crate) fn new(user: &[u8]) -> UserId {
        if UserId::is_inline(user.len()) {
            let mut bytes = [0u8; INLINE_USER];
            bytes[..user.len()].copy_from_slice(user);
            UserId::Inline { len: user.len() as u8, bytes }
        } else {
            UserId::Heap(user.into())
        }
    }
}

impl std::ops::Deref for UserId {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            UserId::Inline { len, bytes } => &bytes[..usize::from(*len)],
            UserId::Heap(bytes) => bytes,
        }
    }
}

/// A second keyed hash of a user ID, never 0, that proves a connection belongs to the user a
/// message was published to (see the module docs).
pub(crate) type UserCheck = u64;

/// One shard of the registry. A user's first connection is in `first`, its second in `second`
/// and any more in `more`: users with one or two tabs (nearly all) cost one or two 16-byte
/// entries and no allocation of their own.
#[derive(Default)]
struct Shard {
    first: KeyMap<ConnId>,
    second: KeyMap<ConnId>,
    more: KeyMap<Vec<ConnId>>,
}

impl Shard {
    fn for_each(&self, key: UserKey, mut f: impl FnMut(ConnId)) -> usize {
        let Some(&first) = self.first.get(key) else { return 0 };
        f(first);
        let Some(&second) = self.second.get(key) else { return 1 };
        f(second);
        let more = self.more.get(key).map_or(&[][..], Vec::as_slice);
        more.iter().for_each(|&id| f(id));
        2 + more.len()
    }

    /// Stores `conns` (at least one) as the user's connections.
    fn store(&mut self, key: UserKey, conns: &[ConnId]) {
        match conns {
            [] => {}
            [first] => {
                self.first.insert(key, *first);
                self.second.remove(key);
                self.more.remove(key);
            }
            [first, second, more @ ..] => {
                self.first.insert(key, *first);
                self.second.insert(key, *second);
                if more.is_empty() {
                    self.more.remove(key);
                } else {
                    self.more.insert(key, more.to_vec());
                }
            }
        }
    }
}

pub(crate) struct Registry {
    shards: Box<[Mutex<Shard>]>,
    keys: (RandomState, RandomState),
    users: AtomicUsize,
}

/// The user already holds `max_connections_per_user` connections.
pub(crate) struct UserFull;

impl Registry {
    pub(crate) fn new() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            keys: (RandomState::new(), RandomState::new()),
            users: AtomicUsize::new(0),
        }
    }

    fn key(&self, user: &[u8]) -> UserKey {
        self.keys.0.hash_one(user)
    }

    /// The check value that must match for `user` (see [`UserCheck`]).
    pub(crate) fn check(&self, user: &[u8]) -> UserCheck {
        self.keys.1.hash_one(user).max(1)
    }

    fn shard(&self, key: UserKey) -> &Mutex<Shard> {
        // The low bits pick the bucket inside a shard's maps; use high bits for the shard.
        &self.shards[(key >> 58) as usize % SHARDS]
    }

    /// Registers `conn` under `user`, unless the user already has `limit` connections (0 = none).
    /// `Ok(true)` when it is the user's first.
    pub(crate) fn add(&self, user: &[u8], conn: ConnId, limit: usize) -> Result<bool, UserFull> {
        let key = self.key(user);
        let mut shard = self.shard(key).lock();
        let held = shard.for_each(key, |_| {});
        if limit != 0 && held >= limit {
            return Err(UserFull);
        }
        match held {
            0 => {
                shard.first.insert(key, conn);
                self.users.fetch_add(1, Ordering::Relaxed);
            }
            1 => {
                shard.second.insert(key, conn);
            }
            _ => shard.more.get_or_insert_default(key).push(conn),
        }
        Ok(held == 0)
    }

    /// Unregisters `conn` from `user`; true when the user has no connection left.
    pub(crate) fn remove(&self, user: &[u8], conn: ConnId) -> bool {
        let key = self.key(user);
        let mut shard = self.shard(key).lock();
        let shard = &mut *shard;
        if !shard.second.contains_key(key) {
            // The common case: a user's only connection leaves.
            if shard.first.get(key) == Some(&conn) {
                shard.first.remove(key);
                self.users.fetch_sub(1, Ordering::Relaxed);
                // Give memory back when a shard empties after a storm of disconnects.
                shard.first.release_slack();
                return true;
            }
            return false;
        }
        let mut conns = Vec::new();
        shard.for_each(key, |id| conns.push(id));
        conns.retain(|&id| id != conn);
        shard.store(key, &conns);
        shard.second.release_slack();
        shard.more.release_slack();
        false
    }

    /// Calls `f` for each connection of `user` with the user's check value, while holding its
    /// shard lock (so messages from one publisher reach each connection in call order); returns
    /// how many there were.
    pub(crate) fn for_each_conn(&self, user: &[u8], mut f: impl FnMut(ConnId, UserCheck)) -> usize {
        let key = self.key(user);
        let check = self.check(user);
        self.shard(key).lock().for_each(key, |id| f(id, check))
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
        registry.for_each_conn(user, |id, check| {
            assert_eq!(check, registry.check(user));
            out.push(id)
        });
        out
    }

    #[test]
    fn tabs_of_a_user_come_and_go() {
        let registry = Registry::new();
        registry.add(b"alice", 1, 0).ok().unwrap();
        registry.add(b"alice", 2, 0).ok().unwrap();
        registry.add(b"bob", 3, 0).ok().unwrap();
        assert_eq!(conns(&registry, b"alice"), vec![1, 2]);
        assert_eq!(conns(&registry, b"bob"), vec![3]);
        assert_eq!(registry.user_count(), 2);
        registry.remove(b"alice", 1);
        assert_eq!(conns(&registry, b"alice"), vec![2]);
        registry.add(b"alice", 4, 0).ok().unwrap();
        assert_eq!(conns(&registry, b"alice"), vec![2, 4]);
        registry.remove(b"alice", 4);
        registry.remove(b"alice", 2);
        assert_eq!(conns(&registry, b"alice"), Vec::<ConnId>::new());
        assert_eq!(registry.user_count(), 1);
        registry.remove(b"bob", 99); // not bob's: no effect
        assert_eq!(conns(&registry, b"bob"), vec![3]);
    }

    #[test]
    fn per_user_limit_holds() {
        let registry = Registry::new();
        assert!(registry.add(b"u", 1, 2).is_ok());
        assert!(registry.add(b"u", 2, 2).is_ok());
        assert!(registry.add(b"u", 3, 2).is_err());
        registry.remove(b"u", 1);
        assert!(registry.add(b"u", 3, 2).is_ok());
        assert!(registry.add(b"v", 5, 1).is_ok());
        assert!(registry.add(b"v", 6, 1).is_err());
    }

    #[test]
    fn user_ids_inline_and_long() {
        assert_eq!(&*UserId::new(b"short"), b"short");
        let long = vec![7u8; 255];
        assert_eq!(&*UserId::new(&long), &long[..]);
    }
}
