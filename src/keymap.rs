//! The table behind every per-user index: keyed 64-bit hashes of user IDs → small values.
//!
//! The idle cost per user is what these tables cost per entry, so they are packed: one array of
//! `(key, value)` pairs, open addressing with Robin Hood probing, and growth by an eighth at
//! seven eighths full, so the room per entry stays between 1.14x and 1.29x its size (a std
//! `HashMap` doubles: 1.14x to 2.29x, plus a control byte per slot). The keys are already
//! uniformly random (keyed SipHash), so they are their own hash; a lookup probes ~4 adjacent
//! slots at the fullest. (At 15/16 full the room would be 1.07x-1.2x, for lookups 20% slower.)
//! Tables under 1 KiB double instead (see `SMALL_TABLE_BYTES`). Key 0 marks an empty slot: a key of 0 is stored as 1, which only merges two keys
//! that are both 2^-64 unlikely (the registry's check value tells such users apart anyway).

use crate::slack;

/// The registry's name for a user: a keyed hash of its ID.
pub(crate) type UserKey = u64;

const EMPTY: UserKey = 0;
/// Grow when an insert would pass 7/8 of the slots.
const MAX_LOAD: (usize, usize) = (7, 8);
const MIN_SLOTS: usize = 4;
/// Tables up to this size double instead: malloc caches freed small blocks per size (glibc keeps
/// up to 7 of each size up to 1 KiB per thread), so many sizes of small tables would each leave
/// blocks behind after a crowd leaves, while their room costs next to nothing.
const SMALL_TABLE_BYTES: usize = 1024;

pub(crate) struct KeyMap<V> {
    slots: Box<[(UserKey, V)]>,
    len: usize,
}

impl<V: Default> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap { slots: Box::default(), len: 0 }
    }
}

fn stored(key: UserKey) -> UserKey {
    key.max(1)
}

