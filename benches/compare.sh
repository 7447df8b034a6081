#!/usr/bin/env bash
# Runs wspushd and each peer server in turn under identical loadgen settings and writes one table
# (benches/RESULTS.md, plus raw JSON in benches/results/). Every server is started fresh for every
# run, alone on its port (checked), and measured by the same client.
#
#   bash benches/compare.sh               # N = 2,000 / 10,000 / 19,000; publish 20,000/s; echo
#   bash benches/compare.sh --quick       # N = 500 / 1,000 and short phases (checks the plumbing)
#   SERVERS="wspush go-gobwas" bash benches/compare.sh
#   WSPUSHD=/path/to/older/wspushd SERVERS=wspush bash benches/compare.sh   # A/B of two builds
#
# Fetches what the peers need (Go modules through the module proxy, npm packages, crates).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"

SIZES=(2000 10000 19000)
PUBLISH_RATE=20000
PUBLISH_SECS=10
ECHO_SECS=10
if [ "${1:-}" = "--quick" ]; then
  SIZES=(500 1000); PUBLISH_RATE=2000; PUBLISH_SECS=2; ECHO_SECS=2
fi
SERVERS=(${SERVERS:-wspush go-gorilla go-gobwas rust-tokio node-ws})
WS_PORT=18080
ADMIN_PORT=18081
OUT=benches/results
mkdir -p "$OUT"
for server in "${SERVERS[@]}"; do rm -f "$OUT/$server"-*.json; done

echo "== building wspushd, loadgen and the peers" >&2
cargo build --release -p wspushd -p loadgen >&2
for server in "${SERVERS[@]}"; do
  case $server in
    go-gorilla|go-gobwas) (cd "benches/peers/$server" && go build -o "$server" .) >&2 ;;
    rust-tokio) cargo build --release --manifest-path benches/peers/rust-tokio/Cargo.toml >&2 ;;
    node-ws) (cd benches/peers/node-ws && npm ci --no-audit --no-fund --loglevel=error) >&2 ;;
  esac
done

server_command() { # name [--echo]
  local listen=(--listen "127.0.0.1:$WS_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT")
  case $1 in
    # Per-IP limits off: the load generator is a few addresses opening thousands of connections.
    wspush) echo "${WSPUSHD:-$ROOT/target/release/wspushd} --demo --max-connections-per-ip 0 --max-handshakes-per-ip-per-sec 0 --max-pending-handshakes-per-ip 0 ${listen[*]} ${2:-}" ;;
    go-gorilla|go-gobwas) echo "$ROOT/benches/peers/$1/$1 ${listen[*]} ${2:-}" ;;
    rust-tokio) echo "$ROOT/benches/peers/rust-tokio/target/release/rust-tokio ${listen[*]} ${2:-}" ;;
    node-ws) echo "node $ROOT/benches/peers/node-ws/server.js ${listen[*]} ${2:-}" ;;
  esac
}

SERVER_PID=
start_server() { # name [--echo]
  local log="$OUT/$1.log"
  # A leftover listener (SO_REUSEPORT) would silently take part of the connections.
  if [ -n "$(ss -tlnH "( sport = :$WS_PORT or sport = :$ADMIN_PORT )")" ]; then
    echo "ports $WS_PORT/$ADMIN_PORT are taken:" >&2; ss -tlnpH "( sport = :$WS_PORT or sport = :$ADMIN_PORT )" >&2; exit 1
  fi
  # shellcheck disable=SC2046
  $(server_command "$@") > "$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$log" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || break # it died: report its log below
    sleep 0.1
  done
  grep -q "listening on" "$log" || { echo "$1 did not start:" >&2; cat "$log" >&2; exit 1; }
  local owners
  owners=$(ss -tlnpH "( sport = :$WS_PORT )" | grep -o 'pid=[0-9]*' | sort -u | wc -l)
  if [ "$owners" != 1 ]; then
    echo "expected exactly one process listening on :$WS_PORT, found $owners" >&2; exit 1
  fi
}

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  sleep 1 # let the kernel reap the closed sockets before the next baseline
}

LOADGEN=("$ROOT/target/release/loadgen" --url "ws://127.0.0.1:$WS_PORT/ws" --admin "127.0.0.1:$ADMIN_PORT" --json)
# Each run connects from its own source addresses (127.0.R.2 and .3), so the previous run's
# client ports still in TIME_WAIT can't slow its connects down (that measured the client).
RUN=0
for server in "${SERVERS[@]}"; do
  for n in "${SIZES[@]}"; do
    echo "== $server: $n connections" >&2
    start_server "$server"
    RUN=$((RUN + 1))
    "${LOADGEN[@]}" --source-base "127.0.$RUN.2" --source-ips 2 -n "$n" --server-pid "$SERVER_PID" --phases connect,idle,publish,broadcast \
      --publish-rate "$PUBLISH_RATE" --publish-secs "$PUBLISH_SECS" > "$OUT/$server-$n.json" \
      || echo "loadgen reported anomalies for $server at $n (see $OUT/$server-$n.json)" >&2
    stop_server
  done
  echo "== $server: echo" >&2
  start_server "$server" --echo
  RUN=$((RUN + 1))
  "${LOADGEN[@]}" --source-base "127.0.$RUN.2" --source-ips 2 -n 100 --echo-conns 100 --server-pid "$SERVER_PID" --phases connect,echo \
    --echo-secs "$ECHO_SECS" > "$OUT/$server-echo.json" \
    || echo "loadgen reported anomalies for $server echo" >&2
  stop_server
done

python3 benches/report.py "$OUT" "${SIZES[*]}" "$PUBLISH_RATE" > benches/RESULTS.md.new
mv benches/RESULTS.md.new benches/RESULTS.md
cat benches/RESULTS.md
