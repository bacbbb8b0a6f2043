//! Per-tool counts and latency histograms: one set of atomics read by both `GetStatus` (counts
//! and interpolated p50/p99) and the Prometheus endpoint (`paretopo_tool_calls_total`,
//! `paretopo_tool_call_errors_total{kind}`, `paretopo_tool_call_duration_seconds`).
//!
//! What it does not do: decide what is an error or time calls; the service reports each call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use paretopo_proto::v1::{ToolErrorKind, ToolStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

/// Upper bounds of the latency buckets in seconds: 50 µs doubling to about 52 s, then +Inf.
fn bucket_bounds() -> impl Iterator<Item = f64> {
    (0..21).map(|i| 50e-6 * f64::from(1u32 << i)).chain(std::iter::once(f64::INFINITY))
}

const BUCKETS: usize = 22;

/// The name calls to tools that do not exist are counted under, so a model inventing names
/// cannot grow the label set.
pub const UNKNOWN_TOOL: &str = "(unknown)";

/// The error kinds counted, with their metric label.
const ERROR_KINDS: [(ToolErrorKind, &str); 4] = [
    (ToolErrorKind::UnknownTool, "unknown_tool"),
    (ToolErrorKind::BadArguments, "bad_arguments"),
    (ToolErrorKind::Execution, "execution"),
    (ToolErrorKind::Timeout, "timeout"),
];

/// The position of `Timeout` in [`ERROR_KINDS`].
const TIMEOUT: usize = 3;
const _: () = assert!(matches!(ERROR_KINDS[TIMEOUT].0, ToolErrorKind::Timeout));

/// One tool's counters.
#[derive(Debug)]
struct PerTool {
    name: String,
    calls: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    /// Non-cumulative counts per bucket of [`bucket_bounds`].
    buckets: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

/// Counts and latencies of every tool, fixed at start.
#[derive(Debug)]
pub struct CallStats {
    tools: Vec<PerTool>,
}

impl CallStats {
    /// Stats for `tools` (plus [`UNKNOWN_TOOL`]).
    pub fn new<'a>(tools: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names: Vec<String> = tools.into_iter().map(str::to_owned).collect();
        names.push(UNKNOWN_TOOL.to_owned());
        names.sort();
        names.dedup();
        let tools = names
            .into_iter()
            .map(|name| PerTool {
                name,
                calls: AtomicU64::new(0),
                errors: Default::default(),
                buckets: Default::default(),
                sum_nanos: AtomicU64::new(0),
            })
            .collect();
        CallStats { tools }
    }

    /// Records one answered call to `tool` (an unknown name counts as [`UNKNOWN_TOOL`]).
    pub fn record(&self, tool: &str, error: ToolErrorKind, latency: Duration) {
        let Some(stats) = self.find(tool).or_else(|| self.find(UNKNOWN_TOOL)) else {
            return;
        };
        stats.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = ERROR_KINDS.iter().position(|(kind, _)| *kind == error) {
            stats.errors[i].fetch_add(1, Ordering::Relaxed);
        }
        let seconds = latency.as_secs_f64();
        let bucket = bucket_bounds().position(|bound| seconds <= bound).unwrap_or(BUCKETS - 1);
        stats.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        stats.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn find(&self, tool: &str) -> Option<&PerTool> {
        self.tools.iter().find(|t| t.name == tool)
    }

    /// Calls answered, and those that ended in an error, over all tools.
    pub fn totals(&self) -> (u64, u64) {
        self.tools.iter().fold((0, 0), |(calls, errors), t| {
            let e: u64 = t.errors.iter().map(|e| e.load(Ordering::Relaxed)).sum();
            (calls + t.calls.load(Ordering::Relaxed), errors + e)
        })
    }

    /// The status view, sorted by tool name.
    pub fn snapshot(&self) -> Vec<ToolStats> {
        self.tools
            .iter()
            .map(|t| {
                let buckets: Vec<u64> =
                    t.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
                let errors: Vec<u64> = t.errors.iter().map(|e| e.load(Ordering::Relaxed)).collect();
                ToolStats {
                    tool: t.name.clone(),
                    calls_total: t.calls.load(Ordering::Relaxed),
                    errors_total: errors.iter().sum(),
                    timeouts_total: errors[TIMEOUT],
                    latency_p50_ms: 1e3 * quantile(&buckets, 0.5),
                    latency_p99_ms: 1e3 * quantile(&buckets, 0.99),
                }
            })
            .collect()
    }
}

/// The `q`-quantile of a bucketed distribution in seconds, interpolated linearly within its
/// bucket as Prometheus's `histogram_quantile` does (the first bucket starts at 0; a quantile in
/// the +Inf bucket is the last finite bound). 0 when empty.
pub fn quantile(buckets: &[u64], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let bounds: Vec<f64> = bucket_bounds().collect();
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            if bounds[i].is_infinite() {
                return bounds[i - 1];
            }
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let within = (rank - below as f64) / count as f64;
            return lower + (bounds[i] - lower) * within;
        }
        below += count;
    }
    bounds[bounds.len() - 2]
}

