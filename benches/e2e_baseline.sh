#!/usr/bin/env bash
# End-to-end throughput of one worker: broker -> decode -> sort -> Parquet -> storage -> commit.
# Produces EVENTS sample events (~110 bytes of JSON each) into a fresh 4-partition topic on the
# local stack, then times one release-built worker ingesting them with --stop-at-end and prints
# its summary line (events/s, MB/s) and peak RSS.
#
#   EVENTS=500000 benches/e2e_baseline.sh
#   TELEMETRY=0 EVENTS=500000 benches/e2e_baseline.sh   # the same without the metrics endpoint
#
# The stack's broker uses sqlite storage by default (exact watermarks, which --stop-at-end
# needs); it serves about 70-100k msg/s here and so bounds this figure. Not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

events="${EVENTS:-500000}"
target="${CARGO_TARGET_DIR:-target}"
scripts/stack.sh start >/dev/null
eval "$(scripts/stack.sh env)"
cargo build --release -p sluice --locked
sluice="$target/release/sluice"

topic="bench-$(date +%s)"
config=".stack/$topic.toml"
sed -e "s/127.0.0.1:22181/${SLUICE_ZK}/" -e "s/127.0.0.1:29092/${SLUICE_KAFKA}/" \
    -e "s#/sluice/quickstart#/sluice/bench/$topic#" -e "s#quickstart-events#$topic#" \
    -e "s#file://.stack/quickstart-data#file://.stack/bench-data#" \
    -e "s/max_age_ms = 2000/max_age_ms = 10000/" -e "s/max_rows = 50000/max_rows = 200000/" \
    config/quickstart.toml > "$config"
if [ "${TELEMETRY:-1}" = 0 ]; then
    printf '\n[telemetry]\nenabled = false\n' >> "$config"
else
    printf '\n[telemetry]\nlisten_address = "127.0.0.1:0"\nrefresh_ms = %s\n' "${REFRESH_MS:-5000}" >> "$config"
fi

"$sluice" produce --brokers "$SLUICE_KAFKA" --topic "$topic" --partitions 4 --count "$events" 2>/dev/null
echo "== one worker, $events events, 4 partitions, telemetry ${TELEMETRY:-1}"
SLUICE_LOG=warn /usr/bin/time -f "peak RSS %M KB, %U s user + %S s system CPU, %e s wall" \
    "$sluice" run --config "$config" --stop-at-end
