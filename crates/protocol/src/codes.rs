//! Error codes carried in replies, and WebSocket close codes.

use serde::{Deserialize, Serialize};

/// The `code` of an error reply. The set is closed: clients may switch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    RoomExists,
    RoomFull,
    NotMember,
    RateLimited,
    CreationPaused,
    PayloadTooLarge,
    /// Not applied: the backend refused or could not be reached. Safe to retry.
    Unavailable,
    /// The outcome is unknown (the backend did not answer in time): retry with the same
    /// `msgId`, which can never apply twice.
    Timeout,
    Internal,
    /// The app's publish proxy refused the message (its own code is in `reason`).
    Rejected,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::RoomExists,
        ErrorCode::RoomFull,
        ErrorCode::NotMember,
        ErrorCode::RateLimited,
        ErrorCode::CreationPaused,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RoomExists => "room_exists",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::NotMember => "not_member",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::CreationPaused => "creation_paused",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Rejected => "rejected",
        }
    }
}

/// WebSocket close codes that roomcast sends. RFC 6455 codes plus the 4000 range for policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode;

impl CloseCode {
    /// The client closed, or we echo its close.
    pub const NORMAL: u16 = 1000;
    /// The peer violated the WebSocket framing rules.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame held invalid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A (reassembled) message went over `--max-message-bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server is restarting (drain): reconnect elsewhere.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The server hit an unexpected condition (a connection task failed).
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Try again later: the app's connect proxy could not answer (`--connect-proxy-fail closed`).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Too many protocol errors in a row (10 undecodable or invalid frames).
    pub const TOO_MANY_ERRORS: u16 = 4000;
    /// Bad, missing or expired token.
    pub const BAD_TOKEN: u16 = 4001;
    /// Disconnected by the server API (`POST /api/users/{user}/disconnect`).
    pub const KICKED: u16 = 4003;
    /// Connection-rate policy (too many connections from this address).
    pub const CONNECTION_POLICY: u16 = 4008;
    /// Slow consumer: the outbound queue went over its byte limit.
    pub const SLOW_CONSUMER: u16 = 4009;
    /// The client did not answer heartbeats in time.
    pub const HEARTBEAT_TIMEOUT: u16 = 4010;
    /// The token's `exp` passed without a `refresh`.
    pub const TOKEN_EXPIRED: u16 = 4011;
    /// The app's connect proxy refused the connection; the reason is its `code: message`.
    pub const APP_REFUSED: u16 = 4012;

    /// Whether a peer may send this code in a Close frame (RFC 6455 section 7.4, plus the IANA
    /// registered 1012–1014).
    pub fn is_valid_from_peer(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}
