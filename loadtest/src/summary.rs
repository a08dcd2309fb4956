//! The summary of a run: what `--json` holds under `summary`, and what is printed.

use crate::sampler::{Cpu, Held, Sampler, Tick};
use crate::stats::{histogram, Phase, Report};
use crate::{Args, Scenario};
use roomcast_loadtest::procs;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub protocol: String,
    pub clients: u64,
    connect_failures: u64,
    /// `connections`: clients the server closed while they were held.
    dropped_while_held: u64,
    connect_per_sec: Option<f64>,
    /// `connections`: RSS growth per held client, gateways and Redis, and gateways alone.
    rss_per_connection_bytes: Option<f64>,
    rss_per_connection_bytes_gateways: Option<f64>,
    /// `connections`: CPU while held, gateways and Redis, the gateways, and per gateway.
    idle_cpu_percent_of_one_core: Option<f64>,
    idle_cpu_percent_gateways: Option<f64>,
    idle_cpu_percent_per_gateway: Option<f64>,
    idle_seconds: Option<f64>,
    gateway_processes: usize,
    /// Threads of each gateway process at the end of the run.
    gateway_threads: Vec<u64>,
    /// The CPUs each process may run on (`taskset`), as /proc shows them.
    affinity: Affinity,
    phases: Vec<PhaseSummary>,
    /// `max`: steps not run in full because the run stopped early (`--stop-after-failed`).
    steps_cut: usize,
    p99_bound_ms: Option<f64>,
    min_delivered: Option<f64>,
    max_sustainable_rate: Option<f64>,
    max_sustainable_delivered_per_sec: Option<f64>,
    last_member_ms: Option<Percentiles>,
    cpu_seconds_sut: Option<f64>,
    cpu_seconds_gateways: Option<f64>,
    peak_rss_sut_bytes: Option<u64>,
    cpu_seconds_per_100k_delivered: Option<f64>,
    /// The load generator's CPU over the whole run, % of one core.
    generator_cpu_percent: Option<f64>,
    ops_per_sec: Option<f64>,
    ops: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    levels_seen: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct Affinity {
    /// pid → CPU list.
    sut: BTreeMap<u32, String>,
    generator: BTreeMap<u32, String>,
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
    seconds: f64,
    sent: u64,
    expected: u64,
    delivered: u64,
    delivered_per_sec: f64,
    delivered_fraction: Option<f64>,
    lost: i64,
    duplicates: u64,
    out_of_order: u64,
    publish_errors: u64,
    duplicate_acks: u64,
    latency_ms: Percentiles,
    /// CPU seconds during the step: gateways and Redis, the gateways.
    sut_cpu_seconds: Option<f64>,
    gateway_cpu_seconds: Option<f64>,
    /// CPU-µs per delivered message: gateways and Redis, the gateways.
    cpu_us_per_delivered: Option<f64>,
    gateway_cpu_us_per_delivered: Option<f64>,
    /// CPU during the step, % of one core: the system under test, the load generator.
    sut_cpu_percent: Option<f64>,
    generator_cpu_percent: Option<f64>,
}

impl PhaseSummary {
    fn of(p: &Phase, cpu: Option<Cpu>) -> PhaseSummary {
        let per = |c: f64| (p.delivered > 0).then(|| c * 1e6 / p.delivered as f64);
        let secs = p.seconds.max(1e-9);
        PhaseSummary {
            rate: p.rate,
            seconds: p.seconds,
            sent: p.sent,
            expected: p.expected,
            delivered: p.delivered,
            delivered_per_sec: p.delivered as f64 / secs,
            delivered_fraction: (p.expected > 0).then(|| p.delivered as f64 / p.expected as f64),
            lost: p.expected as i64 - p.delivered as i64,
            duplicates: p.duplicates,
            out_of_order: p.out_of_order,
            publish_errors: p.publish_errors,
            duplicate_acks: p.duplicate_acks,
            latency_ms: Percentiles::of(&p.latency.to_histogram()),
            sut_cpu_seconds: cpu.map(|c| c.sut),
            gateway_cpu_seconds: cpu.map(|c| c.gateways),
            cpu_us_per_delivered: cpu.and_then(|c| per(c.sut)),
            gateway_cpu_us_per_delivered: cpu.and_then(|c| per(c.gateways)),
            sut_cpu_percent: cpu.map(|c| 100.0 * c.sut / secs),
            generator_cpu_percent: cpu.map(|c| 100.0 * c.generator / secs),
        }
    }
}

