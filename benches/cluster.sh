#!/usr/bin/env bash
# Cluster benchmark (issue 16): two wspushd nodes sharing one Redis, against one wspushd without
# Redis, under the same load in the same sitting, side by side.
#
#   bash benches/cluster.sh              # 19,000 connections, publish 5,000, 10,000, 20,000/s, 10 s each
#   bash benches/cluster.sh --quick      # 2,000 connections, 1,000/s and 2,000/s for 3 s (plumbing)
#   bash benches/cluster.sh --summary    # only rewrite cluster-summary.md from the last run's JSON
#
# Every run starts everything afresh on free ports (Redis, the nodes; checked to be the only
# listeners), so the idle memory figures are on fresh processes and Redis starts empty:
#   cluster: redis-server (no persistence) + nodes A and B (wspushd --redis, history 100 messages
#            per user, in Redis); 19,000 connections = 9,500 users x 2 tabs, tab 0 of each user on
#            A and tab 1 on B (loadgen: connection C goes to URL C mod 2), so every publish is
#            delivered once on the node it was made through and once across, through Redis;
#            publishes go through both admin APIs (lane L through node L mod 2).
#   single:  one wspushd without Redis (history 100 messages per user, in its memory), the same
#            19,000 connections (both tabs of a user on it), the same publishes.
# Phases per run: connect, idle (memory per connection; Redis used_memory per online user),
# publish at the run's rate (latency, CPU of each node and of Redis, Redis memory per message).
# Then one idle-only cluster run at twice the connections (memory per connection at 19,000 per
# node, and the slope from the runs' 9,500).
# Writes benches/results/cluster-{cluster,single}-RATE.json and benches/results/cluster-summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

CONNS=19000
RATES=(5000 10000 20000)
PUBLISH_SECS=10
# Publishing lanes (loadgen threads, one keep-alive admin connection and one request in flight
# each): the client's concurrency, sized per configuration and rate to offer the target rate with
# as few threads as possible (every extra thread competes for the 2 cores with the servers). One
# node answers a publish in ~0.1-0.4 ms here, so 4 lanes offer 20,000/s (as in compare.sh; with 32
# lanes its p50 at 20,000/s was 35 ms instead of 0.5 ms). Through Redis a request includes the
# node-Redis round trip (~0.5-2 ms), so a rate needs more requests in flight: 8 lanes at 5,000/s
# (16 there gave p99 128 ms instead of 2 ms, and 4,500/s), doubled with the rate.
LANES_SINGLE=4
LANES_CLUSTER=(8 16 32)
SUMMARY_ONLY=
if [ "${1:-}" = "--summary" ]; then
  SUMMARY_ONLY=1
  # The last run's sizes, from its JSON.
  CONNS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["conns"])' benches/results/cluster-single-*.json 2>/dev/null | head -1)
  mapfile -t RATES < <(ls benches/results/cluster-single-*.json | sed 's/.*-\([0-9]*\)\.json/\1/' | sort -n)
fi
if [ "${1:-}" = "--quick" ]; then
  CONNS=2000; RATES=(1000 2000); PUBLISH_SECS=3; LANES_CLUSTER=(4 8)
fi
OUT=benches/results
mkdir -p "$OUT"
[ -n "$SUMMARY_ONLY" ] || rm -f "$OUT"/cluster-*.json "$OUT"/cluster-*.log "$OUT"/cluster-*.txt
RATE=

command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
if [ -z "$SUMMARY_ONLY" ]; then
  echo "== building wspushd and loadgen" >&2
  cargo build --release -p wspushd -p loadgen >&2
fi
WSPUSHD=$ROOT/target/release/wspushd
LOADGEN=$ROOT/target/release/loadgen

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

PIDS=()
TMP=$(mktemp -d)
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap 'cleanup; rm -rf "$TMP"' EXIT

# Fails unless exactly one process listens on port $1 (a leftover SO_REUSEPORT server would take
# part of the connections and fake the figures).
one_listener() {
  local owners
  owners=$(ss -tlnpH "( sport = :$1 )" | grep -o 'pid=[0-9]*' | sort -u | wc -l)
  [ "$owners" = 1 ] || { echo "expected exactly one process listening on :$1, found $owners" >&2; ss -tlnpH "( sport = :$1 )" >&2; exit 1; }
}

