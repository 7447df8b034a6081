//! The resume phase (wspush.v1): every client drops (RST or clean close), --missed messages are
//! published to each user while they are away, and every client reconnects with `since`: each
//! must be told it recovered and get exactly the missed messages, in order at the right
//! offsets, then a live one at the next offset. See RESUME in `loadgen --help`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::admin::AdminClient;
use crate::cli::{Options, Phase};
use crate::hist::Histogram;
use crate::protocol::{Answer, Command, Stream};
use crate::report::{format_kib, format_ns, PhaseResult, Value};
use crate::run::Run;
use crate::sys::{self, mono_ns};

/// The /stats gauges and counters the phase reports (before and after).
const STATS: [&str; 7] = [
    "connections",
    "history_users",
    "history_messages",
    "history_bytes",
    "resumes_total",
    "recoveries_total",
    "recovery_failures_total",
];

/// How long the server may take to notice that every dropped connection is gone.
const GONE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one round of publishes (one or more messages to every user) did.
#[derive(Default)]
struct Round {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// Publishes answered with a non-zero `delivered` (the user still had a connection).
    delivered_nonzero: u64,
    /// Publishes answered without an `offset` (history off?).
    without_offset: u64,
    secs: f64,
}

/// Publishes `r SEQ T` for every SEQ in `seqs` to every user u0..u{users-1}, one SEQ to all
/// users before the next, over --admin-conns keep-alive connections (user u always on
/// connection u % lanes, so each user's publishes stay in order).
fn publish_round(o: &Options, users: usize, seqs: std::ops::RangeInclusive<u32>) -> Result<Round, String> {
    let lanes = o.admin_conns.min(users).max(1);
    let start = Instant::now();
    let handles: Vec<_> = (0..lanes)
        .map(|lane| {
            let (o, seqs) = (o.clone(), seqs.clone());
            std::thread::spawn(move || {
                let mut admin = AdminClient::new(o.admin);
                let mut round = Round::default();
                for seq in seqs {
                    for user in (lane..users).step_by(lanes) {
                        let body = format!("r {seq} {}", mono_ns());
                        match admin.post(&format!("/publish?user=u{user}"), body.as_bytes()) {
                            Ok(response) if response.status == 200 => {
                                round.ok += 1;
                                round.delivered_nonzero += u64::from(response.delivered().unwrap_or(0) > 0);
                                round.without_offset += u64::from(response.json_number("offset").is_none());
                            }
                            Ok(response) => {
                                round.errors += 1;
                                round.first_error.get_or_insert_with(|| {
                                    format!("HTTP {} {}", response.status, String::from_utf8_lossy(&response.body))
                                });
                            }
                            Err(e) => {
                                round.errors += 1;
                                round.first_error.get_or_insert_with(|| e.to_string());
                                if round.errors >= 100 {
                                    return round;
                                }
                            }
                        }
                    }
                }
                round
            })
        })
        .collect();
    let mut all = Round::default();
    for handle in handles {
        let round = handle.join().map_err(|_| "publish thread panicked".to_string())?;
        all.ok += round.ok;
        all.errors += round.errors;
        all.delivered_nonzero += round.delivered_nonzero;
        all.without_offset += round.without_offset;
        all.first_error = all.first_error.or(round.first_error);
    }
    all.secs = start.elapsed().as_secs_f64();
    if let Some(error) = &all.first_error {
        eprintln!("loadgen: resume: {} publish errors, first: {error}", all.errors);
    }
    Ok(all)
}

/// The phase's /stats fields, 0 where the server does not report one.
fn server_stats(admin: &mut AdminClient) -> Result<Vec<u64>, String> {
    let response = admin.get("/stats").map_err(|e| format!("GET /stats failed: {e}"))?;
    if response.status != 200 {
        return Err(format!("GET /stats answered HTTP {}", response.status));
    }
    Ok(STATS.iter().map(|key| response.json_number(key).unwrap_or(0)).collect())
}

fn rss_kib(o: &Options) -> Option<u64> {
    o.server_pid.and_then(|pid| sys::rss_anon_kib(pid).ok())
}

