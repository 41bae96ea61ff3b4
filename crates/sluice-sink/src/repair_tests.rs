use std::collections::BTreeSet;

use bytes::Bytes;

use super::*;
use crate::storage::tests::three;

fn wanted_of(path: &str, bytes: &Bytes) -> Wanted {
    Wanted {
        path: path.to_string(),
        bytes: Some(bytes.len() as u64),
        checksum: sha256_hex(bytes),
    }
}

#[tokio::test]
async fn copies_missed_while_an_endpoint_was_down_are_repaired_when_it_returns() {
    let t = three(None);
    t.break_endpoint("c");
    let mut wanted = Vec::new();
    for i in 0..5 {
        let bytes = Bytes::from(format!("object {i}").repeat(100));
        let path = format!("t/data/v/{i}.bin");
        t.storage.put(&path, bytes.clone()).await.unwrap();
        wanted.push(wanted_of(&path, &bytes));
    }
    // Still down: nothing to copy to, every object under-replicated.
    let down = repair(&t.storage, &wanted, &BTreeSet::new(), &Throttle::new(0)).await;
    assert_eq!(down.unreachable, BTreeSet::from(["c".to_string()]));
    assert_eq!((down.under_replicated, down.missing), (5, 5));
    assert!(down.repaired.is_empty());

    t.heal_endpoint("c");
    let back = repair(&t.storage, &wanted, &BTreeSet::new(), &Throttle::new(0)).await;
    assert_eq!((back.under_replicated, back.missing), (0, 0));
    assert_eq!(back.repaired["c"].0, 5);
    for w in &wanted {
        let copy = t.on_disk("c", &w.path).unwrap();
        assert_eq!(sha256_hex(&copy), w.checksum);
        assert_eq!(back.holders[&w.path], vec!["a", "b", "c"]);
    }
    // A third pass finds nothing to do.
    let again = repair(&t.storage, &wanted, &BTreeSet::new(), &Throttle::new(0)).await;
    assert!(again.repaired.is_empty() && again.under_replicated == 0);
}

#[tokio::test]
async fn the_scrub_finds_a_corrupt_copy_and_the_repair_rewrites_it() {
    let t = three(None);
    let bytes = Bytes::from("the rows".repeat(1000));
    t.storage
        .put("t/data/v/p.bin", bytes.clone())
        .await
        .unwrap();
    let wanted = vec![wanted_of("t/data/v/p.bin", &bytes)];
    t.corrupt("b", "t/data/v/p.bin");

    let scrubbed = scrub(&t.storage, &wanted, 0, u64::MAX, &Throttle::new(0)).await;
    assert_eq!(scrubbed.copies_checked, 3);
    assert_eq!(
        scrubbed.corrupt,
        BTreeSet::from([("t/data/v/p.bin".to_string(), "b".to_string())])
    );
    let b = t
        .storage
        .stats()
        .into_iter()
        .find(|s| s.endpoint == "b")
        .unwrap();
    assert_eq!(b.checksum_failures, 1);

    let repaired = repair(&t.storage, &wanted, &scrubbed.corrupt, &Throttle::new(0)).await;
    assert_eq!(repaired.repaired["b"], (1, bytes.len() as u64));
    assert_eq!(t.on_disk("b", "t/data/v/p.bin").unwrap(), bytes.to_vec());
    assert!(scrub(&t.storage, &wanted, 0, u64::MAX, &Throttle::new(0))
        .await
        .corrupt
        .is_empty());
}

#[tokio::test]
async fn the_scrub_stops_at_its_budget_and_resumes_where_it_stopped() {
    let t = three(None);
    let mut wanted = Vec::new();
    for i in 0..4 {
        let bytes = Bytes::from(vec![i as u8; 1000]);
        let path = format!("t/data/v/{i}.bin");
        t.storage.put(&path, bytes.clone()).await.unwrap();
        wanted.push(wanted_of(&path, &bytes));
    }
    // Each object is 3 copies of 1000 bytes: a budget of 4000 reads two objects.
    let first = scrub(&t.storage, &wanted, 0, 4000, &Throttle::new(0)).await;
    assert_eq!((first.copies_checked, first.next), (6, 2));
    let second = scrub(&t.storage, &wanted, first.next, 4000, &Throttle::new(0)).await;
    assert_eq!((second.copies_checked, second.next), (6, 0));
}

#[tokio::test]
async fn draining_an_endpoint_moves_its_copies_and_keeps_reading_it_meanwhile() {
    let t = three(Some(2));
    let mut wanted = Vec::new();
    for i in 0..12 {
        let bytes = Bytes::from(format!("part {i}").repeat(50));
        let path = format!("t/data/v/{i}.bin");
        t.storage.put(&path, bytes.clone()).await.unwrap();
        wanted.push(wanted_of(&path, &bytes));
    }
    let on_c: Vec<&Wanted> = wanted
        .iter()
        .filter(|w| t.on_disk("c", &w.path).is_some())
        .collect();
    assert!(!on_c.is_empty(), "rendezvous placed nothing on c");
    let drained = t.draining("c", None);
    for w in &wanted {
        assert!(!drained.placement_names(&w.path).contains(&"c".to_string()));
    }
    // Before the repair, a part whose other copy is on c alone is still read (from c).
    for w in &on_c {
        drained.get_verified(&w.path, &w.checksum).await.unwrap();
    }
    let report = repair(&drained, &wanted, &BTreeSet::new(), &Throttle::new(0)).await;
    assert_eq!(report.under_replicated, 0);
    assert_eq!(
        report.repaired.values().map(|(n, _)| n).sum::<u64>(),
        on_c.len() as u64
    );
    for w in &wanted {
        let holders: Vec<&str> = ["a", "b"]
            .into_iter()
            .filter(|n| t.on_disk(n, &w.path).is_some())
            .collect();
        assert_eq!(holders, ["a", "b"], "{}", w.path);
    }
}
