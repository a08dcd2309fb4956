//! Socket.IO encodings added for recovery and conformance: the CONNECT reply with a pid, the
//! message offset, binary events and acks.

use protocol::codec::encode;
use protocol::frame::{Event, Publication};
use protocol::socketio::{
    binary, connect_ok_with_pid, decode, parse_recovery_offset, recovery_offset, Kind,
};
use protocol::{Data, Format};
use serde_json::json;

#[test]
fn connect_reply_with_pid() {
    assert_eq!(
        connect_ok_with_pid("/", "s1", "p1"),
        r#"40{"sid":"s1","pid":"p1"}"#
    );
    assert_eq!(
        connect_ok_with_pid("/admin", "s1", "p1"),
        r#"40/admin,{"sid":"s1","pid":"p1"}"#
    );
}

#[test]
fn recovery_offsets_round_trip_and_reject_junk() {
    let o = recovery_offset("game:1", "3fa2c1e0b9d4", 17);
    assert_eq!(o, "17:3fa2c1e0b9d4:game:1");
    assert_eq!(
        parse_recovery_offset(&o),
        Some(("game:1", "3fa2c1e0b9d4", 17))
    );
    for junk in [
        "", "x", "1", "1:", "1:e:", "a:e:r", ":e:r", "-1:e:r", "1::r",
    ] {
        assert_eq!(parse_recovery_offset(junk), None, "{junk:?}");
    }
}

#[test]
fn a_message_carries_its_offset_as_the_last_argument() {
    let p = Publication {
        room: "lobby".into(),
        offset: 5,
        epoch: "abc".into(),
        from: "ann".into(),
        data: Data::from_value(&json!("hi")).expect("data"),
        ts: 1,
    };
    let bytes = encode(&Event::Message(&p), Format::SocketIo).expect("encode");
    let text = std::str::from_utf8(&bytes).expect("utf8");
    let args: serde_json::Value = serde_json::from_str(&text[2..]).expect("json");
    assert_eq!(args[0], "message");
    assert_eq!(args[1]["data"], "hi");
    assert_eq!(args[2], "5:abc:lobby");
}

#[test]
fn binary_events_and_acks_decode_back() {
    let payload = json!(["message-back", {"_placeholder": true, "num": 0}]);
    let e = binary(false, "/", None, 1, &payload);
    assert_eq!(e, r#"451-["message-back",{"_placeholder":true,"num":0}]"#);
    let p = decode(&e[1..]).expect("decodes");
    assert_eq!((p.kind, p.attachments, p.ack), (Kind::BinaryEvent, 1, None));
    let a = binary(true, "/custom", Some(789), 2, &json!([1, 2]));
    assert_eq!(a, "462-/custom,789[1,2]");
    let p = decode(&a[1..]).expect("decodes");
    assert_eq!(
        (p.kind, p.attachments, p.ack, p.namespace.as_str()),
        (Kind::BinaryAck, 2, Some(789), "/custom")
    );
}
