//! The coordinator conformance suite against both implementations: ZooKeeper (the real server
//! of scripts/stack.sh) and the embedded one (in memory and on disk).

use std::sync::Arc;
use std::time::Duration;

use sluice_coord::{conformance, Coordinator, EmbeddedCoordinator, ZkCoordinator};
use sluice_tests::{unique, Stack};

#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_passes_the_conformance_suite() {
    let stack = Stack::from_env();
    let root = format!("/sluice-test/{}", unique("conformance"));
    let result = conformance::run_all(|| {
        let (zk, root) = (stack.zk.clone(), root.clone());
        async move {
            let c =
                ZkCoordinator::connect(&zk, &root, Duration::from_secs(4), Duration::from_secs(10))
                    .await?;
            Ok(Box::new(c) as Box<dyn Coordinator>)
        }
    })
    .await;
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[tokio::test]
async fn embedded_on_disk_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let base = Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
    let result = conformance::run_all(|| {
        let base = Arc::clone(&base);
        async move { Ok(Box::new(base.new_session()) as Box<dyn Coordinator>) }
    })
    .await;
    if let Err(e) = result {
        panic!("{e}");
    }
}
