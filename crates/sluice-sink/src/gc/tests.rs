use super::objects::percent_decode;
use super::*;

#[test]
fn part_names_parse_back_even_with_dashes_in_the_topic() {
    let name = parse_part_name(
        "t/data/2026-11-23/web-events-3-00000000000000000010-00000000000000000099-e4-v2.parquet",
    )
    .unwrap();
    assert_eq!(
        name,
        PartName {
            unit: UnitId::new("web-events", 3),
            first_offset: 10,
            last_offset: 99,
            lease_epoch: 4,
            definition_version: 2,
        }
    );
    assert!(parse_part_name("t/data/readme.txt").is_none());
}

#[test]
fn merged_names_parse_back() {
    let name = parse_merged_name("t/data/2026-11-23/m2-0f3a9c11d2e4-e7-v3.parquet").unwrap();
    assert_eq!(
        name,
        MergedName {
            level: 2,
            hash: "0f3a9c11d2e4".into(),
            merge_epoch: 7,
            definition_version: 3,
        }
    );
    let q = parse_merged_name("t/quarantine/m1-abc123-e1-v1.parquet").unwrap();
    assert_eq!((q.level, q.merge_epoch, q.definition_version), (1, 1, 1));
}

#[test]
fn flushed_and_merged_names_never_parse_as_each_other() {
    let flushed =
        "t/data/_/m1-3-00000000000000000010-00000000000000000099-e4-v2.parquet".to_string();
    assert!(parse_part_name(&flushed).is_some());
    assert!(parse_merged_name(&flushed).is_none(), "a topic named m1");
    let merged = "t/data/_/m1-123-e4-v2.parquet";
    assert!(parse_part_name(merged).is_none());
    assert!(parse_merged_name(merged).is_some());
    for bad in [
        "t/data/_/m0-abc-e1-v1.parquet",         // level 0 is a flush's
        "t/data/_/m1-abc-e1-v1.json",            // not Parquet
        "t/data/_/m1--e1-v1.parquet",            // no hash
        "t/data/_/m1-a_b-e1-v1.parquet",         // not letters and digits
        "t/data/_/x1-abc-e1-v1.parquet",         // not m<level>
        "t/data/_/m1-abc-e-1-v1.parquet",        // five fields
        "t/data/_/m1-abc-e+1-v1.parquet",        // a sign
        "t/data/_/m1-abc-e1-v1x.parquet",        // trailing letters
        "t/data/_/mx-abc-e1-v1.parquet",         // no level
        "t/data/_/m1-abc-1-v1.parquet",          // no e
        "t/data/_/m99999999999-a-e1-v1.parquet", // level beyond u32
    ] {
        assert!(parse_merged_name(bad).is_none(), "{bad}");
    }
}

#[test]
fn objects_are_recognised_by_name_and_directory() {
    let flushed = "t/data/2026-11-23/ev-0-00000000000000000000-00000000000000000009-e1-v1.parquet";
    assert!(matches!(classify("t", flushed), ObjectKind::Flushed(_)));
    assert!(matches!(
        classify("t", "t/quarantine/m1-abc-e2-v1.parquet"),
        ObjectKind::Merged(MergedName { merge_epoch: 2, .. })
    ));
    assert_eq!(
        classify("t", "t/manifests/2026-11-23/seal-e3-1795132800000.json"),
        ObjectKind::Manifest(Some(3))
    );
    assert_eq!(
        classify("t", "t/manifests/2026-11-23/notes.txt"),
        ObjectKind::Manifest(None)
    );
    for spanned in [
        "t/data/x/bf.id.f1.c0.e2.v1.parquet",
        "t/quarantine/vh.v.s0.c0.e1.v1.parquet",
    ] {
        assert_eq!(classify("t", spanned), ObjectKind::Spanned, "{spanned}");
    }
    for other in [
        "t/readme.txt",
        "t/data/readme.txt",
        "t/data/x/readme.txt",
        "t/manifests/seal-e3-1.json",
        "t/other/m1-abc-e2-v1.parquet",
        "u/data/_/m1-abc-e2-v1.parquet",
        "tt/data/_/m1-abc-e2-v1.parquet",
    ] {
        assert_eq!(classify("t", other), ObjectKind::Other, "{other}");
    }
}

#[test]
fn segments_decode_to_their_values() {
    for value in ["2026-11-23", "a b/c%d", "é", "x.y_z"] {
        assert_eq!(segment_values(&path_segment(value)), [value]);
    }
    assert_eq!(segment_values(&path_segment("")), ["", "_"]);
    assert_eq!(percent_decode("a%2520b"), "a%20b");
    assert_eq!(percent_decode("50%"), "50%");
    assert_eq!(percent_decode("%zz%4"), "%zz%4");
    assert_eq!(percent_decode("%+1%2e"), "%+1.");
}

fn scope(merge_epoch: u64, holder: Option<&str>) -> ScopeListing {
    ScopeListing {
        table: "t".into(),
        partition_value: "v".into(),
        state: sluice_coord::ScopeState {
            merge_epoch,
            sealed: None,
        },
        generation: 0,
        parts: Vec::new(),
        merge_holder: holder.map(str::to_string),
    }
}

