//! Coordination: leases on source units, committed offsets, and the registry of committed parts.
//!
//! [`Coordinator`] is the seam; [`ZkCoordinator`] (fleets) and [`EmbeddedCoordinator`] (a
//! laptop, unit tests) implement it, and both pass one conformance suite (in the `sluice-testkit`
//! crate, so it stays out of production builds).
//!
//! # The contract
//!
//! * A **unit** is one (topic, partition) of the source. At most one live [`Lease`] exists per
//!   unit. Each successful [`Coordinator::acquire_lease`] gives a strictly larger `epoch` than
//!   every earlier lease of that unit, and invalidates every earlier lease; except that a lease
//!   this session already holds is returned as it is, which is how an acquisition whose reply
//!   was lost (a ZooKeeper leader election) learns that it succeeded.
//! * [`Coordinator::commit`] is atomic: the parts of every table it carries become visible and
//!   the unit's next offset advances together, or nothing changes. It succeeds only while the
//!   lease it is given is the unit's current one, so a worker that lost its lease (a paused
//!   process, an expired session) can never commit: it gets [`CoordError::LeaseLost`].
//! * A part is visible in [`Coordinator::list_parts`] iff the commit that carried it succeeded,
//!   until a merge swap replaces it or a seal moves it into a manifest.
//! * A **scope** is one table's partition value. [`Coordinator::swap`] and [`Coordinator::seal`]
//!   change a scope atomically and only under its current [`MergeLease`] (epochs grow like unit
//!   leases'); ingest commits only add records and never conflict with them.
//!   [`Coordinator::read_scope`] reads a scope consistently: never both a swap's inputs and its
//!   output, never neither.
//! * A **backfill** claims partitions that have no committed offset yet
//!   ([`Coordinator::claim_backfill`]); no lease of them is given until its
//!   [`Coordinator::hand_off`], which registers its staged parts and sets the partitions' offsets
//!   atomically under the backfill's own lease, so a zombie backfill cannot hand off.
//! * The **view registry** ([`ViewRegistry`]) says which views every commit carries. A commit
//!   that names the registry version it was made under ([`Commit::views_version`]) fails with
//!   [`CoordError::ViewsChanged`] once the registry changed, so no flush made without a view
//!   commits after the view went live ([`Coordinator::activate_view`], atomic with reading the
//!   source partitions' committed offsets). A view's history registers once
//!   ([`Coordinator::complete_view_history`]).
//! * A **replay** ([`ReplayGeneration`]) swaps records of any scopes it holds the merge leases
//!   of in one change ([`Coordinator::replace_range`]): its old records out (live ones, and sealed
//!   ones through a new manifest), its new records in, the old objects kept for a rollback
//!   ([`Coordinator::roll_back_replay`]) until they are collected
//!   ([`Coordinator::collect_replay`]); only one of the two ever succeeds.
//! * A lease ends by [`Coordinator::release_lease`], by [`Coordinator::close`], or when the
//!   holder's session ends (ZooKeeper session expiry; process exit for the embedded backend).
//! * A **member** is a worker registered with [`Coordinator::join`]. At most one live member per
//!   id exists; membership ends with [`Coordinator::leave`] or with the session, like a lease.
//!   [`assignment`] turns the member list into the same unit-to-worker map in every process.
//! * Watches ([`Coordinator::watch_members`], [`Coordinator::watch_lease`],
//!   [`Coordinator::session_ended`]) return a [`Signal`] that resolves after the watched thing
//!   may have changed. A signal may fire spuriously (callers re-read), but never stays silent
//!   after a change; every signal also fires when the session ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod assignment;
mod backfill;
mod embedded;
pub mod gaps;
mod registry;
mod replay;
mod views;
mod zookeeper;

