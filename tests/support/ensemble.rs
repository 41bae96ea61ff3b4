//! A private ZooKeeper ensemble of three servers on loopback, for the faults a single server
//! cannot show: a leader election under a live session, and a quorum lost and regained.
//!
//! Each member is the server `scripts/stack.sh` runs (same jar and settings, see
//! [`crate::private`]), with the `server.N` lines of an ensemble and its `myid`. Members are
//! killed and restarted one by one; a restart keeps the port and the data, as a real one would.

use std::time::Instant;

use anyhow::{bail, Result};

use crate::private::{ask, free_ports, zookeeper_server, PrivateServer};
use crate::Stack;

const HOST: &str = "127.0.0.1";

/// Three ZooKeeper servers forming one ensemble.
pub struct PrivateEnsemble {
    members: Vec<PrivateServer>,
}

impl PrivateEnsemble {
    /// Starts three members on free ports and waits until every one serves (a leader was
    /// elected and the followers synchronised with it).
    pub async fn launch() -> Result<PrivateEnsemble> {
        const SIZE: usize = 3;
        // Per member: the client port, the quorum port and the leader-election port.
        let ports: Vec<[u16; 3]> = free_ports(3 * SIZE)?
            .chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        // initLimit and syncLimit in ticks (500 ms): generous for JVMs on a loaded 2-core
        // machine, yet a follower cut off from its leader notices within seconds.
        let mut servers = String::from("initLimit=20\nsyncLimit=5\n");
        for (i, [_, quorum, election]) in ports.iter().enumerate() {
            servers.push_str(&format!("server.{}={HOST}:{quorum}:{election}\n", i + 1));
        }
        let mut members = Vec::with_capacity(SIZE);
        for (i, [client, _, _]) in ports.iter().enumerate() {
            let dir = tempfile::tempdir()?;
            std::fs::create_dir_all(dir.path().join("data"))?;
            std::fs::write(dir.path().join("data/myid"), format!("{}\n", i + 1))?;
            members.push(zookeeper_server(dir, *client, &servers)?);
        }
        let started = Instant::now();
        for m in &mut members {
            m.spawn()?;
        }
        for m in &mut members {
            m.wait_serving(started).await?;
        }
        Ok(PrivateEnsemble { members })
    }

    /// The `zookeeper_connect` of a coordination config: every member.
    pub fn connect(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{HOST}:{}", m.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i` (0-based), to stop or start.
    pub fn member(&mut self, i: usize) -> &mut PrivateServer {
        &mut self.members[i]
    }

    /// The member that leads now, as its `srvr` answer says.
    pub fn leader(&self) -> Result<usize> {
        let modes: Vec<Option<String>> = self
            .members
            .iter()
            .map(|m| ask(m.port(), b"srvr").and_then(|a| mode(&a)))
            .collect();
        match modes.iter().position(|m| m.as_deref() == Some("leader")) {
            Some(i) => Ok(i),
            None => bail!("no member says it leads: {modes:?}"),
        }
    }

    /// Waits until the members running agree on one leader again, and returns it.
    pub async fn wait_for_leader(&self) -> Result<usize> {
        crate::wait_until(
            std::time::Duration::from_secs(60),
            std::time::Duration::from_millis(100),
            "the ensemble to elect a leader",
            || async { Ok(self.leader().is_ok()) },
        )
        .await?;
        self.leader()
    }
}

/// The `Mode:` line of a `srvr` answer (`leader`, `follower`, `standalone`).
pub(crate) fn mode(answer: &str) -> Option<String> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(|m| m.trim().to_string())
}

impl Stack {
    /// This stack with `ensemble` as its ZooKeeper.
    #[must_use]
    pub fn with_ensemble(mut self, ensemble: &PrivateEnsemble) -> Stack {
        self.zk = ensemble.connect();
        self
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_mode_is_read_from_a_srvr_answer() {
        let answer = "Zookeeper version: 3.8.4\nLatency min/avg/max: 0/0.0/0\nMode: follower\nNode count: 5\n";
        assert_eq!(super::mode(answer).as_deref(), Some("follower"));
        assert_eq!(
            super::mode("This ZooKeeper instance is not currently serving requests"),
            None
        );
    }
}