/// `max`: the highest rate of the steps, in order, that kept p99 within the bound and
/// delivered at least `min_delivered` of what was expected; and its delivered/s.
fn max_sustainable(phases: &[PhaseSummary], p99_bound_ms: f64, min_delivered: f64) -> (f64, f64) {
    phases
        .iter()
        .take_while(|p| {
            p.expected > 0
                && p.latency_ms.p99 <= p99_bound_ms
                && p.delivered as f64 >= min_delivered * p.expected as f64
        })
        .map(|p| (p.rate, p.delivered_per_sec))
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
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

fn affinity(pids: &[u32]) -> BTreeMap<u32, String> {
    pids.iter()
        .filter_map(|&p| Some((p, procs::affinity(p)?)))
        .collect()
}

pub fn summarize(
    args: &Args,
    r: &Report,
    sampler: Option<&Sampler>,
    start_at: u64,
    held: Option<Held>,
) -> Summary {
    // Each phase's window, for its CPU; `max` begins with a warm-up step that is not reported.
    let mut t = start_at;
    let windows: Vec<(u64, u64)> = r
        .phases
        .iter()
        .map(|p| {
            let w = (t, t + (p.seconds * 1e6) as u64);
            t = w.1;
            w
        })
        .collect();
    let skip = usize::from(args.scenario == Scenario::Max);
    let phases: Vec<PhaseSummary> = r
        .phases
        .iter()
        .zip(&windows)
        .skip(skip)
        .filter(|(p, _)| !p.cut)
        .map(|(p, (t0, t1))| PhaseSummary::of(p, sampler.and_then(|s| s.cpu(*t0, *t1))))
        .collect();
    let steps_cut = r.phases.iter().skip(skip).filter(|p| p.cut).count();
    let delivered: u64 = r.phases.iter().map(|p| p.delivered).sum();
    let ticks = sampler.map(Sampler::ticks).unwrap_or_default();
    let (first, last) = (ticks.first(), ticks.last());
    let whole = |f: fn(&Tick) -> f64| Some(f(last?) - f(first?));
    let cpu = whole(|k| k.sut.cpu_seconds);
    let gateways = sampler.map_or(0, |s| s.gateway_pids().len());
    let (mut rss, mut rss_gw, mut idle, mut idle_gw, mut idle_secs) =
        (None, None, None, None, None);
    if let (Some(Held { a, b }), Some(start), true) = (held, first, r.clients > 0) {
        let n = r.clients as f64;
        let secs = ((b.at_us - a.at_us) as f64 / 1e6).max(1e-3);
        rss = Some((b.sut.rss_bytes as f64 - start.sut.rss_bytes as f64) / n);
        idle = Some(100.0 * (b.sut.cpu_seconds - a.sut.cpu_seconds) / secs);
        idle_secs = Some(secs);
        if gateways > 0 {
            rss_gw = Some((b.gateways.rss_bytes as f64 - start.gateways.rss_bytes as f64) / n);
            idle_gw = Some(100.0 * (b.gateways.cpu_seconds - a.gateways.cpu_seconds) / secs);
        }
    }
    let run_secs = whole(|k| k.at_us as f64 / 1e6);
    let (sustainable, sustainable_delivered) = if args.scenario == Scenario::Max {
        let (r, d) = max_sustainable(&phases, args.p99_bound_ms, args.min_delivered);
        (Some(r), Some(d))
    } else {
        (None, None)
    };
    let ops_total: u64 = r.ops.values().sum();
    Summary {
        scenario: r.scenario.clone(),
        protocol: r.protocol.clone(),
        clients: r.clients,
        connect_failures: r.connect_failures,
        dropped_while_held: r.dropped_while_held,
        connect_per_sec: (r.connect_seconds > 0.0).then(|| r.clients as f64 / r.connect_seconds),
        rss_per_connection_bytes: rss,
        rss_per_connection_bytes_gateways: rss_gw,
        idle_cpu_percent_of_one_core: idle,
        idle_cpu_percent_gateways: idle_gw,
        idle_cpu_percent_per_gateway: idle_gw.map(|c| c / gateways.max(1) as f64),
        idle_seconds: idle_secs,
        gateway_processes: gateways,
        gateway_threads: sampler
            .map(|s| {
                s.gateway_pids()
                    .iter()
                    .filter_map(|&p| procs::threads(p))
                    .collect()
            })
            .unwrap_or_default(),
        affinity: sampler
            .map(|s| Affinity {
                sut: affinity(s.sut_pids()),
                generator: affinity(s.generator_pids()),
            })
            .unwrap_or_default(),
        p99_bound_ms: (args.scenario == Scenario::Max).then_some(args.p99_bound_ms),
        min_delivered: (args.scenario == Scenario::Max).then_some(args.min_delivered),
        max_sustainable_rate: sustainable,
        max_sustainable_delivered_per_sec: sustainable_delivered,
        phases,
        steps_cut,
        last_member_ms: (args.scenario == Scenario::Broadcast).then(|| last_member(r)),
        cpu_seconds_sut: cpu,
        cpu_seconds_gateways: whole(|k| k.gateways.cpu_seconds).filter(|_| gateways > 0),
        peak_rss_sut_bytes: sampler.map(Sampler::peak_rss),
        cpu_seconds_per_100k_delivered: cpu
            .filter(|_| delivered > 0)
            .map(|c| c * 100_000.0 / delivered as f64),
        generator_cpu_percent: whole(|k| k.generator.cpu_seconds)
            .zip(run_secs)
            .map(|(c, s)| 100.0 * c / s.max(1e-3)),
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
    if s.dropped_while_held > 0 {
        println!(
            "  closed by the server while held: {}",
            s.dropped_while_held
        );
    }
    let kib = |b: Option<f64>| {
        b.map_or("-".to_string(), |b| {
            format!("{:.0} bytes ({:.1} KiB)", b, b / 1024.0)
        })
    };
    if s.rss_per_connection_bytes.is_some() {
        println!(
            "  RSS per connection: {} with Redis, {} gateways alone",
            kib(s.rss_per_connection_bytes),
            kib(s.rss_per_connection_bytes_gateways)
        );
    }
    if let Some(c) = s.idle_cpu_percent_of_one_core {
        let gw = s
            .idle_cpu_percent_per_gateway
            .map(|g| format!(", {g:.2}% per gateway process"))
            .unwrap_or_default();
        println!("  CPU while idle: {c:.2}% of one core with Redis{gw}");
    }
    for p in &s.phases {
        let l = &p.latency_ms;
        let cpu = p
            .cpu_us_per_delivered
            .map(|c| format!(" | SUT {c:.1} CPU-µs/delivered"))
            .unwrap_or_default();
        let gen = p
            .generator_cpu_percent
            .map(|c| format!(", generator {c:.0}% of a core"))
            .unwrap_or_default();
        println!(
            "  rate {:>8.0}/s: sent {} delivered {} ({:.0}/s) lost {} dup delivered {} ooo {} errors {} dup acks {} | latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}{cpu}{gen}",
            p.rate, p.sent, p.delivered, p.delivered_per_sec, p.lost, p.duplicates, p.out_of_order, p.publish_errors, p.duplicate_acks, l.p50, l.p90, l.p99, l.p999, l.max
        );
    }
    if s.steps_cut > 0 {
        println!("  stopped early: {} step(s) not run in full", s.steps_cut);
    }
    if let (Some(r), Some(d)) = (s.max_sustainable_rate, s.max_sustainable_delivered_per_sec) {
        println!("  highest sustainable publish rate: {r:.0}/s ({d:.0} delivered/s)");
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
