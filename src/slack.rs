//! Giving memory back after a peak. Tables grow to the largest crowd they have seen (a storm,
//! a busy hour); these shrink them once they use a quarter or less of their room, keeping
//! twice what they hold so a regrowth is cheap. The quarter threshold keeps a table that
//! hovers around one size from shrinking and growing on alternate calls.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Room a table in use may keep whatever it holds: too small to be worth a reallocation.
const KEEP_ALWAYS: usize = 16;

pub(crate) fn worth_shrinking(len: usize, capacity: usize) -> bool {
    // An empty table always goes: a few hundred tables of a few hundred bytes each, left
    // wherever the peak put them, would pin heap pages that could otherwise go back.
    (len == 0 && capacity > 0) || (capacity > KEEP_ALWAYS && len * 4 <= capacity)
}

pub(crate) fn release_vec<T>(vector: &mut Vec<T>) {
    if worth_shrinking(vector.len(), vector.capacity()) {
        vector.shrink_to(vector.len() * 2);
    }
}

pub(crate) fn release_deque<T>(deque: &mut std::collections::VecDeque<T>) {
    if worth_shrinking(deque.len(), deque.capacity()) {
        deque.shrink_to(deque.len() * 2);
    }
}

pub(crate) fn release_map<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if worth_shrinking(map.len(), map.capacity()) {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_shrink_only_when_mostly_empty_and_keep_room_to_regrow() {
        let mut vector: Vec<u64> = (0..10_000).collect();
        vector.truncate(3_000); // 30% used: kept as is
        release_vec(&mut vector);
        assert!(vector.capacity() >= 10_000);
        vector.truncate(100);
        release_vec(&mut vector);
        assert!((200..1_000).contains(&vector.capacity()), "capacity {}", vector.capacity());
        vector.clear();
        release_vec(&mut vector);
        assert_eq!(vector.capacity(), 0, "an empty table gives everything back");

        let mut map: HashMap<u64, u64> = (0..10_000).map(|k| (k, k)).collect();
        let peak = map.capacity();
        map.retain(|&k, _| k < 100);
        release_map(&mut map);
        assert!(map.capacity() < peak / 10, "capacity {} after peak {peak}", map.capacity());
        assert_eq!(map.len(), 100);
        assert!((0..100).all(|k| map[&k] == k), "entries survive the shrink");
        map.clear();
        release_map(&mut map);
        assert_eq!(map.capacity(), 0);
    }
}
