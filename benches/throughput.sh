#!/usr/bin/env bash
# Sluice's throughput benchmark, the one command: builds release binaries, starts a stack of its
# own (ZooKeeper, and the Tansu broker on its in-memory engine, on ports apart from the test
# stack's), and runs `sluice-bench run`: a seeded corpus of web-analytics events; the conversion
# path alone (NDJSON -> decode -> sort -> Parquet -> storage) on one thread and on all cores;
# then from the broker, in the same run, a plain rdkafka consumer reading the topic (the
# yardstick), one worker, one worker replicating every part to three `file://` endpoints
# (write quorum 2), and two workers. It prints events/s, MB/s, CPU seconds per million events
# and peak RSS for each, and writes them to target/bench/results.json.
#
#   benches/throughput.sh                  # 1,000,000 events (about 180 MB of JSON)
#   EVENTS=200000 benches/throughput.sh    # a smaller corpus
#   BROKER=0 benches/throughput.sh         # the conversion path only: no stack needed
#   VIEWS=benches/view-filter.toml benches/throughput.sh       # with a filter view
#   VIEWS=benches/view-aggregation.toml benches/throughput.sh  # with an aggregation view
#
# Settings (environment): EVENTS, SEED (42), PARTITIONS (4), VIEWS (a fragment of views and
# their tables appended to benches/bench.toml), BROKER (1), KEEP_STACK (0: the stack this script
# started is stopped at the end), PROFILE (release; `dev` for a smoke run),
# and the stack's SLUICE_BENCH_STACK_DIR (.stack-bench), SLUICE_BENCH_ZK_PORT (22281),
# SLUICE_BENCH_KAFKA_PORT (29192), SLUICE_BENCH_S3_PORT (29100).
#
# Why the memory engine: the sqlite engine serves 70-100k msg/s here, which would measure the
# broker. The memory engine reports a partition's high watermark as the base offset of its last
# record batch (see docs/performance.md), so every step stops that batch short of the end; all
# broker steps read to the same ends, so they compare.
set -euo pipefail
cd "$(dirname "$0")/.."

events="${EVENTS:-1000000}"
seed="${SEED:-42}"
partitions="${PARTITIONS:-4}"
profile="${PROFILE:-release}"
work_dir="target/bench"

echo "== building sluice and sluice-bench ($profile)"
# The workspace's binaries, not `-p sluice -p sluice-bench`: the same feature set as
# `scripts/test.sh` builds, so a smoke run after it reuses DataFusion's build instead of
# compiling it again with other features.
cargo build --profile "$profile" --workspace --bins --locked
case "$profile" in
    dev) bin_dir=target/debug ;;
    *) bin_dir="target/$profile" ;;
esac

args=(run --events "$events" --seed "$seed" --partitions "$partitions" --work-dir "$work_dir"
    --config benches/bench.toml --sluice "$bin_dir/sluice")
if [ -n "${VIEWS:-}" ]; then
    args+=(--views "$VIEWS")
fi

stop_stack() { :; }
if [ "${BROKER:-1}" = 1 ]; then
    export SLUICE_STACK_DIR="${SLUICE_BENCH_STACK_DIR:-.stack-bench}"
    export SLUICE_ZK_PORT="${SLUICE_BENCH_ZK_PORT:-22281}"
    export SLUICE_KAFKA_PORT="${SLUICE_BENCH_KAFKA_PORT:-29192}"
    export SLUICE_S3_PORT="${SLUICE_BENCH_S3_PORT:-29100}"
    export SLUICE_KAFKA_STORAGE=memory
    started_here=0
    scripts/stack.sh status >/dev/null 2>&1 || started_here=1
    if [ "$started_here" = 1 ] && [ "${KEEP_STACK:-0}" != 1 ]; then
        stop_stack() { scripts/stack.sh stop >/dev/null 2>&1 || true; }
    fi
    trap stop_stack EXIT
    scripts/stack.sh start >/dev/null
    eval "$(scripts/stack.sh env)"
    args+=(--brokers "$SLUICE_KAFKA" --zookeeper "$SLUICE_ZK")
fi

"$bin_dir/sluice-bench" "${args[@]}"
