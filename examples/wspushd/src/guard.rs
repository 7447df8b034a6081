//! The admin API's defences against hostile clients, kept apart from the HTTP server that applies
//! them: which requests a browser page may have sent (none may run), which Host names are ours
//! (DNS rebinding), and which connection gets a slot when they run out (idle sockets must not lock
//! the backend out).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};

/// Why a request is refused: its status and a one-line reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

const BROWSER_ORIGIN: Refusal =
    Refusal { status: 403, reason: "requests with an Origin header (sent by browsers) are refused by the admin API" };
const CROSS_SITE: Refusal =
    Refusal { status: 403, reason: "cross-site requests (Sec-Fetch-Site) are refused by the admin API" };
const MISSING_HOST: Refusal = Refusal { status: 400, reason: "missing Host header" };
const DUPLICATE_HOST: Refusal = Refusal { status: 400, reason: "more than one Host header" };
const INVALID_HOST: Refusal = Refusal { status: 400, reason: "invalid Host header" };
const FOREIGN_HOST: Refusal = Refusal {
    status: 421,
    reason: "unknown Host: the admin API answers to IP addresses, localhost and --admin-allowed-host names",
};

/// Host names the admin API answers to besides IP addresses and `localhost`, lowercase and without
/// a trailing dot.
#[derive(Debug, Default, Clone)]
pub struct AllowedHosts {
    names: Vec<String>,
}

impl AllowedHosts {
    /// From names already checked with [`host_name`].
    pub fn new(names: Vec<String>) -> AllowedHosts {
        AllowedHosts { names }
    }

    fn allows(&self, host: &Host) -> bool {
        match host {
            // DNS rebinding needs a name the attacker's DNS answers for; a page whose URL holds an
            // address talks to that address, so an address in Host is never a rebound name.
            Host::Ip(_) => true,
            Host::Name(name) => name == "localhost" || self.names.iter().any(|allowed| allowed == name),
        }
    }
}

/// Decides from a request's headers whether it may run. Refused: anything a browser page could
/// have sent from another origin (an `Origin` header, which browsers add to cross-origin and to
/// every POST request, whatever its value since no page of ours calls the API; a `Sec-Fetch-Site`
/// other than `none` or `same-origin`), and a Host that is not ours (DNS rebinding), missing
/// (HTTP/1.1 requires it) or malformed. Header names are matched without regard to case.
pub fn check_request_source<'h>(
    http_1_1: bool,
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    allowed: &AllowedHosts,
) -> Result<(), Refusal> {
    let mut origin = false;
    let mut cross_site = false;
    let mut hosts: Vec<&[u8]> = Vec::new();
    for (name, value) in headers {
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case("origin") {
            origin = true;
        } else if name.eq_ignore_ascii_case("sec-fetch-site") {
            cross_site |= !(value.eq_ignore_ascii_case(b"none") || value.eq_ignore_ascii_case(b"same-origin"));
        } else if name.eq_ignore_ascii_case("host") {
            hosts.push(value);
        }
    }
    if origin {
        return Err(BROWSER_ORIGIN);
    }
    if cross_site {
        return Err(CROSS_SITE);
    }
    match hosts[..] {
        [] if http_1_1 => Err(MISSING_HOST),
        [] => Ok(()),
        [host] => match parse_host(host) {
            Some(host) if allowed.allows(&host) => Ok(()),
            Some(_) => Err(FOREIGN_HOST),
            None => Err(INVALID_HOST),
        },
        _ => Err(DUPLICATE_HOST),
    }
}

/// The host part of a Host header.
#[derive(Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

/// Parses `host[:port]` (RFC 9110 section 7.2); the port is not checked against ours (a tunnel or
/// a forwarded port may name another). `None` when malformed.
fn parse_host(value: &[u8]) -> Option<Host> {
    let value = std::str::from_utf8(value).ok()?;
    let (host, port) = if let Some(bracketed) = value.strip_prefix('[') {
        let (address, rest) = bracketed.split_once(']')?;
        let port = if rest.is_empty() { "" } else { rest.strip_prefix(':')? };
        (Host::Ip(IpAddr::V6(address.parse::<Ipv6Addr>().ok()?)), port)
    } else {
        let (host, port) = value.split_once(':').unwrap_or((value, ""));
        let host = match host.parse::<Ipv4Addr>() {
            Ok(address) => Host::Ip(IpAddr::V4(address)),
            Err(_) => Host::Name(host_name(host)?),
        };
        (host, port)
    };
    port.bytes().all(|b| b.is_ascii_digit()).then_some(host)
}

