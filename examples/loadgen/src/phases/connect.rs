//! The connect phase: every worker opens its connections; handshakes/s and failures by kind.

use std::time::{Duration, Instant};

use crate::cli::Phase;
use crate::protocol::Command;
use crate::report::{PhaseResult, Value};
use crate::run::Run;
use crate::sys::mono_ns;

impl Run {
    pub fn connect(&mut self) -> Result<PhaseResult, String> {
        let start_ns = mono_ns();
        self.workers.send_all(&Command::Connect)?;
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
}
