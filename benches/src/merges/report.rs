//! The report: both series side by side, then the summary table.

use super::{MergesResults, QueryFigures, RunResult, Sample};

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The two series side by side, then the summary.
pub fn render(r: &MergesResults) -> String {
    let (off, on) = (&r.without, &r.with);
    let mut s = String::new();
    s.push_str(&format!(
        "{} events (seed {}) produced at {}/s into {} partitions; flush every {} ms or {} rows; \
         storage {}; merge fan_in {}, max_rewrites {}, quiet_after_ms {}\n\n",
        r.events,
        r.seed,
        r.rate,
        r.partitions,
        r.flush_max_age_ms,
        r.flush_max_rows,
        r.storage,
        r.fan_in,
        r.max_rewrites,
        r.quiet_after_ms
    ));
    s.push_str("== part records per scope over time (ZooKeeper, every second from the start of production)\n");
    s.push_str(&format!(
        "{:>5}  {:>21}  {:>21}  {:>21}  {:>13}\n",
        "t (s)", "max parts per scope", "part records (table)", "rows committed", "with merges"
    ));
    s.push_str(&format!(
        "{:>5}  {:>10} {:>10}  {:>10} {:>10}  {:>10} {:>10}  {:>6} {:>6}\n",
        "", "without", "with", "without", "with", "without", "with", "merges", "sealed"
    ));
    let n = off.samples.len().max(on.samples.len());
    for i in 0..n {
        // A run that ended earlier keeps its last reading (nothing changes without merges once
        // it has caught up); marked with '='.
        let cell = |run: &RunResult, f: &dyn Fn(&Sample) -> String| -> String {
            match run.samples.get(i) {
                Some(x) => f(x),
                None => run
                    .samples
                    .last()
                    .map_or("-".into(), |x| format!("={}", f(x))),
            }
        };
        let t = on
            .samples
            .get(i)
            .or(off.samples.get(i))
            .map_or(i as f64, |x| x.t_s);
        s.push_str(&format!(
            "{:>5.0}  {:>10} {:>10}  {:>10} {:>10}  {:>10} {:>10}  {:>6} {:>6}\n",
            t,
            cell(off, &|x| x.max_parts.to_string()),
            cell(on, &|x| x.max_parts.to_string()),
            cell(off, &|x| x.part_records.to_string()),
            cell(on, &|x| x.part_records.to_string()),
            cell(off, &|x| x.rows.to_string()),
            cell(on, &|x| x.rows.to_string()),
            cell(on, &|x| x.merges.to_string()),
            cell(on, &|x| format!("{}/{}", x.sealed_scopes, x.scopes)),
        ));
    }

    let secs = |v: Option<f64>| v.map_or("never".to_string(), |t| format!("{t:.0} s"));
    s.push_str("\n== summary\n");
    s.push_str(&format!(
        "{:<58} {:>18} {:>18}\n",
        "", "without merges", "with merges"
    ));
    let mut row = |name: &str, a: String, b: String| {
        s.push_str(&format!("{name:<58} {a:>18} {b:>18}\n"));
    };
    row(
        "production took / all committed at",
        format!("{:.0} s / {}", off.produce_s, secs(off.caught_up_s)),
        format!("{:.0} s / {}", on.produce_s, secs(on.caught_up_s)),
    );
    row(
        "max part records in one scope (peak)",
        off.max_parts_peak().to_string(),
        on.max_parts_peak().to_string(),
    );
    row(
        "part records of the table (znodes), at catch-up",
        off.records_at_catch_up.to_string(),
        on.records_at_catch_up.to_string(),
    );
    row(
        "part records of the table (znodes), peak",
        off.records_peak.to_string(),
        on.records_peak.to_string(),
    );
    row(
        "part records at the end / scopes sealed",
        format!(
            "{} / {} of {}",
            off.records_end, off.sealed_end, off.scopes_end
        ),
        format!(
            "{} / {} of {}",
            on.records_end, on.sealed_end, on.scopes_end
        ),
    );
    row("every scope sealed at", "-".into(), secs(on.all_sealed_s));
    row(
        "retired records at the end (replaced, in grace)",
        off.retired_end.to_string(),
        on.retired_end.to_string(),
    );
    row(
        "parts flushed (MB)",
        format!("{} ({:.2})", off.flushed_parts, mb(off.flushed_bytes)),
        format!("{} ({:.2})", on.flushed_parts, mb(on.flushed_bytes)),
    );
    row(
        "merges (parts in; MB written)",
        format!(
            "{} ({}; {:.2})",
            off.merges,
            off.merge_input_parts,
            mb(off.merge_bytes)
        ),
        format!(
            "{} ({}; {:.2})",
            on.merges,
            on.merge_input_parts,
            mb(on.merge_bytes)
        ),
    );
    row(
        "merge time, total (mean per merge)",
        "-".into(),
        format!(
            "{:.1} s ({:.0} ms)",
            on.merge_seconds,
            1e3 * on.merge_seconds / on.merges.max(1) as f64
        ),
    );
    row(
        "write amplification (flushed + merged) / flushed",
        format!("{:.2}", off.write_amplification()),
        format!(
            "{:.2} (bound {})",
            on.write_amplification(),
            1 + r.max_rewrites
        ),
    );
    let levels = |run: &RunResult| -> String {
        run.levels
            .iter()
            .map(|l| format!("L{} {}", l.level, l.parts))
            .collect::<Vec<_>>()
            .join(", ")
    };
    row(
        "parts a reader sees at the end, by level",
        levels(off),
        levels(on),
    );
    row(
        "  of which from sealed manifests; MB",
        format!("{}; {:.2}", off.sealed_parts, mb(off.final_bytes())),
        format!("{}; {:.2}", on.sealed_parts, mb(on.final_bytes())),
    );
    row(
        "worker CPU s / peak RSS",
        format!(
            "{:.1} / {} MiB",
            off.worker.cpu_s,
            off.worker.peak_rss_bytes >> 20
        ),
        format!(
            "{:.1} / {} MiB",
            on.worker.cpu_s,
            on.worker.peak_rss_bytes >> 20
        ),
    );
    let (qa, qb) = (&r.query_without, &r.query_with);
    let parts = |q: &QueryFigures| {
        q.runs.first().map_or("-".into(), |x| {
            format!(
                "{} of {} ({:.2} MB)",
                x.parts_read, x.parts_total, x.mb_read
            )
        })
    };
    row("one-day query: parts read", parts(qa), parts(qb));
    let (a_min, a_med) = qa.wall();
    let (b_min, b_med) = qb.wall();
    row(
        &format!(
            "one-day query, {} runs: wall s, min / median",
            qa.runs.len()
        ),
        format!("{a_min:.3} / {a_med:.3}"),
        format!("{b_min:.3} / {b_med:.3}"),
    );
    let (a_min, a_med) = qa.reported();
    let (b_min, b_med) = qb.reported();
    row(
        "  as sluice query reports it: s, min / median",
        format!("{a_min:.3} / {a_med:.3}"),
        format!("{b_min:.3} / {b_med:.3}"),
    );
    s.push_str(&format!(
        "\nquery: {}\nsame answer from both data sets: {}\n",
        r.sql,
        if r.same_answer { "yes" } else { "NO" }
    ));
    s
}
