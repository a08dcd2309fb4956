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
mod sampler;
mod scenarios;
mod stats;
mod summary;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use engine::{Judge, Plan};
use roomcast_loadtest::procs::{self, Usage};
use roomcast_loadtest::proto::Protocol;
use roomcast_loadtest::workers::{self, WorkerFlags};
use roomcast_loadtest::{now_us, parse_sources};
use sampler::{Held, Sampler};
use scenarios::Hold;
use stats::Report;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

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
    /// The gateways among `--pids` (the rest being Redis): their CPU and RSS are also
    /// reported alone.
    #[arg(long, value_delimiter = ',')]
    gateway_pids: Vec<String>,
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
    /// max: seconds at the first rate before the steps, left out of the report.
    #[arg(long, default_value_t = 3.0)]
    warmup_secs: f64,
    #[arg(long, default_value_t = 50.0)]
    p99_bound_ms: f64,
    /// max: a step passes with p99 within the bound and at least this fraction delivered.
    #[arg(long, default_value_t = 0.999)]
    min_delivered: f64,
    /// max: stop once this many steps in a row have surely missed the p99 bound (0: run
    /// every step). Needs one worker process (`--workers 1`).
    #[arg(long, default_value_t = 0)]
    stop_after_failed: usize,
    /// Seconds allowed to connect everyone before the measured part starts. With one worker
    /// (and for `connections`) at most this long: it starts once everyone is in.
    #[arg(long)]
    setup_secs: Option<f64>,
    /// fanout, max, broadcast: create this file when publishing starts (a profiler can wait
    /// for it).
    #[arg(long)]
    ready_file: Option<String>,
    /// connections: seconds between the last connect and the idle measurement.
    #[arg(long, default_value_t = 3.0)]
    settle_secs: f64,
    /// Print only the summary.
    #[arg(long)]
    quiet: bool,
    /// The run's id in room and user names (`lt-<id>-<room>`), random by default. A fixed one
    /// lets a gateway flag name a subset of the rooms (`--publish-proxy-rooms lt-<id>-1*`);
    /// rooms outlive a run in Redis, so give each run its own.
    #[arg(long)]
    run_name: Option<String>,
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
            Scenario::Max => std::iter::once((self.start_rate, self.warmup_secs))
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
            Scenario::Max => self.warmup_secs + self.step_secs * self.steps as f64,
            _ => self.secs,
        }
    }

    fn setup(&self) -> f64 {
        let clients = self.total_clients() as f64;
        match self.scenario {
            // A deadline, not a wait: the hold starts as soon as everyone is in.
            Scenario::Connections => self.setup_secs.unwrap_or(30.0 + clients / 200.0),
            _ => self.setup_secs.unwrap_or(3.0 + clients / 1500.0),
        }
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
            // A worker sees only its own publishers' sends: judging needs them all.
            judge: (self.scenario == Scenario::Max
                && self.stop_after_failed > 0
                && self.workers <= 1)
                .then_some(Judge {
                    bound_us: (self.p99_bound_ms * 1000.0) as u64,
                    stop_after: self.stop_after_failed,
                    skip: 1,
                }),
            // Tens of thousands of sockets per process: 8 KiB read buffers, not 128 KiB.
            small_buffers: self.scenario == Scenario::Connections
                || self.total_clients() / self.workers.max(1) > 2000,
            ready_file: self.ready_file.clone(),
        })
    }

    /// The pids of `--pids` and `--pidfile`, and of `--gateway-pids`.
    fn system_pids(&self) -> Result<(Vec<u32>, Vec<u32>)> {
        let parse = |list: &[String], what: &str| -> Result<Vec<u32>> {
            list.iter()
                .filter(|p| !p.is_empty())
                .map(|p| p.parse())
                .collect::<Result<_, _>>()
                .with_context(|| what.to_string())
        };
        let gateways = procs::collect(&parse(&self.gateway_pids, "--gateway-pids")?, &[]);
        let mut all = procs::collect(&parse(&self.pids, "--pids")?, &self.pidfile);
        all.extend(&gateways);
        all.sort_unstable();
        all.dedup();
        Ok((all, gateways))
    }
}

