#!/usr/bin/env bash
# Replay throughput: a seeded corpus produced to a topic and ingested by one worker, then the
# whole of it replayed (`sluice replay run --from 0`: read back from the topic, decoded, its
# views applied, sorted, encoded, uploaded and swapped in) on the benchmark stack (the one
# benches/throughput.sh uses). Prints events/s, CPU seconds, events/s per core (events over
# user + system CPU seconds) and peak RSS of the replay process.
#
#   benches/replay.sh                   # 1,000,000 events (about 180 MB of JSON), 4 partitions
#   EVENTS=200000 benches/replay.sh
#
# Settings (environment): EVENTS, SEED (42), PROFILE (release), KEEP_STACK (0), and the stack's
# SLUICE_BENCH_STACK_DIR, SLUICE_BENCH_ZK_PORT, SLUICE_BENCH_KAFKA_PORT, SLUICE_BENCH_S3_PORT as
# for benches/throughput.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

events="${EVENTS:-1000000}"
seed="${SEED:-42}"
profile="${PROFILE:-release}"
work="target/bench-replay"

echo "== building sluice ($profile)"
cargo build --profile "$profile" --workspace --bins --locked
case "$profile" in
    dev) bin=target/debug/sluice ;;
    *) bin="target/$profile/sluice" ;;
esac

export SLUICE_STACK_DIR="${SLUICE_BENCH_STACK_DIR:-.stack-bench}"
export SLUICE_ZK_PORT="${SLUICE_BENCH_ZK_PORT:-22281}"
export SLUICE_KAFKA_PORT="${SLUICE_BENCH_KAFKA_PORT:-29192}"
export SLUICE_S3_PORT="${SLUICE_BENCH_S3_PORT:-29100}"
export SLUICE_KAFKA_STORAGE=memory
stop_stack() { :; }
if ! scripts/stack.sh status >/dev/null 2>&1 && [ "${KEEP_STACK:-0}" != 1 ]; then
    stop_stack() { scripts/stack.sh stop >/dev/null 2>&1 || true; }
fi
trap stop_stack EXIT
scripts/stack.sh start >/dev/null
eval "$(scripts/stack.sh env)"

rm -rf "$work"
mkdir -p "$work"
run_id="$(date +%s)"
topic="bench-replay-$run_id"
config="$work/replay.toml"
sed -e "s|^zookeeper_connect = .*|zookeeper_connect = \"$SLUICE_ZK\"|" \
    -e "s|^root = .*|root = \"/sluice/bench-replay-$run_id\"|" \
    -e "s|^bootstrap_servers = .*|bootstrap_servers = \"$SLUICE_KAFKA\"|" \
    -e "s|^url = .*|url = \"file://$PWD/$work/data\"|" \
    -e "s|^topic = .*|topic = \"$topic\"|" \
    benches/bench.toml >"$config"

echo "== $events events produced to $topic (4 partitions) and ingested by one worker"
"$bin" produce --brokers "$SLUICE_KAFKA" --topic "$topic" --count "$events" --partitions 4 \
    --seed "$seed" >/dev/null
"$bin" run --config "$config" --stop-at-end 2>/dev/null | tail -1

echo "== the whole topic replayed"
/usr/bin/time -v "$bin" replay run --config "$config" --table page_views --from 0 --id bench \
    >"$work/replay.out" 2>"$work/replay.err"
wall=$(grep 'Elapsed (wall clock)' "$work/replay.err" | awk '{print $NF}' |
    awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
user=$(grep 'User time' "$work/replay.err" | awk '{print $NF}')
sys=$(grep 'System time' "$work/replay.err" | awk '{print $NF}')
rss=$(grep 'Maximum resident' "$work/replay.err" | awk '{print $NF}')
grep 'swapped in' "$work/replay.out"
# The rows the replay rebuilt: what the topic held (the broker may have taken fewer than produced).
rows=$(grep -o 'rows replaced by [0-9]*' "$work/replay.out" | awk '{print $NF}')
awk -v n="$rows" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" \
    'BEGIN { printf "replay: %d events in %.2f s: %.0f events/s; %.2f CPU s: %.0f events/s per core; peak RSS %.0f MiB\n",
        n, w, n / w, u + s, n / (u + s), r / 1024 }'
