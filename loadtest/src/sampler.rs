//! The system under test and the load generator, sampled from /proc every 100 ms during a run:
//! CPU seconds and RSS of the whole system under test (`--pids`), of its gateways alone
//! (`--gateway-pids`), and CPU seconds of the load generator's own processes. CPU over any
//! window (a `max` step) is interpolated between samples.

use roomcast_loadtest::now_us;
use roomcast_loadtest::procs::{self, Sample};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Tick {
    /// Unix µs.
    pub at_us: u64,
    /// Gateways and Redis.
    pub sut: Sample,
    /// The gateways alone.
    pub gateways: Sample,
    /// The load generator (this process and its workers).
    pub generator: Sample,
}

/// `connections`: the samples at the start and at the end of the held part.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub a: Tick,
    pub b: Tick,
}

/// CPU seconds over a window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub sut: f64,
    pub gateways: f64,
    pub generator: f64,
}

pub struct Sampler {
    sut: Vec<u32>,
    gateways: Vec<u32>,
    generator: Vec<u32>,
    /// Per pid, the CPU seconds last seen: a process that is gone (a worker that finished)
    /// keeps counting what it used.
    last_cpu: HashMap<u32, f64>,
    ticks: Vec<Tick>,
    peak_rss: u64,
}

impl Sampler {
    pub fn new(sut: Vec<u32>, gateways: Vec<u32>) -> Sampler {
        Sampler {
            sut,
            gateways,
            generator: vec![std::process::id()],
            last_cpu: HashMap::new(),
            ticks: Vec::new(),
            peak_rss: 0,
        }
    }

    pub fn set_generator(&mut self, pids: Vec<u32>) {
        self.generator = pids;
    }

    pub fn gateway_pids(&self) -> &[u32] {
        &self.gateways
    }

    pub fn sut_pids(&self) -> &[u32] {
        &self.sut
    }

    pub fn generator_pids(&self) -> &[u32] {
        &self.generator
    }

    fn group(&mut self, pids: &[u32]) -> Sample {
        let mut total = Sample::default();
        for &pid in pids {
            let s = procs::sample(&[pid]);
            let cpu = self.last_cpu.entry(pid).or_default();
            *cpu = cpu.max(s.cpu_seconds);
            total.cpu_seconds += *cpu;
            total.rss_bytes += s.rss_bytes;
        }
        total
    }

    /// Samples every group now.
    pub fn tick(&mut self) -> Tick {
        let (sut, gateways, generator) = (
            self.sut.clone(),
            self.gateways.clone(),
            self.generator.clone(),
        );
        let t = Tick {
            at_us: now_us(),
            sut: self.group(&sut),
            gateways: self.group(&gateways),
            generator: self.group(&generator),
        };
        self.peak_rss = self.peak_rss.max(t.sut.rss_bytes);
        self.ticks.push(t);
        t
    }

    pub fn ticks(&self) -> &[Tick] {
        &self.ticks
    }

    pub fn peak_rss(&self) -> u64 {
        self.peak_rss
    }

    /// `f` of the samples at `t`, interpolated (clamped to the first and last sample).
    fn at(&self, t: u64, f: impl Fn(&Tick) -> f64) -> Option<f64> {
        let i = self.ticks.partition_point(|k| k.at_us < t);
        if i == 0 {
            return self.ticks.first().map(&f);
        }
        let Some(b) = self.ticks.get(i) else {
            return self.ticks.last().map(&f);
        };
        let a = &self.ticks[i - 1];
        let w = (t - a.at_us) as f64 / (b.at_us - a.at_us).max(1) as f64;
        Some(f(a) + w * (f(b) - f(a)))
    }

    /// CPU seconds of each group between `t0` and `t1` (Unix µs).
    pub fn cpu(&self, t0: u64, t1: u64) -> Option<Cpu> {
        let d = |f: fn(&Tick) -> f64| Some(self.at(t1, f)? - self.at(t0, f)?);
        Some(Cpu {
            sut: d(|k| k.sut.cpu_seconds)?,
            gateways: d(|k| k.gateways.cpu_seconds)?,
            generator: d(|k| k.generator.cpu_seconds)?,
        })
    }
}
