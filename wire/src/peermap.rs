//! Fixed-capacity map from caller peer ids to connection slot indices: open addressing with
//! linear probing and backward-shift deletion, preallocated, O(1) on the send path.

use crate::transport::PeerId;

/// Maps [`PeerId`]s to slot numbers; holds at most the capacity given at construction.
#[derive(Debug)]
pub struct PeerMap {
    table: Box<[Option<(PeerId, u16)>]>,
    mask: usize,
    len: usize,
    cap: usize,
}

impl PeerMap {
    /// A map for up to `cap` entries (table twice that size, a power of two).
    pub fn new(cap: usize) -> PeerMap {
        let size = (cap.max(1) * 2).next_power_of_two();
        PeerMap {
            table: vec![None; size].into_boxed_slice(),
            mask: size - 1,
            len: 0,
            cap,
        }
    }

    fn home(&self, id: PeerId) -> usize {
        (id.wrapping_mul(0x9E37_79B9) as usize) & self.mask
    }

    /// The slot of `id`.
    pub fn get(&self, id: PeerId) -> Option<u16> {
        let mut i = self.home(id);
        loop {
            match self.table[i] {
                Some((k, v)) if k == id => return Some(v),
                Some(_) => i = (i + 1) & self.mask,
                None => return None,
            }
        }
    }

    /// Inserts `id → slot`; false when `id` is present or the map is full.
    pub fn insert(&mut self, id: PeerId, slot: u16) -> bool {
        if self.len >= self.cap || self.get(id).is_some() {
            return false;
        }
        let mut i = self.home(id);
        while self.table[i].is_some() {
            i = (i + 1) & self.mask;
        }
        self.table[i] = Some((id, slot));
        self.len += 1;
        true
    }

    /// Removes `id`, returning its slot.
    pub fn remove(&mut self, id: PeerId) -> Option<u16> {
        let mut i = self.home(id);
        let v = loop {
            match self.table[i] {
                Some((k, v)) if k == id => break v,
                Some(_) => i = (i + 1) & self.mask,
                None => return None,
            }
        };
        self.table[i] = None;
        self.len -= 1;
        // Backward-shift the following cluster so every entry stays reachable from its home.
        let mut hole = i;
        let mut j = (i + 1) & self.mask;
        while let Some((k, _)) = self.table[j] {
            let h = self.home(k);
            // Move entry j into the hole if its home is not in (hole, j] cyclically.
            let dist_j = j.wrapping_sub(h) & self.mask;
            let dist_hole = hole.wrapping_sub(h) & self.mask;
            if dist_hole < dist_j {
                self.table[hole] = self.table[j].take();
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        Some(v)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_reference_map_under_churn() {
        let mut m = PeerMap::new(16);
        let mut r = std::collections::HashMap::new();
        let mut x = 12345u32;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let id = x % 40;
            if x & 0x100 == 0 {
                let ok = m.insert(id, (step % 1000) as u16);
                let expect = r.len() < 16 && !r.contains_key(&id);
                assert_eq!(ok, expect);
                if ok {
                    r.insert(id, (step % 1000) as u16);
                }
            } else {
                assert_eq!(m.remove(id), r.remove(&id));
            }
            assert_eq!(m.len(), r.len());
            for k in 0..40 {
                assert_eq!(m.get(k), r.get(&k).copied(), "key {k} at step {step}");
            }
        }
    }
}
