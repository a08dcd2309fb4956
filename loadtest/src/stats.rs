//! What a run measures, in a form that worker processes send to the parent and that merges.

use hdrhistogram::Histogram;
pub use roomcast_loadtest::histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A histogram as (value, count) pairs, for shipping between processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Hist(pub Vec<(u64, u64)>);

impl Hist {
    pub fn from(h: &Histogram<u64>) -> Hist {
        Hist(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn to_histogram(&self) -> Histogram<u64> {
        let mut h = histogram();
        for (v, c) in &self.0 {
            let _ = h.record_n((*v).max(1), *c);
        }
        h
    }

    pub fn merge(&mut self, other: &Hist) {
        let mut h = self.to_histogram();
        let _ = h.add(other.to_histogram());
        *self = Hist::from(&h);
    }
}

/// Per-phase results of a publishing run (fanout, broadcast, max).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phase {
    /// Target publish rate (messages per second, all publishers).
    pub rate: f64,
    pub seconds: f64,
    /// Publishes sent, and deliveries expected (publishes × members of the room).
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    /// A (publisher, seq) delivered more than once to one receiver.
    pub duplicates: u64,
    pub out_of_order: u64,
    pub publish_errors: u64,
    /// Publish replies `ok` with `duplicate: true` (publishes with a `msgId` are never
    /// retried, so any is a server taking two messages for one).
    #[serde(default)]
    pub duplicate_acks: u64,
    /// Publish-to-receive latency over every delivery.
    pub latency: Hist,
    /// Per message (publisher, seq): the latency to its last receiver, in µs (broadcast).
    pub last_member: Vec<(u64, u64)>,
    /// Not run in full: `max` stopped early, before or during this step.
    #[serde(default)]
    pub cut: bool,
}

impl Phase {
    pub fn merge(&mut self, o: &Phase) {
        self.rate = self.rate.max(o.rate);
        self.seconds = self.seconds.max(o.seconds);
        self.sent += o.sent;
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.publish_errors += o.publish_errors;
        self.duplicate_acks += o.duplicate_acks;
        self.cut |= o.cut;
        self.latency.merge(&o.latency);
        if !o.last_member.is_empty() {
            self.merge_last_member(o.last_member.iter().copied());
        }
    }

    /// Per message, the later of the two last-member latencies.
    pub fn merge_last_member(&mut self, other: impl IntoIterator<Item = (u64, u64)>) {
        let mut all: BTreeMap<u64, u64> = self.last_member.iter().copied().collect();
        for (k, v) in other {
            let e = all.entry(k).or_default();
            *e = (*e).max(v);
        }
        self.last_member = all.into_iter().collect();
    }
}

/// Everything one process measured. Merged by summing, except where noted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub protocol: String,
    pub clients: u64,
    pub connect_failures: u64,
    pub connect_seconds: f64,
    /// `connections`: clients the server closed before they were released.
    #[serde(default)]
    pub dropped_while_held: u64,
    pub phases: Vec<Phase>,
    /// Deliveries per second of the run (index = second since start).
    pub timeline_delivered: Vec<u64>,
    /// p50 and p99 latency (µs) per second, from the merged per-second histograms.
    pub timeline: Vec<Hist>,
    /// Churn: ops done, and error codes seen.
    pub ops: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub levels_seen: Vec<String>,
    pub elapsed_seconds: f64,
    /// When publishing started (Unix µs; 0: not a publishing run).
    #[serde(default)]
    pub started_at_us: u64,
}

impl Report {
    pub fn merge(&mut self, o: &Report) {
        if self.scenario.is_empty() {
            self.scenario = o.scenario.clone();
            self.protocol = o.protocol.clone();
        }
        self.clients += o.clients;
        self.connect_failures += o.connect_failures;
        self.dropped_while_held += o.dropped_while_held;
        self.connect_seconds = self.connect_seconds.max(o.connect_seconds);
        self.elapsed_seconds = self.elapsed_seconds.max(o.elapsed_seconds);
        self.started_at_us = self.started_at_us.max(o.started_at_us);
        if self.phases.len() < o.phases.len() {
            self.phases.resize(o.phases.len(), Phase::default());
        }
        for (a, b) in self.phases.iter_mut().zip(&o.phases) {
            a.merge(b);
        }
        if self.timeline_delivered.len() < o.timeline_delivered.len() {
            self.timeline_delivered
                .resize(o.timeline_delivered.len(), 0);
            self.timeline.resize(o.timeline.len(), Hist::default());
        }
        for (i, n) in o.timeline_delivered.iter().enumerate() {
            self.timeline_delivered[i] += n;
        }
        for (i, h) in o.timeline.iter().enumerate() {
            self.timeline[i].merge(h);
        }
        for (k, v) in &o.ops {
            *self.ops.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for l in &o.levels_seen {
            if !self.levels_seen.contains(l) {
                self.levels_seen.push(l.clone());
            }
        }
    }
}
