//! loadgen against two wspushd nodes sharing one real Redis (`--redis`, issue 16): both URLs and
//! both admin APIs, two tabs per user so that every user has one connection on each node, and
//! every publish, made through either node, must reach both tabs exactly once and in order. Also
//! a short churn soak across the two nodes.
//!
//! Needs redis-server (skipped with a message without it, unless WSPUSH_REQUIRE_REDIS=1).

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

mod common;
#[allow(dead_code)]
#[path = "cluster/node.rs"]
mod node;
#[allow(dead_code)]
#[path = "cluster/redis.rs"]
mod redis;

use node::Node;
use redis::{redis_available, Redis};

fn loadgen() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| common::build_workspace_binary("loadgen"))
}

/// Runs loadgen with `--json` against both nodes (URLs comma-separated, admin APIs repeated: both
/// forms are accepted), their pids and Redis's; returns (exit code, parsed JSON).
fn run_loadgen(nodes: &[&Node], redis: &Redis, args: &str) -> (i32, serde_json::Value) {
    let urls: Vec<String> = nodes.iter().map(|n| format!("ws://{}/ws", n.ws)).collect();
    let pids: Vec<String> = nodes.iter().map(|n| n.pid().to_string()).collect();
    let mut command = Command::new(loadgen());
    command.args(["--json", "--url", &urls.join(","), "--server-pid", &pids.join(",")]);
    for node in nodes {
        command.args(["--admin", &node.admin.to_string()]);
    }
    command.args(["--redis-pid", &redis.pid().to_string(), "--redis-addr", &format!("127.0.0.1:{}", redis.port())]);
    let output = command.args(args.split_whitespace()).output().expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("loadgen stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    eprintln!("loadgen stdout:\n{stdout}");
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("loadgen printed no JSON ({e}): {stdout}"));
    (output.status.code().unwrap_or(-1), json)
}

/// The nodes wait up to 5 s for Redis (the harness's 1 s is for the fault tests). A subscriber
/// link judged overdue is reconnected, which is not what these tests are about and can lose
/// messages for raw clients (see below): found with this test, a node's subscriber link that has
/// no subscription yet answers the idle PING with +PONG, which the bridge does not count as the
/// answer, so it is dropped one timeout after its first idle PING (benches/RESULTS.md, "Cluster").
const PATIENT: &[&str] = &["--redis-timeout-ms", "5000"];

/// One test at a time: two nodes, Redis and loadgen's clients together already load both cores,
/// and a second set beside them makes Redis miss the nodes' 1 s timeout.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Redis and nodes A and B on it, one test at a time; None (skipped) without redis-server.
fn two_nodes() -> Option<(std::sync::MutexGuard<'static, ()>, Redis, Node, Node)> {
    if !redis_available("loadgen_cluster") {
        return None;
    }
    let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let redis = Redis::start(false);
    let a = Node::start("A", &redis.url(), PATIENT);
    let b = Node::start("B", &redis.url(), PATIENT);
    Some((serial, redis, a, b))
}

fn get(json: &serde_json::Value, phase: &str, key: &str) -> f64 {
    json[phase][key].as_f64().unwrap_or_else(|| panic!("no number {phase}.{key} in {json}"))
}

