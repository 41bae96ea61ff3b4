//! `[[view]]`: materialized views, and what they need of the tables around them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::{invalid, is_simple_name, Config, ConfigError, TableConfig};

/// A materialized view: a SQL `SELECT` run over every batch that lands in its source table (each
/// flush), whose result is written to its target table, sorted and split by the target's own
/// keys, and committed in the same commit as the source's parts and offset. Every field is
/// required.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// Lowercase letters, digits and `_`; names the view in logs, errors and quarantine rows.
    pub name: String,
    /// The table the view reads: one with a `topic`, or another view's target (a chain). Not an
    /// aggregating table: its rows are partial states.
    pub source: String,
    /// A `SELECT` over the source table, by its name. Filters, projections, computed columns
    /// and `GROUP BY` with `count`, `sum`, `min`, `max` and `approx_distinct`; nothing that needs
    /// more than one batch at a time (no `ORDER BY`, `LIMIT`, `HAVING`, joins or windows).
    pub sql: String,
    /// The table the rows go to: one without a `topic`, written by this view alone, whose
    /// columns are the query's output columns by name and type.
    pub target: String,
}

/// What a view needs of the tables around it; the SQL itself is planned against its
/// source's schema by the transform stage at start-up.
pub(crate) fn validate_views(config: &Config) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    // Each target table -> the one view that writes it.
    let mut writers: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, v) in config.views.iter().enumerate() {
        let at = |field: &str| format!("view[{i}] ({}).{field}", v.name);
        validate_name(v, &format!("view[{i}].name"), &mut names)?;
        validate_source(config, v, &at("source"))?;
        validate_target(config, v, &at("target"))?;
        if let Some(other) = writers.insert(v.target.as_str(), v.name.as_str()) {
            return Err(invalid(
                at("target"),
                format!(
                    "table `{}` is already the target of view `{other}`",
                    v.target
                ),
                "give each view a target table of its own",
            ));
        }
        validate_sql(v, &at("sql"))?;
    }
    validate_every_target_written(&config.tables, &writers)?;
    validate_chains(&config.views)
}

fn validate_name<'a>(
    v: &'a ViewConfig,
    field: &str,
    names: &mut BTreeSet<&'a str>,
) -> Result<(), ConfigError> {
    if !is_simple_name(&v.name) {
        return Err(invalid(
            field,
            format!("`{}` is not a valid view name", v.name),
            "use lowercase letters, digits and `_`, starting with a letter",
        ));
    }
    if !names.insert(v.name.as_str()) {
        return Err(invalid(
            field,
            format!("view `{}` is defined twice", v.name),
            "give every view a unique name",
        ));
    }
    Ok(())
}

fn table_names(config: &Config) -> String {
    config
        .tables
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A view runs on events; an aggregating table's rows are partial states, which a second
/// aggregation would count as if they were events.
fn validate_source(config: &Config, v: &ViewConfig, field: &str) -> Result<(), ConfigError> {
    let Some(source) = config.table(&v.source) else {
        return Err(invalid(
            field,
            format!("names `{}`, which is not a table", v.source),
            format!("use one of the tables: {}", table_names(config)),
        ));
    };
    if source.is_aggregating() {
        return Err(invalid(
            field,
            format!(
                "`{}` is an aggregating table: its rows are partial states, not events",
                v.source
            ),
            "read the table the aggregation's view reads, or aggregate in one view",
        ));
    }
    Ok(())
}

fn validate_target(config: &Config, v: &ViewConfig, field: &str) -> Result<(), ConfigError> {
    let Some(target) = config.table(&v.target) else {
        return Err(invalid(
            field,
            format!("names `{}`, which is not a table", v.target),
            format!(
                "define a `[[table]]` named `{}` without a topic, with the query's output columns",
                v.target
            ),
        ));
    };
    if target.topic.is_some() {
        return Err(invalid(
            field,
            format!(
                "table `{}` reads a topic; a view writes only to a table of its own",
                v.target
            ),
            format!(
                "remove `topic` from table `{}`, or write the view to another table",
                v.target
            ),
        ));
    }
    Ok(())
}

fn validate_sql(v: &ViewConfig, field: &str) -> Result<(), ConfigError> {
    if v.sql.trim().is_empty() {
        return Err(invalid(
            field,
            "is empty",
            format!("write a SELECT over `{}`", v.source),
        ));
    }
    Ok(())
}

/// A table with neither a topic nor a view writing it would stay empty forever.
fn validate_every_target_written(
    tables: &[TableConfig],
    writers: &BTreeMap<&str, &str>,
) -> Result<(), ConfigError> {
    for (i, t) in tables.iter().enumerate() {
        if t.topic.is_none() && !writers.contains_key(t.name.as_str()) {
            return Err(invalid(
                format!("table[{i}] ({}).topic", t.name),
                "the table has no topic and no view writes to it",
                "give it the `topic` it reads, or a `[[view]]` whose target it is",
            ));
        }
    }
    Ok(())
}

/// Following sources upwards from every view must reach a table that reads a topic: no topic
/// feeds views in a cycle, so they would never run.
fn validate_chains(views: &[ViewConfig]) -> Result<(), ConfigError> {
    for v in views {
        let mut seen = BTreeSet::new();
        let mut table = v.source.as_str();
        while let Some(parent) = views.iter().find(|p| p.target == table) {
            if !seen.insert(parent.name.as_str()) {
                return Err(invalid(
                    format!("view ({}).source", v.name),
                    format!(
                        "views `{}` read each other in a cycle",
                        seen.into_iter().collect::<Vec<_>>().join("`, `")
                    ),
                    "make every chain of views start at a table with a topic",
                ));
            }
            table = parent.source.as_str();
        }
    }
    Ok(())
}
