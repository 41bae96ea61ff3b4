//! The whole benchmark in one run: a seeded corpus; the conversion path on one thread and on
//! all cores; then, against a broker, the corpus produced to a fresh topic, read by a plain
//! rdkafka consumer (the yardstick), by one worker and by two workers, each `--stop-at-end`
//! from a fresh ZooKeeper root. Every measured step runs as a process of its own, so its CPU
//! seconds and peak RSS are its own.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sluice_source::sample::SampleEvents;

use crate::convert::Figures;

/// Where the broker-side steps run.
#[derive(Debug, Clone)]
pub struct BrokerSide {
    pub brokers: String,
    pub zookeeper: String,
    /// The `sluice` binary (workers, producer).
    pub sluice: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub events: u64,
    pub seed: u64,
    pub config: PathBuf,
    /// A TOML fragment of views (and their tables) appended to the config, to measure their
    /// cost.
    pub views: Option<PathBuf>,
    pub work_dir: PathBuf,
    pub partitions: usize,
    /// Threads of the "all cores" conversion run.
    pub all_threads: usize,
    pub broker: Option<BrokerSide>,
}

/// One measured step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub figures: Figures,
}

/// Everything a run measured, as written to `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub events: u64,
    pub seed: u64,
    pub corpus_bytes: u64,
    pub partitions: usize,
    pub cores: usize,
    /// The views fragment measured with, if any.
    pub views: Option<String>,
    pub steps: Vec<Step>,
}

impl Results {
    pub fn step(&self, name: &str) -> Option<&Figures> {
        self.steps
            .iter()
            .find(|s| s.name == name)
            .map(|s| &s.figures)
    }
}

pub const CONVERT_ONE: &str = "conversion, 1 thread";
pub const RAW_CONSUME: &str = "raw consume (rdkafka)";
pub const ONE_WORKER: &str = "1 worker";
pub const TWO_WORKERS: &str = "2 workers";
/// One worker writing every part to three `file://` endpoints (replication 3, write quorum 2),
/// against [`ONE_WORKER`]'s one: the cost of replicating in Sluice.
pub const ONE_WORKER_THREE_ENDPOINTS: &str = "1 worker, 3 endpoints";

pub fn convert_all_name(threads: usize) -> String {
    format!("conversion, {threads} threads")
}

pub fn run(opts: &RunOptions) -> Result<Results> {
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("cannot create {}", opts.work_dir.display()))?;
    let work_dir = std::path::absolute(&opts.work_dir)?;
    let corpus = work_dir.join(format!("corpus-{}-seed{}.ndjson", opts.events, opts.seed));
    let corpus_bytes = write_corpus(&corpus, opts.events, opts.seed)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The deployment measured: the config, and the views fragment if any.
    let mut text = std::fs::read_to_string(&opts.config)
        .with_context(|| format!("cannot read {}", opts.config.display()))?;
    if let Some(views) = &opts.views {
        text.push('\n');
        text.push_str(
            &std::fs::read_to_string(views)
                .with_context(|| format!("cannot read {}", views.display()))?,
        );
    }
    let deployment = work_dir.join("deployment.toml");
    std::fs::write(&deployment, text)?;
    sluice_config::Config::load(&deployment)?;
    let opts = &RunOptions {
        config: deployment,
        ..opts.clone()
    };
    let mut results = Results {
        events: opts.events,
        seed: opts.seed,
        corpus_bytes,
        partitions: opts.partitions,
        cores,
        views: opts.views.as_ref().map(|v| v.display().to_string()),
        steps: Vec::new(),
    };
    let me = std::env::current_exe()?;

    for threads in [1, opts.all_threads] {
        let name = if threads == 1 {
            CONVERT_ONE.to_string()
        } else {
            convert_all_name(threads)
        };
        eprintln!("== {name}");
        let out = work_dir.join(format!("convert-{threads}"));
        let figures = measured(
            Command::new(&me)
                .arg("convert")
                .arg("--config")
                .arg(&opts.config)
                .arg("--input")
                .arg(&corpus)
                .arg("--threads")
                .arg(threads.to_string())
                .arg("--partitions")
                .arg(opts.partitions.max(threads).to_string())
                .arg("--output")
                .arg(&out),
            &work_dir.join(format!("convert-{threads}.log")),
        )?;
        results.steps.push(Step { name, figures });
        let _ = std::fs::remove_dir_all(&out);
    }

    if let Some(broker) = &opts.broker {
        broker_steps(opts, broker, &work_dir, &me, &mut results)?;
    }
    Ok(results)
}

