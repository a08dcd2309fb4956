//! Pings without a timer or a task per connection: WebSocket pings (native, echo) and
//! Engine.IO pings (Socket.IO) alike.
//!
//! Every connection with pings ([`super::WriterConfig::with_pings`],
//! [`super::WriterConfig::with_engine_io_pings`]) registers its [`Beat`]: the time the client
//! last answered, and a flag its writer task waits on. One ticker per ping schedule (an
//! interval and timeout pair: `--ping-interval`/`--pong-timeout`, and the `--socketio-*` pair)
//! visits the connections: each in turn, every ping interval, it either flags a ping, or,
//! when the client has not answered (below), flags the heartbeat timeout (close 4010). The
//! writer does the writing, in the connection's kind of ping; the ticker only sets a flag and
//! wakes it.
//!
//! A timeout needs two things: silence for longer than ping interval + pong timeout (what
//! `--pong-timeout` promises), and a ping the writer really sent, unanswered for longer than
//! the pong timeout. The second is what keeps a late ticker (the process stopped, a starved
//! machine) or a late writer from closing clients that answered every ping they got: lateness
//! only ever delays a timeout.
//!
//! The ticker cuts the interval into [`SLICES`] ticks and keeps the connections in as many
//! buckets: a connection goes into the bucket of the second tick after it registered and is
//! first visited a whole interval after that tick, so its first ping comes between one
//! interval and one interval plus two ticks after it opened (per-connection timers pinged at
//! exactly one interval), and then one every interval. The second tick, not the next: a late
//! ticker makes up lateness under a tick, so the next tick may be one that was due before the
//! connection registered, and a ping counted from it came up to a tick early (a CI run saw a
//! first ping under one interval after the open). Each tick wakes only its bucket's
//! connections.
//!
//! The ticker is an OS thread, not a Tokio task: it must outlive any one runtime (the tests
//! run many nodes, on many runtimes, in one process) and it only sets flags and wakes tasks,
//! which works from any thread. With no connection it sleeps until one registers.
//!
//! Per connection this costs one `Arc<Beat>` (48 bytes plus the `Arc`'s 16) and a 16-byte
//! bucket entry, instead of a Tokio `Interval` (a timer entry in the runtime's wheel, polled
//! by its own task every interval).

use super::writer::{Heartbeat, PingKind};
use futures_util::task::AtomicWaker;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

/// Ticks per ping interval (and buckets).
const SLICES: u64 = 8;

/// Pongs queued at most per connection. A client that pings faster than it reads gets no
/// more: its further pings go unanswered until the writer has taken some (RFC 6455 section
/// 5.5.3 lets an endpoint answer only some of several pings), so that its pings cannot grow
/// our memory. Well above what a client that reads has queued (a burst of pings in one read).
const MAX_QUEUED_PONGS: u32 = 64;

const PING: u8 = 1;
const TIMEOUT: u8 = 2;

/// What the ticker asks of a connection's writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send a Ping.
    Ping,
    /// The client was silent too long: close with 4010.
    Timeout,
}

/// Milliseconds since the first time anyone asked, on the monotonic clock.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One connection's heartbeat: when the client was last heard from, and what is due; and the
/// pongs its reader queued that its writer has not taken yet. Every connection has one,
/// shared by its reader and writer; only those with pings are in a ticker's wheel.
#[derive(Debug)]
pub struct Beat {
    /// [`now_ms`] when the client last answered: any frame read (WebSocket pings), or a pong
    /// packet the driver reported (Engine.IO pings).
    last_seen: AtomicU64,
    /// [`now_ms`] when the writer sent the oldest ping not answered yet (a frame read at or
    /// after it answers it); 0 before the first ping. Written by the writer only.
    pinged: AtomicU64,
    /// `PING` and/or `TIMEOUT`, set by the ticker, taken by the writer.
    due: AtomicU8,
    /// Pongs in the outbound queue.
    pongs: AtomicU32,
    /// The writer task, while it waits.
    waker: AtomicWaker,
}

impl Beat {
    pub fn new() -> Beat {
        Beat {
            last_seen: AtomicU64::new(now_ms()),
            pinged: AtomicU64::new(0),
            due: AtomicU8::new(0),
            pongs: AtomicU32::new(0),
            waker: AtomicWaker::new(),
        }
    }

    /// The reader heard from the client.
    pub fn seen(&self) {
        self.last_seen.store(now_ms(), Ordering::Relaxed);
    }

