#!/usr/bin/env bash
# Centrifugo v6.9.1 with its Redis engine, two nodes, under the load wspush is measured with
# (issue 16). See benches/peers/centrifugo/README.md for what is measured and how.
#
#   bash benches/centrifugo.sh            # 2 x 9,500 connections; publish 5,000/s then 20,000/s
#   bash benches/centrifugo.sh --quick    # 2 x 500 connections, short phases (checks the plumbing)
#   CONNS_PER_NODE=5000 RATES="5000" PUBLISH_SECS=5 bash benches/centrifugo.sh
#   SHAPE=one-sided bash benches/centrifugo.sh               # one loadgen: all 19,000 clients on node 1,
#                                                            # every publish through node 2
#   SERVER=wspush SHAPE=one-sided bash benches/centrifugo.sh # the same with two wspushd --redis nodes
#   SERVER=wspush bash benches/centrifugo.sh                 # two wspushd --redis nodes, clients split
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
# A loadgen that has not finished after this many seconds is stopped (its own waits are bounded).
LOADGEN_TIMEOUT=${LOADGEN_TIMEOUT:-600}
if [ "${1:-}" = "--quick" ]; then
  CONNS_PER_NODE=500; RATES=(1000); PUBLISH_SECS=2
fi
SERVER=${SERVER:-centrifugo}
SHAPE=${SHAPE:-split}
case $SERVER-$SHAPE in
  centrifugo-split|centrifugo-one-sided|wspush-split|wspush-one-sided) ;;
  *) echo "SERVER is centrifugo or wspush, SHAPE split or one-sided" >&2; exit 2 ;;
esac
OUT=benches/results
mkdir -p "$OUT"

echo "== building" >&2
if [ "$SERVER" = wspush ]; then
  cargo build --release -p loadgen -p wspushd >&2
else
  cargo build --release -p loadgen >&2
fi
LOADGEN=$ROOT/target/release/loadgen
WSPUSHD=$ROOT/target/release/wspushd

INSTALL_SECS=cached
if [ "$SERVER" = wspush ]; then
  INSTALL_SECS=n/a
elif [ ! -x "$CENTRIFUGO" ]; then
  echo "== go install github.com/centrifugal/centrifugo/v6@$VERSION into $CACHE" >&2
  mkdir -p "$CACHE"
  started=$(date +%s)
  GOBIN=$CACHE go install "github.com/centrifugal/centrifugo/v6@$VERSION" >&2
  INSTALL_SECS=$(($(date +%s) - started))
  echo "== installed in $INSTALL_SECS s" >&2
fi
# go install builds without the release ldflags, so `centrifugo version` says 0.0.0: check the
# module version recorded in the binary instead.
[ "$SERVER" = wspush ] || go version -m "$CENTRIFUGO" | grep -q "mod[[:space:]]*github.com/centrifugal/centrifugo/v6[[:space:]]*$VERSION" \
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

