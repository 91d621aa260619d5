//! The pages of one process still to copy: non-overlapping pieces of stored memory keyed by
//! address, each with its place in the page file. Faults and the background pass take pieces
//! out; unmap, discard and mremap events drop or move them, so nothing is ever copied into
//! memory the program gave up.

use std::collections::BTreeMap;

use super::plan::Piece;

#[derive(Debug, Clone, Default)]
pub struct PageMap {
    /// start -> (len, file offset).
    pieces: BTreeMap<u64, (u64, u64)>,
    bytes: u64,
}

impl PageMap {
    pub fn new(pieces: &[Piece]) -> PageMap {
        let mut m = PageMap::default();
        for p in pieces.iter().filter(|p| p.len > 0) {
            m.insert(*p);
        }
        m
    }

    fn insert(&mut self, p: Piece) {
        self.bytes += p.len;
        self.pieces.insert(p.vaddr, (p.len, p.file_offset));
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Bytes still to copy.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The piece holding `addr`, if any.
    fn holding(&self, addr: u64) -> Option<Piece> {
        let (&start, &(len, off)) = self.pieces.range(..=addr).next_back()?;
        (addr < start + len).then_some(Piece {
            vaddr: start,
            len,
            file_offset: off,
        })
    }

    /// Takes the part of `start..end` this map holds out of it, returning the parts taken in
    /// address order.
    pub fn take_range(&mut self, start: u64, end: u64) -> Vec<Piece> {
        let mut taken = Vec::new();
        if start >= end {
            return taken;
        }
        // The piece that begins before `start` and reaches into the range, then every piece
        // that begins inside it.
        let mut keys: Vec<u64> = Vec::new();
        if let Some(p) = self.holding(start) {
            keys.push(p.vaddr);
        }
        keys.extend(self.pieces.range(start..end).map(|(&k, _)| k));
        keys.dedup();
        for k in keys {
            let (len, off) = self.pieces.remove(&k).expect("listed above");
            self.bytes -= len;
            let (ps, pe) = (k, k + len);
            let (cs, ce) = (ps.max(start), pe.min(end));
            if ps < cs {
                self.insert(Piece {
                    vaddr: ps,
                    len: cs - ps,
                    file_offset: off,
                });
            }
            if ce < pe {
                self.insert(Piece {
                    vaddr: ce,
                    len: pe - ce,
                    file_offset: off + (ce - ps),
                });
            }
            taken.push(Piece {
                vaddr: cs,
                len: ce - cs,
                file_offset: off + (cs - ps),
            });
        }
        taken
    }

    /// For a fault at page `page` (of `page_size` bytes): takes the stored run around it, at
    /// most `batch` bytes (and always the page), from `before` bytes below the page on. None when the page is not stored here (absent at dump
    /// time, already copied, or given up by the program).
    pub fn take_around(
        &mut self,
        page: u64,
        page_size: u64,
        before: u64,
        batch: u64,
    ) -> Option<Piece> {
        let p = self.holding(page)?;
        let start = page.saturating_sub(before).max(p.vaddr);
        let end = (start + batch).max(page + page_size).min(p.vaddr + p.len);
        let mut taken = self.take_range(start, end);
        debug_assert_eq!(taken.len(), 1);
        taken.pop()
    }

    /// Takes the lowest stored run, at most `max` bytes (the background pass).
    pub fn take_next(&mut self, max: u64) -> Option<Piece> {
        let (&start, &(len, _)) = self.pieces.iter().next()?;
        self.take_range(start, start + len.min(max)).pop()
    }

    /// Puts back a piece taken but not copied (the kernel asked to retry).
    pub fn put_back(&mut self, p: Piece) {
        if p.len > 0 {
            self.insert(p);
        }
    }

    /// mremap moved `from..from+len` to `to`: the pieces there move with it.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        let moved = self.take_range(from, from + len);
        // Whatever was stored at the destination is gone (MREMAP_FIXED replaced it).
        self.take_range(to, to + len);
        for p in moved {
            self.insert(Piece {
                vaddr: p.vaddr - from + to,
                ..p
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(vaddr: u64, len: u64, file_offset: u64) -> Piece {
        Piece {
            vaddr,
            len,
            file_offset,
        }
    }

    #[test]
    fn faults_take_a_batch_around_the_page() {
        let mut m = PageMap::new(&[piece(0x10000, 0x20000, 0x5000)]);
        let p = m.take_around(0x18000, 0x1000, 0x4000, 0x10000).unwrap();
        assert_eq!(p, piece(0x14000, 0x10000, 0x9000));
        assert_eq!(m.bytes(), 0x10000);
        // Taken: a second fault there finds nothing to copy.
        assert!(m.take_around(0x18000, 0x1000, 0, 0x1000).is_none());
        assert_eq!(
            m.take_around(0x10000, 0x1000, 0x4000, 0x1000).unwrap(),
            piece(0x10000, 0x1000, 0x5000)
        );
    }

    #[test]
    fn unmapped_ranges_are_dropped_and_remaps_move() {
        let mut m = PageMap::new(&[piece(0x10000, 0x4000, 0), piece(0x20000, 0x2000, 0x4000)]);
        m.take_range(0x11000, 0x12000);
        m.remap(0x20000, 0x40000, 0x2000);
        assert_eq!(m.take_next(u64::MAX).unwrap(), piece(0x10000, 0x1000, 0));
        assert_eq!(
            m.take_next(u64::MAX).unwrap(),
            piece(0x12000, 0x2000, 0x2000)
        );
        assert_eq!(m.take_next(0x1000).unwrap(), piece(0x40000, 0x1000, 0x4000));
        assert_eq!(m.take_next(0x1000).unwrap(), piece(0x41000, 0x1000, 0x5000));
        assert!(m.is_empty());
        assert_eq!(m.bytes(), 0);
    }
}
