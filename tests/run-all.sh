#!/usr/bin/env bash
# Runs every test of the project: the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== build (release): library, header, examples"
cargo build --release --all-targets

echo "== the committed header matches what cbindgen generates"
git diff --exit-code -- include/wspush.h || { echo "include/wspush.h is stale: commit the regenerated header" >&2; exit 1; }

echo "== Rust unit and integration tests (C ABI and C example included)"
cargo test --release

echo "== wspushd against the contract the benchmark peers share"
python3 benches/peers/check_contract.py target/release/examples/wspushd --demo

echo "== the demo page in headless Chromium (reconnects across a daemon restart)"
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
node --test tests/browser/demo.test.mjs