stop() { # pid: TERM, up to 10 s, then KILL; forgotten by cleanup (its number may be reused)
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local kept=() pid
  for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  PIDS=("${kept[@]}")
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
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" PING >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" PING >/dev/null || { echo "redis-server does not answer:" >&2; cat "$dir/redis.log" >&2; exit 1; }
REDIS_VERSION=$(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-)

SECRET=$(random_hex 32)
API_KEY=$(random_hex 16)
NAME=$SERVER-$SHAPE
[ "$SERVER" = centrifugo ] && [ "$SHAPE" = split ] && NAME=centrifugo
if [ "$SERVER" = centrifugo ]; then
  WS_PATH=/connection/websocket
  PEER_ARGS=(--peer centrifugo --centrifugo-secret "$SECRET" --centrifugo-api-key "$API_KEY")
else
  WS_PATH=/ws
  PEER_ARGS=()
fi

start_node() { # node-number rate: starts it, appends to nodes/ws_ports/api_ports
  local log=$OUT/$NAME-$2-node$1.log port api
  port=$(free_port)
  if [ "$SERVER" = centrifugo ]; then
    api=$port
    sed -e "s/__PORT__/$port/" -e "s#__REDIS_ADDRESS__#redis://127.0.0.1:$REDIS_PORT#" \
      -e "s/__REDIS_PREFIX__/bench$RUN/" -e "s/__HMAC_SECRET__/$SECRET/" -e "s/__API_KEY__/$API_KEY/" \
      -e "s/__NODE_NAME__/node$1/" benches/peers/centrifugo/config.template.json > "$dir/node$1.json"
    "$CENTRIFUGO" -c "$dir/node$1.json" > "$log" 2>&1 &
  else
    api=$(free_port)
    # As in compare.sh (per-IP limits off), plus the Redis; no history, as the Centrifugo config.
    "$WSPUSHD" --demo --max-connections-per-ip 0 --max-handshakes-per-ip-per-sec 0 --max-pending-handshakes-per-ip 0 \
      --history-messages 0 --redis "redis://127.0.0.1:$REDIS_PORT" \
      --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$api" > "$log" 2>&1 &
  fi
  nodes+=($!) ws_ports+=("$port") api_ports+=("$api")
  PIDS+=($!)
  wait_listener "$port" "${nodes[-1]}" "$SERVER node $1" "$log"
  [ "$api" = "$port" ] || wait_listener "$api" "${nodes[-1]}" "$SERVER node $1 admin" "$log"
}

RUN=0
for rate in "${RATES[@]}"; do
  RUN=$((RUN + 1))
  redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
  # Fresh nodes for every rate: memory per connection is read on a server that held nothing before.
  nodes=() ws_ports=() api_ports=()
  start_node 1 "$rate"
  start_node 2 "$rate"
  sleep 1 # both nodes registered with each other through Redis (node info is published every few s)
  echo "== $SERVER x2 (pids ${nodes[*]}, ports ${ws_ports[*]}), redis :$REDIS_PORT; $SHAPE; $rate publishes/s" >&2
  python3 benches/peers/centrifugo/summarize.py sample "$dir/samples-$rate" "${nodes[0]}" "${nodes[1]}" "$REDIS_PID" &
  sampler=$!
  PIDS+=("$sampler")
  common=("${PEER_ARGS[@]}" --json --phases connect,idle,publish --publish-secs "$PUBLISH_SECS"
    --admin-conns "$ADMIN_CONNS" --source-ips 2)
  # /usr/bin/time: the client's own CPU (coordinator and workers, whole run) for context.
  runs=()
  if [ "$SERVER-$SHAPE" = wspush-split ]; then
    # One loadgen over both nodes (loadgen's several-node mode: client C on node C mod 2, each
    # lane publishing through the nodes in turn). wspush delivers through Redis on the
    # publishing node too, so every delivery crosses Redis as in Centrifugo's split shape.
    timeout "$LOADGEN_TIMEOUT" /usr/bin/time -f "%U %S" -o "$dir/time-a" "$LOADGEN" "${common[@]}" -n "$((2 * CONNS_PER_NODE))" \
      --publish-rate "$rate" --source-base "127.0.$RUN.2" \
      --url "ws://127.0.0.1:${ws_ports[0]}$WS_PATH" --url "ws://127.0.0.1:${ws_ports[1]}$WS_PATH" \
      --admin "127.0.0.1:${api_ports[0]}" --admin "127.0.0.1:${api_ports[1]}" \
      --server-pid "${nodes[0]}" --server-pid "${nodes[1]}" > "$OUT/$NAME-$rate-a.json" 2> "$OUT/$NAME-$rate-a.log" &
    runs+=($!)
  elif [ "$SHAPE" = split ]; then
    # loadgen A: users a0.. on node 1, published to through node 2's API; loadgen B the reverse.
    for side in a b; do
      if [ $side = a ]; then here=0 there=1 base=2; else here=1 there=0 base=4; fi
      timeout "$LOADGEN_TIMEOUT" /usr/bin/time -f "%U %S" -o "$dir/time-$side" "$LOADGEN" "${common[@]}" -n "$CONNS_PER_NODE" \
        --publish-rate "$((rate / 2))" --centrifugo-user-prefix $side --source-base "127.0.$RUN.$base" \
        --url "ws://127.0.0.1:${ws_ports[$here]}$WS_PATH" --admin "127.0.0.1:${api_ports[$there]}" \
        --server-pid "${nodes[$here]}" > "$OUT/$NAME-$rate-$side.json" 2> "$OUT/$NAME-$rate-$side.log" &
      runs+=($!)
    done
  else
    # One loadgen: every client on node 1, every publish through node 2's API.
    timeout "$LOADGEN_TIMEOUT" /usr/bin/time -f "%U %S" -o "$dir/time-a" "$LOADGEN" "${common[@]}" -n "$((2 * CONNS_PER_NODE))" \
      --publish-rate "$rate" --source-base "127.0.$RUN.2" \
      --url "ws://127.0.0.1:${ws_ports[0]}$WS_PATH" --admin "127.0.0.1:${api_ports[1]}" \
      --server-pid "${nodes[0]}" > "$OUT/$NAME-$rate-a.json" 2> "$OUT/$NAME-$rate-a.log" &
    runs+=($!)
  fi
  status=0
  for pid in "${runs[@]}"; do wait "$pid" || status=$((status | $?)); done
  [ "$status" = 0 ] || echo "loadgen reported anomalies or failed at $rate/s (status $status; see $OUT/$NAME-$rate-*.log)" >&2
  stop "$sampler"
  reports=("$OUT/$NAME-$rate-a.json")
  [ "$SERVER-$SHAPE" = centrifugo-split ] && reports+=("$OUT/$NAME-$rate-b.json")
  python3 benches/peers/centrifugo/summarize.py report "$rate" "$dir/samples-$rate" node1,node2,redis \
    "$OUT/$NAME-$rate" "$(IFS=,; echo "${reports[*]}")" \
    "server=$SERVER" "shape=$SHAPE" \
    "loadgen_cpu_secs_whole_run=$(tail -qn1 "$dir"/time-* | tr ' ' '\n' | paste -sd+ | bc | sed 's/^\./0./')" \
    "admin_conns_per_loadgen=$ADMIN_CONNS" "install_secs=$INSTALL_SECS" "redis_version=$REDIS_VERSION" \
    "centrifugo_version=$VERSION" "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "load_average=$(cut -d' ' -f1-3 /proc/loadavg)"
  rm -f "$dir"/time-*
  for pid in "${nodes[@]}"; do stop "$pid"; done
  sleep 1
done