/// A DNS name as compared: lowercase, without the trailing dot of a fully qualified name. `None`
/// unless it is made of letters, digits, '-', '_' and dots. Also checks --admin-allowed-host.
pub fn host_name(text: &str) -> Option<String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.split('.').any(str::is_empty);
    valid.then(|| name.to_ascii_lowercase())
}

// ------------------------------------------------------------------------- connection slots

/// What a connection is doing, which decides whether it may be closed to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// No request of it has been accepted yet (no complete head past the source and token
    /// checks): a newcomer, or an attacker's idle or dribbling socket. Closed first, oldest first.
    Unproven,
    /// Between two requests of a keep-alive connection. Closed next, longest idle first: the
    /// client retries on a new connection, as it does after an idle timeout.
    Idle,
    /// Receiving or answering an accepted request. Never closed to make room.
    Busy,
}

/// Whether a new connection got a slot.
#[derive(Debug)]
pub enum Admission<C> {
    /// Its slot ID, and the connection the caller must now close to make room, if one was chosen.
    Admitted { id: u64, evicted: Option<C> },
    /// Every slot it could take (its address's or all) is busy.
    Refused,
}

/// The admin connections open at once: at most `max_total`, at most `max_per_peer` from one
/// address (IPv6: one /64). A newcomer beyond either limit takes the slot of a connection that is
/// not busy (unproven first, then idle; the oldest of its address when that address is full,
/// else the oldest of all), so that sockets holding slots without a request cannot keep a backend
/// out. `C` is what the caller needs to close a connection (its eviction signal).
pub struct ConnectionTable<C> {
    max_total: usize,
    max_per_peer: usize,
    state: Mutex<TableState<C>>,
}

struct TableState<C> {
    next_id: u64,
    /// Bumped on every activity change: orders connections by how long they have been so.
    clock: u64,
    slots: HashMap<u64, Slot<C>>,
    per_peer: HashMap<IpAddr, usize>,
}

struct Slot<C> {
    peer: IpAddr,
    activity: Activity,
    since: u64,
    handle: C,
}