fn write_corpus(path: &Path, events: u64, seed: u64) -> Result<u64> {
    let generator = SampleEvents::new(seed);
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut line = String::with_capacity(256);
    let mut bytes = 0u64;
    for seq in 0..events {
        line.clear();
        generator.write(seq, &mut line);
        bytes += line.len() as u64;
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    eprintln!(
        "corpus: {events} events, {:.1} bytes each on average, seed {seed}: {}",
        bytes as f64 / events.max(1) as f64,
        path.display()
    );
    Ok(bytes)
}

/// Runs a step's process, which prints its [`Figures`] as JSON on stdout; stderr goes to `log`.
fn measured(command: &mut Command, log: &Path) -> Result<Figures> {
    let child = spawn(command, log)?;
    finish(child, log)
}

pub(crate) fn spawn(command: &mut Command, log: &Path) -> Result<Child> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    command
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))
}

pub(crate) fn finish(child: Child, log: &Path) -> Result<Figures> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let tail = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "a benchmark step failed ({}); end of {}:\n{}",
            out.status,
            log.display(),
            tail.join("\n")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no JSON figures in the step's output: {stdout}"))?;
    serde_json::from_str(line).with_context(|| format!("cannot read figures from {line}"))
}

/// The bench config with the connection fields pointed at this run's stack and directories.
fn deployment_config(
    opts: &RunOptions,
    broker: &BrokerSide,
    topic: &str,
    root: &str,
    data: &Path,
    endpoints: usize,
) -> Result<String> {
    let text = std::fs::read_to_string(&opts.config)
        .with_context(|| format!("cannot read {}", opts.config.display()))?;
    let mut doc: toml::Table = toml::from_str(&text)?;
    let section = |doc: &mut toml::Table, name: &str| -> Result<toml::Table> {
        Ok(match doc.remove(name) {
            Some(toml::Value::Table(t)) => t,
            None => toml::Table::new(),
            Some(_) => bail!("`{name}` in {} is not a table", opts.config.display()),
        })
    };
    let mut coordination = section(&mut doc, "coordination")?;
    coordination.insert("zookeeper_connect".into(), broker.zookeeper.clone().into());
    coordination.insert("root".into(), root.into());
    doc.insert("coordination".into(), coordination.into());
    let mut kafka = section(&mut doc, "kafka")?;
    kafka.insert("bootstrap_servers".into(), broker.brokers.clone().into());
    doc.insert("kafka".into(), kafka.into());
    let mut storage = section(&mut doc, "storage")?;
    if endpoints > 1 {
        storage.remove("url");
        let list: Vec<toml::Value> = (1..=endpoints)
            .map(|i| {
                let mut e = toml::Table::new();
                e.insert("name".into(), format!("e{i}").into());
                let dir = data.join(format!("e{i}"));
                e.insert("url".into(), format!("file://{}", dir.display()).into());
                toml::Value::Table(e)
            })
            .collect();
        storage.insert("endpoints".into(), list.into());
    } else {
        storage.insert("url".into(), format!("file://{}", data.display()).into());
    }
    doc.insert("storage".into(), storage.into());
    // The landing tables read this run's topic; views' tables have none.
    if let Some(toml::Value::Array(tables)) = doc.get_mut("table") {
        for t in tables {
            if let toml::Value::Table(t) = t {
                if t.contains_key("topic") {
                    t.insert("topic".into(), topic.into());
                }
            }
        }
    }
    Ok(toml::to_string(&doc)?)
}

