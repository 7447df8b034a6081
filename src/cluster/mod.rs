//! The Redis bridge: one engine thread that connects this node to the others through Redis
//! (README, "Running several nodes").
//!
//! - A publish (from any host thread, through `redis::Outbox`) runs one script in Redis that
//!   numbers it in the user's stream, appends it, trims, sets the TTL and publishes it on the
//!   user's channel; every node holding a connection of the user is subscribed to that channel
//!   and queues the message to its connections. Its own too: one path, one order.
//! - `link.rs`: one connection to Redis. Per Redis primary (one, or each primary of a Redis
//!   Cluster: `topology.rs`) there is one command link (scripts, pipelined) and two subscriber
//!   links; a user's keys and channel live on the primary of its hash slot, and its users are
//!   spread over the two subscriber links by hash.
//! - `commands.rs`: the command link: publishes, broadcasts and reads of a user's stream, each
//!   reply matched to its request in order, and what waits while the link is down.
//! - `users.rs`: subscriptions, which follow local users, and the order rule: per local user the
//!   node remembers the last offset it delivered, drops what it already delivered, and fills a
//!   jump from the stream before going on, so a live connection never sees a silent gap.
//!   A `wspush.v1` connection gets its welcome (and replay) from here, once the user's channel
//!   is subscribed, so nothing falls between the replay and the live messages.

mod commands;
mod link;
mod state;
mod topology;
mod users;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

use crate::guard::guarded;
use crate::handle::{Command, ServerHandle, Shared, Wakes, BRIDGE_OF_THIS_THREAD};
use crate::keymap::KeyMap;
use crate::redis::resp::Reply;
use crate::redis::{Outbox, RedisUrl, Request};
use crate::slack;

use link::Link;
use state::{Greeter, HeldQueue, Pending, UserState, Waiting};

const WAKER: Token = Token(0);
/// Primaries a node talks to at most (a Redis Cluster with more is refused).
const MAX_SHARDS: usize = 64;
/// Command link `i` has token `FIRST_COMMAND + i`, subscriber link `j` `FIRST_SUBSCRIBER + j`.
const FIRST_COMMAND: usize = 1;
const FIRST_SUBSCRIBER: usize = FIRST_COMMAND + MAX_SHARDS;
/// Subscriber links per primary: enough that one slow socket does not hold up every user's
/// messages.
const SUBSCRIBERS_PER_SHARD: usize = 2;

/// What `Server::start` makes before spawning the bridge thread.
pub(crate) struct BridgeSetup {
    poll: Poll,
    outbox: Arc<Outbox>,
}

impl BridgeSetup {
    pub(crate) fn new() -> std::io::Result<BridgeSetup> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        Ok(BridgeSetup { poll, outbox: Arc::new(Outbox::new(waker)) })
    }

    pub(crate) fn outbox(&self) -> Arc<Outbox> {
        Arc::clone(&self.outbox)
    }

    /// The bridge thread's body. A panic here is a wspush bug: the server fails like it does
    /// for an I/O thread's.
    pub(crate) fn run(self, server: ServerHandle) {
        BRIDGE_OF_THIS_THREAD.with(|bridge| bridge.set(Arc::as_ptr(&server.shared)));
        let Some(mut bridge) = Bridge::new(self, Arc::clone(&server.shared)) else { return };
        if guarded(|| bridge.run()).is_none() {
            server.fail();
            bridge.fail_everything();
        }
    }
}

/// Arguments the scripts take from the configuration.
struct HistoryArgs {
    max_messages: Vec<u8>,
    ttl_secs: Vec<u8>,
}

/// The link that runs scripts on one primary, with the replies it owes, in order.
struct CommandLink {
    link: Link,
    /// Setup replies (AUTH, SELECT, CLUSTER SLOTS, SCRIPT LOAD) still owed.
    setup_left: usize,
    ready: bool,
    pending: VecDeque<Pending>,
}

impl CommandLink {
    fn new(shard: usize, now: Instant) -> CommandLink {
        CommandLink {
            link: Link::new(Token(FIRST_COMMAND + shard), now),
            setup_left: 0,
            ready: false,
            pending: VecDeque::new(),
        }
    }
}

struct Subscriber {
    link: Link,
    /// AUTH/SELECT replies still to come before subscribing.
    setup_left: usize,
    ready: bool,
    /// Channels to subscribe at the end of this round (batched into one command).
    to_subscribe: Vec<Vec<u8>>,
}

