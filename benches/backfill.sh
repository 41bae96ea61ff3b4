#!/usr/bin/env bash
# Backfill throughput: `sluice backfill run` over a seeded corpus, from NDJSON files and then
# from Parquet files, each into a deployment of its own on the benchmark stack (the one
# benches/throughput.sh uses). Prints events/s, MB/s of input, CPU seconds and events/s per
# core (events over user + system CPU seconds) and peak RSS for each.
#
#   benches/backfill.sh                 # 1,000,000 events (about 180 MB of JSON) in 4 files
#   EVENTS=200000 FILES=2 benches/backfill.sh
#
# Settings (environment): EVENTS, FILES (4), SEED (42), PROFILE (release), KEEP_STACK (0), and
# the stack's SLUICE_BENCH_STACK_DIR, SLUICE_BENCH_ZK_PORT, SLUICE_BENCH_KAFKA_PORT,
# SLUICE_BENCH_S3_PORT as for benches/throughput.sh.
#
# The Parquet files are the data parts the NDJSON backfill wrote (the table's own columns), so
# both runs load the same rows.
set -euo pipefail
cd "$(dirname "$0")/.."

events="${EVENTS:-1000000}"
files="${FILES:-4}"
seed="${SEED:-42}"
profile="${PROFILE:-release}"
work="target/bench-backfill"

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
mkdir -p "$work/ndjson" "$work/parquet"
run_id="$(date +%s)"
topic="bench-backfill-$run_id"
"$bin" produce --brokers "$SLUICE_KAFKA" --topic "$topic" --count 0 --partitions 4 >/dev/null

# A deployment of its own per run: the benchmark config with this stack, root, storage, topic.
deployment() {
    local name="$1"
    sed -e "s|^zookeeper_connect = .*|zookeeper_connect = \"$SLUICE_ZK\"|" \
        -e "s|^root = .*|root = \"/sluice/bench-backfill-$run_id-$name\"|" \
        -e "s|^bootstrap_servers = .*|bootstrap_servers = \"$SLUICE_KAFKA\"|" \
        -e "s|^url = .*|url = \"file://$PWD/$work/$name-data\"|" \
        -e "s|^topic = .*|topic = \"$topic\"|" \
        benches/bench.toml >"$work/$name.toml"
}

# manifest DIR FORMAT FILE...: a snapshot manifest of the files, every partition at offset 0.
manifest() {
    local dir="$1" format="$2"
    shift 2
    {
        echo '{"table": "page_views", "offsets": {"0": 0, "1": 0, "2": 0, "3": 0}, "files": ['
        local sep=""
        for f in "$@"; do
            printf '%s{"path": "%s", "format": "%s", "sha256": "%s"}\n' \
                "$sep" "$(basename "$f")" "$format" "$(sha256sum "$f" | cut -d' ' -f1)"
            sep=","
        done
        echo ']}'
    } >"$dir/snapshot.json"
}

# measure NAME CONFIG DIR: runs the backfill under /usr/bin/time, prints the figures.
measure() {
    local name="$1" config="$2" dir="$3"
    local input_bytes
    input_bytes=$(find "$dir" \( -name '*.ndjson' -o -name '*.parquet' \) -printf '%s\n' |
        awk '{ s += $1 } END { print s }')
    /usr/bin/time -v "$bin" backfill run --config "$config" --snapshot "$dir/snapshot.json" \
        >"$work/$name.out" 2>"$work/$name.err"
    local wall user sys rss
    wall=$(grep 'Elapsed (wall clock)' "$work/$name.err" | awk '{print $NF}' |
        awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
    user=$(grep 'User time' "$work/$name.err" | awk '{print $NF}')
    sys=$(grep 'System time' "$work/$name.err" | awk '{print $NF}')
    rss=$(grep 'Maximum resident' "$work/$name.err" | awk '{print $NF}')
    grep 'handed over' "$work/$name.out"
    awk -v n="$events" -v b="$input_bytes" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v name="$name" \
        'BEGIN { printf "%s: %d events in %.2f s: %.0f events/s, %.1f MB/s of input; %.2f CPU s: %.0f events/s per core; peak RSS %.0f MiB\n",
            name, n, w, n / w, b / 1e6 / w, u + s, n / (u + s), r / 1024 }'
}

echo "== corpus: $events events in $files NDJSON files"
"$bin" produce --output "$work/corpus.ndjson" --count "$events" --seed "$seed" >/dev/null
split -n "l/$files" -d --additional-suffix=.ndjson "$work/corpus.ndjson" "$work/ndjson/events-"
rm "$work/corpus.ndjson"
manifest "$work/ndjson" ndjson "$work"/ndjson/*.ndjson
deployment ndjson
measure ndjson "$work/ndjson.toml" "$work/ndjson"

echo "== the same rows as Parquet files (the NDJSON backfill's data parts)"
i=0
while read -r part; do
    cp "$part" "$work/parquet/part-$i.parquet"
    i=$((i + 1))
done < <("$bin" parts --config "$work/ndjson.toml" --table page_views --paths | sed 's|^file://||')
manifest "$work/parquet" parquet "$work"/parquet/*.parquet
deployment parquet
measure parquet "$work/parquet.toml" "$work/parquet"
