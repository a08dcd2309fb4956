//! `roomcast-loadtest`: load scenarios against roomcast (native JSON or MessagePack, or its
//! Socket.IO endpoint) and against Socket.IO servers, for `make bench`. (The pass/fail fault
//! checks, `chaos` and `floods`, are `roomcast-checks`, crates/checks.)
//!
//! The parent process spreads clients over `--workers` child processes (each one is this
//! binary in worker mode), because one process can hold only so many sockets; it merges their
//! reports, samples the system under test (`--pids`), and prints a summary, `--json` and
//! `--plot`.

mod engine;
mod plot;
mod scenarios;
mod stats;
mod summary;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use engine::Plan;
use roomcast_loadtest::procs::{self, Sample, Usage};
use roomcast_loadtest::proto::Protocol;
use roomcast_loadtest::workers::{self, WorkerFlags};
use roomcast_loadtest::{now_us, parse_sources};
use stats::Report;
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

/// `--msg-id`: whether publishes carry an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MsgIds {
    /// On for the native protocols (json, msgpack), off for Socket.IO.
    Auto,
    On,
    Off,
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
    /// Give every publish an idempotency key `msgId` (`p<publisher>-<seq>`).
    #[arg(long, value_enum, default_value = "auto")]
    msg_id: MsgIds,
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
    #[command(flatten)]
    worker: WorkerFlags,
}

impl Args {
    fn total_clients(&self) -> u64 {
        match self.scenario {
            Scenario::Connections | Scenario::Churn => self.clients,
            Scenario::Broadcast => self.members,
            Scenario::Fanout | Scenario::Max => self.rooms * self.members,
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
            msg_ids: match self.msg_id {
                MsgIds::Auto => self.protocol != Protocol::Socketio,
                MsgIds::On => true,
                MsgIds::Off => false,
            },
        })
    }

    /// The pids of `--pids` and `--pidfile`.
    fn system_pids(&self) -> Result<Vec<u32>> {
        let listed: Vec<u32> = self
            .pids
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.parse())
            .collect::<Result<_, _>>()
            .context("--pids")?;
        Ok(procs::collect(&listed, &self.pidfile))
    }
}

/// This process's share of the clients (all of them with one worker).
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

/// Where the clients run: in this process, or in child processes that print `REPORT {json}`.
enum Workers {
    Inline(tokio::task::JoinHandle<Report>),
    Children(Vec<std::process::Child>),
}

impl Workers {
    fn start(args: &Args, run_id: &str, start_at: u64) -> Result<Workers> {
        if args.workers <= 1 {
            let (args2, plan) = (args.clone(), args.plan(run_id, 0, start_at)?);
            return Ok(Workers::Inline(tokio::spawn(async move {
                run_worker(&args2, plan).await
            })));
        }
        let children = (0..args.workers)
            .map(|w| workers::spawn(w, start_at, run_id, false))
            .collect::<Result<_>>()?;
        Ok(Workers::Children(children))
    }

    /// Every worker's report, merged.
    async fn report(self) -> Result<Report> {
        let mut report = Report::default();
        match self {
            Workers::Inline(task) => report.merge(&task.await?),
            Workers::Children(children) => {
                for child in children {
                    let mut found = false;
                    let lines = child.stdout.map(|out| BufReader::new(out).lines());
                    for line in lines.into_iter().flatten().map_while(|l| l.ok()) {
                        if let Some(json) = line.strip_prefix("REPORT ") {
                            report.merge(&serde_json::from_str(json)?);
                            found = true;
                        }
                    }
                    if !found {
                        bail!("a worker ended without a report");
                    }
                }
            }
        }
        Ok(report)
    }
}

fn progress_bar(args: &Args, total_secs: f64) -> indicatif::ProgressBar {
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new((total_secs * 10.0) as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {elapsed}/{duration}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{:?}", args.scenario).to_lowercase());
    bar
}

/// Shows progress and samples the system under test every 100 ms until the run is over;
/// for `connections`, also two samples inside the held part.
async fn sample_until_done(
    args: &Args,
    pids: &[u32],
    start_at: u64,
    usage: &mut Usage,
) -> Option<summary::Held> {
    let total = args.setup() + args.duration();
    let hold = args.duration();
    let margin = 1.0_f64.min(hold / 4.0);
    let bar = progress_bar(args, total);
    let began = Instant::now();
    let (mut mid_a, mut mid_b): (Option<Sample>, Option<Sample>) = (None, None);
    while began.elapsed().as_secs_f64() < total {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bar.set_position((began.elapsed().as_secs_f64() * 10.0) as u64);
        let s = procs::sample(pids);
        usage.peak_rss_bytes = usage.peak_rss_bytes.max(s.rss_bytes);
        let into_hold = now_us().saturating_sub(start_at) as f64 / 1e6;
        if mid_a.is_none() && now_us() > start_at && into_hold > margin {
            mid_a = Some(s);
        }
        if mid_b.is_none() && into_hold > hold - margin {
            mid_b = Some(s);
        }
    }
    bar.finish_and_clear();
    match (mid_a, mid_b) {
        (Some(a), Some(b)) if args.scenario == Scenario::Connections => {
            Some((a, b, (hold - 2.0 * margin).max(1e-3)))
        }
        _ => None,
    }
}

/// `--json` (the summary, the usage samples and the whole report) and `--plot`.
fn write_outputs(
    args: &Args,
    summary: &summary::Summary,
    usage: &Usage,
    report: &Report,
) -> Result<()> {
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
        std::fs::write(path, plot::svg(report, &title))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some((worker, start_at, run_id)) = args.worker.get() {
        let report = run_worker(&args, args.plan(run_id, worker, start_at)?).await;
        println!("REPORT {}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let run_id = format!("{:08x}", fastrand::u32(..));
    let start_at = now_us() + (args.setup() * 1e6) as u64;
    let pids = args.system_pids()?;
    let mut usage = Usage {
        pids: pids.clone(),
        start: procs::sample(&pids),
        ..Default::default()
    };
    usage.peak_rss_bytes = usage.start.rss_bytes;
    let workers = Workers::start(&args, &run_id, start_at)?;
    let held = sample_until_done(&args, &pids, start_at, &mut usage).await;
    let report = workers.report().await?;
    usage.end = procs::sample(&pids);
    let summary = summary::summarize(&args, &report, (!pids.is_empty()).then_some(&usage), held);
    summary::print(&summary);
    write_outputs(&args, &summary, &usage, &report)
}
