//! The idle phase: every connection sends a frame and receives a broadcast; then the server's
//! memory and the kernel's per connection (deltas from before connecting).

use std::fmt::Write as _;
use std::time::Duration;

use crate::admin::AdminClient;
use crate::cli::Phase;
use crate::protocol::Command;
use crate::report::{format_kib, PhaseResult, Value};
use crate::run::Run;
use crate::sys::{self, mono_ns};

impl Run {
    pub fn idle(&mut self) -> Result<PhaseResult, String> {
        self.workers.send_all(&Command::Probe)?;
        let mut admin = AdminClient::new(self.options.admin);
        let body = self.padded_payload(format!("w {}", mono_ns()));
        let response = crate::peer::post(&self.options, &mut admin, "/broadcast", &body)
            .map_err(|e| format!("warm-up broadcast failed: {e}"))?;
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
        if let Some(before) = self.before.clone() {
            std::thread::sleep(Duration::from_secs_f64(self.options.settle_secs));
            let o = &self.options;
            let after = sys::sample_memory(&o.server_pids, o.redis_pid, o.redis_addr)
                .map_err(|e| format!("cannot sample memory: {e}"))?;
            let per_conn = |delta: f64| if open > 0 { delta / open as f64 } else { 0.0 };
            if let (Some(rss_before), Some(rss_after)) = (before.rss_anon_kib, after.rss_anon_kib) {
                let delta = rss_after as f64 - rss_before as f64;
                let _ = write!(details, "; server RssAnon +{} = {:.2} KiB/conn", format_kib(delta), per_conn(delta));
                fields.push(("server_rss_anon_delta_kib", Value::Int(rss_after.saturating_sub(rss_before))));
                fields.push(("server_bytes_per_conn", Value::Float(per_conn(delta) * 1024.0)));
            } else {
                details.push_str("; server memory: give --server-pid");
            }
            if o.targets.len() > 1 {
                // Each node's RssAnon delta over the connections it holds.
                let open_each: Vec<u64> = (0..o.targets.len()).map(|k| report.get(&format!("open_node{k}"))).collect();
                fields.push(("open_per_node", Value::List(open_each.iter().map(|&n| Value::Int(n)).collect())));
                let _ = write!(details, "; open per node {open_each:?}");
                if before.rss_anon_kib_each.len() == open_each.len() {
                    let bytes: Vec<f64> = (0..open_each.len())
                        .map(|k| {
                            let delta = after.rss_anon_kib_each[k] as f64 - before.rss_anon_kib_each[k] as f64;
                            delta * 1024.0 / open_each[k].max(1) as f64
                        })
                        .collect();
                    let _ = write!(
                        details,
                        ", server bytes/conn per node {:?}",
                        bytes.iter().map(|b| b.round()).collect::<Vec<_>>()
                    );
                    fields.push((
                        "server_bytes_per_conn_per_node",
                        Value::List(bytes.into_iter().map(Value::Float).collect()),
                    ));
                }
            }
            if let (Some(before_kib), Some(after_kib)) = (before.redis_rss_anon_kib, after.redis_rss_anon_kib) {
                let delta = after_kib as f64 - before_kib as f64;
                fields.push(("redis_rss_anon_delta_kib", Value::Float(delta)));
                let _ = write!(details, "; Redis RssAnon +{}", format_kib(delta));
            }
            if let (Some(before_bytes), Some(after_bytes)) = (before.redis_used_memory, after.redis_used_memory) {
                // Users online: every user with at least one open tab (all of them when every
                // connection is open).
                let users = o.conns.div_ceil(o.tabs);
                let online = if open as usize >= o.conns { users } else { (open as usize).div_ceil(o.tabs) };
                let delta = after_bytes as f64 - before_bytes as f64;
                let per_user = delta / online.max(1) as f64;
                fields.push(("redis_used_memory_before", Value::Int(before_bytes)));
                fields.push(("redis_used_memory_after", Value::Int(after_bytes)));
                fields.push(("redis_users_online", Value::Int(online as u64)));
                fields.push(("redis_bytes_per_online_user", Value::Float(per_user)));
                let _ = write!(
                    details,
                    "; Redis used_memory +{} = {per_user:.0} B per online user",
                    format_kib(delta / 1024.0)
                );
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
        let headline = match self.options.server_pid.zip(self.before.as_ref()) {
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
}
