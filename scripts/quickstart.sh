#!/usr/bin/env bash
# The main job, from a bare machine: start the local stack (installing what is missing), produce
# sample events (some malformed on purpose) into a 4-partition topic, run one worker until it has
# ingested everything, and show what it wrote: committed offsets and parts. The stack keeps
# running afterwards so you can look around; `scripts/stack.sh stop` ends it.
#
#   EVENTS=100000 scripts/quickstart.sh      # more events (default 20000)
set -euo pipefail
cd "$(dirname "$0")/.."

events="${EVENTS:-20000}"
scripts/stack.sh start
eval "$(scripts/stack.sh env)"

echo "== building sluice"
cargo build -p sluice --locked
sluice=target/debug/sluice

# The checked-in config names the stack's default ports; follow any overrides.
config=.stack/quickstart.toml
sed -e "s/127.0.0.1:22181/${SLUICE_ZK}/" -e "s/127.0.0.1:29092/${SLUICE_KAFKA}/" config/quickstart.toml > "$config"

echo "== producing ${events} sample events (one in 1000 malformed) to quickstart-events"
"$sluice" produce --brokers "$SLUICE_KAFKA" --topic quickstart-events --partitions 4 \
    --count "$events" --malformed-every 1000

echo "== running a worker until it has caught up"
"$sluice" run --config "$config" --stop-at-end

echo "== committed offsets"
"$sluice" offsets --config "$config"
echo "== committed parts"
"$sluice" parts --config "$config"
echo
echo "Parquet parts are under .stack/quickstart-data/page_views/ (data/<day>/ and quarantine/)."
echo "Run this again to ingest more; stop the services with: scripts/stack.sh stop"
