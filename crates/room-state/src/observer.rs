//! What a backend tells its observer (the gateway's metrics) about the remote commands it
//! runs. The set of commands is closed and known up front, so an observer can create its
//! series at zero and keep one child per command instead of looking labels up per call.
//!
//! Only the Redis Cluster backend runs commands; the embedded one never reports any.

/// A command a backend runs against its store: each is one Lua script of the Redis backend,
/// but for [`Command::EphemeralPublish`], a plain SPUBLISH.
///
/// The discriminants are the positions in [`Command::ALL`], so `command as usize` indexes an
/// array built from it (the test below holds them to that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Create,
    Join,
    Leave,
    Publish,
    Members,
    History,
    Info,
    Close,
    WindowAcquire,
    WindowRelease,
    BucketTake,
    RecordCreation,
    ClaimDeadNodes,
    Heartbeat,
    ResetEpoch,
    UserAdd,
    UserRemove,
    /// A publish to an ephemeral room: one SPUBLISH, no script.
    EphemeralPublish,
    /// The archiver reads a room's messages after its cursor.
    ArchiveRead,
    /// The archiver moves a room's cursor after a commit.
    ArchiveAdvance,
    /// A lease (an archive shard, retention) taken or renewed.
    Lease,
    /// A sleeping room brought back from the archive.
    Wake,
    /// The sleep sweep reads a room.
    SleepState,
    /// The sleep sweep removes a room saved to the archive.
    SleepForget,
    /// The sleep sweep drops a room's due entry from the rooms index.
    IndexForget,
    /// Expired rooms taken out of the active-rooms index (once each, cluster-wide).
    ExpireRooms,
}

impl Command {
    /// Every command, in discriminant order.
    pub const ALL: [Command; 26] = [
        Command::Create,
        Command::Join,
        Command::Leave,
        Command::Publish,
        Command::Members,
        Command::History,
        Command::Info,
        Command::Close,
        Command::WindowAcquire,
        Command::WindowRelease,
        Command::BucketTake,
        Command::RecordCreation,
        Command::ClaimDeadNodes,
        Command::Heartbeat,
        Command::ResetEpoch,
        Command::UserAdd,
        Command::UserRemove,
        Command::EphemeralPublish,
        Command::ArchiveRead,
        Command::ArchiveAdvance,
        Command::Lease,
        Command::Wake,
        Command::SleepState,
        Command::SleepForget,
        Command::IndexForget,
        Command::ExpireRooms,
    ];

    /// The command's name: the `command` label of the Redis metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Create => "create",
            Command::Join => "join",
            Command::Leave => "leave",
            Command::Publish => "publish",
            Command::Members => "members",
            Command::History => "history",
            Command::Info => "info",
            Command::Close => "close",
            Command::WindowAcquire => "window_acquire",
            Command::WindowRelease => "window_release",
            Command::BucketTake => "bucket_take",
            Command::RecordCreation => "record_creation",
            Command::ClaimDeadNodes => "claim_dead_nodes",
            Command::Heartbeat => "heartbeat",
            Command::ResetEpoch => "reset_epoch",
            Command::UserAdd => "user_add",
            Command::UserRemove => "user_remove",
            Command::EphemeralPublish => "ephemeral_publish",
            Command::ArchiveRead => "archive_read",
            Command::ArchiveAdvance => "archive_advance",
            Command::Lease => "lease",
            Command::Wake => "wake",
            Command::SleepState => "sleep_state",
            Command::SleepForget => "sleep_forget",
            Command::IndexForget => "index_forget",
            Command::ExpireRooms => "expire_rooms",
        }
    }
}

/// Told about every command a backend runs (for metrics). Called on the hot path: keep
/// implementations to a histogram observation and a counter increment.
pub trait CommandObserver: Send + Sync {
    fn observe(&self, command: Command, seconds: f64, failed: bool);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_are_positions() {
        for (i, c) in Command::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.as_str());
        }
    }
}
