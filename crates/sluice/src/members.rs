//! `sluice members`: the fleet as the coordinator sees it, next to what rendezvous hashing
//! assigns, so a stuck handover or a partition nobody holds stands out.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::{json, Value};
use sluice_coord::{assignment, Member, UnitId, UnitState};
use sluice_worker::open_coordinator;

use crate::common::{config_units, load};

#[derive(clap::Args, Debug)]
pub struct MembersArgs {
    /// The configuration file: its tables' topics and ZooKeeper.
    #[arg(short, long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// One JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

pub async fn members(args: MembersArgs) -> Result<()> {
    let config = load(&args.config)?;
    let coord = open_coordinator(&config.coordination).await?;
    let (members, _) = coord.watch_members().await?;
    let units = config_units(&config, &*coord).await?;
    coord.close().await?;
    let fleet = Fleet::new(&members, &units);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&fleet.to_json())?);
    } else {
        print!("{}", fleet.render_table());
    }
    Ok(())
}

/// Members and units cross-referenced once, for both renderings.
struct Fleet<'a> {
    members: Vec<MemberRow<'a>>,
    units: Vec<UnitRow<'a>>,
}

struct MemberRow<'a> {
    member: &'a Member,
    /// The units whose lease it holds.
    holds: Vec<&'a UnitState>,
    /// The units rendezvous hashing gives it, held by it or not (yet).
    assigned: Vec<&'a UnitId>,
}

struct UnitRow<'a> {
    state: &'a UnitState,
    /// The member rendezvous hashing gives it; none while no member has a positive weight.
    assigned: Option<&'a str>,
}

impl UnitRow<'_> {
    fn holder(&self) -> Option<&str> {
        self.state.holder.as_deref()
    }

    /// Held, but not by its assignee: the holder is about to release it, or is stuck.
    fn moving(&self) -> bool {
        self.holder().is_some() && self.holder() != self.assigned
    }

    /// Nobody holds it, or it is changing hands.
    fn unsettled(&self) -> bool {
        self.holder().is_none() || self.moving()
    }
}

impl<'a> Fleet<'a> {
    fn new(members: &'a [Member], units: &'a [UnitState]) -> Self {
        let units: Vec<UnitRow<'a>> = units
            .iter()
            .map(|state| UnitRow {
                state,
                assigned: assignment::owner(&state.unit, members).map(|m| m.id.as_str()),
            })
            .collect();
        let members = members
            .iter()
            .map(|member| MemberRow {
                member,
                holds: units
                    .iter()
                    .filter(|u| u.holder() == Some(member.id.as_str()))
                    .map(|u| u.state)
                    .collect(),
                assigned: units
                    .iter()
                    .filter(|u| u.assigned == Some(member.id.as_str()))
                    .map(|u| &u.state.unit)
                    .collect(),
            })
            .collect();
        Fleet { members, units }
    }

    fn to_json(&self) -> Value {
        let unheld = self.units.iter().filter(|u| u.holder().is_none()).count();
        json!({
            // What a rolling restart waits on (ansible/): every partition held by its assignee.
            "summary": {
                "partitions": self.units.len(),
                "unheld": unheld,
                "moving": self.units.iter().filter(|u| u.moving()).count(),
            },
            "members": self.members.iter().map(|r| json!({
                "id": r.member.id,
                "weight": r.member.weight,
                "address": r.member.address,
                "host": r.member.host,
                "pid": r.member.pid,
                "joined_at_ms": r.member.joined_at_ms,
                "holds": r.holds.iter()
                    .map(|u| json!({"unit": u.unit.to_string(), "epoch": u.epoch}))
                    .collect::<Vec<_>>(),
                "assigned": r.assigned.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "units": self.units.iter().map(|u| json!({
                "unit": u.state.unit.to_string(),
                "topic": u.state.unit.topic,
                "partition": u.state.unit.partition,
                "holder": u.state.holder,
                "assigned": u.assigned,
                "epoch": u.state.epoch,
                "next_offset": u.state.next_offset,
            })).collect::<Vec<_>>(),
        })
    }

    /// A summary line, the members, and the units nobody holds or that are changing hands
    /// (left out when there are none).
    fn render_table(&self) -> String {
        let unheld = self.units.iter().filter(|u| u.holder().is_none()).count();
        let moving = self.units.iter().filter(|u| u.moving()).count();
        let mut out = format!(
            "{} members, {} partitions: {} held, {} without a holder, {} held by a worker other than their assignee (handover in progress)\n\n",
            self.members.len(),
            self.units.len(),
            self.units.len() - unheld,
            unheld,
            moving
        );
        out.push_str(&self.member_table());
        if self.units.iter().any(UnitRow::unsettled) {
            out.push('\n');
            out.push_str(&self.unsettled_table());
        }
        out
    }

    fn member_table(&self) -> String {
        let mut out = format!(
            "{:<24} {:>6} {:<22} {:<24} {:>5} {:>8}  partitions held (lease epoch)\n",
            "member", "weight", "address", "host/pid", "holds", "assigned"
        );
        for r in &self.members {
            let m = r.member;
            let holds: Vec<String> = r
                .holds
                .iter()
                .map(|u| format!("{} ({})", u.unit, u.epoch))
                .collect();
            out.push_str(&format!(
                "{:<24} {:>6} {:<22} {:<24} {:>5} {:>8}  {}\n",
                m.id,
                m.weight,
                m.address.as_deref().unwrap_or("-"),
                format!("{}/{}", m.host, m.pid),
                holds.len(),
                r.assigned.len(),
                holds.join(", ")
            ));
        }
        out
    }

    fn unsettled_table(&self) -> String {
        let mut out = format!(
            "{:<30} {:<24} {:<24} {:>6}\n",
            "partition", "holder", "assigned to", "epoch"
        );
        for u in self.units.iter().filter(|u| u.unsettled()) {
            out.push_str(&format!(
                "{:<30} {:<24} {:<24} {:>6}\n",
                u.state.unit.to_string(),
                u.holder().unwrap_or("-"),
                u.assigned.unwrap_or("-"),
                u.state.epoch
            ));
        }
        out
    }
}
