//! Retention gaps in ZooKeeper: one znode per topic, `<root>/gaps/<topic>`, whose data is the
//! topic's [`RetentionGaps`] as JSON (bounded by its partitions). Written rarely (when a gap is
//! found), read by `sluice lag` and the telemetry refresh (one read per topic).

use zookeeper_client as zk;

use super::nodes::{again, backend, encode_segment, unanswered, Patience};
use super::ZkCoordinator;
use crate::{CoordError, Gap, RetentionGaps, UnitId};

impl ZkCoordinator {
    fn gaps_path(&self, topic: &str) -> String {
        format!("{}/gaps/{}", self.root, encode_segment(topic))
    }

    fn parse_gaps(path: &str, data: &[u8]) -> Result<RetentionGaps, CoordError> {
        serde_json::from_slice(data).map_err(|e| CoordError::Corrupt {
            path: path.to_string(),
            source: e.into(),
        })
    }

    /// Read, add, write back at the version read; again if another worker wrote meanwhile.
    pub(super) async fn record_gap_of(&self, unit: &UnitId, gap: &Gap) -> Result<(), CoordError> {
        let client = self.client()?;
        self.ensure_dir(&client, &format!("{}/gaps", self.root))
            .await?;
        let path = self.gaps_path(&unit.topic);
        let mut patience = Patience::new();
        loop {
            let (mut gaps, version) = match again(|| client.get_data(&path)).await {
                Ok((data, stat)) => (Self::parse_gaps(&path, &data)?, Some(stat.version)),
                Err(zk::Error::NoNode) => (RetentionGaps::default(), None),
                Err(e) => return Err(backend(&path, e)),
            };
            gaps.record(unit.partition, gap.clone());
            let data = serde_json::to_vec(&gaps).expect("gaps serialize");
            let written = match version {
                Some(v) => client.set_data(&path, &data, Some(v)).await.map(drop),
                None => client
                    .create(&path, &data, &self.persistent())
                    .await
                    .map(drop),
            };
            match written {
                Ok(()) => return Ok(()),
                // Another worker recorded a gap of this topic first (or this write's reply was
                // lost): read it again; a gap already recorded counts once.
                Err(zk::Error::BadVersion | zk::Error::NodeExists) => continue,
                Err(e) if unanswered(&e) && patience.wait().await => continue,
                Err(e) => return Err(backend(&path, e)),
            }
        }
    }

    pub(super) async fn retention_gaps_of(&self, topic: &str) -> Result<RetentionGaps, CoordError> {
        let client = self.client()?;
        let path = self.gaps_path(topic);
        match again(|| client.get_data(&path)).await {
            Ok((data, _)) => Self::parse_gaps(&path, &data),
            Err(zk::Error::NoNode) => Ok(RetentionGaps::default()),
            Err(e) => Err(backend(&path, e)),
        }
    }
}
