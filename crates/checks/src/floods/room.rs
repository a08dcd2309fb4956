//! A huge room: `--members` clients join one room through every gateway (round-robin), while
//! `--churners` join and leave it rapidly, leave by disconnecting (a clean close, or a TCP
//! reset without a word), and reconnect. At the end, the `presence` op asked through every
//! gateway must list exactly the connections that are in: every member, and each churner's
//! connection if its last act was a join.

use super::connect::{open_retrying, Admission};
use super::measure::{mib, RssSampler};
use super::outcome::Outcome;
use super::peer::{conn_ids, join, peer_with, OnFrame, Peer};
use super::{dial, lock, pick, Common};
use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use roomcast_loadtest::now_us;
use roomcast_loadtest::proto::{json_reply_error, json_reply_id};
use roomcast_loadtest::ws::Conn;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Members that join and stay.
    #[arg(long, default_value_t = 2000)]
    pub members: usize,
    /// Clients that join, leave, disconnect and reconnect for `--churn-secs`.
    #[arg(long, default_value_t = 60)]
    pub churners: usize,
    #[arg(long, default_value_t = 10.0)]
    pub churn_secs: f64,
    /// Members connecting and joining at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long presence may take to agree with the expected set after the churn.
    #[arg(long, default_value_t = 20.0)]
    pub settle_secs: f64,
}