    /// The reader may queue a pong: `false` when [`MAX_QUEUED_PONGS`] are queued already.
    /// Only the reader adds, so the check and the add need not be one step.
    pub fn may_queue_pong(&self) -> bool {
        if self.pongs.load(Ordering::Acquire) >= MAX_QUEUED_PONGS {
            return false;
        }
        self.pongs.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The writer took a pong from the queue.
    pub fn pong_taken(&self) {
        // Never below zero, even for a pong queued without `may_queue_pong` (none is).
        let _ = self
            .pongs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// The writer sent a ping. Only the first of a run of unanswered pings is kept: a client
    /// that answers none is timed out from that one, not from the latest.
    pub fn pinged(&self) {
        let pinged = self.pinged.load(Ordering::Relaxed);
        if self.last_seen.load(Ordering::Relaxed) >= pinged {
            self.pinged.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Waits until the ticker asks for something. Cancel-safe: a request that arrives while
    /// nobody waits is kept for the next call.
    pub async fn due(&self) -> Due {
        poll_fn(|cx| {
            if let Some(due) = self.take() {
                return Poll::Ready(due);
            }
            self.waker.register(cx.waker());
            match self.take() {
                Some(due) => Poll::Ready(due),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn take(&self) -> Option<Due> {
        match self.due.swap(0, Ordering::AcqRel) {
            0 => None,
            flags if flags & TIMEOUT != 0 => Some(Due::Timeout),
            _ => Some(Due::Ping),
        }
    }

    fn signal(&self, due: Due) {
        let flag = match due {
            Due::Ping => PING,
            Due::Timeout => TIMEOUT,
        };
        self.due.fetch_or(flag, Ordering::AcqRel);
        self.waker.wake();
    }
}

/// The limits a visit judges by, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Ping interval + pong timeout: the silence a timeout needs at least.
    silence: u64,
    /// How long a sent ping may go unanswered.
    pong: u64,
}

/// A driver's handle on its connection's heartbeat, for pings that only the driver knows
/// the answer to (Engine.IO's pong packet).
#[derive(Debug, Clone)]
pub struct Liveness(pub(super) Arc<Beat>);

impl Liveness {
    /// The client answered a ping.
    pub fn heard(&self) {
        self.0.seen();
    }
}

/// What a visit finds: a client silent for longer than `limits.silence` whose oldest
/// unanswered ping went out more than `limits.pong` ago is timed out; any other gets a ping.
fn judge(now_ms: u64, last_seen_ms: u64, pinged_ms: u64, limits: Limits) -> Due {
    let unanswered = pinged_ms > last_seen_ms;
    if unanswered
        && now_ms.saturating_sub(pinged_ms) > limits.pong
        && now_ms.saturating_sub(last_seen_ms) > limits.silence
    {
        Due::Timeout
    } else {
        Due::Ping
    }
}

/// A registered connection.
struct Entry {
    beat: Weak<Beat>,
    /// The first tick that visits it: one whole interval after it registered.
    from: u64,
}

struct Wheel {
    buckets: [Vec<Entry>; SLICES as usize],
    /// Ticks done.
    ticks: u64,
    /// Entries in all buckets (some may be connections that ended since).
    len: usize,
}

/// The ticker of one ping schedule and the connections it visits.
struct Schedule {
    heartbeat: Heartbeat,
    wheel: Mutex<Wheel>,
    /// Wakes the ticker when the first connection registers.
    wake: Condvar,
}

/// Every schedule in the process (one per distinct `--ping-interval`/`--pong-timeout`).
static SCHEDULES: Mutex<Vec<Arc<Schedule>>> = parking_lot::const_mutex(Vec::new());

/// Registers a connection with the ticker of its schedule (started on first use); it stays
/// registered until its `Beat` is dropped or it times out.
pub fn register(heartbeat: Heartbeat, beat: &Arc<Beat>) {
    // The kind of ping is the writer's business: one ticker serves both kinds.
    let schedule = schedule(Heartbeat {
        kind: PingKind::WebSocket,
        ..heartbeat
    });
    let mut wheel = schedule.wheel.lock();
    place(&mut wheel, beat);
    if wheel.len == 1 {
        schedule.wake.notify_one();
    }
}

/// Puts a connection that registers now in its bucket: that of the second tick from now,
/// first visited a whole interval after it (see the module's doc).
fn place(wheel: &mut Wheel, beat: &Arc<Beat>) {
    let first = wheel.ticks + 2;
    wheel.buckets[(first % SLICES) as usize].push(Entry {
        beat: Arc::downgrade(beat),
        from: first + SLICES,
    });
    wheel.len += 1;
}

fn schedule(heartbeat: Heartbeat) -> Arc<Schedule> {
    let mut all = SCHEDULES.lock();
    if let Some(s) = all.iter().find(|s| s.heartbeat == heartbeat) {
        return s.clone();
    }
    let schedule = Arc::new(Schedule {
        heartbeat,
        wheel: Mutex::new(Wheel {
            buckets: Default::default(),
            ticks: 0,
            len: 0,
        }),
        wake: Condvar::new(),
    });
    let ticker = schedule.clone();
    match std::thread::Builder::new()
        .name("roomcast-pings".into())
        .spawn(move || run(&ticker))
    {
        // Kept only with its ticker running; otherwise the next connection tries again.
        Ok(_) => all.push(schedule.clone()),
        Err(e) => tracing::error!(error = %e, "cannot start the ping ticker"),
    }
    schedule
}

/// The ticker: forever, one bucket per tick.
fn run(schedule: &Schedule) {
    let hb = schedule.heartbeat;
    let tick = (hb.ping_interval / SLICES as u32).max(Duration::from_millis(1));
    let limits = Limits {
        silence: (hb.ping_interval + hb.pong_timeout).as_millis() as u64,
        pong: hb.pong_timeout.as_millis() as u64,
    };
    let mut due = Vec::new();
    let mut wheel = schedule.wheel.lock();
    let mut next = Instant::now() + tick;
    loop {
        if wheel.len == 0 {
            schedule.wake.wait(&mut wheel);
            next = Instant::now() + tick;
            continue;
        }
        if Instant::now() < next {
            schedule.wake.wait_until(&mut wheel, next);
            continue;
        }
        visit(&mut wheel, now_ms(), limits, &mut due);
        // Woken outside the lock, so that registrations never wait for a bucket's wake-ups.
        MutexGuard::unlocked(&mut wheel, || {
            for (beat, what) in due.drain(..) {
                Beat::signal(&beat, what);
            }
            // Sized for a bucket once; not kept at a crowd's size.
            due.shrink_to(1024);
        });
        next += tick;
        // Behind (the process was stopped, say): carry on from now rather than catch up.
        let now = Instant::now();
        if next <= now {
            next = now + tick;
        }
    }
}

/// One tick: the next bucket's connections that are due get a ping or, when silent too long,
/// a timeout (and leave the wheel); connections that ended leave it too.
fn visit(wheel: &mut Wheel, now_ms: u64, limits: Limits, due: &mut Vec<(Arc<Beat>, Due)>) {
    wheel.ticks += 1;
    let tick = wheel.ticks;
    let bucket = &mut wheel.buckets[(tick % SLICES) as usize];
    let before = bucket.len();
    bucket.retain(|entry| {
        let Some(beat) = entry.beat.upgrade() else {
            return false;
        };
        if tick < entry.from {
            return true;
        }
        let what = judge(
            now_ms,
            beat.last_seen.load(Ordering::Relaxed),
            beat.pinged.load(Ordering::Relaxed),
            limits,
        );
        due.push((beat, what));
        what == Due::Ping
    });
    // A bucket that emptied after a crowd left gives its memory back.
    if bucket.capacity() > 64 && bucket.len() < bucket.capacity() / 4 {
        bucket.shrink_to(bucket.len() * 2);
    }
    wheel.len -= before - bucket.len();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::future::Future;
    use std::task::{Context, Wake, Waker};

    const LIMITS: Limits = Limits {
        silence: 45,
        pong: 20,
    };

    #[test]
    fn silence_after_an_unanswered_ping_times_out() {
        // Pinged at 1010, silent since 1000.
        assert_eq!(judge(1000, 1000, 1010, LIMITS), Due::Ping);
        assert_eq!(judge(1045, 1000, 1010, LIMITS), Due::Ping);
        assert_eq!(judge(1046, 1000, 1010, LIMITS), Due::Timeout);
        // The ping is too recent: the client still has time to answer it.
        assert_eq!(judge(1046, 1000, 1030, LIMITS), Due::Ping);
        assert_eq!(judge(1051, 1000, 1030, LIMITS), Due::Timeout);
        // A frame read after the visit began is not silence.
        assert_eq!(judge(1000, 1001, 990, LIMITS), Due::Ping);
        // No ping yet, or the last one answered (in the same millisecond, too): however long
        // ago that was (a ticker that comes late), the client gets a ping, not a close.
        assert_eq!(judge(90_000, 1000, 0, LIMITS), Due::Ping);
        assert_eq!(judge(90_000, 1000, 990, LIMITS), Due::Ping);
        assert_eq!(judge(90_000, 1000, 1000, LIMITS), Due::Ping);
    }

    #[test]
    fn only_the_first_of_unanswered_pings_counts() {
        let beat = Beat::new();
        std::thread::sleep(Duration::from_millis(3));
        // Nothing to answer yet: a ping starts the wait.
        beat.pinged();
        let first = beat.pinged.load(Ordering::Relaxed);
        assert!(first > 0);
        // Silent since before it: the next ping does not move it.
        beat.last_seen.store(0, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(3));
        beat.pinged();
        assert_eq!(beat.pinged.load(Ordering::Relaxed), first);
        // Answered: the next ping does.
        beat.seen();
        std::thread::sleep(Duration::from_millis(3));
        beat.pinged();
        assert!(beat.pinged.load(Ordering::Relaxed) > first);
    }

    #[test]
    fn queued_pongs_are_capped() {
        let beat = Beat::new();
        for _ in 0..MAX_QUEUED_PONGS {
            assert!(beat.may_queue_pong());
        }
        assert!(!beat.may_queue_pong());
        beat.pong_taken();
        assert!(beat.may_queue_pong());
        assert!(!beat.may_queue_pong());
        for _ in 0..2 * MAX_QUEUED_PONGS {
            beat.pong_taken();
        }
        assert_eq!(beat.pongs.load(Ordering::Relaxed), 0);
    }

    fn wheel() -> Wheel {
        Wheel {
            buckets: Default::default(),
            ticks: 0,
            len: 0,
        }
    }

    #[test]
    fn each_connection_is_visited_once_per_interval_from_one_interval_on() {
        let mut w = wheel();
        let mut due = Vec::new();
        let a = Arc::new(Beat::new());
        place(&mut w, &a);
        w.ticks += 3;
        let b = Arc::new(Beat::new());
        place(&mut w, &b);
        let mut visits = (Vec::new(), Vec::new());
        for _ in 0..4 * SLICES {
            visit(&mut w, 0, LIMITS, &mut due);
            for (beat, what) in due.drain(..) {
                assert_eq!(what, Due::Ping);
                if Arc::ptr_eq(&beat, &a) {
                    visits.0.push(w.ticks);
                } else {
                    visits.1.push(w.ticks);
                }
            }
        }
        // `a` registered before tick 1, `b` before tick 4: each first visited a whole
        // interval (SLICES ticks) after the tick after that one, then every interval.
        assert_eq!(
            visits.0,
            [2 + SLICES, 2 + 2 * SLICES, 2 + 3 * SLICES, 2 + 4 * SLICES]
        );
        assert_eq!(visits.1, [5 + SLICES, 5 + 2 * SLICES, 5 + 3 * SLICES]);
        assert_eq!(w.len, 2);
    }

    #[test]
    fn timed_out_and_ended_connections_leave_the_wheel() {
        let mut w = wheel();
        let mut due = Vec::new();
        let silent = Arc::new(Beat::new());
        let gone = Arc::new(Beat::new());
        place(&mut w, &silent);
        place(&mut w, &gone);
        drop(gone);
        let seen = silent.last_seen.load(Ordering::Relaxed);
        // Pinged once, never answered.
        silent.pinged.store(seen + 1, Ordering::Relaxed);
        for _ in 0..SLICES + 2 {
            visit(&mut w, seen + 10_000, LIMITS, &mut due);
        }
        assert_eq!(due.len(), 1);
        assert!(Arc::ptr_eq(&due[0].0, &silent));
        assert_eq!(due[0].1, Due::Timeout);
        assert_eq!(w.len, 0);
    }

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_writer_is_woken_and_a_timeout_wins_over_a_ping() {
        let beat = Beat::new();
        let count = Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = Box::pin(beat.due());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        beat.signal(Due::Ping);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Due::Ping));
        // Flags set while nobody waits are kept; a timeout wins.
        beat.signal(Due::Ping);
        beat.signal(Due::Timeout);
        let mut fut = Box::pin(beat.due());
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Due::Timeout));
        assert!(Box::pin(beat.due()).as_mut().poll(&mut cx).is_pending());
    }

    #[test]
    fn a_ticker_pings_registered_connections() {
        let hb = Heartbeat {
            ping_interval: Duration::from_millis(80),
            pong_timeout: Duration::from_millis(10_000),
            kind: PingKind::WebSocket,
        };
        let beat = Arc::new(Beat::new());
        register(hb, &beat);
        let started = Instant::now();
        let count = Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut fut = Box::pin(beat.due());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        while count.0.load(Ordering::SeqCst) == 0 {
            assert!(started.elapsed() < Duration::from_secs(5), "no ping");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(started.elapsed() >= Duration::from_millis(80));
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Due::Ping));
        // The same schedule is shared.
        assert!(Arc::ptr_eq(&schedule(hb), &schedule(hb)));
    }
}
