//! `roomcast-loadtest`: load scenarios against roomcast (native JSON or MessagePack, or its
//! Socket.IO endpoint) and against Socket.IO servers.
//!
//! The parent process spreads clients over `--workers` child processes (each one is this
//! binary in worker mode), because one process can hold only so many sockets; it merges their
//! reports, samples the system under test (`--pids`), and prints a summary, `--json` and
//! `--plot`.

mod chaos;
mod client;
mod engine;
mod floods;
mod plot;
mod procs;
mod proto;
mod scenarios;
mod stats;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use engine::{now_us, Plan};
use proto::Protocol;
use serde::Serialize;
use stats::Report;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// `max` starts with this many seconds at its first rate, left out of the report.
const WARMUP_SECS: f64 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Open N clients, each in one of R rooms, and hold them.
    Connections,
    /// R rooms of M members; P publishers at an open-loop total rate.
    Fanout,
    /// One room of M members, one publisher: latency to the last member.
    Broadcast,
    /// Clients create, join, publish, leave and reconnect at a rate.
    Churn,
    /// Step the publish rate up until p99 passes a bound or deliveries fall below 99%.
    Max,
    /// `fanout` whose clients survive faults: they reconnect and re-join with `since`, and
    /// check offsets and epochs (`make chaos`, deploy/local/chaos.sh).
    Chaos,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "roomcast-loadtest",
    about = "Load scenarios for roomcast and Socket.IO servers"
)]
struct Args {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Server base URLs (`ws://host:port`), comma separated; clients go round-robin.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080")]
    url: Vec<String>,
    #[arg(long, value_enum, default_value = "json")]
    protocol: Protocol,
    /// Source addresses for client sockets, e.g. `127.0.0.2-127.0.0.50` (28k ports each).
    #[arg(long)]
    source_ips: Option<String>,
    /// Worker processes to spread clients over (each holds at most ~19k sockets).
    #[arg(long, default_value_t = 1)]
    workers: u64,
    /// HS256 secret to mint one token per client (roomcast with --jwt-secret).
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Write the merged report as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<String>,
    /// Write an SVG of throughput and latency over time.
    #[arg(long)]
    plot: Option<String>,
    /// Pids of the system under test (gateways, Redis) to sample CPU and RSS.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<String>,
    /// Files with pids of the system under test.
    #[arg(long)]
    pidfile: Vec<String>,
    /// connections, churn: clients.
    #[arg(long, default_value_t = 1000)]
    clients: u64,
    /// connections, fanout, max, churn: rooms.
    #[arg(long, default_value_t = 10)]
    rooms: u64,
    /// fanout, max, broadcast: members per room (publishers included).
    #[arg(long, default_value_t = 10)]
    members: u64,
    /// fanout, max: publishers (spread over rooms).
    #[arg(long, default_value_t = 10)]
    publishers: u64,
    /// fanout, broadcast, churn: total rate (publishes or ops per second).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long to publish, hold, or churn.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Padding bytes in each published payload.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// max: first rate, growth factor, steps, seconds per step, p99 bound.
    #[arg(long, default_value_t = 1000.0)]
    start_rate: f64,
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    #[arg(long, default_value_t = 6)]
    steps: usize,
    #[arg(long, default_value_t = 6.0)]
    step_secs: f64,
    #[arg(long, default_value_t = 50.0)]
    p99_bound_ms: f64,
    /// Seconds allowed to connect everyone before the measured part starts.
    #[arg(long)]
    setup_secs: Option<f64>,
    /// Print only the summary.
    #[arg(long)]
    quiet: bool,
    /// chaos: gateway base URLs (`http://host:port`) whose /readyz is polled every 150 ms.
    #[arg(long, value_delimiter = ',')]
    readyz: Vec<String>,
    /// chaos: publish until this file exists (or --secs passed).
    #[arg(long)]
    stop_file: Option<String>,
    #[arg(long, hide = true)]
    worker_index: Option<u64>,
    #[arg(long, hide = true)]
    start_at_us: Option<u64>,
    #[arg(long, hide = true)]
    run_id: Option<String>,
}

pub(crate) fn parse_sources(spec: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (a.parse()?, b.parse()?);
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a {
                    bail!("empty range {part}");
                }
                out.extend((a..=b).map(|n| IpAddr::V4(n.into())));
            }
            None => out.push(part.parse()?),
        }
    }
    Ok(out)
}

impl Args {
    fn total_clients(&self) -> u64 {
        match self.scenario {
            Scenario::Connections | Scenario::Churn => self.clients,
            Scenario::Broadcast => self.members,
            Scenario::Fanout | Scenario::Max | Scenario::Chaos => self.rooms * self.members,
        }
    }