impl Collector for CallStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut calls = encoder.encode_descriptor(
            "paretopo_tool_calls",
            "Tool calls answered, by tool",
            None,
            MetricType::Counter,
        )?;
        for t in &self.tools {
            let labels = [("tool", t.name.as_str())];
            calls
                .encode_family(&labels.as_slice())?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, u64, u64>(
                    &t.calls.load(Ordering::Relaxed),
                    None,
                )?;
        }
        let mut errors = encoder.encode_descriptor(
            "paretopo_tool_call_errors",
            "Tool calls that ended in an error, by tool and kind",
            None,
            MetricType::Counter,
        )?;
        for t in &self.tools {
            for (i, (_, kind)) in ERROR_KINDS.iter().enumerate() {
                let labels = [("tool", t.name.as_str()), ("kind", kind)];
                errors
                    .encode_family(&labels.as_slice())?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, u64, u64>(
                        &t.errors[i].load(Ordering::Relaxed),
                        None,
                    )?;
            }
        }
        let mut durations = encoder.encode_descriptor(
            "paretopo_tool_call_duration_seconds",
            "Tool call latency, waiting in line included, by tool",
            None,
            MetricType::Histogram,
        )?;
        for t in &self.tools {
            let labels = [("tool", t.name.as_str())];
            let buckets: Vec<(f64, u64)> = bucket_bounds()
                .zip(&t.buckets)
                .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
                .collect();
            let count = buckets.iter().map(|(_, c)| c).sum();
            let sum = t.sum_nanos.load(Ordering::Relaxed) as f64 * 1e-9;
            durations
                .encode_family(&labels.as_slice())?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut buckets = vec![0u64; BUCKETS];
        assert_eq!(quantile(&buckets, 0.5), 0.0);
        // 100 calls in the (100 µs, 200 µs] bucket: the median is its middle.
        buckets[2] = 100;
        assert!((quantile(&buckets, 0.5) - 150e-6).abs() < 1e-12);
        assert!((quantile(&buckets, 0.99) - 199e-6).abs() < 1e-12);
        // One slow call in +Inf: p99 stays in the first bucket, p100 is the last finite bound.
        buckets[BUCKETS - 1] = 1;
        assert!(quantile(&buckets, 0.99) <= 200e-6);
        assert_eq!(quantile(&buckets, 1.0), 50e-6 * f64::from(1u32 << 20));
    }

    #[test]
    fn calls_are_counted_per_tool_and_unknown_names_share_one_label() {
        let stats = CallStats::new(["search", "calculator"]);
        stats.record("calculator", ToolErrorKind::Unspecified, Duration::from_micros(120));
        stats.record("calculator", ToolErrorKind::Timeout, Duration::from_secs(5));
        stats.record("shell", ToolErrorKind::UnknownTool, Duration::from_micros(10));
        stats.record("rm -rf", ToolErrorKind::UnknownTool, Duration::from_micros(10));
        assert_eq!(stats.totals(), (4, 3));
        let view = stats.snapshot();
        let names: Vec<&str> = view.iter().map(|t| t.tool.as_str()).collect();
        assert_eq!(names, vec![UNKNOWN_TOOL, "calculator", "search"]);
        assert_eq!((view[0].calls_total, view[0].errors_total), (2, 2));
        assert_eq!((view[1].calls_total, view[1].errors_total, view[1].timeouts_total), (2, 1, 1));
        assert_eq!(view[2].calls_total, 0);
    }

    #[test]
    fn prometheus_text_has_cumulative_buckets_per_tool() {
        let stats = CallStats::new(["calculator"]);
        for micros in [40, 60, 60, 3_000] {
            stats.record("calculator", ToolErrorKind::Unspecified, Duration::from_micros(micros));
        }
        stats.record("calculator", ToolErrorKind::Execution, Duration::from_micros(70));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(stats));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "paretopo_tool_calls_total{tool=\"calculator\"} 5",
            "paretopo_tool_call_errors_total{tool=\"calculator\",kind=\"execution\"} 1",
            "paretopo_tool_call_duration_seconds_count{tool=\"calculator\"} 5",
            "paretopo_tool_call_duration_seconds_bucket{le=\"0.00005\",tool=\"calculator\"} 1",
            "paretopo_tool_call_duration_seconds_bucket{le=\"0.0001\",tool=\"calculator\"} 4",
            "paretopo_tool_call_duration_seconds_bucket{le=\"+Inf\",tool=\"calculator\"} 5",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
