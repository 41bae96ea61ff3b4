//! Opening a session (authenticated if the deployment says so), finding out what it may do
//! under the deployment root, and ending a session its client gave up on.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use zookeeper_client as zk;

use super::auth::{granted, open_to_anyone, Credentials};
use super::nodes::{again, backend};
use super::tls::ZkSecurity;
use super::{Access, ZkCoordinator};
use crate::CoordError;

impl ZkCoordinator {
    /// Connects (over TLS and authenticating, as `security` says), creates the deployment root
    /// if it is missing, and reads what the root's ACL grants this session. Fails within
    /// `connect_timeout` when no server of the ensemble answers (a failed TLS handshake looks
    /// the same from here), and with [`CoordError::NotAuthorized`] when the identity may not
    /// even read the root.
    pub async fn connect(
        connect: &str,
        root: &str,
        session_timeout: Duration,
        connect_timeout: Duration,
        security: ZkSecurity,
    ) -> Result<ZkCoordinator, CoordError> {
        let ZkSecurity { credentials, tls } = security;
        let unreachable = |source: crate::Cause| CoordError::Unreachable {
            connect: connect.to_string(),
            timeout: connect_timeout,
            source,
        };
        let mut connector = zk::Client::connector()
            .with_session_timeout(session_timeout)
            .with_fail_eagerly();
        if let Some(c) = &credentials {
            connector = connector.with_auth("digest", &c.auth());
        }
        type Connecting<'a> = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<zk::Client, zk::Error>> + Send + 'a>,
        >;
        let connecting: Connecting<'_> = match &tls {
            // Every server of the connect string is then reached over TLS.
            Some(tls) => Box::pin(connector.with_tls(tls.options()?).secure_connect(connect)),
            None => Box::pin(connector.connect(connect)),
        };
        let client = match tokio::time::timeout(connect_timeout, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(unreachable(e.into())),
            Err(_) => return Err(unreachable("no server answered in time".into())),
        };
        let acls = credentials
            .as_ref()
            .map_or_else(|| zk::Acls::anyone_all().to_vec(), Credentials::acls);
        let root = root.trim_end_matches('/').to_string();
        let root = if root.is_empty() {
            "/".to_string()
        } else {
            root
        };
        let access = Self::prepare_root(&client, &root, &acls, credentials.as_ref()).await?;
        Ok(ZkCoordinator {
            client: RwLock::new(Some(client)),
            connect: connect.to_string(),
            root: root.trim_end_matches('/').to_string(),
            offset_versions: Mutex::new(HashMap::new()),
            known_dirs: Mutex::new(HashSet::new()),
            scope_versions: Mutex::new(HashMap::new()),
            closed: tokio::sync::watch::channel(false).0,
            acls,
            access,
        })
    }

    /// Creates the root if it is missing (a read-only identity could not, and need not), then
    /// reads what its ACL grants this session.
    async fn prepare_root(
        client: &zk::Client,
        root: &str,
        acls: &[zk::Acl],
        credentials: Option<&Credentials>,
    ) -> Result<Access, CoordError> {
        let exists = again(|| client.check_stat(root))
            .await
            .map_err(|e| backend(root, e))?
            .is_some();
        if !exists {
            let options = zk::CreateMode::Persistent.with_acls(zk::Acls::new(acls));
            again(|| client.mkdir(root, &options))
                .await
                .map_err(|e| match e {
                    zk::Error::NoAuth => not_authorized(root, credentials, "creating it"),
                    e => backend(root, e),
                })?;
        }
        let (root_acls, _) = again(|| client.get_acl(root)).await.map_err(|e| match e {
            zk::Error::NoAuth => not_authorized(root, credentials, "reading its ACL"),
            e => backend(root, e),
        })?;
        let id = credentials.map(Credentials::id);
        // Reading an ACL takes READ (or ADMIN) already: that this answered says that much.
        let rights = granted(&root_acls, id.as_deref());
        Ok(Access {
            may_write: rights.has(zk::Permission::CREATE)
                && rights.has(zk::Permission::WRITE)
                && rights.has(zk::Permission::DELETE),
            open_to_anyone: open_to_anyone(&root_acls),
        })
    }

    /// Whether this session may change the registry (a read-only identity may not).
    pub fn may_write(&self) -> bool {
        self.access.may_write
    }

    /// Whether the root's ACL lets anyone at all change what is under it.
    pub fn open_to_anyone(&self) -> bool {
        self.access.open_to_anyone
    }
}

fn not_authorized(root: &str, credentials: Option<&Credentials>, what: &str) -> CoordError {
    CoordError::NotAuthorized {
        root: root.to_string(),
        identity: credentials.map_or_else(
            || "an anonymous session".to_string(),
            |c| format!("user `{}`", c.user()),
        ),
        what: what.to_string(),
    }
}

/// How long an abandoned session is pursued: by then the ensemble has expired it for sure.
const ABANDONED_PURSUIT: Duration = Duration::from_secs(600);

/// Ends, in the ensemble, a session its client gave up on. The client declares a session
/// expired when no server answered within the session timeout (a quorum lost); but a new
/// leader restores every session with a fresh timeout, so the old one would keep its ephemeral
/// leases for another whole timeout after the quorum returns while the worker's next session
/// waits for them. Nothing uses it any more (its flushes were dropped with it), so it is
/// reattached and closed as soon as a server answers; a session the ensemble already expired
/// is refused, which ends the pursuit too.
pub(super) async fn end_abandoned(connect: String, session: zk::SessionInfo, timeout: Duration) {
    let started = std::time::Instant::now();
    let mut wait = Duration::from_millis(200);
    while started.elapsed() < ABANDONED_PURSUIT {
        let attempt = zk::Client::connector()
            .with_session(session.clone())
            .with_session_timeout(timeout)
            .with_fail_eagerly()
            .connect(&connect);
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(client)) => {
                tracing::info!(session = ?client.session_id(), "closed the previous session, which the ensemble had kept: its leases are free at once");
                drop(client);
                return;
            }
            Ok(Err(zk::Error::SessionExpired)) => return,
            Ok(Err(_)) | Err(_) => {}
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}