impl Subscriber {
    fn new(index: usize, now: Instant) -> Subscriber {
        Subscriber {
            link: Link::new(Token(FIRST_SUBSCRIBER + index), now),
            setup_left: 0,
            ready: false,
            to_subscribe: Vec::new(),
        }
    }
}

pub(crate) struct Bridge {
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    url: RedisUrl,
    timeout: Duration,
    history: Option<HistoryArgs>,
    poll: Poll,
    /// Per shard (a Redis primary): its address, its command link, and (in `subscribers`) its
    /// `SUBSCRIBERS_PER_SHARD` subscriber links. Shard 0 starts as the URL's address.
    addresses: Vec<String>,
    commands: Vec<CommandLink>,
    subscribers: Vec<Subscriber>,
    /// Redis Cluster: the shard serving each hash slot. None with one Redis, or before the
    /// first CLUSTER SLOTS answer (`topology_known`).
    slots: Option<Box<[u16]>>,
    topology_known: bool,
    /// A CLUSTER SLOTS asked after a MOVED is under way.
    refreshing: bool,
    /// Bumped when the links are remade for a new topology: replies read from a link before
    /// that are dropped.
    generation: u64,
    publish_sha: Vec<u8>,
    read_sha: Vec<u8>,
    /// Work waiting for its shard's command link to be ready (or for the topology).
    waiting: VecDeque<Waiting>,
    users: KeyMap<UserState>,
    /// Keys `users` by a keyed hash of the user ID (random per process).
    user_keys: std::hash::RandomState,
    /// Channel messages held while a user's stream is read to fill a jump.
    held: HashMap<Box<[u8]>, HeldQueue>,
    /// Connections waiting for their user's subscription.
    greeters: HashMap<Box<[u8]>, Vec<Greeter>>,
    /// Users whose last local connection closed, due to be unsubscribed (after a linger, so a
    /// reloading tab does not unsubscribe and resubscribe).
    leaving: VecDeque<(Instant, Box<[u8]>)>,
    /// Since when no command link has been ready (None: one is).
    down_since: Option<Instant>,
    wakes: Wakes,
    /// Epoch candidates (used when a publish or read creates a stream): a bijective mix of a
    /// counter from a random start, unique without a syscall per publish.
    epoch_counter: u64,
    next_housekeeping: Instant,
    stopping: bool,
}

/// A user's subscription is dropped this long after its last local connection closed: a tab
/// that reconnects to the same node within it (a reload behind a sticky balancer) costs no
/// unsubscribe and subscribe, and departures in a storm go out in batches.
const LINGER: Duration = Duration::from_secs(1);
/// How often the bridge gives memory back (as the I/O threads do).
const HOUSEKEEPING: Duration = Duration::from_secs(1);

