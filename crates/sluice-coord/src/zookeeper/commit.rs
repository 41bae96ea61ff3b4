//! An ingest commit as one multi-op: the lease's epoch checked, the offset set at the version
//! this lease last left it, the part records created, and the view registry's version checked.

use zookeeper_client as zk;

use super::nodes::{backend, encode_segment, multi_size, multi_unanswered, MAX_MULTI_BYTES};
use super::ZkCoordinator;
use crate::{Commit, CoordError, Lease};

impl ZkCoordinator {
    pub(super) async fn commit_of(&self, lease: &Lease, commit: &Commit) -> Result<(), CoordError> {
        let client = self.client()?;
        let unit = &lease.unit;
        let dir = self.unit_dir(unit);
        let epoch_path = format!("{dir}/epoch");
        let offset_path = format!("{dir}/offset");
        let offset_version = *self
            .offset_versions
            .lock()
            .expect("offset lock poisoned")
            .get(unit)
            .ok_or_else(|| CoordError::LeaseLost {
                unit: unit.clone(),
                epoch: lease.epoch,
            })?;
        let mut part_paths = Vec::with_capacity(commit.parts.len());
        for part in &commit.parts {
            let scope = self.scope_dir(&part.table, &part.partition_value);
            self.ensure_dir(&client, &scope).await?;
            let data = serde_json::to_vec(part).expect("part record serializes");
            part_paths.push((format!("{scope}/{}", encode_segment(&part.name())), data));
        }
        let size = multi_size(
            [(epoch_path.as_str(), 0), (offset_path.as_str(), 20)]
                .into_iter()
                .chain(part_paths.iter().map(|(p, d)| (p.as_str(), d.len()))),
        );
        if size > MAX_MULTI_BYTES {
            return Err(CoordError::TooLarge {
                what: format!("the commit of {} parts for {unit}", commit.parts.len()),
                bytes: size,
                limit: MAX_MULTI_BYTES,
            });
        }

        let mut multi = client.new_multi_writer();
        multi
            .add_check_version(&epoch_path, lease.token as i32)
            .map_err(|e| backend(&epoch_path, e))?;
        multi
            .add_set_data(
                &offset_path,
                commit.next_offset.to_string().as_bytes(),
                Some(offset_version),
            )
            .map_err(|e| backend(&offset_path, e))?;
        for (path, data) in &part_paths {
            multi
                .add_create(path, data, &self.persistent())
                .map_err(|e| backend(path, e))?;
        }
        let views_path = self.views_path();
        if let Some(version) = commit.views_version {
            multi
                .add_check_version(&views_path, version as i32)
                .map_err(|e| backend(&views_path, e))?;
        }
        match multi.commit().await {
            Ok(results) => {
                if let Some(zk::MultiWriteResult::SetData { stat }) = results.get(1) {
                    self.offset_versions
                        .lock()
                        .expect("offset lock poisoned")
                        .insert(unit.clone(), stat.version);
                }
                Ok(())
            }
            Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => {
                Err(CoordError::LeaseLost {
                    unit: unit.clone(),
                    epoch: lease.epoch,
                })
            }
            Err(zk::MultiWriteError::OperationFailed { index: 1, source }) => {
                Err(CoordError::Conflict {
                    at: unit.to_string(),
                    what: "the committed offset changed under this lease".to_string(),
                    source: Some(source.into()),
                })
            }
            Err(zk::MultiWriteError::OperationFailed { index, .. })
                if index == part_paths.len() + 2 =>
            {
                Err(CoordError::ViewsChanged { unit: unit.clone() })
            }
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                Err(CoordError::Conflict {
                    at: unit.to_string(),
                    what: format!("cannot register part {}", part_paths[index - 2].0),
                    source: Some(source.into()),
                })
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                Err(multi_unanswered(unit.to_string(), source))
            }
        }
    }
}