REDIS_PORT= REDIS_PID=
start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" \
    --daemonize no --protected-mode no > "$OUT/cluster-redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" PING 2>/dev/null | grep -q PONG && break
    sleep 0.05
  done
  one_listener "$REDIS_PORT"
}

NODE_WS= NODE_ADMIN= NODE_PID=
start_node() { # name [wspushd flags...]
  local name=$1; shift
  NODE_WS=$(free_port); NODE_ADMIN=$(free_port)
  local log="$OUT/cluster-$name-$RATE.log"
  # Per-address limits off: the load generator is a few addresses opening thousands of
  # connections. History: 100 messages per user (the daemon's default, spelled out).
  "$WSPUSHD" --demo --listen "127.0.0.1:$NODE_WS" --admin-listen "127.0.0.1:$NODE_ADMIN" \
    --max-connections-per-ip 0 --max-handshakes-per-ip-per-sec 0 --max-pending-handshakes-per-ip 0 \
    --history-messages 100 "$@" > "$log" 2>&1 &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
  for _ in $(seq 100); do
    grep -q "listening on" "$log" 2>/dev/null && break
    kill -0 "$NODE_PID" 2>/dev/null || break
    sleep 0.1
  done
  grep -q "listening on" "$log" || { echo "wspushd $name did not start:" >&2; cat "$log" >&2; exit 1; }
  one_listener "$NODE_WS"; one_listener "$NODE_ADMIN"
}

# Each run connects from its own source addresses (127.0.R.2 and .3), so the previous run's
# client ports in TIME_WAIT cannot slow its connects down. Two worker processes (9,500 each).
RUN=0
common_args() { # rate lanes
  RUN=$((RUN + 1))
  echo --json --conns "$CONNS" --tabs 2 --workers 2 --source-base "127.0.$RUN.2" --source-ips 2 \
    --phases connect,idle,publish --settle-secs 2 --publish-rate "$1" --publish-secs "$PUBLISH_SECS" \
    --admin-conns "$2" --drain-secs 5
}

for i in "${!RATES[@]}"; do
  [ -z "$SUMMARY_ONLY" ] || break
  rate=${RATES[$i]} lanes=${LANES_CLUSTER[$i]}
  RATE=$rate
  echo "== cluster: Redis + 2 nodes, $CONNS connections, publish $rate/s" >&2
  start_redis
  start_node A --redis "redis://127.0.0.1:$REDIS_PORT"
  A_WS=$NODE_WS A_ADMIN=$NODE_ADMIN A_PID=$NODE_PID
  start_node B --redis "redis://127.0.0.1:$REDIS_PORT"
  # shellcheck disable=SC2046
  "$LOADGEN" $(common_args "$rate" "$lanes") \
    --url "ws://127.0.0.1:$A_WS/ws,ws://127.0.0.1:$NODE_WS/ws" --admin "127.0.0.1:$A_ADMIN,127.0.0.1:$NODE_ADMIN" \
    --server-pid "$A_PID,$NODE_PID" --redis-pid "$REDIS_PID" --redis-addr "127.0.0.1:$REDIS_PORT" \
    > "$OUT/cluster-cluster-$rate.json" \
    || echo "loadgen reported anomalies (see $OUT/cluster-cluster-$rate.json)" >&2
  cleanup; sleep 1
  # Redis links the nodes dropped as overdue and reconnected (each resubscribes its users and
  # reads their streams from the last delivered offset).
  cat "$OUT/cluster-A-$rate.log" "$OUT/cluster-B-$rate.log" | grep -c "lost a Redis" > "$OUT/cluster-links-lost-$rate.txt" || true

  echo "== single: 1 wspushd without Redis, $CONNS connections, publish $rate/s" >&2
  start_node single
  # shellcheck disable=SC2046
  "$LOADGEN" $(common_args "$rate" "$LANES_SINGLE") \
    --url "ws://127.0.0.1:$NODE_WS/ws" --admin "127.0.0.1:$NODE_ADMIN" --server-pid "$NODE_PID" \
    > "$OUT/cluster-single-$rate.json" \
    || echo "loadgen reported anomalies (see $OUT/cluster-single-$rate.json)" >&2
  cleanup; sleep 1
