//! A set of connection slots kept as a list, so a transport's loop visits only the peers with
//! work of one kind (bytes to parse, frames to send, sends to retire) instead of scanning
//! every slot. Membership is a flag per slot: adding a listed slot is a no-op, so the list
//! never holds a slot twice and never grows past the number of slots.

/// Slots `0..capacity` with O(1) insert, pop and removal at a list position.
#[derive(Debug)]
pub struct SlotSet {
    list: Vec<u16>,
    member: Box<[bool]>,
}

impl SlotSet {
    /// An empty set for slots `0..capacity`; allocates everything now.
    pub fn new(capacity: usize) -> SlotSet {
        SlotSet {
            list: Vec::with_capacity(capacity),
            member: vec![false; capacity].into_boxed_slice(),
        }
    }

    /// Lists `slot` unless it is listed already.
    ///
    /// # Panics
    /// If `slot` is not below the capacity (a transport bug, never input from a peer).
    pub fn insert(&mut self, slot: u16) {
        let m = &mut self.member[usize::from(slot)];
        if !*m {
            *m = true;
            self.list.push(slot);
        }
    }

    /// Takes the most recently listed slot out.
    pub fn pop(&mut self) -> Option<u16> {
        let slot = self.list.pop()?;
        self.member[usize::from(slot)] = false;
        Some(slot)
    }

    /// The slot at list position `i` (for loops that may remove as they go).
    pub fn get(&self, i: usize) -> Option<u16> {
        self.list.get(i).copied()
    }

    /// Removes the slot at list position `i`; the last slot moves into position `i`.
    pub fn remove_at(&mut self, i: usize) {
        let slot = self.list.swap_remove(i);
        self.member[usize::from(slot)] = false;
    }

    /// Removes `slot` wherever it is listed.
    pub fn remove(&mut self, slot: u16) {
        if std::mem::take(&mut self.member[usize::from(slot)]) {
            self.list.retain(|&s| s != slot);
        }
    }

    /// Listed slots, in list order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.list.iter().copied()
    }

    /// Number of listed slots.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether no slot is listed.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_listed_once_and_can_be_listed_again_after_removal() {
        let mut s = SlotSet::new(4);
        s.insert(2);
        s.insert(2);
        s.insert(0);
        assert_eq!(s.iter().collect::<Vec<_>>(), [2, 0]);
        assert_eq!(s.pop(), Some(0));
        s.insert(0);
        assert_eq!(s.len(), 2);
        s.remove(2);
        s.remove(2);
        assert_eq!(s.iter().collect::<Vec<_>>(), [0]);
        s.insert(2);
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 2]);
    }

    #[test]
    fn remove_at_moves_the_last_slot_into_the_gap() {
        let mut s = SlotSet::new(8);
        for slot in [5, 1, 7] {
            s.insert(slot);
        }
        s.remove_at(0);
        assert_eq!(s.get(0), Some(7));
        assert_eq!(s.get(2), None);
        s.insert(5);
        assert_eq!(s.iter().collect::<Vec<_>>(), [7, 1, 5]);
        while s.pop().is_some() {}
        assert!(s.is_empty());
        s.insert(7);
        assert_eq!(s.len(), 1);
    }
}