impl Bridge {
    fn new(setup: BridgeSetup, shared: Arc<Shared>) -> Option<Bridge> {
        let url: RedisUrl = shared.config.redis_url.as_deref()?.parse().ok()?;
        let config = &shared.config;
        let history = (config.history_max_messages > 0).then(|| HistoryArgs {
            max_messages: config.history_max_messages.to_string().into_bytes(),
            ttl_secs: config.history_ttl.as_secs().max(1).to_string().into_bytes(),
        });
        let now = Instant::now();
        Some(Bridge {
            timeout: config.redis_timeout,
            outbox: setup.outbox,
            addresses: vec![url.address.clone()],
            url,
            history,
            poll: setup.poll,
            commands: vec![CommandLink::new(0, now)],
            subscribers: Vec::new(),
            slots: None,
            topology_known: false,
            refreshing: false,
            generation: 0,
            publish_sha: Vec::new(),
            read_sha: Vec::new(),
            waiting: VecDeque::new(),
            users: KeyMap::default(),
            user_keys: std::hash::RandomState::new(),
            held: HashMap::new(),
            greeters: HashMap::new(),
            leaving: VecDeque::new(),
            down_since: Some(now),
            wakes: Wakes::default(),
            epoch_counter: crate::history::random_u64(),
            next_housekeeping: now + HOUSEKEEPING,
            stopping: false,
            shared,
        })
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(64);
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        loop {
            let now = Instant::now();
            let wait = self.next_deadline(now).map(|at| at.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, wait) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    eprintln!("wspush: Redis bridge cannot poll: {e}");
                    self.fail_everything();
                    return;
                }
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token().0 {
                    0 => {} // the waker
                    t if t < FIRST_SUBSCRIBER => self.on_command_event(t - FIRST_COMMAND, &mut replies, now),
                    t => self.on_subscriber_event(t - FIRST_SUBSCRIBER, &mut replies, now),
                }
            }
            self.outbox.take(&mut requests);
            for request in requests.drain(..) {
                self.on_request(request, now);
            }
            if self.stopping {
                self.fail_everything();
                return;
            }
            self.tick(now);
            if now >= self.next_housekeeping {
                self.next_housekeeping = now + HOUSEKEEPING;
                self.release_slack();
                // Nor are a storm's arrivals (tens of bytes per user) and its subscriptions'
                // replies kept as idle room.
                slack::release_vec(&mut requests);
                slack::release_vec(&mut replies);
            }
            self.flush_links(now);
            std::mem::take(&mut self.wakes).wake(&self.shared.threads);
        }
    }

    fn on_request(&mut self, request: Request, now: Instant) {
        match request {
            Request::Publish { user, kind, payload, done, queued } => {
                self.publish(Waiting::Publish { user, kind, payload, done, queued }, now)
            }
            Request::Broadcast { kind, payload, queued } => {
                self.publish(Waiting::Broadcast { kind, payload, queued }, now)
            }
            Request::Greet { conn, user, since, read } => self.greet(conn, user, since, read, now),
            Request::Presence { user } => self.presence(user, now),
            Request::Stop => self.stopping = true,
        }
    }

    /// Timers: overdue links, reconnects, keepalive pings, what waited too long, lingering
    /// subscriptions.
    fn tick(&mut self, now: Instant) {
        for shard in 0..self.commands.len() {
            if let Err(dead) = self.commands[shard].link.check_overdue(now, self.timeout) {
                self.command_failed(shard, dead.0, now);
            }
            let registry = self.poll.registry();
            match self.commands[shard].link.maybe_connect(registry, &self.addresses[shard], now) {
                Ok(true) => self.command_connecting(shard, now),
                Ok(false) => {}
                Err(dead) => self.command_failed(shard, dead.0, now),
            }
            let command = &mut self.commands[shard];
            if command.ready && command.link.wants_ping(now, self.timeout) {
                command.link.send(&[b"PING"], now);
                command.pending.push_back(Pending::Ping);
            }
        }
        for i in 0..self.subscribers.len() {
            if let Err(dead) = self.subscribers[i].link.check_overdue(now, self.timeout) {
                self.subscriber_failed(i, dead.0, now);
            }
            let registry = self.poll.registry();
            let address = &self.addresses[i / SUBSCRIBERS_PER_SHARD];
            match self.subscribers[i].link.maybe_connect(registry, address, now) {
                Ok(true) => self.subscriber_connecting(i, now),
                Ok(false) => {}
                Err(dead) => self.subscriber_failed(i, dead.0, now),
            }
            let subscriber = &mut self.subscribers[i];
            if subscriber.ready && subscriber.link.wants_ping(now, self.timeout) {
                subscriber.link.send(&[b"PING"], now);
            }
        }
        self.expire_waiting(now);
        self.sweep_leaving(now);
        let connected = self.topology_known
            && self.commands.iter().all(|c| c.ready)
            && self.subscribers.iter().all(|s| s.ready && s.setup_left == 0 && s.link.is_up());
        self.outbox.stats.connected.store(u64::from(connected), std::sync::atomic::Ordering::Relaxed);
        self.outbox.stats.subscribed_users.store(self.users.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let down_too_long = self.down_since.is_some_and(|since| now.duration_since(since) >= self.timeout);
        if down_too_long != self.outbox.is_down() {
            self.outbox.set_down(down_too_long);
        }
    }

    fn flush_links(&mut self, now: Instant) {
        self.flush_subscriptions(now);
        for shard in 0..self.commands.len() {
            if let Err(dead) = self.commands[shard].link.flush() {
                self.command_failed(shard, dead.0, now);
            }
        }
        for i in 0..self.subscribers.len() {
            if let Err(dead) = self.subscribers[i].link.flush() {
                self.subscriber_failed(i, dead.0, now);
            }
        }
    }

    /// Gives back what a storm left: room in the tables, and the links' buffers once drained
    /// (an idle node holds none, like an idle connection).
    fn release_slack(&mut self) {
        self.users.release_slack();
        slack::release_map(&mut self.held);
        slack::release_map(&mut self.greeters);
        slack::release_deque(&mut self.waiting);
        slack::release_deque(&mut self.leaving);
        for command in &mut self.commands {
            slack::release_deque(&mut command.pending);
            command.link.release_buffers();
        }
        for subscriber in &mut self.subscribers {
            subscriber.link.release_buffers();
        }
    }

    /// The earliest time something must happen without an event.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let links = self.commands.iter().map(|c| &c.link).chain(self.subscribers.iter().map(|s| &s.link));
        let mut next = links.filter_map(|link| link.next_deadline(self.timeout)).min();
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if let Some(queued) = self.waiting.front().map(Waiting::queued) {
            consider(queued + self.timeout);
        }
        if let Some((due, _)) = self.leaving.front() {
            consider(*due);
        }
        consider(self.next_housekeeping);
        if !self.greeters.is_empty() || self.down_since.is_some() || !self.waiting.is_empty() {
            consider(now + self.timeout / 4);
        }
        next
    }

    /// Makes the links for a new topology (`slots`: None for one Redis at `addresses[0]`):
    /// everything owed on the old links is failed or queued again (as when a link is lost),
    /// every user is resubscribed where its slot now lives (the I/O threads name them again)
    /// and read again from what this node delivered.
    fn rebuild(&mut self, addresses: Vec<String>, slots: Option<Box<[u16]>>, now: Instant) {
        if self.topology_known {
            eprintln!("wspush: the Redis Cluster's slots moved; reconnecting to {}", addresses.join(", "));
        }
        // The links are remade on purpose: not worth a line each.
        let stopping = std::mem::replace(&mut self.stopping, true);
        for shard in 0..self.commands.len() {
            self.command_failed(shard, "the cluster's topology changed", now);
        }
        for i in 0..self.subscribers.len() {
            self.subscriber_failed(i, "the cluster's topology changed", now);
        }
        self.stopping = stopping;
        self.generation += 1;
        self.commands = (0..addresses.len()).map(|shard| CommandLink::new(shard, now)).collect();
        self.subscribers = (0..addresses.len() * SUBSCRIBERS_PER_SHARD).map(|i| Subscriber::new(i, now)).collect();
        self.addresses = addresses;
        self.slots = slots;
        self.topology_known = true;
        self.refreshing = false;
        for thread in self.shared.threads.iter() {
            thread.push(Command::Census);
        }
    }

    /// Sends AUTH and SELECT as the URL asks, on a link that just connected; how many replies
    /// they owe.
    fn send_login(url: &RedisUrl, link: &mut Link, now: Instant) -> usize {
        let mut sent = 0;
        if let Some(password) = &url.password {
            match &url.user {
                Some(user) => link.send(&[b"AUTH", user.as_bytes(), password.as_bytes()], now),
                None => link.send(&[b"AUTH", password.as_bytes()], now),
            }
            sent += 1;
        }
        if url.db != 0 {
            link.send(&[b"SELECT", url.db.to_string().as_bytes()], now);
            sent += 1;
        }
        sent
    }

    /// A fresh epoch, as Redis keeps it (splitmix64 of the next counter value).
    fn next_epoch(&mut self) -> [u8; 16] {
        self.epoch_counter = self.epoch_counter.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.epoch_counter;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        crate::redis::keys::epoch_text(z ^ (z >> 31))
    }

    /// Stopping (or failed): every publish still waiting is answered, every greeting refused.
    fn fail_everything(&mut self) {
        let now = Instant::now();
        for shard in 0..self.commands.len() {
            self.command_failed(shard, "stopping", now);
        }
        let waiting: Vec<Waiting> = self.waiting.drain(..).collect();
        for item in waiting {
            self.give_up(item);
        }
        let greeters: Vec<Greeter> = self.greeters.drain().flat_map(|(_, list)| list).collect();
        for greeter in greeters {
            self.refuse_greeting(greeter.conn);
        }
        std::mem::take(&mut self.wakes).wake(&self.shared.threads);
    }
}

/// An array reply's element `i` as bytes.
fn bytes_at(items: &[Reply], i: usize) -> Option<&[u8]> {
    items.get(i).and_then(Reply::as_bytes)
}
