//! The storm phase: established receivers get a steady stream of publishes while thousands of
//! clients connect at once. Measures the receivers' latency during the storm, counts how every
//! storm client was answered, and watches the server's limits in /stats. See STORM in
//! `loadgen --help`.

use std::io::{Cursor, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::admin::{self, AdminClient};
use crate::cli::{Options, Phase};
use crate::coordinator::WorkerPlan;
use crate::lanes::Lanes;
use crate::protocol::{Command, Stream};
use crate::report::{format_ns, latency_fields, latency_text, PhaseResult, Value};
use crate::run::{Delivery, Run};
use crate::sys::mono_ns;

/// The storm's target for the receivers' p99 publish-to-delivery latency (reported, not judged).
const P99_TARGET_NS: u64 = 10_000_000;
/// How long the receivers get publishes before the storm, for a calm comparison.
const CALM: Duration = Duration::from_secs(1);

/// Worker 0 holds the receivers (connections 0..M, users u0..); the rest hold the storm clients,
/// every one started at once.
pub fn worker_plans(o: &Options) -> Vec<WorkerPlan> {
    let receivers = o.storm_receivers;
    let mut plans = vec![WorkerPlan { first: 0, count: receivers, connect_rate: 0.0, max_inflight: o.max_inflight }];
    let per_worker = o.conns.div_ceil(o.workers);
    for index in 0..o.workers {
        let first = index * per_worker;
        let count = per_worker.min(o.conns - first);
        plans.push(WorkerPlan { first: receivers + first, count, connect_rate: 0.0, max_inflight: count });
    }
    plans
}

/// Highest values seen in GET /stats while sampling.
#[derive(Default)]
struct Peaks {
    samples: u64,
    errors: u64,
    open: u64,
    handshaking: u64,
    open_plus_handshaking: u64,
}

/// Samples GET /stats every `interval` until `stop` is set.
fn sample_stats(o: &Options, interval: Duration, stop: &AtomicBool) -> Peaks {
    let mut admin = AdminClient::new(o.admin);
    let mut peaks = Peaks::default();
    while !stop.load(Ordering::Relaxed) {
        match admin.get("/stats") {
            Ok(stats) if stats.status == 200 => {
                let open = stats.json_number("connections").unwrap_or(0);
                let handshaking = stats.json_number("handshakes").unwrap_or(0);
                peaks.samples += 1;
                peaks.open = peaks.open.max(open);
                peaks.handshaking = peaks.handshaking.max(handshaking);
                peaks.open_plus_handshaking = peaks.open_plus_handshaking.max(open + handshaking);
            }
            _ => peaks.errors += 1,
        }
        std::thread::sleep(interval);
    }
    peaks
}

/// A fresh client: upgrade as user `storm-probe`, publish to it through the admin API, read it.
fn round_trip(o: &Options) -> Result<(), String> {
    let timeout = Duration::from_secs(5);
    let mut stream =
        TcpStream::connect_timeout(&SocketAddr::V4(o.targets[0].addr), timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let key = tungstenite::handshake::client::generate_key();
    let target = &o.targets[0];
    let separator = if target.path.contains('?') { '&' } else { '?' };
    let request = format!(
        "GET {}{separator}user=storm-probe HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path, target.host_header
    );
    stream.write_all(request.as_bytes()).map_err(|e| format!("send upgrade: {e}"))?;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = admin::find(&buffer, b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read upgrade response: {e}"))?;
        if n == 0 {
            return Err("closed during the upgrade".into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let status_line = String::from_utf8_lossy(&buffer[..head_end]).lines().next().unwrap_or("").to_string();
    if status_line.split_whitespace().nth(1) != Some("101") {
        return Err(format!("upgrade answered {status_line:?}"));
    }
    buffer.drain(..head_end);
    let body = format!("probe {}", mono_ns());
    let response = AdminClient::new(o.admin)
        .post("/publish?user=storm-probe", body.as_bytes())
        .map_err(|e| format!("publish: {e}"))?;
    if response.status != 200 || response.delivered() != Some(1) {
        return Err(format!("publish answered {} {}", response.status, String::from_utf8_lossy(&response.body)));
    }
    // Skip control frames (a ping may come first) until the data message.
    loop {
        let mut cursor = Cursor::new(&buffer[..]);
        if let Ok(Some((header, length))) = FrameHeader::parse(&mut cursor) {
            let start = cursor.position() as usize;
            let end = start + length as usize;
            if buffer.len() >= end {
                if matches!(header.opcode, OpCode::Data(Data::Text)) {
                    return if buffer[start..end] == *body.as_bytes() {
                        Ok(())
                    } else {
                        Err(format!("received {:?}", String::from_utf8_lossy(&buffer[start..end])))
                    };
                }
                buffer.drain(..end);
                continue;
            }
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read the message: {e}"))?;
        if n == 0 {
            return Err("closed before the message arrived".into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

impl Run {
    pub fn storm(&mut self) -> Result<PhaseResult, String> {
        let o = self.options.clone();
        let receivers = o.storm_receivers;
        let stormers: Vec<usize> = (1..self.workers.ranges.len()).collect();

        // Receivers first, all of them.
        self.workers.send(0, &Command::Connect)?;
        let report = self.wait_resolved(Phase::Storm, &[0], "receivers")?;
        if report.get("open") != receivers as u64 {
            return Err(format!("only {} of {receivers} receivers connected", report.get("open")));
        }
        let mut admin = AdminClient::new(o.admin);
        let over_capacity_before = admin
            .get("/stats")
            .map_err(|e| format!("GET /stats failed: {e}"))?
            .json_number("over_capacity_total")
            .unwrap_or(0);
        drop(admin);

        let lanes = Lanes::start(&o, receivers, receivers, Instant::now() + Duration::from_secs(24 * 3600), false);
        std::thread::sleep(CALM);
        let calm = self.workers.histogram(Stream::Pub, true)?;

        let stop_sampling = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (o, stop) = (o.clone(), Arc::clone(&stop_sampling));
            let interval = Duration::from_millis(o.stats_interval_ms);
            std::thread::spawn(move || sample_stats(&o, interval, &stop))
        };
        let storm_start = Instant::now();
        for &index in &stormers {
            self.workers.send(index, &Command::Connect)?;
        }
        let outcomes = self.wait_resolved(Phase::Storm, &stormers, "storm")?;
        let storm_secs = storm_start.elapsed().as_secs_f64();
        let latency = self.workers.histogram(Stream::Pub, true)?;
        stop_sampling.store(true, Ordering::Relaxed);
        let peaks = sampler.join().map_err(|_| "the /stats sampler panicked".to_string())?;
        lanes.stop();
        let published = lanes.join()?;

        // Every publish must reach its receiver exactly once, in order.
        for index in 0..self.workers.ranges.len() {
            let counts = if index == 0 { published.sent.clone() } else { Vec::new() };
            self.workers.send(index, &Command::ExpectPub { first_user: 0, counts })?;
        }
        self.workers.collect("ok")?;
        let Delivery { lost, unexpected, dup, reordered, .. } =
            self.await_deliveries(Phase::Storm, Stream::Pub, "draining: ")?;
        let receivers_closed = self.workers.report_from(&[0])?.get("closed_by_peer");

        // How every storm client was answered.
        let n = o.conns as u64;
        let opened = outcomes.get("connected");
        let http_503 = outcomes.get("http_503");
        let http_429 = outcomes.get("http_429");
        let http_other = outcomes.get("http") - http_503 - http_429;
        let (refused, timeout, reset, other) =
            (outcomes.get("refused"), outcomes.get("timeout"), outcomes.get("reset"), outcomes.get("other"));
        let unanswered = n.saturating_sub(opened + http_503 + http_429);

        // The storm clients leave; the server must be healthy and take a fresh client.
        for &index in &stormers {
            self.workers.send(index, &Command::Leave)?;
        }
        self.workers.collect_from(&stormers, "left")?;
        let mut admin = AdminClient::new(o.admin);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut over_capacity_after = over_capacity_before;
        loop {
            let stats = admin.get("/stats").map_err(|e| format!("GET /stats failed: {e}"))?;
            over_capacity_after = stats.json_number("over_capacity_total").unwrap_or(over_capacity_after);
            let open = stats.json_number("connections").unwrap_or(u64::MAX);
            if open <= receivers as u64 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let healthz_ok = matches!(admin.get("/healthz"), Ok(response) if response.status == 200);
        drop(admin);
        let round_trip = round_trip(&o);
        if let Err(e) = &round_trip {
            eprintln!("loadgen: storm: a fresh client's round trip failed: {e}");
        }
        let server_alive = o.server_pid.is_none_or(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());

        let connections_ok = o.storm_max_connections == 0 || peaks.open_plus_handshaking <= o.storm_max_connections;
        let handshakes_ok = o.storm_max_handshakes == 0 || peaks.handshaking <= o.storm_max_handshakes;
        let p99 = latency.quantile(0.99);
        let p99_held = p99 < P99_TARGET_NS;
        self.anomalies += receivers_closed
            + unanswered
            + u64::from(!connections_ok)
            + u64::from(!handshakes_ok)
            + u64::from(!healthz_ok)
            + u64::from(round_trip.is_err())
            + u64::from(!server_alive)
            + u64::from(peaks.samples == 0);
        if !p99_held {
            eprintln!(
                "loadgen: storm: WARNING: receivers' p99 publish-to-delivery latency {} is over the {} target",
                format_ns(p99),
                format_ns(P99_TARGET_NS)
            );
        }
        if o.storm_max_connections > 0 && http_503 == 0 {
            eprintln!("loadgen: storm: warning: no storm client got a 503; --max-connections was never reached");
        }

        let mut fields = vec![
            ("receivers", Value::Int(receivers as u64)),
            ("storm_clients", Value::Int(n)),
            ("storm_secs", Value::Float(storm_secs)),
            ("opened", Value::Int(opened)),
            ("http_503", Value::Int(http_503)),
            ("http_429", Value::Int(http_429)),
            ("http_other", Value::Int(http_other)),
            ("refused", Value::Int(refused)),
            ("timeout", Value::Int(timeout)),
            ("reset", Value::Int(reset)),
            ("other", Value::Int(other)),
            ("unanswered", Value::Int(unanswered)),
            ("server_over_capacity", Value::Int(over_capacity_after - over_capacity_before)),
            ("stats_samples", Value::Int(peaks.samples)),
            ("stats_errors", Value::Int(peaks.errors)),
            ("peak_open", Value::Int(peaks.open)),
            ("peak_handshaking", Value::Int(peaks.handshaking)),
            ("peak_open_plus_handshaking", Value::Int(peaks.open_plus_handshaking)),
            ("max_connections", Value::Int(o.storm_max_connections)),
            ("max_handshakes", Value::Int(o.storm_max_handshakes)),
            ("connections_limit_ok", Value::Int(u64::from(connections_ok))),
            ("handshake_limit_ok", Value::Int(u64::from(handshakes_ok))),
            ("published", Value::Int(published.ok)),
            ("lost", Value::Int(lost)),
            ("duplicated", Value::Int(dup)),
            ("reordered", Value::Int(reordered)),
            ("unexpected", Value::Int(unexpected)),
            ("receivers_closed", Value::Int(receivers_closed)),
            ("healthz_ok", Value::Int(u64::from(healthz_ok))),
            ("round_trip_ok", Value::Int(u64::from(round_trip.is_ok()))),
            ("server_alive", Value::Int(u64::from(server_alive))),
            ("calm_latency_p50_ns", Value::Int(calm.quantile(0.5))),
            ("calm_latency_p99_ns", Value::Int(calm.quantile(0.99))),
        ];
        fields.extend(latency_fields("latency", &latency));
        fields.push(("latency_samples", Value::Int(latency.count())));
        fields.push(("p99_target_held", Value::Int(u64::from(p99_held))));
        let limit = |value: u64| if value == 0 { "unchecked".to_string() } else { value.to_string() };
        Ok(PhaseResult {
            phase: Phase::Storm,
            headline: format!(
                "{opened} opened, {http_503} x 503 of {n} in {storm_secs:.2} s; receivers p99 {} ({})",
                format_ns(p99),
                if p99_held { "target < 10 ms held" } else { "OVER the 10 ms target" }
            ),
            details: format!(
                "storm {}; calm {}; outcomes: 101 {opened}, 503 {http_503}, 429 {http_429}, other HTTP {http_other}, \
                 refused {refused}, reset {reset}, timeout {timeout}, other {other}, unanswered {unanswered}; \
                 /stats ({} samples): peak open+handshaking {} (limit {}), peak handshaking {} (limit {}); \
                 receivers: {} published, lost {lost}, dup {dup}, reordered {reordered}, closed {receivers_closed}; \
                 healthz {}, fresh round trip {}",
                latency_text("latency", &latency),
                latency_text("latency", &calm),
                peaks.samples,
                peaks.open_plus_handshaking,
                limit(o.storm_max_connections),
                peaks.handshaking,
                limit(o.storm_max_handshakes),
                published.ok,
                if healthz_ok { "ok" } else { "FAILED" },
                if round_trip.is_ok() { "ok" } else { "FAILED" },
            ),
            fields,
        })
    }
}