pub use backfill::{BackfillLease, BackfillPlan, BackfillState, BackfillStatus, StagedFile};
pub use embedded::EmbeddedCoordinator;
pub use gaps::{Gap, PartitionGaps, RetentionGaps};
pub use registry::{
    KeptFor, MergeLease, OffsetSpan, PartKind, PartRecord, Retired, ScopeListing, ScopeState,
    ScopeSummary, SealedManifest,
};
pub use replay::{valid_replay_id, ReplayGeneration, Resealed};
pub use views::{LiveView, ViewHistory, ViewHistoryLease, ViewPoint, ViewRegistry};
pub use zookeeper::{Credentials, ZkCoordinator, ZkSecurity, ZkTls};

/// One partition of a source topic: the unit of ownership and of committed offsets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnitId {
    pub topic: String,
    pub partition: i32,
}

impl UnitId {
    pub fn new(topic: impl Into<String>, partition: i32) -> UnitId {
        UnitId {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Proof of ownership of a unit, valid until a newer lease of the unit is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub unit: UnitId,
    pub worker_id: String,
    /// Strictly increasing per unit; recorded in every part committed under this lease.
    pub epoch: u64,
    /// Backend-specific fencing token (the ZooKeeper epoch znode's version).
    pub(crate) token: i64,
}

/// One atomic commit: new parts (of any tables) plus the unit's next offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The offset consumption resumes from after this commit (last consumed offset + 1).
    pub next_offset: i64,
    pub parts: Vec<PartRecord>,
    /// The view registry version the parts were made under: the commit fails with
    /// [`CoordError::ViewsChanged`] if the registry changed since. `None` checks nothing (tools
    /// and tests that carry no view).
    pub views_version: Option<i64>,
}

/// What a unit's committed state looks like, for `sluice offsets` and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    pub unit: UnitId,
    pub next_offset: Option<i64>,
    pub epoch: u64,
    /// Worker id of the current lease holder, if any.
    pub holder: Option<String>,
}

/// A worker in the fleet, as it registered itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Unique among live members (`worker.id`).
    pub id: String,
    /// Relative capacity: a member's expected share of the units is its weight over the sum.
    pub weight: f64,
    /// Where the worker can be reached (`worker.address`), if it said.
    pub address: Option<String>,
    pub host: String,
    pub pid: u32,
    pub joined_at_ms: i64,
    /// The views its configuration defines, as `name:fingerprint`: a view goes live once every
    /// live member defines it.
    #[serde(default)]
    pub views: Vec<String>,
}