    fn phases(&self) -> Vec<(f64, f64)> {
        match self.scenario {
            Scenario::Fanout | Scenario::Broadcast => vec![(self.rate, self.secs)],
            // A short warm-up at the first rate (scripts loaded, buffers grown), not reported.
            Scenario::Max => std::iter::once((self.start_rate, WARMUP_SECS))
                .chain(
                    (0..self.steps)
                        .map(|k| (self.start_rate * self.factor.powi(k as i32), self.step_secs)),
                )
                .collect(),
            _ => vec![],
        }
    }

    fn duration(&self) -> f64 {
        match self.scenario {
            Scenario::Max => WARMUP_SECS + self.step_secs * self.steps as f64,
            _ => self.secs,
        }
    }

    fn setup(&self) -> f64 {
        self.setup_secs
            .unwrap_or(3.0 + self.total_clients() as f64 / 1500.0)
    }

    fn plan(&self, run_id: &str, worker: u64, start_at_us: u64) -> Result<Plan> {
        let broadcast = self.scenario == Scenario::Broadcast;
        Ok(Plan {
            urls: self.url.clone(),
            protocol: self.protocol,
            sources: self
                .source_ips
                .as_deref()
                .map(parse_sources)
                .transpose()?
                .unwrap_or_default(),
            jwt_secret: self.jwt_secret.clone(),
            run_id: run_id.to_string(),
            rooms: if broadcast { 1 } else { self.rooms },
            members: self.members,
            publishers: if broadcast {
                1
            } else {
                self.publishers.min(self.rooms * self.members)
            },
            phases: self.phases(),
            payload: self.payload,
            worker,
            workers: self.workers.max(1),
            start_at_us,
            track_last: broadcast,
        })
    }
}

async fn run_worker(args: &Args, plan: Plan) -> Report {
    let plan = Arc::new(plan);
    let end = plan.start_at_us + (args.duration() * 1e6) as u64;
    let mut report = match args.scenario {
        Scenario::Connections => scenarios::connections(plan, args.clients, end).await,
        Scenario::Churn => scenarios::churn(plan, args.clients, args.rate, end).await,
        _ => engine::run(plan).await,
    };
    report.scenario = format!("{:?}", args.scenario).to_lowercase();
    report
}

#[derive(Debug, Serialize)]
struct Summary {
    scenario: String,
    protocol: String,
    clients: u64,
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
    ops: std::collections::BTreeMap<String, u64>,
    errors: std::collections::BTreeMap<String, u64>,
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
    latency_ms: Percentiles,
}

