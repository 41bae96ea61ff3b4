//! The test kit's conformance suites against the real implementations of the seams: the
//! coordinator against ZooKeeper (the server of scripts/stack.sh) and the embedded one on disk,
//! and the source against `KafkaSource` on the real broker. (The in-memory implementations
//! run the same suites in the test kit's unit tests.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::{KafkaConfig, StartFrom};
use sluice_coord::{
    Coordinator, Credentials, EmbeddedCoordinator, ZkCoordinator, ZkSecurity, ZkTls,
};
use sluice_source::KafkaSource;
use sluice_testkit::{coord_conformance, source_conformance};
use sluice_tests::certs::Certs;
use sluice_tests::private::PrivateZk;
use sluice_tests::{unique, zk_root, BrokerTopics, Stack};

async fn zookeeper_conformance(zk: &str, security: ZkSecurity) {
    let root = zk_root(&unique("conformance"));
    let result = coord_conformance::run_all(|| {
        let (zk, root, security) = (zk.to_string(), root.clone(), security.clone());
        async move {
            let c = ZkCoordinator::connect(
                &zk,
                &root,
                Duration::from_secs(4),
                Duration::from_secs(10),
                security,
            )
            .await?;
            Ok(Box::new(c) as Box<dyn Coordinator>)
        }
    })
    .await;
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_passes_the_coordinator_conformance_suite() {
    zookeeper_conformance(&Stack::from_env().zk, ZkSecurity::default()).await;
}

/// Over TLS to a private server that requires a client certificate (the server certificate
/// checked against the test CA and the host name).
#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_over_tls_passes_the_coordinator_conformance_suite() {
    let certs = Certs::make().expect("certificates");
    let zk = PrivateZk::launch_tls(&certs, "ssl.clientAuth=need\n")
        .await
        .expect("a ZooKeeper serving TLS");
    let read = |name: &str| std::fs::read_to_string(certs.path(name)).expect("a certificate");
    let tls = ZkTls::new(
        read("ca.pem"),
        Some((read("client.pem"), read("client.key"))),
    );
    let security = ZkSecurity {
        credentials: None,
        tls: Some(tls),
    };
    zookeeper_conformance(&zk.tls_connect().expect("a TLS port"), security).await;
}

/// Every znode created under ACLs that only the deployment's identity may use: the identity's
/// digest must be the one ZooKeeper computes, or the suite's second write would be refused.
#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_with_digest_authentication_passes_the_coordinator_conformance_suite() {
    let credentials = Credentials::new(
        "conformance",
        unique("password"),
        Some(("viewer".to_string(), "viewer-password".to_string())),
    );
    let security = ZkSecurity {
        credentials: Some(credentials),
        tls: None,
    };
    zookeeper_conformance(&Stack::from_env().zk, security).await;
}

#[tokio::test]
async fn embedded_on_disk_passes_the_coordinator_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let base = Arc::new(EmbeddedCoordinator::open(dir.path()).unwrap());
    let result = coord_conformance::run_all(|| {
        let base = Arc::clone(&base);
        async move { Ok(Box::new(base.new_session()) as Box<dyn Coordinator>) }
    })
    .await;
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The suite's topics are created with the admin client and filled by a producer sending to
/// explicit partitions; the source reads them as a worker would, with the tests' Kafka settings.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_passes_the_source_conformance_suite() {
    let stack = Stack::from_env();
    let source = KafkaSource::new(KafkaConfig {
        bootstrap_servers: stack.kafka.clone(),
        properties: BTreeMap::new(),
        start_from: StartFrom::Earliest,
        metadata_timeout_ms: 5_000,
        metadata_refresh_ms: 30_000,
        security: Default::default(),
    });
    let topics = BrokerTopics::new(&stack.kafka).expect("a Kafka producer");
    if let Err(e) = source_conformance::run_all(&source, &topics).await {
        panic!("{e}");
    }
}
