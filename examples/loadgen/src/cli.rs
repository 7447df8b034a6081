//! The command line (clap) and the options derived from it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};

use clap::{ArgAction, Parser};

use crate::sys::mono_ns;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Connect,
    Idle,
    Publish,
    Broadcast,
    Echo,
    /// The soak's warm-up round (reported on its own line; not selectable).
    SoakWarmup,
    Soak,
    Storm,
    Resume,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Idle => "idle",
            Phase::Publish => "publish",
            Phase::Broadcast => "broadcast",
            Phase::Echo => "echo",
            Phase::SoakWarmup => "soak_warmup",
            Phase::Soak => "soak",
            Phase::Storm => "storm",
            Phase::Resume => "resume",
        }
    }
}

/// Largest connection count per worker: the per-process open-file limit is 20,000 and a worker
/// also needs a few descriptors of its own.
pub const MAX_PER_WORKER: usize = 19_000;
/// Ephemeral ports are 32768-60999 here: ~28k per source address; leave headroom.
const CONNS_PER_SOURCE: usize = 25_000;

/// The part of --help after the options: the phases in detail (help.txt).
const AFTER_HELP: &str = include_str!("help.txt");
/// loadgen: open many WebSocket connections to a wspushd-style server and measure it.
/// WebSocket clients connect to ws://HOST:PORT/PATH?user=U; an admin HTTP API on another port
/// takes POST /publish?user=U and POST /broadcast (body = payload) and answers 200 {"delivered":N}.
/// The client connections live in worker processes (this executable again), at most 19,000
/// sockets each because of the 20,000 open-file limit.
#[derive(Parser, Debug)]
// args_override_self: a flag given twice takes the last value, as the hand-written parser did.
#[command(name = "loadgen", version, after_help = AFTER_HELP, args_override_self = true, max_term_width = 100)]
pub struct Args {
    /// WebSocket endpoint, ws://HOST:PORT/PATH. Each client connects to URL?user=uI
    /// (I = connection / tabs). Several servers ("nodes" sharing users, e.g. wspushd --redis):
    /// repeat the flag or separate URLs with commas; connection C goes to the (C mod n)-th URL,
    /// so the tabs of one user land on different nodes (up to n of them).
    #[arg(long, value_name = "URL", default_value = "ws://127.0.0.1:8080/ws", action = ArgAction::Append,
          value_delimiter = ',', help_heading = "TARGET")]
    url: Vec<String>,
    /// Admin HTTP API (POST /publish?user=U, POST /broadcast, each answering
    /// 200 {"delivered":N}; keep-alive). Repeatable or comma-separated like --url, one per node
    /// in the same order; publishing lane L sends its k-th publish through the ((L + k) mod n)-th,
    /// so the publishes, and each user's, spread over the nodes.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8081", action = ArgAction::Append,
          value_delimiter = ',', help_heading = "TARGET")]
    admin: Vec<String>,
    /// Server process, for memory per connection (idle phase, from /proc/PID/status RssAnon) and
    /// CPU per message (echo and publish phases). Measure memory on a freshly started server:
    /// memory its allocator kept from earlier connections is reused and hides the cost.
    /// Several nodes: repeat (or comma-separate) in --url order; figures are summed and given
    /// per node.
    #[arg(long, visible_alias = "pid", value_name = "PID", action = ArgAction::Append, value_delimiter = ',',
          help_heading = "TARGET")]
    server_pid: Vec<u32>,
    /// The servers share users through a broker (wspushd --redis): an admin publish answers
    /// {"delivered":N} with N = the nodes holding a connection of the user, not connections, so
    /// N is checked against the distinct nodes holding the user's tabs. On by default with more
    /// than one --admin.
    #[arg(long, help_heading = "TARGET")]
    cluster: bool,
    /// Redis process (wspushd --redis): its CPU seconds and RssAnon are reported over the
    /// publish, soak and idle phases like the server's.
    #[arg(long, value_name = "PID", help_heading = "TARGET")]
    redis_pid: Option<u32>,
    /// Redis address: INFO memory used_memory is sampled before connecting, after the idle
    /// phase and after publishing (Redis memory per online user and per stored message).
    #[arg(long, value_name = "HOST:PORT", help_heading = "TARGET")]
    redis_addr: Option<String>,

    /// Connections to open [default: 1000; 15000 when resume is the only phase].
    #[arg(short = 'n', long, visible_alias = "clients", value_name = "N", value_parser = count, help_heading = "CONNECTIONS")]
    conns: Option<usize>,
    /// Connections per user (users u0..u{N/K-1}, K tabs each).
    #[arg(long, value_name = "K", default_value = "1", value_parser = count, help_heading = "CONNECTIONS")]
    tabs: usize,
    /// Worker processes [default: enough for --max-per-worker].
    #[arg(long, value_name = "W", value_parser = count, help_heading = "CONNECTIONS")]
    workers: Option<usize>,
    /// Connections per worker process, at most 19000.
    #[arg(long, value_name = "M", default_value = "19000", value_parser = count, help_heading = "CONNECTIONS")]
    max_per_worker: usize,
    /// Handshakes started per second, all workers together; 0 = flat out.
    #[arg(long, value_name = "R[/s]", default_value = "0", value_parser = rate, help_heading = "CONNECTIONS")]
    connect_rate: f64,
    /// Handshakes in progress per worker (bounds a flat-out start).
    #[arg(long, value_name = "F", default_value = "1000", value_parser = count, help_heading = "CONNECTIONS")]
    max_inflight: usize,
    /// Seconds allowed for TCP connect plus upgrade response.
    #[arg(long, value_name = "S", default_value = "10", help_heading = "CONNECTIONS")]
    connect_timeout: f64,
    /// Bind client sockets to S source addresses, round-robin, from --source-base (loopback
    /// targets only; ~28k ports per source) [default: N/25000 rounded up].
    #[arg(long, value_name = "S", value_parser = count, help_heading = "CONNECTIONS")]
    source_ips: Option<usize>,
    /// First source address.
    #[arg(long, value_name = "IP", default_value = "127.0.0.2", help_heading = "CONNECTIONS")]
    source_base: Ipv4Addr,
    /// Let the kernel pick the source address.
    #[arg(long, help_heading = "CONNECTIONS")]
    no_source_bind: bool,
    /// Offer the wspush.v1 subprotocol (JSON frames with stream offsets; the server must select
    /// it); implied by the resume phase.
    #[arg(long, help_heading = "CONNECTIONS")]
    v1: bool,

    /// Comma-separated phases, run in this order: connect, idle, publish, broadcast, echo,
    /// resume, soak, storm (see THE PHASES below). Any phase after connect implies connect.
    #[arg(long, value_name = "LIST", default_value = "connect,idle,publish,broadcast,echo",
          value_parser = phases, help_heading = "PHASES")]
    phases: PhaseList,
    /// Wait before sampling memory in the idle phase, seconds.
    #[arg(long, value_name = "S", default_value = "2", help_heading = "PHASES")]
    settle_secs: f64,
    /// Publishes per second.
    #[arg(long, value_name = "R[/s]", default_value = "1000", value_parser = rate, help_heading = "PHASES")]
    publish_rate: f64,
    /// Publish phase length in seconds.
    #[arg(long, value_name = "T", default_value = "10", help_heading = "PHASES")]
    publish_secs: f64,
    /// Publishing threads ("lanes"), each with one keep-alive admin connection (one per node
    /// with several --admin) and one request in flight; a user always goes through the same
    /// lane, so its publishes stay in order.
    #[arg(long, value_name = "C", default_value = "4", value_parser = count, help_heading = "PHASES")]
    admin_conns: usize,
    /// Pad publish and broadcast payloads to at least B bytes.
    #[arg(long, value_name = "B", default_value = "0", value_parser = count, help_heading = "PHASES")]
    payload_bytes: usize,
    /// Broadcasts in the broadcast phase.
    #[arg(long, value_name = "M", default_value = "10", value_parser = count, help_heading = "PHASES")]
    broadcasts: usize,
    /// Connections taking part in the echo phase.
    #[arg(long, value_name = "E", default_value = "100", value_parser = count, help_heading = "PHASES")]
    echo_conns: usize,
    /// Echo phase length in seconds.
    #[arg(long, value_name = "S", default_value = "10", help_heading = "PHASES")]
    echo_secs: f64,
    /// After sending stops, wait this many seconds without progress for missing messages before
    /// counting them lost.
    #[arg(long, value_name = "S", default_value = "5", help_heading = "PHASES")]
    drain_secs: f64,

    /// Resume phase: messages published to each user while its client is away.
    #[arg(long, value_name = "K", default_value = "10", value_parser = count, help_heading = "RESUME")]
    missed: usize,
    /// Resume phase: how clients go away: rst (SO_LINGER 0) or close (close frame, clean).
    #[arg(long = "drop", value_name = "MODE", default_value = "rst", value_parser = ["rst", "close"], help_heading = "RESUME")]
    drop_mode: String,

    /// Soak round length, seconds.
    #[arg(long, value_name = "T", default_value = "600", help_heading = "SOAK")]
    soak_secs: f64,
    /// Warm-up round length, seconds.
    #[arg(long, value_name = "T", default_value = "5", help_heading = "SOAK")]
    warmup_secs: f64,
    /// Share of the open connections killed per churn (0..=1).
    #[arg(long, value_name = "F", default_value = "0.1", help_heading = "SOAK")]
    churn_fraction: f64,
    /// Churn period in seconds; churns at P/2, 3P/2, 5P/2, ... within the round.
    #[arg(long, value_name = "P", default_value = "60", help_heading = "SOAK")]
    churn_secs: f64,
    /// Publishes started less than G ms after an incarnation read its 101 need not reach it
    /// (wspush adds a connection to its user registry before it writes the 101, so 0 is exact
    /// for it; a server that registers a user only after answering needs a few ms here).
    #[arg(long, value_name = "G", default_value = "0", help_heading = "SOAK")]
    soak_grace_ms: f64,
    /// Allowed RssAnon growth over the post-warm-up sample, percent.
    #[arg(long, value_name = "X", default_value = "1", help_heading = "SOAK")]
    rss_tolerance_pct: f64,

    /// Established connections receiving publishes.
    #[arg(long, value_name = "M", default_value = "1000", value_parser = count, help_heading = "STORM")]
    storm_receivers: usize,
    /// The server's --max-connections: open + handshaking in /stats must never exceed it
    /// (0 = not checked).
    #[arg(long, value_name = "C", default_value = "0", value_parser = count_u64, help_heading = "STORM")]
    storm_max_connections: u64,
    /// The server's handshake-in-progress limit over all I/O threads (max_handshakes_per_thread
    /// x threads): handshaking in /stats must never exceed it (0 = not checked).
    #[arg(long, value_name = "H", default_value = "0", value_parser = count_u64, help_heading = "STORM")]
    storm_max_handshakes: u64,
    /// /stats sampling period during the storm, milliseconds.
    #[arg(long, value_name = "I", default_value = "20", value_parser = count_u64, help_heading = "STORM")]
    stats_interval_ms: u64,

    /// One JSON object with every summary number on stdout (else a table).
    #[arg(long, help_heading = "OUTPUT")]
    json: bool,
    /// Random seed for user choice and masks [default: from the clock].
    #[arg(long, value_name = "N", value_parser = count_u64, help_heading = "OUTPUT")]
    seed: Option<u64>,

    #[command(flatten)]
    peer: crate::peer::PeerArgs,

    /// Run as a worker process (started by loadgen itself).
    #[arg(long, hide = true)]
    worker: bool,
    /// Worker: global index of its first connection.
    #[arg(long, hide = true, default_value = "0", value_parser = count)]
    worker_first: usize,
    /// Worker: how many connections it holds.
    #[arg(long, hide = true, default_value = "0", value_parser = count)]
    worker_count: usize,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// The servers' WebSocket endpoints (one per node); connection C uses targets[C % n].
    pub targets: Vec<Target>,
    /// The servers' admin APIs, one per node in --url order (fewer or more are allowed).
    pub admins: Vec<SocketAddr>,
    /// The first admin API (phases that talk to one node).
    pub admin: SocketAddr,
    /// The server processes (one per node); the first is `server_pid`.
    pub server_pids: Vec<u32>,
    pub server_pid: Option<u32>,
    /// delivered counts nodes (see --cluster).
    pub cluster: bool,
    pub redis_pid: Option<u32>,
    pub redis_addr: Option<SocketAddr>,
    pub conns: usize,
    pub tabs: usize,
    pub workers: usize,
    pub max_per_worker: usize,
    pub connect_rate: f64,
    pub max_inflight: usize,
    pub connect_timeout: f64,
    pub source_ips: usize,
    pub source_base: Ipv4Addr,
    pub bind_sources: bool,
    pub v1: bool,
    pub phases: Vec<Phase>,
    pub settle_secs: f64,
    pub publish_rate: f64,
    pub publish_secs: f64,
    pub admin_conns: usize,
    pub payload_bytes: usize,
    pub broadcasts: usize,
    pub echo_conns: usize,
    pub echo_secs: f64,
    pub drain_secs: f64,
    pub soak_secs: f64,
    pub warmup_secs: f64,
    pub churn_fraction: f64,
    pub churn_secs: f64,
    pub soak_grace_ms: f64,
    pub rss_tolerance_pct: f64,
    pub storm_receivers: usize,
    pub storm_max_connections: u64,
    pub storm_max_handshakes: u64,
    pub stats_interval_ms: u64,
    pub missed: u32,
    /// Resume phase: drop with an RST (else a clean close).
    pub drop_rst: bool,
    pub json: bool,
    pub seed: u64,
    /// The server's protocol (--peer).
    pub peer: crate::peer::PeerOptions,
    /// Run as a worker holding connections worker_first..worker_first+worker_count.
    pub worker: bool,
    pub worker_first: usize,
    pub worker_count: usize,
}