/// Resolves once a watched thing may have changed; see the crate docs.
pub type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A cause that may be only a message (a refusal the backend described in words).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("the merge lease of table `{table}` at `{value}` is held by worker `{holder}`")]
    ScopeLeaseHeld {
        table: String,
        value: String,
        holder: String,
    },
    #[error("the merge lease of table `{table}` at `{value}` (epoch {epoch}) was lost to a newer one; this worker must not change the scope")]
    ScopeLeaseLost {
        table: String,
        value: String,
        epoch: u64,
    },
    #[error("a live worker already registered as `{id}`; give each worker its own `worker.id` (or wait for the old session to expire)")]
    MemberExists { id: String },
    #[error("cannot reach ZooKeeper at {connect} within {timeout:?}; check that ZooKeeper runs and `coordination.zookeeper_connect` is right")]
    Unreachable {
        connect: String,
        timeout: Duration,
        #[source]
        source: Cause,
    },
    #[error("ZooKeeper refuses {identity} {what} under the deployment root {root}; fix: give `coordination.auth` the identity (user and password) that owns this deployment, or use another `coordination.root`")]
    NotAuthorized {
        root: String,
        /// `user NAME` or `an anonymous session`; never the password.
        identity: String,
        what: String,
    },
    /// The TLS settings cannot be used (not PEM, a key that does not match): a configuration
    /// error, found before connecting.
    #[error("ZooKeeper TLS: {problem}")]
    Tls {
        problem: String,
        #[source]
        source: Cause,
    },
    #[error("{unit} is claimed by backfill `{backfill}` until its handoff; no worker consumes it before (see `sluice backfill status`)")]
    HandoffPending { unit: UnitId, backfill: String },
    #[error("{unit} already has a committed offset ({next_offset}): the stream has started there, and a backfill hands over only partitions nothing was committed for")]
    AlreadyCommitted { unit: UnitId, next_offset: i64 },
    #[error("backfill `{id}` is run by `{holder}`; wait for it, or for its session to expire if that process is gone")]
    BackfillHeld { id: String, holder: String },
    #[error("the lease of backfill `{id}` (epoch {epoch}) was lost to a newer one; this process must not change the backfill")]
    BackfillLeaseLost { id: String, epoch: u64 },
    #[error("no backfill `{id}` is recorded")]
    NoBackfill { id: String },
    #[error("the view registry changed since the flush of {unit} was made (a view went live or was dropped): the flush is made again under the new one")]
    ViewsChanged { unit: UnitId },
    #[error("the history of view `{view}` is computed by `{holder}`")]
    ViewHistoryHeld { view: String, holder: String },
    #[error("no view `{view}` is live")]
    NoView { view: String },
    #[error("no replay `{id}` is recorded (rolled back or collected already?); see `sluice replay status`")]
    NoReplay { id: String },
    #[error("lease of {unit} is held by worker `{holder}`")]
    LeaseHeld { unit: UnitId, holder: String },
    #[error("lease of {unit} (epoch {epoch}) was lost to a newer owner; this worker must stop consuming it")]
    LeaseLost { unit: UnitId, epoch: u64 },
    #[error("the change to {at} conflicts with the registry: {what}")]
    Conflict {
        /// The unit or the scope (`table` at `value`) changed.
        at: String,
        what: String,
        #[source]
        source: Option<Cause>,
    },
    #[error(
        "the coordination session has ended (expired, closed, or refused); a new session is needed"
    )]
    SessionEnded {
        #[source]
        source: Cause,
    },
    #[error("the outcome of the change to {at} is unknown: its reply was lost")]
    Ambiguous {
        /// The unit or the scope (`table` at `value`) changed.
        at: String,
        #[source]
        source: Cause,
    },
    #[error("coordination failed at {path}")]
    Backend {
        path: String,
        #[source]
        source: Cause,
    },
    #[error("corrupt coordination data at {path}")]
    Corrupt {
        path: String,
        #[source]
        source: Cause,
    },
    #[error("{what} would send {bytes} bytes to the coordinator in one request, above the {limit}-byte budget that keeps it inside ZooKeeper's 1 MB request limit")]
    TooLarge {
        what: String,
        bytes: usize,
        limit: usize,
    },
    #[error("embedded coordinator state {path}")]
    Embedded {
        path: String,
        #[source]
        source: Cause,
    },
}

/// The seam between workers and the coordination backend. See the crate docs for the contract.
#[async_trait]
pub trait Coordinator: Send + Sync + fmt::Debug {
    /// Takes the lease of `unit` for `worker_id`; [`CoordError::LeaseHeld`] if another live
    /// lease exists (also one of this worker id from an older session that has not ended). A
    /// lease this session holds already is returned as it is (same epoch and token).
    async fn acquire_lease(&self, unit: &UnitId, worker_id: &str) -> Result<Lease, CoordError>;

    /// Gives the lease up. Releasing a lease that was already lost is not an error.
    async fn release_lease(&self, lease: &Lease) -> Result<(), CoordError>;

    /// The offset to resume `unit` from, or `None` if nothing was ever committed.
    async fn committed_offset(&self, unit: &UnitId) -> Result<Option<i64>, CoordError>;

    /// Atomically registers `commit.parts` and sets the unit's next offset, iff `lease` is the
    /// unit's current lease ([`CoordError::LeaseLost`] otherwise, with nothing changed).
    /// [`CoordError::Ambiguous`] means the outcome is unknown; read [`Self::committed_offset`].
    async fn commit(&self, lease: &Lease, commit: &Commit) -> Result<(), CoordError>;

    /// All live part records of `table` (both kinds), in no particular order: each scope read
    /// consistently, as [`Self::read_scope`] does. Parts sealed into manifests are not listed.
    async fn list_parts(&self, table: &str) -> Result<Vec<PartRecord>, CoordError>;

    /// Every scope (partition value) of `table` with its live record count and state.
    async fn list_scopes(&self, table: &str) -> Result<Vec<ScopeSummary>, CoordError>;