/// This process's share of the clients (all of them with one worker). `hold` is how a
/// `connections` worker reports and is released.
async fn run_worker(args: &Args, plan: Plan, hold: Hold) -> Report {
    let plan = Arc::new(plan);
    let end = plan.start_at_us + (args.duration() * 1e6) as u64;
    let mut report = match args.scenario {
        Scenario::Connections => scenarios::connections(plan, args.clients, hold).await,
        Scenario::Churn => scenarios::churn(plan, args.clients, args.rate, end).await,
        _ => engine::run(plan).await,
    };
    report.scenario = format!("{:?}", args.scenario).to_lowercase();
    report
}

/// A child worker: `CONNECTED n` on stdout once its clients are in (`connections`), and
/// released when stdin closes; its report as `REPORT {json}`.
async fn child_worker(args: &Args, worker: u64, start_at: u64, run_id: &str) -> Result<()> {
    let (tx, release) = watch::channel(false);
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(true);
    });
    let hold = Hold {
        connected: Box::new(|n| {
            println!("CONNECTED {n}");
            let _ = std::io::stdout().flush();
        }),
        release,
    };
    let report = run_worker(args, args.plan(run_id, worker, start_at)?, hold).await;
    println!("REPORT {}", serde_json::to_string(&report)?);
    Ok(())
}

/// Where the clients run: in this process, or in child processes of this program.
struct Workers {
    kind: Kind,
    /// Workers whose clients are all in (`connections`).
    connected: Arc<AtomicU64>,
    count: u64,
}

enum Kind {
    Inline {
        task: tokio::task::JoinHandle<Report>,
        release: watch::Sender<bool>,
    },
    Children {
        children: Vec<Child>,
        /// Closed to release a `connections` worker.
        stdins: Vec<ChildStdin>,
        /// One thread per child reading its stdout: `CONNECTED n`, then `REPORT {json}`.
        readers: Vec<std::thread::JoinHandle<Option<Report>>>,
    },
}

