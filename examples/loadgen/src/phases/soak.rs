//! The soak phase: every connection opens, publishes flow for a long time while a share of the
//! clients is killed with an RST and reconnects at every churn, then everyone leaves. Checks each
//! incarnation's messages and that the server's memory and descriptors come back. See SOAK in
//! `loadgen --help` for the exact rules.

use std::time::{Duration, Instant};

use crate::admin::AdminClient;
use crate::cli::Phase;
use crate::hist::Histogram;
use crate::lanes::{Lanes, Published};
use crate::protocol::{Answer, Command, End, Incarnation, Stream};
use crate::report::{format_kib, latency_fields, latency_text, progress, PhaseResult, Value};
use crate::run::{CpuMark, Run};
use crate::sys;

/// The server's memory and descriptors at one moment.
/// All servers' figures (several --server-pid: RssAnon summed, fds per node).
#[derive(Clone)]
struct ServerSample {
    rss_anon_kib: u64,
    fds: u64,
    fds_each: Vec<u64>,
}

/// What one round (warm-up or soak) showed.
#[derive(Default)]
struct Round {
    secs: f64,
    published: u64,
    publish_errors: u64,
    /// Distinct publishes received, all incarnations together.
    delivered: u64,
    /// Publishes live incarnations had to receive.
    expected: u64,
    /// Numbers missing between the first and last an incarnation received.
    holes: u64,
    /// Numbers a live incarnation had to receive outside the span it received.
    missing: u64,
    duplicated: u64,
    reordered: u64,
    /// Numbers above the last one published to the user.
    unexpected: u64,
    killed: u64,
    reconnects: u64,
    connect_failures: u64,
    closed_by_server: u64,
    incarnations: u64,
    live: u64,
    latency: Histogram,
}

impl Round {
    fn lost(&self) -> u64 {
        self.holes + self.missing
    }

    fn anomalies(&self) -> u64 {
        self.lost() + self.duplicated + self.reordered + self.unexpected + self.connect_failures + self.closed_by_server
    }

    fn headline(&self) -> String {
        format!(
            "{} published, {} delivered, lost {}, dup {}, reordered {}, {} reconnects",
            self.published,
            self.delivered,
            self.lost(),
            self.duplicated,
            self.reordered,
            self.reconnects
        )
    }

    fn details(&self) -> String {
        format!(
            "{:.1} s; {} incarnations ({} live at the end) had to receive {} (lost: {} holes + {} missing); \
             {} killed; connect failures {}, closed by server {}, unexpected {}, publish errors {}; {}",
            self.secs,
            self.incarnations,
            self.live,
            self.expected,
            self.holes,
            self.missing,
            self.killed,
            self.connect_failures,
            self.closed_by_server,
            self.unexpected,
            self.publish_errors,
            latency_text("latency", &self.latency)
        )
    }

    fn fields(&self) -> Vec<(&'static str, Value)> {
        let mut fields = vec![
            ("secs", Value::Float(self.secs)),
            ("published", Value::Int(self.published)),
            ("publish_errors", Value::Int(self.publish_errors)),
            ("delivered", Value::Int(self.delivered)),
            ("expected", Value::Int(self.expected)),
            ("lost", Value::Int(self.lost())),
            ("lost_holes", Value::Int(self.holes)),
            ("lost_missing", Value::Int(self.missing)),
            ("duplicated", Value::Int(self.duplicated)),
            ("reordered", Value::Int(self.reordered)),
            ("unexpected", Value::Int(self.unexpected)),
            ("killed", Value::Int(self.killed)),
            ("reconnects", Value::Int(self.reconnects)),
            ("connect_failures", Value::Int(self.connect_failures)),
            ("closed_by_server", Value::Int(self.closed_by_server)),
            ("incarnations", Value::Int(self.incarnations)),
            ("live_incarnations", Value::Int(self.live)),
        ];
        fields.extend(latency_fields("latency", &self.latency));
        fields
    }
}