impl<C> ConnectionTable<C> {
    pub fn new(max_total: usize, max_per_peer: usize) -> ConnectionTable<C> {
        ConnectionTable {
            max_total,
            max_per_peer,
            state: Mutex::new(TableState { next_id: 0, clock: 0, slots: HashMap::new(), per_peer: HashMap::new() }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TableState<C>> {
        // The table stays consistent even if a holder panicked: every update is a few map writes.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives a new connection from `peer` a slot (as `Unproven`), choosing a connection to evict
    /// when a limit is reached.
    pub fn admit(&self, peer: IpAddr, handle: C) -> Admission<C> {
        let peer = peer_key(peer);
        let mut state = self.lock();
        let evict_from = if state.per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            Some(Some(peer))
        } else if state.slots.len() >= self.max_total {
            Some(None)
        } else {
            None
        };
        let mut evicted = None;
        if let Some(only_peer) = evict_from {
            let victim = state
                .slots
                .iter()
                .filter(|(_, slot)| only_peer.is_none_or(|peer| slot.peer == peer) && slot.activity != Activity::Busy)
                .min_by_key(|(_, slot)| (slot.activity == Activity::Idle, slot.since))
                .map(|(id, _)| *id);
            let Some(victim) = victim else { return Admission::Refused };
            evicted = state.remove(victim);
        }
        let id = state.next_id;
        state.next_id += 1;
        state.clock += 1;
        let since = state.clock;
        state.slots.insert(id, Slot { peer, activity: Activity::Unproven, since, handle });
        *state.per_peer.entry(peer).or_insert(0) += 1;
        Admission::Admitted { id, evicted }
    }

    /// Records what connection `id` is doing (nothing when it was evicted meanwhile).
    pub fn set_activity(&self, id: u64, activity: Activity) {
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        if let Some(slot) = state.slots.get_mut(&id) {
            if slot.activity != activity {
                slot.activity = activity;
                slot.since = now;
            }
        }
    }

    /// Frees the slot of a connection that ended (nothing when it was evicted before).
    pub fn remove(&self, id: u64) {
        self.lock().remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().slots.len()
    }
}

impl<C> TableState<C> {
    fn remove(&mut self, id: u64) -> Option<C> {
        let slot = self.slots.remove(&id)?;
        if let Some(count) = self.per_peer.get_mut(&slot.peer) {
            *count -= 1;
            if *count == 0 {
                self.per_peer.remove(&slot.peer);
            }
        }
        Some(slot.handle)
    }
}

/// The address a per-peer limit counts: IPv4 as is, IPv6 by its /64 (one host usually has a
/// whole /64 to pick addresses from), IPv4-mapped IPv6 as the IPv4 address.
fn peer_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(headers: &[(&str, &str)]) -> Result<(), Refusal> {
        let allowed = AllowedHosts::new(vec!["push-admin.internal".into()]);
        check_request_source(true, headers.iter().map(|(name, value)| (*name, value.as_bytes())), &allowed)
    }

    #[test]
    fn requests_a_browser_page_could_send_are_refused() {
        let host = ("Host", "127.0.0.1:8081");
        for refused in [
            [host, ("Origin", "https://evil.example")],
            [host, ("origin", "null")],
            [host, ("Origin", "http://127.0.0.1:8081")],
            [host, ("Sec-Fetch-Site", "cross-site")],
            [host, ("sec-fetch-site", "same-site")],
            [host, ("Sec-Fetch-Site", "")],
        ] {
            assert_eq!(check(&refused).map_err(|r| r.status), Err(403), "{refused:?}");
        }
        assert_eq!(check(&[host]), Ok(()));
        assert_eq!(check(&[host, ("Sec-Fetch-Site", "none")]), Ok(()));
        assert_eq!(check(&[host, ("Sec-Fetch-Site", "Same-Origin")]), Ok(()));
        // One refused value among several is enough.
        assert!(check(&[host, ("Sec-Fetch-Site", "none"), ("Sec-Fetch-Site", "cross-site")]).is_err());
        // A browser request names a foreign host too; the browser check speaks first.
        assert_eq!(check(&[("Host", "evil.example"), ("Origin", "https://evil.example")]), Err(BROWSER_ORIGIN));
    }

    #[test]
    fn only_our_host_names_are_served() {
        for allowed in [
            "127.0.0.1:8081",
            "127.0.0.1",
            "10.0.0.7:8081",
            "[::1]:8081",
            "[::1]",
            "[2001:db8::1]:80",
            "localhost",
            "LOCALHOST:8081",
            "localhost.:8081",
            "localhost:",
            "push-admin.internal:9000",
            "Push-Admin.Internal",
        ] {
            assert_eq!(check(&[("Host", allowed)]), Ok(()), "{allowed}");
        }
        for foreign in
            ["evil.example", "rebind.evil.example:8081", "localhost.evil.example", "127.0.0.1.nip.io", "internal"]
        {
            assert_eq!(check(&[("Host", foreign)]), Err(FOREIGN_HOST), "{foreign}");
        }
        for malformed in
            ["", "a b", "me@localhost", "localhost:80a", "[::1", "[::1]x", "[evil.example]", "a..b", "é.example"]
        {
            assert_eq!(check(&[("Host", malformed)]), Err(INVALID_HOST), "{malformed:?}");
        }
        assert_eq!(check(&[]), Err(MISSING_HOST));
        assert_eq!(check(&[("Host", "localhost"), ("host", "localhost")]), Err(DUPLICATE_HOST));
        // HTTP/1.0 does not require Host, but one that is there is checked.
        assert_eq!(check_request_source(false, [], &AllowedHosts::default()), Ok(()));
        let foreign = [("Host", b"evil.example".as_slice())];
        assert_eq!(check_request_source(false, foreign, &AllowedHosts::default()), Err(FOREIGN_HOST));
    }

    #[test]
    fn allowed_host_flag_values_are_names() {
        assert_eq!(host_name("Push-Admin.Internal.").as_deref(), Some("push-admin.internal"));
        for bad in ["", ".", "a:80", "a b", "a/b", "a..b", "[::1]"] {
            assert_eq!(host_name(bad), None, "{bad:?}");
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn admitted(admission: Admission<&'static str>) -> (u64, Option<&'static str>) {
        match admission {
            Admission::Admitted { id, evicted } => (id, evicted),
            Admission::Refused => panic!("refused"),
        }
    }

    #[test]
    fn a_full_address_makes_room_from_its_own_unproven_connections_first() {
        let table = ConnectionTable::new(10, 3);
        let (backend, _) = admitted(table.admit(ip("10.0.0.1"), "backend"));
        table.set_activity(backend, Activity::Idle);
        admitted(table.admit(ip("10.0.0.1"), "idle-1"));
        admitted(table.admit(ip("10.0.0.1"), "idle-2"));
        admitted(table.admit(ip("10.0.0.2"), "other"));
        // The address is full: its oldest unproven connection goes, neither its idle keep-alive
        // one nor anything of another address.
        let (idle_3, evicted) = admitted(table.admit(ip("10.0.0.1"), "idle-3"));
        assert_eq!(evicted, Some("idle-1"));
        let (idle_4, evicted) = admitted(table.admit(ip("10.0.0.1"), "idle-4"));
        assert_eq!(evicted, Some("idle-2"));
        assert_eq!(table.len(), 4);
        // With nothing unproven left there, the idle one goes; busy ones never do.
        table.set_activity(idle_3, Activity::Busy);
        table.set_activity(idle_4, Activity::Busy);
        let (newest, evicted) = admitted(table.admit(ip("10.0.0.1"), "newest"));
        assert_eq!(evicted, Some("backend"));
        table.set_activity(newest, Activity::Busy);
        assert!(matches!(table.admit(ip("10.0.0.1"), "refused"), Admission::Refused));
        assert_eq!(admitted(table.admit(ip("10.0.0.2"), "other address")).1, None);
    }

    #[test]
    fn a_full_table_makes_room_from_unproven_then_longest_idle_and_never_busy() {
        let table = ConnectionTable::new(3, 3);
        let (a, _) = admitted(table.admit(ip("10.0.0.1"), "a"));
        let (b, _) = admitted(table.admit(ip("10.0.0.2"), "b"));
        let (c, _) = admitted(table.admit(ip("10.0.0.3"), "c"));
        table.set_activity(a, Activity::Idle);
        table.set_activity(b, Activity::Busy);
        table.set_activity(c, Activity::Idle);
        // Full, nothing unproven: the connection idle the longest (a) goes.
        let (d, evicted) = admitted(table.admit(ip("10.0.0.4"), "d"));
        assert_eq!(evicted, Some("a"));
        // d is unproven, so it goes before the idle c.
        let (e, evicted) = admitted(table.admit(ip("10.0.0.5"), "e"));
        assert_eq!(evicted, Some("d"));
        // The task of an evicted connection still reports and ends: no effect on the table.
        table.set_activity(d, Activity::Busy);
        table.remove(d);
        assert_eq!(table.len(), 3);
        table.set_activity(c, Activity::Busy);
        table.set_activity(e, Activity::Busy);
        assert!(matches!(table.admit(ip("10.0.0.6"), "f"), Admission::Refused));
        // A slot freed by a connection that ended is taken without evicting anything.
        table.remove(b);
        assert_eq!(admitted(table.admit(ip("10.0.0.6"), "f")).1, None);
    }

    #[test]
    fn a_full_address_with_every_connection_busy_is_refused_while_others_get_in() {
        let table = ConnectionTable::new(10, 2);
        for name in ["x", "y"] {
            let (id, _) = admitted(table.admit(ip("2001:db8::1"), name));
            table.set_activity(id, Activity::Busy);
        }
        // Another address of the same /64 is the same peer.
        assert!(matches!(table.admit(ip("2001:db8::ffff"), "z"), Admission::Refused));
        assert_eq!(admitted(table.admit(ip("2001:db8:0:1::1"), "other /64")).1, None);
        // IPv4-mapped IPv6 counts as the IPv4 address.
        admitted(table.admit(ip("10.0.0.9"), "v4"));
        admitted(table.admit(ip("::ffff:10.0.0.9"), "mapped"));
        assert_eq!(admitted(table.admit(ip("10.0.0.9"), "third")).1, Some("v4"));
    }
}
