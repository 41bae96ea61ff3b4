//! Reading and writing single znodes: errors, names, directories, the small values Sluice keeps
//! in them.

use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use super::ZkCoordinator;
use crate::CoordError;

/// The most bytes one multi-op may carry (paths and data). ZooKeeper refuses requests above its
/// `jute.maxbuffer`, 1 MB by default; half of that leaves room for the request's framing and a
/// server configured lower.
pub(super) const MAX_MULTI_BYTES: usize = 512 * 1024;

/// What a multi-op of these (path, data length) operations sends, roughly: paths and data plus
/// a per-operation header.
pub(super) fn multi_size<'a>(ops: impl IntoIterator<Item = (&'a str, usize)>) -> usize {
    ops.into_iter()
        .map(|(path, data)| path.len() + data + 32)
        .sum()
}

/// The data of a `lease` znode (a unit's, or a scope's merge lease).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LeaseData {
    pub(super) worker: String,
    pub(super) epoch: u64,
    /// The session the ephemeral node belongs to (from its stat, not its data): a holder that
    /// is this very session is a lease taken by a request whose reply was lost.
    #[serde(skip)]
    pub(super) session: i64,
}

/// How long a request waits for a lost connection to come back: the client reconnects to its
/// session within the session timeout, or learns that it expired and the request fails with that.
const RECONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `e` means the request got no answer: the connection dropped (or was reset under the
/// request, which the client reports as the I/O error), it timed out, or it was throttled. A
/// read may simply be asked again; a write may or may not have been applied.
pub(super) fn unanswered(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::ConnectionLoss
            | zk::Error::Custom(_)
            | zk::Error::Timeout
            | zk::Error::Throttled
    )
}

/// What a multi-op whose request failed means: its session ended, or (a lost reply) the outcome
/// of the change to `at` is unknown.
pub(super) fn multi_unanswered(at: String, source: zk::Error) -> CoordError {
    match source {
        zk::Error::SessionExpired | zk::Error::ClientClosed => CoordError::SessionEnded {
            source: source.into(),
        },
        other => CoordError::Ambiguous {
            at,
            source: other.into(),
        },
    }
}

/// Waits between attempts of a request that got no answer, doubling up to 1 s, for at most
/// [`RECONNECT_PATIENCE`] in all.
pub(super) struct Patience {
    started: std::time::Instant,
    wait: std::time::Duration,
}

impl Patience {
    pub(super) fn new() -> Patience {
        Patience {
            started: std::time::Instant::now(),
            wait: std::time::Duration::from_millis(50),
        }
    }

    /// Waits before the next attempt; false (at once) once patience has run out.
    pub(super) async fn wait(&mut self) -> bool {
        if self.started.elapsed() >= RECONNECT_PATIENCE {
            return false;
        }
        tokio::time::sleep(self.wait).await;
        self.wait = (self.wait * 2).min(std::time::Duration::from_secs(1));
        true
    }
}

/// Asks `request`, a read (or anything the same when asked twice), again while the connection
/// is lost and the session lives: a ZooKeeper server restarting or a leader election within the
/// session timeout costs a short wait, not the session.
pub(super) async fn again<T, Fut>(mut request: impl FnMut() -> Fut) -> Result<T, zk::Error>
where
    Fut: std::future::Future<Output = Result<T, zk::Error>>,
{
    let mut patience = Patience::new();
    loop {
        match request().await {
            Err(e) if unanswered(&e) && patience.wait().await => {}
            other => return other,
        }
    }
}

pub(super) fn backend(path: &str, e: zk::Error) -> CoordError {
    match e {
        zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::AuthFailed => {
            CoordError::SessionEnded { source: e.into() }
        }
        other => CoordError::Backend {
            path: path.to_string(),
            source: other.into(),
        },
    }
}

/// Makes a value safe as one znode name segment.
pub(crate) fn encode_segment(value: &str) -> String {
    if value.is_empty() {
        return "_".to_string();
    }
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '/' | '%' => out.push_str(&format!("%{:02X}", ch as u32)),
            c if c.is_control() => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    if out == "." || out == ".." || out == "zookeeper" {
        out = format!("%{out}");
    }
    out
}

impl ZkCoordinator {
    /// How every persistent znode Sluice creates is made: with the deployment's ACL.
    pub(super) fn persistent(&self) -> zk::CreateOptions<'_> {
        zk::CreateMode::Persistent.with_acls(zk::Acls::new(&self.acls))
    }

    /// How every ephemeral znode (leases, members) is made: with the deployment's ACL.
    pub(super) fn ephemeral(&self) -> zk::CreateOptions<'_> {
        zk::CreateMode::Ephemeral.with_acls(zk::Acls::new(&self.acls))
    }

    pub(super) async fn ensure_dir(
        &self,
        client: &zk::Client,
        dir: &str,
    ) -> Result<(), CoordError> {
        // A read-only identity may not create (ZooKeeper checks that before it looks whether
        // the node exists); what it reads next finds the directory, or nothing.
        if !self.access.may_write
            || self
                .known_dirs
                .lock()
                .expect("dirs lock poisoned")
                .contains(dir)
        {
            return Ok(());
        }
        let options = self.persistent();
        again(|| client.mkdir(dir, &options))
            .await
            .map_err(|e| backend(dir, e))?;
        self.known_dirs
            .lock()
            .expect("dirs lock poisoned")
            .insert(dir.to_string());
        Ok(())
    }

    pub(super) async fn create_if_missing(
        &self,
        client: &zk::Client,
        path: &str,
        data: &[u8],
    ) -> Result<(), CoordError> {
        // Asked again after a lost connection: if the first one was applied, this one finds the
        // node, which is what was wanted.
        let options = self.persistent();
        match again(|| client.create(path, data, &options)).await {
            Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(backend(path, e)),
        }
    }

    pub(super) async fn read_lease_holder(
        client: &zk::Client,
        path: &str,
    ) -> Result<Option<LeaseData>, CoordError> {
        match again(|| client.get_data(path)).await {
            Ok((data, stat)) => serde_json::from_slice::<LeaseData>(&data)
                .map(|lease| {
                    Some(LeaseData {
                        session: stat.ephemeral_owner,
                        ..lease
                    })
                })
                .map_err(|e| CoordError::Corrupt {
                    path: path.to_string(),
                    source: e.into(),
                }),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(backend(path, e)),
        }
    }

    pub(super) fn parse_i64(path: &str, data: &[u8]) -> Result<Option<i64>, CoordError> {
        if data.is_empty() {
            return Ok(None);
        }
        std::str::from_utf8(data)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| CoordError::Corrupt {
                path: path.to_string(),
                source: format!(
                    "expected an integer, found {:?}",
                    String::from_utf8_lossy(data)
                )
                .into(),
            })
    }

    pub(super) async fn list(client: &zk::Client, path: &str) -> Result<Vec<String>, CoordError> {
        match again(|| client.list_children(path)).await {
            Ok(children) => Ok(children),
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(backend(path, e)),
        }
    }
}