/// Folds one incarnation into the round's tally: holes in what it received, and for a live one,
/// the required publishes (started at least `grace_ns` after its 101, through the last) outside
/// the span it received.
fn judge(round: &mut Round, inc: &Incarnation, sent: u32, times: &[u64], grace_ns: u64) {
    round.incarnations += 1;
    round.delivered += inc.distinct as u64;
    if inc.first > 0 {
        round.holes += ((inc.last - inc.first + 1) as u64).saturating_sub(inc.distinct as u64);
        round.unexpected += inc.last.saturating_sub(sent) as u64;
    }
    match inc.end {
        End::Live => round.live += 1,
        End::ServerClosed => return round.closed_by_server += 1,
        End::Killed => return, // only the holes above count
    }
    // Send times of one user's publishes only grow: each user belongs to one publishing lane,
    // which waits for each response before the next request.
    let first_required = times.partition_point(|&t| t < inc.opened_ns.saturating_add(grace_ns)) as u32 + 1;
    if first_required > sent {
        return;
    }
    let required = (sent - first_required + 1) as u64;
    round.expected += required;
    let covered = if inc.first == 0 {
        0
    } else {
        let low = inc.first.max(first_required);
        let high = inc.last.min(sent);
        if high >= low {
            (high - low + 1) as u64
        } else {
            0
        }
    };
    round.missing += required - covered;
}

impl Run {
    pub fn soak(&mut self) -> Result<PhaseResult, String> {
        let o = self.options.clone();
        if o.server_pids.is_empty() {
            return Err("the soak phase needs --server-pid".into());
        }
        let cpu_mark = CpuMark::now(&o);
        self.workers.send_all(&Command::SoakMode)?;
        // One admin request to each node first, so the admin API's own fixed cost (its thread,
        // buffers) is in the baseline and not charged to the WebSocket connections.
        for &admin in &o.admins {
            AdminClient::new(admin).get("/stats").map_err(|e| format!("admin API at {admin} not answering: {e}"))?;
        }
        let before = self.sample_server(None)?;
        eprintln!("[soak] before any connection: server RssAnon {} KiB, {} open fds", before.rss_anon_kib, before.fds);

        // The warm-up churns once, halfway, whatever the period.
        let warm = self.soak_round("warm-up", o.warmup_secs, &[o.warmup_secs / 2.0], Command::Connect)?;
        self.everyone_leaves()?;
        let warmed = self.sample_server(Some(&before.fds_each))?;
        eprintln!("[soak] after the warm-up: server RssAnon {} KiB, {} open fds", warmed.rss_anon_kib, warmed.fds);
        self.anomalies += warm.anomalies();
        self.results.push(PhaseResult {
            phase: Phase::SoakWarmup,
            headline: warm.headline(),
            details: warm.details(),
            fields: warm.fields(),
        });

        let churns: Vec<f64> =
            (0..).map(|k| (k as f64 + 0.5) * o.churn_secs).take_while(|&at| at < o.soak_secs).collect();
        let soak = self.soak_round("soak", o.soak_secs, &churns, Command::Reconnect)?;
        self.everyone_leaves()?;
        let after = self.sample_server(Some(&before.fds_each))?;
        eprintln!("[soak] after everyone left: server RssAnon {} KiB, {} open fds", after.rss_anon_kib, after.fds);
        self.anomalies += soak.anomalies();

        let growth_pct =
            (after.rss_anon_kib as f64 - warmed.rss_anon_kib as f64) * 100.0 / warmed.rss_anon_kib.max(1) as f64;
        let memory_ok = growth_pct <= o.rss_tolerance_pct;
        let fds_ok = after.fds_each == before.fds_each;
        self.anomalies += u64::from(!memory_ok) + u64::from(!fds_ok);
        if !memory_ok {
            eprintln!(
                "loadgen: soak: server RssAnon grew {growth_pct:.2}% over the post-warm-up baseline \
                 (allowed {}%)",
                o.rss_tolerance_pct
            );
        }
        if !fds_ok {
            eprintln!(
                "loadgen: soak: server(s) hold {:?} open fds, {:?} before any connection",
                after.fds_each, before.fds_each
            );
        }
        let mut fields = soak.fields();
        let (cpu_fields, cpu_text) = cpu_mark.used(&o).report(soak.published, "publishes");
        fields.extend(cpu_fields);
        fields.extend([
            ("rss_anon_before_kib", Value::Int(before.rss_anon_kib)),
            ("rss_anon_warm_kib", Value::Int(warmed.rss_anon_kib)),
            ("rss_anon_after_kib", Value::Int(after.rss_anon_kib)),
            ("rss_anon_growth_pct", Value::Float(growth_pct)),
            ("memory_ok", Value::Int(u64::from(memory_ok))),
            ("fds_before", Value::Int(before.fds)),
            ("fds_warm", Value::Int(warmed.fds)),
            ("fds_after", Value::Int(after.fds)),
            ("fds_ok", Value::Int(u64::from(fds_ok))),
        ]);
        let details = format!(
            "{}; server RssAnon before {} / after warm-up {} / after {} ({growth_pct:+.2}% vs warm-up, {}), \
             open fds {} / {} / {} ({})",
            soak.details(),
            format_kib(before.rss_anon_kib as f64),
            format_kib(warmed.rss_anon_kib as f64),
            format_kib(after.rss_anon_kib as f64),
            if memory_ok { "ok" } else { "TOO MUCH" },
            before.fds,
            warmed.fds,
            after.fds,
            if fds_ok { "ok" } else { "LEAK" },
        ) + &cpu_text;
        Ok(PhaseResult { phase: Phase::Soak, headline: soak.headline(), details, fields })
    }

