//! The metrics, by name. Names follow Prometheus conventions: a `sluice_` prefix, base units in
//! the name (`_seconds`, `_bytes`), `_total` on counters (the exporter adds nothing itself).
//!
//! | name | type | labels |
//! |---|---|---|
//! | `sluice_partition_committed_offset` | gauge | topic, partition |
//! | `sluice_partition_high_watermark` | gauge | topic, partition |
//! | `sluice_partition_lag_messages` | gauge | topic, partition |
//! | `sluice_partition_lag_seconds` | gauge | topic, partition |
//! | `sluice_partition_consumed_events_total` | counter | topic, partition |
//! | `sluice_partition_consumed_bytes_total` | counter | topic, partition |
//! | `sluice_topic_unowned_partitions` | gauge | topic |
//! | `sluice_table_rows_committed_total` | counter | table |
//! | `sluice_table_bytes_committed_total` | counter | table |
//! | `sluice_table_parts_written_total` | counter | table |
//! | `sluice_table_quarantined_rows_total` | counter | table, reason |
//! | `sluice_flush_duration_seconds` | histogram | |
//! | `sluice_commit_duration_seconds` | histogram | |
//! | `sluice_buffered_bytes` | gauge | |
//! | `sluice_memory_budget_bytes` | gauge | |
//! | `sluice_owned_partitions` | gauge | |
//! | `sluice_assigned_partitions` | gauge | |
//! | `sluice_rebalances_total` | counter | |
//! | `sluice_handovers_total` | counter | |
//! | `sluice_session_rejoins_total` | counter | |
//! | `sluice_coordination_session_up` | gauge | |
//! | `sluice_merges_total` | counter | table |
//! | `sluice_merge_input_parts_total` | counter | table |
//! | `sluice_merge_bytes_written_total` | counter | table |
//! | `sluice_merge_failures_total` | counter | table |
//! | `sluice_merge_duration_seconds` | histogram | |
//! | `sluice_table_write_amplification` | gauge | table |
//! | `sluice_table_scope_parts_max` | gauge | table |
//! | `sluice_table_part_records` | gauge | table |
//! | `sluice_table_sealed_scopes` | gauge | table |
//! | `sluice_table_merge_backlog` | gauge | table |
//! | `sluice_retired_objects_deleted_total` | counter | table |
//! | `sluice_ingest_paused_partitions` | gauge | |
//! | `sluice_ingest_pauses_total` | counter | |
//! | `sluice_partition_skipped_messages_total` | counter | topic, partition |
//! | `sluice_dependency_unavailable_seconds` | gauge | dependency |
//! | `sluice_dependency_outages_total` | counter | dependency |
//! | `sluice_dependency_failures_total` | counter | dependency |
//! | `sluice_dependency_unavailable_seconds_total` | counter | dependency |
//! | `sluice_table_parts_under_replicated` | gauge | table |
//! | `sluice_repair_backlog_copies` | gauge | |
//! | `sluice_repair_copies_total` | counter | endpoint |
//! | `sluice_repair_bytes_total` | counter | endpoint |
//! | `sluice_scrub_bytes_total` | counter | |
//! | `sluice_storage_endpoint_up` | gauge | endpoint |
//! | `sluice_storage_checksum_failures_total` | counter | endpoint |
//! | `sluice_storage_read_failovers_total` | counter | endpoint |
//!
//! The replication metrics exist only with several storage endpoints. The repair gauges
//! (`sluice_table_parts_under_replicated`, `sluice_repair_backlog_copies`,
//! `sluice_storage_endpoint_up`) cover the scopes this worker merges, as its last repair pass
//! found them: sum the first two over workers; the last is 0 on every worker when an
//! endpoint is down (take the `max`).
//!
//! The registry gauges (`sluice_table_scope_parts_max`, `_part_records`, `_sealed_scopes`) are
//! fleet-wide: every worker reads them from the registry (take the `max` over workers).
//! `sluice_table_merge_backlog` counts the merges planned in the scopes this worker merges (sum
//! over workers). The write amplification of a table over the fleet is
//! `1 + sum(sluice_merge_bytes_written_total) / sum(sluice_table_bytes_committed_total)`; each
//! worker's gauge is that ratio over its own counters.
//!
//! Gauges idle out of the exposition after three telemetry refreshes without an update, and the
//! merge check (`merge.check_interval_ms`) may run less often than that. So the telemetry
//! sampler also sets the three registry gauges from its own listing of the scopes at every
//! refresh (see [`crate::parts`]), and touches `sluice_ingest_paused_partitions` and
//! `sluice_table_merge_backlog`, which the worker sets only when they change or at its merge
//! check, without changing their value: alerts on them see the series continuously. Counters
//! appear in the exposition only once incremented (a worker that never merged exports no
//! `sluice_merge_*` series).
//!
//! Every worker reports the fleet-wide `sluice_topic_unowned_partitions` (take the `max` over
//! workers). The partition gauges are those of the partitions this worker holds; after a handover the
//! old holder stops updating them and they disappear from its exposition after three refreshes,
//! so summing over workers never counts a partition twice for long.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::TelemetryError;

