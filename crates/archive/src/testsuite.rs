//! The conformance suite that every archive backend must pass, unchanged.
//!
//! Each function takes a backend and a unique `prefix` for its rooms and users, so the suite
//! can run against one shared PostgreSQL database in parallel. Timestamps are explicit; nothing
//! here sleeps or reads the clock. Retention, the one operation that spans every room, is
//! checked with timestamps far below those of the other functions (which use 2023 and later),
//! so parallel runs do not see each other's deletions.
//!
//! It panics on the first violation, like any test.

#![allow(clippy::unwrap_used)]

use crate::archive::Archive;
use crate::error::ArchiveError;
use crate::model::{SleepingRoom, MAX_PAGE};
use protocol::{Data, Publication};

const NOW: u64 = 1_700_000_000_000;

fn data(n: u64) -> Data {
    Data::from_value(&serde_json::json!({ "n": n, "text": "é" })).unwrap()
}

fn msg(room: &str, epoch: &str, offset: u64, from: &str, ts: u64) -> Publication {
    Publication {
        room: room.into(),
        epoch: epoch.into(),
        offset,
        from: from.into(),
        data: data(offset),
        ts,
    }
}

/// Messages `from..=to` of one epoch, by `user`, one millisecond apart.
fn run(room: &str, epoch: &str, from: u64, to: u64, user: &str) -> Vec<Publication> {
    (from..=to)
        .map(|o| msg(room, epoch, o, user, NOW + o))
        .collect()
}

fn offsets(page: &[Publication]) -> Vec<u64> {
    page.iter().map(|p| p.offset).collect()
}

/// A re-sent batch inserts nothing twice, whatever its content; duplicates inside one batch
/// are skipped too; the first write wins.
pub async fn idempotent_append(archive: &dyn Archive, prefix: &str) {
    let room = format!("{prefix}idem");
    let user = format!("{prefix}alice");
    assert_eq!(archive.append(&[]).await.unwrap(), 0);
    let batch = run(&room, "e1", 1, 5, &user);
    assert_eq!(archive.append(&batch).await.unwrap(), 5);
    assert_eq!(archive.append(&batch).await.unwrap(), 0, "same batch again");
    // Overlapping, with a duplicate inside the batch and other content at a stored offset.
    let mut overlap = run(&room, "e1", 4, 8, &user);
    overlap.push(msg(&room, "e1", 8, &user, NOW + 8));
    let mut rewritten = msg(&room, "e1", 5, "mallory", NOW);
    rewritten.data = Data::from_value(&serde_json::json!("other")).unwrap();
    overlap.push(rewritten);
    assert_eq!(
        archive.append(&overlap).await.unwrap(),
        3,
        "only 6, 7, 8 are new"
    );
    let page = archive.page(&room, "e1", None, 100).await.unwrap();
    assert_eq!(offsets(&page), (1..=8).collect::<Vec<_>>());
    assert_eq!(
        page[4],
        msg(&room, "e1", 5, &user, NOW + 5),
        "first write wins"
    );
    // The same offsets in another epoch, or another room, are other messages.
    assert_eq!(
        archive
            .append(&run(&room, "e2", 1, 3, &user))
            .await
            .unwrap(),
        3
    );
    let other = format!("{prefix}idem-other");
    assert_eq!(
        archive
            .append(&run(&other, "e1", 1, 3, &user))
            .await
            .unwrap(),
        3
    );
    assert_eq!(archive.high_water(&room, "e1").await.unwrap(), Some(8));
    assert_eq!(archive.high_water(&room, "e2").await.unwrap(), Some(3));
    assert_eq!(archive.high_water(&room, "e3").await.unwrap(), None);
    assert_eq!(
        archive
            .high_water(&format!("{prefix}none"), "e1")
            .await
            .unwrap(),
        None
    );
    archive.purge_room(&room).await.unwrap();
    archive.purge_room(&other).await.unwrap();
}

