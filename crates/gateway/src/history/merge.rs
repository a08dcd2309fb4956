//! The seam between the hot window (room-state) and the archive, as pure functions: what to
//! ask the archive for once the window answered, and how the two answers become one page.

use protocol::Publication;
use std::collections::BTreeMap;

/// What the archive is asked for: its `before` and `limit`, or `None` when the window alone
/// answers (it filled the page, or it reaches down to offset 1, or nothing can be below
/// `before`).
///
/// `window` is room-state's answer (oldest first, offsets below `before`). The archive is
/// asked for what lies below the window's oldest message, so that what the archive also holds
/// of the window is not asked for at all; [`merge`] still drops duplicates in case an answer
/// overlaps.
pub fn archive_request(
    window: &[Publication],
    before: Option<u64>,
    limit: usize,
) -> Option<(Option<u64>, usize)> {
    if window.len() >= limit {
        return None;
    }
    let below = window.first().map(|p| p.offset).or(before);
    if below.is_some_and(|b| b <= 1) {
        // Offsets start at 1: nothing is below.
        return None;
    }
    Some((below, limit - window.len()))
}

/// One page, oldest first: the newest `limit` messages below `before` of `older` (the archive's
/// answer) and `window` together, each offset once. Where both hold an offset, the window's
/// copy is kept (it is what live clients received). Offsets that neither holds (a user's
/// messages purged from the archive, or dropped by retention) are simply absent: the page
/// does not stop at them, so paging on with `before` = the first offset never skips a message
/// that is stored.
pub fn merge(
    window: Vec<Publication>,
    older: Vec<Publication>,
    before: Option<u64>,
    limit: usize,
) -> Vec<Publication> {
    let mut by_offset: BTreeMap<u64, Publication> = BTreeMap::new();
    for p in older.into_iter().chain(window) {
        if before.is_none_or(|b| p.offset < b) && !p.is_ephemeral() {
            by_offset.insert(p.offset, p);
        }
    }
    let skip = by_offset.len().saturating_sub(limit);
    by_offset.into_values().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Data;

    fn msg(offset: u64, from: &str) -> Publication {
        Publication {
            room: "r".into(),
            offset,
            epoch: "e".into(),
            from: from.into(),
            data: Data::from_value(&serde_json::json!({ "n": offset })).expect("test data"),
            ts: offset,
        }
    }

    fn range(from: u64, to: u64, who: &str) -> Vec<Publication> {
        (from..=to).map(|o| msg(o, who)).collect()
    }

    fn offsets(page: &[Publication]) -> Vec<u64> {
        page.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn a_full_window_needs_no_archive() {
        assert_eq!(archive_request(&range(36, 40, "w"), None, 5), None);
        assert_eq!(archive_request(&range(36, 40, "w"), Some(41), 3), None);
    }

    #[test]
    fn a_short_window_asks_below_its_oldest() {
        assert_eq!(
            archive_request(&range(36, 40, "w"), None, 20),
            Some((Some(36), 15))
        );
        assert_eq!(
            archive_request(&range(36, 38, "w"), Some(39), 10),
            Some((Some(36), 7))
        );
    }

    #[test]
    fn an_empty_window_asks_below_before_or_the_newest() {
        // Paging below the window: room-state has nothing under `before`.
        assert_eq!(archive_request(&[], Some(20), 10), Some((Some(20), 10)));
        // A woken room holds nothing in Redis yet: the archive has the newest.
        assert_eq!(archive_request(&[], None, 10), Some((None, 10)));
    }

    #[test]
    fn nothing_is_below_offset_one() {
        assert_eq!(archive_request(&range(1, 3, "w"), None, 10), None);
        assert_eq!(archive_request(&[], Some(1), 10), None);
        assert_eq!(archive_request(&[], Some(0), 10), None);
        assert_eq!(archive_request(&[], None, 0), None);
    }

    #[test]
    fn merges_at_the_seam_without_a_gap() {
        let page = merge(range(36, 40, "w"), range(26, 35, "a"), None, 15);
        assert_eq!(offsets(&page), (26..=40).collect::<Vec<_>>());
    }

    #[test]
    fn an_overlap_keeps_each_offset_once_and_the_window_copy() {
        // The archive also holds messages that are still in the window.
        let page = merge(range(36, 40, "w"), range(30, 38, "a"), None, 20);
        assert_eq!(offsets(&page), (30..=40).collect::<Vec<_>>());
        assert!(page[6..].iter().all(|p| p.from == "w"));
        assert!(page[..6].iter().all(|p| p.from == "a"));
    }

    #[test]
    fn keeps_the_newest_limit_below_before() {
        let page = merge(range(36, 40, "w"), range(20, 39, "a"), Some(39), 6);
        assert_eq!(offsets(&page), (33..=38).collect::<Vec<_>>());
        assert!(merge(range(36, 40, "w"), range(1, 35, "a"), None, 0).is_empty());
    }

    #[test]
    fn holes_in_the_archive_do_not_stop_the_page() {
        // Offsets 31 and 33 were purged (a user's erasure): the rest is still paged through.
        let older: Vec<_> = range(28, 35, "a")
            .into_iter()
            .filter(|p| p.offset != 31 && p.offset != 33)
            .collect();
        let page = merge(range(36, 37, "w"), older, None, 6);
        assert_eq!(offsets(&page), vec![30, 32, 34, 35, 36, 37]);
    }

    #[test]
    fn out_of_order_answers_come_out_oldest_first() {
        let mut older = range(1, 9, "a");
        older.reverse();
        let page = merge(range(10, 12, "w"), older, Some(13), 100);
        assert_eq!(offsets(&page), (1..=12).collect::<Vec<_>>());
    }
}
