//! A huge room: `--members` clients join one room through every gateway (round-robin), while
//! `--churners` join and leave it rapidly, leave by disconnecting (a clean close, or a TCP
//! reset without a word), and reconnect. At the end, the `presence` op asked through every
//! gateway must list exactly the connections that are in: every member, and each churner's
//! connection if its last act was a join.

use super::{
    join, lock, mib, open_retrying, peer_with, pick, Admission, Common, Outcome, Peer, RssSampler,
    Ws,
};
use crate::engine::now_us;
use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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

/// A request on a socket that only this task reads; events on the way are skipped.
async fn call(ws: &mut Ws, id: u64, op: &str, room: &str) -> Result<Option<String>> {
    let req = json!({"id": id, "op": op, "room": room}).to_string();
    ws.send(Message::text(req)).await?;
    let prefix = format!("{{\"id\":{id},");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str().starts_with(&prefix) => {
                    return Ok(super::reply_error(t.as_str()));
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

/// One churner: returns its last connection (a peer, so that it keeps reading), whether it
/// is in the room, and what it did.
async fn churner(
    base: String,
    source: Option<std::net::IpAddr>,
    token: String,
    room: String,
    until: u64,
) -> Result<(Peer, bool, ChurnOps)> {
    let mut ops = ChurnOps::default();
    let mut adm = Admission::default();
    let deadline = until + 60_000_000;
    let (mut ws, mut welcome) = open_retrying(&base, source, &token, deadline, &mut adm).await?;
    let mut inside = false;
    let mut id = 0u64;
    while now_us() < until {
        id += 1;
        let roll = fastrand::f64();
        if !inside {
            match call(&mut ws, id, "join", &room).await? {
                None => {
                    inside = true;
                    ops.joins += 1;
                }
                Some(code) => *ops.errors.entry(code).or_default() += 1,
            }
        } else if roll < 0.6 {
            match call(&mut ws, id, "leave", &room).await? {
                None => {
                    inside = false;
                    ops.leaves += 1;
                }
                Some(code) => *ops.errors.entry(code).or_default() += 1,
            }
        } else {
            if roll < 0.8 {
                // Gone without a word: a TCP reset.
                let _ = ws.get_ref().set_zero_linger();
                drop(ws);
                ops.resets += 1;
            } else {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                ops.clean_closes += 1;
            }
            (ws, welcome) = open_retrying(&base, source, &token, deadline, &mut adm).await?;
            inside = false;
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(..20))).await;
    }
    Ok((Peer::start(ws, &welcome, None), inside, ops))
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
fn follow(state: Arc<Mutex<Followed>>, room: String) -> super::OnFrame {
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
                let mut s = conn_ids(&v["ok"]);
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

fn conn_ids(presence: &Value) -> BTreeSet<String> {
    presence["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["connId"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn run(args: Args) -> Result<()> {
    let run = super::run_id();
    let c = &args.common;
    let nodes = c.url.len();
    let sources = Arc::new(c.sources()?);
    let room = format!("huge-{run}");
    let sampler = RssSampler::start(c.pids.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = sampler.now();

    // Members 0..nodes (one per gateway) also follow presence from their join reply's member
    // list and the presence events after it.
    let watchers: Vec<Arc<Mutex<Followed>>> = (0..nodes).map(|_| Arc::default()).collect();
    let first = peer_with(
        &c.url[0],
        pick(&sources, 0),
        &c.token(&format!("huge-{run}-m0")),
        None,
        Some(follow(watchers[0].clone(), room.clone())),
    )
    .await?;
    first.ok("create_room", json!({ "room": room })).await?;
    let started = now_us();

    // Churners start with the join wave.
    let churn_until = started + (args.churn_secs * 1e6) as u64;
    let mut churn_tasks = Vec::new();
    for k in 0..args.churners {
        churn_tasks.push(tokio::spawn(churner(
            c.url[k % nodes].clone(),
            pick(&sources, 50_000 + k),
            c.token(&format!("huge-{run}-c{k}")),
            room.clone(),
            churn_until,
        )));
    }

    // The members.
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let failures: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 1..args.members {
        let (sem, failures, sources) = (sem.clone(), failures.clone(), sources.clone());
        let base = c.url[i % nodes].clone();
        let token = c.token(&format!("huge-{run}-m{i}"));
        let room = room.clone();
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
    let mut members = vec![first];
    for t in tasks {
        if let Ok(Some(p)) = t.await {
            members.push(p);
        }
    }
    let joined_at = now_us();
    let mut churners = Vec::new();
    let mut ops = ChurnOps::default();
    for t in churn_tasks {
        match t.await {
            Ok(Ok((p, inside, o))) => {
                ops.joins += o.joins;
                ops.leaves += o.leaves;
                ops.resets += o.resets;
                ops.clean_closes += o.clean_closes;
                for (k, v) in o.errors {
                    *ops.errors.entry(k).or_default() += v;
                }
                churners.push((p, inside));
            }
            Ok(Err(e)) => *lock(&failures).entry(format!("churner: {e}")).or_default() += 1,
            Err(e) => *lock(&failures).entry(format!("churner: {e}")).or_default() += 1,
        }
    }
    let churned_at = now_us();

    // Presence through every gateway must be exactly who is in.
    let mut expected: BTreeSet<String> = members.iter().map(|p| p.conn_id.clone()).collect();
    expected.extend(
        churners
            .iter()
            .filter(|(_, inside)| *inside)
            .map(|(p, _)| p.conn_id.clone()),
    );
    let askers: Vec<&Peer> = (0..nodes).filter_map(|n| members.get(n)).collect();
    let settle_deadline = now_us() + (args.settle_secs * 1e6) as u64;
    let mut last: Vec<BTreeSet<String>> = Vec::new();
    let mut agreed_at = None;
    let mut rounds = 0;
    loop {
        rounds += 1;
        last.clear();
        for a in &askers {
            let v = a.ok("presence", json!({ "room": room })).await?;
            last.push(conn_ids(&v));
        }
        if last.iter().all(|s| *s == expected) {
            agreed_at = Some(now_us());
            break;
        }
        if now_us() > settle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // And the view from the events: give them the settle time too.
    let followed: Vec<BTreeSet<String>> = loop {
        let f: Vec<BTreeSet<String>> = watchers.iter().map(|w| followed_set(w)).collect();
        if f.iter().all(|s| *s == expected) || now_us() > settle_deadline {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let rss_peak = sampler.peak(started, now_us());
    let _ = sampler.stop().await;
    let members_open = members.iter().filter(|p| p.is_open()).count();
    let mut closes: BTreeMap<u64, u64> = BTreeMap::new();
    for p in &members {
        let code = p.stats.close_code.load(Ordering::Acquire);
        if code != 0 {
            *closes.entry(code).or_default() += 1;
        }
    }
    let events: u64 = members
        .iter()
        .map(|p| p.stats.other_events.load(Ordering::Relaxed))
        .sum();
    let failures = lock(&failures).clone();

    let mut o = Outcome::new("huge room");
    o.row("gateways", nodes);
    o.row(
        "members that joined (of)",
        format!("{} ({})", members.len(), args.members),
    );
    o.row(
        "join wave: members connected and joined in",
        format!(
            "{:.1} s ({:.0} joins/s)",
            joined_at.saturating_sub(started) as f64 / 1e6,
            members.len() as f64 / (joined_at.saturating_sub(started) as f64 / 1e6).max(1e-9)
        ),
    );
    o.row(
        "churners, churn time",
        format!(
            "{}, {} s (wave and churn both over {:.1} s after the wave began)",
            args.churners,
            args.churn_secs,
            churned_at.saturating_sub(started) as f64 / 1e6
        ),
    );
    o.row(
        "churn: joins / leaves / resets / clean closes / errors",
        format!(
            "{} / {} / {} / {} / {:?}",
            ops.joins, ops.leaves, ops.resets, ops.clean_closes, ops.errors
        ),
    );
    o.row(
        "churners in the room at the end",
        churners.iter().filter(|(_, i)| *i).count(),
    );
    o.row("expected presence", expected.len());
    let sizes: Vec<usize> = last.iter().map(BTreeSet::len).collect();
    o.row("presence size per gateway", format!("{sizes:?}"));
    let (mut missing, mut extra) = (0, 0);
    for s in &last {
        missing += expected.difference(s).count();
        extra += s.difference(&expected).count();
    }
    o.row(
        "missing / extra entries (all gateways, last round)",
        format!("{missing} / {extra}"),
    );
    o.row(
        "presence agreed after the churn in",
        agreed_at.map_or("never (within the settle time)".to_string(), |t| {
            format!(
                "{:.2} s ({rounds} round(s))",
                t.saturating_sub(churned_at) as f64 / 1e6
            )
        }),
    );
    let (mut f_missing, mut f_extra) = (0, 0);
    for s in &followed {
        f_missing += expected.difference(s).count();
        f_extra += s.difference(&expected).count();
    }
    o.row(
        "presence followed from events (join reply + presence events), per gateway",
        format!(
            "{:?}; missing / extra {f_missing} / {f_extra}",
            followed.iter().map(BTreeSet::len).collect::<Vec<_>>()
        ),
    );
    o.row(
        "members still connected / closes by code",
        format!("{members_open} / {closes:?}"),
    );
    o.row(
        "events received by members (presence, traffic)",
        format!(
            "{events} ({:.0} per member)",
            events as f64 / members.len().max(1) as f64
        ),
    );
    o.row("failures", format!("{failures:?}"));
    o.row(
        "gateways' RSS (sum) before / peak",
        format!("{:.1} / {:.1} MiB", mib(rss_before), mib(rss_peak)),
    );
    o.val("members", members.len());
    o.val("churn", &ops);
    o.val("expected", expected.len());
    o.val("presence_sizes", &sizes);
    o.val("missing", missing);
    o.val("extra", extra);
    o.val(
        "agreed_after_secs",
        agreed_at.map(|t| t.saturating_sub(churned_at) as f64 / 1e6),
    );
    o.val(
        "join_wave_secs",
        joined_at.saturating_sub(started) as f64 / 1e6,
    );
    o.val("events", events);
    o.val("followed_missing", f_missing);
    o.val("followed_extra", f_extra);
    o.val("rss_before", rss_before);
    o.val("rss_peak", rss_peak);

    o.check(
        format!("all {} members joined", args.members),
        members.len() == args.members && failures.is_empty(),
    );
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
        agreed_at.is_some(),
    );
    o.check(
        "presence followed through events agrees too, on every gateway",
        followed.iter().all(|s| *s == expected),
    );
    o.check(
        "every member is still connected",
        members_open == members.len(),
    );
    for p in members.iter().chain(churners.iter().map(|(p, _)| p)) {
        p.close().await;
    }
    // Who is missing or extra, for the report (m<i>: member, c<k>: churner).
    let mut who: BTreeMap<&str, String> = BTreeMap::new();
    for (i, p) in members.iter().enumerate() {
        who.insert(p.conn_id.as_str(), format!("m{i}"));
    }
    for (k, (p, _)) in churners.iter().enumerate() {
        who.insert(p.conn_id.as_str(), format!("c{k}"));
    }
    let name = |c: &String| format!("{c} ({})", who.get(c.as_str()).map_or("?", |s| s.as_str()));
    for (view, sets) in [("presence op", &last), ("followed events", &followed)] {
        for (n, s) in sets.iter().enumerate() {
            let miss: Vec<String> = expected.difference(s).take(10).map(name).collect();
            let ext: Vec<String> = s.difference(&expected).take(10).map(name).collect();
            if !miss.is_empty() || !ext.is_empty() {
                println!("{view}, gateway {n} (asker m{n}): missing {miss:?}, extra {ext:?}");
            }
        }
    }
    o.finish(c.json.as_deref())
}