/// Overlapping batches appended at the same time (two archivers during a hand-over), in
/// opposite orders and across two rooms, store every message once.
pub async fn concurrent_appends(archive: &dyn Archive, prefix: &str) {
    let (a, b) = (format!("{prefix}conc-a"), format!("{prefix}conc-b"));
    let user = format!("{prefix}gus");
    let both = |from, to| {
        let mut batch = run(&a, "e", from, to, &user);
        batch.extend(run(&b, "e", from, to, &user));
        batch
    };
    let mut reversed = both(1, 100);
    reversed.reverse();
    let batches = [both(1, 50), both(25, 75), reversed, both(50, 100)];
    for _ in 0..3 {
        let (w, x, y, z) = tokio::join!(
            archive.append(&batches[0]),
            archive.append(&batches[1]),
            archive.append(&batches[2]),
            archive.append(&batches[3]),
        );
        let stored: u64 = [w, x, y, z].into_iter().map(Result::unwrap).sum();
        assert!(stored == 200 || stored == 0, "{stored}");
    }
    for room in [&a, &b] {
        let page = archive.page(room, "e", None, 1000).await.unwrap();
        assert_eq!(offsets(&page), (1..=100).collect::<Vec<_>>());
        archive.purge_room(room).await.unwrap();
    }
}

/// Pages are the newest `limit` below `before`, oldest first, within one epoch; every bound.
pub async fn paging(archive: &dyn Archive, prefix: &str) {
    let room = format!("{prefix}paging");
    let user = format!("{prefix}bob");
    archive
        .append(&run(&room, "e1", 1, 25, &user))
        .await
        .unwrap();
    archive
        .append(&run(&room, "e2", 1, 2, &user))
        .await
        .unwrap();

    let newest = archive.page(&room, "e1", None, 10).await.unwrap();
    assert_eq!(offsets(&newest), (16..=25).collect::<Vec<_>>());
    assert_eq!(newest[0], msg(&room, "e1", 16, &user, NOW + 16));
    let older = archive.page(&room, "e1", Some(16), 10).await.unwrap();
    assert_eq!(offsets(&older), (6..=15).collect::<Vec<_>>());
    let oldest = archive.page(&room, "e1", Some(6), 10).await.unwrap();
    assert_eq!(offsets(&oldest), (1..=5).collect::<Vec<_>>());
    // Paging from the newest to the first returns every message once, in order.
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = archive.page(&room, "e1", before, 7).await.unwrap();
        let Some(first) = page.first() else { break };
        before = Some(first.offset);
        all.splice(0..0, offsets(&page));
    }
    assert_eq!(all, (1..=25).collect::<Vec<_>>());

    // Bounds: none of them an error.
    assert!(
        archive.page(&room, "e1", None, 0).await.unwrap().is_empty(),
        "limit 0"
    );
    assert!(
        archive
            .page(&room, "e1", Some(1), 10)
            .await
            .unwrap()
            .is_empty(),
        "before 1"
    );
    assert!(
        archive
            .page(&room, "e1", Some(0), 10)
            .await
            .unwrap()
            .is_empty(),
        "before 0"
    );
    assert_eq!(
        offsets(&archive.page(&room, "e1", Some(1_000_000), 3).await.unwrap()),
        vec![23, 24, 25],
        "before past the newest"
    );
    assert_eq!(
        offsets(&archive.page(&room, "e1", Some(u64::MAX), 3).await.unwrap()),
        vec![23, 24, 25],
        "before past i64::MAX"
    );
    assert_eq!(
        archive
            .page(&room, "e1", None, usize::MAX)
            .await
            .unwrap()
            .len(),
        25,
        "a huge limit is capped, not refused"
    );
    assert_eq!(
        offsets(&archive.page(&room, "e2", None, 10).await.unwrap()),
        vec![1, 2]
    );
    assert!(
        archive
            .page(&room, "e9", None, 10)
            .await
            .unwrap()
            .is_empty(),
        "unknown epoch"
    );
    assert!(archive
        .page(&format!("{prefix}nobody"), "e1", None, 10)
        .await
        .unwrap()
        .is_empty());
    archive.purge_room(&room).await.unwrap();
}

