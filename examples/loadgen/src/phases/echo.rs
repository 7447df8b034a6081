//! The echo phase: --echo-conns connections ping-pong 20-byte messages for --echo-secs; round
//! trip times and the server's CPU per message.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::cli::{Options, Phase};
use crate::protocol::{Command, Stream};
use crate::report::{latency_fields, latency_text, progress, PhaseResult, Value};
use crate::run::Run;
use crate::sys::{self, mono_ns};

impl Run {
    pub fn echo(&mut self) -> Result<PhaseResult, String> {
        let o = self.options.clone();
        let workers = self.workers.ranges.len();
        let cpu_before = servers_cpu(&o)?;
        let start_ns = mono_ns();
        let millis = (o.echo_secs * 1000.0).round() as u64;
        for index in 0..workers {
            let share = o.echo_conns / workers + usize::from(index < o.echo_conns % workers);
            self.workers.send(index, &Command::Echo { conns: share, millis })?;
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
        let cpu_after = servers_cpu(&o)?;
        let rtt = self.workers.histogram(Stream::Echo, false)?;
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

/// CPU seconds of all servers together (several --server-pid: the echo is local to each node);
/// None without a --server-pid.
fn servers_cpu(o: &Options) -> Result<Option<f64>, String> {
    o.server_pids
        .iter()
        .map(|&pid| sys::cpu_seconds(pid))
        .sum::<std::io::Result<f64>>()
        .map(|cpu| (!o.server_pids.is_empty()).then_some(cpu))
        .map_err(|e| format!("cannot read server CPU: {e}"))
}