fn broker_steps(
    opts: &RunOptions,
    broker: &BrokerSide,
    work_dir: &Path,
    me: &Path,
    results: &mut Results,
) -> Result<()> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let topic = format!("bench-{}-{stamp}", opts.events);
    eprintln!(
        "== producing the corpus to {topic} ({} partitions)",
        opts.partitions
    );
    let produced = Command::new(&broker.sluice)
        .args(["produce", "--brokers", &broker.brokers, "--topic", &topic])
        .args(["--partitions", &opts.partitions.to_string()])
        .args(["--count", &opts.events.to_string()])
        .args(["--seed", &opts.seed.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()?;
    if !produced.status.success() {
        bail!("producing the corpus failed ({})", produced.status);
    }
    eprint!("{}", String::from_utf8_lossy(&produced.stdout));

    eprintln!("== {RAW_CONSUME}");
    let config_for = |name: &str, endpoints: usize| -> Result<PathBuf> {
        let data = work_dir.join(format!("data-{name}"));
        let _ = std::fs::remove_dir_all(&data);
        let text = deployment_config(
            opts,
            broker,
            &topic,
            &format!("/sluice/bench/{topic}/{name}"),
            &data,
            endpoints,
        )?;
        let path = work_dir.join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let consume_config = config_for("consume", 1)?;
    let figures = measured(
        Command::new(me)
            .arg("consume")
            .arg("--config")
            .arg(&consume_config)
            .arg("--topic")
            .arg(&topic),
        &work_dir.join("consume.log"),
    )?;
    results.steps.push(Step {
        name: RAW_CONSUME.into(),
        figures,
    });

    for (workers, endpoints) in [(1usize, 1usize), (1, 3), (2, 1)] {
        let name = match (workers, endpoints) {
            (1, 1) => ONE_WORKER,
            (1, _) => ONE_WORKER_THREE_ENDPOINTS,
            _ => TWO_WORKERS,
        };
        eprintln!("== {name}");
        let config = config_for(
            &format!("workers-{workers}-endpoints-{endpoints}"),
            endpoints,
        )?;
        let started = Instant::now();
        let mut children = Vec::new();
        for w in 1..=workers {
            let log = work_dir.join(format!("workers-{workers}-endpoints-{endpoints}-w{w}.log"));
            let child = spawn(
                Command::new(&broker.sluice)
                    .arg("run")
                    .arg("--config")
                    .arg(&config)
                    .args(["--worker-id", &format!("bench-w{w}")])
                    .args(["--stop-at-end", "--summary-json"])
                    .env("SLUICE_LOG", "warn"),
                &log,
            )?;
            children.push((child, log));
        }
        let mut total = Figures::default();
        for (child, log) in children {
            let f = finish(child, &log)?;
            total.add(&f);
            total.cpu_s += f.cpu_s;
            total.peak_rss_bytes = total.peak_rss_bytes.max(f.peak_rss_bytes);
        }
        total.wall_s = started.elapsed().as_secs_f64();
        results.steps.push(Step {
            name: name.into(),
            figures: total,
        });
    }
    Ok(())
}

/// The results as a table, with the ratios the targets are stated in.
pub fn render(results: &Results) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "corpus: {} events, {:.1} bytes of JSON each (seed {}); {} partitions; {} cores; views: {}\n\n",
        results.events,
        results.corpus_bytes as f64 / results.events.max(1) as f64,
        results.seed,
        results.partitions,
        results.cores,
        results.views.as_deref().unwrap_or("none")
    ));
    s.push_str(&format!(
        "{:<26} {:>10} {:>12} {:>8} {:>10} {:>14} {:>10}\n",
        "step", "events", "events/s", "MB/s", "CPU s", "CPU s/1M ev", "peak RSS"
    ));
    for step in &results.steps {
        let f = &step.figures;
        s.push_str(&format!(
            "{:<26} {:>10} {:>12.0} {:>8.1} {:>10.2} {:>14.3} {:>6} MiB\n",
            step.name,
            f.events,
            f.events_per_s(),
            f.mb_per_s(),
            f.cpu_s,
            f.cpu_s_per_million(),
            f.peak_rss_bytes >> 20
        ));
    }
    let rate = |name: &str| results.step(name).map(Figures::events_per_s);
    if let (Some(one), Some(raw)) = (rate(ONE_WORKER), rate(RAW_CONSUME)) {
        s.push_str(&format!(
            "\n1 worker / raw consume: {:.2}\n",
            one / raw.max(1e-9)
        ));
    }
    if let (Some(three), Some(one)) = (rate(ONE_WORKER_THREE_ENDPOINTS), rate(ONE_WORKER)) {
        s.push_str(&format!(
            "3 endpoints / 1 endpoint (1 worker): {:.2}\n",
            three / one.max(1e-9)
        ));
    }
    if let (Some(two), Some(one)) = (rate(TWO_WORKERS), rate(ONE_WORKER)) {
        s.push_str(&format!(
            "2 workers / 1 worker: {:.2}\n",
            two / one.max(1e-9)
        ));
    }
    s
}
