#!/usr/bin/env bash
# Groundwork for issue 16 (delivery across nodes through Redis): what each way of subscribing a
# node costs Redis, measured with Debian's redis-server 7.0 and its own tools, no wspush involved.
#   per-user: a node subscribes one channel per locally connected user (19,000 here);
#   sharded:  a node subscribes SHARDS channels and a publish goes to channel hash(user) % SHARDS,
#             so every node subscribed to that shard receives it and drops users it does not hold.
# Prints Redis memory per subscription and Redis CPU per PUBLISH with 1 and 2 subscribing nodes.
#   bash benches/redis_subscriptions.sh            (needs redis-server, redis-cli, redis-benchmark)
set -euo pipefail

USERS=${USERS:-19000}
SHARDS=${SHARDS:-64}
PUBLISHES=${PUBLISHES:-300000}
PAYLOAD=$(head -c 100 /dev/zero | tr '\0' x)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize no >"$dir/log" 2>&1 &
server=$!
subscribers=()
cleanup() {
  kill "${subscribers[@]}" 2>/dev/null || true
  kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
cli() { redis-cli -p "$port" "$@"; }
until cli PING >/dev/null 2>&1; do sleep 0.05; done

info() { cli INFO "$1" | tr -d '\r' | awk -F: -v key="$2" '$1 == key { print $2 }'; }
cpu() { echo "$(info cpu used_cpu_user) + $(info cpu used_cpu_sys)" | bc; }

# A node's subscription connection: SUBSCRIBE to the given channels, reading (and dropping) what comes.
subscribe() {
  redis-cli -p "$port" SUBSCRIBE "$@" >/dev/null 2>&1 &
  subscribers+=($!)
}
# Waits (at most 30 s) until channel $1 has exactly $2 subscribers.
wait_channels() {
  for _ in $(seq 300); do
    [ "$(cli PUBSUB NUMSUB "$1" | sed -n 2p)" = "$2" ] && return 0
    sleep 0.1
  done
  echo "channel $1 never had $2 subscribers" >&2
  exit 1
}

# Redis CPU-seconds per million PUBLISHes to channels named $1__rand_int__ over $2 keys.
publish_cpu() {
  local before after
  before=$(cpu)
  redis-benchmark -p "$port" -q -n "$PUBLISHES" -r "$2" -P 16 PUBLISH "$1__rand_int__" "$PAYLOAD" >/dev/null
  after=$(cpu)
  echo "scale=2; ($after - $before) * 1000000 / $PUBLISHES" | bc
}

base=$(info memory used_memory)
mapfile -t user_channels < <(seq -f "u:%.0f" 0 $((USERS - 1)))
subscribe "${user_channels[@]}"
wait_channels "u:$((USERS - 1))" 1
per_user_bytes=$(( ($(info memory used_memory) - base) / USERS ))
# redis-benchmark's __rand_int__ is 12 digits wide: the per-user channels it hits are named alike.
# So measure publish CPU on channels it can name: subscribe the same count under that naming.
kill "${subscribers[@]}"; subscribers=()
mapfile -t bench_channels < <(seq -f "u:%012.0f" 0 $((USERS - 1)))
subscribe "${bench_channels[@]}"
wait_channels "u:$(printf %012d $((USERS - 1)))" 1
per_user_cpu_1=$(publish_cpu "u:" "$USERS")
# Two nodes holding half the users each: a publish still reaches one node.
kill "${subscribers[@]}"; subscribers=()
half=$((USERS / 2))
subscribe "${bench_channels[@]:0:$half}"
subscribe "${bench_channels[@]:$half}"
wait_channels "u:000000000000" 1
wait_channels "u:$(printf %012d $((USERS - 1)))" 1
per_user_cpu_2=$(publish_cpu "u:" "$USERS")
kill "${subscribers[@]}"; subscribers=()

mapfile -t shard_channels < <(seq -f "s:%012.0f" 0 $((SHARDS - 1)))
subscribe "${shard_channels[@]}"
wait_channels "s:$(printf %012d $((SHARDS - 1)))" 1
sharded_cpu_1=$(publish_cpu "s:" "$SHARDS")
subscribe "${shard_channels[@]}" # a second node: every shard channel has two subscribers
wait_channels "s:000000000000" 2
sharded_cpu_2=$(publish_cpu "s:" "$SHARDS")
subscribe "${shard_channels[@]}"
subscribe "${shard_channels[@]}" # four nodes
wait_channels "s:000000000000" 4
sharded_cpu_4=$(publish_cpu "s:" "$SHARDS")

echo "redis $(info server redis_version), $USERS users, $SHARDS shards, $PUBLISHES publishes of ${#PAYLOAD} bytes (pipelined 16)"
echo "per-user channels: ${per_user_bytes} B of Redis memory per subscribed user"
echo "Redis CPU-seconds per million publishes:"
echo "  per-user, 1 node:  $per_user_cpu_1"
echo "  per-user, 2 nodes: $per_user_cpu_2   (each publish reaches only the node holding the user)"
echo "  sharded,  1 node:  $sharded_cpu_1"
echo "  sharded,  2 nodes: $sharded_cpu_2   (each publish reaches both nodes; each drops what it does not hold)"
echo "  sharded,  4 nodes: $sharded_cpu_4   (each publish reaches all four)"
