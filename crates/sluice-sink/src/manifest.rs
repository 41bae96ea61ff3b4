//! Manifests of sealed scopes: a quiet scope's part records, written to object storage as one
//! checksummed JSON object, so that the registry keeps one small pointer instead of a record per
//! part. A manifest is never rewritten: sealing again writes a new one.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_coord::{PartRecord, SealedManifest};

use crate::{path_segment, SinkError, Storage};

/// The manifest object's content.
#[derive(Debug, Serialize, Deserialize)]
struct ManifestDoc {
    table: String,
    partition_value: String,
    sealed_at_ms: i64,
    parts: Vec<PartRecord>,
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the manifest of `parts` (all the scope's parts: those of an earlier manifest and the
/// live records being sealed) for a seal under merge epoch `epoch`, reads it back, and returns
/// the pointer to register.
pub async fn write_manifest(
    storage: &Storage,
    table: &str,
    value: &str,
    epoch: u64,
    parts: &[PartRecord],
    sealed_at_ms: i64,
) -> Result<SealedManifest, SinkError> {
    let path = format!(
        "{table}/manifests/{}/seal-e{epoch}-{sealed_at_ms}.json",
        path_segment(value)
    );
    let doc = ManifestDoc {
        table: table.to_string(),
        partition_value: value.to_string(),
        sealed_at_ms,
        parts: parts.to_vec(),
    };
    let bytes = serde_json::to_vec(&doc).expect("a manifest serializes");
    let manifest = SealedManifest {
        path: path.clone(),
        checksum: sha256_hex(&bytes),
        parts: parts.len() as u64,
        rows: parts.iter().map(|p| p.rows).sum(),
        sealed_at_ms,
    };
    storage.put(&path, Bytes::from(bytes)).await?;
    // What a reader will get, checked before the registry points at it.
    read_manifest(storage, &manifest).await?;
    Ok(manifest)
}

/// The part records a manifest holds, after checking its checksum and counts against the
/// pointer.
pub async fn read_manifest(
    storage: &Storage,
    manifest: &SealedManifest,
) -> Result<Vec<PartRecord>, SinkError> {
    // A copy whose SHA-256 is not the pointer's is skipped for another (and repaired).
    let (bytes, _) = storage
        .get_verified(&manifest.path, &manifest.checksum)
        .await?;
    let bad = |why: String| SinkError::Manifest {
        path: manifest.path.clone(),
        source: why.into(),
    };
    let doc: ManifestDoc = serde_json::from_slice(&bytes).map_err(|e| SinkError::Manifest {
        path: manifest.path.clone(),
        source: e.into(),
    })?;
    if doc.parts.len() as u64 != manifest.parts {
        return Err(bad(format!(
            "it lists {} parts, the registry says {}",
            doc.parts.len(),
            manifest.parts
        )));
    }
    Ok(doc.parts)
}
