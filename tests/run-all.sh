#!/usr/bin/env bash
# Runs every test of the project. The README's test command, bash .ci/run, runs it after installing
# what the machine lacks; run it directly once everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== build (release): library, header, examples, and the workspace's tools (wspushd, loadgen)"
cargo build --release --workspace --all-targets

echo "== the committed header matches what cbindgen generates"
git diff --exit-code -- include/wspush.h || { echo "include/wspush.h is stale: commit the regenerated header" >&2; exit 1; }

echo "== src/ keeps its layers: no import loop, no file over 650 lines"
python3 tests/import_layers.py

echo "== Rust unit and integration tests (C ABI and C example included), and the tools' unit tests"
cargo test --release --workspace

echo "== a panic inside wspush becomes WSPUSH_RESULT_PANIC (test-only hook; debug profile, so the"
echo "   release library the bindings load is never built with the hook)"
cargo test --features test-hooks --test panic_hook --test history_race

echo "== the in-process Rust tests under AddressSanitizer + LeakSanitizer (own target dir)"
bash tests/asan.sh

echo "== wspushd against the contract the benchmark peers share"
python3 benches/peers/check_contract.py target/release/wspushd --demo --max-connections-per-ip 0 --max-handshakes-per-ip-per-sec 0 --max-pending-handshakes-per-ip 0

echo "== the browser client (bindings/js): its state machine on a fake WebSocket, and wspush.v1 against"
echo "   a real wspushd (resume, races with reconnects, reset on restart, backoff bounds)"
npm ci --prefix bindings/js --no-audit --no-fund --loglevel=error
(cd bindings/js && node --test test/*.test.mjs)

echo "== the demo page in headless Chromium (uses bindings/js; resumes after a drop, resets after a"
echo "   daemon restart)"
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
node --test tests/browser/demo.test.mjs

echo "== Python binding (ctypes) with a real websockets client"
python3 -m venv target/pyenv
PIP_DISABLE_PIP_VERSION_CHECK=1 target/pyenv/bin/pip install -q ./bindings/python pytest websockets
target/pyenv/bin/pytest -q bindings/python/tests

echo "== Go binding (cgo) and the Go host example, with the race detector"
echo "   (linked through pkg-config: the checkout's build, via the wspush-uninstalled.pc build.rs wrote)"
export PKG_CONFIG_PATH="$PWD/target/release/pkgconfig"
(cd bindings/go && go vet ./... && go test -race -count=1 ./...)
(cd examples/go_host && go vet ./... && go test -race -count=1 ./...)

echo "== installed like a C library (cargo cinstall into a temporary prefix: files, soname, exported"
echo "   symbols, pkg-config, version macros, the C example), the Python wheel outside the checkout,"
echo "   and Go through pkg-config"
bash tests/install.sh

echo "== fuzz smoke: regression inputs once, then each cargo-fuzz target 60 s from the committed seeds"
bash fuzz/ci.sh
