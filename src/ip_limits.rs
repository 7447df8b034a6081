//! Per-client-address limits, so one host (or one bot) cannot take the whole server: open
//! connections per address, handshakes in progress per address (idle sockets that never send a
//! request must not take every handshake slot), and new connections per second per address (a
//! token bucket that allows bursts of one second's worth). IPv6 clients are counted per /64, since one host
//! usually owns a whole /64 and could otherwise rotate through 2^64 addresses.
//!
//! Shared by every I/O thread (SO_REUSEPORT spreads one address's connections over all of them),
//! touched only at accept and close. Only addresses with a connection, or a bucket still
//! refilling, have an entry; each I/O thread sweeps one shard a second to drop the rest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::Config;

/// An IPv4 address, or the /64 prefix of an IPv6 one. The two ranges meet only inside ::/8
/// (reserved, never a source address), so they do not collide in practice.
pub(crate) type IpKey = u64;

/// Marks a slot whose connection is not counted here.
pub(crate) const NOT_COUNTED: IpKey = u64::MAX;

pub(crate) fn key_of(addr: IpAddr) -> IpKey {
    match addr {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4)),
            None => (u128::from(v6) >> 64) as u64,
        },
    }
}

pub(crate) const SHARDS: usize = 64;

struct Entry {
    connections: u32,
    /// Of `connections`, those not yet upgraded (or refused).
    handshaking: u32,
    tokens: f64,
    refilled_ms: u64,
}

/// Why a new connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Connections,
    HandshakeRate,
    PendingHandshakes,
}

pub(crate) struct IpLimits {
    /// 0 = no limit.
    max_connections: u32,
    /// Handshakes in progress per address; 0 = no limit.
    max_pending_handshakes: u32,
    /// Tokens per second and bucket size; 0 = no limit.
    rate: f64,
    started: Instant,
    shards: Box<[Mutex<HashMap<IpKey, Entry>>]>,
}

