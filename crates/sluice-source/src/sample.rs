//! Sample events: a seeded generator of web-analytics JSON, for the quickstart, for trying a
//! configuration out, and for the benchmarks (written to NDJSON files or produced to a topic).
//!
//! Event `seq` of seed `s` is a pure function of `(s, seq)`: the same corpus comes out whether
//! it is generated in one go, in chunks, in parallel, or into a file and a topic separately, and
//! it does not change with the `rand` crate's version.
//!
//! The shape is what a page-view tracker sends: a sequence number, a millisecond timestamp
//! (arrival order with a few seconds of jitter, and 2 % of events up to two days late, as
//! buffered mobile clients send them), a user id and a session id, a country and a path drawn
//! from skewed distributions, an optional referrer, a device class, a float duration and a
//! boolean. Events are 130 to 200 bytes of JSON, about 165 on average; the fields a table does
//! not name (session, referrer, device) are there to be skipped, as in real streams.

use std::fmt::Write as _;

/// 2026-11-20T00:00:00Z: the first event's time.
pub const BASE_MS: i64 = 1_795_132_800_000;
/// Average spacing of events in time: 4,000 events per second.
const EVENT_SPACING_US: i64 = 250;
/// On-time events arrive up to this late.
const JITTER_MS: u64 = 5_000;
/// Late events (2 %) arrive up to this late.
const LATE_MS: u64 = 2 * 86_400_000;

/// (value, weight): a long-tailed country mix.
const COUNTRIES: &[(&str, u32)] = &[
    ("us", 220),
    ("de", 90),
    ("gb", 80),
    ("in", 75),
    ("br", 60),
    ("fr", 55),
    ("jp", 50),
    ("ca", 40),
    ("es", 30),
    ("it", 30),
    ("au", 25),
    ("nl", 22),
    ("mx", 20),
    ("kr", 18),
    ("pl", 15),
    ("se", 12),
    ("ng", 12),
    ("id", 12),
    ("tr", 10),
    ("ar", 9),
    ("ch", 8),
    ("za", 7),
    ("be", 7),
    ("at", 6),
    ("no", 5),
    ("dk", 5),
    ("fi", 4),
    ("ie", 4),
    ("pt", 4),
    ("nz", 3),
];

/// (value, weight): a few hot pages and a long tail.
const PATHS: &[(&str, u32)] = &[
    ("/", 300),
    ("/pricing", 90),
    ("/docs", 80),
    ("/docs/install", 60),
    ("/docs/quickstart", 55),
    ("/blog", 50),
    ("/signup", 45),
    ("/login", 45),
    ("/search", 40),
    ("/cart", 30),
    ("/checkout", 25),
    ("/docs/configuration/tables", 20),
    ("/docs/operations/monitoring", 15),
    ("/blog/2026/11/exactly-once-ingestion", 15),
    ("/blog/2026/10/rendezvous-hashing", 12),
    ("/account/settings", 12),
    ("/account/billing", 10),
    ("/careers", 8),
    ("/about", 8),
    ("/contact", 6),
];

const REFERRERS: &[(&str, u32)] = &[
    ("https://www.google.com/", 50),
    ("https://news.ycombinator.com/", 8),
    ("https://www.bing.com/", 6),
    ("https://duckduckgo.com/", 5),
    ("https://github.com/", 5),
    ("https://t.co/", 4),
];

const DEVICES: &[(&str, u32)] = &[("desktop", 55), ("mobile", 40), ("tablet", 5)];

/// A weighted choice by cumulative weights.
struct Weighted {
    values: Vec<&'static str>,
    cumulative: Vec<u64>,
}

impl Weighted {
    fn new(table: &[(&'static str, u32)]) -> Weighted {
        let mut total = 0u64;
        let cumulative = table
            .iter()
            .map(|(_, w)| {
                total += u64::from(*w);
                total
            })
            .collect();
        Weighted {
            values: table.iter().map(|(v, _)| *v).collect(),
            cumulative,
        }
    }

    fn pick(&self, r: u64) -> &'static str {
        let total = *self.cumulative.last().expect("a non-empty table");
        let x = r % total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.values[i]
    }
}

/// SplitMix64: a tiny, fixed, well-mixed generator, seeded per event.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How a malformed event is broken; [`SampleEvents::malformed_every`] cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Truncated: not valid JSON.
    NotJson,
    /// `ts` is a word instead of a time.
    WrongType,
    /// No `ts` at all.
    MissingField,
}

/// The generator. Cheap to build; [`SampleEvents::write`] makes one event.
pub struct SampleEvents {
    seed: u64,
    malformed_every: u64,
    countries: Weighted,
    paths: Weighted,
    referrers: Weighted,
    devices: Weighted,
}

impl std::fmt::Debug for SampleEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleEvents")
            .field("seed", &self.seed)
            .field("malformed_every", &self.malformed_every)
            .finish_non_exhaustive()
    }
}

impl SampleEvents {
    pub fn new(seed: u64) -> SampleEvents {
        SampleEvents {
            seed,
            malformed_every: 0,
            countries: Weighted::new(COUNTRIES),
            paths: Weighted::new(PATHS),
            referrers: Weighted::new(REFERRERS),
            devices: Weighted::new(DEVICES),
        }
    }

