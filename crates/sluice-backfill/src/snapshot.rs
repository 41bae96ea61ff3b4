//! The snapshot manifest: which files, in which format, with which checksums, for which table,
//! consistent with which offset of each partition.
//!
//! ```json
//! {
//!   "table": "events",
//!   "offsets": { "0": 250, "1": 250 },
//!   "files": [
//!     { "path": "events-0.ndjson", "format": "ndjson", "sha256": "9f86d0…" },
//!     { "path": "events-1.parquet", "format": "parquet", "sha256": "60303a…" }
//!   ]
//! }
//! ```
//!
//! A relative `path` is relative to the manifest's directory.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::BackfillError;

/// How a snapshot file encodes its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One event per line, as the table's topic carries them (decoded and quarantined as the
    /// stream's are).
    Ndjson,
    /// Rows whose columns match the table's (name and type).
    Parquet,
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub format: FileFormat,
    /// SHA-256 of the file's bytes, 64 lowercase hex digits.
    pub sha256: String,
}

/// A snapshot manifest, as loaded and checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The table the snapshot's events go into (it names the topic).
    pub table: String,
    /// Per partition of the table's topic, the offset the stream starts from after the
    /// snapshot: one past the last event the snapshot holds.
    pub offsets: BTreeMap<i32, i64>,
    pub files: Vec<SnapshotFile>,
    /// SHA-256 of the manifest itself.
    #[serde(skip)]
    pub sha256: String,
    /// The manifest's directory, which relative file paths start from.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// SHA-256 of `bytes`, lowercase hex.
fn hex_sha256(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Snapshot {
    /// Reads and checks the manifest at `path`.
    pub fn load(path: &Path) -> Result<Snapshot, BackfillError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| BackfillError::ReadManifest {
            path: shown.clone(),
            source,
        })?;
        let invalid = |problem: String| BackfillError::Manifest {
            path: shown.clone(),
            problem,
        };
        let mut snapshot: Snapshot =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        snapshot.sha256 = hex_sha256(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        snapshot.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        snapshot.check().map_err(invalid)?;
        Ok(snapshot)
    }

    fn check(&self) -> Result<(), String> {
        if self.files.is_empty() {
            return Err("`files` is empty: list the snapshot's files".into());
        }
        if self.offsets.is_empty() {
            return Err("`offsets` is empty: give every partition of the topic the offset the snapshot is consistent with".into());
        }
        if let Some((p, o)) = self.offsets.iter().find(|(p, o)| **p < 0 || **o < 0) {
            return Err(format!(
                "`offsets` has partition {p} at offset {o}: partitions and offsets are never negative"
            ));
        }
        let mut seen = HashSet::new();
        for (i, f) in self.files.iter().enumerate() {
            let well_formed = f.sha256.len() == 64
                && f.sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !well_formed {
                return Err(format!(
                    "`files[{i}].sha256` of {} is not 64 lowercase hex digits (`sha256sum <file>` prints it)",
                    f.path.display()
                ));
            }
            if !seen.insert(&f.path) {
                return Err(format!(
                    "`files[{i}].path` {} is listed twice",
                    f.path.display()
                ));
            }
        }
        Ok(())
    }

    /// Where a file of the snapshot is on disk.
    pub fn location(&self, file: &SnapshotFile) -> PathBuf {
        self.dir.join(&file.path)
    }

    /// Each file's size in bytes, in manifest order.
    pub fn sizes(&self) -> Result<Vec<u64>, BackfillError> {
        self.files
            .iter()
            .map(|f| {
                let location = self.location(f);
                std::fs::metadata(&location)
                    .map(|m| m.len())
                    .map_err(|source| BackfillError::ReadFile {
                        path: location.display().to_string(),
                        source,
                    })
            })
            .collect()
    }

    /// Reads every file whole and checks its SHA-256 against the manifest; returns the bytes
    /// read. Blocking: call it off the async runtime.
    pub fn verify_files(&self) -> Result<u64, BackfillError> {
        let mut total = 0;
        for f in &self.files {
            let location = self.location(f);
            let shown = location.display().to_string();
            let read_err = |source| BackfillError::ReadFile {
                path: shown.clone(),
                source,
            };
            let mut file = std::fs::File::open(&location).map_err(read_err)?;
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                ctx.update(&buf[..n]);
                total += n as u64;
            }
            let actual = hex_sha256(ctx.finish().as_ref());
            if actual != f.sha256 {
                return Err(BackfillError::Checksum {
                    path: shown,
                    expected: f.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex_sha256(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn a_manifest_loads_and_its_files_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.ndjson", "{\"seq\":1}\n");
        let manifest = format!(
            r#"{{"table":"events","offsets":{{"0":5,"1":7}},"files":[{{"path":"a.ndjson","format":"ndjson","sha256":"{}"}}]}}"#,
            sha(b"{\"seq\":1}\n")
        );
        let path = write(dir.path(), "snapshot.json", &manifest);
        let s = Snapshot::load(&path).expect("loads");
        assert_eq!(s.offsets, BTreeMap::from([(0, 5), (1, 7)]));
        assert_eq!(s.sha256, sha(manifest.as_bytes()));
        assert_eq!(s.verify_files().expect("verifies"), 10);
    }

    #[test]
    fn a_changed_file_is_refused_naming_both_checksums() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.ndjson", "changed\n");
        let expected = sha(b"original\n");
        let manifest = format!(
            r#"{{"table":"events","offsets":{{"0":5}},"files":[{{"path":"a.ndjson","format":"ndjson","sha256":"{expected}"}}]}}"#
        );
        let s = Snapshot::load(&write(dir.path(), "m.json", &manifest)).expect("loads");
        let e = s.verify_files().expect_err("refused").to_string();
        assert!(
            e.contains(&expected) && e.contains(&sha(b"changed\n")),
            "{e}"
        );
        assert!(e.contains("a.ndjson"), "{e}");
    }

    #[test]
    fn bad_manifests_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = "0".repeat(64);
        for (text, field) in [
            (r#"{"table":"t","offsets":{"0":1},"files":[]}"#.to_string(), "`files` is empty"),
            (format!(r#"{{"table":"t","offsets":{{}},"files":[{{"path":"a","format":"ndjson","sha256":"{good}"}}]}}"#), "`offsets` is empty"),
            (format!(r#"{{"table":"t","offsets":{{"0":-1}},"files":[{{"path":"a","format":"ndjson","sha256":"{good}"}}]}}"#), "never negative"),
            (r#"{"table":"t","offsets":{"0":1},"files":[{"path":"a","format":"ndjson","sha256":"xyz"}]}"#.to_string(), "files[0].sha256"),
            (format!(r#"{{"table":"t","offsets":{{"0":1}},"files":[{{"path":"a","format":"csv","sha256":"{good}"}}]}}"#), "unknown variant `csv`"),
            (format!(r#"{{"table":"t","offsets":{{"0":1}},"files":[{{"path":"a","format":"ndjson","sha256":"{good}"}},{{"path":"a","format":"ndjson","sha256":"{good}"}}]}}"#), "listed twice"),
            (r#"{"table":"t","offset":{"0":1},"files":[]}"#.to_string(), "unknown field `offset`"),
        ] {
            let e = Snapshot::load(&write(dir.path(), "m.json", &text))
                .expect_err(field)
                .to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