    /// One scope's live records and state, read so that no swap or seal happened meanwhile
    /// (see [`ScopeListing`]); an unknown scope reads as empty.
    async fn read_scope(&self, table: &str, value: &str) -> Result<ScopeListing, CoordError>;

    /// Takes the merge lease of a scope for `worker_id`, with an epoch larger than every earlier
    /// one of the scope; [`CoordError::ScopeLeaseHeld`] if another live one exists. One this
    /// session holds already is returned as it is.
    async fn acquire_merge_lease(
        &self,
        table: &str,
        value: &str,
        worker_id: &str,
    ) -> Result<MergeLease, CoordError>;

    /// Gives a merge lease up; releasing one that was already lost is not an error.
    async fn release_merge_lease(&self, lease: &MergeLease) -> Result<(), CoordError>;

    /// Atomically, iff `lease` is the scope's current merge lease: removes the records of
    /// `inputs`, registers `output`, and records `retired` (the inputs' objects, to delete after
    /// the grace period). [`CoordError::LeaseLost`] for a stale lease, [`CoordError::Conflict`] if
    /// an input is no longer registered or the output already is; nothing changes then.
    /// [`CoordError::Ambiguous`] means the outcome is unknown: read the scope.
    async fn swap(
        &self,
        lease: &MergeLease,
        inputs: &[PartRecord],
        output: &PartRecord,
        retired: &Retired,
    ) -> Result<(), CoordError>;

    /// Atomically, iff `lease` is current: removes the records of `parts` and points the scope
    /// at `manifest` (which holds them, and the parts of the manifest it replaces, if any, whose
    /// object `retired` then lists). Errors as [`Self::swap`].
    async fn seal(
        &self,
        lease: &MergeLease,
        parts: &[PartRecord],
        manifest: &SealedManifest,
        retired: Option<&Retired>,
    ) -> Result<(), CoordError>;

    /// Replaces a live part record's `replicas` (the endpoints holding a verified copy, as the
    /// repair found them). Returns false, changing nothing, if the part is no longer live
    /// (merged away or sealed meanwhile). Not fenced by a lease: it records a fact about
    /// storage, and every writer of it writes what it verified.
    async fn set_replicas(
        &self,
        part: &PartRecord,
        replicas: &[String],
    ) -> Result<bool, CoordError>;

    /// Claims the partitions of a backfill: records `plan`, and from then on
    /// [`Self::acquire_lease`] of each planned partition fails with
    /// [`CoordError::HandoffPending`] until the handoff. Only if none of them has a committed
    /// offset ([`CoordError::AlreadyCommitted`]), a lease holder ([`CoordError::LeaseHeld`]) or
    /// another backfill's claim ([`CoordError::HandoffPending`]); nothing changes otherwise.
    /// Claiming the same plan again changes nothing (a resume); another plan under the same id
    /// is a [`CoordError::Conflict`].
    async fn claim_backfill(&self, plan: &BackfillPlan) -> Result<(), CoordError>;

    /// Takes the lease of a claimed backfill for `holder`, with an epoch larger than every
    /// earlier one; [`CoordError::BackfillHeld`] if another live one exists. One this session
    /// holds already is returned as it is.
    async fn acquire_backfill_lease(
        &self,
        id: &str,
        holder: &str,
    ) -> Result<BackfillLease, CoordError>;

    /// Gives a backfill lease up; releasing one that was already lost is not an error.
    async fn release_backfill_lease(&self, lease: &BackfillLease) -> Result<(), CoordError>;

    /// Records the parts made from one file, iff `lease` is current
    /// ([`CoordError::BackfillLeaseLost`] otherwise). They stay invisible to readers until the
    /// handoff. A file staged already keeps what it has (conversion is deterministic).
    async fn stage_backfill_file(
        &self,
        lease: &BackfillLease,
        file: &StagedFile,
    ) -> Result<(), CoordError>;

    /// A backfill's state, staged files and lease holder; `None` if none has that id.
    async fn read_backfill(&self, id: &str) -> Result<Option<BackfillStatus>, CoordError>;