#[test]
fn publishes_through_either_node_reach_every_tab_on_both_nodes_once_and_in_order() {
    let Some((_serial, redis, a, b)) = two_nodes() else { return };
    // 300 connections = 150 users x 2 tabs: tab 0 of each user on A, tab 1 on B. 1,000
    // publishes over 4 lanes, each alternating between the two nodes' admin APIs, so a user's
    // publishes go through both nodes and must still arrive in order on both tabs.
    let (code, json) = run_loadgen(
        &[&a, &b],
        &redis,
        "--conns 300 --tabs 2 --phases connect,idle,publish --settle-secs 0.5 --publish-rate 500 \
         --publish-secs 2 --admin-conns 4 --drain-secs 3",
    );
    let logs = || format!("{}\n{}\n---- redis:\n{}", a.logs(), b.logs(), redis.log());
    assert_eq!(code, 0, "loadgen reported anomalies or failed\n{}", logs());
    assert_eq!(json["nodes"], 2);
    assert_eq!(get(&json, "connect", "opened"), 300.0);
    assert_eq!(json["idle"]["open_per_node"], serde_json::json!([150, 150]), "both nodes got their share");
    for key in ["lost", "duplicated", "reordered", "unexpected", "closed_by_server", "publish_errors"] {
        assert_eq!(get(&json, "publish", key), 0.0, "publish {key}\n{}", logs());
    }
    let published = get(&json, "publish", "published");
    assert!(published >= 900.0, "published {published}");
    // Every publish reached both tabs, and half of those deliveries crossed from one node to the
    // other through Redis.
    assert_eq!(get(&json, "publish", "received"), 2.0 * published);
    assert_eq!(get(&json, "publish", "cross_node_deliveries"), published);
    assert!(get(&json, "publish", "cross_node_latency_p50_ns") > 0.0);
    // delivered counts nodes: at most 2 per publish; a node still subscribing to a user's channel
    // right after the user connected is not counted (the message reaches it from the stream).
    let claimed = get(&json, "publish", "server_delivered");
    assert!(claimed <= 2.0 * published && claimed >= 1.9 * published, "delivered {claimed} for {published}");
    // The figures the cluster benchmark reads are there.
    assert_eq!(json["publish"]["server_cpu_secs_per_node"].as_array().map(Vec::len), Some(2));
    assert!(get(&json, "publish", "redis_cpu_secs") >= 0.0);
    assert!(get(&json, "idle", "redis_used_memory_after") > get(&json, "idle", "redis_used_memory_before"));
    assert!(get(&json, "publish", "redis_used_memory_after") > get(&json, "idle", "redis_used_memory_after"));
}

#[test]
fn churn_soak_across_two_nodes_loses_nothing() {
    let Some((_serial, redis, a, b)) = two_nodes() else { return };
    // 300 connections, 300 publishes/s through both nodes, 10% of the connections killed with
    // an RST every 2 s; each reconnects to the same node. The memory bound is loose (a smoke
    // test at 300 connections; the allocator's noise is percents); the fds must come back
    // exactly on both nodes.
    //
    // No grace: a node answers a user's first local connection with its 101 only once it is
    // subscribed to the user's channel (src/connection/lifecycle.rs), so a publish made right
    // after the 101, through either node, reaches it. (Before that, 2-4 of ~1,100 required
    // deliveries of the warm-up round were missed here.)
    let (code, json) = run_loadgen(
        &[&a, &b],
        &redis,
        "--phases soak --conns 300 --tabs 2 --publish-rate 300 --soak-secs 4 --churn-secs 2 \
         --churn-fraction 0.1 --warmup-secs 2 --drain-secs 3 --settle-secs 0.5 --rss-tolerance-pct 25",
    );
    let logs = || format!("{}\n{}\n---- redis:\n{}", a.logs(), b.logs(), redis.log());
    assert_eq!(code, 0, "loadgen reported anomalies or failed\n{}", logs());
    for phase in ["soak_warmup", "soak"] {
        for key in ["lost", "duplicated", "reordered", "unexpected", "connect_failures", "closed_by_server"] {
            assert_eq!(get(&json, phase, key), 0.0, "{phase} {key}\n{}", logs());
        }
        assert!(get(&json, phase, "expected") > 0.0, "{phase}: nothing had to be delivered");
        assert_eq!(get(&json, phase, "reconnects"), get(&json, phase, "killed"));
    }
    assert_eq!(get(&json, "soak", "killed"), 60.0);
    assert_eq!(get(&json, "soak", "fds_after"), get(&json, "soak", "fds_before"));
}
