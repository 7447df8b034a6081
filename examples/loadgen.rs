//! loadgen: load generation and measurement for servers that follow the wspushd contract.
//!
//! WebSocket clients connect to `ws://HOST:PORT/PATH?user=U`; an admin HTTP API on another port
//! takes `POST /publish?user=U` and `POST /broadcast` (body = payload) and answers
//! `200 {"delivered":N}`. Run `cargo run --release --example loadgen -- --help` for every option.
//!
//! The parent process parses options, checks the target, samples memory, drives the admin API and
//! prints results; the client connections live in worker processes (this same executable with a
//! hidden `--worker` flag), at most 19,000 sockets each because of the 20,000 open-file limit.
//! Parent and workers talk over the workers' stdin/stdout, one line per command or answer.

#[path = "loadgen/admin.rs"]
mod admin;
#[path = "loadgen/hist.rs"]
mod hist;
#[path = "loadgen/soak.rs"]
mod soak;
#[path = "loadgen/storm.rs"]
mod storm;
#[path = "loadgen/sys.rs"]
mod sys;
#[path = "loadgen/worker.rs"]
mod worker;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use admin::AdminClient;
use hist::Histogram;
use sys::mono_ns;

const HELP: &str = "\
loadgen: open many WebSocket connections to a wspushd-style server and measure it.

USAGE:
    loadgen [OPTIONS]

TARGET:
    --url URL              WebSocket endpoint, ws://HOST:PORT/PATH   [ws://127.0.0.1:8080/ws]
                           Each client connects to URL?user=uI (I = connection / tabs).
    --admin HOST:PORT      Admin HTTP API (POST /publish?user=U, POST /broadcast,
                           each answering 200 {\"delivered\":N}; keep-alive)   [127.0.0.1:8081]
    --server-pid PID       Server process, for memory per connection (idle phase, from
                           /proc/PID/status RssAnon) and CPU per message (echo phase).
                           Measure memory on a freshly started server: memory its allocator
                           kept from earlier connections is reused and hides the cost.

CONNECTIONS:
    -n, --conns N          Connections to open   [1000]
    --tabs K               Connections per user (users u0..u{N/K-1}, K tabs each)   [1]
    --workers W            Worker processes   [enough for --max-per-worker]
    --max-per-worker M     Connections per worker process, at most 19000   [19000]
    --connect-rate R[/s]   Handshakes started per second, all workers together; 0 = flat out   [0]
    --max-inflight F       Handshakes in progress per worker (bounds a flat-out start)   [1000]
    --connect-timeout S    Seconds allowed for TCP connect plus upgrade response   [10]
    --source-ips S         Bind client sockets to S source addresses, round-robin, from
                           --source-base (loopback targets only; ~28k ports per source)
                           [N/25000 rounded up]
    --source-base IP       First source address   [127.0.0.2]
    --no-source-bind       Let the kernel pick the source address.

PHASES:
    --phases LIST          Comma-separated, run in this order   [connect,idle,publish,broadcast,echo]
                           connect:   open all connections; handshakes/s, failures by kind
                           idle:      every connection sends a frame and receives a broadcast,
                                      then after --settle-secs: server RssAnon, kernel slab and
                                      TCP memory per connection (deltas from before connecting)
                           publish:   --publish-rate publishes/s to random users for
                                      --publish-secs; checks per-connection order, loss and
                                      duplicates; publish-to-delivery latency
                           broadcast: --broadcasts broadcasts to every connection, flat out;
                                      delivered messages/s and latency
                           echo:      --echo-conns connections ping-pong 20-byte messages for
                                      --echo-secs (server must echo: wspushd --echo)
                           soak:      churn soak, see SOAK (runs alone: it opens and closes
                                      its connections itself)
                           storm:     connection storm, see STORM (runs alone)
                           Any phase after connect implies connect.
    --settle-secs S        Wait before sampling memory in the idle phase   [2]
    --publish-rate R[/s]   Publishes per second   [1000]
    --publish-secs T       Publish phase length in seconds   [10]
    --admin-conns C        Keep-alive admin connections used to publish (a user always goes
                           over the same one, so its publishes stay in order)   [4]
    --payload-bytes B      Pad publish and broadcast payloads to at least B bytes   [0]
    --broadcasts M         Broadcasts in the broadcast phase   [10]
    --echo-conns E         Connections taking part in the echo phase   [100]
    --echo-secs S          Echo phase length in seconds   [10]
    --drain-secs S         After sending stops, wait this long without progress for missing
                           messages before counting them lost   [5]

SOAK (--phases soak; needs --server-pid):
    Samples the server's RssAnon and open fds (/proc/PID/status, /proc/PID/fd) before any
    connection; runs a warm-up round (all --conns connect, publishing, one churn halfway,
    everyone leaves; make it as long as the server's ping interval so pings are part of it;
    reported as soak_warmup) and samples again; runs the soak round (all connect;
    --publish-rate publishes/s to random users for --soak-secs while every --churn-secs a
    --churn-fraction of the open connections is killed with an RST (SO_LINGER 0) and
    reconnects at once); everyone leaves, and once GET /stats on the admin API shows 0
    connections (and the fd count is back, waiting up to 10 s) it samples a third time.
    An incarnation is one connection of one client, from reading its 101 to its end. Checked:
    - the publish numbers each incarnation received run strictly consecutively from the first
      it got to the last (a hole is a lost message, then duplicates and reorders are counted);
    - each incarnation still open when publishing stops (\"live\") got every publish to its
      user whose request was started at least --soak-grace-ms after it read its 101, through
      the last one (after publishing stops, waiting up to --drain-secs without progress);
      killed incarnations only need the first check;
    - no connection was closed by the server and every reconnect succeeded;
    - server RssAnon after the soak is within --rss-tolerance-pct of the post-warm-up sample
      (the engine keeps high-water capacity, slab and hash tables, by design; the
      pre-connection figure is printed too), and open fds equal the pre-connection count.
    Any failure is an anomaly (exit status 1).
    --soak-secs T          Soak round length   [600]
    --warmup-secs T        Warm-up round length   [5]
    --churn-fraction F     Share of the open connections killed per churn   [0.1]
    --churn-secs P         Churn period; churns at P/2, 3P/2, 5P/2, ... within the round   [60]
    --soak-grace-ms G      Publishes started less than G ms after an incarnation read its 101
                           need not reach it   [0]
                           (wspush adds a connection to its user registry before it writes
                           the 101, so 0 is exact for it; a server that registers a user only
                           after answering needs a few ms here)
    --rss-tolerance-pct X  Allowed RssAnon growth over the post-warm-up sample, percent   [1]

STORM (--phases storm):
    --storm-receivers connections (users u0..) connect and receive --publish-rate publishes/s;
    after one second, all --conns storm clients (users after the receivers) connect at once
    (--connect-rate and --max-inflight do not apply to them). Reported: the receivers'
    publish-to-delivery latency during the storm (p50/p99/p99.9/max; the target p99 < 10 ms is
    flagged, not judged), storm outcomes (101 / 503 / 429 / other HTTP / refused / reset /
    timeout / other), and the peak open and handshaking counts in GET /stats sampled during the
    storm. Then the storm clients leave, and GET /healthz and a fresh client's round trip
    (upgrade, publish, receive) must succeed. Anomalies (exit status 1): a receiver missing,
    duplicating or reordering a publish or closed by the server, a storm client that neither
    opened nor got an HTTP 503/429 (a reset, timeout or hang), a limit exceeded in /stats, a
    failed health check or round trip. Run the server with --max-connections below
    receivers + storm clients so that 503s happen.
    --storm-receivers M    Established connections receiving publishes   [1000]
    --storm-max-connections C
                           The server's --max-connections: open + handshaking in /stats must
                           never exceed it   [0 = not checked]
    --storm-max-handshakes H
                           The server's handshake-in-progress limit over all I/O threads
                           (max_handshakes_per_thread x threads): handshaking in /stats must
                           never exceed it   [0 = not checked]
    --stats-interval-ms I  /stats sampling period during the storm   [20]

OUTPUT:
    --json                 One JSON object with every summary number on stdout (else a table).
    --seed N               Random seed for user choice and masks   [from the clock]
    -h, --help             This text.

Progress goes to stderr, at most once a second. Exit status: 0 when every expected message
arrived exactly once and in order, 1 when any was lost, duplicated or reordered, or on any
other soak or storm anomaly listed above (counts are printed), 2 on usage or setup errors.
";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Connect,
    Idle,
    Publish,
    Broadcast,
    Echo,
    /// The soak's warm-up round (reported on its own line; not selectable).
    SoakWarmup,
    Soak,
    Storm,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Idle => "idle",
            Phase::Publish => "publish",
            Phase::Broadcast => "broadcast",
            Phase::Echo => "echo",
            Phase::SoakWarmup => "soak_warmup",
            Phase::Soak => "soak",
            Phase::Storm => "storm",
        }
    }
}

