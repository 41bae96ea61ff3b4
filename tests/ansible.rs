//! The Ansible roles and playbooks of `ansible/`, run for real on this machine (see
//! `support/ansible.rs`): an ensemble and a fleet provisioned by `site.yml` ingest exactly once,
//! a second run changes nothing, rolling restarts of the workers and of ZooKeeper under a
//! producer lose nothing, and a refused configuration or a worker that never becomes ready
//! stops the play before the hosts after it.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use sluice_tests::ansible::{kill_group, run_playbook, run_tool, verify_unit, Hosts, PlaybookRun};
use sluice_tests::fleet::{wait_balanced, wait_caught_up};
use sluice_tests::private::free_port;
use sluice_tests::{
    prepare_on, run_sluice, unique, wait_until, zk_root, Prepared, Stack, StorageKind,
};

const CAUGHT_UP: Duration = Duration::from_secs(180);

/// A deployment whose ZooKeeper is the ensemble `hosts` describes (started by the playbook),
/// with its events in S3 under the returned prefix.
async fn deployment(
    hosts: &Hosts,
    name: &str,
    partitions: i32,
    count: u64,
) -> Result<(Stack, Prepared, String)> {
    let mut stack = Stack::from_env();
    stack.zk = hosts.zk_connect();
    let prefix = unique("ansible");
    let storage_prefix = prefix.clone();
    let d = prepare_on(&stack, name, partitions, count, 500, |_| StorageKind::S3 {
        prefix: storage_prefix,
    })
    .await?;
    Ok((stack, d, prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_yml_provisions_an_ensemble_and_a_fleet_that_roll_restarts_without_loss() -> Result<()>
{
    let hosts = Hosts::new(3, 3)?;
    let (stack, mut d, prefix) = deployment(&hosts, "ansible-site", 6, 3_000).await?;
    let secret = stack.s3_secret_key.clone();
    hosts.write_inventory(&hosts.inventory(&stack, &d.topic, &prefix, &json!({}), &[])?)?;

    let first = hosts.playbook("site.yml", &[]).await?;
    first.ensure_success("site.yml")?;
    let mut modes: Vec<String> = hosts.zk_modes().into_iter().flatten().collect();
    modes.sort();
    ensure!(
        modes == ["follower", "follower", "leader"],
        "the ensemble should serve with one leader and two followers: {modes:?}"
    );
    for host in hosts.zookeeper_names().iter().chain(&hosts.worker_names()) {
        verify_unit(&hosts.unit_file(host))?;
    }
    secrets_stay_in_their_files(&hosts, &secret)?;

    let again = hosts.playbook("site.yml", &[]).await?;
    again.ensure_success("the second site.yml")?;
    ensure!(
        again.changed_hosts().is_empty(),
        "the second run of site.yml changed {:?}",
        again.changed_hosts()
    );
    let dry = hosts.playbook("site.yml", &["--check", "--diff"]).await?;
    dry.ensure_success("site.yml --check --diff")?;
    ensure!(
        dry.changed_hosts().is_empty(),
        "--check --diff of an applied inventory reports changes: {:?}",
        dry.changed_hosts()
    );

    // The fleet ingests what was produced before it existed.
    wait_caught_up(&d.config, &d.topic, &d.ends(), CAUGHT_UP).await?;

    let workers = hosts.worker_names();
    let before = pids(&hosts, &workers)?;
    let (roll, peak) = while_producing(&hosts, &mut d, "rolling_restart.yml").await?;
    roll.ensure_success("rolling_restart.yml")?;
    eprintln!(
        "rolling_restart.yml: peak lag {} messages, {:.1} s (oldest uncommitted event); {} samples unread",
        peak.messages, peak.seconds, peak.unread
    );
    let after = pids(&hosts, &workers)?;
    for w in &workers {
        ensure!(before[w] != after[w], "{w} was not restarted");
    }
    let ids: Vec<&str> = workers.iter().map(String::as_str).collect();
    wait_balanced(&d.config, &d.topic, d.partitions, &ids, CAUGHT_UP).await?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), CAUGHT_UP).await?;

    zookeeper_rolls_followers_first_and_nobody_rejoins(&hosts, &mut d).await
}

/// The ZooKeeper rolling restart under a producing fleet: every member restarted, the leader
/// last; every worker keeps its session (its membership znode's owner) and its process.
async fn zookeeper_rolls_followers_first_and_nobody_rejoins(
    hosts: &Hosts,
    d: &mut Prepared,
) -> Result<()> {
    let members = hosts.zookeeper_names();
    let workers = hosts.worker_names();
    let leader = hosts
        .zk_modes()
        .iter()
        .position(|m| m.as_deref() == Some("leader"))
        .map(|i| members[i].clone())
        .context("no leader before the ZooKeeper roll")?;
    let zk_before = pids(hosts, &members)?;
    let workers_before = pids(hosts, &workers)?;
    let sessions_before = member_sessions(&hosts.zk_connect(), &d.topic).await?;

    let (roll, peak) = while_producing(hosts, d, "zookeeper_rolling_restart.yml").await?;
    roll.ensure_success("zookeeper_rolling_restart.yml")?;
    eprintln!(
        "zookeeper_rolling_restart.yml: peak lag {} messages, {:.1} s; {} samples unread (no new session during an election)",
        peak.messages, peak.seconds, peak.unread
    );
    let order = restart_order(&roll.stdout);
    ensure!(
        order.len() == 3 && order.last() == Some(&leader),
        "members restarted in the order {order:?}; the leader {leader} should be last"
    );
    let zk_after = pids(hosts, &members)?;
    for m in &members {
        ensure!(zk_before[m] != zk_after[m], "{m} was not restarted");
    }
    let mut modes: Vec<String> = hosts.zk_modes().into_iter().flatten().collect();
    modes.sort();
    ensure!(
        modes == ["follower", "follower", "leader"],
        "after the roll: {modes:?}"
    );
    ensure!(
        pids(hosts, &workers)? == workers_before,
        "a worker process restarted during the ZooKeeper roll"
    );
    let sessions_after = member_sessions(&hosts.zk_connect(), &d.topic).await?;
    ensure!(
        sessions_after == sessions_before,
        "workers rejoined with new sessions: before {sessions_before:?}, after {sessions_after:?}"
    );
    wait_caught_up(&d.config, &d.topic, &d.ends(), CAUGHT_UP).await?;
    verify_stopped(hosts, d).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_or_a_worker_never_ready_stops_the_play_and_a_killed_roll_is_finished(
) -> Result<()> {
    let hosts = Hosts::new(1, 3)?;
    let (stack, mut d, prefix) = deployment(&hosts, "ansible-refused", 3, 600).await?;
    // This ensemble requires digest authentication: the workers' password is a secret of the
    // inventory; the test's own readings use it from a file.
    let password = unique("zk-password");
    let password_file = d.dir.path().join("zk-password");
    std::fs::write(&password_file, &password)?;
    d.edit_config(|text| {
        format!("{text}\n[coordination.auth]\nuser = \"sluice\"\npassword = {{ file = {password_file:?} }}\n")
    })?;
    let topic = d.topic.clone();
    let inventory = |mut workers: Value, host: &[(&str, Value)]| {
        workers["sluice_worker_zookeeper_user"] = json!("sluice");
        workers["sluice_worker_secrets"] = json!({
            "s3-secret-key": stack.s3_secret_key,
            "zookeeper-password": password,
        });
        let mut host = host.to_vec();
        host.push(("zk1", json!({ "zookeeper_require_auth": true })));
        hosts.write_inventory(&hosts.inventory(&stack, &topic, &prefix, &workers, &host)?)
    };
    inventory(json!({}), &[])?;
    hosts
        .playbook("site.yml", &[])
        .await?
        .ensure_success("site.yml")?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), CAUGHT_UP).await?;
    let workers = hosts.worker_names();
    let original = configs(&hosts, &workers)?;
    let before = pids(&hosts, &workers)?;

    // A sorting key naming a column the table does not have: `sluice check` refuses it.
    let table = sluice_testkit::fixture::events_table(&d.topic, 500, 300);
    let refused = table.replace(
        r#"["country", "path", "ts"]"#,
        r#"["country", "region", "ts"]"#,
    );
    ensure!(refused != table, "the fixture's sorting key changed");
    inventory(json!({ "sluice_worker_tables_toml": refused }), &[])?;
    let run = hosts.playbook("site.yml", &[]).await?;
    ensure!(!run.succeeded(), "site.yml applied a refused configuration");
    ensure!(
        run.stdout.contains("failed to validate") && run.stdout.contains("region"),
        "the failure should be the check's, naming the column: {}",
        run.stdout
    );
    ensure!(
        configs(&hosts, &workers)? == original,
        "a configuration was replaced"
    );
    ensure!(pids(&hosts, &workers)? == before, "a worker was restarted");
    untouched(&run, &["w2", "w3"])?;

    // A change for every host, and on w2 a broker address nothing listens on: w2 never becomes
    // ready, so the play stops there; w1 has the change, w3 is untouched.
    let dead = format!("127.0.0.1:{}", free_port()?);
    let change = json!({ "sluice_worker_worker_extra": {"lease_wait_ms": 30000, "flush_check_interval_ms": 60} });
    let broken = json!({ "sluice_worker_kafka_bootstrap_servers": dead, "sluice_worker_ready_timeout_s": 20 });
    inventory(change.clone(), &[("w2", broken)])?;
    let run = hosts.playbook("site.yml", &[]).await?;
    ensure!(
        !run.succeeded(),
        "site.yml went on past a worker that never became ready"
    );
    ensure!(
        run.stdout.contains("fatal: [w2]") && run.recap("w1").is_some_and(|r| r.failed == 0),
        "the play should fail at w2 only: {}",
        run.stdout
    );
    let now = configs(&hosts, &workers)?;
    ensure!(
        now["w1"].contains("flush_check_interval_ms = 60"),
        "w1 lacks the change"
    );
    ensure!(now["w2"].contains(&dead), "w2 lacks its (broken) change");
    ensure!(
        now["w3"] == original["w3"],
        "w3's configuration was replaced"
    );
    let after = pids(&hosts, &workers)?;
    ensure!(
        after["w1"] != before["w1"] && after["w3"] == before["w3"],
        "restarts: {before:?} -> {after:?}"
    );
    untouched(&run, &["w3"])?;
    // Run again unfixed: w2 has nothing new to apply, and the play still stops at it.
    let again = hosts.playbook("site.yml", &[]).await?;
    ensure!(
        !again.succeeded() && again.stdout.contains("fatal: [w2]"),
        "a second run went past the unready w2: {}",
        again.stdout
    );
    untouched(&again, &["w3"])?;
    ensure!(
        pids(&hosts, &["w1".into(), "w3".into()])? == pids_of(&after, &["w1", "w3"]),
        "a rerun restarted w1 or w3"
    );

    // Events produced while w2 is broken are ingested once it is fixed.
    d.produce_more(300).await?;
    inventory(change, &[])?;
    hosts
        .playbook("site.yml", &[])
        .await?
        .ensure_success("site.yml with w2 fixed")?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), CAUGHT_UP).await?;

    // The controller killed -9 while the roll has a worker down: the next run finishes it.
    let mut roll = hosts.spawn_playbook("rolling_restart.yml")?;
    let down = || workers.iter().find(|w| hosts.pid(w).is_none()).cloned();
    wait_until(
        CAUGHT_UP,
        Duration::from_millis(50),
        "a worker stopped by the roll",
        || {
            let stopped = down().is_some();
            async move { Ok(stopped) }
        },
    )
    .await?;
    kill_group(&roll)?;
    roll.wait().await?;
    let stopped = down().context("the stopped worker came back by itself")?;
    d.produce_more(300).await?;
    hosts
        .playbook("rolling_restart.yml", &[])
        .await?
        .ensure_success("rolling_restart.yml after a killed one")?;
    ensure!(
        hosts.pid(&stopped).is_some(),
        "{stopped} was not started again"
    );
    pids(&hosts, &workers)?;
    wait_caught_up(&d.config, &d.topic, &d.ends(), CAUGHT_UP).await?;
    verify_stopped(&hosts, &d).await
}