pub const PARTITION_COMMITTED_OFFSET: &str = "sluice_partition_committed_offset";
pub const PARTITION_HIGH_WATERMARK: &str = "sluice_partition_high_watermark";
pub const PARTITION_LAG_MESSAGES: &str = "sluice_partition_lag_messages";
pub const PARTITION_LAG_SECONDS: &str = "sluice_partition_lag_seconds";
pub const PARTITION_CONSUMED_EVENTS: &str = "sluice_partition_consumed_events_total";
pub const PARTITION_CONSUMED_BYTES: &str = "sluice_partition_consumed_bytes_total";
pub const TOPIC_UNOWNED_PARTITIONS: &str = "sluice_topic_unowned_partitions";
pub const TABLE_ROWS_COMMITTED: &str = "sluice_table_rows_committed_total";
pub const TABLE_BYTES_COMMITTED: &str = "sluice_table_bytes_committed_total";
pub const TABLE_PARTS_WRITTEN: &str = "sluice_table_parts_written_total";
pub const TABLE_QUARANTINED_ROWS: &str = "sluice_table_quarantined_rows_total";
pub const FLUSH_DURATION: &str = "sluice_flush_duration_seconds";
pub const COMMIT_DURATION: &str = "sluice_commit_duration_seconds";
pub const BUFFERED_BYTES: &str = "sluice_buffered_bytes";
pub const MEMORY_BUDGET_BYTES: &str = "sluice_memory_budget_bytes";
pub const OWNED_PARTITIONS: &str = "sluice_owned_partitions";
pub const ASSIGNED_PARTITIONS: &str = "sluice_assigned_partitions";
pub const REBALANCES: &str = "sluice_rebalances_total";
pub const HANDOVERS: &str = "sluice_handovers_total";
pub const SESSION_REJOINS: &str = "sluice_session_rejoins_total";
pub const SESSION_UP: &str = "sluice_coordination_session_up";
pub const MERGES: &str = "sluice_merges_total";
pub const MERGE_INPUT_PARTS: &str = "sluice_merge_input_parts_total";
pub const MERGE_BYTES_WRITTEN: &str = "sluice_merge_bytes_written_total";
pub const MERGE_FAILURES: &str = "sluice_merge_failures_total";
pub const MERGE_DURATION: &str = "sluice_merge_duration_seconds";
pub const TABLE_WRITE_AMPLIFICATION: &str = "sluice_table_write_amplification";
pub const TABLE_SCOPE_PARTS_MAX: &str = "sluice_table_scope_parts_max";
pub const TABLE_PART_RECORDS: &str = "sluice_table_part_records";
pub const TABLE_SEALED_SCOPES: &str = "sluice_table_sealed_scopes";
pub const TABLE_MERGE_BACKLOG: &str = "sluice_table_merge_backlog";
pub const RETIRED_OBJECTS_DELETED: &str = "sluice_retired_objects_deleted_total";
pub const INGEST_PAUSED_PARTITIONS: &str = "sluice_ingest_paused_partitions";
pub const INGEST_PAUSES: &str = "sluice_ingest_pauses_total";
pub const PARTITION_SKIPPED_MESSAGES: &str = "sluice_partition_skipped_messages_total";
pub const DEPENDENCY_UNAVAILABLE: &str = "sluice_dependency_unavailable_seconds";
pub const DEPENDENCY_OUTAGES: &str = "sluice_dependency_outages_total";
pub const DEPENDENCY_FAILURES: &str = "sluice_dependency_failures_total";
pub const DEPENDENCY_UNAVAILABLE_SECONDS: &str = "sluice_dependency_unavailable_seconds_total";
pub const TABLE_PARTS_UNDER_REPLICATED: &str = "sluice_table_parts_under_replicated";
pub const REPAIR_BACKLOG: &str = "sluice_repair_backlog_copies";
pub const REPAIR_COPIES: &str = "sluice_repair_copies_total";
pub const REPAIR_BYTES: &str = "sluice_repair_bytes_total";
pub const SCRUB_BYTES: &str = "sluice_scrub_bytes_total";
pub const STORAGE_ENDPOINT_UP: &str = "sluice_storage_endpoint_up";
pub const STORAGE_CHECKSUM_FAILURES: &str = "sluice_storage_checksum_failures_total";
pub const STORAGE_READ_FAILOVERS: &str = "sluice_storage_read_failovers_total";
pub const VIEWS_NOT_LIVE: &str = "sluice_views_not_live";
pub const VIEWS_HISTORY_PENDING: &str = "sluice_views_history_pending";

