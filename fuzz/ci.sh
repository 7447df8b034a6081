#!/usr/bin/env bash
# CI fuzz smoke (called by tests/run-all.sh): every committed regression input once through its
# target, then each target for FUZZ_SECONDS (default 60) starting from the committed seed corpus.
# New inputs go to a scratch directory: the committed corpus is only read. Fails on any crash,
# assertion, timeout or leak; prints execs per target. Crash inputs land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

export RUSTC_BOOTSTRAP=1 # cargo-fuzz passes -Zsanitizer flags; this toolchain is stable
seconds=${FUZZ_SECONDS:-60}
started=$SECONDS

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "-- installing cargo-fuzz"
  t0=$SECONDS
  cargo install cargo-fuzz --locked
  echo "-- cargo-fuzz installed in $((SECONDS - t0)) s"
fi

t0=$SECONDS
cargo fuzz build
echo "-- fuzz targets built in $((SECONDS - t0)) s"
mapfile -t targets < <(cargo fuzz list)
[ ${#targets[@]} -gt 0 ] || { echo "FAIL: cargo fuzz list names no target" >&2; exit 1; }

scratch=$(mktemp -d "${TMPDIR:-/tmp}/wspush-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

for target in "${targets[@]}"; do
  [ -d "regressions/$target" ] || continue
  inputs=(regressions/"$target"/*)
  [ -e "${inputs[0]}" ] || continue
  echo "-- $target: ${#inputs[@]} regression input(s)"
  # File arguments make libFuzzer run each input once and exit non-zero on the first failure.
  cargo fuzz run "$target" "${inputs[@]}" -- -timeout=120 >"$scratch/$target.regressions.log" 2>&1 \
    || { tail -n 60 "$scratch/$target.regressions.log"; echo "FAIL: a regression input of $target fails again" >&2; exit 1; }
done

summary=()
for target in "${targets[@]}"; do
  echo "-- $target: ${seconds} s from corpus/$target"
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  # -timeout: one input running this long is a hang (the targets' own deadlines are 20 s).
  if ! cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=120 -print_final_stats=1 >"$log" 2>&1; then
    grep -vE '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' "$log" | tail -n 80
    echo "FAIL: fuzz target $target found a failing input (see above; kept under fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
  rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log")
  added=$(awk '/stat::new_units_added/ {print $2}' "$log")
  summary+=("$(printf '%-16s %10s execs  %7s/s  %5s new inputs' "$target" "${execs:-?}" "${rate:-?}" "${added:-?}")")
done

if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && [ -n "$(git status --porcelain -- corpus regressions)" ]; then
  git status --porcelain -- corpus regressions
  echo "FAIL: the fuzz run changed the committed corpus" >&2
  exit 1
fi

echo "-- fuzz summary (${seconds} s per target, $((SECONDS - started)) s in all)"
printf '   %s\n' "${summary[@]}"