/// A page never holds more than [`MAX_PAGE`] messages.
pub async fn page_cap(archive: &dyn Archive, prefix: &str) {
    let room = format!("{prefix}cap");
    let user = format!("{prefix}carol");
    let total = MAX_PAGE as u64 + 5;
    for chunk in run(&room, "e", 1, total, &user).chunks(400) {
        archive.append(chunk).await.unwrap();
    }
    let page = archive.page(&room, "e", None, MAX_PAGE * 10).await.unwrap();
    assert_eq!(page.len(), MAX_PAGE);
    assert_eq!(page.first().map(|p| p.offset), Some(6));
    assert_eq!(page.last().map(|p| p.offset), Some(total));
    assert_eq!(archive.purge_room(&room).await.unwrap(), total);
}

/// Binary data (MessagePack `bin`, `{"$bin":…}` in JSON) comes back as it went in, as do
/// nested values, unicode and large numbers.
pub async fn binary_round_trip(archive: &dyn Archive, prefix: &str) {
    let room = format!("{prefix}bin");
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xc1]).collect();
    let payloads = [
        Data::from_value(&protocol::data::binary_value(&bytes)).unwrap(),
        Data::from_value(&serde_json::json!({
            "img": protocol::data::binary_value(&[0x89, b'P', b'N', b'G']),
            "list": [1, -2, 3.5, u64::MAX, null, true, "ü😀"],
            "empty": protocol::data::binary_value(&[]),
        }))
        .unwrap(),
        Data::from_value(&serde_json::json!("plain text")).unwrap(),
        Data::from_value(&serde_json::json!({})).unwrap(),
    ];
    let batch: Vec<Publication> = payloads
        .iter()
        .enumerate()
        .map(|(i, d)| Publication {
            data: d.clone(),
            ..msg(&room, "e", i as u64 + 1, "server", NOW)
        })
        .collect();
    archive.append(&batch).await.unwrap();
    let page = archive.page(&room, "e", None, 10).await.unwrap();
    assert_eq!(page, batch);
    assert!(page[0].data.has_binary());
    assert_eq!(
        protocol::data::as_binary(&page[0].data.to_value()),
        Some(bytes)
    );
    archive.purge_room(&room).await.unwrap();
}

fn sleeping(room: &str, epoch: &str, offset: u64) -> SleepingRoom {
    SleepingRoom {
        room: room.into(),
        epoch: epoch.into(),
        offset,
        max_members: Some(50),
        history_size: 100,
        ttl_secs: 3600,
        created_ms: NOW,
        saved_ms: NOW + offset % 1_000_000,
    }
}

/// Rooms sleep and wake with their epoch and offset; a close forgets them.
pub async fn sleeping_rooms(archive: &dyn Archive, prefix: &str) {
    let room = format!("{prefix}sleepy");
    assert_eq!(archive.load_room(&room).await.unwrap(), None);
    let first = sleeping(&room, "e1", 7);
    archive.save_room(&first).await.unwrap();
    assert_eq!(archive.load_room(&room).await.unwrap(), Some(first.clone()));
    assert_eq!(
        archive.load_room(&room).await.unwrap(),
        Some(first.clone()),
        "load keeps it"
    );
    // Same epoch: the offset moves on, never back.
    let later = SleepingRoom {
        max_members: None,
        ..sleeping(&room, "e1", 12)
    };
    archive.save_room(&later).await.unwrap();
    archive.save_room(&sleeping(&room, "e1", 9)).await.unwrap();
    assert_eq!(archive.load_room(&room).await.unwrap(), Some(later));
    // A new epoch replaces it, from whatever offset.
    let reset = sleeping(&room, "e2", 0);
    archive.save_room(&reset).await.unwrap();
    assert_eq!(archive.load_room(&room).await.unwrap(), Some(reset));
    // Limits of the numbers.
    let big = SleepingRoom {
        max_members: Some(u32::MAX),
        history_size: u32::MAX,
        ttl_secs: i64::MAX as u64,
        ..sleeping(&room, "e3", i64::MAX as u64)
    };
    archive.save_room(&big).await.unwrap();
    assert_eq!(archive.load_room(&room).await.unwrap(), Some(big));
    // Close forgets the record and says whether there was one.
    assert!(archive.close_room(&room).await.unwrap());
    assert_eq!(archive.load_room(&room).await.unwrap(), None);
    assert!(
        !archive.close_room(&room).await.unwrap(),
        "closing twice is no error"
    );
    assert!(!archive.close_room(&format!("{prefix}never")).await.unwrap());
    // Close keeps the messages; purge removes both.
    archive.append(&run(&room, "e1", 1, 2, "u")).await.unwrap();
    archive.save_room(&sleeping(&room, "e1", 2)).await.unwrap();
    archive.close_room(&room).await.unwrap();
    assert_eq!(archive.page(&room, "e1", None, 10).await.unwrap().len(), 2);
    archive.save_room(&sleeping(&room, "e1", 2)).await.unwrap();
    assert_eq!(archive.purge_room(&room).await.unwrap(), 2);
    assert_eq!(archive.load_room(&room).await.unwrap(), None);
}