impl Workers {
    fn start(args: &Args, run_id: &str, start_at: u64) -> Result<Workers> {
        let connected = Arc::new(AtomicU64::new(0));
        let count = args.workers.max(1);
        if count == 1 {
            let (args2, plan) = (args.clone(), args.plan(run_id, 0, start_at)?);
            let (release, rx) = watch::channel(false);
            let told = connected.clone();
            let hold = Hold {
                connected: Box::new(move |_| {
                    told.fetch_add(1, Ordering::AcqRel);
                }),
                release: rx,
            };
            let task = tokio::spawn(async move { run_worker(&args2, plan, hold).await });
            return Ok(Workers {
                kind: Kind::Inline { task, release },
                connected,
                count,
            });
        }
        let stdin = args.scenario == Scenario::Connections;
        let (mut children, mut stdins, mut readers) = (Vec::new(), Vec::new(), Vec::new());
        for w in 0..count {
            let mut child = workers::spawn(w, start_at, run_id, stdin)?;
            stdins.extend(child.stdin.take());
            let out = child.stdout.take().context("a worker's stdout")?;
            let told = connected.clone();
            readers.push(std::thread::spawn(move || {
                let mut report = None;
                for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                    if line.starts_with("CONNECTED ") {
                        told.fetch_add(1, Ordering::AcqRel);
                    } else if let Some(json) = line.strip_prefix("REPORT ") {
                        report = serde_json::from_str(json).ok();
                    }
                }
                report
            }));
            children.push(child);
        }
        Ok(Workers {
            kind: Kind::Children {
                children,
                stdins,
                readers,
            },
            connected,
            count,
        })
    }

    /// The load generator's processes: this one and the workers.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![std::process::id()];
        if let Kind::Children { children, .. } = &self.kind {
            pids.extend(children.iter().map(Child::id));
        }
        pids
    }

    fn all_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) >= self.count
    }

    fn finished(&self) -> bool {
        match &self.kind {
            Kind::Inline { task, .. } => task.is_finished(),
            Kind::Children { readers, .. } => readers.iter().all(|r| r.is_finished()),
        }
    }

    /// Lets `connections` clients go.
    fn release(&mut self) {
        match &mut self.kind {
            Kind::Inline { release, .. } => {
                let _ = release.send(true);
            }
            Kind::Children { stdins, .. } => stdins.clear(),
        }
    }

    /// Every worker's report, merged.
    async fn report(mut self) -> Result<Report> {
        self.release();
        let mut report = Report::default();
        match self.kind {
            Kind::Inline { task, .. } => report.merge(&task.await?),
            Kind::Children {
                mut children,
                readers,
                ..
            } => {
                for reader in readers {
                    let got =
                        tokio::task::spawn_blocking(move || reader.join().ok().flatten()).await?;
                    match got {
                        Some(r) => report.merge(&r),
                        None => bail!("a worker ended without a report"),
                    }
                }
                for child in &mut children {
                    let _ = child.wait();
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

/// Samples every 100 ms until the run is over (or its workers are done, after an early
/// stop).
async fn sample_run(args: &Args, sampler: &mut Sampler, workers: &Workers) {
    let total = args.setup() + args.duration() + 4.0;
    let bar = progress_bar(args, total);
    let began = Instant::now();
    while began.elapsed().as_secs_f64() < total && !workers.finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bar.set_position((began.elapsed().as_secs_f64() * 10.0) as u64);
        sampler.tick();
    }
    bar.finish_and_clear();
}

/// `connections`: waits until every worker has its clients in (at most `--setup-secs`), lets
/// the system settle, then samples the held part: `--secs` between two samples.
async fn sample_held(args: &Args, sampler: &mut Sampler, workers: &Workers) -> Option<Held> {
    let bar = progress_bar(args, args.setup() + args.settle_secs + args.secs);
    let began = Instant::now();
    let tick = Duration::from_millis(100);
    while !workers.all_connected() && !workers.finished() {
        if began.elapsed().as_secs_f64() > args.setup() {
            eprintln!(
                "not every client was in after {:.0} s (--setup-secs); measuring anyway",
                args.setup()
            );
            break;
        }
        tokio::time::sleep(tick).await;
        bar.set_position((began.elapsed().as_secs_f64() * 10.0) as u64);
        sampler.tick();
    }
    let settle = Instant::now();
    while settle.elapsed().as_secs_f64() < args.settle_secs {
        tokio::time::sleep(tick).await;
        sampler.tick();
    }
    let a = sampler.tick();
    let hold = Instant::now();
    while hold.elapsed().as_secs_f64() < args.secs && !workers.finished() {
        tokio::time::sleep(tick).await;
        bar.set_position((began.elapsed().as_secs_f64() * 10.0) as u64);
        sampler.tick();
    }
    let b = sampler.tick();
    bar.finish_and_clear();
    Some(Held { a, b })
}

/// `--json` (the summary, the usage samples and the whole report) and `--plot`.
fn write_outputs(
    args: &Args,
    summary: &summary::Summary,
    usage: &Usage,
    sampler: &Sampler,
    report: &Report,
) -> Result<()> {
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "summary": summary,
            "usage": usage,
            "samples": sampler.ticks(),
            "report": report,
        });
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
        return child_worker(&args, worker, start_at, run_id).await;
    }
    let run_id = args
        .run_name
        .clone()
        .unwrap_or_else(|| format!("{:08x}", fastrand::u32(..)));
    let start_at = now_us() + (args.setup() * 1e6) as u64;
    let (pids, gateways) = args.system_pids()?;
    let mut sampler = Sampler::new(pids.clone(), gateways);
    let first = sampler.tick();
    let mut workers = Workers::start(&args, &run_id, start_at)?;
    sampler.set_generator(workers.pids());
    let held = if args.scenario == Scenario::Connections {
        let held = sample_held(&args, &mut sampler, &workers).await;
        workers.release();
        held
    } else {
        sample_run(&args, &mut sampler, &workers).await;
        None
    };
    let report = workers.report().await?;
    let last = sampler.tick();
    let usage = Usage {
        pids: pids.clone(),
        start: first.sut,
        end: last.sut,
        peak_rss_bytes: sampler.peak_rss(),
    };
    let started = match report.started_at_us {
        0 => start_at,
        t => t,
    };
    let summary = summary::summarize(
        &args,
        &report,
        (!pids.is_empty()).then_some(&sampler),
        started,
        held,
    );
    summary::print(&summary);
    write_outputs(&args, &summary, &usage, &sampler, &report)
}
