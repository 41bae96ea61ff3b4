//! Each run's config and the one-day query's SQL.

use anyhow::{bail, Context, Result};

use super::{MergesOptions, Store};

/// The one-day query: events and total duration per country.
pub(super) fn query_sql(table: &str, day: &str) -> Result<String> {
    let next = next_day(day)?;
    Ok(format!(
        "SELECT country, count(*) AS events, sum(duration_ms) AS duration_ms FROM {table} \
         WHERE ts >= '{day}' AND ts < '{next}' GROUP BY country ORDER BY country"
    ))
}

/// `YYYY-MM-DD` plus one day.
fn next_day(day: &str) -> Result<String> {
    let parts: Vec<&str> = day.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        bail!("--day must be YYYY-MM-DD, not {day}");
    };
    let (y, m, d): (i64, u32, u32) = (y.parse()?, m.parse()?, d.parse()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => bail!("--day {day}: no month {m}"),
    };
    if d == 0 || d > days {
        bail!("--day {day}: no day {d} in that month");
    }
    let (y, m, d) = match (d == days, m == 12) {
        (false, _) => (y, m, d + 1),
        (true, false) => (y, m + 1, 1),
        (true, true) => (y + 1, 1, 1),
    };
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

/// The config of one run: connection fields pointed at this run's stack, root, storage and
/// topic, and `merge.enabled`.
pub(super) fn run_config(
    opts: &MergesOptions,
    topic: &str,
    root: &str,
    storage_url: &str,
    enabled: bool,
) -> Result<String> {
    let text = std::fs::read_to_string(&opts.config)
        .with_context(|| format!("cannot read {}", opts.config.display()))?;
    let mut doc: toml::Table = toml::from_str(&text)?;
    let mut section = |name: &str| -> Result<toml::Table> {
        Ok(match doc.remove(name) {
            Some(toml::Value::Table(t)) => t,
            None => toml::Table::new(),
            Some(_) => bail!("`{name}` in {} is not a table", opts.config.display()),
        })
    };
    let mut coordination = section("coordination")?;
    let mut kafka = section("kafka")?;
    let mut merge = section("merge")?;
    coordination.insert("zookeeper_connect".into(), opts.zookeeper.clone().into());
    coordination.insert("root".into(), root.into());
    kafka.insert("bootstrap_servers".into(), opts.brokers.clone().into());
    merge.insert("enabled".into(), enabled.into());
    let mut storage = toml::Table::new();
    storage.insert("url".into(), storage_url.into());
    if let Store::S3 {
        endpoint,
        access_key,
        secret_key,
        ..
    } = &opts.store
    {
        let mut o = toml::Table::new();
        o.insert("aws_endpoint".into(), endpoint.clone().into());
        o.insert("aws_access_key_id".into(), access_key.clone().into());
        // A secret is never written in a config: the workers read it from a file.
        let secret_file = std::path::absolute(&opts.work_dir)?.join("s3-secret-key");
        std::fs::write(&secret_file, secret_key)
            .with_context(|| format!("cannot write {}", secret_file.display()))?;
        let mut from_file = toml::Table::new();
        from_file.insert("file".into(), secret_file.display().to_string().into());
        o.insert("aws_secret_access_key".into(), from_file.into());
        o.insert("aws_region".into(), "us-east-1".into());
        o.insert("aws_allow_http".into(), "true".into());
        o.insert("aws_virtual_hosted_style_request".into(), "false".into());
        storage.insert("options".into(), o.into());
    }
    doc.insert("coordination".into(), coordination.into());
    doc.insert("kafka".into(), kafka.into());
    doc.insert("merge".into(), merge.into());
    doc.insert("storage".into(), storage.into());
    if let Some(toml::Value::Array(tables)) = doc.get_mut("table") {
        for t in tables.iter_mut() {
            if let toml::Value::Table(t) = t {
                if t.contains_key("topic") {
                    t.insert("topic".into(), topic.into());
                }
            }
        }
    }
    Ok(toml::to_string(&doc)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_day_rolls_over_months_and_years() {
        assert_eq!(next_day("2026-11-20").unwrap(), "2026-11-21");
        assert_eq!(next_day("2026-11-30").unwrap(), "2026-12-01");
        assert_eq!(next_day("2026-12-31").unwrap(), "2027-01-01");
        assert_eq!(next_day("2028-02-28").unwrap(), "2028-02-29");
        assert!(next_day("2026-02-29").is_err());
    }
}
