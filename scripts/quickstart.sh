#!/usr/bin/env bash
# The main job, from a bare machine: start the local stack (installing what is missing), produce
# sample events (some malformed on purpose) into a 4-partition topic, run a fleet of three workers
# until they have ingested everything, and show the fleet and what it wrote: committed offsets,
# parts, and the results of two materialized views read with `sluice query`. The stack keeps
# running afterwards so you can look around; `scripts/stack.sh stop` ends it.
#
#   EVENTS=100000 scripts/quickstart.sh      # more events (default 20000)
#   SERVE=1 scripts/quickstart.sh            # then keep the workers running, with their live
#                                            # dashboards on http://127.0.0.1:9601/ to :9603/,
#                                            # until Ctrl-C
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

echo "== lag before ingesting (sluice lag: ZooKeeper and Kafka only, no worker needed)"
"$sluice" lag --config "$config" | tail -n 4

echo "== running three workers until they have caught up (logs: .stack/quickstart-*.log)"
pids=()
for n in 1 2 3; do
    "$sluice" run --config "$config" --worker-id "qs-$n" --stop-at-end --listen-address "127.0.0.1:960$n" \
        >".stack/quickstart-qs-$n.log" 2>&1 &
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

echo "== lag after (every partition committed up to its end)"
"$sluice" lag --config "$config"
echo "== committed parts"
"$sluice" parts --config "$config"
echo "== scopes (per partition value: live parts by level, sealed or not, merges planned)"
"$sluice" scopes --config "$config"
echo "== what the views computed (sluice query: SQL over the committed parts, partial states merged)"
"$sluice" query --config "$config" \
    "SELECT country, sum(views) AS views, round(sum(duration_ms) / sum(views), 1) AS avg_duration_ms,
            max(max_duration_ms) AS max_duration_ms
     FROM page_views_per_minute GROUP BY country ORDER BY views DESC LIMIT 5"
"$sluice" query --config "$config" \
    "SELECT e.country, e.failed, v.views, round(100.0 * e.failed / v.views, 2) AS failed_pct
     FROM (SELECT country, count(*) AS failed FROM page_view_errors GROUP BY country) e
     JOIN (SELECT country, sum(views) AS views FROM page_views_per_minute GROUP BY country) v
       ON e.country = v.country
     ORDER BY e.failed DESC LIMIT 5"
echo
echo "Parquet parts are under .stack/quickstart-data/<table>/ (data/<day>/ and quarantine/); query"
echo "them with: $sluice query --config $config \"SELECT ...\""

if [ "${SERVE:-0}" = 1 ]; then
    echo "== serving: three workers keep ingesting; produce more with"
    echo "   $sluice produce --brokers $SLUICE_KAFKA --topic quickstart-events --partitions 4 --count 100000"
    pids=()
    for n in 1 2 3; do
        "$sluice" run --config "$config" --worker-id "qs-$n" --listen-address "127.0.0.1:960$n" \
            >>".stack/quickstart-qs-$n.log" 2>&1 &
        pids+=("$!")
        echo "   qs-$n: dashboard http://127.0.0.1:960$n/  metrics http://127.0.0.1:960$n/metrics"
    done
    trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait "${pids[@]}"; echo "workers stopped"' INT TERM
    echo "   Ctrl-C stops the workers (they commit what they hold first)."
    wait "${pids[@]}" || true
    exit 0
fi
echo "Run this again to ingest more, or with SERVE=1 to keep workers and their dashboards up;"
echo "stop the services with: scripts/stack.sh stop"