#[test]
fn only_objects_whose_writer_is_done_may_go() {
    let unit = UnitId::new("ev", 0);
    let units = |epoch, holder: Option<&str>| {
        HashMap::from([(
            unit.clone(),
            UnitState {
                unit: unit.clone(),
                next_offset: Some(10),
                epoch,
                holder: holder.map(str::to_string),
            },
        )])
    };
    let flushed = |epoch| {
        ObjectKind::Flushed(PartName {
            unit: unit.clone(),
            first_offset: 0,
            last_offset: 9,
            lease_epoch: epoch,
            definition_version: 1,
        })
    };
    let none: &[ScopeListing] = &[];
    assert!(writer_is_done(&flushed(2), &units(3, Some("w")), none));
    assert!(!writer_is_done(&flushed(3), &units(3, Some("w")), none));
    assert!(writer_is_done(&flushed(3), &units(3, None), none));
    assert!(
        !writer_is_done(&flushed(4), &units(3, None), none),
        "a lease taken after the units were read"
    );
    assert!(!writer_is_done(&flushed(1), &HashMap::new(), none));

    let merged = |epoch| {
        ObjectKind::Merged(MergedName {
            level: 1,
            hash: "ab".into(),
            merge_epoch: epoch,
            definition_version: 1,
        })
    };
    assert!(writer_is_done(
        &merged(4),
        &units(1, None),
        &[scope(5, Some("w"))]
    ));
    assert!(!writer_is_done(
        &merged(5),
        &units(1, None),
        &[scope(5, Some("w"))]
    ));
    assert!(writer_is_done(
        &merged(5),
        &units(1, None),
        &[scope(5, None)]
    ));
    assert!(!writer_is_done(
        &merged(6),
        &units(1, None),
        &[scope(5, None)]
    ));
    assert!(
        !writer_is_done(
            &merged(4),
            &units(1, None),
            &[scope(5, None), scope(4, Some("w"))]
        ),
        "every scope of the directory"
    );
    assert!(writer_is_done(
        &ObjectKind::Manifest(Some(2)),
        &HashMap::new(),
        &[scope(3, Some("w"))]
    ));
    assert!(!writer_is_done(
        &ObjectKind::Manifest(None),
        &HashMap::new(),
        &[scope(3, Some("w"))]
    ));
    assert!(writer_is_done(
        &ObjectKind::Manifest(None),
        &HashMap::new(),
        &[scope(3, None)]
    ));
    assert!(!writer_is_done(&ObjectKind::Other, &HashMap::new(), &[]));
}

