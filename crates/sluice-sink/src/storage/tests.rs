//! Replication across `file://` endpoints: an endpoint is made to fail by replacing its
//! directory with a file, and a copy is corrupted by rewriting its bytes on disk.

use std::collections::BTreeSet;
use std::path::PathBuf;

use bytes::Bytes;
use object_store::{ObjectStoreExt, WriteMultipart};
use sluice_config::{EndpointConfig, StorageConfig};

use super::*;

pub(crate) struct Three {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) roots: Vec<PathBuf>,
    pub(crate) storage: Storage,
}

/// Three endpoints `a`, `b`, `c`, replication 3 (or `factor`), quorum 2.
pub(crate) fn three(factor: Option<usize>) -> Three {
    let dir = tempfile::tempdir().unwrap();
    let roots: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| dir.path().join(n)).collect();
    let storage = Storage::open(&config_of(&roots, factor, None)).unwrap();
    Three {
        _dir: dir,
        roots,
        storage,
    }
}

fn config_of(roots: &[PathBuf], factor: Option<usize>, draining: Option<&str>) -> StorageConfig {
    let mut config = StorageConfig {
        endpoints: ["a", "b", "c"]
            .iter()
            .zip(roots)
            .map(|(name, root)| EndpointConfig {
                name: name.to_string(),
                url: format!("file://{}", root.display()),
                options: Default::default(),
                drain: draining == Some(*name),
            })
            .collect(),
        replication_factor: factor,
        write_quorum: Some(2),
        ..StorageConfig::default()
    };
    config.repair.straggler_wait_ms = 200;
    config
}

impl Three {
    /// The same endpoints, opened again with `name` draining.
    pub(crate) fn draining(&self, name: &str, factor: Option<usize>) -> Storage {
        Storage::open(&config_of(&self.roots, factor, Some(name))).unwrap()
    }

    pub(crate) fn root(&self, name: &str) -> &PathBuf {
        &self.roots[(name.as_bytes()[0] - b'a') as usize]
    }

    /// Makes an endpoint fail every request: its directory becomes a file.
    pub(crate) fn break_endpoint(&self, name: &str) {
        let root = self.root(name);
        std::fs::remove_dir_all(root).unwrap();
        std::fs::write(root, b"not a directory").unwrap();
    }

    pub(crate) fn heal_endpoint(&self, name: &str) {
        let root = self.root(name);
        std::fs::remove_file(root).unwrap();
        std::fs::create_dir_all(root).unwrap();
    }

    pub(crate) fn on_disk(&self, name: &str, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root(name).join(rel)).ok()
    }

    pub(crate) fn corrupt(&self, name: &str, rel: &str) {
        let path = self.root(name).join(rel);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
}

