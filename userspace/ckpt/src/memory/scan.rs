//! Scanning a process's page table for the pages a dump stores: present or swapped pages,
//! less those an earlier process of the tree stored (the same frame, shared copy-on-write:
//! `Stored`, checked byte for byte) and those an incremental image takes from its parent
//! chain (`Reuse`); the runs that come of it.

use super::{PageRun, PAGE};
use crate::dirty::Reuse;
use crate::errors::{checkpoint_io, CheckpointError};
use crate::image::ImageWriter;
use crate::proc::MapEntry;
use crate::stats::Stats;
use ckpt_abi::{CkptRange, CkptRestoreRun};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use xxhash_rust::xxh3::xxh3_128;

/// Pages already in the image, by physical frame (from /proc/PID/pagemap, which shows frames
/// to root): a page a child still shares copy-on-write with its parent is the same frame, and
/// is stored once; the child's page run points at the parent's copy.
#[derive(Debug, Default)]
pub struct Stored {
    pub(super) by_frame: HashMap<u64, u64>,
    /// Compressing, where stored pages cannot be read back to compare: an XXH3-128 of each
    /// page stored, by its offset.
    pub(super) sums: HashMap<u64, u128>,
    /// The tree is one process: no page is shared with a later one, none needs a checksum.
    pub(super) lone: bool,
}

impl Stored {
    /// For a tree of `processes` processes.
    pub fn for_tree(processes: usize) -> Self {
        Stored {
            lone: processes < 2,
            ..Stored::default()
        }
    }
}

/// What scanning a process's page table gathers.
pub(super) struct Scan<'a> {
    pub(super) pid: i32,
    pub(super) pagemap: File,
    pub(super) stored: &'a Stored,
    /// Pages to dump: address -> frame, to remember where they land.
    pub(super) frames: HashMap<u64, u64>,
    /// Pages already stored (by an earlier process of the tree), as runs into the image.
    pub(super) refs: Vec<CkptRestoreRun>,
    /// Pages an incremental image takes from its parent chain (unchanged since it).
    pub(super) reuse: &'a Reuse,
    /// Those pages met, as runs into the images of the chain that hold them.
    pub(super) in_parent: Vec<PageRun>,
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// An XXH3-128 of each page of `runs` (just dumped into `file` at `base`, whose offsets they
/// hold) that a later process may share (one of `frames`), by its offset from `base`.
pub(super) fn page_sums(
    file: &File,
    base: u64,
    (runs, frames): (&[CkptRestoreRun], &HashMap<u64, u64>),
) -> std::io::Result<Vec<(u64, u128)>> {
    let mut sums = Vec::new();
    let mut page = vec![0u8; PAGE as usize];
    for r in runs {
        for i in 0..r.len / PAGE {
            if !frames.contains_key(&(r.addr + i * PAGE)) {
                continue;
            }
            file.read_exact_at(&mut page, r.image_offset + i * PAGE)?;
            sums.push((r.image_offset - base + i * PAGE, xxh3_128(&page)));
        }
    }
    Ok(sums)
}

/// Keeps the pages of `refs` whose bytes in process `pid` are those stored at their image
/// offset (read back from the image, or compared by checksum when compressing); the others
/// go to `anon` (to be stored), which stays sorted and merged.
pub(super) fn verify_refs(
    pid: i32,
    refs: Vec<CkptRestoreRun>,
    (image, stored): (&ImageWriter, &Stored),
    anon: &mut Vec<CkptRange>,
) -> Result<Vec<CkptRestoreRun>, CheckpointError> {
    if refs.is_empty() {
        return Ok(refs);
    }
    let io = |what: &'static str| checkpoint_io(pid, what);
    let mem = File::open(format!("/proc/{pid}/mem")).map_err(io("opening /proc/PID/mem"))?;
    let (mut mine, mut theirs) = (vec![0u8; PAGE as usize], vec![0u8; PAGE as usize]);
    let mut kept: Vec<CkptRestoreRun> = Vec::new();
    for r in refs {
        for i in 0..r.len / PAGE {
            let (addr, offset) = (r.addr + i * PAGE, r.image_offset + i * PAGE);
            mem.read_exact_at(&mut mine, addr)
                .map_err(io("reading a shared page"))?;
            let same = match image.external_pages_limit() {
                Some(_) => stored.sums.get(&offset) == Some(&xxh3_128(&mine)),
                None => {
                    image
                        .read_pages_back(&mut theirs, offset)
                        .map_err(io("reading the image back"))?;
                    mine == theirs
                }
            };
            if !same {
                anon.push(CkptRange {
                    start: addr,
                    end: addr + PAGE,
                });
                continue;
            }
            match kept.last_mut() {
                Some(k) if k.addr + k.len == addr && k.image_offset + k.len == offset => {
                    k.len += PAGE
                }
                _ => kept.push(CkptRestoreRun {
                    addr,
                    len: PAGE,
                    image_offset: offset,
                }),
            }
        }
    }
    anon.sort_by_key(|r| r.start);
    anon.dedup_by(|b, a| {
        if a.end >= b.start {
            a.end = a.end.max(b.end);
            true
        } else {
            false
        }
    });
    Ok(kept)
}

/// The frame number in a pagemap entry (bits 0-54; 0 when not shown).
const PM_PFN: u64 = (1 << 55) - 1;

