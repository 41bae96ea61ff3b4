//! `sluice produce`: seeded sample events (see `sluice_source::sample`) to a Kafka topic or to
//! an NDJSON file, for the quickstart, for trying configurations out, and for the benchmarks.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;
use sluice_source::sample::SampleEvents;

/// How often progress is reported on long runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["topic", "output"])))]
pub struct ProduceArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "SLUICE_KAFKA", default_value = "127.0.0.1:29092")]
    brokers: String,
    /// The topic to produce to.
    #[arg(long)]
    topic: Option<String>,
    /// Write the events to this file instead, one JSON object per line (NDJSON); `-` is stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
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
    /// Seed of the random fields: the same seed gives the same events, to a topic or a file.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub async fn produce(args: ProduceArgs) -> Result<()> {
    tokio::task::spawn_blocking(move || match (&args.topic, &args.output) {
        (_, Some(path)) => write_file(&args, path),
        (Some(topic), None) => to_kafka(&args, topic),
        (None, None) => bail!("give --topic or --output"),
    })
    .await?
}

fn write_file(args: &ProduceArgs, path: &PathBuf) -> Result<()> {
    let events = SampleEvents::new(args.seed).malformed_every(args.malformed_every);
    let out: Box<dyn std::io::Write> = if path.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let started = Instant::now();
    let mut line = String::with_capacity(256);
    let mut bytes = 0u64;
    for seq in args.start_seq..args.start_seq + args.count {
        line.clear();
        events.write(seq, &mut line);
        line.push('\n');
        bytes += line.len() as u64;
        out.write_all(line.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "wrote {} events ({:.1} MB, {:.1} bytes each on average) to {} in {:.2} s",
        args.count,
        bytes as f64 / 1e6,
        bytes as f64 / args.count.max(1) as f64,
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Counts deliveries and keeps the first failure; the producer's own thread calls it.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

#[derive(Clone, Default)]
struct Counter(Arc<Deliveries>);

impl ClientContext for Counter {}

impl ProducerContext for Counter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.0.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn create_topic(cfg: &ClientConfig, brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        cfg.create().context("creating the Kafka admin client")?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime
        .block_on(admin.create_topics([&new], &opts))
        .with_context(|| format!("creating topic {topic} at {brokers}"))?;
    for r in results {
        match r {
            Ok(_) => eprintln!("created topic {topic} with {partitions} partitions"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("cannot create topic {t}: {code}"),
        }
    }
    Ok(())
}

fn to_kafka(args: &ProduceArgs, topic: &str) -> Result<()> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "20")
        .set("message.timeout.ms", "60000")
        .set("queue.buffering.max.messages", "200000");
    if let Some(n) = args.partitions {
        create_topic(&cfg, &args.brokers, topic, n)?;
    }
    let context = Counter::default();
    let producer: BaseProducer<Counter> = cfg
        .create_with_context(context.clone())
        .context("creating the Kafka producer")?;
    let events = SampleEvents::new(args.seed).malformed_every(args.malformed_every);
    let started = Instant::now();
    let mut last_progress = started;
    let mut payload = String::with_capacity(256);
    let mut key = String::with_capacity(24);
    let mut malformed = 0u64;
    for seq in args.start_seq..args.start_seq + args.count {
        payload.clear();
        events.write(seq, &mut payload);
        malformed += u64::from(events.malformed(seq).is_some());
        key.clear();
        key.push_str(&seq.to_string());
        loop {
            let record = BaseRecord::to(topic).payload(&payload).key(&key);
            match producer.send(record) {
                Ok(()) => break,
                // The local queue is full: serve delivery reports until there is room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("cannot queue event {seq} for {topic}: {e}"),
            }
        }
        if context.0.failed.load(Ordering::Relaxed) > 0 {
            break;
        }
        producer.poll(Duration::ZERO);
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            eprintln!(
                "produced {}/{} events",
                context.0.delivered.load(Ordering::Relaxed),
                args.count
            );
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("waiting for the last deliveries")?;
    let failed = context.0.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = context.0.first_error.lock().ok().and_then(|f| f.clone());
        bail!(
            "{failed} events were not delivered to {topic}; first error: {}",
            first.unwrap_or_default()
        );
    }
    let sent = context.0.delivered.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "produced {sent} events ({malformed} malformed) to {topic} in {secs:.2} s ({:.0} events/s)",
        sent as f64 / secs.max(1e-9)
    );
    Ok(())
}