/// One WebSocket endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddrV4,
    pub host_header: String,
    pub path: String,
}

impl Options {
    /// The URLs, comma-separated (reports).
    pub fn urls(&self) -> String {
        self.targets.iter().map(|t| t.url.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// A whole number; `_` may group digits (19_000).
fn count(text: &str) -> Result<usize, String> {
    text.replace('_', "").parse().map_err(|_| format!("{text:?} is not a valid number"))
}

fn count_u64(text: &str) -> Result<u64, String> {
    text.replace('_', "").parse().map_err(|_| format!("{text:?} is not a valid number"))
}

/// A rate, optionally written with a "/s" suffix.
fn rate(text: &str) -> Result<f64, String> {
    text.trim_end_matches("/s").replace('_', "").parse().map_err(|_| format!("{text:?} is not a valid rate"))
}

fn parse_target(url: &str) -> Result<Target, String> {
    let (addr, host_header, path) = parse_url(url)?;
    Ok(Target { url: url.to_string(), addr, host_header, path })
}

fn parse_url(url: &str) -> Result<(SocketAddrV4, String, String), String> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| format!("--url must start with ws:// (got {url:?})"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].to_string()),
        None => (rest, "/".to_string()),
    };
    let with_port = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    let target = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority:?}: {e}"))?
        .find_map(|addr| match addr {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| format!("{authority:?} has no IPv4 address"))?;
    Ok((target, authority.to_string(), path))
}