/// Every metric name, for tests and docs.
pub const ALL: &[&str] = &[
    VIEWS_NOT_LIVE,
    VIEWS_HISTORY_PENDING,
    PARTITION_COMMITTED_OFFSET,
    PARTITION_HIGH_WATERMARK,
    PARTITION_LAG_MESSAGES,
    PARTITION_LAG_SECONDS,
    PARTITION_CONSUMED_EVENTS,
    PARTITION_CONSUMED_BYTES,
    TOPIC_UNOWNED_PARTITIONS,
    TABLE_ROWS_COMMITTED,
    TABLE_BYTES_COMMITTED,
    TABLE_PARTS_WRITTEN,
    TABLE_QUARANTINED_ROWS,
    FLUSH_DURATION,
    COMMIT_DURATION,
    BUFFERED_BYTES,
    MEMORY_BUDGET_BYTES,
    OWNED_PARTITIONS,
    ASSIGNED_PARTITIONS,
    REBALANCES,
    HANDOVERS,
    SESSION_REJOINS,
    SESSION_UP,
    MERGES,
    MERGE_INPUT_PARTS,
    MERGE_BYTES_WRITTEN,
    MERGE_FAILURES,
    MERGE_DURATION,
    TABLE_WRITE_AMPLIFICATION,
    TABLE_SCOPE_PARTS_MAX,
    TABLE_PART_RECORDS,
    TABLE_SEALED_SCOPES,
    TABLE_MERGE_BACKLOG,
    RETIRED_OBJECTS_DELETED,
    INGEST_PAUSED_PARTITIONS,
    INGEST_PAUSES,
    PARTITION_SKIPPED_MESSAGES,
    DEPENDENCY_UNAVAILABLE,
    DEPENDENCY_OUTAGES,
    DEPENDENCY_FAILURES,
    DEPENDENCY_UNAVAILABLE_SECONDS,
    TABLE_PARTS_UNDER_REPLICATED,
    REPAIR_BACKLOG,
    REPAIR_COPIES,
    REPAIR_BYTES,
    SCRUB_BYTES,
    STORAGE_ENDPOINT_UP,
    STORAGE_CHECKSUM_FAILURES,
    STORAGE_READ_FAILOVERS,
];