    /// One round: everyone connects (`connect_command`: `Connect` the first time, `Reconnect`
    /// after a `Leave`), publishes flow for `secs` with a churn at each of `churns` (seconds
    /// into the round), then the drain and the per-incarnation check. The connections stay open.
    fn soak_round(&mut self, name: &str, secs: f64, churns: &[f64], connect_command: Command) -> Result<Round, String> {
        let o = self.options.clone();
        let start = self.workers.report()?;
        self.workers.send_all(&connect_command)?;
        let everyone: Vec<usize> = (0..self.workers.ranges.len()).collect();
        self.wait_resolved(Phase::Soak, &everyone, name)?;
        let users = o.conns.div_ceil(o.tabs);
        let started = Instant::now();
        let lanes = Lanes::start(&o, users, o.conns, started + Duration::from_secs_f64(secs), true);
        let mut churns = churns.iter().copied().peekable();
        let mut last_print = Instant::now();
        while !lanes.finished() {
            if churns.next_if(|&at| started.elapsed().as_secs_f64() >= at).is_some() {
                let answers = self.workers.ask_all(&Command::Churn { fraction: o.churn_fraction }, "churned")?;
                let killed: u64 = answers
                    .iter()
                    .map(|answer| match answer {
                        Answer::Churned { killed } => *killed,
                        _ => 0,
                    })
                    .sum();
                eprintln!(
                    "[soak] {name} {:.0} s: killed {killed} connections with an RST",
                    started.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
            if last_print.elapsed() >= Duration::from_secs(1) {
                let report = self.workers.report()?;
                progress(Phase::Soak, &mut last_print, || {
                    format!(
                        "{name} {:.0} s: {} published, {} received, {} open, {} reconnecting",
                        started.elapsed().as_secs_f64(),
                        lanes.sent_total.load(std::sync::atomic::Ordering::Relaxed),
                        report.get("pub_recv") - start.get("pub_recv"),
                        report.get("open"),
                        report.get("pending") + report.get("inflight"),
                    )
                });
            }
        }
        let published = lanes.join()?;
        let send_secs = started.elapsed().as_secs_f64();
        // The last churn's reconnects finish before anything is judged.
        self.wait_resolved(Phase::Soak, &everyone, name)?;
        self.tell_sent(&published)?;
        let quiet = Duration::from_secs_f64(o.drain_secs);
        let report = self.wait_until(
            Phase::Soak,
            quiet,
            "pub_recv",
            |r| r.get("soak_behind") == 0,
            |r| format!("{name}: draining, {} live connections still missing publishes", r.get("soak_behind")),
        )?;
        let delta = |key: &str| report.get(key) - start.get(key);
        let mut round = Round {
            secs: send_secs,
            published: published.ok,
            publish_errors: published.errors,
            duplicated: delta("pub_dup"),
            reordered: delta("pub_reordered"),
            killed: delta("killed"),
            reconnects: delta("reconnects"),
            connect_failures: ["refused", "timeout", "http", "reset", "other"].iter().map(|k| delta(k)).sum(),
            latency: self.workers.histogram(Stream::Pub, true)?,
            ..Round::default()
        };
        let grace_ns = (o.soak_grace_ms * 1e6) as u64;
        for answer in self.workers.records(&Command::Incarnations, "inc", "incs_end")? {
            let Answer::Inc { incarnation: inc } = answer else { continue };
            let (sent, times) = match (published.sent.get(inc.user), published.times.get(inc.user)) {
                (Some(&sent), Some(times)) => (sent, times.as_slice()),
                _ => (0, &[][..]),
            };
            judge(&mut round, &inc, sent, times, grace_ns);
        }
        // Server-closed connections are also counted from the workers' counters, which see
        // ones that broke before any record could be made.
        round.closed_by_server = round.closed_by_server.max(delta("closed_by_peer"));
        eprintln!("[soak] {name} done: {}", round.headline());
        Ok(round)
    }

    /// Tells each worker how many publishes each of its users was sent, and when the last one.
    fn tell_sent(&mut self, published: &Published) -> Result<(), String> {
        let o = &self.options;
        let grace_ns = (o.soak_grace_ms * 1e6) as u64;
        for index in 0..self.workers.ranges.len() {
            let (first, count) = self.workers.ranges[index];
            let first_user = first / o.tabs;
            let last_user = (first + count - 1) / o.tabs;
            let users = (first_user..=last_user)
                .map(|user| (published.sent[user], published.times[user].last().copied().unwrap_or(0)))
                .collect();
            self.workers.send(index, &Command::ExpectSoak { grace_ns, first_user, users })?;
        }
        self.workers.collect("ok")?;
        Ok(())
    }

    /// Every client closes its connection; returns once /stats shows no connection left on
    /// any node.
    fn everyone_leaves(&mut self) -> Result<(), String> {
        self.workers.ask_all(&Command::Leave, "left")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for &addr in &self.options.admins {
            let mut admin = AdminClient::new(addr);
            loop {
                let stats = admin.get("/stats").map_err(|e| format!("GET /stats at {addr} failed: {e}"))?;
                let open = stats.json_number("connections").unwrap_or(u64::MAX);
                let handshaking = stats.json_number("handshakes").unwrap_or(u64::MAX);
                if open == 0 && handshaking == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "30 s after every client left the server at {addr} still reports {open} open and \
                         {handshaking} handshaking connections"
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Every server's RssAnon and open fds after --settle-secs. With `fds_target` (per server),
    /// first waits up to 10 s for the fd counts to reach it (admin connections and sockets
    /// close asynchronously).
    fn sample_server(&self, fds_target: Option<&[u64]>) -> Result<ServerSample, String> {
        std::thread::sleep(Duration::from_secs_f64(self.options.settle_secs));
        let pids = &self.options.server_pids;
        let read_fds = || {
            pids.iter()
                .map(|&pid| sys::open_fds(pid).map_err(|e| format!("cannot read /proc/{pid}/fd: {e}")))
                .collect::<Result<Vec<u64>, String>>()
        };
        let mut fds_each = read_fds()?;
        if let Some(target) = fds_target {
            let deadline = Instant::now() + Duration::from_secs(10);
            while fds_each != target && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                fds_each = read_fds()?;
            }
        }
        let mut rss_anon_kib = 0;
        for &pid in pids {
            rss_anon_kib += sys::rss_anon_kib(pid).map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
        }
        Ok(ServerSample { rss_anon_kib, fds: fds_each.iter().sum(), fds_each })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(end: End, opened_ns: u64, first: u32, last: u32, distinct: u32) -> Incarnation {
        Incarnation { user: 0, opened_ns, end, first, last, distinct }
    }

    #[test]
    fn judge_counts_holes_and_required_publishes() {
        // Publishes 1..=5 to the user, started at t = 10, 20, 30, 40, 50.
        let times = [10, 20, 30, 40, 50];
        // Opened at 25: 3, 4, 5 required; it got 3..=5.
        let mut round = Round::default();
        judge(&mut round, &inc(End::Live, 25, 3, 5, 3), 5, &times, 0);
        assert_eq!((round.expected, round.lost(), round.delivered), (3, 0, 3));
        // Got 2..=5 (2 was sent before the 101 but arrived: allowed) with 4 missing: one hole.
        let mut round = Round::default();
        judge(&mut round, &inc(End::Live, 25, 2, 5, 3), 5, &times, 0);
        assert_eq!((round.holes, round.missing), (1, 0));
        // Got only 4..=5: 3 is missing; a 10 ns grace excuses it.
        let mut round = Round::default();
        judge(&mut round, &inc(End::Live, 25, 4, 5, 2), 5, &times, 0);
        assert_eq!((round.holes, round.missing), (0, 1));
        let mut round = Round::default();
        judge(&mut round, &inc(End::Live, 25, 4, 5, 2), 5, &times, 10);
        assert_eq!(round.lost(), 0);
        // Nothing received although 5 was sent after the 101: missing.
        let mut round = Round::default();
        judge(&mut round, &inc(End::Live, 45, 0, 0, 0), 5, &times, 0);
        assert_eq!(round.missing, 1);
        // Killed: the end need not arrive, but a hole still counts.
        let mut round = Round::default();
        judge(&mut round, &inc(End::Killed, 5, 1, 3, 2), 5, &times, 0);
        assert_eq!((round.expected, round.holes, round.missing), (0, 1, 0));
    }
}