/// Retention drops messages strictly older than the cutoff, in every room, and keeps
/// sleeping rooms.
pub async fn retention(archive: &dyn Archive, prefix: &str) {
    // Far below every other function's timestamps (see the module's doc).
    let base = 1_000_000 + u64::from(spread(prefix)) * 10_000;
    let (a, b) = (format!("{prefix}ret-a"), format!("{prefix}ret-b"));
    let at = |room: &str, offset: u64, ts: u64| msg(room, "e", offset, "u", ts);
    archive
        .append(&[
            at(&a, 1, base),
            at(&a, 2, base + 10),
            at(&a, 3, base + 20),
            at(&b, 1, base + 5),
        ])
        .await
        .unwrap();
    archive.save_room(&sleeping(&a, "e", 3)).await.unwrap();
    // Earlier runs may have left rows further down; at least ours go.
    assert!(archive.drop_older_than(base + 10).await.unwrap() >= 2);
    assert_eq!(
        offsets(&archive.page(&a, "e", None, 10).await.unwrap()),
        vec![2, 3]
    );
    assert!(archive.page(&b, "e", None, 10).await.unwrap().is_empty());
    assert_eq!(
        archive.drop_older_than(base + 10).await.unwrap(),
        0,
        "nothing left below"
    );
    assert_eq!(archive.drop_older_than(0).await.unwrap(), 0);
    assert!(
        archive.load_room(&a).await.unwrap().is_some(),
        "rooms are kept"
    );
    assert_eq!(archive.high_water(&a, "e").await.unwrap(), Some(3));
    archive.purge_room(&a).await.unwrap();
}

/// A number from the prefix, so that runs with different prefixes use different timestamps.
fn spread(prefix: &str) -> u16 {
    prefix
        .bytes()
        .fold(0u16, |h, b| h.wrapping_mul(31).wrapping_add(u16::from(b)))
}

