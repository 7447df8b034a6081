//! One run: checks the target, starts the workers, runs the selected phases in order and prints
//! the results. The phases themselves are in phases/; the helpers they share are here.

use std::process::Command as Process;
use std::time::{Duration, Instant};

use crate::admin::AdminClient;
use crate::cli::{Options, Phase};
use crate::coordinator::{Report, Workers};
use crate::hist::Histogram;
use crate::phases::storm;
use crate::protocol::{Answer, Command, Stream};
use crate::report::{latency_fields, print_results, progress, PhaseResult, Value};
use crate::sys;

/// Warns when the port does not have exactly one listening process: a leftover SO_REUSEPORT
/// server would silently take a share of the connections. Counts processes rather than sockets
/// because one server may hold one SO_REUSEPORT listener per I/O thread.
fn check_listeners(port: u16, what: &str, server_pid: Option<u32>) {
    let output = Process::new("ss").args(["-tlnpH", &format!("( sport = :{port} )")]).output();
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

pub struct Run {
    pub options: Options,
    pub workers: Workers,
    pub results: Vec<PhaseResult>,
    /// Lost + duplicated + reordered + unexpected messages over all phases.
    pub anomalies: u64,
    /// Memory figures from before any connection (idle phase).
    pub before: Option<sys::MemSample>,
}

/// What the clients saw of one phase's messages.
pub struct Delivery {
    pub report: Report,
    pub lost: u64,
    pub unexpected: u64,
    pub dup: u64,
    pub reordered: u64,
    pub latency: Histogram,
    /// The JSON fields for the above.
    pub checks: Vec<(&'static str, Value)>,
}

pub fn run(options: Options) -> Result<i32, String> {
    if options.phases.is_empty() {
        return Err("no phases selected".into());
    }
    // Node k's WebSocket and admin ports belong to --server-pid number k.
    for (node, target) in options.targets.iter().enumerate() {
        check_listeners(target.addr.port(), "WebSocket", options.server_pids.get(node).copied());
    }
    if options.phases.iter().any(|p| {
        matches!(p, Phase::Idle | Phase::Publish | Phase::Broadcast | Phase::Resume | Phase::Soak | Phase::Storm)
    }) {
        for (node, admin) in options.admins.iter().enumerate() {
            check_listeners(admin.port(), "admin", options.server_pids.get(node).copied());
        }
    }
    let before = if options.phases.contains(&Phase::Idle) {
        // One admin request to each node first, so the admin channel's own fixed cost (its
        // thread, buffers) is in the baseline and not charged to the WebSocket connections.
        for &admin in &options.admins {
            crate::peer::post(&options, &mut AdminClient::new(admin), "/broadcast", b"warm-up")
                .map_err(|e| format!("admin API at {admin} not answering: {e}"))?;
        }
        Some(
            sys::sample_memory(&options.server_pids, options.redis_pid, options.redis_addr)
                .map_err(|e| format!("cannot sample memory: {e}"))?,
        )
    } else {
        None
    };
    if !options.json {
        eprintln!(
            "loadgen: {} connections ({} users x {} tabs) to {} over {} worker(s){}",
            options.conns,
            options.conns.div_ceil(options.tabs),
            options.tabs,
            options.urls(),
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
                Phase::Resume => self.resume()?,
                Phase::SoakWarmup => continue,
            };
            if !self.options.json {
                eprintln!("[{}] done: {}", phase.name(), result.headline);
            }
            self.results.push(result);
        }
        Ok(())
    }

    pub fn padded_payload(&self, mut payload: String) -> Vec<u8> {
        if payload.len() < self.options.payload_bytes {
            payload.push(' ');
            while payload.len() < self.options.payload_bytes {
                payload.push('.');
            }
        }
        payload.into_bytes()
    }

    /// Polls until `done` holds or nothing changed for `quiet` (judged on `progress_key`).
    pub fn wait_until(
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

    /// Waits until every expected `which` ("pub" or "bcast") message arrived or nothing moved for
    /// --drain-secs, then tallies loss, duplicates, reordering and latency over all workers.
    pub fn await_deliveries(&mut self, phase: Phase, stream: Stream, progress: &str) -> Result<Delivery, String> {
        let which = match stream {
            Stream::Pub => "pub",
            _ => "bcast",
        };
        let quiet = Duration::from_secs_f64(self.options.drain_secs);
        let (distinct, expected) = (format!("{which}_distinct"), format!("{which}_expected"));
        let report = self.wait_until(
            phase,
            quiet,
            &distinct,
            |r| r.get(&distinct) >= r.get(&expected),
            |r| format!("{progress}{}/{} delivered", r.get(&distinct), r.get(&expected)),
        )?;
        let (lost, unexpected) = self.final_tally(stream)?;
        let latency = self.workers.histogram(stream, false)?;
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

    fn final_tally(&mut self, stream: Stream) -> Result<(u64, u64), String> {
        let (mut lost, mut unexpected) = (0, 0);
        for answer in self.workers.ask_all(&Command::Final { stream }, "final")? {
            if let Answer::Final { lost: worker_lost, unexpected: worker_unexpected } = answer {
                lost += worker_lost;
                unexpected += worker_unexpected;
            }
        }
        Ok((lost, unexpected))
    }

    /// Waits until the workers `from` have no connection left to start or handshaking (or
    /// nothing resolved for --connect-timeout + 5 s); returns their summed report.
    pub fn wait_resolved(&mut self, phase: Phase, from: &[usize], what: &str) -> Result<Report, String> {
        let quiet = Duration::from_secs_f64(self.options.connect_timeout + 5.0);
        let started = Instant::now();
        let mut last_print = Instant::now();
        let mut last_change = Instant::now();
        let mut last_resolved = u64::MAX;
        loop {
            let report = self.workers.report_from(from)?;
            if report.get("pending") == 0 && report.get("inflight") == 0 {
                return Ok(report);
            }
            let resolved =
                ["connected", "refused", "timeout", "http", "reset", "other"].iter().map(|k| report.get(k)).sum();
            if resolved != last_resolved {
                last_resolved = resolved;
                last_change = Instant::now();
            } else if last_change.elapsed() >= quiet {
                return Ok(report);
            }
            progress(phase, &mut last_print, || {
                format!(
                    "{what} {:.1} s: {} open, {} handshaking, {} x 503, {} other failures",
                    started.elapsed().as_secs_f64(),
                    report.get("open"),
                    report.get("inflight") + report.get("pending"),
                    report.get("http_503"),
                    resolved - report.get("connected") - report.get("http_503"),
                )
            });
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The servers' and Redis's CPU seconds at the start of a phase (--server-pid, --redis-pid).
pub struct CpuMark {
    servers: Option<Vec<f64>>,
    redis: Option<f64>,
    at: Instant,
}

/// CPU used over a phase: each server's seconds and Redis's, plus the wall time.
pub struct CpuUsed {
    /// Per node, in --server-pid order (empty without --server-pid).
    pub servers: Vec<f64>,
    pub redis: Option<f64>,
    pub wall_secs: f64,
}

impl CpuMark {
    pub fn now(o: &Options) -> CpuMark {
        CpuMark {
            servers: sys::cpu_seconds_each(&o.server_pids),
            redis: o.redis_pid.and_then(|pid| sys::cpu_seconds(pid).ok()),
            at: Instant::now(),
        }
    }

    pub fn used(&self, o: &Options) -> CpuUsed {
        let servers = match (&self.servers, sys::cpu_seconds_each(&o.server_pids)) {
            (Some(before), Some(after)) => after.iter().zip(before).map(|(a, b)| a - b).collect(),
            _ => Vec::new(),
        };
        let redis = o.redis_pid.and_then(|pid| Some(sys::cpu_seconds(pid).ok()? - self.redis?));
        CpuUsed { servers, redis, wall_secs: self.at.elapsed().as_secs_f64() }
    }
}

impl CpuUsed {
    /// The servers' CPU seconds together (None without --server-pid).
    pub fn server_total(&self) -> Option<f64> {
        (!self.servers.is_empty()).then(|| self.servers.iter().sum())
    }

    /// JSON fields and a text fragment; `per` = how many messages the phase handled (publishes),
    /// for CPU per 1,000 of them.
    pub fn report(&self, per: u64, what: &str) -> (Vec<(&'static str, Value)>, String) {
        let mut fields = Vec::new();
        let mut text = String::new();
        let per_k = |cpu: f64| cpu * 1000.0 / per.max(1) as f64;
        if let Some(total) = self.server_total() {
            if self.servers.len() > 1 {
                fields.push((
                    "server_cpu_secs_per_node",
                    Value::List(self.servers.iter().map(|&c| Value::Float(c)).collect()),
                ));
                let each: Vec<String> = self.servers.iter().map(|c| format!("{c:.2}")).collect();
                text.push_str(&format!(
                    "; servers CPU {total:.2} s ({} s per node) = {:.3} s per 1000 {what}",
                    each.join(" + "),
                    per_k(total)
                ));
            } else {
                text.push_str(&format!("; server CPU {total:.2} s = {:.3} s per 1000 {what}", per_k(total)));
            }
            fields.push(("server_cpu_secs_per_1000", Value::Float(per_k(total))));
            fields.push(("server_cpu_pct_of_one_core", Value::Float(total * 100.0 / self.wall_secs.max(1e-9))));
        }
        if let Some(redis) = self.redis {
            let pct = redis * 100.0 / self.wall_secs.max(1e-9);
            fields.push(("redis_cpu_secs", Value::Float(redis)));
            fields.push(("redis_cpu_secs_per_1000", Value::Float(per_k(redis))));
            fields.push(("redis_cpu_pct_of_one_core", Value::Float(pct)));
            text.push_str(&format!(
                "; Redis CPU {redis:.2} s = {:.3} s per 1000 {what} ({pct:.1}% of a core)",
                per_k(redis)
            ));
        }
        fields.push(("cpu_wall_secs", Value::Float(self.wall_secs)));
        (fields, text)
    }
}
