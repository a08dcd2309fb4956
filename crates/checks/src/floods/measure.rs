//! What the checks measure on the side: the gateways' resident memory over time, and latency
//! percentiles as table cells and JSON.

use super::lock;
use hdrhistogram::Histogram;
use roomcast_loadtest::{now_us, procs};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Resident memory of `pids` (bytes), sampled every 100 ms until stopped.
pub struct RssSampler {
    samples: Arc<Mutex<Vec<(u64, u64)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let samples: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !st2.load(Ordering::Acquire) {
                let rss = procs::sample(&pids).rss_bytes;
                lock(&s2).push((now_us(), rss));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        RssSampler {
            samples,
            stop,
            task,
        }
    }

    pub fn now(&self) -> u64 {
        lock(&self.samples).last().map_or(0, |s| s.1)
    }

    /// The highest sample between two instants (µs).
    pub fn peak(&self, from: u64, to: u64) -> u64 {
        lock(&self.samples)
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|s| s.1)
            .max()
            .unwrap_or(0)
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// p50/p99/max of a latency histogram in µs, as milliseconds.
pub fn pcts(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64 / 10.0).round() / 100.0;
    if h.is_empty() {
        return json!({ "n": 0 });
    }
    json!({
        "n": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

pub fn pcts_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    )
}

/// Offsets seen by one receiver in its room: how many arrived, and the holes and repeats.
#[derive(Debug, Default)]
pub struct OffsetWatch {
    pub last: u64,
    pub received: u64,
    pub gaps: u64,
    pub repeats: u64,
    /// The room was empty when the receiver joined: offsets before the first one it gets
    /// (from 1) count as gaps too.
    pub from_first: bool,
}

impl OffsetWatch {
    pub fn on(&mut self, offset: u64) {
        self.received += 1;
        if offset <= self.last {
            self.repeats += 1;
        } else {
            if (self.from_first || self.last != 0) && offset != self.last + 1 {
                self.gaps += offset - self.last - 1;
            }
            self.last = offset;
        }
    }
}