#[derive(Clone, Debug)]
struct Options {
    url: String,
    target: SocketAddrV4,
    host_header: String,
    path: String,
    admin: SocketAddr,
    server_pid: Option<u32>,
    conns: usize,
    tabs: usize,
    workers: usize,
    max_per_worker: usize,
    connect_rate: f64,
    max_inflight: usize,
    connect_timeout: f64,
    source_ips: usize,
    source_base: Ipv4Addr,
    bind_sources: bool,
    phases: Vec<Phase>,
    settle_secs: f64,
    publish_rate: f64,
    publish_secs: f64,
    admin_conns: usize,
    payload_bytes: usize,
    broadcasts: usize,
    echo_conns: usize,
    echo_secs: f64,
    drain_secs: f64,
    soak_secs: f64,
    warmup_secs: f64,
    churn_fraction: f64,
    churn_secs: f64,
    soak_grace_ms: f64,
    rss_tolerance_pct: f64,
    storm_receivers: usize,
    storm_max_connections: u64,
    storm_max_handshakes: u64,
    stats_interval_ms: u64,
    json: bool,
    seed: u64,
    /// Hidden: run as a worker holding connections worker_first..worker_first+worker_count.
    worker: bool,
    worker_first: usize,
    worker_count: usize,
}

/// Largest connection count per worker: the per-process open-file limit is 20,000 and a worker
/// also needs a few descriptors of its own.
const MAX_PER_WORKER: usize = 19_000;
/// Ephemeral ports are 32768-60999 here: ~28k per source address; leave headroom.
const CONNS_PER_SOURCE: usize = 25_000;

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

fn parse_phases(text: &str) -> Result<Vec<Phase>, String> {
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
            _ => return Err(format!("unknown phase {name:?} (connect, idle, publish, broadcast, echo, soak, storm)")),
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

fn number<T: std::str::FromStr>(option: &str, value: &str) -> Result<T, String> {
    value.replace('_', "").parse().map_err(|_| format!("{option}: {value:?} is not a valid number"))
}

fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let (target, host_header, path) = parse_url("ws://127.0.0.1:8080/ws")?;
    let mut o = Options {
        url: "ws://127.0.0.1:8080/ws".into(),
        target,
        host_header,
        path,
        admin: parse_admin("127.0.0.1:8081")?,
        server_pid: None,
        conns: 1000,
        tabs: 1,
        workers: 0,
        max_per_worker: MAX_PER_WORKER,
        connect_rate: 0.0,
        max_inflight: 1000,
        connect_timeout: 10.0,
        source_ips: 0,
        source_base: Ipv4Addr::new(127, 0, 0, 2),
        bind_sources: true,
        phases: parse_phases("connect,idle,publish,broadcast,echo")?,
        settle_secs: 2.0,
        publish_rate: 1000.0,
        publish_secs: 10.0,
        admin_conns: 4,
        payload_bytes: 0,
        broadcasts: 10,
        echo_conns: 100,
        echo_secs: 10.0,
        drain_secs: 5.0,
        soak_secs: 600.0,
        warmup_secs: 5.0,
        churn_fraction: 0.1,
        churn_secs: 60.0,
        soak_grace_ms: 0.0,
        rss_tolerance_pct: 1.0,
        storm_receivers: 1000,
        storm_max_connections: 0,
        storm_max_handshakes: 0,
        stats_interval_ms: 20,
        json: false,
        seed: mono_ns() ^ (std::process::id() as u64) << 32,
        worker: false,
        worker_first: 0,
        worker_count: 0,
    };
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
            _ => (arg, None),
        };
        let flag = |o: &mut Options| -> Result<bool, String> {
            match name {
                "-h" | "--help" => return Ok(false),
                "--json" => o.json = true,
                "--no-source-bind" => o.bind_sources = false,
                "--worker" => o.worker = true,
                _ => return Err(String::new()),
            }
            Ok(true)
        };
        match flag(&mut o) {
            Ok(true) => {
                i += 1;
                continue;
            }
            Ok(false) => return Ok(None),
            Err(_) => {}
        }
        const WITH_VALUE: &[&str] = &[
            "--url",
            "--admin",
            "--server-pid",
            "-n",
            "--conns",
            "--tabs",
            "--workers",
            "--max-per-worker",
            "--connect-rate",
            "--max-inflight",
            "--connect-timeout",
            "--source-ips",
            "--source-base",
            "--phases",
            "--settle-secs",
            "--publish-rate",
            "--publish-secs",
            "--admin-conns",
            "--payload-bytes",
            "--broadcasts",
            "--echo-conns",
            "--echo-secs",
            "--drain-secs",
            "--soak-secs",
            "--warmup-secs",
            "--churn-fraction",
            "--churn-secs",
            "--soak-grace-ms",
            "--rss-tolerance-pct",
            "--storm-receivers",
            "--storm-max-connections",
            "--storm-max-handshakes",
            "--stats-interval-ms",
            "--seed",
            "--worker-first",
            "--worker-count",
        ];
        if !WITH_VALUE.contains(&name) {
            return Err(format!("unknown option {name:?}"));
        }
        let value = match inline {
            Some(value) => value,
            None => {
                i += 1;
                args.get(i).cloned().ok_or_else(|| format!("{name} needs a value"))?
            }
        };
        match name {
            "--url" => {
                (o.target, o.host_header, o.path) = parse_url(&value)?;
                o.url = value;
            }
            "--admin" => o.admin = parse_admin(&value)?,
            "--server-pid" => o.server_pid = Some(number(name, &value)?),
            "-n" | "--conns" => o.conns = number(name, &value)?,
            "--tabs" => o.tabs = number(name, &value)?,
            "--workers" => o.workers = number(name, &value)?,
            "--max-per-worker" => o.max_per_worker = number(name, &value)?,
            "--connect-rate" => o.connect_rate = number(name, value.trim_end_matches("/s"))?,
            "--max-inflight" => o.max_inflight = number(name, &value)?,
            "--connect-timeout" => o.connect_timeout = number(name, &value)?,
            "--source-ips" => o.source_ips = number(name, &value)?,
            "--source-base" => o.source_base = number(name, &value)?,
            "--phases" => o.phases = parse_phases(&value)?,
            "--settle-secs" => o.settle_secs = number(name, &value)?,
            "--publish-rate" => o.publish_rate = number(name, value.trim_end_matches("/s"))?,
            "--publish-secs" => o.publish_secs = number(name, &value)?,
            "--admin-conns" => o.admin_conns = number(name, &value)?,
            "--payload-bytes" => o.payload_bytes = number(name, &value)?,
            "--broadcasts" => o.broadcasts = number(name, &value)?,
            "--echo-conns" => o.echo_conns = number(name, &value)?,
            "--echo-secs" => o.echo_secs = number(name, &value)?,
            "--drain-secs" => o.drain_secs = number(name, &value)?,
            "--soak-secs" => o.soak_secs = number(name, &value)?,
            "--warmup-secs" => o.warmup_secs = number(name, &value)?,
            "--churn-fraction" => o.churn_fraction = number(name, &value)?,
            "--churn-secs" => o.churn_secs = number(name, &value)?,
            "--soak-grace-ms" => o.soak_grace_ms = number(name, &value)?,
            "--rss-tolerance-pct" => o.rss_tolerance_pct = number(name, &value)?,
            "--storm-receivers" => o.storm_receivers = number(name, &value)?,
            "--storm-max-connections" => o.storm_max_connections = number(name, &value)?,
            "--storm-max-handshakes" => o.storm_max_handshakes = number(name, &value)?,
            "--stats-interval-ms" => o.stats_interval_ms = number(name, &value)?,
            "--seed" => o.seed = number(name, &value)?,
            "--worker-first" => o.worker_first = number(name, &value)?,
            "--worker-count" => o.worker_count = number(name, &value)?,
            _ => return Err(format!("unknown option {name:?}")),
        }
        i += 1;
    }
    validate(&mut o)?;
    Ok(Some(o))
}