/// A request on a connection that only this task reads. Only its reply is looked at, and
/// only an error reply is parsed: a join reply lists every member of the huge room, and the
/// room's presence events go by in their thousands.
async fn call(conn: &mut Conn, op: &str, room: &str) -> Result<Option<String>> {
    let id = conn.send(op, json!({ "room": room })).await?;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match conn.stream.next().await {
                Some(Ok(Message::Text(t))) if json_reply_id(t.as_str()) == Some(id) => {
                    return Ok(json_reply_error(t.as_str()));
                }
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("{e}"),
                None => bail!("socket ended"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no reply to {op}"))?
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct ChurnOps {
    joins: u64,
    leaves: u64,
    resets: u64,
    clean_closes: u64,
    errors: BTreeMap<String, u64>,
}

impl ChurnOps {
    fn merge(&mut self, o: ChurnOps) {
        self.joins += o.joins;
        self.leaves += o.leaves;
        self.resets += o.resets;
        self.clean_closes += o.clean_closes;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// Counts a join or leave; true if it succeeded.
    fn done(&mut self, result: Option<String>, join: bool) -> bool {
        match result {
            None if join => self.joins += 1,
            None => self.leaves += 1,
            Some(code) => {
                *self.errors.entry(code).or_default() += 1;
                return false;
            }
        }
        true
    }
}

/// One churner: returns its last connection (a peer, so that it keeps reading), whether it
/// is in the room, and what it did.
async fn churner(
    base: String,
    source: Option<IpAddr>,
    token: String,
    room: String,
    until: u64,
) -> Result<(Peer, bool, ChurnOps)> {
    let mut ops = ChurnOps::default();
    let mut adm = Admission::default();
    let deadline = until + 60_000_000;
    let how = dial(source);
    let (mut conn, mut welcome) = open_retrying(&base, &token, &how, deadline, &mut adm).await?;
    let mut inside = false;
    while now_us() < until {
        let roll = fastrand::f64();
        if !inside {
            inside = ops.done(call(&mut conn, "join", &room).await?, true);
        } else if roll < 0.6 {
            inside = !ops.done(call(&mut conn, "leave", &room).await?, false);
        } else {
            if roll < 0.8 {
                // Gone without a word: a TCP reset.
                if let Some(ws) = conn.into_ws() {
                    let _ = ws.get_ref().set_zero_linger();
                }
                ops.resets += 1;
            } else {
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.sink.close()).await;
                ops.clean_closes += 1;
            }
            (conn, welcome) = open_retrying(&base, &token, &how, deadline, &mut adm).await?;
            inside = false;
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(..20))).await;
    }
    Ok((Peer::start(conn, &welcome, None), inside, ops))
}

/// What a member knows of the room's presence: the member list of its first reply that has
/// one (create_room or join), with every presence event applied in order. Events that arrive
/// before that reply are kept and applied on top of its list (the gateway does not hold
/// presence events back until the join reply, as it does messages).
#[derive(Default)]
struct Followed {
    set: Option<BTreeSet<String>>,
    early: Vec<(bool, String)>,
}

fn followed_set(f: &Mutex<Followed>) -> BTreeSet<String> {
    lock(f).set.clone().unwrap_or_default()
}

/// A frame hook that keeps a [`Followed`] up to date.
fn follow(state: Arc<Mutex<Followed>>, room: String) -> OnFrame {
    Arc::new(move |t: &str| {
        if t.starts_with("{\"event\":\"presence\"") {
            let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
            let Some(conn) = v["connId"].as_str() else {
                return;
            };
            if v["room"] != room.as_str() {
                return;
            }
            let join = match v["action"].as_str() {
                Some("join") => true,
                Some("leave") => false,
                _ => return,
            };
            let mut f = lock(&state);
            match f.set.as_mut() {
                Some(s) if join => {
                    s.insert(conn.to_string());
                }
                Some(s) => {
                    s.remove(conn);
                }
                None => f.early.push((join, conn.to_string())),
            }
        } else if t.starts_with("{\"id\":") && t.contains("\"members\":[") {
            let mut f = lock(&state);
            if f.set.is_none() {
                let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
                let mut s: BTreeSet<String> = conn_ids(&v["ok"]).collect();
                for (join, conn) in f.early.drain(..) {
                    if join {
                        s.insert(conn);
                    } else {
                        s.remove(&conn);
                    }
                }
                f.set = Some(s);
            }
        }
    })
}

/// Who was in at the end, as the test itself knows it.
struct Joined {
    members: Vec<Peer>,
    /// Each churner's last connection, and whether it is in the room.
    churners: Vec<(Peer, bool)>,
    ops: ChurnOps,
    failures: BTreeMap<String, u64>,
    /// Unix µs: the first member created the room; the join wave ended; the churn ended.
    started: u64,
    joined_at: u64,
    churned_at: u64,
}

impl Joined {
    fn expected(&self) -> BTreeSet<String> {
        let mut expected: BTreeSet<String> =
            self.members.iter().map(|p| p.conn_id.clone()).collect();
        expected.extend(
            (self.churners.iter())
                .filter(|(_, inside)| *inside)
                .map(|(p, _)| p.conn_id.clone()),
        );
        expected
    }
}

/// Presence as the gateways tell it.
struct Views {
    /// The `presence` op through each gateway, last round.
    asked: Vec<BTreeSet<String>>,
    /// When every gateway agreed with the expected set, and after how many rounds.
    agreed_at: Option<u64>,
    rounds: usize,
    /// What the members that follow the events (one per gateway) know.
    followed: Vec<BTreeSet<String>>,
}

pub async fn run(args: Args) -> Result<()> {
    let run = super::run_id();
    let c = &args.common;
    let nodes = c.url.len();
    let room = format!("huge-{run}");
    let sampler = RssSampler::start(c.pids.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = sampler.now();
    // Members 0..nodes (one per gateway) also follow presence from their join reply's member
    // list and the presence events after it.
    let watchers: Vec<Arc<Mutex<Followed>>> = (0..nodes).map(|_| Arc::default()).collect();
    let joined = join_all(&args, &run, &room, &watchers).await?;
    let expected = joined.expected();
    let views = presence_views(&args, &joined, &room, &watchers, &expected).await?;
    let rss_peak = sampler.peak(joined.started, now_us());
    sampler.stop().await;

    let mut o = Outcome::new("huge room");
    table(&mut o, &args, &joined, &views, &expected);
    o.row(
        "gateways' RSS (sum) before / peak",
        format!("{:.1} / {:.1} MiB", mib(rss_before), mib(rss_peak)),
    );
    values(&mut o, &joined, &views, &expected);
    o.val("rss_before", rss_before);
    o.val("rss_peak", rss_peak);
    bounds(&mut o, &args, &joined, &views, &expected);
    for p in joined
        .members
        .iter()
        .chain(joined.churners.iter().map(|(p, _)| p))
    {
        p.close().await;
    }
    print_differences(&joined, &views, &expected);
    o.finish(c.json.as_deref())
}

/// The first member creates the room; then the churners start and the members join with
/// bounded concurrency, all at once.
async fn join_all(
    args: &Args,
    run: &str,
    room: &str,
    watchers: &[Arc<Mutex<Followed>>],
) -> Result<Joined> {
    let c = &args.common;
    let sources = Arc::new(c.sources()?);
    let first = peer_with(
        &c.url[0],
        pick(&sources, 0),
        &c.token(&format!("huge-{run}-m0")),
        None,
        Some(follow(watchers[0].clone(), room.to_string())),
    )
    .await?;
    first.ok("create_room", json!({ "room": room })).await?;
    let started = now_us();
    let churn_until = started + (args.churn_secs * 1e6) as u64;
    let churn_tasks: Vec<_> = (0..args.churners)
        .map(|k| {
            tokio::spawn(churner(
                c.url[k % c.url.len()].clone(),
                pick(&sources, 50_000 + k),
                c.token(&format!("huge-{run}-c{k}")),
                room.to_string(),
                churn_until,
            ))
        })
        .collect();
    let failures: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut members = vec![first];
    for t in start_members(args, run, room, watchers, &sources, &failures) {
        if let Ok(Some(p)) = t.await {
            members.push(p);
        }
    }
    let joined_at = now_us();
    let (mut churners, mut ops) = (Vec::new(), ChurnOps::default());
    for t in churn_tasks {
        match t.await {
            Ok(Ok((p, inside, o))) => {
                ops.merge(o);
                churners.push((p, inside));
            }
            Ok(Err(e)) => *lock(&failures).entry(format!("churner: {e}")).or_default() += 1,
            Err(e) => *lock(&failures).entry(format!("churner: {e}")).or_default() += 1,
        }
    }
    let failures = lock(&failures).clone();
    Ok(Joined {
        members,
        churners,
        ops,
        failures,
        started,
        joined_at,
        churned_at: now_us(),
    })
}

/// Members 1.. connect and join, `--concurrency` at a time; failures are counted by error.
fn start_members(
    args: &Args,
    run: &str,
    room: &str,
    watchers: &[Arc<Mutex<Followed>>],
    sources: &Arc<Vec<IpAddr>>,
    failures: &Arc<Mutex<BTreeMap<String, u64>>>,
) -> Vec<JoinHandle<Option<Peer>>> {
    let c = &args.common;
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::new();
    for i in 1..args.members {
        let (sem, failures, sources) = (sem.clone(), failures.clone(), sources.clone());
        let base = c.url[i % c.url.len()].clone();
        let token = c.token(&format!("huge-{run}-m{i}"));
        let room = room.to_string();
        let on_frame = watchers.get(i).map(|w| follow(w.clone(), room.clone()));
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.ok()?;
            let res: Result<Peer> = async {
                let p = peer_with(&base, pick(&sources, i), &token, None, on_frame).await?;
                join(&p, &room).await?;
                Ok(p)
            }
            .await;
            match res {
                Ok(p) => Some(p),
                Err(e) => {
                    *lock(&failures).entry(e.to_string()).or_default() += 1;
                    None
                }
            }
        }));
    }
    tasks
}

