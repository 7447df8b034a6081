//! Per-thread timer wheel for handshake deadlines, heartbeats, idle and close timeouts.
//!
//! Each connection has one entry `(slot, generation)` in one bucket. Activity never touches the
//! wheel: the connection only records the tick of its last input. When a bucket comes due, each
//! entry's real deadline is recomputed from the connection's state and it either fires or moves
//! to the bucket of its new deadline. That is O(1) per connection per interval, and no tick ever
//! scans all connections.

use std::time::{Duration, Instant};

use crate::config::Config;

const BUCKETS: u32 = 1024;

/// A wheel entry: the connection's slab slot (24 bits) and timer epoch (6 bits), and its
/// generation. Entries whose connection is gone or whose epoch was replaced are skipped.
pub(crate) type Entry = (u32, u32);

pub(crate) fn entry(slot: usize, epoch: u8, generation: u32) -> Entry {
    ((slot as u32 & 0x00ff_ffff) | (u32::from(epoch) << 24), generation)
}

/// (slot, epoch, generation)
pub(crate) fn split((slot_epoch, generation): Entry) -> (usize, u8, u32) {
    ((slot_epoch & 0x00ff_ffff) as usize, (slot_epoch >> 24) as u8, generation)
}

/// Configured timeouts, converted to ticks of this wheel.
#[derive(Clone, Copy)]
pub(crate) struct Ticks {
    pub ping: u32,
    pub idle: u32,
    pub handshake: u32,
    pub close: u32,
    pub message: u32,
}

pub(crate) struct TimerWheel {
    start: Instant,
    tick: Duration,
    /// The next tick whose bucket has not been processed.
    next: u32,
    buckets: Box<[Vec<Entry>]>,
}

impl TimerWheel {
    /// A wheel whose tick is fine enough for the shortest configured timeout.
    pub(crate) fn new(config: &Config) -> (TimerWheel, Ticks) {
        let shortest = [
            config.ping_interval,
            config.idle_timeout,
            config.handshake_timeout,
            config.close_timeout,
            config.message_timeout,
        ]
        .into_iter()
        .min()
        .unwrap_or(Duration::from_secs(1));
        let tick = (shortest / 8).clamp(Duration::from_millis(1), Duration::from_millis(250));
        let to_ticks = |d: Duration| (d.as_nanos().div_ceil(tick.as_nanos())).min(u32::MAX as u128 / 2) as u32;
        let ticks = Ticks {
            ping: to_ticks(config.ping_interval),
            idle: to_ticks(config.idle_timeout),
            handshake: to_ticks(config.handshake_timeout),
            close: to_ticks(config.close_timeout),
            message: to_ticks(config.message_timeout),
        };
        let wheel =
            TimerWheel { start: Instant::now(), tick, next: 0, buckets: (0..BUCKETS).map(|_| Vec::new()).collect() };
        (wheel, ticks)
    }

    /// The current tick.
    pub(crate) fn now(&self) -> u32 {
        (self.start.elapsed().as_nanos() / self.tick.as_nanos()) as u32
    }

    /// Puts an entry in the bucket for `deadline` (a tick). Deadlines beyond the wheel's span go
    /// in its farthest bucket and are recomputed when it comes due.
    pub(crate) fn schedule(&mut self, entry: Entry, deadline: u32) {
        let at = deadline.clamp(self.next, self.next + BUCKETS - 1);
        self.buckets[(at % BUCKETS) as usize].push(entry);
    }

    /// Moves every entry due by tick `now` into `due`.
    pub(crate) fn expire(&mut self, now: u32, due: &mut Vec<Entry>) {
        let end = now.wrapping_add(1);
        let steps = end.saturating_sub(self.next).min(BUCKETS);
        for i in 0..steps {
            // A drained bucket gives its memory back (`take`): kept, every bucket would end up
            // holding the largest crowd it ever saw (a storm's cluster of deadlines moves from
            // bucket to bucket), and with steady traffic a bucket fills again only a tick
            // before it drains, so keeping its room saves a few reallocations per tick at most.
            due.append(&mut std::mem::take(&mut self.buckets[((self.next + i) % BUCKETS) as usize]));
        }
        self.next = self.next.max(end);
    }

    /// Drops every entry. For a thread with no connections left, whose entries are all stale:
    /// without this, the wheel would hold them (and their memory) until each came due.
    pub(crate) fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|bucket| *bucket = Vec::new());
    }

    /// How long the poller may sleep before the next bucket is due.
    pub(crate) fn timeout(&self) -> Duration {
        let due_at = self.tick * self.next;
        due_at.saturating_sub(self.start.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_due_at_their_tick_and_not_before() {
        let (mut wheel, _) = TimerWheel::new(&Config::default());
        wheel.schedule((1, 1), 5);
        wheel.schedule((2, 1), 3000); // beyond the span: parked in the farthest bucket
        let mut due = Vec::new();
        wheel.expire(4, &mut due);
        assert!(due.is_empty());
        wheel.expire(5, &mut due);
        assert_eq!(due, vec![(1, 1)]);
        due.clear();
        wheel.expire(BUCKETS + 10, &mut due);
        assert_eq!(due, vec![(2, 1)], "parked entry surfaces to be recomputed");
        due.clear();
        wheel.schedule((3, 1), BUCKETS + 20);
        wheel.clear();
        wheel.expire(3 * BUCKETS, &mut due);
        assert!(due.is_empty(), "cleared entries never come due");
    }
}
