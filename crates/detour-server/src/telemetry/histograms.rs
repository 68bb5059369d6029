//! Histograms with fixed buckets, kept in atomics by Detour itself.
//!
//! The Prometheus exporter keeps every recorded sample in a queue until an
//! upkeep folds it into its buckets: about 300 instructions a sample on the
//! request path (two per request), 16 bytes held per sample, and a thread
//! that folds them. Here a sample is a search of the bucket bounds and two
//! atomic adds, and nothing waits for an upkeep.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use metrics::{HistogramFn, Key};

use super::{help_of, label_pairs};

/// Bucket bounds, in seconds, of the latency histograms (every histogram the
/// crates record is a latency).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One series: a count per bucket (not cumulative; the last one is past
/// every bound) and the sum of the values, as `f64` bits.
#[derive(Debug)]
pub struct BucketHistogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl BucketHistogram {
    /// An empty series over `bounds` (ascending upper bounds).
    pub fn new(bounds: &'static [f64]) -> Self {
        BucketHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// The cumulative count at each bound (`le`), then the total.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut total = 0u64;
        self.counts
            .iter()
            .map(|c| {
                total = total.saturating_add(c.load(Ordering::Relaxed));
                total
            })
            .collect()
    }

    /// The sum of every value recorded.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }
}

impl HistogramFn for BucketHistogram {
    fn record(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        // The first bound the value does not exceed (Prometheus' `le`).
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        // Uncontended on one worker; a compare-and-swap loop keeps the sum
        // exact for any value, which a fixed-point sum would not.
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

/// Every histogram series the installed recorder hands out, with the help
/// texts it was given, written in the Prometheus text format by
/// [`render`](Self::render).
#[derive(Debug, Default)]
pub struct Histograms {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    series: HashMap<Key, Arc<BucketHistogram>>,
    help: HashMap<String, String>,
}

impl Histograms {
    /// The process's registry.
    pub fn global() -> &'static Histograms {
        static GLOBAL: OnceLock<Histograms> = OnceLock::new();
        GLOBAL.get_or_init(Histograms::default)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change under the lock is a plain insert: a poisoned map is
        // still whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The histogram of `key` over [`LATENCY_BUCKETS`], made empty if new.
    pub fn histogram(&self, key: &Key) -> metrics::Histogram {
        let series = Arc::clone(
            self.lock()
                .series
                .entry(key.clone())
                .or_insert_with(|| Arc::new(BucketHistogram::new(LATENCY_BUCKETS))),
        );
        metrics::Histogram::from_arc(series)
    }

    /// The help text of the family `name` (a family in [`FAMILIES`] has
    /// its own already).
    pub fn describe(&self, name: &str, help: &str) {
        self.lock().help.insert(name.to_string(), help.to_string());
    }

    /// Every family in the Prometheus text format: `_bucket` lines with
    /// `le`, then `_sum` and `_count`, per series.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut by_family: BTreeMap<&str, Vec<(&Key, &BucketHistogram)>> = BTreeMap::new();
        for (key, h) in &inner.series {
            by_family.entry(key.name()).or_default().push((key, h));
        }
        let mut out = String::new();
        for (name, mut series) in by_family {
            series.sort_by(|a, b| a.0.cmp(b.0));
            let help = help_of(name).or_else(|| inner.help.get(name).map(String::as_str));
            if let Some(help) = help {
                let _ = writeln!(out, "# HELP {name} {help}");
            }
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (key, h) in series {
                write_series(&mut out, name, key, h);
            }
            out.push('\n');
        }
        out
    }
}

/// One series' lines.
fn write_series(out: &mut String, name: &str, key: &Key, h: &BucketHistogram) {
    let labels: String = label_pairs(key).map(|l| l + ",").collect();
    let counts = h.cumulative();
    let les = h.bounds.iter().map(f64::to_string);
    for (le, count) in les.chain(["+Inf".to_string()]).zip(&counts) {
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {count}");
    }
    let plain = match labels.trim_end_matches(',') {
        "" => String::new(),
        l => format!("{{{l}}}"),
    };
    let total = counts.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_sum{plain} {}", h.sum());
    let _ = writeln!(out, "{name}_count{plain} {total}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_counts_in_the_first_bucket_it_does_not_exceed() {
        let h = BucketHistogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 1.0, 3.0, f64::NAN] {
            h.record(v);
        }
        // le=0.1 holds 0.05 and 0.1 (a bound is inclusive); le=1 adds 0.5
        // and 1.0; +Inf adds 3.0. NaN is not recorded.
        assert_eq!(h.cumulative(), vec![2, 4, 5]);
        assert!((h.sum() - 4.65).abs() < 1e-9, "{}", h.sum());
    }

    #[test]
    fn the_page_has_buckets_sum_and_count_per_series() {
        let reg = Histograms::default();
        let key = |upstream: &'static str| {
            Key::from_parts(
                "detour_upstream_latency_seconds",
                vec![metrics::Label::new("upstream", upstream)],
            )
        };
        reg.histogram(&key("b")).record(0.002);
        reg.histogram(&key("a")).record(20.0);
        // The same key is the same series.
        reg.histogram(&key("a")).record(0.0004);
        let unlabelled = Key::from_name("mine_seconds");
        reg.describe("mine_seconds", "Mine.");
        reg.histogram(&unlabelled).record(0.3);
        let page = reg.render();
        let family = "detour_upstream_latency_seconds";
        assert!(page.contains(&format!("# HELP {family} Attempts to backends")));
        assert!(page.contains(&format!("# TYPE {family} histogram\n")));
        assert!(page.contains(&format!(
            "{family}_bucket{{upstream=\"a\",le=\"0.0005\"}} 1\n"
        )));
        assert!(page.contains(&format!("{family}_bucket{{upstream=\"a\",le=\"10\"}} 1\n")));
        assert!(page.contains(&format!(
            "{family}_bucket{{upstream=\"a\",le=\"+Inf\"}} 2\n"
        )));
        assert!(page.contains(&format!("{family}_sum{{upstream=\"a\"}} 20.0004\n")));
        assert!(page.contains(&format!("{family}_count{{upstream=\"a\"}} 2\n")));
        assert!(page.contains(&format!(
            "{family}_bucket{{upstream=\"b\",le=\"0.001\"}} 0\n"
        )));
        assert!(page.contains(&format!(
            "{family}_bucket{{upstream=\"b\",le=\"0.0025\"}} 1\n"
        )));
        // Series in label order, a's before b's.
        let a = page.find("upstream=\"a\"").unwrap_or(usize::MAX);
        let b = page.find("upstream=\"b\"").unwrap_or(0);
        assert!(a < b, "{page}");
        assert!(page.contains("# HELP mine_seconds Mine.\n"));
        assert!(page.contains("mine_seconds_bucket{le=\"0.5\"} 1\n"));
        assert!(page.contains("mine_seconds_count 1\n"), "{page}");
    }
}
