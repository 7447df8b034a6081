#!/usr/bin/env bash
# Centrifugo v6.9.1 with its Redis engine, two nodes, under the load wspush is measured with
# (issue 16). See benches/peers/centrifugo/README.md for what is measured and how.
#
#   bash benches/centrifugo.sh            # 2 x 9,500 connections; publish 5,000/s then 20,000/s
#   bash benches/centrifugo.sh --quick    # 2 x 500 connections, short phases (checks the plumbing)
#   CONNS_PER_NODE=5000 RATES="5000" PUBLISH_SECS=5 bash benches/centrifugo.sh
#
# Installs Centrifugo with `go install` through the module proxy when it is not in the cache yet.
# Needs redis-server (Debian package). Writes benches/results/centrifugo-*.json|txt|log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"

VERSION=v6.9.1
CACHE=${CENTRIFUGO_CACHE:-$HOME/.cache/wspush-peers/centrifugo-$VERSION}
CENTRIFUGO=$CACHE/centrifugo
CONNS_PER_NODE=${CONNS_PER_NODE:-9500}
RATES=(${RATES:-5000 20000})
PUBLISH_SECS=${PUBLISH_SECS:-10}
# Publishing connections per loadgen: Centrifugo's API answers in ~0.3-1 ms, and each connection
# has one request in flight, so 4 (loadgen's default) would cap the rate below the target.
ADMIN_CONNS=${ADMIN_CONNS:-32}
if [ "${1:-}" = "--quick" ]; then
  CONNS_PER_NODE=500; RATES=(1000); PUBLISH_SECS=2
fi
OUT=benches/results
mkdir -p "$OUT"

echo "== building loadgen" >&2
cargo build --release -p loadgen >&2
LOADGEN=$ROOT/target/release/loadgen

INSTALL_SECS=cached
if [ ! -x "$CENTRIFUGO" ]; then
  echo "== go install github.com/centrifugal/centrifugo/v6@$VERSION into $CACHE" >&2
  mkdir -p "$CACHE"
  started=$(date +%s)
  GOBIN=$CACHE go install "github.com/centrifugal/centrifugo/v6@$VERSION" >&2
  INSTALL_SECS=$(($(date +%s) - started))
  echo "== installed in $INSTALL_SECS s" >&2
