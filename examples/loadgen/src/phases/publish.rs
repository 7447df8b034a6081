//! The publish phase: publishes to random users at --publish-rate; order, loss, duplicates and
//! publish-to-delivery latency per connection; with --server-pid, the server's CPU per publish.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cli::Phase;
use crate::lanes::{Lanes, Published};
use crate::protocol::{Command, Stream};
use crate::report::{format_ns, latency_fields, latency_text, progress, PhaseResult, Value};
use crate::run::{CpuMark, Delivery, Run};
use crate::sys;

impl Run {
    pub fn publish(&mut self) -> Result<PhaseResult, String> {
        let o = self.options.clone();
        let users = o.conns.div_ceil(o.tabs);
        let cpu_mark = CpuMark::now(&o);
        let stop_at = Instant::now() + Duration::from_secs_f64(o.publish_secs);
        let start = Instant::now();
        let start_ns = sys::mono_ns();
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
        let lane_count = lanes.count();
        let Published { sent, ok, errors, delivered_claimed, delivered_mismatch, max_lag_ns, request_latency, .. } =
            lanes.join()?;
        let send_secs = start.elapsed().as_secs_f64();
        for index in 0..self.workers.ranges.len() {
            let (first, count) = self.workers.ranges[index];
            let first_user = first / o.tabs;
            let last_user = (first + count - 1) / o.tabs;
            let counts = sent[first_user..=last_user].to_vec();
            self.workers.send(index, &Command::ExpectPub { first_user, counts })?;
        }
        self.workers.collect("ok")?;
        let Delivery { report, lost, unexpected, dup, reordered, latency, checks } =
            self.await_deliveries(Phase::Publish, Stream::Pub, "draining: ")?;
        // Publishing and delivering, admin HTTP included; the idle connections' pings too.
        let end_ns = sys::mono_ns();
        let used = cpu_mark.used(&o);
        let cpu = used.server_total();
        let rate = ok as f64 / send_secs.max(1e-9);
        let mut fields = vec![
            ("published", Value::Int(ok)),
            ("publish_errors", Value::Int(errors)),
            ("publish_rate_target", Value::Float(o.publish_rate)),
            ("publish_rate", Value::Float(rate)),
            ("secs", Value::Float(send_secs)),
            // CLOCK_MONOTONIC bounds of the phase (publishing and draining), to line it up with
            // samples taken outside (other processes' CPU, e.g. benches/centrifugo.sh).
            ("start_mono_ns", Value::Int(start_ns)),
            ("end_mono_ns", Value::Int(end_ns)),
            ("lanes", Value::Int(lane_count as u64)),
            ("max_schedule_lag_ns", Value::Int(max_lag_ns)),
            ("server_delivered", Value::Int(delivered_claimed)),
            ("server_delivered_mismatch", Value::Int(delivered_mismatch)),
            ("expected", Value::Int(report.get("pub_expected"))),
            ("received", Value::Int(report.get("pub_recv"))),
        ];
        fields.extend(checks);
        fields.push(("admin_request_p50_ns", Value::Int(request_latency.quantile(0.5))));
        fields.push(("admin_request_p99_ns", Value::Int(request_latency.quantile(0.99))));
        if let Some(cpu) = cpu {
            fields.push(("server_cpu_secs", Value::Float(cpu)));
            fields.push(("server_cpu_us_per_publish", Value::Float(cpu * 1e6 / ok.max(1) as f64)));
        }
        let (cpu_fields, mut cpu_text) = used.report(ok, "publishes");
        fields.extend(cpu_fields);
        if o.targets.len() > 1 {
            // Deliveries to a connection on another node than the admin API the publish went
            // through: through the broker (a subset of the latency above).
            let remote = self.workers.histogram(Stream::PubRemote, false)?;
            fields.push(("cross_node_deliveries", Value::Int(remote.count())));
            fields.extend(latency_fields("cross_node_latency", &remote));
            cpu_text.push_str(&format!("; {} cross-node: {}", remote.count(), latency_text("latency", &remote)));
        }
        // What the broker holds now: the history of the messages just published.
        if let Some(addr) = o.redis_addr {
            let used_memory = sys::redis_used_memory(addr).map_err(|e| format!("Redis INFO at {addr}: {e}"))?;
            fields.push(("redis_used_memory_after", Value::Int(used_memory)));
            let most = sent.iter().copied().max().unwrap_or(0);
            fields.push(("max_publishes_per_user", Value::Int(most as u64)));
            if let Some(before) = self.before.as_ref().and_then(|b| b.redis_used_memory) {
                cpu_text.push_str(&format!(
                    "; Redis used_memory {} MiB (+{:.0} B per publish since before connecting)",
                    used_memory / (1 << 20),
                    (used_memory as f64 - before as f64) / ok.max(1) as f64
                ));
            }
        }
        Ok(PhaseResult {
            phase: Phase::Publish,
            headline: format!("{ok} @ {rate:.0}/s, lost {lost}, dup {dup}, reordered {reordered}"),
            details: format!(
                "{} of {} deliveries{}{}; {}; admin request p50 {}, p99 {}{cpu_text}",
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
}
