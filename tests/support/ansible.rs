//! The playbooks of `ansible/` run for real against this machine: every inventory "host" is
//! `ansible_connection: local` with its own directories and loopback ports, and the roles run
//! units with the supervisor (`service_manager: supervisor`) since systemd is not PID 1 here.
//! ZooKeeper members are Debian's server (installed by `scripts/stack.sh`), workers the
//! `sluice` binary the roles copy; Kafka and S3 are the shared stack's.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::private::{ask, free_ports};
use crate::{describe, sluice_bin, workspace_root, Stack};

const HOST: &str = "127.0.0.1";

/// The virtualenv `scripts/stack.sh test-tools` installs ansible-core and ansible-lint into.
pub fn venv() -> PathBuf {
    PathBuf::from(std::env::var("SLUICE_ANSIBLE_VENV").unwrap_or_else(|_| {
        panic!("SLUICE_ANSIBLE_VENV is not set: run the tests through scripts/test.sh")
    }))
}

/// Runs a tool of the virtualenv in `ansible/` (ansible-playbook, ansible-lint) with its
/// `ansible.cfg`, killed after `limit`.
pub async fn run_tool(tool: &str, args: &[&str], limit: Duration) -> Result<Output> {
    let out = tokio::time::timeout(limit, tool_command(tool, args).output())
        .await
        .with_context(|| format!("{tool} {} did not finish within {limit:?}", args.join(" ")))?
        .with_context(|| format!("running {tool}"))?;
    Ok(out)
}

/// The command of [`run_tool`], in a process group of its own (which [`Hosts::spawn_playbook`]
/// kills whole, as a crash of the controller would end it).
fn tool_command(tool: &str, args: &[&str]) -> tokio::process::Command {
    let bin = venv().join("bin");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir = workspace_root().join("ansible");
    let mut cmd = tokio::process::Command::new(bin.join(tool));
    cmd.args(args)
        .current_dir(&dir)
        .env("PATH", path)
        .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        // Ansible's own temp files stay in the test's directories, not the home directory.
        .env("ANSIBLE_LOCAL_TEMP", std::env::temp_dir())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// One ZooKeeper "host": its id and ports.
struct ZkHost {
    name: String,
    id: usize,
    client: u16,
    quorum: u16,
    election: u16,
}

/// The inventory's hosts, their directories (one tree per host under `dir`) and ports.
pub struct Hosts {
    pub dir: tempfile::TempDir,
    zookeeper: Vec<ZkHost>,
    /// Worker names and telemetry ports.
    workers: Vec<(String, u16)>,
}

/// `changed=` and `failed=` of a host in a play recap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recap {
    pub changed: u32,
    pub failed: u32,
}

/// What `ansible-playbook` did.
pub struct PlaybookRun {
    pub output: Output,
    pub stdout: String,
}

impl PlaybookRun {
    pub fn succeeded(&self) -> bool {
        self.output.status.success()
    }

    /// Fails with the output unless the playbook succeeded.
    pub fn ensure_success(&self, what: &str) -> Result<&Self> {
        ensure!(
            self.succeeded(),
            "{what} failed: {}",
            describe(&self.output)
        );
        Ok(self)
    }

    /// The PLAY RECAP line of `host`, if the host took part.
    pub fn recap(&self, host: &str) -> Option<Recap> {
        let recap = self.stdout.rsplit("PLAY RECAP").next()?;
        let line = recap
            .lines()
            .find(|l| l.split_whitespace().next() == Some(host))?;
        let count = |key: &str| -> Option<u32> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|n| n.parse().ok())
        };
        Some(Recap {
            changed: count("changed=")?,
            failed: count("failed=")?,
        })
    }

    /// The hosts of the recap that changed something, with their counts.
    pub fn changed_hosts(&self) -> Vec<(String, u32)> {
        let Some(recap) = self.stdout.rsplit("PLAY RECAP").next() else {
            return Vec::new();
        };
        recap
            .lines()
            .filter_map(|l| {
                let host = l.split_whitespace().next()?.to_string();
                let r = self.recap(&host)?;
                (r.changed > 0).then_some((host, r.changed))
            })
            .collect()
    }
}