impl IpLimits {
    /// `None` when the configuration sets no per-address limit.
    pub(crate) fn new(config: &Config) -> Option<IpLimits> {
        if config.max_connections_per_ip == 0
            && config.max_handshakes_per_ip_per_sec == 0
            && config.max_pending_handshakes_per_ip == 0
        {
            return None;
        }
        Some(IpLimits {
            max_connections: u32::try_from(config.max_connections_per_ip).unwrap_or(u32::MAX),
            max_pending_handshakes: u32::try_from(config.max_pending_handshakes_per_ip).unwrap_or(u32::MAX),
            rate: f64::from(config.max_handshakes_per_ip_per_sec),
            started: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    fn shard(&self, key: IpKey) -> &Mutex<HashMap<IpKey, Entry>> {
        // Fibonacci hashing: the high bits of the product mix every bit of the key.
        &self.shards[(key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS]
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Tops the bucket up for the time since its last refill; whether it is now full.
    fn refill(&self, entry: &mut Entry, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(entry.refilled_ms) as f64 / 1000.0;
        entry.tokens = (entry.tokens + elapsed * self.rate).min(self.rate);
        entry.refilled_ms = now_ms;
        entry.tokens >= self.rate
    }

    /// Counts a new connection from `key`, handshaking, or says why it must be refused.
    pub(crate) fn admit(&self, key: IpKey) -> Result<(), Refusal> {
        self.admit_at(key, self.now_ms())
    }

    fn admit_at(&self, key: IpKey, now_ms: u64) -> Result<(), Refusal> {
        let mut shard = self.shard(key).lock();
        let entry = shard.entry(key).or_insert(Entry {
            connections: 0,
            handshaking: 0,
            tokens: self.rate,
            refilled_ms: now_ms,
        });
        if self.max_connections > 0 && entry.connections >= self.max_connections {
            return Err(Refusal::Connections);
        }
        if self.max_pending_handshakes > 0 && entry.handshaking >= self.max_pending_handshakes {
            return Err(Refusal::PendingHandshakes);
        }
        if self.rate > 0.0 {
            self.refill(entry, now_ms);
            if entry.tokens < 1.0 {
                return Err(Refusal::HandshakeRate);
            }
            entry.tokens -= 1.0;
        }
        entry.connections += 1;
        entry.handshaking += 1;
        Ok(())
    }

    /// A connection counted by `admit` has left its handshake (upgraded, refused or closed).
    pub(crate) fn handshake_done(&self, key: IpKey) {
        if let Some(entry) = self.shard(key).lock().get_mut(&key) {
            entry.handshaking = entry.handshaking.saturating_sub(1);
        }
    }

    /// A connection counted by `admit` has closed.
    pub(crate) fn release(&self, key: IpKey) {
        self.release_at(key, self.now_ms())
    }

    fn release_at(&self, key: IpKey, now_ms: u64) {
        let mut shard = self.shard(key).lock();
        let Some(entry) = shard.get_mut(&key) else { return };
        entry.connections = entry.connections.saturating_sub(1);
        if entry.connections == 0 && (self.rate == 0.0 || self.refill(entry, now_ms)) {
            shard.remove(&key);
        }
    }

    /// Drops the entries of shard `index` (mod SHARDS) that hold nothing: no connection and a
    /// full bucket.
    pub(crate) fn sweep(&self, index: usize) {
        self.sweep_at(index, self.now_ms())
    }

    fn sweep_at(&self, index: usize, now_ms: u64) {
        let mut shard = self.shards[index % SHARDS].lock();
        shard.retain(|_, entry| entry.connections > 0 || (self.rate > 0.0 && !self.refill(entry, now_ms)));
        crate::slack::release_map(&mut shard);
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, per_sec: u32) -> IpLimits {
        limits_with(max_connections, per_sec, 0)
    }

    fn limits_with(max_connections: usize, per_sec: u32, pending: usize) -> IpLimits {
        let config = Config {
            max_pending_handshakes_per_ip: pending,
            max_connections_per_ip: max_connections,
            max_handshakes_per_ip_per_sec: per_sec,
            ..Config::default()
        };
        IpLimits::new(&config).unwrap()
    }

    #[test]
    fn off_unless_configured() {
        assert!(IpLimits::new(&Config::default()).is_none());
    }

    #[test]
    fn keys_group_ipv6_by_64_and_unmap_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key_of(a), key_of(b));
        assert_ne!(key_of(a), key_of(c));
        assert_eq!(key_of("::ffff:10.1.2.3".parse().unwrap()), key_of("10.1.2.3".parse().unwrap()));
        assert_ne!(key_of("10.1.2.3".parse().unwrap()), key_of("10.1.2.4".parse().unwrap()));
        assert_ne!(key_of("255.255.255.255".parse().unwrap()), NOT_COUNTED);
    }

    #[test]
    fn caps_connections_per_address_and_frees_on_release() {
        let l = limits(2, 0);
        let (a, b) = (key_of("10.0.0.1".parse().unwrap()), key_of("10.0.0.2".parse().unwrap()));
        assert_eq!(l.admit(a), Ok(()));
        assert_eq!(l.admit(a), Ok(()));
        assert_eq!(l.admit(a), Err(Refusal::Connections));
        assert_eq!(l.admit(b), Ok(()), "other addresses are not affected");
        l.release(a);
        assert_eq!(l.admit(a), Ok(()));
        for key in [a, a, b] {
            l.release(key);
        }
        assert_eq!(l.entries(), 0, "an address with no connection and no rate state is forgotten");
    }

    #[test]
    fn caps_handshakes_in_progress_per_address() {
        let l = limits_with(0, 0, 2);
        let (a, b) = (key_of("10.0.0.1".parse().unwrap()), key_of("10.0.0.2".parse().unwrap()));
        assert_eq!(l.admit(a), Ok(()));
        assert_eq!(l.admit(a), Ok(()));
        assert_eq!(l.admit(a), Err(Refusal::PendingHandshakes));
        assert_eq!(l.admit(b), Ok(()), "other addresses are not affected");
        l.handshake_done(a); // upgraded: still a connection, no longer a handshake
        assert_eq!(l.admit(a), Ok(()));
        for key in [a, a, a, b] {
            l.handshake_done(key);
            l.release(key);
        }
        assert_eq!(l.entries(), 0);
    }

    #[test]
    fn rate_allows_one_second_burst_then_refills() {
        let l = limits(0, 5);
        let a = key_of("10.0.0.1".parse().unwrap());
        for _ in 0..5 {
            assert_eq!(l.admit_at(a, 1000), Ok(()));
        }
        assert_eq!(l.admit_at(a, 1000), Err(Refusal::HandshakeRate));
        // 450 ms later, 2.25 tokens are back.
        assert_eq!(l.admit_at(a, 1450), Ok(()));
        assert_eq!(l.admit_at(a, 1450), Ok(()));
        assert_eq!(l.admit_at(a, 1450), Err(Refusal::HandshakeRate));
        for _ in 0..7 {
            l.release_at(a, 1450);
        }
        assert_eq!(l.entries(), 1, "the bucket is still refilling: the address is remembered");
        for shard in 0..SHARDS {
            l.sweep_at(shard, 1500);
        }
        assert_eq!(l.entries(), 1);
        for shard in 0..SHARDS {
            l.sweep_at(shard, 2500);
        }
        assert_eq!(l.entries(), 0, "a full bucket with no connection is swept");
    }
}
