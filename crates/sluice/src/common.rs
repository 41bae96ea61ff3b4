//! What several commands share: reading the config, the units of its topics, JSON lines.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Result;
use sluice_config::Config;
use sluice_coord::{Coordinator, UnitState};

/// The config at `path`, read, parsed and validated.
pub fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

/// The units the coordinator knows of the config's topics (a deployment root may hold others).
pub async fn config_units(config: &Config, coord: &dyn Coordinator) -> Result<Vec<UnitState>> {
    let topics: HashSet<String> = config.topics().into_iter().collect();
    Ok(coord
        .list_units()
        .await?
        .into_iter()
        .filter(|u| topics.contains(&u.unit.topic))
        .collect())
}

/// One JSON object per line (`--json` of the commands that list records), for `jq` and scripts.
pub fn print_json_lines(lines: impl IntoIterator<Item = serde_json::Result<String>>) -> Result<()> {
    for line in lines {
        println!("{}", line?);
    }
    Ok(())
}
