//! The publishing lanes: threads that publish through the admin API at --publish-rate, each over
//! its own keep-alive connection, to random users of their own share. Used by the publish, soak
//! and storm phases.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::AdminClient;
use crate::cli::Options;
use crate::hist::Histogram;
use crate::sys::mono_ns;

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
pub struct Published {
    /// Publishes the server took (HTTP 200), per user; user u got numbers 1..=sent[u].
    pub sent: Vec<u32>,
    /// With `log_times`: times[u][n-1] = when publish n to user u was started (mono_ns).
    pub times: Vec<Vec<u64>>,
    pub ok: u64,
    pub errors: u64,
    pub delivered_claimed: u64,
    pub delivered_mismatch: u64,
    pub max_lag_ns: u64,
    pub request_latency: Histogram,
}

/// The publishing threads, one keep-alive admin connection each (--admin-conns of them).
pub struct Lanes {
    handles: Vec<std::thread::JoinHandle<Result<LaneResult, String>>>,
    lanes: usize,
    users: usize,
    /// Publishes the server took so far, all lanes together (for progress lines).
    pub sent_total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Lanes {
    /// Publishes at --publish-rate to random users among `users` until `stop_at` or `stop()`.
    pub fn start(o: &Options, users: usize, conns: usize, stop_at: Instant, log_times: bool) -> Lanes {
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

    /// How many publishing threads there are (each with one keep-alive connection per node).
    pub fn count(&self) -> usize {
        self.lanes
    }

    pub fn finished(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn join(self) -> Result<Published, String> {
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
            all.request_latency.merge(&result.request_latency)?;
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
    // One keep-alive connection per node: the lane's k-th publish goes through node
    // (lane + k) mod n, so each user's publishes go through every node (still one request at a
    // time, so the broker must keep them in order) and even with one tab per user about half
    // of the deliveries cross nodes.
    let mut admins: Vec<AdminClient> = o.admins.iter().map(|&addr| AdminClient::new(addr)).collect();
    let several = admins.len() > 1;
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
        let node = (lane + n as usize) % admins.len();
        let admin = &mut admins[node];
        let sent_ns = mono_ns();
        // With several nodes the payload names the node ("p SEQ T NODE") so that the workers
        // can tell cross-node deliveries from local ones.
        let mut payload = if several { format!("p {seq} {sent_ns} {node}") } else { format!("p {seq} {sent_ns}") };
        if payload.len() < o.payload_bytes {
            payload.push(' ');
            payload.extend(std::iter::repeat_n('.', o.payload_bytes - payload.len()));
        }
        let outcome = crate::peer::post(o, admin, &format!("/publish?user=u{user}"), payload.as_bytes());
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
                // Connections of the user, or with --cluster the distinct nodes holding them.
                let tabs = o.tabs.min(conns.saturating_sub(user * o.tabs));
                let expected = if o.cluster { tabs.min(o.targets.len()) } else { tabs } as u64;
                if delivered != expected && o.peer.reports_delivered() {
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