done

# Idle memory at twice the connections per node (19,000 each at full size): the project's
# per-connection target is read at N = 19,000 per process and as the slope from the smaller N,
# which leaves out what a process pays once (allocator metadata, the admin API's first requests).
if [ -z "$SUMMARY_ONLY" ]; then
  RATE=idle
  echo "== cluster idle: Redis + 2 nodes, $((CONNS * 2)) connections (memory only)" >&2
  start_redis
  start_node A --redis "redis://127.0.0.1:$REDIS_PORT"
  A_WS=$NODE_WS A_ADMIN=$NODE_ADMIN A_PID=$NODE_PID
  start_node B --redis "redis://127.0.0.1:$REDIS_PORT"
  RUN=$((RUN + 1))
  "$LOADGEN" --json --conns $((CONNS * 2)) --tabs 2 --workers 4 --source-base "127.0.$RUN.2" --source-ips 4 \
    --phases connect,idle --settle-secs 2 \
    --url "ws://127.0.0.1:$A_WS/ws,ws://127.0.0.1:$NODE_WS/ws" --admin "127.0.0.1:$A_ADMIN,127.0.0.1:$NODE_ADMIN" \
    --server-pid "$A_PID,$NODE_PID" --redis-pid "$REDIS_PID" --redis-addr "127.0.0.1:$REDIS_PORT" \
    > "$OUT/cluster-cluster-idle.json" \
    || echo "loadgen reported anomalies (see $OUT/cluster-cluster-idle.json)" >&2
  cleanup; sleep 1
fi