/// Asks `presence` through every gateway (member n asks gateway n) every 250 ms until all
/// agree with `expected` or the settle time is over; then gives the events' view the rest of
/// that time too.
async fn presence_views(
    args: &Args,
    joined: &Joined,
    room: &str,
    watchers: &[Arc<Mutex<Followed>>],
    expected: &BTreeSet<String>,
) -> Result<Views> {
    let askers: Vec<&Peer> = (0..args.common.url.len())
        .filter_map(|n| joined.members.get(n))
        .collect();
    let settle_deadline = now_us() + (args.settle_secs * 1e6) as u64;
    let mut views = Views {
        asked: Vec::new(),
        agreed_at: None,
        rounds: 0,
        followed: Vec::new(),
    };
    loop {
        views.rounds += 1;
        views.asked.clear();
        for a in &askers {
            let v = a.ok("presence", json!({ "room": room })).await?;
            views.asked.push(conn_ids(&v).collect());
        }
        if views.asked.iter().all(|s| s == expected) {
            views.agreed_at = Some(now_us());
            break;
        }
        if now_us() > settle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    views.followed = loop {
        let f: Vec<BTreeSet<String>> = watchers.iter().map(|w| followed_set(w)).collect();
        if f.iter().all(|s| s == expected) || now_us() > settle_deadline {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    Ok(views)
}

/// Entries of `sets` missing from `expected`, and extra ones, summed.
fn differences(sets: &[BTreeSet<String>], expected: &BTreeSet<String>) -> (usize, usize) {
    let missing = sets.iter().map(|s| expected.difference(s).count()).sum();
    let extra = sets.iter().map(|s| s.difference(expected).count()).sum();
    (missing, extra)
}

fn secs(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e6
}

fn table(o: &mut Outcome, args: &Args, j: &Joined, v: &Views, expected: &BTreeSet<String>) {
    o.row("gateways", args.common.url.len());
    o.row(
        "members that joined (of)",
        format!("{} ({})", j.members.len(), args.members),
    );
    let wave = secs(j.started, j.joined_at);
    o.row(
        "join wave: members connected and joined in",
        format!(
            "{wave:.1} s ({:.0} joins/s)",
            j.members.len() as f64 / wave.max(1e-9)
        ),
    );
    o.row(
        "churners, churn time",
        format!(
            "{}, {} s (wave and churn both over {:.1} s after the wave began)",
            args.churners,
            args.churn_secs,
            secs(j.started, j.churned_at)
        ),
    );
    let ops = &j.ops;
    o.row(
        "churn: joins / leaves / resets / clean closes / errors",
        format!(
            "{} / {} / {} / {} / {:?}",
            ops.joins, ops.leaves, ops.resets, ops.clean_closes, ops.errors
        ),
    );
    o.row(
        "churners in the room at the end",
        j.churners.iter().filter(|(_, i)| *i).count(),
    );
    o.row("expected presence", expected.len());
    let sizes: Vec<usize> = v.asked.iter().map(BTreeSet::len).collect();
    o.row("presence size per gateway", format!("{sizes:?}"));
    let (missing, extra) = differences(&v.asked, expected);
    o.row(
        "missing / extra entries (all gateways, last round)",
        format!("{missing} / {extra}"),
    );
    o.row(
        "presence agreed after the churn in",
        v.agreed_at
            .map_or("never (within the settle time)".to_string(), |t| {
                format!("{:.2} s ({} round(s))", secs(j.churned_at, t), v.rounds)
            }),
    );
    let (f_missing, f_extra) = differences(&v.followed, expected);
    o.row(
        "presence followed from events (join reply + presence events), per gateway",
        format!(
            "{:?}; missing / extra {f_missing} / {f_extra}",
            v.followed.iter().map(BTreeSet::len).collect::<Vec<_>>()
        ),
    );
    member_rows(o, j);
}

/// Members still connected, closes by code, events received, failures.
fn member_rows(o: &mut Outcome, j: &Joined) {
    let open = j.members.iter().filter(|p| p.is_open()).count();
    let mut closes: BTreeMap<u64, u64> = BTreeMap::new();
    for p in &j.members {
        let code = p.stats.close_code.load(Ordering::Acquire);
        if code != 0 {
            *closes.entry(code).or_default() += 1;
        }
    }
    o.row(
        "members still connected / closes by code",
        format!("{open} / {closes:?}"),
    );
    let events = events(j);
    o.row(
        "events received by members (presence, traffic)",
        format!(
            "{events} ({:.0} per member)",
            events as f64 / j.members.len().max(1) as f64
        ),
    );
    o.row("failures", format!("{:?}", j.failures));
}

fn events(j: &Joined) -> u64 {
    (j.members.iter())
        .map(|p| p.stats.other_events.load(Ordering::Relaxed))
        .sum()
}

fn values(o: &mut Outcome, j: &Joined, v: &Views, expected: &BTreeSet<String>) {
    let (missing, extra) = differences(&v.asked, expected);
    let (f_missing, f_extra) = differences(&v.followed, expected);
    o.val("members", j.members.len());
    o.val("churn", &j.ops);
    o.val("expected", expected.len());
    o.val(
        "presence_sizes",
        v.asked.iter().map(BTreeSet::len).collect::<Vec<_>>(),
    );
    o.val("missing", missing);
    o.val("extra", extra);
    o.val(
        "agreed_after_secs",
        v.agreed_at.map(|t| secs(j.churned_at, t)),
    );
    o.val("join_wave_secs", secs(j.started, j.joined_at));
    o.val("events", events(j));
    o.val("followed_missing", f_missing);
    o.val("followed_extra", f_extra);
}

fn bounds(o: &mut Outcome, args: &Args, j: &Joined, v: &Views, expected: &BTreeSet<String>) {
    o.check(
        format!("all {} members joined", args.members),
        j.members.len() == args.members && j.failures.is_empty(),
    );
    let ops = &j.ops;
    o.check(
        "the churn did something (joins, leaves, resets, clean closes all > 0) without errors",
        ops.joins > 0
            && ops.leaves > 0
            && ops.resets > 0
            && ops.clean_closes > 0
            && ops.errors.is_empty(),
    );
    o.check(
        format!(
            "presence on every gateway is exactly the {} connections that are in",
            expected.len()
        ),
        v.agreed_at.is_some(),
    );
    o.check(
        "presence followed through events agrees too, on every gateway",
        v.followed.iter().all(|s| s == expected),
    );
    o.check(
        "every member is still connected",
        j.members.iter().all(|p| p.is_open()),
    );
}

/// Who is missing or extra, for the report (m<i>: member, c<k>: churner).
fn print_differences(j: &Joined, v: &Views, expected: &BTreeSet<String>) {
    let mut who: BTreeMap<&str, String> = BTreeMap::new();
    for (i, p) in j.members.iter().enumerate() {
        who.insert(p.conn_id.as_str(), format!("m{i}"));
    }
    for (k, (p, _)) in j.churners.iter().enumerate() {
        who.insert(p.conn_id.as_str(), format!("c{k}"));
    }
    let name = |c: &String| format!("{c} ({})", who.get(c.as_str()).map_or("?", |s| s.as_str()));
    for (view, sets) in [("presence op", &v.asked), ("followed events", &v.followed)] {
        for (n, s) in sets.iter().enumerate() {
            let miss: Vec<String> = expected.difference(s).take(10).map(name).collect();
            let ext: Vec<String> = s.difference(expected).take(10).map(name).collect();
            if !miss.is_empty() || !ext.is_empty() {
                println!("{view}, gateway {n} (asker m{n}): missing {miss:?}, extra {ext:?}");
            }
        }
    }
}