fn payload(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

#[test]
fn placement_is_stable_and_takes_the_factor() {
    let t = three(Some(2));
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..300 {
        let rel = format!("t/data/v/part-{i}.parquet");
        let first = t.storage.placement_names(&rel);
        assert_eq!(first, t.storage.placement_names(&rel));
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], first[1]);
        for name in first {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    // Each endpoint holds about two thirds of 300 objects.
    for (name, n) in counts {
        assert!((150..=250).contains(&n), "{name} holds {n} of 300");
    }
}

#[tokio::test]
async fn a_write_reaches_every_endpoint_and_reads_back() {
    let t = three(None);
    let stored = t.storage.put("t/x.bin", payload(1000)).await.unwrap();
    assert_eq!(stored, vec!["a", "b", "c"]);
    for name in ["a", "b", "c"] {
        assert_eq!(t.on_disk(name, "t/x.bin").unwrap(), payload(1000).to_vec());
    }
    assert_eq!(t.storage.get("t/x.bin").await.unwrap(), payload(1000));
}

#[tokio::test]
async fn a_write_commits_with_the_quorum_and_names_what_failed_below_it() {
    let t = three(None);
    t.break_endpoint("b");
    let mut stored = BTreeSet::new();
    t.storage
        .put_quorum("t/y.bin", payload(10), &mut stored)
        .await
        .unwrap();
    assert_eq!(stored, BTreeSet::from(["a".to_string(), "c".to_string()]));

    t.break_endpoint("c");
    let mut stored = BTreeSet::new();
    let short = t
        .storage
        .put_quorum("t/z.bin", payload(10), &mut stored)
        .await
        .unwrap_err();
    assert_eq!(short.stored, vec!["a".to_string()]);
    let text = short.describe();
    assert!(
        text.contains("1 of 3 copies stored (need 2)")
            && text.contains("b: ")
            && text.contains("c: "),
        "{text}"
    );
    // The retry writes only where the object is missing.
    t.heal_endpoint("b");
    t.storage
        .put_quorum("t/z.bin", payload(10), &mut stored)
        .await
        .unwrap();
    assert_eq!(stored, BTreeSet::from(["a".to_string(), "b".to_string()]));
}

#[tokio::test]
async fn a_corrupt_copy_is_skipped_counted_and_reported() {
    let t = three(None);
    let bytes = payload(5000);
    t.storage.put("t/p.bin", bytes.clone()).await.unwrap();
    let checksum = sha256_hex(&bytes);
    let first = t.storage.placement_names("t/p.bin")[0].clone();
    t.corrupt(&first, "t/p.bin");
    let (read, from) = t.storage.get_verified("t/p.bin", &checksum).await.unwrap();
    assert_eq!(read, bytes);
    assert_ne!(from, first);
    assert_eq!(
        t.storage.take_corrupt(),
        vec![("t/p.bin".to_string(), first.clone())]
    );
    let failures: u64 = t.storage.stats().iter().map(|s| s.checksum_failures).sum();
    assert_eq!(failures, 1);

    // Through the object store (what queries and merges read): a range read of a registered
    // part comes from a verified copy.
    t.storage.expect_checksums([("t/p.bin", checksum.as_str())]);
    let (store, _) = t.storage.object_store();
    let range = store
        .get_range(&t.storage.object_path("t/p.bin"), 10..20)
        .await
        .unwrap();
    assert_eq!(range, bytes.slice(10..20));
    assert_eq!(t.storage.take_corrupt().len(), 1);
}

#[tokio::test]
async fn no_good_copy_is_a_named_unavailable_part() {
    let t = three(None);
    let bytes = payload(100);
    t.storage.put("t/q.bin", bytes.clone()).await.unwrap();
    for name in ["a", "b", "c"] {
        t.corrupt(name, "t/q.bin");
    }
    let e = t
        .storage
        .get_verified("t/q.bin", &sha256_hex(&bytes))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SinkError::Unavailable { path, .. } if path == "t/q.bin"),
        "{e}"
    );
    t.storage
        .expect_checksums([("t/q.bin", sha256_hex(&bytes).as_str())]);
    let (store, _) = t.storage.object_store();
    let e = store
        .get(&t.storage.object_path("t/q.bin"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("part unavailable"), "{e}");
}

#[tokio::test]
async fn a_multipart_upload_goes_to_every_endpoint_and_survives_one_failing() {
    let t = three(None);
    let (store, _) = t.storage.object_store();
    let big = payload(12 * 1024 * 1024);
    let upload = store
        .put_multipart(&t.storage.object_path("t/m.bin"))
        .await
        .unwrap();
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
    writer.write(&big);
    writer.finish().await.unwrap();
    assert_eq!(t.storage.take_written("t/m.bin"), vec!["a", "b", "c"]);
    for name in ["a", "b", "c"] {
        assert_eq!(t.on_disk(name, "t/m.bin").unwrap().len(), big.len());
    }

    t.break_endpoint("a");
    let upload = store
        .put_multipart(&t.storage.object_path("t/n.bin"))
        .await
        .unwrap();
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
    writer.write(&big);
    writer.finish().await.unwrap();
    assert_eq!(t.storage.take_written("t/n.bin"), vec!["b", "c"]);
}

#[tokio::test]
async fn deleting_skips_an_endpoint_that_is_down() {
    let t = three(None);
    t.storage.put("t/d.bin", payload(10)).await.unwrap();
    t.break_endpoint("c");
    t.storage.delete("t/d.bin").await.unwrap();
    assert!(t.on_disk("a", "t/d.bin").is_none() && t.on_disk("b", "t/d.bin").is_none());
}