{
  echo "- Date: $(date -u -r "$OUT/cluster-single-${RATES[0]}.json" '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, Linux $(uname -r); $(redis-server --version | cut -d' ' -f1-3)"
  echo "- Command: bash benches/cluster.sh$([ "$CONNS" = 2000 ] && echo ' --quick')"
  echo
  python3 - "$OUT" "$CONNS" "${RATES[@]}" <<'EOF'
import json, sys
out, conns, rates = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(kind, rate):
    with open(f"{out}/cluster-{kind}-{rate}.json") as f:
        return json.load(f)
us = lambda ns: f"{ns / 1000:,.0f} µs" if ns is not None else "-"
rows = []
for rate in rates:
    c, s = load("cluster", rate), load("single", rate)
    lanes_c, lanes_s = c["publish"]["lanes"], s["publish"]["lanes"]
    cp, sp, ci, si = c["publish"], s["publish"], c["idle"], s["idle"]
    ratio = lambda a, b: f" ({a / b:.2f}×)" if a and b else ""
    per_node = ci.get("server_bytes_per_conn_per_node", [])
    stored = cp["redis_used_memory_after"] - ci["redis_used_memory_after"]
    rows.append((rate, [
        ("publishes done / rate achieved", f"{cp['published']:,} @ {cp['publish_rate']:,.0f}/s", f"{sp['published']:,} @ {sp['publish_rate']:,.0f}/s"),
        ("publish→delivery p50 (all deliveries)", us(cp["latency_p50_ns"]) + ratio(cp["latency_p50_ns"], sp["latency_p50_ns"]), us(sp["latency_p50_ns"])),
        ("publish→delivery p99", us(cp["latency_p99_ns"]) + ratio(cp["latency_p99_ns"], sp["latency_p99_ns"]), us(sp["latency_p99_ns"])),
        ("publish→delivery p99.9", us(cp["latency_p999_ns"]) + ratio(cp["latency_p999_ns"], sp["latency_p999_ns"]), us(sp["latency_p999_ns"])),
        ("cross-node only: p50 / p99 / p99.9", f"{us(cp['cross_node_latency_p50_ns'])} / {us(cp['cross_node_latency_p99_ns'])} / {us(cp['cross_node_latency_p999_ns'])} ({cp['cross_node_deliveries']:,} deliveries)", "-"),
        ("publishing lanes (admin requests in flight)", f"{lanes_c}", f"{lanes_s}"),
        ("Redis links dropped as overdue (node logs)", open(f"{out}/cluster-links-lost-{rate}.txt").read().strip(), "-"),
        ("admin request p50 / p99", f"{us(cp['admin_request_p50_ns'])} / {us(cp['admin_request_p99_ns'])}", f"{us(sp['admin_request_p50_ns'])} / {us(sp['admin_request_p99_ns'])}"),
        ("lost / duplicated / reordered", f"{cp['lost']} / {cp['duplicated']} / {cp['reordered']}", f"{sp['lost']} / {sp['duplicated']} / {sp['reordered']}"),
        ("delivered ≠ expected (admin replies)", f"{cp['server_delivered_mismatch']:,} (nodes)", f"{sp['server_delivered_mismatch']:,} (connections)"),
        ("node CPU-s per 1,000 publishes (all nodes)", f"{cp['server_cpu_secs_per_1000']:.3f} (A {cp['server_cpu_secs_per_node'][0]:.2f} s + B {cp['server_cpu_secs_per_node'][1]:.2f} s)" + ratio(cp['server_cpu_secs_per_1000'], sp['server_cpu_secs_per_1000']), f"{sp['server_cpu_secs_per_1000']:.3f} ({sp['server_cpu_secs']:.2f} s)"),
        ("Redis CPU-s per 1,000 publishes (% of one core)", f"{cp['redis_cpu_secs_per_1000']:.3f} ({cp['redis_cpu_pct_of_one_core']:.1f}%)", "-"),
        ("bytes / idle conn, user space (A / B)", " / ".join(f"{b:,.0f} B" for b in per_node), f"{si['server_bytes_per_conn']:,.0f} B"),
        ("Redis used_memory per online user", f"{ci['redis_bytes_per_online_user']:,.0f} B ({ci['redis_users_online']:,} users)", "-"),
        # Redis 7 preallocates 4 KB per new stream node: per user with history, not per message,
        # until a user's listpack fills (see benches/RESULTS.md).
        ("Redis used_memory added by publishing", f"{stored / 1e6:.1f} MB = {stored / max(cp['published'], 1):,.0f} B per publish = {stored / (conns // 2):,.0f} B per user (max {cp['max_publishes_per_user']} publishes per user, history cap 100)", "-"),
    ]))
print(f"{conns:,} connections = {conns // 2:,} users x 2 tabs; cluster: tab 0 on node A, tab 1 on node B.\n")
for rate, table in rows:
    print(f"Publishing {int(rate):,}/s to random users:\n")
    print("| metric | 2 nodes + Redis | 1 node, no Redis |")
    print("|---|---|---|")
    for name, a, b in table:
        print(f"| {name} | {a} | {b} |")
    print()
try:
    big = json.load(open(f"{out}/cluster-cluster-idle.json"))["idle"]
except (OSError, KeyError, ValueError):
    big = None
if big:
    n_big, b_big = big["open_per_node"], big["server_bytes_per_conn_per_node"]
    print(f"Idle memory per node with Redis at {n_big[0]:,} / {n_big[1]:,} connections (fresh processes):\n")
    print("| node | bytes / idle conn at this N | slope from each run's smaller N (bytes per added conn) |")
    print("|---|---|---|")
    for k in range(len(n_big)):
        slopes = []
        for rate in rates:
            small = load("cluster", rate)["idle"]
            n_small, b_small = small["open_per_node"][k], small["server_bytes_per_conn_per_node"][k]
            if n_big[k] > n_small:
                slopes.append((b_big[k] * n_big[k] - b_small * n_small) / (n_big[k] - n_small))
        print(f"| {'AB'[k]} | {b_big[k]:,.0f} B | {' / '.join(f'{x:,.0f} B' for x in slopes)} |")
    print()
EOF
} > "$OUT/cluster-summary.md"
cat "$OUT/cluster-summary.md"
