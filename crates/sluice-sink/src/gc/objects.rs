//! Listing and deleting a table's objects through the store itself.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::{SinkError, Storage};

/// One listed object: its path as the registry writes it and its location in the store.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    pub(super) path: String,
    pub(super) location: Path,
    pub(super) last_modified: chrono::DateTime<chrono::Utc>,
}

/// Listing and deleting through the store itself, so that paths compare with the registry's
/// whatever characters a partition value has (the store percent-encodes some in its keys).
pub(super) struct Objects {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) root: Path,
}

impl Objects {
    pub(super) fn new(storage: &Storage) -> Objects {
        let (store, root) = storage.object_store();
        Objects {
            store,
            root: root.clone(),
        }
    }

    pub(super) fn full(&self, rel: &str) -> Path {
        rel.split('/')
            .filter(|s| !s.is_empty())
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    /// The path of `location` relative to the root, each segment decoded.
    pub(super) fn relative(&self, location: &Path) -> String {
        match location.prefix_match(&self.root) {
            Some(parts) => parts
                .map(|p| percent_decode(p.as_ref()))
                .collect::<Vec<_>>()
                .join("/"),
            None => percent_decode(location.as_ref()),
        }
    }

    pub(super) fn listed(&self, meta: object_store::ObjectMeta) -> Listed {
        Listed {
            path: self.relative(&meta.location),
            location: meta.location,
            last_modified: meta.last_modified,
        }
    }

    /// Every object under `rel` (a directory), recursively.
    pub(super) async fn list(&self, rel: &str) -> Result<Vec<Listed>, SinkError> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.full(rel)))
            .try_collect()
            .await
            .map_err(|source| storage_err(rel, source))?;
        Ok(metas.into_iter().map(|m| self.listed(m)).collect())
    }

    /// The directories directly under `rel` (their last segment, decoded) and the objects
    /// directly in it.
    pub(super) async fn children(
        &self,
        rel: &str,
    ) -> Result<(Vec<String>, Vec<Listed>), SinkError> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.full(rel)))
            .await
            .map_err(|source| storage_err(rel, source))?;
        let dirs = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(percent_decode))
            .collect();
        let objects = listing
            .objects
            .into_iter()
            .map(|m| self.listed(m))
            .collect();
        Ok((dirs, objects))
    }

    pub(super) async fn delete(&self, object: &Listed) -> Result<(), SinkError> {
        match self.store.delete(&object.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(storage_err(&object.path, source)),
        }
    }
}

pub(super) fn storage_err(path: &str, source: object_store::Error) -> SinkError {
    SinkError::Storage {
        path: path.to_string(),
        source,
    }
}

/// `%XX` escapes decoded (the store's key encoding, and [`path_segment`]'s); anything else kept.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        if let (b'%', Some(hex)) = (bytes[i], escape) {
            let hex = std::str::from_utf8(hex).expect("hex digits are ASCII");
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The partition values whose objects a directory segment holds: [`path_segment`] inverted;
/// `_` is both the empty value's segment and the value `_`'s.
pub(super) fn segment_values(segment: &str) -> Vec<String> {
    if segment == "_" {
        return vec![String::new(), "_".to_string()];
    }
    vec![percent_decode(segment)]
}