    /// Every recorded backfill, running or handed off.
    async fn list_backfills(&self) -> Result<Vec<BackfillStatus>, CoordError>;

    /// The handoff, atomically and iff `lease` is current and every file of the plan is staged:
    /// registers every staged part, sets each planned partition's committed offset to the
    /// plan's, releases the partitions to the workers, and records the time. If a partition was
    /// committed meanwhile nothing changes ([`CoordError::AlreadyCommitted`], or a
    /// [`CoordError::Conflict`] when it raced the handoff). A backfill already handed off is
    /// not an error. [`CoordError::Ambiguous`]: read the backfill to learn the outcome.
    async fn hand_off(&self, lease: &BackfillLease) -> Result<(), CoordError>;

    /// Marks a backfill that was not handed off as cancelled, iff `lease` is current: it can
    /// no longer hand off ([`CoordError::Conflict`]). Cancelling twice is not an error; a
    /// backfill handed off cannot be cancelled.
    async fn cancel_backfill(&self, lease: &BackfillLease) -> Result<(), CoordError>;

    /// Forgets a cancelled backfill, iff `lease` is current: its claims end (the partitions go
    /// back to the workers, still with no committed offset), and its staged files and state are
    /// deleted. Delete its objects first: nothing records them afterwards.
    async fn forget_backfill(&self, lease: &BackfillLease) -> Result<(), CoordError>;

    /// The view registry: the live views, their histories, its version.
    async fn read_views(&self) -> Result<ViewRegistry, CoordError>;

    /// Creates the registry holding `views` (live from the start: no history) iff none exists;
    /// returns the registry either way.
    async fn init_views(&self, views: &[LiveView]) -> Result<ViewRegistry, CoordError>;

    /// Makes `view` live, iff the registry is still at `expected_version`: records as its
    /// points the committed offset of each of `units` (the source topic's partitions), read so
    /// that none of them committed between the reading and the change ([`CoordError::Conflict`]
    /// otherwise, nothing changed: read again and retry). Points that are all 0 are recorded as
    /// none: there is no history. A view live already is a [`CoordError::Conflict`].
    async fn activate_view(
        &self,
        expected_version: i64,
        view: &LiveView,
        units: &[UnitId],
    ) -> Result<(), CoordError>;

    /// Marks a live view dropped, iff the registry is still at `expected_version`: commits stop
    /// carrying it, and it never goes live again under its name. Its table keeps its parts.
    async fn drop_view(
        &self,
        expected_version: i64,
        name: &str,
        at_ms: i64,
    ) -> Result<(), CoordError>;

    /// Takes the lease of computing a view's history, with an epoch larger than every earlier
    /// one; [`CoordError::ViewHistoryHeld`] if another live one exists. One this session holds
    /// already is returned as it is.
    async fn acquire_view_history_lease(
        &self,
        view: &str,
        worker_id: &str,
    ) -> Result<ViewHistoryLease, CoordError>;

    /// Gives a history lease up; releasing one that was already lost is not an error.
    async fn release_view_history_lease(&self, lease: &ViewHistoryLease) -> Result<(), CoordError>;

    /// Registers a view's history atomically: its `parts` and the record that it is done, iff
    /// none was registered before ([`CoordError::Conflict`] otherwise, nothing changed). The
    /// lease is not needed for that: only one history ever registers, whoever computed it.
    async fn complete_view_history(
        &self,
        lease: &ViewHistoryLease,
        parts: &[PartRecord],
        history: &ViewHistory,
    ) -> Result<(), CoordError>;

    /// Swaps a replay's generation in, atomically and iff every lease of `leases` is its scope's
    /// current merge lease ([`CoordError::ScopeLeaseLost`]) and the view registry is still at
    /// `views_version` ([`CoordError::Conflict`]): removes `generation.old` (a
    /// [`CoordError::Conflict`] if one is no longer registered), registers `generation.new`,
    /// points each scope of `generation.resealed` at its new manifest, records
    /// [`ReplayGeneration::kept_sets`], [`ReplayGeneration::replaced_manifests`] and the
    /// generation itself. Every record's scope must be among the leases'; a replay recorded
    /// under the same id is a conflict. Nothing
    /// changes on an error; [`CoordError::Ambiguous`]: read the replay to learn the outcome.
    async fn replace_range(
        &self,
        leases: &[MergeLease],
        views_version: i64,
        generation: &ReplayGeneration,
    ) -> Result<(), CoordError>;

