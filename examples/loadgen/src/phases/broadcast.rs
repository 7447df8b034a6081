//! The broadcast phase: --broadcasts broadcasts to every connection, flat out; delivered
//! messages/s and latency.

use crate::admin::AdminClient;
use crate::cli::Phase;
use crate::protocol::{Command, Stream};
use crate::report::{latency_text, PhaseResult, Value};
use crate::run::{Delivery, Run};
use crate::sys::mono_ns;

impl Run {
    pub fn broadcast(&mut self) -> Result<PhaseResult, String> {
        let count = self.options.broadcasts;
        self.workers.ask_all(&Command::ExpectBcast { count: count as u32 }, "ok")?;
        let mut admin = AdminClient::new(self.options.admin);
        let start_ns = mono_ns();
        let mut delivered_claimed = 0;
        for index in 1..=count {
            let body = self.padded_payload(format!("b {index} {}", mono_ns()));
            let response = crate::peer::post(&self.options, &mut admin, "/broadcast", &body)
                .map_err(|e| format!("broadcast {index} failed: {e}"))?;
            if response.status != 200 {
                return Err(format!("broadcast {index} answered HTTP {}", response.status));
            }
            delivered_claimed += response.delivered().unwrap_or(0);
        }
        let sent_ns = mono_ns();
        let Delivery { report, lost, unexpected, dup, reordered, latency, checks } =
            self.await_deliveries(Phase::Broadcast, Stream::Bcast, "")?;
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
}
