use super::*;
use crate::PartKind;

fn part(unit: &UnitId) -> PartRecord {
    PartRecord {
        table: "tbl".into(),
        kind: PartKind::Data,
        partition_value: String::new(),
        path: "tbl/data/_/t-0-00000000000000000000-00000000000000000041-e1-v1.parquet".into(),
        rows: 42,
        bytes: 1000,
        topic: unit.topic.clone(),
        partition: unit.partition,
        first_offset: 0,
        last_offset: 41,
        definition_version: 1,
        lease_epoch: 1,
        created_at_ms: 0,
        level: 0,
        inputs: 0,
        spans: Vec::new(),
        checksum: String::new(),
        flushed_at_ms: 0,
        replicas: Vec::new(),
    }
}

#[tokio::test]
async fn state_survives_reopen_and_the_directory_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let unit = UnitId::new("t", 0);
    {
        let c = EmbeddedCoordinator::open(dir.path()).unwrap();
        let err = EmbeddedCoordinator::open(dir.path()).unwrap_err();
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            cause
                .as_deref()
                .is_some_and(|c| c.contains("in use by another process")),
            "{err}: {cause:?}"
        );
        let lease = c.acquire_lease(&unit, "w").await.unwrap();
        c.commit(
            &lease,
            &Commit {
                views_version: None,
                next_offset: 42,
                parts: vec![part(&unit)],
            },
        )
        .await
        .unwrap();
    }
    let c = EmbeddedCoordinator::open(dir.path()).unwrap();
    assert_eq!(c.committed_offset(&unit).await.unwrap(), Some(42));
    assert_eq!(c.list_parts("tbl").await.unwrap().len(), 1);
    // The old process's lease ended with it, and the next epoch is larger.
    let lease = c.acquire_lease(&unit, "w").await.unwrap();
    assert_eq!(lease.epoch, 2);
}
