#!/usr/bin/env bash
# Sluice's merges benchmark, the one command: builds release binaries, starts a stack of its own
# (ZooKeeper, the Tansu broker on its sqlite engine and the s3s-fs S3 server, on ports apart
# from the test stack's and the throughput benchmark's), and runs `sluice-bench merges`:
#
#   1. The same seeded events (`sluice produce`'s generator and keys) produced at a steady pace
#      into a fresh topic, ingested by one worker with tiny flushes (benches/merges.toml: every
#      250 ms or 2,000 rows per partition, one part per day), twice: with merge.enabled = false,
#      then with merges on, each run with its own topic, ZooKeeper root and storage prefix.
#   2. Every second of each run: the most live part records of one scope and the table's total
#      (a ZooKeeper read of the scope znodes' child counts, what `sluice scopes --json` reports
#      as live_parts), and the rows committed (the worker's /metrics). The run with merges goes
#      on until every scope has gone quiet (merge.quiet_after_ms = 10 s), had its final merges
#      and been sealed. Both series are printed side by side.
#   3. Write amplification from the worker's counters: (sluice_table_bytes_committed_total +
#      sluice_merge_bytes_written_total) / sluice_table_bytes_committed_total, against the bound
#      1 + merge.max_rewrites; the table's part records (znodes) at catch-up, at their peak and
#      once sealed; the parts a reader sees at the end by level (`sluice parts --json`).
#   4. A one-day `sluice query --verbose` (events and total duration per country on 2026-11-20)
#      over both runs' data, QUERY_RUNS times each, interleaved: min and median time, parts read,
#      and a check that both data sets give the same answer.
#
# It prints a summary table at the end and writes everything (both series included) to
# target/bench/merges/merges-results.json; the report is also kept in
# target/bench/merges/merges-report.txt, the workers' logs next to it. About 4-5 minutes on
# 2 cores once built (each run: ~40 s of production, the merged one ~30 s more to seal).
#
#   benches/merges.sh                      # 600,000 events at 15,000/s into 4 partitions, S3
#   STORAGE=file benches/merges.sh         # parts on the local file system instead of S3
#   EVENTS=300000 RATE=10000 benches/merges.sh
#   PROFILE=dev benches/merges.sh          # debug build: a smoke run (queries and merges slower)
#
# Settings (environment): EVENTS (600000), RATE (15000 events/s), SEED (42), PARTITIONS (4),
# STORAGE (s3 | file), QUERY_RUNS (5), DAY (2026-11-20), PROFILE (release), KEEP_STACK (0: the
# stack this script started is stopped at the end), SLUICE_LOG (the workers' log filter, info),
# and the stack's SLUICE_MERGES_STACK_DIR (target/bench/merges-stack; wiped when this script
# starts the stack), SLUICE_MERGES_ZK_PORT (22481), SLUICE_MERGES_KAFKA_PORT (29392),
# SLUICE_MERGES_S3_PORT (29300). The flush policy and [merge] settings are in
# benches/merges.toml (CONFIG=FILE for another).
#
# Why sqlite: the memory engine reports a partition's high watermark as the base offset of its
# last record batch, so a worker never sees the last batch and never catches up; at 15,000
# events/s the sqlite engine keeps up.
set -euo pipefail
cd "$(dirname "$0")/.."

events="${EVENTS:-600000}"
rate="${RATE:-15000}"
seed="${SEED:-42}"
partitions="${PARTITIONS:-4}"
storage="${STORAGE:-s3}"
query_runs="${QUERY_RUNS:-5}"
day="${DAY:-2026-11-20}"
profile="${PROFILE:-release}"
config="${CONFIG:-benches/merges.toml}"
work_dir="target/bench/merges"

case "$storage" in
    s3 | file) ;;
    *) echo "STORAGE must be s3 or file, not '$storage'" >&2; exit 2 ;;
esac

echo "== building sluice and sluice-bench ($profile)" >&2
# The workspace's binaries, as benches/throughput.sh builds them (the same feature set).
cargo build --profile "$profile" --workspace --bins --locked
case "$profile" in
    dev) bin_dir=target/debug ;;
    *) bin_dir="target/$profile" ;;
esac

export SLUICE_STACK_DIR="${SLUICE_MERGES_STACK_DIR:-target/bench/merges-stack}"
export SLUICE_ZK_PORT="${SLUICE_MERGES_ZK_PORT:-22481}"
export SLUICE_KAFKA_PORT="${SLUICE_MERGES_KAFKA_PORT:-29392}"
export SLUICE_S3_PORT="${SLUICE_MERGES_S3_PORT:-29300}"
export SLUICE_KAFKA_STORAGE=sqlite

stop_stack() { :; }
cleanup() {
    local rc=$?
    stop_stack
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! scripts/stack.sh status >/dev/null 2>&1; then
    # Nothing of ours runs there: start from an empty state (earlier runs' topics and parts are
    # of no use), and stop what we start at the end.
    scripts/stack.sh reset >/dev/null 2>&1 || true
    if [ "${KEEP_STACK:-0}" != 1 ]; then
        stop_stack() { scripts/stack.sh stop >/dev/null 2>&1 || true; }
    fi
fi
# Readiness is probed over each server's protocol (no sleeps): see scripts/stack.sh.
scripts/stack.sh start >/dev/null
eval "$(scripts/stack.sh env)"

mkdir -p "$work_dir"
args=(merges --config "$config" --events "$events" --rate "$rate" --seed "$seed"
    --partitions "$partitions" --work-dir "$work_dir" --query-runs "$query_runs" --day "$day"
    --brokers "$SLUICE_KAFKA" --zookeeper "$SLUICE_ZK" --sluice "$bin_dir/sluice")
if [ "$storage" = s3 ]; then
    args+=(--s3-endpoint "$SLUICE_S3_ENDPOINT" --s3-bucket "$SLUICE_S3_BUCKET"
        --s3-access-key "$SLUICE_S3_ACCESS_KEY")
fi

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); build: $profile; stack: $SLUICE_STACK_DIR" >&2
"$bin_dir/sluice-bench" "${args[@]}" | tee "$work_dir/merges-report.txt"