/// Purging a room removes every epoch of it and nothing else; an unknown room is NotFound.
pub async fn purge_room(archive: &dyn Archive, prefix: &str) {
    let (room, keep) = (format!("{prefix}purge"), format!("{prefix}purge-keep"));
    let user = format!("{prefix}dave");
    archive
        .append(&run(&room, "e1", 1, 4, &user))
        .await
        .unwrap();
    archive
        .append(&run(&room, "e2", 1, 2, &user))
        .await
        .unwrap();
    archive
        .append(&run(&keep, "e1", 1, 3, &user))
        .await
        .unwrap();
    assert_eq!(archive.purge_room(&room).await.unwrap(), 6);
    assert!(archive
        .page(&room, "e1", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(archive
        .page(&room, "e2", None, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(archive.high_water(&room, "e1").await.unwrap(), None);
    assert_eq!(archive.page(&keep, "e1", None, 10).await.unwrap().len(), 3);
    assert_eq!(
        archive.purge_room(&room).await.unwrap_err(),
        ArchiveError::NotFound
    );
    assert_eq!(
        archive
            .purge_room(&format!("{prefix}unknown"))
            .await
            .unwrap_err(),
        ArchiveError::NotFound
    );
    // A sleeping room without messages is known: purging it is not NotFound.
    archive.save_room(&sleeping(&room, "e3", 0)).await.unwrap();
    assert_eq!(archive.purge_room(&room).await.unwrap(), 0);
    assert_eq!(archive.load_room(&room).await.unwrap(), None);
    // Appending after a purge works as on a new room.
    assert_eq!(
        archive
            .append(&run(&room, "e1", 1, 2, &user))
            .await
            .unwrap(),
        2
    );
    archive.purge_room(&room).await.unwrap();
    archive.purge_room(&keep).await.unwrap();
}

/// Purging a user removes their messages in every room and epoch, and nobody else's.
pub async fn purge_user(archive: &dyn Archive, prefix: &str) {
    let (r1, r2) = (format!("{prefix}pu-1"), format!("{prefix}pu-2"));
    let (erin, frank) = (format!("{prefix}erin"), format!("{prefix}frank"));
    let mut batch = Vec::new();
    for o in 1..=10 {
        let who = if o % 2 == 0 { &erin } else { &frank };
        batch.push(msg(&r1, "e1", o, who, NOW + o));
        batch.push(msg(&r2, "e7", o, who, NOW + o));
    }
    archive.append(&batch).await.unwrap();
    assert_eq!(archive.purge_user(&erin).await.unwrap(), 10);
    for room in [&r1, &r2] {
        let epoch = if room == &r1 { "e1" } else { "e7" };
        let page = archive.page(room, epoch, None, 100).await.unwrap();
        assert_eq!(offsets(&page), vec![1, 3, 5, 7, 9]);
        assert!(page.iter().all(|p| p.from == frank));
    }
    assert_eq!(
        archive.purge_user(&erin).await.unwrap(),
        0,
        "already gone: not an error"
    );
    assert_eq!(
        archive
            .purge_user(&format!("{prefix}nobody"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(archive.high_water(&r1, "e1").await.unwrap(), Some(9));
    archive.purge_room(&r1).await.unwrap();
    archive.purge_room(&r2).await.unwrap();
}

/// Bad input is refused with [`ArchiveError::BadInput`], and nothing of the batch is written.
pub async fn bad_input(archive: &dyn Archive, prefix: &str) {
    let room = format!("{prefix}bad");
    let good = msg(&room, "e", 1, "u", NOW);
    let bad = |p: Publication| vec![good.clone(), p];
    let cases = [
        ("offset 0", bad(msg(&room, "e", 0, "u", NOW))),
        ("empty room", bad(msg("", "e", 2, "u", NOW))),
        ("empty epoch", bad(msg(&room, "", 2, "u", NOW))),
        ("offset past i64", bad(msg(&room, "e", u64::MAX, "u", NOW))),
        ("ts past i64", bad(msg(&room, "e", 2, "u", u64::MAX))),
        (
            "NUL in a room",
            bad(msg(&format!("{room}\u{0}"), "e", 2, "u", NOW)),
        ),
        ("NUL in a user", bad(msg(&room, "e", 2, "u\u{0}", NOW))),
    ];
    for (what, batch) in cases {
        let err = archive.append(&batch).await.unwrap_err();
        assert!(matches!(err, ArchiveError::BadInput(_)), "{what}: {err:?}");
    }
    assert_eq!(
        archive.high_water(&room, "e").await.unwrap(),
        None,
        "all or nothing"
    );
    for room in [
        sleeping("", "e", 1),
        sleeping(&room, "", 1),
        sleeping(&room, "e", u64::MAX),
    ] {
        let err = archive.save_room(&room).await.unwrap_err();
        assert!(
            matches!(err, ArchiveError::BadInput(_)),
            "{room:?}: {err:?}"
        );
    }
    assert_eq!(archive.load_room(&room).await.unwrap(), None);
    let nul = "a\u{0}b";
    let refused = [
        archive.page(nul, "e", None, 1).await.err(),
        archive.page(&room, nul, None, 1).await.err(),
        archive.high_water(nul, "e").await.err(),
        archive.load_room(nul).await.err(),
        archive.close_room(nul).await.err(),
        archive.purge_room(nul).await.err(),
        archive.purge_user(nul).await.err(),
    ];
    for (i, err) in refused.into_iter().enumerate() {
        assert!(
            matches!(err, Some(ArchiveError::BadInput(_))),
            "call {i}: {err:?}"
        );
    }
    // Names are data, not SQL.
    let odd = format!("{prefix}'; DROP TABLE messages; --é");
    archive
        .append(&[msg(&odd, "e'", 1, "u'", NOW)])
        .await
        .unwrap();
    assert_eq!(archive.page(&odd, "e'", None, 1).await.unwrap().len(), 1);
    assert_eq!(archive.purge_room(&odd).await.unwrap(), 1);
}