impl Scan<'_> {
    /// The ranges of `m` whose pages must be stored: present or swapped pages, except a
    /// private file mapping's clean pages (they come from the file) and pages an earlier
    /// process stored (noted in `refs`). Shared file mappings and kernel mappings store
    /// nothing.
    pub(super) fn wanted_ranges(
        &mut self,
        m: &MapEntry,
        stats: &mut Stats,
        out: &mut Vec<CkptRange>,
    ) -> Result<(), CheckpointError> {
        if m.is_special() || (m.shared && m.is_file()) {
            return Ok(());
        }
        let anonymous = !m.is_file();
        let npages = ((m.end - m.start) / PAGE) as usize;
        const BATCH: usize = 4096;
        // Sized to the mapping: a zeroed 32 KiB per one-page mapping was most of the dump
        // time of a process with 10,000 mappings (memset runs slowly under TCG).
        let mut entries = vec![0u8; BATCH.min(npages) * 8];
        let mut first = 0usize;
        while first < npages {
            let n = BATCH.min(npages - first);
            let addr0 = m.start + first as u64 * PAGE;
            self.pagemap
                .read_exact_at(&mut entries[..n * 8], addr0 / PAGE * 8)
                .map_err(checkpoint_io(self.pid, "reading /proc/PID/pagemap"))?;
            stats.pages_scanned += n as u64;
            for (i, e) in entries[..n * 8].chunks_exact(8).enumerate() {
                let mut word = [0u8; 8];
                word.copy_from_slice(e);
                let e = u64::from_le_bytes(word);
                if e & (PM_PRESENT | PM_SWAP) == 0 || (e & PM_FILE != 0 && !anonymous) {
                    continue;
                }
                let addr = addr0 + i as u64 * PAGE;
                self.take(addr, e, out);
            }
            first += n;
        }
        Ok(())
    }

    /// Page `addr` (pagemap entry `e`) is wanted: referenced if its frame is stored already,
    /// else to dump.
    fn take(&mut self, addr: u64, e: u64, out: &mut Vec<CkptRange>) {
        if let Some(p) = self.reuse.get(addr) {
            match self.in_parent.last_mut() {
                Some(r)
                    if !p.starts_run
                        && r.image == p.image
                        && r.addr + r.len == addr
                        && r.offset + r.len == p.offset =>
                {
                    r.len += PAGE
                }
                _ => self.in_parent.push(PageRun {
                    addr,
                    len: PAGE,
                    offset: p.offset,
                    image: p.image,
                }),
            }
            return;
        }
        let frame = (e & PM_PRESENT != 0)
            .then_some(e & PM_PFN)
            .filter(|&f| f != 0);
        if let Some(&offset) = frame.and_then(|f| self.stored.by_frame.get(&f)) {
            match self.refs.last_mut() {
                Some(r) if r.addr + r.len == addr && r.image_offset + r.len == offset => {
                    r.len += PAGE
                }
                _ => self.refs.push(CkptRestoreRun {
                    addr,
                    len: PAGE,
                    image_offset: offset,
                }),
            }
            return;
        }
        // Only a later process of the tree can share it (a map of every page of a lone
        // process cost a tenth of its dump).
        if let Some(f) = frame.filter(|_| !self.stored.lone) {
            self.frames.insert(addr, f);
        }
        match out.last_mut() {
            Some(r) if r.end == addr => r.end += PAGE,
            _ => out.push(CkptRange {
                start: addr,
                end: addr + PAGE,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unchanged pages taken from the parent become runs into the chain: pages that follow
    /// each other in memory and in the parent's file are joined, except where the parent
    /// began a run (a pages section may end there, and a run must lie in one).
    #[test]
    fn pages_from_the_parent_are_joined_only_within_a_parent_run() {
        use crate::dirty::{ParentPage, Reuse};
        let page = |k: u64, starts_run| {
            let (image, offset) = (1, 0x5000 + k * PAGE);
            (
                0x10000 + k * PAGE,
                ParentPage {
                    image,
                    offset,
                    starts_run,
                },
            )
        };
        // Parent runs: pages 0-1 and 2-3, one after the other in its file; page 4 of the
        // grandparent's run (its own offsets) after a gap of one page.
        let mut pages: Vec<_> = (0..4).map(|k| page(k, k % 2 == 0)).collect();
        pages.push((
            0x10000 + 5 * PAGE,
            ParentPage {
                image: 2,
                offset: 0x9000,
                starts_run: false,
            },
        ));
        let (reuse, stored) = (Reuse::of(pages), Stored::default());
        let mut scan = Scan {
            pid: 0,
            pagemap: File::open("/dev/null").unwrap(),
            stored: &stored,
            frames: HashMap::new(),
            refs: Vec::new(),
            reuse: &reuse,
            in_parent: Vec::new(),
        };
        let mut out = Vec::new();
        for k in [0, 1, 2, 3, 5, 6] {
            scan.take(0x10000 + k * PAGE, PM_PRESENT, &mut out);
        }
        let runs: Vec<_> = (scan.in_parent.iter())
            .map(|r| (r.addr, r.len / PAGE, r.offset, r.image))
            .collect();
        assert_eq!(
            runs,
            [
                (0x10000, 2, 0x5000, 1),
                (0x10000 + 2 * PAGE, 2, 0x5000 + 2 * PAGE, 1),
                (0x10000 + 5 * PAGE, 1, 0x9000, 2),
            ]
        );
        let dumped: Vec<_> = out.iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(
            dumped,
            [(0x10000 + 6 * PAGE, 0x10000 + 7 * PAGE)],
            "not in the parent"
        );
    }
}