/// Flush and commit latencies: from a few milliseconds (a small commit) to a minute (a large
/// flush against slow storage).
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle) and
/// describes every metric. Gauges not updated for `gauge_idle` disappear from the exposition:
/// that is how a handed-over partition's series leave the old holder's.
pub fn install(gauge_idle: Duration) -> Result<PrometheusHandle, TelemetryError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder_error =
        |source: metrics_exporter_prometheus::BuildError| TelemetryError::Recorder { source };
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_duration_seconds".to_string()),
            LATENCY_BUCKETS_SECONDS,
        )
        .map_err(recorder_error)?
        .idle_timeout(MetricKindMask::GAUGE, Some(gauge_idle))
        .install_recorder()
        .map_err(recorder_error)?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_gauge!(
        PARTITION_COMMITTED_OFFSET,
        "Next offset to ingest, as committed with the partition's parts"
    );
    describe_gauge!(
        PARTITION_HIGH_WATERMARK,
        "Offset the next message produced to the partition will get"
    );
    describe_gauge!(
        PARTITION_LAG_MESSAGES,
        "Messages in the partition not yet committed (high watermark minus committed offset)"
    );
    describe_gauge!(
        PARTITION_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest message not yet committed, from its Kafka timestamp; 0 when caught up"
    );
    describe_counter!(
        PARTITION_CONSUMED_EVENTS,
        "Messages read from the partition (including ones re-read after a restart)"
    );
    describe_counter!(
        PARTITION_CONSUMED_BYTES,
        Unit::Bytes,
        "Payload bytes read from the partition"
    );
    describe_gauge!(
        TOPIC_UNOWNED_PARTITIONS,
        "Partitions of the topic no worker holds a lease on, as this worker last read the fleet"
    );
    describe_counter!(TABLE_ROWS_COMMITTED, "Rows committed to the table");
    describe_counter!(
        TABLE_BYTES_COMMITTED,
        Unit::Bytes,
        "Parquet bytes committed to the table (data and quarantine parts)"
    );
    describe_counter!(
        TABLE_PARTS_WRITTEN,
        "Parts committed to the table (data and quarantine)"
    );
    describe_counter!(
        TABLE_QUARANTINED_ROWS,
        "Events committed to the table's quarantine, by reason code"
    );
    describe_histogram!(
        FLUSH_DURATION,
        Unit::Seconds,
        "Time from draining a partition's buffers to its commit: sort, encode, upload, commit"
    );
    describe_histogram!(
        COMMIT_DURATION,
        Unit::Seconds,
        "Time of the coordinator commit alone (parts and offset in one transaction)"
    );
    describe_gauge!(
        BUFFERED_BYTES,
        Unit::Bytes,
        "What counts against the memory budget: events buffered, and flushes in flight until committed (at twice their raw size)"
    );
    describe_gauge!(
        MEMORY_BUDGET_BYTES,
        Unit::Bytes,
        "The worker's memory budget (worker.memory_budget_bytes)"
    );
    describe_gauge!(OWNED_PARTITIONS, "Partitions whose lease this worker holds");
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        "Partitions rendezvous hashing assigns to this worker"
    );
    describe_counter!(
        REBALANCES,
        "Times the worker recomputed its partitions (membership or partitions changed)"
    );
    describe_counter!(
        HANDOVERS,
        "Partitions this worker flushed, committed and released to another worker"
    );
    describe_counter!(
        SESSION_REJOINS,
        "Times the worker lost its coordination session or a lease and rejoined"
    );
    describe_gauge!(
        SESSION_UP,
        "1 while the worker holds a coordination session and is a fleet member, else 0"
    );
    describe_merges();
    describe_dependencies();
}