fn summarize(
    args: &Args,
    r: &Report,
    usage: Option<&procs::Usage>,
    mid: Option<(procs::Sample, procs::Sample, f64)>,
) -> Summary {
    let skip = usize::from(args.scenario == Scenario::Max);
    let phases: Vec<PhaseSummary> = r
        .phases
        .iter()
        .skip(skip)
        .map(|p| PhaseSummary {
            rate: p.rate,
            sent: p.sent,
            expected: p.expected,
            delivered: p.delivered,
            delivered_per_sec: p.delivered as f64 / p.seconds.max(1e-9),
            lost: p.expected as i64 - p.delivered as i64,
            duplicates: p.duplicates,
            out_of_order: p.out_of_order,
            publish_errors: p.publish_errors,
            latency_ms: Percentiles::of(&p.latency.to_histogram()),
        })
        .collect();
    let bound = args.p99_bound_ms;
    let max_sustainable_rate = (args.scenario == Scenario::Max).then(|| {
        phases
            .iter()
            .take_while(|p| {
                p.latency_ms.p99 <= bound && p.delivered as f64 >= 0.99 * p.expected as f64
            })
            .map(|p| p.rate)
            .fold(0.0, f64::max)
    });
    let last_member_ms = (args.scenario == Scenario::Broadcast).then(|| {
        let mut h = stats::histogram();
        for p in &r.phases {
            for (_, v) in &p.last_member {
                let _ = h.record((*v).clamp(1, 60_000_000));
            }
        }
        Percentiles::of(&h)
    });
    let delivered: u64 = r.phases.iter().map(|p| p.delivered).sum();
    let cpu = usage.map(|u| u.end.cpu_seconds - u.start.cpu_seconds);
    let (rss_per_connection_bytes, idle_cpu) = match mid {
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
        phases,
        max_sustainable_rate,
        last_member_ms,
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

fn print_summary(s: &Summary) {
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
            "  rate {:>8.0}/s: sent {} delivered {} ({:.0}/s) lost {} dup {} ooo {} errors {} | latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            p.rate, p.sent, p.delivered, p.delivered_per_sec, p.lost, p.duplicates, p.out_of_order, p.publish_errors, l.p50, l.p90, l.p99, l.p999, l.max
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

#[tokio::main]
async fn main() -> Result<()> {
    // `storm`, `flood`, `slow-readers`, `huge-room`: the checks of loadtest/floods.sh.
    if let Some(done) = floods::dispatch().await {
        return done;
    }
    let args = Args::parse();
    if args.scenario == Scenario::Chaos {
        return chaos::main(chaos::Settings {
            urls: args.url.clone(),
            protocol: args.protocol,
            jwt_secret: args.jwt_secret.clone(),
            rooms: args.rooms,
            members: args.members,
            publishers: args.publishers,
            rate: args.rate,
            secs: args.secs,
            payload: args.payload,
            setup_secs: args.setup(),
            readyz: args.readyz.clone(),
            stop_file: args.stop_file.clone(),
            json: args.json.clone(),
        })
        .await;
    }
    if let (Some(worker), Some(start_at), Some(run_id)) =
        (args.worker_index, args.start_at_us, args.run_id.clone())
    {
        let report = run_worker(&args, args.plan(&run_id, worker, start_at)?).await;
        println!("REPORT {}", serde_json::to_string(&report)?);
        return Ok(());
    }

    let run_id = format!("{:08x}", fastrand::u32(..));
    let start_at = now_us() + (args.setup() * 1e6) as u64;
    let listed: Vec<u32> = args
        .pids
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| p.parse())
        .collect::<Result<_, _>>()
        .context("--pids")?;
    let pids = procs::collect(&listed, &args.pidfile);
    let mut usage = procs::Usage {
        pids: pids.clone(),
        start: procs::sample(&pids),
        ..Default::default()
    };
    usage.peak_rss_bytes = usage.start.rss_bytes;

    // Workers: child processes, or this process when there is one.
    let mut children = Vec::new();
    let inline = if args.workers <= 1 {
        let args2 = args.clone();
        let plan = args.plan(&run_id, 0, start_at)?;
        Some(tokio::spawn(async move { run_worker(&args2, plan).await }))
    } else {
        let exe = std::env::current_exe()?;
        for w in 0..args.workers {
            let child = std::process::Command::new(&exe)
                .args(std::env::args().skip(1))
                .args([
                    "--worker-index",
                    &w.to_string(),
                    "--start-at-us",
                    &start_at.to_string(),
                    "--run-id",
                    &run_id,
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .context("starting a worker process")?;
            children.push(child);
        }
        None
    };

    // Progress, and samples of the system under test.
    let total = args.setup() + args.duration();
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new((total * 10.0) as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {elapsed}/{duration}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{:?}", args.scenario).to_lowercase());
    let began = std::time::Instant::now();
    let mut mid_a: Option<procs::Sample> = None;
    let mut mid_b: Option<procs::Sample> = None;
    let hold = args.duration();
    while began.elapsed().as_secs_f64() < total {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bar.set_position((began.elapsed().as_secs_f64() * 10.0) as u64);
        let s = procs::sample(&pids);
        usage.peak_rss_bytes = usage.peak_rss_bytes.max(s.rss_bytes);
        let into_hold = now_us().saturating_sub(start_at) as f64 / 1e6;
        if mid_a.is_none() && now_us() > start_at && into_hold > 1.0_f64.min(hold / 4.0) {
            mid_a = Some(s);
        }
        if mid_b.is_none() && into_hold > hold - 1.0_f64.min(hold / 4.0) {
            mid_b = Some(s);
        }
    }
    bar.finish_and_clear();

    let mut report = Report::default();
    if let Some(task) = inline {
        report.merge(&task.await?);
    }
    for child in children {
        let out = child.stdout;
        let mut found = false;
        if let Some(out) = out {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(json) = line.strip_prefix("REPORT ") {
                    report.merge(&serde_json::from_str(json)?);
                    found = true;
                }
            }
        }
        if !found {
            bail!("a worker ended without a report");
        }
    }
    usage.end = procs::sample(&pids);
    let mid = match (mid_a, mid_b) {
        (Some(a), Some(b)) if args.scenario == Scenario::Connections => {
            Some((a, b, (hold - 2.0 * 1.0_f64.min(hold / 4.0)).max(1e-3)))
        }
        _ => None,
    };
    let summary = summarize(&args, &report, (!pids.is_empty()).then_some(&usage), mid);
    print_summary(&summary);
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "summary": summary, "usage": usage, "report": report });
        let text = serde_json::to_string_pretty(&doc)?;
        if path == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text)?;
        }
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{} over {} ({} clients)",
            summary.scenario, summary.protocol, summary.clients
        );
        std::fs::write(path, plot::svg(&report, &title))?;
    }
    Ok(())
}