/// A whole life of a table in the embedded registry and `file://` storage: flushes, an
/// orphan of an earlier lease, a merge with its retired input, an unregistered merge of a
/// held and then a freed merge lease, a seal, a stray manifest, and partition values the
/// store has to escape.
#[tokio::test]
async fn a_pass_deletes_only_what_no_lease_can_register() {
    use bytes::Bytes;
    use sluice_coord::{Commit, EmbeddedCoordinator, PartKind, PartRecord, Retired};

    let dir = std::env::temp_dir().join(format!(
        "sluice-gc-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    ));
    let storage = Storage::open(&sluice_config::StorageConfig {
        url: format!("file://{}", dir.display()),
        ..Default::default()
    })
    .unwrap();
    let coord = EmbeddedCoordinator::in_memory();
    let unit = UnitId::new("ev", 0);
    let day = "2026-11-23";
    let odd = "a b%c";
    let flushed = |value: &str, kind: PartKind, first: i64, epoch: u64| {
        let file = format!("ev-0-{first:020}-{:020}-e{epoch}-v1.parquet", first + 9);
        let path = match kind {
            PartKind::Data => format!("t/data/{}/{file}", path_segment(value)),
            PartKind::Quarantine => format!("t/quarantine/{file}"),
        };
        PartRecord {
            table: "t".into(),
            kind,
            partition_value: value.into(),
            path,
            rows: 10,
            bytes: 4,
            topic: "ev".into(),
            partition: 0,
            first_offset: first,
            last_offset: first + 9,
            definition_version: 1,
            lease_epoch: epoch,
            created_at_ms: 1,
            flushed_at_ms: 1,
            ..PartRecord::default()
        }
    };
    let put = |path: String| {
        let storage = storage.clone();
        async move {
            storage
                .put(&path, Bytes::from_static(b"PAR1"))
                .await
                .unwrap()
        }
    };
    let exists = |path: String| {
        let storage = storage.clone();
        async move { storage.get(&path).await.is_ok() }
    };

    // Epoch 1 commits a part of the day, a quarantine part and a part at the odd value;
    // uploads of another day and of the quarantine are left uncommitted.
    let lease = coord.acquire_lease(&unit, "w1").await.unwrap();
    let a = flushed(day, PartKind::Data, 0, 1);
    let q = flushed("", PartKind::Quarantine, 0, 1);
    let o = flushed(odd, PartKind::Data, 0, 1);
    let orphan_day = flushed("2026-11-24", PartKind::Data, 10, 1).path;
    let orphan_q = flushed("", PartKind::Quarantine, 10, 1).path;
    for p in [&a.path, &q.path, &o.path, &orphan_day, &orphan_q] {
        put(p.clone()).await;
    }
    coord
        .commit(
            &lease,
            &Commit {
                views_version: None,
                next_offset: 10,
                parts: vec![a.clone(), q.clone(), o.clone()],
            },
        )
        .await
        .unwrap();
    put("t/readme.txt".into()).await;

    // A merge replaces `a` by `m1` (a retired in its grace period); `m2` was uploaded by a
    // merge of the same lease that has not committed.
    let merge = coord.acquire_merge_lease("t", day, "w1").await.unwrap();
    let m1 = PartRecord {
        path: format!("t/data/{day}/m1-aa11-e{}-v1.parquet", merge.epoch),
        topic: String::new(),
        partition: -1,
        first_offset: -1,
        last_offset: -1,
        level: 1,
        inputs: 1,
        lease_epoch: merge.epoch,
        ..a.clone()
    };
    let m2 = format!("t/data/{day}/m1-bb22-e{}-v1.parquet", merge.epoch);
    put(m1.path.clone()).await;
    put(m2.clone()).await;
    let retired = Retired {
        table: "t".into(),
        name: m1.name(),
        partition_value: day.into(),
        paths: vec![a.path.clone()],
        retired_at_ms: 1,
        kept_for: None,
    };
    coord
        .swap(&merge, std::slice::from_ref(&a), &m1, &retired)
        .await
        .unwrap();

    // A new unit lease collects what epoch 1 left uncommitted, nothing else.
    coord.release_lease(&lease).await.unwrap();
    let lease = coord.acquire_lease(&unit, "w2").await.unwrap();
    let epochs = HashMap::from([(unit.clone(), lease.epoch)]);
    let earlier = collect_table_garbage(&storage, &coord, "t", GcScope::EarlierLeases(&epochs))
        .await
        .unwrap();
    let mut deleted = earlier.deleted.clone();
    deleted.sort();
    assert_eq!(deleted, [orphan_day.clone(), orphan_q.clone()]);
    assert_eq!(
        (earlier.referenced, earlier.retired, earlier.not_eligible),
        (2, 1, 2),
        "{earlier:?}"
    );

    // `sluice gc` leaves the unregistered merge while its lease is held, and what the new
    // unit lease uploads.
    let c = flushed(day, PartKind::Data, 10, lease.epoch).path;
    put(c.clone()).await;
    let gc = |min_age_ms| {
        let (storage, coord) = (&storage, &coord);
        async move {
            let age = GcScope::OlderThan(Duration::from_millis(min_age_ms));
            collect_table_garbage(storage, coord, "t", age)
                .await
                .unwrap()
        }
    };
    let young = gc(3_600_000).await;
    assert!(young.deleted.is_empty());
    assert_eq!((young.too_young, young.unrecognised), (2, 1), "{young:?}");
    let held = gc(0).await;
    assert!(held.deleted.is_empty(), "{held:?}");
    assert_eq!((held.in_flight, held.referenced, held.retired), (2, 3, 1));
    assert!(exists(m2.clone()).await && exists(c.clone()).await);

    // Sealed: the manifest holds m1 and `o`'s scope stays live; the seal's own manifest
    // and a stray one of an older merge lease.
    coord.release_merge_lease(&merge).await.unwrap();
    let merge = coord.acquire_merge_lease("t", day, "w1").await.unwrap();
    let manifest = crate::write_manifest(
        &storage,
        "t",
        day,
        merge.epoch,
        std::slice::from_ref(&m1),
        5,
    )
    .await
    .unwrap();
    let stray = format!("t/manifests/{day}/seal-e{}-4.json", merge.epoch - 1);
    put(stray.clone()).await;
    coord
        .seal(&merge, std::slice::from_ref(&m1), &manifest, None)
        .await
        .unwrap();
    coord.release_merge_lease(&merge).await.unwrap();
    let sealed = gc(0).await;
    let mut deleted = sealed.deleted.clone();
    deleted.sort();
    assert_eq!(deleted, [m2.clone(), stray.clone()], "{sealed:?}");
    for p in [&m1.path, &manifest.path, &a.path, &q.path, &o.path, &c] {
        assert!(exists(p.clone()).await, "{p} must stay");
    }
    assert!(!exists(m2.clone()).await && !exists(stray.clone()).await);
    assert_eq!(
        (sealed.in_flight, sealed.unrecognised),
        (1, 1),
        "{sealed:?}"
    );

    // A worker taking over skips the sealed scope.
    let again = collect_table_garbage(&storage, &coord, "t", GcScope::EarlierLeases(&epochs))
        .await
        .unwrap();
    assert_eq!(
        (again.sealed_scopes, again.deleted.len()),
        (1, 0),
        "{again:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
