#!/usr/bin/env bash
# The test command. On a bare machine it installs and starts the real services (ZooKeeper, the
# Tansu broker, the s3s-fs S3 server; see scripts/stack.sh) and the telemetry tests' judges
# (promtool, headless Chromium; `scripts/stack.sh test-tools`), checks formatting and lints, builds,
# and runs every test against those services. It stops the services it started, and only those.
set -euo pipefail
cd "$(dirname "$0")/.."

started_here=0
if ! scripts/stack.sh status >/dev/null 2>&1; then
    started_here=1
fi
stop_stack() {
    if [ "$started_here" = 1 ]; then
        scripts/stack.sh stop || true
    fi
}
trap stop_stack EXIT

scripts/stack.sh start
scripts/stack.sh test-tools
eval "$(scripts/stack.sh env)"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the sluice binary the end-to-end tests run)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
