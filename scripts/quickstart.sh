#!/usr/bin/env bash
# The main job, from a bare machine: start the local stack (installing what is missing), produce
# sample events (some malformed on purpose) into a 4-partition topic, run a fleet of three workers
# until they have ingested everything, and show the fleet and what it wrote: committed offsets and
# parts. The stack keeps
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

echo "== running three workers until they have caught up (logs: .stack/quickstart-*.log)"
pids=()
for id in qs-1 qs-2 qs-3; do
    "$sluice" run --config "$config" --worker-id "$id" --stop-at-end >".stack/quickstart-$id.log" 2>&1 &
    pids+=("$!")
done
# Show the fleet once all three have joined (or whatever it is when they are done already).
for _ in $(seq 1 40); do
    members="$("$sluice" members --config "$config" 2>/dev/null || true)"
    if grep -q '^3 members' <<<"$members"; then break; fi
    if ! kill -0 "${pids[@]}" 2>/dev/null; then break; fi
    sleep 0.25
done
echo "$members"
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
for id in qs-1 qs-2 qs-3; do
    echo "$id: $(grep '^ingested' ".stack/quickstart-$id.log" || echo "no summary; see .stack/quickstart-$id.log")"
done
if [ "$failed" != 0 ]; then echo "a worker failed; see .stack/quickstart-*.log" >&2; exit 1; fi

echo "== committed offsets"
"$sluice" offsets --config "$config"
echo "== committed parts"
"$sluice" parts --config "$config"
echo
echo "Parquet parts are under .stack/quickstart-data/page_views/ (data/<day>/ and quarantine/)."
echo "Run this again to ingest more; stop the services with: scripts/stack.sh stop"