fn parse_admin(text: &str) -> Result<SocketAddr, String> {
    let text = text.strip_prefix("http://").unwrap_or(text).trim_end_matches('/');
    text.to_socket_addrs()
        .map_err(|e| format!("bad --admin {text:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--admin {text:?} does not resolve"))
}

/// The phases to run, in order (one `--phases` value).
#[derive(Clone, Debug)]
pub struct PhaseList(Vec<Phase>);

fn phases(text: &str) -> Result<PhaseList, String> {
    phase_list(text).map(PhaseList)
}

fn phase_list(text: &str) -> Result<Vec<Phase>, String> {
    let mut phases = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let phase = match name {
            "connect" => Phase::Connect,
            "idle" => Phase::Idle,
            "publish" => Phase::Publish,
            "broadcast" => Phase::Broadcast,
            "echo" => Phase::Echo,
            "soak" => Phase::Soak,
            "storm" => Phase::Storm,
            "resume" => Phase::Resume,
            _ => {
                return Err(format!(
                    "unknown phase {name:?} (connect, idle, publish, broadcast, echo, resume, soak, storm)"
                ))
            }
        };
        if !phases.contains(&phase) {
            phases.push(phase);
        }
    }
    // Soak and storm open and close their own connections.
    if phases.iter().any(|p| matches!(p, Phase::Soak | Phase::Storm)) {
        if phases.len() > 1 {
            return Err("the soak and storm phases each run alone".into());
        }
        return Ok(phases);
    }
    // Every other phase needs the connections.
    if !phases.is_empty() && !phases.contains(&Phase::Connect) {
        phases.insert(0, Phase::Connect);
    }
    Ok(phases)
}

