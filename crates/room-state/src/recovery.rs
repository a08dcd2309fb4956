//! Whether a client's `since` position can be recovered from history.

use protocol::frame::{Publication, Since};

/// Decides recovery for a client that last saw `since`, given the room's current epoch and
/// offset and the retained history (oldest first, contiguous offsets).
///
/// Recovery is all or nothing: either every message after `since.offset` is returned, or
/// `(false, [])` so the client knows to resync. A different epoch, an offset from the future,
/// or a gap between `since` and the oldest retained message all mean "not recovered".
pub fn recover(
    since: &Since,
    epoch: &str,
    offset: u64,
    history: &[Publication],
) -> (bool, Vec<Publication>) {
    if since.epoch != epoch || since.offset > offset {
        return (false, Vec::new());
    }
    if since.offset == offset {
        return (true, Vec::new());
    }
    let oldest = history.first().map_or(offset + 1, |p| p.offset);
    if oldest > since.offset + 1 {
        return (false, Vec::new());
    }
    let missed: Vec<Publication> = history
        .iter()
        .filter(|p| p.offset > since.offset)
        .cloned()
        .collect();
    (missed.len() as u64 == offset - since.offset, missed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Data;

    fn pubs(range: std::ops::RangeInclusive<u64>) -> Vec<Publication> {
        range
            .map(|offset| Publication {
                room: "r".into(),
                offset,
                epoch: "e".into(),
                from: "u".into(),
                data: Data::from_value(&serde_json::json!(offset)).expect("data"),
                ts: 0,
            })
            .collect()
    }

    fn since(offset: u64, epoch: &str) -> Since {
        Since {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn rules() {
        let h = pubs(3..=5);
        let (ok, missed) = recover(&since(3, "e"), "e", 5, &h);
        assert!(ok);
        assert_eq!(
            missed.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(recover(&since(2, "e"), "e", 5, &h).1.len(), 3);
        assert_eq!(recover(&since(1, "e"), "e", 5, &h), (false, vec![]));
        assert_eq!(recover(&since(5, "e"), "e", 5, &h), (true, vec![]));
        assert_eq!(recover(&since(3, "x"), "e", 5, &h), (false, vec![]));
        assert_eq!(recover(&since(9, "e"), "e", 5, &h), (false, vec![]));
        assert_eq!(recover(&since(0, "e"), "e", 0, &[]), (true, vec![]));
    }
}
