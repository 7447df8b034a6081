#!/usr/bin/env bash
# The Rust test suite under AddressSanitizer (with LeakSanitizer), part of tests/run-all.sh:
# use-after-free, overflows, double frees and leaks in the engine, its unsafe FFI layer and the
# tests' C-ABI calls.
#
# Needs the nightly-only -Zsanitizer flag, hence RUSTC_BOOTSTRAP=1 on this stable toolchain.
# --target makes RUSTFLAGS apply to the test crates only, not to build scripts and proc-macros
# (which would not link). A separate target dir keeps the instrumented build apart. Cost on
# this 2-core machine: about 2.7 min of CPU to build from clean, 40 s to run.
#
# Left out, because they compile or build something themselves and an ASan-instrumented
# libwspush.so cannot be linked into a plain gcc/cargo build: c_example, c_example_valgrind,
# cpp_example, daemon, loadgen_smoke, and the `daemon::` half of conformance. The library they
# drive is the same code the tests below exercise in-process.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Zsanitizer=address"
export CARGO_TARGET_DIR="${ASAN_TARGET_DIR:-target/asan}"
# Fail on the first report; leak checking at exit is on by default on x86_64 Linux.
export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1}"
target="$(rustc -vV | sed -n 's/^host: //p')"

cargo test --target "$target" --lib \
  --test api --test frames --test http --test liveness --test ffi --test ffi_misuse --test faults --test auth --test history \
  --test redis_bridge
# The daemon's own unit tests (command line, admin routing and protections), a workspace crate.
cargo test --target "$target" -p wspushd
cargo test --target "$target" --test conformance -- library::
# The output path's property test, fewer cases (instrumented code is slower). tests/hostile.rs is
# left out: it asserts bounds on this process's memory, which ASan's quarantine distorts.
PROPTEST_CASES=8 cargo test --target "$target" --test output_property
# The panicking calls of the test hook must leave no reference count off by one.
cargo test --target "$target" --features test-hooks --test panic_hook --test history_race