fn describe_dependencies() {
    describe_counter!(
        PARTITION_SKIPPED_MESSAGES,
        "Messages Kafka deleted by retention before this worker could ingest them (recorded retention gaps)"
    );
    describe_gauge!(
        DEPENDENCY_UNAVAILABLE,
        Unit::Seconds,
        "How long the dependency (storage, zookeeper) has been unavailable to this worker; 0 when it answers"
    );
    describe_counter!(
        DEPENDENCY_OUTAGES,
        "Outages of the dependency this worker saw (a first failure after success)"
    );
    describe_counter!(
        DEPENDENCY_FAILURES,
        "Failed requests to the dependency, each retry counted"
    );
    describe_counter!(
        DEPENDENCY_UNAVAILABLE_SECONDS,
        Unit::Seconds,
        "Seconds the dependency was unavailable, added when each outage ends"
    );
}

fn describe_merges() {
    describe_counter!(
        MERGES,
        "Merges this worker swapped into the table's registry"
    );
    describe_counter!(
        MERGE_INPUT_PARTS,
        "Parts the table's merges by this worker replaced"
    );
    describe_counter!(
        MERGE_BYTES_WRITTEN,
        Unit::Bytes,
        "Parquet bytes of the parts this worker's merges wrote"
    );
    describe_counter!(
        MERGE_FAILURES,
        "Merges of the table that did not swap (refused, or failed; their objects are collected)"
    );
    describe_histogram!(
        MERGE_DURATION,
        Unit::Seconds,
        "Time of one merge: read, merge, write, verify, swap"
    );
    describe_gauge!(
        TABLE_WRITE_AMPLIFICATION,
        "Bytes written per byte flushed, by this worker: 1 + merged bytes / committed bytes"
    );
    describe_gauge!(
        TABLE_SCOPE_PARTS_MAX,
        "The most live parts one scope (partition value) of the table holds"
    );
    describe_gauge!(
        TABLE_PART_RECORDS,
        "Live part records of the table in the registry (one znode each in ZooKeeper)"
    );
    describe_gauge!(
        TABLE_SEALED_SCOPES,
        "Scopes of the table sealed into manifests in object storage"
    );
    describe_gauge!(
        VIEWS_NOT_LIVE,
        "Views this worker's configuration defines that are not live yet (a live worker does not define them, or a backfill of their topic waits for its handoff)"
    );
    describe_gauge!(
        VIEWS_HISTORY_PENDING,
        "Live views this worker defines whose history over the data committed before them is not registered yet"
    );
    describe_gauge!(
        TABLE_MERGE_BACKLOG,
        "Merges the policy plans in the scopes this worker merges, not yet run"
    );
    describe_gauge!(
        TABLE_PARTS_UNDER_REPLICATED,
        "Parts (and manifests) of the scopes this worker merges with fewer good copies than the replication factor, at its last repair pass"
    );
    describe_gauge!(
        REPAIR_BACKLOG,
        "Copies the last repair pass of this worker's scopes could not store (their endpoint down, or no good copy to read)"
    );
    describe_counter!(REPAIR_COPIES, "Copies the repair stored on the endpoint");
    describe_counter!(
        REPAIR_BYTES,
        Unit::Bytes,
        "Bytes the repair stored on the endpoint"
    );
    describe_counter!(
        SCRUB_BYTES,
        Unit::Bytes,
        "Bytes of copies the scrub re-read to verify their checksums"
    );
    describe_gauge!(
        STORAGE_ENDPOINT_UP,
        "1 if the endpoint answered the last repair pass's listing, else 0"
    );
    describe_counter!(
        STORAGE_CHECKSUM_FAILURES,
        "Copies read from the endpoint (by queries, merges, repair or scrub) that did not match their part's checksum"
    );
    describe_counter!(
        STORAGE_READ_FAILOVERS,
        "Reads that failed on the endpoint and went to another copy"
    );
    describe_counter!(
        RETIRED_OBJECTS_DELETED,
        "Objects of replaced parts deleted after the grace period"
    );
    describe_gauge!(
        INGEST_PAUSED_PARTITIONS,
        "Partitions this worker holds but does not read: a scope they feed is at its hard part limit"
    );
    describe_counter!(
        INGEST_PAUSES,
        "Times ingestion paused for a scope at its hard part limit"
    );
}