impl Run {
    pub fn resume(&mut self) -> Result<PhaseResult, String> {
        let o = self.options.clone();
        let missed = o.missed;
        let users = o.conns.div_ceil(o.tabs);
        let quiet = Duration::from_secs_f64(o.drain_secs.max(1.0));
        let mut admin = AdminClient::new(o.admin);

        // Every open client must have its welcome (epoch and offset) before it goes.
        let start = self.wait_until(
            Phase::Resume,
            quiet,
            "v1_welcomes",
            |r| r.get("v1_welcomes") >= r.get("open"),
            |r| format!("{}/{} welcomes", r.get("v1_welcomes"), r.get("open")),
        )?;
        let open = start.get("open");
        let welcomes_missing = open.saturating_sub(start.get("v1_welcomes"));
        let stats_before = server_stats(&mut admin)?;
        let rss_before = rss_kib(&o);

        // All go away; the server must notice before anything is published.
        let drop_start = Instant::now();
        let dropped: u64 = self
            .workers
            .ask_all(&Command::Drop { rst: o.drop_rst }, "dropped")?
            .iter()
            .map(|answer| if let Answer::Dropped { count } = answer { *count } else { 0 })
            .sum();
        if !o.drop_rst {
            self.wait_until(
                Phase::Resume,
                quiet,
                "closing",
                |r| r.get("closing") == 0,
                |r| format!("{} clean closes not ended by the server yet", r.get("closing")),
            )?;
        }
        let server_open_before = stats_before[0];
        let mut server_gone = false;
        let gone_deadline = Instant::now() + GONE_TIMEOUT;
        let mut server_open = server_open_before;
        while Instant::now() < gone_deadline {
            server_open = server_stats(&mut admin)?[0];
            if server_open + dropped <= server_open_before {
                server_gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let drop_secs = drop_start.elapsed().as_secs_f64();
        if !server_gone {
            eprintln!(
                "loadgen: resume: the server still counts {server_open} connections {GONE_TIMEOUT:?} after \
                 {dropped} of {server_open_before} dropped"
            );
        }

        // While they are away: messages 1..=missed to every user.
        let away = publish_round(&o, users, 1..=missed)?;
        let stats_away = server_stats(&mut admin)?;
        let rss_away = rss_kib(&o);

        // Everyone reconnects with `since`; done when each got its last missed message.
        let cpu_before = o.server_pid.and_then(|pid| sys::cpu_seconds(pid).ok());
        let resume_start_ns = mono_ns();
        self.workers.send_all(&Command::Resume { missed })?;
        let resumed = self.wait_until(
            Phase::Resume,
            Duration::from_secs_f64(o.connect_timeout + o.drain_secs),
            "resume_done",
            |r| r.get("resume_done") >= r.get("resume_clients") && r.get("pending") + r.get("inflight") == 0,
            |r| {
                format!(
                    "{}/{} reconnected, {}/{} recovered every missed message",
                    r.get("connected") - start.get("connected"),
                    r.get("resume_clients"),
                    r.get("resume_done"),
                    r.get("resume_clients")
                )
            },
        )?;
        let recover_wall_ns = resumed.get("last_resume_ns").saturating_sub(resume_start_ns);
        let cpu_after = o.server_pid.and_then(|pid| sys::cpu_seconds(pid).ok());
        let latency: Histogram = self.workers.histogram(Stream::Resume, false)?;
        let rss_resumed = rss_kib(&o);

        // Live continues after the replay, at the next offset.
        self.workers.ask_all(&Command::ExpectResume { count: missed + 1 }, "ok")?;
        let live = publish_round(&o, users, missed + 1..=missed + 1)?;
        let done = self.wait_until(
            Phase::Resume,
            quiet,
            "resume_distinct",
            |r| r.get("resume_distinct") >= r.get("resume_expected"),
            |r| format!("{}/{} resume messages", r.get("resume_distinct"), r.get("resume_expected")),
        )?;
        let (lost, unexpected) = self
            .workers
            .ask_all(&Command::Final { stream: Stream::Resume }, "final")?
            .iter()
            .fold((0, 0), |(l, u), answer| match answer {
                Answer::Final { lost, unexpected } => (l + lost, u + unexpected),
                _ => (l, u),
            });
        let stats_after = server_stats(&mut admin)?;

        let delta = |key: &str| done.get(key).saturating_sub(start.get(key));
        let clients = done.get("resume_clients");
        let recovered = done.get("resume_recovered");
        let failed_reconnects = ["refused", "timeout", "http", "reset", "other"].iter().map(|k| delta(k)).sum::<u64>();
        let counted = [
            ("lost", lost),
            ("duplicated", done.get("resume_dup")),
            ("reordered", done.get("resume_reordered")),
            ("unexpected", unexpected + done.get("resume_unexpected")),
            ("offset_gaps", done.get("offset_gaps")),
            ("offset_repeats", done.get("offset_repeats")),
            ("offset_mismatch", done.get("offset_mismatch")),
            ("epoch_changes", done.get("epoch_changes")),
            ("not_recovered", done.get("resume_not_recovered")),
            ("reconnects_failed", failed_reconnects),
            ("closed_by_server", delta("closed_by_peer")),
            ("bad_frames", done.get("v1_bad_frames")),
            ("welcomes_missing", welcomes_missing),
            ("close_forced", done.get("close_forced")),
            ("publish_errors", away.errors + live.errors),
            ("missed_without_offset", away.without_offset),
            ("server_not_gone", u64::from(!server_gone)),
        ];
        let anomalies: u64 = counted.iter().map(|(_, n)| n).sum::<u64>() + clients.abs_diff(dropped);
        self.anomalies += anomalies;

        let server_delta = |i: usize| stats_after[i].saturating_sub(stats_before[i]);
        let mut fields = vec![
            ("clients", Value::Int(open)),
            ("missed", Value::Int(missed as u64)),
            ("drop", Value::Text(if o.drop_rst { "rst" } else { "close" }.into())),
            ("dropped", Value::Int(dropped)),
            ("drop_secs", Value::Float(drop_secs)),
            ("published_away", Value::Int(away.ok)),
            ("publish_away_secs", Value::Float(away.secs)),
            ("publish_away_rate", Value::Float(away.ok as f64 / away.secs.max(1e-9))),
            ("delivered_while_away", Value::Int(away.delivered_nonzero)),
            ("resumed", Value::Int(clients)),
            ("recovered", Value::Int(recovered)),
            ("recovered_all_missed", Value::Int(resumed.get("resume_done"))),
            ("received", Value::Int(done.get("resume_recv"))),
            ("expected", Value::Int(done.get("resume_expected"))),
            ("live_published", Value::Int(live.ok)),
        ];
        fields.extend(counted.iter().map(|&(key, n)| (key, Value::Int(n))));
        fields.extend([
            ("recover_p50_ns", Value::Int(latency.quantile(0.5))),
            ("recover_p99_ns", Value::Int(latency.quantile(0.99))),
            ("recover_max_ns", Value::Int(latency.max())),
            ("recover_wall_secs", Value::Float(recover_wall_ns as f64 / 1e9)),
        ]);
        let mut details = format!(
            "{dropped} dropped ({}) in {drop_secs:.2} s; {} published while away in {:.2} s; {clients} reconnected, \
             {recovered} recovered; per client p50 {}, p99 {}, max {}; all in {}",
            if o.drop_rst { "RST" } else { "clean close" },
            away.ok,
            away.secs,
            format_ns(latency.quantile(0.5)),
            format_ns(latency.quantile(0.99)),
            format_ns(latency.max()),
            format_ns(recover_wall_ns),
        );
        if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
            let cpu = after - before;
            let _ = write!(details, "; server CPU {cpu:.2} s during the reconnect");
            fields.push(("server_cpu_secs", Value::Float(cpu)));
        }
        let rss_fields = [
            ("server_rss_anon_before_kib", rss_before),
            ("server_rss_anon_away_kib", rss_away),
            ("server_rss_anon_after_kib", rss_resumed),
        ];
        if let [(_, Some(before)), (_, Some(away_kib)), (_, Some(after))] = rss_fields {
            let _ = write!(
                details,
                "; server RssAnon {} before, {} after the publishes, {} after the resume",
                format_kib(before as f64),
                format_kib(away_kib as f64),
                format_kib(after as f64)
            );
        }
        fields.extend(rss_fields.iter().filter_map(|&(key, kib)| Some((key, Value::Int(kib?)))));
        for (i, key) in STATS.iter().enumerate().skip(1).take(3) {
            fields.push((*key, Value::Int(stats_away[i])));
        }
        fields.push(("server_resumes", Value::Int(server_delta(4))));
        fields.push(("server_recoveries", Value::Int(server_delta(5))));
        fields.push(("server_recovery_failures", Value::Int(server_delta(6))));
        let _ = write!(
            details,
            "; /stats after the publishes: history_users {}, history_messages {}, history_bytes {}; \
             resumes +{}, recoveries +{}, recovery failures +{}",
            stats_away[1],
            stats_away[2],
            stats_away[3],
            server_delta(4),
            server_delta(5),
            server_delta(6)
        );
        let problems: Vec<String> =
            counted.iter().filter(|(_, n)| *n > 0).map(|(key, n)| format!("{key} {n}")).collect();
        if !problems.is_empty() {
            let _ = write!(details, "; ANOMALIES: {}", problems.join(", "));
        }
        Ok(PhaseResult {
            phase: Phase::Resume,
            headline: format!(
                "{recovered}/{clients} recovered {missed} missed, lost {lost}, dup {}, reordered {}; p99 {}, all {}",
                done.get("resume_dup"),
                done.get("resume_reordered"),
                format_ns(latency.quantile(0.99)),
                format_ns(recover_wall_ns),
            ),
            details,
            fields,
        })
    }
}
