//! What several commands share: reading the config, the tables asked for, the units of its
//! topics, JSON lines, the clock.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Result};
use sluice_config::Config;
use sluice_coord::{Coordinator, UnitState};

/// The config at `path`, read, parsed and validated.
pub fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

/// The table asked for (`--table`), refused with the config's table names if the config at
/// `path` has no such table; else all of them, in the config's order.
pub fn selected_tables(config: &Config, path: &Path, table: Option<String>) -> Result<Vec<String>> {
    let names = config.tables.iter().map(|t| t.name.as_str());
    match table {
        Some(t) if !names.clone().any(|n| n == t) => bail!(
            "table `{t}` is not in {}; its tables are: {}",
            path.display(),
            names.collect::<Vec<_>>().join(", ")
        ),
        Some(t) => Ok(vec![t]),
        None => Ok(names.map(str::to_string).collect()),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
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
    let mut out = String::new();
    for line in lines {
        out.push_str(&line?);
        out.push('\n');
    }
    print_out(&out)
}

/// Writes `text` to stdout. A reader that stopped reading (`| head`) ends the output quietly
/// instead of failing the command.
pub fn print_out(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