impl Hosts {
    /// `zookeeper` members named zk1.. and `workers` named w1.., each on free ports.
    pub fn new(zookeeper: usize, workers: usize) -> Result<Hosts> {
        let ports = free_ports(3 * zookeeper + workers)?;
        let zookeeper = (0..zookeeper)
            .map(|i| ZkHost {
                name: format!("zk{}", i + 1),
                id: i + 1,
                client: ports[3 * i],
                quorum: ports[3 * i + 1],
                election: ports[3 * i + 2],
            })
            .collect::<Vec<_>>();
        let base = 3 * zookeeper.len();
        let workers = (0..workers)
            .map(|i| (format!("w{}", i + 1), ports[base + i]))
            .collect();
        Ok(Hosts {
            dir: tempfile::tempdir()?,
            zookeeper,
            workers,
        })
    }

    /// The `zookeeper_connect` of the ensemble the inventory describes.
    pub fn zk_connect(&self) -> String {
        self.zookeeper
            .iter()
            .map(|z| format!("{HOST}:{}", z.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn worker_names(&self) -> Vec<String> {
        self.workers.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn zookeeper_names(&self) -> Vec<String> {
        self.zookeeper.iter().map(|z| z.name.clone()).collect()
    }

    /// The directory tree of inventory host `host`.
    pub fn root(&self, host: &str) -> PathBuf {
        self.dir.path().join("hosts").join(host)
    }

    pub fn inventory_path(&self) -> PathBuf {
        self.dir.path().join("inventory.yml")
    }

    /// The rendered configuration of worker `host`.
    pub fn worker_config(&self, host: &str) -> PathBuf {
        self.root(host).join("etc/sluice.toml")
    }

    /// The rendered unit of `host` (a worker or a ZooKeeper member).
    pub fn unit_file(&self, host: &str) -> PathBuf {
        let name = if host.starts_with("zk") {
            format!("zookeeper-{host}")
        } else {
            format!("sluice-worker-{host}")
        };
        self.root(host).join(format!("units/{name}.service"))
    }

    /// The pid of `host`'s unit while the supervisor runs it.
    pub fn pid(&self, host: &str) -> Option<u32> {
        let unit = self.unit_file(host);
        let name = unit.file_name()?.to_string_lossy().into_owned();
        let pid: u32 = std::fs::read_to_string(self.root(host).join("run").join(name + ".pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit(')').next()?.split_whitespace().next()?;
        (state != "Z").then_some(pid)
    }

    /// `Mode:` of ZooKeeper member `i`'s `srvr` answer (leader, follower, standalone).
    pub fn zk_mode(&self, i: usize) -> Option<String> {
        crate::ensemble::mode(&ask(self.zookeeper[i].client, b"srvr")?)
    }

    /// The modes of all members, in inventory order.
    pub fn zk_modes(&self) -> Vec<Option<String>> {
        (0..self.zookeeper.len()).map(|i| self.zk_mode(i)).collect()
    }

    /// The inventory: the hosts with their directories and ports, the workers reading
    /// `topic` into S3 under `s3_prefix` and the ZooKeeper root of a test deployment of `topic`, `worker_vars` merged into the workers' group vars and `host_vars[host]` into a
    /// host's.
    pub fn inventory(
        &self,
        stack: &Stack,
        topic: &str,
        s3_prefix: &str,
        worker_vars: &Value,
        host_vars: &[(&str, Value)],
    ) -> Result<Value> {
        let interpreter = venv().join("bin/python");
        let mut zk_hosts = serde_json::Map::new();
        for z in &self.zookeeper {
            let root = self.root(&z.name);
            zk_hosts.insert(
                z.name.clone(),
                json!({
                    "zookeeper_id": z.id,
                    "zookeeper_address": HOST,
                    "zookeeper_client_port": z.client,
                    "zookeeper_quorum_port": z.quorum,
                    "zookeeper_election_port": z.election,
                    "zookeeper_conf_dir": root.join("conf"),
                    "zookeeper_data_dir": root.join("data"),
                    "zookeeper_unit_dir": root.join("units"),
                    "zookeeper_run_dir": root.join("run"),
                    "zookeeper_service_name": format!("zookeeper-{}", z.name),
                }),
            );
        }
        let mut worker_hosts = serde_json::Map::new();
        for (name, port) in &self.workers {
            let root = self.root(name);
            worker_hosts.insert(
                name.clone(),
                json!({
                    "sluice_worker_bin_path": root.join("bin/sluice"),
                    "sluice_worker_config_dir": root.join("etc"),
                    "sluice_worker_state_dir": root.join("state"),
                    "sluice_worker_unit_dir": root.join("units"),
                    "sluice_worker_run_dir": root.join("run"),
                    "sluice_worker_service_name": format!("sluice-worker-{name}"),
                    "sluice_worker_telemetry_listen_address": format!("{HOST}:{port}"),
                }),
            );
        }
        for (host, vars) in host_vars {
            let entry = worker_hosts
                .get_mut(*host)
                .or_else(|| zk_hosts.get_mut(*host))
                .with_context(|| format!("no host {host}"))?;
            merge(entry, vars);
        }
        for h in zk_hosts.keys() {
            std::fs::create_dir_all(self.root(h))?;
        }
        // A host has its /usr/local/bin before it is provisioned.
        for h in worker_hosts.keys() {
            std::fs::create_dir_all(self.root(h).join("bin"))?;
        }
        let mut workers = json!({
            "sluice_worker_binary_src": sluice_bin(),
            "sluice_worker_manage_user": false,
            "sluice_worker_user": "root",
            "sluice_worker_group": "root",
            "sluice_worker_kafka_bootstrap_servers": stack.kafka,
            "sluice_worker_zookeeper_root": crate::zk_root(topic),
            "sluice_worker_storage_url": format!("s3://{}/{s3_prefix}", stack.s3_bucket),
            "sluice_worker_storage_options": {
                "aws_endpoint": stack.s3_endpoint,
                "aws_access_key_id": stack.s3_access_key,
                "aws_region": "us-east-1",
                "aws_allow_http": "true",
                "aws_virtual_hosted_style_request": "false",
            },
            "sluice_worker_storage_secret_options": {"aws_secret_access_key": "s3-secret-key"},
            "sluice_worker_secrets": {"s3-secret-key": stack.s3_secret_key},
            "sluice_worker_worker_extra": {"lease_wait_ms": 30000, "flush_check_interval_ms": 50},
            "sluice_worker_kafka_extra": {"metadata_timeout_ms": 5000},
            "sluice_worker_telemetry_extra": {"refresh_ms": 500},
            "sluice_worker_tables_toml": sluice_testkit::fixture::events_table(topic, 500, 300),
            "sluice_worker_poll_interval_s": 1,
            "sluice_worker_fleet_timeout_s": 120,
            "sluice_worker_ready_timeout_s": 120,
        });
        merge(&mut workers, worker_vars);
        Ok(json!({
            "all": {
                "vars": {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": interpreter,
                    "service_manager": "supervisor",
                },
                "children": {
                    "zookeeper": {
                        "hosts": zk_hosts,
                        "vars": {
                            "zookeeper_manage_package": false,
                            "zookeeper_manage_user": false,
                            "zookeeper_user": "root",
                            "zookeeper_group": "root",
                            // As the shared stack: a short tick, so session expiry follows the
                            // session timeout closely.
                            "zookeeper_tick_ms": 500,
                            "zookeeper_init_limit_ticks": 20,
                            "zookeeper_heap_mb": 256,
                            "zookeeper_serve_timeout_s": 120,
                        },
                    },
                    "sluice_workers": {"hosts": worker_hosts, "vars": workers},
                },
            }
        }))
    }

    /// Writes `inventory` (JSON is YAML) where [`Hosts::playbook`] reads it.
    pub fn write_inventory(&self, inventory: &Value) -> Result<()> {
        std::fs::write(
            self.inventory_path(),
            serde_json::to_string_pretty(inventory)?,
        )?;
        Ok(())
    }

    /// `ansible-playbook -i <inventory> <playbook> <args>`; its output, succeeded or not.
    pub async fn playbook(&self, playbook: &str, args: &[&str]) -> Result<PlaybookRun> {
        let args: Vec<String> = args.iter().map(ToString::to_string).collect();
        run_playbook(self.inventory_path(), playbook.to_string(), args).await
    }

    /// Starts `ansible-playbook -i <inventory> <playbook>` and returns at once, its output
    /// discarded; [`kill_group`] ends it and every process it forked.
    pub fn spawn_playbook(&self, playbook: &str) -> Result<tokio::process::Child> {
        let inventory = self.inventory_path();
        let inventory = inventory.to_str().context("temp paths are UTF-8")?;
        let mut cmd = tool_command("ansible-playbook", &["-i", inventory, playbook]);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Ok(cmd.spawn()?)
    }

    /// Stops every worker as `systemctl stop` would (SIGTERM: they drain and commit) and waits
    /// until each has exited.
    pub async fn stop_workers(&self, limit: Duration) -> Result<()> {
        for w in self.worker_names() {
            if let Some(pid) = self.pid(&w) {
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()?;
                ensure!(status.success(), "kill -TERM {pid} ({w}) failed");
            }
        }
        crate::wait_until(
            limit,
            Duration::from_millis(100),
            "the workers to exit",
            || {
                let running: Vec<String> = self
                    .worker_names()
                    .into_iter()
                    .filter(|w| self.pid(w).is_some())
                    .collect();
                async move { Ok(running.is_empty()) }
            },
        )
        .await
    }

    /// Kills what the supervisor started for every host (the members and workers of a test
    /// that failed halfway would otherwise outlive it).
    fn kill_all(&self) {
        let hosts = self
            .zookeeper_names()
            .into_iter()
            .chain(self.worker_names());
        for host in hosts {
            if let Some(pid) = self.pid(&host) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// [`Hosts::playbook`] as a future that borrows nothing, to spawn while a test produces.
pub async fn run_playbook(
    inventory: PathBuf,
    playbook: String,
    args: Vec<String>,
) -> Result<PlaybookRun> {
    let mut all = vec![
        "-i".to_string(),
        inventory
            .to_str()
            .context("temp paths are UTF-8")?
            .to_string(),
        playbook,
    ];
    all.extend(args);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let output = run_tool("ansible-playbook", &all, Duration::from_secs(900)).await?;
    eprintln!(
        "ansible-playbook {}: {:.1} s",
        all[2..].join(" "),
        started.elapsed().as_secs_f64()
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok(PlaybookRun { output, stdout })
}

/// `patch`'s keys into `base`, objects merged recursively.
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// SIGKILL to the process group `child` leads (one [`Hosts::spawn_playbook`] started).
pub fn kill_group(child: &tokio::process::Child) -> Result<()> {
    let pid = child.id().context("the playbook already exited")?;
    let status = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status()?;
    ensure!(status.success(), "kill -KILL -{pid} failed");
    Ok(())
}

/// `systemd-analyze verify` of a rendered unit must print nothing (it exits 0 on some errors).
pub fn verify_unit(path: &Path) -> Result<()> {
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(path)
        .output()
        .context("running systemd-analyze")?;
    if !out.status.success() || !out.stdout.is_empty() || !out.stderr.is_empty() {
        bail!(
            "systemd-analyze verify {}: {}",
            path.display(),
            describe(&out)
        );
    }
    Ok(())
}
