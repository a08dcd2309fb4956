//! What one member was delivered at each position (epoch, offset) of its room, for the
//! divergence check (diverge.rs): a position names one message, so no two members, and no
//! member and an acknowledgement, may hold two different (publisher, seq) there.

use std::collections::HashMap;

/// A chaos message: (publisher, seq, first sent ms).
pub type Content = (u64, u64, u64);

#[derive(Debug, Default)]
pub struct Positions {
    epochs: Vec<String>,
    held: HashMap<(u32, u64), Content>,
    /// Deliveries to a position this member already held with another message:
    /// (epoch, offset, the later message).
    pub conflicts: Vec<(String, u64, Content)>,
}

impl Positions {
    /// Notes that `c` was delivered at (`epoch`, `offset`).
    pub fn record(&mut self, epoch: &str, offset: u64, c: Content) {
        let e = self.intern(epoch);
        match self.held.get(&(e, offset)) {
            None => {
                self.held.insert((e, offset), c);
            }
            Some(had) if (had.0, had.1) != (c.0, c.1) => {
                self.conflicts.push((epoch.to_string(), offset, c));
            }
            Some(_) => {}
        }
    }

    fn intern(&mut self, epoch: &str) -> u32 {
        match self.epochs.iter().rposition(|e| e == epoch) {
            Some(i) => i as u32,
            None => {
                self.epochs.push(epoch.to_string());
                (self.epochs.len() - 1) as u32
            }
        }
    }

    /// Where (publisher `p`, seq `s`) was delivered, as `epoch:offset` (the epoch's first 8
    /// characters), in order: for the record of a duplicate.
    pub fn places(&self, p: u64, s: u64) -> String {
        let mut at: Vec<(&str, u64)> = (self.all())
            .filter(|(_, _, c)| (c.0, c.1) == (p, s))
            .map(|(e, o, _)| (e.get(..8).unwrap_or(e), o))
            .collect();
        at.sort_unstable();
        at.dedup();
        let at: Vec<String> = at.iter().map(|(e, o)| format!("{e}:{o}")).collect();
        at.join(" ")
    }

    /// Every position held, with the first message delivered there, then the conflicts.
    pub fn all(&self) -> impl Iterator<Item = (&str, u64, Content)> + '_ {
        let held =
            (self.held.iter()).map(|((e, o), c)| (self.epochs[*e as usize].as_str(), *o, *c));
        let later = (self.conflicts.iter()).map(|(e, o, c)| (e.as_str(), *o, *c));
        held.chain(later)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_message_at_one_position_is_a_conflict() {
        let mut p = Positions::default();
        p.record("e1", 1, (0, 1, 10));
        p.record("e1", 1, (0, 1, 10));
        p.record("e2", 1, (0, 2, 11));
        assert!(p.conflicts.is_empty());
        p.record("e1", 1, (3, 9, 12));
        assert_eq!(p.conflicts, vec![("e1".to_string(), 1, (3, 9, 12))]);
        assert_eq!(p.all().count(), 3);
    }
}
