//! The traffic monitor's public face: `traffic_status` and `GET /status` share this body.

use serde::{Deserialize, Serialize};

/// How hot the cluster is, from room creations per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficLevel {
    Normal,
    High,
    Critical,
}

impl TrafficLevel {
    /// The level as a number for the metrics gauge: 0 normal, 1 high, 2 critical.
    pub fn as_number(self) -> i64 {
        match self {
            TrafficLevel::Normal => 0,
            TrafficLevel::High => 1,
            TrafficLevel::Critical => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TrafficLevel::Normal => "normal",
            TrafficLevel::High => "high",
            TrafficLevel::Critical => "critical",
        }
    }
}

/// `{level, activeRooms, activeConnections, roomCreationEnabled, message?, retryAfter?, timestamp}`.
///
/// `retryAfter` is in milliseconds, like every other duration in the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficStatus {
    pub level: TrafficLevel,
    pub active_rooms: u64,
    pub active_connections: u64,
    pub room_creation_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    pub timestamp: u64,
}