fi
# go install builds without the release ldflags, so `centrifugo version` says 0.0.0: check the
# module version recorded in the binary instead.
go version -m "$CENTRIFUGO" | grep -q "mod[[:space:]]*github.com/centrifugal/centrifugo/v6[[:space:]]*$VERSION" \
  || { echo "$CENTRIFUGO is not centrifugo $VERSION:" >&2; go version -m "$CENTRIFUGO" | head -3 >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

dir=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

stop() { # pid: TERM, up to 10 s, then KILL
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Exactly one listener, and it is $2 (a leftover with SO_REUSEPORT would take part of the load).
wait_listener() { # port pid name log
  for _ in $(seq 100); do
    [ -n "$(ss -tlnH "( sport = :$1 )")" ] && break
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  local owners
  owners=$(ss -tlnpH "( sport = :$1 )" | grep -o 'pid=[0-9]*' | sort -u)
  if [ "$owners" != "pid=$2" ]; then
    echo "$3 on :$1: expected only pid $2 listening, found: ${owners:-nothing}" >&2
    cat "$4" >&2 || true
    exit 1
  fi
}

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize no \
  > "$dir/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_listener "$REDIS_PORT" "$REDIS_PID" redis "$dir/redis.log"
until redis-cli -p "$REDIS_PORT" PING >/dev/null 2>&1; do sleep 0.05; done
REDIS_VERSION=$(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-)

SECRET=$(random_hex 32)
API_KEY=$(random_hex 16)
RUN=0
for rate in "${RATES[@]}"; do
  RUN=$((RUN + 1))
  # Fresh nodes for every rate: memory per connection is read on a server that held nothing before.
  ports=() nodes=()
  for node in 1 2; do
    port=$(free_port)
    sed -e "s/__PORT__/$port/" -e "s#__REDIS_ADDRESS__#redis://127.0.0.1:$REDIS_PORT#" \
      -e "s/__REDIS_PREFIX__/bench$RUN/" -e "s/__HMAC_SECRET__/$SECRET/" -e "s/__API_KEY__/$API_KEY/" \
      -e "s/__NODE_NAME__/node$node/" benches/peers/centrifugo/config.template.json > "$dir/node$node.json"
    "$CENTRIFUGO" -c "$dir/node$node.json" > "$OUT/centrifugo-$rate-node$node.log" 2>&1 &
    nodes+=($!) ports+=("$port")
    PIDS+=($!)
    wait_listener "$port" "${nodes[-1]}" "centrifugo node $node" "$OUT/centrifugo-$rate-node$node.log"
  done
  sleep 1 # both nodes registered with each other through Redis (node info is published every few s)
  echo "== Centrifugo x2 (pids ${nodes[*]}, ports ${ports[*]}), redis :$REDIS_PORT; $CONNS_PER_NODE clients per node; $rate publishes/s" >&2
  python3 benches/peers/centrifugo/summarize.py sample "$dir/samples-$rate" "${nodes[0]}" "${nodes[1]}" "$REDIS_PID" &
  sampler=$!
  PIDS+=("$sampler")
  # loadgen A: users a0.. on node 1, published to through node 2's API; loadgen B the reverse.
  common=(--peer centrifugo --centrifugo-secret "$SECRET" --centrifugo-api-key "$API_KEY" --json
    -n "$CONNS_PER_NODE" --phases connect,idle,publish --publish-rate "$((rate / 2))"
    --publish-secs "$PUBLISH_SECS" --admin-conns "$ADMIN_CONNS" --source-ips 2)
  # /usr/bin/time: the client's own CPU (coordinator and workers, whole run) for context.
  /usr/bin/time -f "%U %S" -o "$dir/time-a" "$LOADGEN" "${common[@]}" --centrifugo-user-prefix a --source-base "127.0.$RUN.2" \
    --url "ws://127.0.0.1:${ports[0]}/connection/websocket" --admin "127.0.0.1:${ports[1]}" --server-pid "${nodes[0]}" \
    > "$OUT/centrifugo-$rate-a.json" 2> "$OUT/centrifugo-$rate-a.log" &
  a=$!
  /usr/bin/time -f "%U %S" -o "$dir/time-b" "$LOADGEN" "${common[@]}" --centrifugo-user-prefix b --source-base "127.0.$RUN.4" \
    --url "ws://127.0.0.1:${ports[1]}/connection/websocket" --admin "127.0.0.1:${ports[0]}" --server-pid "${nodes[1]}" \
    > "$OUT/centrifugo-$rate-b.json" 2> "$OUT/centrifugo-$rate-b.log" &
  b=$!
  status=0
  wait "$a" || status=$?
  wait "$b" || status=$((status | $?))
  [ "$status" = 0 ] || echo "loadgen reported anomalies or failed at $rate/s (status $status; see $OUT/centrifugo-$rate-[ab].log)" >&2
  stop "$sampler"
  python3 benches/peers/centrifugo/summarize.py report "$rate" "$dir/samples-$rate" node1,node2,redis \
    "$OUT/centrifugo-$rate-a.json" "$OUT/centrifugo-$rate-b.json" "$OUT/centrifugo-$rate.json" "$OUT/centrifugo-$rate.txt" \
    "loadgen_cpu_secs_whole_run=$(tail -qn1 "$dir/time-a" "$dir/time-b" | tr ' ' '\n' | paste -sd+ | bc)" \
    "admin_conns_per_loadgen=$ADMIN_CONNS" "install_secs=$INSTALL_SECS" "redis_version=$REDIS_VERSION" "centrifugo_version=$VERSION" \
    "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "load_average=$(cut -d' ' -f1-3 /proc/loadavg)"
  for pid in "${nodes[@]}"; do stop "$pid"; done
  sleep 1
done