    /// Makes every `n`-th event malformed (0: none), cycling through the [`Malformed`] kinds.
    pub fn malformed_every(mut self, n: u64) -> SampleEvents {
        self.malformed_every = n;
        self
    }

    /// How event `seq` is broken, if it is.
    pub fn malformed(&self, seq: u64) -> Option<Malformed> {
        let n = self.malformed_every;
        if n == 0 || seq % n != n - 1 {
            return None;
        }
        Some(match (seq / n) % 3 {
            0 => Malformed::NotJson,
            1 => Malformed::WrongType,
            _ => Malformed::MissingField,
        })
    }

    /// Appends event `seq` to `out` (no newline).
    pub fn write(&self, seq: u64, out: &mut String) {
        let mut rng = SplitMix(self.seed ^ seq.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let late = rng.next() % 100 < 2;
        let delay = if late {
            rng.next() % LATE_MS
        } else {
            rng.next() % JITTER_MS
        };
        let ts = BASE_MS + (seq as i64).saturating_mul(EVENT_SPACING_US) / 1000 - delay as i64;
        // Heavy users: the square skews ids towards small numbers.
        let u = rng.unit();
        let user_id = 1 + (u * u * 2_000_000.0) as u64;
        let session = rng.next() & 0xFFFF_FFFF_FFFF;
        let country = self.countries.pick(rng.next());
        let path = self.paths.pick(rng.next());
        let referrer = (rng.next() % 10 < 6).then(|| self.referrers.pick(rng.next()));
        let device = self.devices.pick(rng.next());
        // Log-normal-ish page durations, 3 decimals as trackers send them.
        let duration = (rng.unit() * 7.0).exp() + rng.unit();
        let ok = rng.next() % 100 < 97;

        match self.malformed(seq) {
            Some(Malformed::NotJson) => {
                let _ = write!(out, r#"{{"seq":{seq},"ts":{ts},"country":"{country}"#);
                return;
            }
            Some(Malformed::MissingField) => {
                let _ = write!(
                    out,
                    r#"{{"seq":{seq},"user_id":{user_id},"country":"{country}","path":"{path}"}}"#
                );
                return;
            }
            _ => {}
        }
        let _ = write!(out, r#"{{"seq":{seq},"ts":"#);
        if self.malformed(seq) == Some(Malformed::WrongType) {
            out.push_str(r#""yesterday""#);
        } else {
            let _ = write!(out, "{ts}");
        }
        let _ = write!(
            out,
            r#","user_id":{user_id},"session":"{session:012x}","country":"{country}","path":"{path}""#
        );
        if let Some(r) = referrer {
            let _ = write!(out, r#","referrer":"{r}""#);
        }
        let _ = write!(
            out,
            r#","device":"{device}","duration_ms":{duration:.3},"ok":{ok}}}"#
        );
    }

    /// Event `seq` as a new string.
    pub fn event(&self, seq: u64) -> String {
        let mut s = String::with_capacity(200);
        self.write(seq, &mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_a_function_of_seed_and_seq() {
        let a = SampleEvents::new(7);
        let b = SampleEvents::new(7);
        assert_eq!(a.event(12_345), b.event(12_345));
        assert_ne!(a.event(12_345), SampleEvents::new(8).event(12_345));
        // Pinned: a change of the generator changes every benchmark corpus; make it on purpose.
        assert_eq!(
            a.event(0),
            r#"{"seq":0,"ts":1795132799196,"user_id":1622740,"session":"eb70673e29cb","country":"de","path":"/docs","device":"mobile","duration_ms":2.973,"ok":true}"#
        );
    }

    #[test]
    fn events_are_valid_json_of_the_advertised_size() {
        let g = SampleEvents::new(42);
        let n = 20_000u64;
        let mut total = 0usize;
        let (mut min, mut max) = (usize::MAX, 0);
        for seq in 0..n {
            let e = g.event(seq);
            let v: serde_json::Value = serde_json::from_str(&e).expect("valid JSON");
            assert_eq!(v["seq"], seq);
            total += e.len();
            min = min.min(e.len());
            max = max.max(e.len());
        }
        let mean = total as f64 / n as f64;
        assert!((130..=210).contains(&min) && max <= 230, "{min}..{max}");
        assert!((150.0..=185.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn malformed_events_cycle_through_the_kinds() {
        let g = SampleEvents::new(1).malformed_every(10);
        let kinds: Vec<_> = (0..40).filter_map(|s| g.malformed(s)).collect();
        assert_eq!(
            kinds,
            vec![
                Malformed::NotJson,
                Malformed::WrongType,
                Malformed::MissingField,
                Malformed::NotJson
            ]
        );
        assert!(serde_json::from_str::<serde_json::Value>(&g.event(9)).is_err());
        let wrong: serde_json::Value = serde_json::from_str(&g.event(19)).unwrap();
        assert_eq!(wrong["ts"], "yesterday");
        let missing: serde_json::Value = serde_json::from_str(&g.event(29)).unwrap();
        assert!(missing.get("ts").is_none());
    }
}
