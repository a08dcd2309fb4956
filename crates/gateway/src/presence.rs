//! Presence announcements: a member joined or left a room, told to every node that has
//! members there. Best effort: presence is also answered from the backend on request, so a
//! lost announcement leaves no lasting error.

use fan_out::FanOut;
use protocol::envelope::Envelope;
use protocol::frame::PresenceAction;

pub async fn announce(
    fanout: &dyn FanOut,
    room: String,
    action: PresenceAction,
    user: String,
    conn_id: String,
) {
    let what = match action {
        PresenceAction::Join => "presence join",
        PresenceAction::Leave => "presence leave",
    };
    let envelope = Envelope::Presence {
        room,
        action,
        user,
        conn_id,
    };
    if let Err(e) = fanout.publish(envelope).await {
        tracing::warn!(error = %e, "{what} not published");
    }
}
