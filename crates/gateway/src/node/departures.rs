//! Places for disconnects' backend work: a disconnect's leaves, its saved recovery state, each
//! attempt at removing its user registry entry. One place is held while each runs.
//!
//! Why: when thousands of clients go at once (a load balancer restarted, a network cut, a
//! load test's end), all their commands at once queue in Redis past the command timeout and
//! fail: a teardown of 57,000 clients logged 88,018 failed leaves and 69,669 unsaved recovery
//! states on one node. [`AT_ONCE`] at a time finish instead.
//!
//! How long a disconnect waits for a place: as long as places keep coming free, since then
//! the work ahead of it is finishing, up to [`WAIT_MAX`]. It goes ahead without one when none
//! came free within the command timeout (the backend does not answer, and every place is
//! held by a command waiting to time out), so an outage still fails each disconnect within
//! seconds. Waiting only the command timeout, whatever happened meanwhile, let the first 256
//! finish and sent the other 18,000 of a node at once two seconds later, to fail as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Disconnects whose backend work runs at once on a node.
const AT_ONCE: usize = 256;

/// The longest a disconnect waits for a place, however steadily places come free.
const WAIT_MAX: Duration = Duration::from_secs(30);

/// A node's places (cheap to clone: a user registry entry keeps one for its removal).
#[derive(Debug, Clone)]
pub struct Departures {
    places: Arc<Semaphore>,
    /// How many places were ever given back: progress, for a waiter.
    freed: Arc<AtomicU64>,
    /// The command timeout: how long a waiter tolerates no place coming free.
    stall: Duration,
    /// [`WAIT_MAX`] (shorter in tests).
    wait_max: Duration,
}

/// One place, given back when dropped.
#[derive(Debug)]
pub struct Place {
    _permit: OwnedSemaphorePermit,
    freed: Arc<AtomicU64>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.freed.fetch_add(1, Ordering::AcqRel);
    }
}

impl Departures {
    /// [`AT_ONCE`] places; a waiter gives up after `stall` without one coming free.
    pub fn new(stall: Duration) -> Departures {
        Departures::with_places(AT_ONCE, stall, WAIT_MAX)
    }

    fn with_places(places: usize, stall: Duration, wait_max: Duration) -> Departures {
        Departures {
            places: Arc::new(Semaphore::new(places)),
            freed: Arc::new(AtomicU64::new(0)),
            stall,
            wait_max,
        }
    }

    /// A place, or `None` when none came free for `stall`, or none was given within
    /// [`WAIT_MAX`].
    pub async fn place(&self) -> Option<Place> {
        let give_up = Instant::now() + self.wait_max;
        // One request, kept across the checks: it keeps its turn in the queue.
        let acquire = self.places.clone().acquire_owned();
        tokio::pin!(acquire);
        loop {
            let freed = self.freed.load(Ordering::Acquire);
            let until = (Instant::now() + self.stall).min(give_up);
            match tokio::time::timeout_at(until, acquire.as_mut()).await {
                Ok(Ok(permit)) => {
                    return Some(Place {
                        _permit: permit,
                        freed: self.freed.clone(),
                    })
                }
                // Never closed; no place to give.
                Ok(Err(_)) => return None,
                Err(_) if Instant::now() >= give_up => return None,
                Err(_) if self.freed.load(Ordering::Acquire) == freed => return None,
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn a_waiter_gives_up_only_when_places_stop_coming_free() {
        let d = Departures::with_places(1, 300 * MS, WAIT_MAX);
        let first = d.place().await.unwrap();
        // Six waiters behind one place that frees up every 100 ms: the last one gets it
        // after 600 ms, twice the stall, because places kept coming free.
        let waiters: Vec<_> = (0..6)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move {
                    let place = d.place().await;
                    tokio::time::sleep(100 * MS).await;
                    place.is_some()
                })
            })
            .collect();
        tokio::time::sleep(100 * MS).await;
        drop(first);
        for w in waiters {
            assert!(w.await.unwrap(), "gave up while places came free");
        }
        // Held, and never given back: the next waiter goes without after the stall.
        let held = d.place().await.unwrap();
        let started = Instant::now();
        assert!(d.place().await.is_none());
        assert!(started.elapsed() >= 300 * MS);
        drop(held);
    }

    #[tokio::test]
    async fn no_waiter_waits_past_the_cap() {
        // Ten ahead, each holding the one place for a quarter of the stall: places keep
        // coming free, but the last in line would wait a second. It gives up at the cap.
        let d = Departures::with_places(1, 400 * MS, 500 * MS);
        for _ in 0..10 {
            let d = d.clone();
            tokio::spawn(async move {
                let _place = d.place().await;
                tokio::time::sleep(100 * MS).await;
            });
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        assert!(d.place().await.is_none());
        let waited = started.elapsed();
        assert!(waited >= 500 * MS && waited < 1_400 * MS, "{waited:?}");
    }
}