fn validate(o: &mut Options) -> Result<(), String> {
    if o.conns == 0 || o.tabs == 0 {
        return Err("--conns and --tabs must be at least 1".into());
    }
    if o.max_per_worker == 0 || o.max_per_worker > MAX_PER_WORKER {
        return Err(format!("--max-per-worker must be 1..={MAX_PER_WORKER}"));
    }
    let storm = o.phases.contains(&Phase::Storm);
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
        let sockets = match o.phases.first() {
            Some(Phase::Soak) => 2 * o.conns,
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
    if !o.target.ip().is_loopback() {
        o.bind_sources = false;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{HELP}");
            return;
        }
        Err(message) => {
            eprintln!("loadgen: {message}\n(see loadgen --help)");
            std::process::exit(2);
        }
    };
    if options.worker {
        let config = worker::WorkerConfig {
            first: options.worker_first,
            count: options.worker_count,
            tabs: options.tabs,
            target: options.target,
            host_header: options.host_header.clone(),
            path: options.path.clone(),
            sources: options.bind_sources.then_some((options.source_base, options.source_ips.max(1) as u32)),
            connect_rate: options.connect_rate,
            max_inflight: options.max_inflight,
            connect_timeout: Duration::from_secs_f64(options.connect_timeout),
            seed: options.seed,
        };
        if let Err(e) = worker::run(config) {
            eprintln!("loadgen worker: {e}");
            std::process::exit(2);
        }
        return;
    }
    match run(options) {
        Ok(code) => std::process::exit(code),
        Err(message) => {
            eprintln!("loadgen: {message}");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workers

/// Summed worker reports: counters add up, `*_ns` timestamps take the latest.
#[derive(Default, Debug)]
struct Report(BTreeMap<String, u64>);

impl Report {
    fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    fn add_line(&mut self, line: &str) {
        for pair in line.split_whitespace().skip(1) {
            let Some((key, value)) = pair.split_once('=') else { continue };
            let Ok(value) = value.parse::<u64>() else { continue };
            let slot = self.0.entry(key.to_string()).or_default();
            if key.ends_with("_ns") {
                *slot = (*slot).max(value);
            } else {
                *slot += value;
            }
        }
    }
}

/// The connections one worker holds (global indices first..first+count) and how it opens them.
#[derive(Clone, Copy)]
struct WorkerPlan {
    first: usize,
    count: usize,
    connect_rate: f64,
    max_inflight: usize,
}

struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    /// (worker index, line); notes are printed by the reader threads and not forwarded.
    lines: mpsc::Receiver<(usize, String)>,
    /// Connection range of each worker.
    ranges: Vec<(usize, usize)>,
}

impl Workers {
    /// --workers workers sharing --conns connections evenly.
    fn spawn(o: &Options) -> Result<Workers, String> {
        let per_worker = o.conns.div_ceil(o.workers);
        let rate_per_worker = o.connect_rate / o.workers as f64;
        let plans: Vec<WorkerPlan> = (0..o.workers)
            .map(|index| {
                let first = index * per_worker;
                WorkerPlan {
                    first,
                    count: per_worker.min(o.conns - first),
                    connect_rate: rate_per_worker,
                    max_inflight: o.max_inflight,
                }
            })
            .collect();
        Workers::spawn_plans(o, &plans)
    }

    fn spawn_plans(o: &Options, plans: &[WorkerPlan]) -> Result<Workers, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
        let (tx, lines) = mpsc::channel();
        let mut workers = Workers { children: Vec::new(), stdins: Vec::new(), lines, ranges: Vec::new() };
        for (index, plan) in plans.iter().enumerate() {
            let WorkerPlan { first, count, connect_rate: rate_per_worker, max_inflight } = *plan;
            let mut command = Command::new(&exe);
            command
                .arg("--worker")
                .args(["--url", &o.url])
                .args(["--conns", &o.conns.to_string()])
                .args(["--tabs", &o.tabs.to_string()])
                .args(["--worker-first", &first.to_string()])
                .args(["--worker-count", &count.to_string()])
                .args(["--connect-rate", &rate_per_worker.to_string()])
                .args(["--max-inflight", &max_inflight.to_string()])
                .args(["--connect-timeout", &o.connect_timeout.to_string()])
                .args(["--source-ips", &o.source_ips.to_string()])
                .args(["--source-base", &o.source_base.to_string()])
                .args(["--seed", &(o.seed.wrapping_add(index as u64 + 1)).to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            if !o.bind_sources {
                command.arg("--no-source-bind");
            }
            let mut child = command.spawn().map_err(|e| format!("cannot start worker: {e}"))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err("worker pipes missing".into());
            };
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(note) = line.strip_prefix("note ") {
                        eprintln!("loadgen: worker {index}: {note}");
                    } else if tx.send((index, line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((index, "eof".to_string()));
            });
            workers.children.push(child);
            workers.stdins.push(stdin);
            workers.ranges.push((first, count));
        }
        Ok(workers)
    }

    fn send(&mut self, index: usize, line: &str) -> Result<(), String> {
        let stdin = &mut self.stdins[index];
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("worker {index} is gone: {e}"))
    }

    fn send_all(&mut self, line: &str) -> Result<(), String> {
        (0..self.stdins.len()).try_for_each(|index| self.send(index, line))
    }

    /// One answer starting with `prefix` from every worker, in worker order.
    fn collect(&mut self, prefix: &str) -> Result<Vec<String>, String> {
        let all: Vec<usize> = (0..self.stdins.len()).collect();
        self.collect_from(&all, prefix)
    }

    /// One answer starting with `prefix` from each of the workers `from`, in that order.
    fn collect_from(&mut self, from: &[usize], prefix: &str) -> Result<Vec<String>, String> {
        let mut answers: Vec<Option<String>> = vec![None; self.stdins.len()];
        for index in (0..self.stdins.len()).filter(|i| !from.contains(i)) {
            answers[index] = Some(String::new());
        }
        while answers.iter().any(Option::is_none) {
            let (index, line) = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| format!("workers did not answer {prefix:?} within 60 s"))?;
            if line == "eof" {
                return Err(format!("worker {index} exited unexpectedly"));
            }
            if line.split_whitespace().next() == Some(prefix) {
                answers[index] = Some(line);
            } else {
                eprintln!("loadgen: worker {index}: unexpected answer {line:?}");
            }
        }
        Ok(from.iter().filter_map(|&index| answers[index].take()).collect())
    }

    /// Sends `command` to every worker and gathers the `record` lines each answers with,
    /// until every worker has sent its `end` line.
    fn records(&mut self, command: &str, record: &str, end: &str) -> Result<Vec<String>, String> {
        self.send_all(command)?;
        let mut ended = vec![false; self.stdins.len()];
        let mut records = Vec::new();
        while ended.iter().any(|done| !done) {
            let (index, line) = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| format!("workers did not finish {command:?} within 60 s"))?;
            match line.split_whitespace().next() {
                Some("eof") => return Err(format!("worker {index} exited unexpectedly")),
                Some(word) if word == record => records.push(line),
                Some(word) if word == end => ended[index] = true,
                _ => eprintln!("loadgen: worker {index}: unexpected answer {line:?}"),
            }
        }
        Ok(records)
    }

    /// The summed report of the workers `from`.
    fn report_from(&mut self, from: &[usize]) -> Result<Report, String> {
        for &index in from {
            self.send(index, "report")?;
        }
        let mut report = Report::default();
        for line in self.collect_from(from, "report")? {
            report.add_line(&line);
        }
        Ok(report)
    }

    fn ask_all(&mut self, command: &str, prefix: &str) -> Result<Vec<String>, String> {
        self.send_all(command)?;
        self.collect(prefix)
    }

    fn report(&mut self) -> Result<Report, String> {
        let mut report = Report::default();
        for line in self.ask_all("report", "report")? {
            report.add_line(&line);
        }
        Ok(report)
    }

    fn histogram(&mut self, which: &str) -> Result<Histogram, String> {
        let mut merged = Histogram::default();
        for line in self.ask_all(&format!("hist {which}"), "hist")? {
            let encoded = line.splitn(3, ' ').nth(2).unwrap_or("");
            let part = Histogram::decode(encoded).ok_or_else(|| format!("bad histogram from a worker: {line:?}"))?;
            merged.merge(&part);
        }
        Ok(merged)
    }

    fn finish(mut self) {
        let _ = self.send_all("quit");
        drop(std::mem::take(&mut self.stdins));
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results and output

/// A summary value, rendered into both the table and JSON.
#[derive(Clone)]
enum Value {
    Int(u64),
    Float(f64),
    Text(String),
}

struct PhaseResult {
    phase: Phase,
    /// Table: what matters most, then details.
    headline: String,
    details: String,
    /// JSON fields in order.
    fields: Vec<(&'static str, Value)>,
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_value(value: &Value) -> String {
    match value {
        Value::Int(n) => n.to_string(),
        Value::Float(x) if x.is_finite() => format!("{:.3}", x),
        Value::Float(_) => "null".into(),
        Value::Text(text) => json_string(text),
    }
}

fn json_object(fields: &[(&str, Value)]) -> String {
    let body: Vec<String> =
        fields.iter().map(|(key, value)| format!("{}:{}", json_string(key), json_value(value))).collect();
    format!("{{{}}}", body.join(","))
}

fn format_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns} ns"),
        1_000..=999_999 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

fn format_kib(kib: f64) -> String {
    if kib.abs() >= 1024.0 * 10.0 {
        format!("{:.1} MiB", kib / 1024.0)
    } else {
        format!("{kib:.0} KiB")
    }
}

fn latency_fields(prefix: &'static str, hist: &Histogram) -> Vec<(&'static str, Value)> {
    let names: [&'static str; 5] = match prefix {
        "latency" => ["latency_p50_ns", "latency_p99_ns", "latency_p999_ns", "latency_max_ns", "latency_mean_ns"],
        _ => ["rtt_p50_ns", "rtt_p99_ns", "rtt_p999_ns", "rtt_max_ns", "rtt_mean_ns"],
    };
    vec![
        (names[0], Value::Int(hist.quantile(0.5))),
        (names[1], Value::Int(hist.quantile(0.99))),
        (names[2], Value::Int(hist.quantile(0.999))),
        (names[3], Value::Int(hist.max())),
        (names[4], Value::Int(hist.mean())),
    ]
}

fn latency_text(label: &str, hist: &Histogram) -> String {
    if hist.count() == 0 {
        return format!("{label}: no samples");
    }
    format!(
        "{label} p50 {}, p99 {}, p99.9 {}, max {}",
        format_ns(hist.quantile(0.5)),
        format_ns(hist.quantile(0.99)),
        format_ns(hist.quantile(0.999)),
        format_ns(hist.max())
    )
}

fn progress(phase: Phase, last: &mut Instant, text: impl FnOnce() -> String) {
    if last.elapsed() >= Duration::from_secs(1) {
        *last = Instant::now();
        eprintln!("[{}] {}", phase.name(), text());
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Warns when the port does not have exactly one listening process: a leftover SO_REUSEPORT
/// server would silently take a share of the connections. Counts processes rather than sockets
/// because one server may hold one SO_REUSEPORT listener per I/O thread.
fn check_listeners(port: u16, what: &str, server_pid: Option<u32>) {
    let output = Command::new("ss").args(["-tlnpH", &format!("( sport = :{port} )")]).output();
    let Ok(output) = output else {
        eprintln!("loadgen: warning: cannot run ss to check the listeners on port {port}");
        return;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut pids: Vec<u32> = lines
        .iter()
        .filter_map(|line| line.split("pid=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    // Sockets of other users' processes show no owner; they count as one more process.
    let unattributed = lines.iter().filter(|line| !line.contains("pid=")).count();
    let sockets = sys::listener_count(port).unwrap_or(lines.len());
    let processes = pids.len() + unattributed.min(1);
    if sockets == 0 {
        eprintln!("loadgen: WARNING: nothing listens on {what} port {port}");
    } else if processes != 1 || (pids.is_empty() && sockets > 1) {
        let owners = if unattributed > 0 {
            format!("processes {pids:?} plus {unattributed} socket(s) whose owner ss cannot show")
        } else {
            format!("processes {pids:?}")
        };
        eprintln!(
            "loadgen: WARNING: ==================================================================\n\
             loadgen: WARNING: {sockets} listening sockets on {what} port {port}, {owners}\n\
             loadgen: WARNING: expected exactly one server; a leftover SO_REUSEPORT process would take\n\
             loadgen: WARNING: a share of the connections and falsify every number below.\n\
             loadgen: WARNING: =================================================================="
        );
    } else if let (Some(expected), [found]) = (server_pid, pids.as_slice()) {
        if *found != expected {
            eprintln!("loadgen: WARNING: {what} port {port} belongs to pid {found}, not --server-pid {expected}");
        }
    }
}

struct Run {
    options: Options,
    workers: Workers,
    results: Vec<PhaseResult>,
    /// Lost + duplicated + reordered + unexpected messages over all phases.
    anomalies: u64,
    before: Option<sys::MemSample>,
}

/// What the clients saw of one phase's messages.
struct Delivery {
    report: Report,
    lost: u64,
    unexpected: u64,
    dup: u64,
    reordered: u64,
    latency: Histogram,
    /// The JSON fields for the above.
    checks: Vec<(&'static str, Value)>,
}

fn run(options: Options) -> Result<i32, String> {
    if options.phases.is_empty() {
        return Err("no phases selected".into());
    }
    check_listeners(options.target.port(), "WebSocket", options.server_pid);
    if options
        .phases
        .iter()
        .any(|p| matches!(p, Phase::Idle | Phase::Publish | Phase::Broadcast | Phase::Soak | Phase::Storm))
    {
        check_listeners(options.admin.port(), "admin", options.server_pid);
    }
    let before = if options.phases.contains(&Phase::Idle) {
        // One admin request first, so the admin channel's own fixed cost (its thread, buffers)
        // is in the baseline and not charged to the WebSocket connections.
        AdminClient::new(options.admin)
            .post("/broadcast", b"warm-up")
            .map_err(|e| format!("admin API at {} not answering: {e}", options.admin))?;
        Some(sys::sample_memory(options.server_pid).map_err(|e| format!("cannot sample memory: {e}"))?)
    } else {
        None
    };
    if !options.json {
        eprintln!(
            "loadgen: {} connections ({} users x {} tabs) to {} over {} worker(s){}",
            options.conns,
            options.conns.div_ceil(options.tabs),
            options.tabs,
            options.url,
            options.workers,
            if options.bind_sources {
                format!(", source addresses {}+{}", options.source_base, options.source_ips)
            } else {
                String::new()
            }
        );
    }
    let workers = if options.phases.contains(&Phase::Storm) {
        Workers::spawn_plans(&options, &storm::worker_plans(&options))?
    } else {
        Workers::spawn(&options)?
    };
    let mut run = Run { options, workers, results: Vec::new(), anomalies: 0, before };
    let outcome = run.phases();
    let Run { options, workers, results, anomalies, .. } = run;
    workers.finish();
    outcome?;
    print_results(&options, &results, anomalies);
    Ok(if anomalies > 0 { 1 } else { 0 })
}

impl Run {
    fn phases(&mut self) -> Result<(), String> {
        for phase in self.options.phases.clone() {
            let result = match phase {
                Phase::Connect => self.connect()?,
                Phase::Idle => self.idle()?,
                Phase::Publish => self.publish()?,
                Phase::Broadcast => self.broadcast()?,
                Phase::Echo => self.echo()?,
                Phase::Soak => self.soak()?,
                Phase::Storm => self.storm()?,
                Phase::SoakWarmup => continue,
            };
            if !self.options.json {
                eprintln!("[{}] done: {}", phase.name(), result.headline);
            }
            self.results.push(result);
        }
        Ok(())
    }

    fn padded_payload(&self, mut payload: String) -> Vec<u8> {
        if payload.len() < self.options.payload_bytes {
            payload.push(' ');
            while payload.len() < self.options.payload_bytes {
                payload.push('.');
            }
        }
        payload.into_bytes()
    }

    /// Polls until `done` holds or nothing changed for `quiet` (judged on `progress_key`).
    fn wait_until(
        &mut self,
        phase: Phase,
        quiet: Duration,
        progress_key: &str,
        done: impl Fn(&Report) -> bool,
        describe: impl Fn(&Report) -> String,
    ) -> Result<Report, String> {
        let mut last_print = Instant::now();
        let mut last_change = Instant::now();
        let mut last_value = u64::MAX;
        loop {
            let report = self.workers.report()?;
            if done(&report) {
                return Ok(report);
            }
            let value = report.get(progress_key);
            if value != last_value {
                last_value = value;
                last_change = Instant::now();
            } else if last_change.elapsed() >= quiet {
                return Ok(report);
            }
            progress(phase, &mut last_print, || describe(&report));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn connect(&mut self) -> Result<PhaseResult, String> {
        let start_ns = mono_ns();
        self.workers.send_all("connect")?;
        let started = Instant::now();
        let conns = self.options.conns;
        // Progress is judged on attempts resolved; a flat-out start can pause while SYNs retry.
        let quiet = Duration::from_secs_f64(self.options.connect_timeout + 5.0);
        let report = self.wait_until(
            Phase::Connect,
            quiet,
            "pending",
            |r| r.get("pending") == 0 && r.get("inflight") == 0,
            |r| {
                let elapsed = started.elapsed().as_secs_f64();
                format!(
                    "{}/{conns} open, {} handshaking, {} failed, {:.0}/s",
                    r.get("open"),
                    r.get("inflight"),
                    r.get("refused") + r.get("timeout") + r.get("http") + r.get("other"),
                    r.get("connected") as f64 / elapsed.max(1e-9)
                )
            },
        )?;
        let report = if report.get("pending") + report.get("inflight") > 0 {
            // Stalled: let in-flight attempts run into their own timeouts.
            self.wait_until(
                Phase::Connect,
                quiet,
                "inflight",
                |r| r.get("inflight") == 0,
                |r| format!("{} still handshaking", r.get("inflight")),
            )?
        } else {
            report
        };
        let connected = report.get("connected");
        let secs = started.elapsed().as_secs_f64();
        // The rate covers the time until the last upgrade completed, not the failures after it.
        let opening_secs = report.get("last_open_ns").saturating_sub(start_ns) as f64 / 1e9;
        let rate = if opening_secs > 0.0 { connected as f64 / opening_secs } else { 0.0 };
        let failed = ["refused", "timeout", "http", "other"].map(|k| report.get(k));
        let mut statuses: Vec<String> = report
            .0
            .iter()
            .filter_map(|(key, n)| key.strip_prefix("http_").map(|status| format!("{status}x{n}")))
            .collect();
        if statuses.is_empty() {
            statuses.push("-".into());
        }
        let not_started = report.get("pending");
        Ok(PhaseResult {
            phase: Phase::Connect,
            headline: format!("{connected}/{conns} open, {rate:.0} handshakes/s"),
            details: format!(
                "{secs:.2} s; failures: refused {}, timeout {}, http {} ({}), other {}{}",
                failed[0],
                failed[1],
                failed[2],
                statuses.join(" "),
                failed[3],
                if not_started > 0 { format!(", never started {not_started}") } else { String::new() }
            ),
            fields: vec![
                ("attempted", Value::Int(conns as u64)),
                ("opened", Value::Int(connected)),
                ("secs", Value::Float(secs)),
                ("handshakes_per_sec", Value::Float(rate)),
                ("failed_refused", Value::Int(failed[0])),
                ("failed_timeout", Value::Int(failed[1])),
                ("failed_http", Value::Int(failed[2])),
                ("failed_http_statuses", Value::Text(statuses.join(" "))),
                ("failed_other", Value::Int(failed[3])),
                ("never_started", Value::Int(not_started)),
            ],
        })
    }

    fn idle(&mut self) -> Result<PhaseResult, String> {
        self.workers.send_all("probe")?;
        let mut admin = AdminClient::new(self.options.admin);
        let body = self.padded_payload(format!("w {}", mono_ns()));
        let response = admin.post("/broadcast", &body).map_err(|e| format!("warm-up broadcast failed: {e}"))?;
        if response.status != 200 {
            return Err(format!("warm-up broadcast answered HTTP {}", response.status));
        }
        drop(admin);
        let quiet = Duration::from_secs_f64(self.options.drain_secs.max(1.0));
        let report = self.wait_until(
            Phase::Idle,
            quiet,
            "warm",
            |r| r.get("warm") >= r.get("open"),
            |r| format!("{}/{} connections got the warm-up broadcast", r.get("warm"), r.get("open")),
        )?;
        let open = report.get("open");
        let warm = report.get("warm");
        let missing = open.saturating_sub(warm);
        self.anomalies += missing;

        let mut fields = vec![
            ("open", Value::Int(open)),
            ("warm", Value::Int(warm)),
            ("warmup_missing", Value::Int(missing)),
            ("closed_by_server", Value::Int(report.get("closed_by_peer"))),
        ];
        let mut details = format!("{warm}/{open} got the warm-up broadcast");
        if let Some(before) = self.before {
            std::thread::sleep(Duration::from_secs_f64(self.options.settle_secs));
            let after =
                sys::sample_memory(self.options.server_pid).map_err(|e| format!("cannot sample memory: {e}"))?;
            let per_conn = |delta: f64| if open > 0 { delta / open as f64 } else { 0.0 };
            if let (Some(rss_before), Some(rss_after)) = (before.rss_anon_kib, after.rss_anon_kib) {
                let delta = rss_after as f64 - rss_before as f64;
                let _ = write!(details, "; server RssAnon +{} = {:.2} KiB/conn", format_kib(delta), per_conn(delta));
                fields.push(("server_rss_anon_delta_kib", Value::Int(rss_after.saturating_sub(rss_before))));
                fields.push(("server_bytes_per_conn", Value::Float(per_conn(delta) * 1024.0)));
            } else {
                details.push_str("; server memory: give --server-pid");
            }
            let slab = after.slab_kib as f64 - before.slab_kib as f64;
            let tcp_mem_kib = (after.tcp_mem_pages as f64 - before.tcp_mem_pages as f64) * 4.0;
            let _ = write!(
                details,
                "; kernel slab +{} = {:.2} KiB/conn, TCP inuse +{}, TCP mem +{} (both ends of loopback)",
                format_kib(slab),
                per_conn(slab),
                after.tcp_inuse as i64 - before.tcp_inuse as i64,
                format_kib(tcp_mem_kib)
            );
            fields.push(("kernel_slab_delta_kib", Value::Float(slab)));
            fields.push(("kernel_slab_bytes_per_conn", Value::Float(per_conn(slab) * 1024.0)));
            fields.push(("tcp_inuse_delta", Value::Float(after.tcp_inuse as f64 - before.tcp_inuse as f64)));
            fields
                .push(("tcp_mem_delta_pages", Value::Float(after.tcp_mem_pages as f64 - before.tcp_mem_pages as f64)));
        }
        let headline = match self.options.server_pid.zip(self.before) {
            Some(_) => {
                let bytes = fields.iter().find(|(k, _)| *k == "server_bytes_per_conn").map(|(_, v)| v.clone());
                match bytes {
                    Some(Value::Float(b)) => format!("{warm}/{open} warm, server {:.0} B/conn", b),
                    _ => format!("{warm}/{open} warm"),
                }
            }
            None => format!("{warm}/{open} warm"),
        };
        Ok(PhaseResult { phase: Phase::Idle, headline, details, fields })
    }

    fn publish(&mut self) -> Result<PhaseResult, String> {
        let o = self.options.clone();
        let users = o.conns.div_ceil(o.tabs);
        let stop_at = Instant::now() + Duration::from_secs_f64(o.publish_secs);
        let start = Instant::now();
        let lanes = Lanes::start(&o, users, o.conns, stop_at, false);
        let mut last_print = Instant::now();
        while !lanes.finished() {
            std::thread::sleep(Duration::from_millis(100));
            if last_print.elapsed() >= Duration::from_secs(1) {
                let report = self.workers.report()?;
                progress(Phase::Publish, &mut last_print, || {
                    format!(
                        "{} published, {} received, {} open",
                        lanes.sent_total.load(Ordering::Relaxed),
                        report.get("pub_recv"),
                        report.get("open")
                    )
                });
            }
        }
        let Published { sent, ok, errors, delivered_claimed, delivered_mismatch, max_lag_ns, request_latency, .. } =
            lanes.join()?;
        let send_secs = start.elapsed().as_secs_f64();
        for index in 0..self.workers.ranges.len() {
            let (first, count) = self.workers.ranges[index];
            let first_user = first / o.tabs;
            let last_user = (first + count - 1) / o.tabs;
            let mut line = format!("expect_pub {first_user}");
            for count in &sent[first_user..=last_user] {
                let _ = write!(line, " {count}");
            }
            self.workers.send(index, &line)?;
        }
        self.workers.collect("ok")?;
        let Delivery { report, lost, unexpected, dup, reordered, latency, checks } =
            self.await_deliveries(Phase::Publish, "pub", "draining: ")?;
        let rate = ok as f64 / send_secs.max(1e-9);
        let mut fields = vec![
            ("published", Value::Int(ok)),
            ("publish_errors", Value::Int(errors)),
            ("publish_rate_target", Value::Float(o.publish_rate)),
            ("publish_rate", Value::Float(rate)),
            ("secs", Value::Float(send_secs)),
            ("max_schedule_lag_ns", Value::Int(max_lag_ns)),
            ("server_delivered", Value::Int(delivered_claimed)),
            ("server_delivered_mismatch", Value::Int(delivered_mismatch)),
            ("expected", Value::Int(report.get("pub_expected"))),
            ("received", Value::Int(report.get("pub_recv"))),
        ];
        fields.extend(checks);
        fields.push(("admin_request_p50_ns", Value::Int(request_latency.quantile(0.5))));
        fields.push(("admin_request_p99_ns", Value::Int(request_latency.quantile(0.99))));
        Ok(PhaseResult {
            phase: Phase::Publish,
            headline: format!("{ok} @ {rate:.0}/s, lost {lost}, dup {dup}, reordered {reordered}"),
            details: format!(
                "{} of {} deliveries{}{}; {}; admin request p50 {}, p99 {}",
                report.get("pub_distinct"),
                report.get("pub_expected"),
                if unexpected > 0 { format!(", {unexpected} unexpected") } else { String::new() },
                if errors > 0 { format!(", {errors} publish errors") } else { String::new() },
                latency_text("latency", &latency),
                format_ns(request_latency.quantile(0.5)),
                format_ns(request_latency.quantile(0.99)),
            ),
            fields,
        })
    }

    /// Waits until every expected `which` ("pub" or "bcast") message arrived or nothing moved for
    /// --drain-secs, then tallies loss, duplicates, reordering and latency over all workers.
    fn await_deliveries(&mut self, phase: Phase, which: &str, progress: &str) -> Result<Delivery, String> {
        let quiet = Duration::from_secs_f64(self.options.drain_secs);
        let (distinct, expected) = (format!("{which}_distinct"), format!("{which}_expected"));
        let report = self.wait_until(
            phase,
            quiet,
            &distinct,
            |r| r.get(&distinct) >= r.get(&expected),
            |r| format!("{progress}{}/{} delivered", r.get(&distinct), r.get(&expected)),
        )?;
        let (lost, unexpected) = self.final_tally(which)?;
        let latency = self.workers.histogram(which)?;
        let dup = report.get(&format!("{which}_dup"));
        let reordered = report.get(&format!("{which}_reordered"));
        self.anomalies += lost + dup + reordered + unexpected;
        let mut checks = vec![
            ("lost", Value::Int(lost)),
            ("duplicated", Value::Int(dup)),
            ("reordered", Value::Int(reordered)),
            ("unexpected", Value::Int(unexpected)),
            ("closed_by_server", Value::Int(report.get("closed_by_peer"))),
        ];
        checks.extend(latency_fields("latency", &latency));
        Ok(Delivery { report, lost, unexpected, dup, reordered, latency, checks })
    }

    fn final_tally(&mut self, which: &str) -> Result<(u64, u64), String> {
        let mut report = Report::default();
        for line in self.workers.ask_all(&format!("final {which}"), "final")? {
            // "final pub lost=.. unexpected=..": add_line skips words that are not key=value.
            report.add_line(&line);
        }
        Ok((report.get("lost"), report.get("unexpected")))
    }

    fn broadcast(&mut self) -> Result<PhaseResult, String> {
        let count = self.options.broadcasts;
        self.workers.ask_all(&format!("expect_bcast {count}"), "ok")?;
        let mut admin = AdminClient::new(self.options.admin);
        let start_ns = mono_ns();
        let mut delivered_claimed = 0;
        for index in 1..=count {
            let body = self.padded_payload(format!("b {index} {}", mono_ns()));
            let response = admin.post("/broadcast", &body).map_err(|e| format!("broadcast {index} failed: {e}"))?;
            if response.status != 200 {
                return Err(format!("broadcast {index} answered HTTP {}", response.status));
            }
            delivered_claimed += response.delivered().unwrap_or(0);
        }
        let sent_ns = mono_ns();
        let Delivery { report, lost, unexpected, dup, reordered, latency, checks } =
            self.await_deliveries(Phase::Broadcast, "bcast", "")?;
        let received = report.get("bcast_recv");
        let secs = report.get("last_bcast_ns").saturating_sub(start_ns) as f64 / 1e9;
        let rate = if secs > 0.0 { received as f64 / secs } else { 0.0 };
        let mut fields = vec![
            ("broadcasts", Value::Int(count as u64)),
            ("send_secs", Value::Float((sent_ns - start_ns) as f64 / 1e9)),
            ("server_delivered", Value::Int(delivered_claimed)),
            ("expected", Value::Int(report.get("bcast_expected"))),
            ("received", Value::Int(received)),
            ("secs", Value::Float(secs)),
            ("messages_per_sec", Value::Float(rate)),
        ];
        fields.extend(checks);
        Ok(PhaseResult {
            phase: Phase::Broadcast,
            headline: format!("{received} msgs @ {rate:.0} msg/s, lost {lost}, dup {dup}, reordered {reordered}"),
            details: format!(
                "{count} broadcasts x {} conns in {secs:.3} s{}; {}",
                report.get("bcast_expected") / count.max(1) as u64,
                if unexpected > 0 { format!(", {unexpected} unexpected") } else { String::new() },
                latency_text("latency", &latency)
            ),
            fields,
        })
    }

    fn echo(&mut self) -> Result<PhaseResult, String> {
        let o = self.options.clone();
        let workers = self.workers.ranges.len();
        let cpu_before =
            o.server_pid.map(sys::cpu_seconds).transpose().map_err(|e| format!("cannot read server CPU: {e}"))?;
        let start_ns = mono_ns();
        let millis = (o.echo_secs * 1000.0).round() as u64;
        for index in 0..workers {
            let share = o.echo_conns / workers + usize::from(index < o.echo_conns % workers);
            self.workers.send(index, &format!("echo {share} {millis}"))?;
        }
        let started = Instant::now();
        let mut last_print = Instant::now();
        while started.elapsed() < Duration::from_millis(millis) {
            std::thread::sleep(
                Duration::from_millis(100).min(Duration::from_millis(millis).saturating_sub(started.elapsed())),
            );
            if last_print.elapsed() >= Duration::from_secs(1) {
                let report = self.workers.report()?;
                progress(Phase::Echo, &mut last_print, || {
                    let secs = started.elapsed().as_secs_f64();
                    format!("{} echoes, {:.0}/s", report.get("echo_msgs"), report.get("echo_msgs") as f64 / secs)
                });
            }
        }
        let quiet = Duration::from_secs_f64(self.options.drain_secs.max(1.0));
        let report = self.wait_until(
            Phase::Echo,
            quiet,
            "echo_msgs",
            |r| r.get("echo_inflight") == 0,
            |r| format!("{} echo replies outstanding", r.get("echo_inflight")),
        )?;
        let cpu_after =
            o.server_pid.map(sys::cpu_seconds).transpose().map_err(|e| format!("cannot read server CPU: {e}"))?;
        let rtt = self.workers.histogram("echo")?;
        let messages = report.get("echo_msgs");
        let conns = report.get("echo_conns");
        let end_ns = if report.get("echo_end_ns") > 0 { report.get("echo_end_ns") } else { mono_ns() };
        let secs = end_ns.saturating_sub(start_ns) as f64 / 1e9;
        let rate = if secs > 0.0 { messages as f64 / secs } else { 0.0 };
        if messages == 0 {
            eprintln!("loadgen: warning: no echo replies; is the server in echo mode (wspushd --echo)?");
        }
        let mut fields = vec![
            ("conns", Value::Int(conns)),
            ("messages", Value::Int(messages)),
            ("secs", Value::Float(secs)),
            ("messages_per_sec", Value::Float(rate)),
            ("unanswered", Value::Int(report.get("echo_inflight"))),
        ];
        fields.extend(latency_fields("rtt", &rtt));
        let mut details = format!("{conns} conns, {secs:.2} s; {}", latency_text("rtt", &rtt));
        if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
            let cpu = after - before;
            let per_cpu = if cpu > 0.0 { messages as f64 / cpu } else { 0.0 };
            let _ = write!(details, "; server CPU {cpu:.2} s = {per_cpu:.0} msg per CPU-second");
            fields.push(("server_cpu_secs", Value::Float(cpu)));
            fields.push(("messages_per_server_cpu_sec", Value::Float(per_cpu)));
        }
        Ok(PhaseResult { phase: Phase::Echo, headline: format!("{messages} msgs @ {rate:.0} msg/s"), details, fields })
    }
}

/// What one publishing thread did.
struct LaneResult {
    /// Publishes per user for users lane, lane+lanes, lane+2·lanes, ...
    sent: Vec<u32>,
    /// When logging: the send time of each of those publishes, per user.
    times: Vec<Vec<u64>>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    delivered: u64,
    delivered_mismatch: u64,
    max_lag_ns: u64,
    request_latency: Histogram,
}

/// What one publishing thread is to do.
#[derive(Clone)]
struct LanePlan {
    lane: usize,
    lanes: usize,
    /// Publish to users u0..u{users-1}, who hold connections 0..conns between them.
    users: usize,
    conns: usize,
    stop_at: Instant,
    /// Keep every publish's send time (the soak's per-incarnation check needs them).
    log_times: bool,
    stop: Arc<AtomicBool>,
    sent_total: Arc<AtomicU64>,
}

/// All the lanes' work, per user.
struct Published {
    /// Publishes the server took (HTTP 200), per user; user u got numbers 1..=sent[u].
    sent: Vec<u32>,
    /// With `log_times`: times[u][n-1] = when publish n to user u was started (mono_ns).
    times: Vec<Vec<u64>>,
    ok: u64,
    errors: u64,
    delivered_claimed: u64,
    delivered_mismatch: u64,
    max_lag_ns: u64,
    request_latency: Histogram,
}

/// The publishing threads, one keep-alive admin connection each (--admin-conns of them).
struct Lanes {
    handles: Vec<std::thread::JoinHandle<Result<LaneResult, String>>>,
    lanes: usize,
    users: usize,
    sent_total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Lanes {
    /// Publishes at --publish-rate to random users among `users` until `stop_at` or `stop()`.
    fn start(o: &Options, users: usize, conns: usize, stop_at: Instant, log_times: bool) -> Lanes {
        let lanes = o.admin_conns.min(users).max(1);
        let sent_total = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for lane in 0..lanes {
            let plan = LanePlan {
                lane,
                lanes,
                users,
                conns,
                stop_at,
                log_times,
                stop: Arc::clone(&stop),
                sent_total: Arc::clone(&sent_total),
            };
            let options = o.clone();
            handles.push(std::thread::spawn(move || publish_lane(&options, &plan)));
        }
        Lanes { handles, lanes, users, sent_total, stop }
    }

    fn finished(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn join(self) -> Result<Published, String> {
        let mut all = Published {
            sent: vec![0; self.users],
            times: vec![Vec::new(); self.users],
            ok: 0,
            errors: 0,
            delivered_claimed: 0,
            delivered_mismatch: 0,
            max_lag_ns: 0,
            request_latency: Histogram::default(),
        };
        let mut first_error = None;
        for (lane, handle) in self.handles.into_iter().enumerate() {
            let result = handle.join().map_err(|_| "publish thread panicked".to_string())??;
            // Lane l owns users l, l+lanes, ...
            for (i, count) in result.sent.into_iter().enumerate() {
                all.sent[lane + i * self.lanes] = count;
            }
            for (i, times) in result.times.into_iter().enumerate() {
                all.times[lane + i * self.lanes] = times;
            }
            all.ok += result.ok;
            all.delivered_claimed += result.delivered;
            all.delivered_mismatch += result.delivered_mismatch;
            all.errors += result.errors;
            all.max_lag_ns = all.max_lag_ns.max(result.max_lag_ns);
            all.request_latency.merge(&result.request_latency);
            first_error = first_error.or(result.first_error);
        }
        if let Some(error) = &first_error {
            eprintln!("loadgen: publish errors: {}, first: {error}", all.errors);
        }
        Ok(all)
    }
}

/// Publishes at `rate / lanes` per second to random users of this lane until the plan's stop,
/// over one keep-alive admin connection. Each user belongs to exactly one lane, and a lane waits
/// for each response before the next request, so a user's publishes reach the server in order.
fn publish_lane(o: &Options, plan: &LanePlan) -> Result<LaneResult, String> {
    let LanePlan { lane, lanes, users, conns, stop_at, .. } = *plan;
    let my_users = (users - lane).div_ceil(lanes);
    let mut result = LaneResult {
        sent: vec![0; my_users],
        times: if plan.log_times { vec![Vec::new(); my_users] } else { Vec::new() },
        ok: 0,
        errors: 0,
        first_error: None,
        delivered: 0,
        delivered_mismatch: 0,
        max_lag_ns: 0,
        request_latency: Histogram::default(),
    };
    if my_users == 0 || o.publish_rate <= 0.0 {
        return Ok(result);
    }
    let mut admin = AdminClient::new(o.admin);
    let interval = Duration::from_secs_f64(lanes as f64 / o.publish_rate);
    let mut rng = o.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(lane as u64) | 1;
    let start = Instant::now();
    let mut consecutive_errors = 0;
    'publishing: for n in 0u32.. {
        let due = start + interval * n;
        if due >= stop_at {
            break;
        }
        loop {
            let now = Instant::now();
            if now >= stop_at || plan.stop.load(Ordering::Relaxed) {
                break 'publishing;
            }
            if due <= now {
                result.max_lag_ns = result.max_lag_ns.max((now - due).as_nanos() as u64);
                break;
            }
            // Short naps, so a stop() is noticed soon even at low rates.
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let local = (rng % my_users as u64) as usize;
        let user = lane + local * lanes;
        let seq = result.sent[local] + 1;
        let sent_ns = mono_ns();
        let mut payload = format!("p {seq} {sent_ns}");
        if payload.len() < o.payload_bytes {
            payload.push(' ');
            payload.extend(std::iter::repeat_n('.', o.payload_bytes - payload.len()));
        }
        let outcome = admin.post(&format!("/publish?user=u{user}"), payload.as_bytes());
        result.request_latency.record(mono_ns() - sent_ns);
        match outcome {
            Ok(response) if response.status == 200 => {
                // Only a publish the server took consumes the sequence number; anything else
                // would show up at the clients as a false gap.
                result.sent[local] = seq;
                if plan.log_times {
                    result.times[local].push(sent_ns);
                }
                result.ok += 1;
                consecutive_errors = 0;
                plan.sent_total.fetch_add(1, Ordering::Relaxed);
                let delivered = response.delivered().unwrap_or(0);
                result.delivered += delivered;
                let tabs = o.tabs.min(conns.saturating_sub(user * o.tabs)) as u64;
                if delivered != tabs {
                    result.delivered_mismatch += 1;
                }
            }
            Ok(response) => {
                result.errors += 1;
                consecutive_errors += 1;
                result.first_error.get_or_insert_with(|| {
                    format!("HTTP {} {}", response.status, String::from_utf8_lossy(&response.body).trim())
                });
            }
            Err(e) => {
                result.errors += 1;
                consecutive_errors += 1;
                result.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        if consecutive_errors >= 100 {
            return Err(format!("admin API keeps failing: {}", result.first_error.unwrap_or_default()));
        }
    }
    Ok(result)
}

fn print_results(o: &Options, results: &[PhaseResult], anomalies: u64) {
    if o.json {
        let mut fields: Vec<(&str, String)> = vec![
            ("url", json_string(&o.url)),
            ("conns", o.conns.to_string()),
            ("tabs", o.tabs.to_string()),
            ("users", o.conns.div_ceil(o.tabs).to_string()),
            ("workers", o.workers.to_string()),
        ];
        for result in results {
            fields.push((result.phase.name(), json_object(&result.fields)));
        }
        fields.push(("anomalies", anomalies.to_string()));
        fields.push(("ok", (anomalies == 0).to_string()));
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", json_string(k))).collect();
        println!("{{{}}}", body.join(","));
    } else {
        let width = results.iter().map(|r| r.headline.chars().count()).max().unwrap_or(0);
        println!("{:<10} {:<width$}  details", "phase", "result");
        for result in results {
            println!("{:<10} {:<width$}  {}", result.phase.name(), result.headline, result.details);
        }
    }
    if anomalies > 0 {
        eprintln!(
            "loadgen: FAILED: {anomalies} anomalies (messages lost, duplicated, reordered or unexpected, \
             limits or server checks that did not hold; see the lines above)"
        );
    }
}