impl<V: Default> KeyMap<V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The slot a key would take in an empty table. The registry picks its shard by the key's
    /// high bits, so they are mixed with the rest before they pick a slot.
    fn home(&self, key: UserKey) -> usize {
        let mixed = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((u128::from(mixed) * self.slots.len() as u128) >> 64) as usize
    }

    /// How far the entry in slot `at` sits past its home.
    fn displacement(&self, at: usize) -> usize {
        let home = self.home(self.slots[at].0);
        (at + self.slots.len() - home) % self.slots.len()
    }

    fn next(&self, at: usize) -> usize {
        if at + 1 == self.slots.len() {
            0
        } else {
            at + 1
        }
    }

    fn find(&self, key: UserKey) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let key = stored(key);
        let mut at = self.home(key);
        let mut distance = 0;
        loop {
            let here = self.slots[at].0;
            if here == key {
                return Some(at);
            }
            // Robin Hood order: an entry nearer its home than we are to ours means ours is absent.
            if here == EMPTY || self.displacement(at) < distance {
                return None;
            }
            at = self.next(at);
            distance += 1;
        }
    }

    pub(crate) fn get(&self, key: UserKey) -> Option<&V> {
        self.find(key).map(|at| &self.slots[at].1)
    }

    pub(crate) fn get_mut(&mut self, key: UserKey) -> Option<&mut V> {
        self.find(key).map(|at| &mut self.slots[at].1)
    }

    pub(crate) fn contains_key(&self, key: UserKey) -> bool {
        self.find(key).is_some()
    }

    /// Stores `value` under `key`, returning the value it replaces.
    pub(crate) fn insert(&mut self, key: UserKey, value: V) -> Option<V> {
        if let Some(at) = self.find(key) {
            return Some(std::mem::replace(&mut self.slots[at].1, value));
        }
        self.reserve_one();
        self.place(stored(key), value);
        None
    }

    /// The value under `key`, inserting the default first if there is none.
    pub(crate) fn get_or_insert_default(&mut self, key: UserKey) -> &mut V {
        let at = match self.find(key) {
            Some(at) => at,
            None => {
                self.reserve_one();
                self.place(stored(key), V::default())
            }
        };
        &mut self.slots[at].1
    }

    /// Places a key known to be absent, with room guaranteed; returns where it landed.
    fn place(&mut self, key: UserKey, value: V) -> usize {
        let mut carried = (key, value);
        let mut at = self.home(key);
        let mut distance = 0;
        let mut landed = None;
        loop {
            if self.slots[at].0 == EMPTY {
                self.slots[at] = carried;
                self.len += 1;
                return landed.unwrap_or(at);
            }
            let theirs = self.displacement(at);
            if theirs < distance {
                // Take the slot from an entry nearer its home; carry that one on.
                std::mem::swap(&mut self.slots[at], &mut carried);
                landed.get_or_insert(at);
                distance = theirs;
            }
            at = self.next(at);
            distance += 1;
        }
    }

    pub(crate) fn remove(&mut self, key: UserKey) -> Option<V> {
        let mut at = self.find(key)?;
        let (_, value) = std::mem::take(&mut self.slots[at]);
        self.len -= 1;
        // Shift the entries after it back one slot, up to one at home or a hole: no tombstones.
        loop {
            let following = self.next(at);
            if self.slots[following].0 == EMPTY || self.displacement(following) == 0 {
                break;
            }
            self.slots.swap(at, following);
            at = following;
        }
        Some(value)
    }

    fn reserve_one(&mut self) {
        if (self.len + 1) * MAX_LOAD.1 > self.slots.len() * MAX_LOAD.0 {
            let slots = self.slots.len();
            self.resize(Self::rounded((slots + slots / 8).max((self.len + 1) * MAX_LOAD.1 / MAX_LOAD.0 + 1)));
        }
    }

    /// `slots`, or for a small table the power of two at or above it (see `SMALL_TABLE_BYTES`).
    fn rounded(slots: usize) -> usize {
        let slots = slots.max(MIN_SLOTS);
        if slots * std::mem::size_of::<(UserKey, V)>() <= SMALL_TABLE_BYTES {
            slots.next_power_of_two()
        } else {
            slots
        }
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, (0..slots).map(|_| (EMPTY, V::default())).collect());
        self.len = 0;
        for (key, value) in old.into_vec() {
            if key != EMPTY {
                self.place(key, value);
            }
        }
    }

    /// Gives room back after a peak (the policy in [`slack`]).
    pub(crate) fn release_slack(&mut self) {
        if slack::worth_shrinking(self.len, self.slots.len()) {
            let keep = if self.len == 0 { 0 } else { Self::rounded(self.len * 2) };
            self.resize(keep);
        }
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.slots.iter().filter(|(key, _)| *key != EMPTY).map(|(_, value)| value)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.slots.iter_mut().filter(|(key, _)| *key != EMPTY).map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        Upsert(u64),
        Release,
    }

    /// Keys from a small pool (many repeats, removals that hit) with high bits shared the way
    /// a registry shard's are, plus 0 and 1.
    fn key() -> impl Strategy<Value = u64> {
        prop_oneof![(0u64..300).prop_map(|k| (k << 40) | (0x2b << 58)), Just(0u64), Just(1u64), any::<u64>()]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (key(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            4 => key().prop_map(Op::Remove),
            2 => key().prop_map(Op::Upsert),
            1 => Just(Op::Release),
        ]
    }

    proptest! {
        /// Whatever the interleaving, the map answers like std's HashMap, and never fills past
        /// its load bound.
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec(op(), 1..600)) {
            let mut map = KeyMap::<u32>::default();
            let mut model = HashMap::<u64, u32>::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(map.insert(k, v), model.insert(stored(k), v)),
                    Op::Remove(k) => prop_assert_eq!(map.remove(k), model.remove(&stored(k))),
                    Op::Upsert(k) => {
                        *map.get_or_insert_default(k) += 1;
                        *model.entry(stored(k)).or_default() += 1;
                    }
                    Op::Release => map.release_slack(),
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert!(map.slots.len() * MAX_LOAD.0 >= map.len() * MAX_LOAD.1);
            }
            for (&k, v) in &model {
                prop_assert_eq!(map.get(k), Some(v));
            }
            let mut values: Vec<u32> = map.values().copied().collect();
            let mut expected: Vec<u32> = model.values().copied().collect();
            values.sort_unstable();
            expected.sort_unstable();
            prop_assert_eq!(values, expected);
        }
    }

    #[test]
    fn room_per_entry_stays_within_bounds_as_it_grows_and_shrinks() {
        let mut map = KeyMap::<u64>::default();
        let keys: Vec<u64> = (1..=20_000u64).map(|i| i.wrapping_mul(0xd6e8_feb8_6659_fd93) | 1).collect();
        for (i, &key) in keys.iter().enumerate() {
            map.insert(key, key);
            if i >= 64 {
                let room = map.slots.len() as f64 / map.len() as f64;
                assert!((1.14..=1.30).contains(&room), "{room} slots per entry at {}", map.len());
            }
        }
        assert!(keys.iter().all(|&key| map.get(key) == Some(&key)));
        for &key in &keys[100..] {
            assert_eq!(map.remove(key), Some(key));
        }
        map.release_slack();
        assert!(map.slots.len() <= 200, "{} slots kept for 100 entries", map.slots.len());
        assert!(keys[..100].iter().all(|&key| map.get(key) == Some(&key)));
        assert!(keys[100..].iter().all(|&key| map.get(key).is_none()));
        for &key in &keys[..100] {
            map.remove(key);
        }
        map.release_slack();
        assert_eq!(map.slots.len(), 0, "an empty map gives everything back");
    }
}
