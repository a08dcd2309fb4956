//! The summary of a run: what `--json` holds under `summary`, and what is printed.

use crate::stats::{histogram, Phase, Report};
use crate::{Args, Scenario};
use roomcast_loadtest::procs::{Sample, Usage};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub protocol: String,
    pub clients: u64,
    connect_failures: u64,
    connect_per_sec: Option<f64>,
    rss_per_connection_bytes: Option<f64>,
    idle_cpu_percent_of_one_core: Option<f64>,
    phases: Vec<PhaseSummary>,
    max_sustainable_rate: Option<f64>,
    last_member_ms: Option<Percentiles>,
    cpu_seconds_sut: Option<f64>,
    peak_rss_sut_bytes: Option<u64>,
    cpu_seconds_per_100k_delivered: Option<f64>,
    ops_per_sec: Option<f64>,
    ops: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    levels_seen: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    fn of(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Serialize)]
struct PhaseSummary {
    rate: f64,
    sent: u64,
    expected: u64,
    delivered: u64,
    delivered_per_sec: f64,
    lost: i64,
    duplicates: u64,
    out_of_order: u64,
    publish_errors: u64,
    duplicate_acks: u64,
    latency_ms: Percentiles,
}

impl PhaseSummary {
    fn of(p: &Phase) -> PhaseSummary {
        PhaseSummary {
            rate: p.rate,
            sent: p.sent,
            expected: p.expected,
            delivered: p.delivered,
            delivered_per_sec: p.delivered as f64 / p.seconds.max(1e-9),
            lost: p.expected as i64 - p.delivered as i64,
            duplicates: p.duplicates,
            out_of_order: p.out_of_order,
            publish_errors: p.publish_errors,
            duplicate_acks: p.duplicate_acks,
            latency_ms: Percentiles::of(&p.latency.to_histogram()),
        }
    }
}

/// Two samples of the system under test while the clients were held, and the seconds between
/// them (`connections`: RSS per connection and idle CPU).
pub type Held = (Sample, Sample, f64);

/// `max`: the highest rate of the steps, in order, that kept p99 within the bound and
/// delivered at least 99%.
fn max_sustainable_rate(phases: &[PhaseSummary], p99_bound_ms: f64) -> f64 {
    phases
        .iter()
        .take_while(|p| {
            p.latency_ms.p99 <= p99_bound_ms && p.delivered as f64 >= 0.99 * p.expected as f64
        })
        .map(|p| p.rate)
        .fold(0.0, f64::max)
}

/// `broadcast`: per message, the latency to its last member.
fn last_member(r: &Report) -> Percentiles {
    let mut h = histogram();
    for p in &r.phases {
        for (_, v) in &p.last_member {
            let _ = h.record((*v).clamp(1, 60_000_000));
        }
    }
    Percentiles::of(&h)
}

pub fn summarize(args: &Args, r: &Report, usage: Option<&Usage>, held: Option<Held>) -> Summary {
    // `max` begins with a warm-up step that is not reported.
    let skip = usize::from(args.scenario == Scenario::Max);
    let phases: Vec<PhaseSummary> = r.phases.iter().skip(skip).map(PhaseSummary::of).collect();
    let delivered: u64 = r.phases.iter().map(|p| p.delivered).sum();
    let cpu = usage.map(|u| u.end.cpu_seconds - u.start.cpu_seconds);
    let (rss_per_connection_bytes, idle_cpu) = match held {
        Some((a, b, secs)) if r.clients > 0 => (
            usage.map(|u| (a.rss_bytes as f64 - u.start.rss_bytes as f64) / r.clients as f64),
            Some(100.0 * (b.cpu_seconds - a.cpu_seconds) / secs.max(1e-9)),
        ),
        _ => (None, None),
    };
    let ops_total: u64 = r.ops.values().sum();
    Summary {
        scenario: r.scenario.clone(),
        protocol: r.protocol.clone(),
        clients: r.clients,
        connect_failures: r.connect_failures,
        connect_per_sec: (r.connect_seconds > 0.0).then(|| r.clients as f64 / r.connect_seconds),
        rss_per_connection_bytes,
        idle_cpu_percent_of_one_core: idle_cpu,
        max_sustainable_rate: (args.scenario == Scenario::Max)
            .then(|| max_sustainable_rate(&phases, args.p99_bound_ms)),
        phases,
        last_member_ms: (args.scenario == Scenario::Broadcast).then(|| last_member(r)),
        cpu_seconds_sut: cpu,
        peak_rss_sut_bytes: usage.map(|u| u.peak_rss_bytes),
        cpu_seconds_per_100k_delivered: cpu
            .filter(|_| delivered > 0)
            .map(|c| c * 100_000.0 / delivered as f64),
        ops_per_sec: (args.scenario == Scenario::Churn)
            .then(|| ops_total as f64 / r.elapsed_seconds.max(1e-9)),
        ops: r.ops.clone(),
        errors: r.errors.clone(),
        levels_seen: r.levels_seen.clone(),
    }
}

pub fn print(s: &Summary) {
    let rate = s
        .connect_per_sec
        .map(|r| format!(", {r:.0} connects/s"))
        .unwrap_or_default();
    println!(
        "scenario {} over {} ({} clients, {} failed to connect{rate})",
        s.scenario, s.protocol, s.clients, s.connect_failures
    );
    if let Some(b) = s.rss_per_connection_bytes {
        println!(
            "  RSS per connection: {:.0} bytes ({:.1} KiB)",
            b,
            b / 1024.0
        );
    }
    if let Some(c) = s.idle_cpu_percent_of_one_core {
        println!("  CPU while idle: {c:.2}% of one core");
    }
    for p in &s.phases {
        let l = &p.latency_ms;
        println!(
            "  rate {:>8.0}/s: sent {} delivered {} ({:.0}/s) lost {} dup delivered {} ooo {} errors {} dup acks {} | latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            p.rate, p.sent, p.delivered, p.delivered_per_sec, p.lost, p.duplicates, p.out_of_order, p.publish_errors, p.duplicate_acks, l.p50, l.p90, l.p99, l.p999, l.max
        );
    }
    if let Some(r) = s.max_sustainable_rate {
        println!("  highest sustainable publish rate: {r:.0}/s");
    }
    if let Some(l) = &s.last_member_ms {
        println!(
            "  latency to the last member ms: p50 {:.2} p99 {:.2} max {:.2}",
            l.p50, l.p99, l.max
        );
    }
    if let Some(c) = s.cpu_seconds_sut {
        println!(
            "  system under test: {c:.2} CPU seconds, peak RSS {} MiB",
            s.peak_rss_sut_bytes.unwrap_or(0) / (1 << 20)
        );
    }
    if let Some(c) = s.cpu_seconds_per_100k_delivered {
        println!("  cost: {c:.3} CPU seconds per 100k delivered messages");
    }
    if let Some(o) = s.ops_per_sec {
        println!(
            "  churn: {o:.0} ops/s; ops {:?}; errors {:?}; traffic levels seen {:?}",
            s.ops, s.errors, s.levels_seen
        );
    }
}