impl Options {
    /// Options from the process's arguments: exits (status 0) for --help and --version, and
    /// (status 2) on a flag clap rejects; Err for combinations it cannot judge.
    pub fn from_command_line() -> Result<Options, String> {
        Options::from_args(Args::parse())
    }

    pub fn from_args(args: Args) -> Result<Options, String> {
        let targets = args.url.iter().map(|url| parse_target(url)).collect::<Result<Vec<_>, _>>()?;
        let admins = args.admin.iter().map(|admin| parse_admin(admin)).collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() || admins.is_empty() {
            return Err("--url and --admin need at least one value".into());
        }
        let resume_only = args.phases.0.iter().all(|p| matches!(p, Phase::Connect | Phase::Resume))
            && args.phases.0.contains(&Phase::Resume);
        let redis_addr = args.redis_addr.as_deref().map(parse_admin).transpose()?;
        let mut options = Options {
            cluster: args.cluster || admins.len() > 1,
            admin: admins[0],
            admins,
            targets,
            server_pid: args.server_pid.first().copied(),
            server_pids: args.server_pid,
            redis_pid: args.redis_pid,
            redis_addr,
            conns: args.conns.unwrap_or(if resume_only { 15_000 } else { 1000 }),
            tabs: args.tabs,
            workers: args.workers.unwrap_or(0),
            max_per_worker: args.max_per_worker,
            connect_rate: args.connect_rate,
            max_inflight: args.max_inflight,
            connect_timeout: args.connect_timeout,
            source_ips: args.source_ips.unwrap_or(0),
            source_base: args.source_base,
            bind_sources: !args.no_source_bind,
            v1: args.v1 || args.phases.0.contains(&Phase::Resume),
            phases: args.phases.0,
            settle_secs: args.settle_secs,
            publish_rate: args.publish_rate,
            publish_secs: args.publish_secs,
            admin_conns: args.admin_conns,
            payload_bytes: args.payload_bytes,
            broadcasts: args.broadcasts,
            echo_conns: args.echo_conns,
            echo_secs: args.echo_secs,
            drain_secs: args.drain_secs,
            soak_secs: args.soak_secs,
            warmup_secs: args.warmup_secs,
            churn_fraction: args.churn_fraction,
            churn_secs: args.churn_secs,
            soak_grace_ms: args.soak_grace_ms,
            rss_tolerance_pct: args.rss_tolerance_pct,
            storm_receivers: args.storm_receivers,
            storm_max_connections: args.storm_max_connections,
            storm_max_handshakes: args.storm_max_handshakes,
            stats_interval_ms: args.stats_interval_ms,
            missed: u32::try_from(args.missed).map_err(|_| "--missed is too large".to_string())?,
            drop_rst: args.drop_mode == "rst",
            json: args.json,
            seed: args.seed.unwrap_or_else(|| mono_ns() ^ (std::process::id() as u64) << 32),
            peer: crate::peer::PeerOptions::from_args(args.peer)?,
            worker: args.worker,
            worker_first: args.worker_first,
            worker_count: args.worker_count,
        };
        options.validate()?;
        Ok(options)
    }

