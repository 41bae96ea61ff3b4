//! This process's own resource usage, for closing summaries and benchmarks: CPU seconds (all
//! threads, user and system) and peak resident memory, read from `/proc/self`.

/// CPU time and peak memory of this process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessUsage {
    /// User plus system CPU seconds of all threads.
    pub cpu_s: f64,
    /// Peak resident set size (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
}

impl ProcessUsage {
    /// The usage now; `None` where `/proc` is not available (not Linux).
    pub fn now() -> Option<ProcessUsage> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces and parentheses: count from its end.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of stat(5), utime and stime, are the 12th and 13th after the name.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let ticks = rustix::param::clock_ticks_per_second().max(1);
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let hwm_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(ProcessUsage {
            cpu_s: (utime + stime) as f64 / ticks as f64,
            peak_rss_bytes: hwm_kib * 1024,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_peak_rss_of_this_process() {
        let before = ProcessUsage::now().expect("/proc is mounted");
        // Touch 32 MiB and burn CPU until the figure moves (on a busy machine the wall time that
        // takes varies; the limit only keeps a broken reading from spinning forever).
        let mut v = vec![0u8; 32 << 20];
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while ProcessUsage::now().unwrap().cpu_s < before.cpu_s + 0.1
            && started.elapsed() < std::time::Duration::from_secs(30)
        {
            for b in v.iter_mut().step_by(4096) {
                *b = b.wrapping_add(1);
                x = x.wrapping_add(u64::from(*b));
            }
        }
        std::hint::black_box(x);
        let after = ProcessUsage::now().unwrap();
        assert!(after.cpu_s >= before.cpu_s + 0.1, "{before:?} -> {after:?}");
        assert!(after.peak_rss_bytes >= 32 << 20, "{after:?}");
    }
}