#[tokio::test]
async fn the_roles_and_playbooks_pass_ansible_lint_and_a_syntax_check() -> Result<()> {
    let lint = run_tool("ansible-lint", &[], Duration::from_secs(300)).await?;
    ensure!(
        lint.status.success(),
        "ansible-lint: {}",
        sluice_tests::describe(&lint)
    );
    for playbook in [
        "site.yml",
        "rolling_restart.yml",
        "zookeeper_rolling_restart.yml",
    ] {
        let out = run_tool(
            "ansible-playbook",
            &[
                "-i",
                "inventory/example/hosts.yml",
                "--syntax-check",
                playbook,
            ],
            Duration::from_secs(120),
        )
        .await?;
        ensure!(
            out.status.success(),
            "--syntax-check {playbook}: {}",
            sluice_tests::describe(&out)
        );
    }
    Ok(())
}

/// The secret is in its file (mode 0400) and nowhere else: not in the configuration, the unit,
/// the worker's command line or its environment.
fn secrets_stay_in_their_files(hosts: &Hosts, secret: &str) -> Result<()> {
    for w in hosts.worker_names() {
        let file = hosts.root(&w).join("etc/secrets/s3-secret-key");
        ensure!(
            std::fs::read_to_string(&file)? == secret,
            "{w}: secret file"
        );
        let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
        ensure!(mode == 0o400, "{w}: the secret file has mode {mode:o}");
        let pid = hosts
            .pid(&w)
            .with_context(|| format!("{w} is not running"))?;
        let places = [
            hosts.worker_config(&w),
            hosts.unit_file(&w),
            format!("/proc/{pid}/cmdline").into(),
            format!("/proc/{pid}/environ").into(),
        ];
        for place in places {
            let text = String::from_utf8_lossy(&std::fs::read(&place)?).into_owned();
            ensure!(
                !text.contains(secret),
                "{w}: the secret is in {}",
                place.display()
            );
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
struct PeakLag {
    messages: i64,
    seconds: f64,
    /// Samples that could not be read.
    unread: usize,
}

/// Runs `playbook` while producing events in batches of 100, reading the fleet's lag between
/// batches; returns the playbook's run and the highest lag seen.
async fn while_producing(
    hosts: &Hosts,
    d: &mut Prepared,
    playbook: &str,
) -> Result<(PlaybookRun, PeakLag)> {
    let roll = tokio::spawn(run_playbook(
        hosts.inventory_path(),
        playbook.to_string(),
        Vec::new(),
    ));
    let mut peak = PeakLag::default();
    while !roll.is_finished() {
        d.produce_more(100).await?;
        // While a ZooKeeper leader is being elected no new session can be opened: that sample
        // is skipped (the workers' sessions, older, survive it).
        let args = ["lag", "--json", "--config", d.config_arg()];
        let out = run_sluice(&args, &[], Duration::from_secs(60)).await?;
        if !out.status.success() {
            peak.unread += 1;
            continue;
        }
        let report: Value = serde_json::from_slice(&out.stdout)?;
        for t in report["topics"].as_array().context("lag topics")? {
            peak.messages = peak.messages.max(t["lag_messages"].as_i64().unwrap_or(0));
            peak.seconds = peak
                .seconds
                .max(t["max_lag_seconds"].as_f64().unwrap_or(0.0));
        }
    }
    Ok((roll.await??, peak))
}

/// The exactly-once check of everything produced, with every column, once the workers have
/// stopped (SIGTERM, as `systemctl stop`): running workers merge, and a merge's upload is in
/// storage before its commit, which the checker (nothing in storage but committed parts) would
/// count as a stray. A merge a restart interrupted leaves its upload behind too, until the
/// scope's next merger or `sluice gc` deletes it; with the workers stopped no merge lease is
/// held, so gc collects every such upload first.
async fn verify_stopped(hosts: &Hosts, d: &Prepared) -> Result<()> {
    hosts.stop_workers(Duration::from_secs(90)).await?;
    d.sluice(&["gc", "--min-age-ms", "0"]).await?;
    d.verify().await
}

/// The pid of each host's unit; every one must be running.
fn pids(hosts: &Hosts, names: &[String]) -> Result<BTreeMap<String, u32>> {
    names
        .iter()
        .map(|n| {
            let pid = hosts
                .pid(n)
                .with_context(|| format!("{n} is not running"))?;
            Ok((n.clone(), pid))
        })
        .collect()
}

/// The entries of `all` for `names`.
fn pids_of(all: &BTreeMap<String, u32>, names: &[&str]) -> BTreeMap<String, u32> {
    names.iter().map(|n| (n.to_string(), all[*n])).collect()
}

/// Each worker's configuration text and modification time.
fn configs(hosts: &Hosts, names: &[String]) -> Result<BTreeMap<String, String>> {
    names
        .iter()
        .map(|n| {
            let path = hosts.worker_config(n);
            let modified = std::fs::metadata(&path)?.modified()?;
            let text = std::fs::read_to_string(&path)?;
            Ok((n.clone(), format!("{text}\nmodified {modified:?}")))
        })
        .collect()
}

/// The hosts took no part in the run: no task ran on them.
fn untouched(run: &PlaybookRun, names: &[&str]) -> Result<()> {
    for n in names {
        ensure!(
            run.recap(n).is_none(),
            "{n} took part in the run: {:?}",
            run.recap(n)
        );
    }
    Ok(())
}

/// The members restarted, in order: the host of each `changed` result of the supervisor's
/// task.
fn restart_order(stdout: &str) -> Vec<String> {
    let mut order = Vec::new();
    let mut in_supervisor_task = false;
    for line in stdout.lines() {
        if line.starts_with("TASK [") {
            in_supervisor_task = line.contains("Bring the unit to its state with the supervisor");
        } else if in_supervisor_task {
            if let Some(host) = line
                .strip_prefix("changed: [")
                .and_then(|l| l.split(']').next())
            {
                order.push(host.to_string());
            }
        }
    }
    order
}

/// The session owning each worker's membership znode, read from ZooKeeper itself.
async fn member_sessions(connect: &str, topic: &str) -> Result<BTreeMap<String, i64>> {
    let client = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(connect)
        .await?;
    let dir = format!("{}/members", zk_root(topic));
    let mut sessions = BTreeMap::new();
    for child in client.list_children(&dir).await? {
        let (_, stat) = client.get_data(&format!("{dir}/{child}")).await?;
        sessions.insert(child, stat.ephemeral_owner);
    }
    Ok(sessions)
}