    fn validate(&mut self) -> Result<(), String> {
        let o = self;
        if o.conns == 0 || o.tabs == 0 {
            return Err("--conns and --tabs must be at least 1".into());
        }
        if o.max_per_worker == 0 || o.max_per_worker > MAX_PER_WORKER {
            return Err(format!("--max-per-worker must be 1..={MAX_PER_WORKER}"));
        }
        if !o.worker {
            o.peer.validate(&o.phases)?;
        }
        let storm = o.phases.contains(&Phase::Storm);
        let several = o.targets.len() > 1 || o.admins.len() > 1 || o.server_pids.len() > 1;
        if several && o.phases.iter().any(|p| matches!(p, Phase::Storm | Phase::Resume)) {
            return Err("the storm and resume phases talk to one server: give one --url/--admin/--server-pid".into());
        }
        if o.server_pids.len() > 1 && o.server_pids.len() != o.targets.len() {
            return Err("give one --server-pid per --url (same order), or one for a single server".into());
        }
        if storm && o.tabs != 1 {
            return Err("the storm phase uses one connection per user: leave --tabs at 1".into());
        }
        if storm && o.storm_receivers == 0 {
            return Err("--storm-receivers must be at least 1".into());
        }
        let needed_workers = o.conns.div_ceil(o.max_per_worker);
        if o.workers == 0 {
            o.workers = needed_workers;
        } else if o.workers < needed_workers {
            return Err(format!("{} connections need at least {needed_workers} workers", o.conns));
        }
        o.workers = o.workers.min(o.conns);
        if o.source_ips == 0 {
            // The soak connects everyone twice, and the clients' closes leave TIME_WAIT ports behind.
            // The resume phase connects everyone twice too.
            let sockets = match o.phases.first() {
                Some(Phase::Soak) => 2 * o.conns,
                _ if o.phases.contains(&Phase::Resume) => 2 * o.conns,
                Some(Phase::Storm) => o.conns + o.storm_receivers,
                _ => o.conns,
            };
            o.source_ips = sockets.div_ceil(CONNS_PER_SOURCE);
        }
        let finite_positive = |v: f64| v.is_finite() && v >= 0.0;
        for (name, value) in [
            ("--connect-rate", o.connect_rate),
            ("--connect-timeout", o.connect_timeout),
            ("--settle-secs", o.settle_secs),
            ("--publish-rate", o.publish_rate),
            ("--publish-secs", o.publish_secs),
            ("--echo-secs", o.echo_secs),
            ("--drain-secs", o.drain_secs),
            ("--soak-secs", o.soak_secs),
            ("--warmup-secs", o.warmup_secs),
            ("--churn-fraction", o.churn_fraction),
            ("--churn-secs", o.churn_secs),
            ("--soak-grace-ms", o.soak_grace_ms),
            ("--rss-tolerance-pct", o.rss_tolerance_pct),
        ] {
            if !finite_positive(value) {
                return Err(format!("{name} must be a non-negative number"));
            }
        }
        if o.connect_timeout == 0.0 {
            return Err("--connect-timeout must be > 0".into());
        }
        if o.churn_fraction > 1.0 || o.churn_secs == 0.0 {
            return Err("--churn-fraction must be 0..=1 and --churn-secs > 0".into());
        }
        if o.phases.contains(&Phase::Soak) && o.server_pid.is_none() && !o.worker {
            return Err("the soak phase needs --server-pid (it judges the server's memory and fds)".into());
        }
        if o.max_inflight == 0 || o.admin_conns == 0 {
            return Err("--max-inflight and --admin-conns must be at least 1".into());
        }
        // A source address outside loopback would not route to a loopback target, and a
        // non-loopback target needs the kernel's own source choice.
        if o.targets.iter().any(|t| !t.addr.ip().is_loopback()) {
            o.bind_sources = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Options, String> {
        let args = Args::try_parse_from(std::iter::once("loadgen").chain(args.split_whitespace()))
            .map_err(|e| e.to_string())?;
        Options::from_args(args)
    }

    #[test]
    fn defaults_match_the_help() {
        let o = parse("").unwrap();
        assert_eq!((o.conns, o.tabs, o.workers, o.max_per_worker, o.source_ips), (1000, 1, 1, 19_000, 1));
        assert_eq!(o.targets.len(), 1);
        assert_eq!(o.targets[0].addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((o.targets[0].host_header.as_str(), o.targets[0].path.as_str()), ("127.0.0.1:8080", "/ws"));
        assert_eq!(
            (o.admins.as_slice(), o.server_pids.len(), o.cluster),
            (["127.0.0.1:8081".parse().unwrap()].as_slice(), 0, false)
        );
        assert_eq!(o.admin, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(o.phases, [Phase::Connect, Phase::Idle, Phase::Publish, Phase::Broadcast, Phase::Echo]);
        assert_eq!((o.publish_rate, o.publish_secs, o.drain_secs, o.soak_secs), (1000.0, 10.0, 5.0, 600.0));
        assert_eq!((o.max_inflight, o.admin_conns, o.broadcasts, o.echo_conns), (1000, 4, 10, 100));
        assert!(o.bind_sources && !o.json && !o.worker);
    }

    #[test]
    fn values_parse_as_before() {
        let o =
            parse("-n 40_000 --connect-rate 500/s --publish-rate=2000/s --phases publish --no-source-bind").unwrap();
        assert_eq!((o.conns, o.workers, o.source_ips), (40_000, 3, 2));
        assert_eq!((o.connect_rate, o.publish_rate), (500.0, 2000.0));
        assert_eq!(o.phases, [Phase::Connect, Phase::Publish]);
        assert!(!o.bind_sources);
        assert!(parse("--phases soak").unwrap_err().contains("--server-pid"));
        assert!(parse("--phases soak,idle --server-pid 1").unwrap_err().contains("alone"));
        assert!(parse("--phases bogus").is_err());
        assert!(parse("--max-per-worker 20000").is_err());
        assert!(parse("--conns 0").is_err());
        let soak = parse("--phases soak --server-pid 1 --conns 15000").unwrap();
        assert_eq!(soak.source_ips, 2, "the soak connects everyone twice");
        let resume = parse("--phases resume").unwrap();
        assert_eq!((resume.conns, resume.missed, resume.drop_rst, resume.v1), (15_000, 10, true, true));
        assert_eq!((resume.phases.as_slice(), resume.source_ips), ([Phase::Connect, Phase::Resume].as_slice(), 2));
        let resume = parse("--phases publish,resume --clients 200 --missed 5 --drop close").unwrap();
        assert_eq!((resume.conns, resume.missed, resume.drop_rst), (200, 5, false));
        assert!(!parse("--phases publish").unwrap().v1 && parse("--v1").unwrap().v1);
        assert!(parse("--phases resume --drop fin").is_err());
    }

    #[test]
    fn several_nodes_by_repeating_or_by_commas() {
        let repeated = parse(
            "--url ws://127.0.0.1:1/ws --url ws://127.0.0.1:2/x --admin 127.0.0.1:3 --admin 127.0.0.1:4 \
             --server-pid 10 --pid 11 --redis-pid 12 --redis-addr 127.0.0.1:5",
        )
        .unwrap();
        let commas = parse(
            "--url ws://127.0.0.1:1/ws,ws://127.0.0.1:2/x --admin 127.0.0.1:3,127.0.0.1:4 --server-pid 10,11 \
             --redis-pid 12 --redis-addr 127.0.0.1:5",
        )
        .unwrap();
        for o in [&repeated, &commas] {
            assert_eq!(o.targets.iter().map(|t| t.addr.port()).collect::<Vec<_>>(), [1, 2]);
            assert_eq!(o.targets[1].path, "/x");
            assert_eq!(o.admins, ["127.0.0.1:3".parse().unwrap(), "127.0.0.1:4".parse().unwrap()]);
            assert_eq!((o.admin, o.server_pids.as_slice(), o.server_pid), (o.admins[0], [10, 11].as_slice(), Some(10)));
            assert_eq!((o.redis_pid, o.redis_addr), (Some(12), Some("127.0.0.1:5".parse().unwrap())));
            assert!(o.cluster, "several admin APIs imply --cluster");
            assert_eq!(o.urls(), "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/x");
        }
        // One node: delivered counts connections unless told otherwise.
        assert!(!parse("").unwrap().cluster && parse("--cluster").unwrap().cluster);
        assert!(parse("--url ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws --server-pid 1,2,3")
            .unwrap_err()
            .contains("one --server-pid per --url"));
        assert!(parse("--url ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws --phases storm")
            .unwrap_err()
            .contains("one server"));
        assert!(parse("--url ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws --phases resume").is_err());
        assert!(parse("--url ws://127.0.0.1:1/ws,http://x").is_err());
    }
}