    /// Rolls a swapped replay back, atomically and iff every lease is current: removes its new
    /// records (a [`CoordError::Conflict`] if one was merged or sealed since), registers its old
    /// ones again ([`ReplayGeneration::restored`], sealed ones as live records beside the new
    /// manifest), replaces its kept sets by [`ReplayGeneration::rolled_back_sets`] and forgets
    /// the replay. [`CoordError::NoReplay`] once it was rolled back or collected.
    async fn roll_back_replay(
        &self,
        leases: &[MergeLease],
        id: &str,
        now_ms: i64,
    ) -> Result<ReplayGeneration, CoordError>;

    /// A recorded replay, `None` if none has that id.
    async fn read_replay(&self, id: &str) -> Result<Option<ReplayGeneration>, CoordError>;

    /// Every recorded replay: swapped in, not rolled back or collected.
    async fn list_replays(&self) -> Result<Vec<ReplayGeneration>, CoordError>;

    /// Forgets a replay and its kept sets in one change, and returns those sets: delete their
    /// objects afterwards (no rollback can want them any more). Empty if it is not recorded.
    async fn collect_replay(&self, id: &str) -> Result<Vec<Retired>, CoordError>;

    /// The retired object sets of `table` not forgotten yet.
    async fn list_retired(&self, table: &str) -> Result<Vec<Retired>, CoordError>;

    /// Forgets a retired set (its objects are deleted); forgetting it twice is not an error.
    async fn forget_retired(&self, retired: &Retired) -> Result<(), CoordError>;

    /// Committed state of every unit the registry knows.
    async fn list_units(&self) -> Result<Vec<UnitState>, CoordError>;

    /// Records that offsets `gap.from..gap.to` of `unit` were deleted by retention before they
    /// were ingested ([`RetentionGaps::record`]: the same gap recorded again counts once). Not
    /// fenced by a lease: the range is a fact about the broker, whoever observes it.
    async fn record_gap(&self, unit: &UnitId, gap: &Gap) -> Result<(), CoordError>;

    /// The retention gaps recorded for `topic`'s partitions (empty if none).
    async fn retention_gaps(&self, topic: &str) -> Result<RetentionGaps, CoordError>;

    /// Registers this session as a fleet member; [`CoordError::MemberExists`] if a live session
    /// already did under the same id (this one included).
    async fn join(&self, member: &Member) -> Result<(), CoordError>;

    /// Ends this session's membership (a graceful leave), keeping its leases.
    async fn leave(&self, member_id: &str) -> Result<(), CoordError>;

    /// The live members, sorted by id, and a signal for the next change of that list.
    async fn watch_members(&self) -> Result<(Vec<Member>, Signal), CoordError>;

    /// The worker id holding `unit`'s lease, if any, and a signal for the next change of it.
    async fn watch_lease(&self, unit: &UnitId) -> Result<(Option<String>, Signal), CoordError>;

    /// Resolves when this handle's session has ended (expired, closed): its leases and its
    /// membership are gone, and its commits can no longer succeed.
    fn session_ended(&self) -> Signal;

    /// Whether requests are answered now. False while a lost connection is being re-established
    /// to the same session (a leader election, a quorum lost for a while): the session and its
    /// leases may well survive, but nothing commits until it is back.
    fn connected(&self) -> bool {
        true
    }

    /// Whether this session may change the registry: false for a read-only identity, which
    /// can list and report but not run a worker.
    fn may_write(&self) -> bool {
        true
    }

    /// Whether anyone at all, authenticated or not, may change the deployment's registry.
    fn open_to_anyone(&self) -> bool {
        false
    }

    /// Ends this handle's session: its leases and membership are released.
    async fn close(&self) -> Result<(), CoordError>;
}
