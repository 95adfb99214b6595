//! The pages of one address space that a lazy restore has not placed yet: page runs of the
//! image (where each run's bytes are), cut as pieces are placed, dropped where the program
//! discards memory, moved where it moves memory (mremap).

use std::collections::BTreeMap;

/// `len` bytes at `addr`, stored at `offset` of the chain's image `image`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub addr: u64,
    pub len: u64,
    pub image: usize,
    pub offset: u64,
}

impl Piece {
    fn end(&self) -> u64 {
        self.addr + self.len
    }

    /// The part of this piece inside `[start, end)` (which must overlap it).
    fn clip(&self, start: u64, end: u64) -> Piece {
        let s = self.addr.max(start);
        let e = self.end().min(end);
        Piece {
            addr: s,
            len: e - s,
            image: self.image,
            offset: self.offset + (s - self.addr),
        }
    }
}

/// Non-overlapping pieces by address.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    pieces: BTreeMap<u64, Piece>,
}

impl Pending {
    pub fn new(pieces: impl IntoIterator<Item = Piece>) -> Pending {
        let mut p = Pending::default();
        for piece in pieces.into_iter().filter(|p| p.len > 0) {
            p.insert(piece);
        }
        p
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.pieces.values().map(|p| p.len).sum()
    }

    /// Puts back a piece (its range must be free in the set: it was taken from it).
    pub fn insert(&mut self, piece: Piece) {
        self.pieces.insert(piece.addr, piece);
    }

    /// Takes the pending bytes from `addr` (page aligned) on, at most `max`, within the piece
    /// that holds `addr`; None if `addr` is not pending (never stored, or placed already).
    pub fn take_at(&mut self, addr: u64, max: u64) -> Option<Piece> {
        let (_, holder) = self.pieces.range(..=addr).next_back()?;
        if holder.end() <= addr {
            return None;
        }
        let end = holder.end().min(addr.saturating_add(max));
        self.cut(addr, end).into_iter().next()
    }

    /// Takes the lowest pending bytes, at most `max` of one piece.
    pub fn take_first(&mut self, max: u64) -> Option<Piece> {
        let first = *self.pieces.values().next()?;
        let end = first.end().min(first.addr.saturating_add(max));
        self.cut(first.addr, end).into_iter().next()
    }

    /// Forgets `[start, end)`: the program dropped that memory (munmap, MADV_DONTNEED), so
    /// what the image held there must not come back.
    pub fn remove(&mut self, start: u64, end: u64) {
        self.cut(start, end);
    }

    /// mremap moved `[from, from + len)` to `to`: what was pending there is pending at the
    /// new place.
    pub fn moved(&mut self, from: u64, to: u64, len: u64) {
        let moved = self.cut(from, from.saturating_add(len));
        // The old place's pages went with it; the new place had none of ours.
        self.remove(to, to.saturating_add(len));
        for p in moved {
            self.insert(Piece {
                addr: p.addr - from + to,
                ..p
            });
        }
    }

    /// Removes and returns the pending parts of `[start, end)`, splitting pieces that
    /// straddle its ends.
    fn cut(&mut self, start: u64, end: u64) -> Vec<Piece> {
        if start >= end {
            return Vec::new();
        }
        // Every piece that overlaps: the one before `start` if it reaches past it, and the
        // ones starting inside.
        let mut keys: Vec<u64> = self
            .pieces
            .range(..start)
            .next_back()
            .filter(|(_, p)| p.end() > start)
            .map(|(&k, _)| k)
            .into_iter()
            .collect();
        keys.extend(self.pieces.range(start..end).map(|(&k, _)| k));
        let mut out = Vec::new();
        for k in keys {
            let Some(p) = self.pieces.remove(&k) else {
                continue;
            };
            if p.addr < start {
                self.insert(p.clip(p.addr, start));
            }
            if p.end() > end {
                self.insert(p.clip(end, p.end()));
            }
            out.push(p.clip(start, end));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn piece(addr: u64, pages: u64, offset: u64) -> Piece {
        Piece {
            addr,
            len: pages * P,
            image: 0,
            offset,
        }
    }

    fn all(p: &Pending) -> Vec<Piece> {
        p.pieces.values().copied().collect()
    }

    #[test]
    fn a_fault_takes_from_the_faulting_page_on_and_leaves_the_rest() {
        let mut p = Pending::new([piece(0x10000, 8, 0x5000)]);
        let got = p.take_at(0x12000, 2 * P).unwrap();
        assert_eq!(got, piece(0x12000, 2, 0x7000));
        assert_eq!(
            all(&p),
            vec![piece(0x10000, 2, 0x5000), piece(0x14000, 4, 0x9000)]
        );
        // Not pending any more, and outside every piece.
        assert_eq!(p.take_at(0x12000, P), None);
        assert_eq!(p.take_at(0x30000, P), None);
        assert_eq!(p.bytes(), 6 * P);
    }

    #[test]
    fn a_fault_never_takes_past_its_piece() {
        let mut p = Pending::new([piece(0x10000, 2, 0), piece(0x12000, 2, 0x9000)]);
        assert_eq!(
            p.take_at(0x11000, 64 * P).unwrap(),
            piece(0x11000, 1, 0x1000)
        );
    }

    #[test]
    fn prefetch_goes_in_address_order_in_bounded_pieces() {
        let mut p = Pending::new([piece(0x20000, 3, 0), piece(0x10000, 1, 0x8000)]);
        assert_eq!(p.take_first(2 * P).unwrap(), piece(0x10000, 1, 0x8000));
        assert_eq!(p.take_first(2 * P).unwrap(), piece(0x20000, 2, 0));
        assert_eq!(p.take_first(2 * P).unwrap(), piece(0x22000, 1, 0x2000));
        assert!(p.take_first(2 * P).is_none());
        assert!(p.is_empty());
    }

    #[test]
    fn removed_memory_is_forgotten_across_pieces() {
        let mut p = Pending::new([piece(0x10000, 4, 0), piece(0x14000, 4, 0x4000)]);
        p.remove(0x12000, 0x16000);
        assert_eq!(
            all(&p),
            vec![piece(0x10000, 2, 0), piece(0x16000, 2, 0x6000)]
        );
    }

    #[test]
    fn moved_memory_is_pending_at_its_new_place() {
        let mut p = Pending::new([piece(0x10000, 4, 0x1000), piece(0x40000, 1, 0)]);
        // The second half moves over the old one at 0x40000.
        p.moved(0x12000, 0x40000, 2 * P);
        assert_eq!(
            all(&p),
            vec![piece(0x10000, 2, 0x1000), piece(0x40000, 2, 0x3000)]
        );
    }
}
