//! The traffic monitor: turns room creations per minute into `normal`, `high` or `critical`,
//! and decides whether room creation is paused.

use parking_lot::RwLock;
use protocol::{TrafficLevel, TrafficStatus};

/// The sliding window of the creation rate.
pub const WINDOW_MS: u64 = 60_000;

#[derive(Debug)]
pub struct TrafficMonitor {
    high: u64,
    critical: u64,
    cap: u64,
    current: RwLock<TrafficStatus>,
}

impl TrafficMonitor {
    pub fn new(high: u64, critical: u64, cap: u64) -> TrafficMonitor {
        TrafficMonitor {
            high,
            critical,
            cap,
            current: RwLock::new(TrafficStatus {
                level: TrafficLevel::Normal,
                active_rooms: 0,
                active_connections: 0,
                room_creation_enabled: true,
                message: None,
                retry_after: None,
                timestamp: 0,
            }),
        }
    }

    /// The status for these inputs. `buckets` are `(start ms, creations)`, oldest first,
    /// covering the last minute.
    pub fn compute(
        &self,
        buckets: &[(u64, u64)],
        active_rooms: u64,
        active_connections: u64,
        now_ms: u64,
    ) -> TrafficStatus {
        let count: u64 = buckets.iter().map(|(_, c)| c).sum();
        let level = if count >= self.critical {
            TrafficLevel::Critical
        } else if count >= self.high {
            TrafficLevel::High
        } else {
            TrafficLevel::Normal
        };
        let pause_at = self.critical.min(self.cap);
        let enabled = count < pause_at;
        // Paused until enough old creations slide out of the window to get below the line.
        let retry_after = (!enabled).then(|| {
            let mut remaining = count;
            for (start, c) in buckets {
                remaining = remaining.saturating_sub(*c);
                if remaining < pause_at {
                    return (start + WINDOW_MS).saturating_sub(now_ms).max(1);
                }
            }
            WINDOW_MS
        });
        let message = match (level, enabled) {
            (_, false) => Some("Room creation is paused because of very high traffic".to_string()),
            (TrafficLevel::High, true) => {
                Some("High traffic: room creation may be paused soon".to_string())
            }
            _ => None,
        };
        TrafficStatus {
            level,
            active_rooms,
            active_connections,
            room_creation_enabled: enabled,
            message,
            retry_after,
            timestamp: now_ms,
        }
    }

    pub fn current(&self) -> TrafficStatus {
        self.current.read().clone()
    }

    /// Stores a new status. Returns whether clients must hear of it: the level or whether
    /// creation is enabled changed.
    pub fn update(&self, status: TrafficStatus) -> bool {
        let mut current = self.current.write();
        let changed = current.level != status.level
            || current.room_creation_enabled != status.room_creation_enabled;
        *current = status;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_pause() {
        let m = TrafficMonitor::new(3, 5, 10);
        let now = 100_000;
        let s = m.compute(&[(50_000, 2)], 1, 1, now);
        assert_eq!(
            (s.level, s.room_creation_enabled),
            (TrafficLevel::Normal, true)
        );
        let s = m.compute(&[(50_000, 3)], 1, 1, now);
        assert_eq!(
            (s.level, s.room_creation_enabled),
            (TrafficLevel::High, true)
        );
        assert!(s.message.is_some());
        let s = m.compute(&[(50_000, 2), (60_000, 3)], 1, 1, now);
        assert_eq!(
            (s.level, s.room_creation_enabled),
            (TrafficLevel::Critical, false)
        );
        // Removing the 2 at 50 s brings the count below 5: that happens at 110 s.
        assert_eq!(s.retry_after, Some(10_000));
    }

    #[test]
    fn cap_pauses_below_critical() {
        let m = TrafficMonitor::new(1, 100, 4);
        let s = m.compute(&[(90_000, 4)], 0, 0, 100_000);
        assert_eq!(
            (s.level, s.room_creation_enabled),
            (TrafficLevel::High, false)
        );
        assert_eq!(s.retry_after, Some(50_000));
    }

    #[test]
    fn update_reports_changes() {
        let m = TrafficMonitor::new(1, 2, 3);
        assert!(!m.update(m.compute(&[], 0, 0, 1)));
        assert!(m.update(m.compute(&[(0, 1)], 0, 0, 1)));
        assert!(!m.update(m.compute(&[(0, 1)], 5, 5, 2)));
    }
}
