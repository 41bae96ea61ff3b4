//! `sluice produce`: sample events for the quickstart and for trying configurations out.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

const COUNTRIES: &[&str] = &[
    "de", "fr", "us", "br", "in", "jp", "ng", "gb", "es", "it", "ca", "au",
];
const PATHS: &[&str] = &[
    "/",
    "/pricing",
    "/docs",
    "/docs/install",
    "/blog",
    "/signup",
    "/login",
    "/cart",
    "/checkout",
    "/search",
];
/// Events are spread over three days from this instant (2026-11-20T00:00:00Z), so day
/// partitioning has something to split.
const BASE_MS: i64 = 1_795_132_800_000;
const SPREAD_MS: i64 = 3 * 86_400_000;
/// Deliveries awaited per chunk; bounds memory while keeping the producer busy.
const CHUNK: usize = 10_000;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "SLUICE_KAFKA", default_value = "127.0.0.1:29092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// How many events.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// First sequence number.
    #[arg(long, default_value_t = 0)]
    start_seq: u64,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long)]
    partitions: Option<i32>,
    /// Make every n-th event malformed (not JSON, wrong type, missing field, in turn); 0: none.
    #[arg(long, default_value_t = 0)]
    malformed_every: u64,
    /// Seed of the random fields, so a run can be repeated exactly.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// The JSON of event `seq`, or a malformed variant of it.
pub fn event(seq: u64, rng: &mut StdRng, malformed_every: u64) -> String {
    let ts = BASE_MS + ((seq as i64).wrapping_mul(2_654_435_761)).rem_euclid(SPREAD_MS);
    let country = COUNTRIES[rng.gen_range(0..COUNTRIES.len())];
    let path = PATHS[rng.gen_range(0..PATHS.len())];
    let user = rng.gen_range(1..50_000u32);
    let duration: f64 = rng.gen_range(0.5..5_000.0);
    let ok = rng.gen_bool(0.97);
    if malformed_every > 0 && seq % malformed_every == malformed_every - 1 {
        return match (seq / malformed_every) % 3 {
            0 => format!(r#"{{"seq":{seq},"ts":{ts},"country":"{country}"#),
            1 => format!(
                r#"{{"seq":{seq},"ts":"yesterday","user_id":{user},"country":"{country}","path":"{path}","duration_ms":{duration:.3},"ok":{ok}}}"#
            ),
            _ => format!(r#"{{"seq":{seq},"user_id":{user},"country":"{country}"}}"#),
        };
    }
    format!(
        r#"{{"seq":{seq},"ts":{ts},"user_id":{user},"country":"{country}","path":"{path}","duration_ms":{duration:.3},"ok":{ok}}}"#
    )
}

pub async fn produce(args: ProduceArgs) -> Result<()> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "20")
        .set("message.timeout.ms", "60000")
        .set("queue.buffering.max.messages", "200000");
    if let Some(n) = args.partitions {
        let admin: AdminClient<DefaultClientContext> =
            cfg.create().context("creating the Kafka admin client")?;
        let topic = NewTopic::new(&args.topic, n, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .with_context(|| format!("creating topic {} at {}", args.topic, args.brokers))?;
        for r in results {
            match r {
                Ok(_) => eprintln!("created topic {} with {n} partitions", args.topic),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => bail!("cannot create topic {t}: {code}"),
            }
        }
    }
    let producer: FutureProducer = cfg.create().context("creating the Kafka producer")?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let mut malformed = 0u64;
    let end = args.start_seq + args.count;
    let mut seq = args.start_seq;
    while seq < end {
        let chunk_end = (seq + CHUNK as u64).min(end);
        let mut pending = Vec::with_capacity(CHUNK);
        for s in seq..chunk_end {
            let payload = event(s, &mut rng, args.malformed_every);
            if args.malformed_every > 0 && s % args.malformed_every == args.malformed_every - 1 {
                malformed += 1;
            }
            let key = s.to_string();
            let record = FutureRecord::to(&args.topic).payload(&payload).key(&key);
            let delivery = producer.send_result(record).map_err(|(e, _)| {
                anyhow::anyhow!("cannot queue event {s} for {}: {e}", args.topic)
            })?;
            pending.push(delivery);
        }
        for delivery in pending {
            delivery
                .await
                .context("the producer was dropped")?
                .map_err(|(e, _)| anyhow::anyhow!("delivery to {} failed: {e}", args.topic))?;
            sent += 1;
        }
        seq = chunk_end;
        eprintln!("produced {sent}/{} events", args.count);
    }
    println!(
        "produced {sent} events ({malformed} malformed) to {} in {:.2} s",
        args.topic,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
