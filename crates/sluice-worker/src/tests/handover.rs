//! Handing partitions over while storage refuses every upload: the session gives them up without
//! waiting for their flushes, so it stays free to serve a shutdown.

use anyhow::{ensure, Context, Result};
use sluice_coord::Coordinator;

use super::{wait_for, Harness, Settings, WITHIN};

/// Makes the `file://` storage refuse every write: its directory moved aside and a plain file
/// in its place (the tests may run as root, for whom a read-only mode stops nothing).
struct StorageAway {
    data: std::path::PathBuf,
    aside: std::path::PathBuf,
}

impl StorageAway {
    fn take(h: &Harness) -> Result<StorageAway> {
        let data = h.dir.path().join("data");
        let aside = h.dir.path().join("data-aside");
        std::fs::rename(&data, &aside)?;
        std::fs::write(&data, b"not a directory")?;
        Ok(StorageAway { data, aside })
    }

    fn give_back(self) -> Result<()> {
        std::fs::remove_file(&self.data)?;
        std::fs::rename(&self.aside, &self.data)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_while_storage_is_down_leaves_the_session_free_to_shut_down() -> Result<()> {
    let mut h = Harness::new(Settings {
        partitions: 8,
        shutdown_deadline_ms: 2_000,
        ..Settings::default()
    })?;
    h.produce(400);
    let a = h.spawn("worker-a", false).await?;
    h.all_committed().await?;
    let services_b = h.services().await?;
    let storage = StorageAway::take(&h)?;
    h.produce(400);
    tokio::time::timeout(WITHIN, h.source.consumed(800))
        .await
        .context("worker-a did not read the new events")?;
    let opened = h.source.progress().opened;
    let b = h.spawn_with("worker-b", false, services_b)?;
    // worker-a gives up the newcomer's partitions, whose flushes cannot commit, and goes on
    // reading only its own: a new reader. (Waiting for those commits instead, it would never
    // get there.) worker-b waits for the leases meanwhile, and opens no reader of its own.
    wait_for("worker-a to read only the partitions it keeps", || async {
        Ok(h.source.progress().opened > opened)
    })
    .await?;
    // Still down: the drain gives up at the deadline and commits nothing partial.
    let summary = a.shut_down().await?;
    ensure!(
        summary.rejoins == 0,
        "worker-a rejoined {} times",
        summary.rejoins
    );
    let c = h.observer();
    let parts_while_down = c.list_parts("events").await?.len();
    storage.give_back()?;
    // worker-b takes every partition over from the committed offsets and reads the rest.
    h.all_committed().await?;
    ensure!(
        c.list_parts("events").await?.len() > parts_while_down,
        "nothing was committed after storage came back"
    );
    b.shut_down().await?;
    h.verify().await?;
    Ok(())
}
