//! Which pages a process changed since its last checkpoint: the kernel's soft-dirty bits
//! (CONFIG_MEM_SOFT_DIRTY). Writing "4" to /proc/PID/clear_refs clears them and
//! write-protects the page table; the next write to a page sets its bit again (pagemap bit
//! 55), as do mremap, a new mapping (VM_SOFTDIRTY: all its pages) and a page brought back
//! from swap keeps it. A bit that is not cleared only stays set: failing to clear costs
//! size, never correctness.
//!
//! Every checkpoint of a live tree clears them, at the cut (frozen, once every page is
//! read or snapshotted), and records which image the tracking is now relative to in a
//! small file per process (`RUNTIME_DIR/dirty/PID-STARTTIME`: the new image's id). An
//! incremental checkpoint (`--parent`) reuses a page of the parent only if that file names
//! the parent: a checkpoint that failed after clearing, or any later checkpoint, makes the
//! parent unusable (its pages changed since may show clean).
//!
//! A page is taken from the parent only when it is clean, the parent stored it, and the
//! parent's mapping there is the same (anonymous, or the same file at the same offset); in
//! any doubt (a new process, another process with the same pid, a mapping that changed) the
//! page is stored again. The bits are read with PAGEMAP_SCAN as categories; its own write
//! tracking (PAGE_IS_WRITTEN, PM_SCAN_WP_MATCHING) was not taken: it needs a userfaultfd
//! registered with WP_ASYNC inside the target (injected calls, an fd the program would
//! keep), for the same page granularity.

use crate::memory::{Backing, Vma};
use crate::proc::MapEntry;
use crate::sys::{
    PageRegion, PAGE_IS_FILE, PAGE_IS_GUARD, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SOFT_DIRTY,
    PAGE_IS_SWAPPED,
};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::path::PathBuf;

/// Which kernel process: its pid and start time (ticks since boot, /proc/PID/stat field
/// 22). A pid reused by another process has another start time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    pub start_time: u64,
}

impl Identity {
    pub fn of(pid: i32, st: &crate::proc::Stat) -> Identity {
        Identity {
            pid,
            start_time: st.start_time,
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "process {} (started at tick {})",
            self.pid, self.start_time
        )
    }
}

const PAGE: u64 = crate::image::PAGE;

/// Whether pages in PAGEMAP_SCAN's `categories` are unchanged since the soft-dirty bits were
/// cleared (`anon`: in anonymous memory). Clean is not enough: MADV_DONTNEED drops a page
/// without a trace, and a read then maps the zero page, clean (a new content the bits never
/// show): a zero page (PFNZERO, also the huge one), or a file's page in anonymous memory,
/// counts as changed, as does a guard region.
fn unchanged(categories: u64, anon: bool) -> bool {
    let c = categories;
    if c & (PAGE_IS_SOFT_DIRTY | PAGE_IS_PFNZERO | PAGE_IS_GUARD) != 0 {
        return false;
    }
    if c & PAGE_IS_SWAPPED != 0 {
        return true; // swapped out: the swap entry keeps the bit
    }
    c & PAGE_IS_PRESENT != 0 && !(anon && c & PAGE_IS_FILE != 0)
}

/// Where the chain holds a page an incremental image takes from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentPage {
    /// The image of the chain, seen from the new image (1: the parent).
    pub image: u32,
    /// The page's offset in that image.
    pub offset: u64,
    /// It begins a page run there. A run lies in one pages section, and the next section
    /// may start right where one ends: pages that follow each other in memory and in the
    /// file must still not be joined across that point.
    pub starts_run: bool,
}

/// Pages of a process that an incremental image takes from its parent chain: runs sorted by
/// address, disjoint. Runs, not a map of pages: a map of 65,536 pages, built twice and looked
/// up once per page, was most of an incremental checkpoint's scan of 256 MiB.
#[derive(Debug, Default)]
pub struct Reuse {
    runs: Vec<Taken>,
    /// Every page the chain holds for the process's mappings, changed or not: where a changed
    /// page's previous version is, to store the page as its difference from it.
    previous: Vec<Taken>,
    /// The chain's files by distance (1: the parent), where their pages can serve as such a
    /// base (stored as they are, not compressed).
    bases: Vec<Option<File>>,
}

/// `len` bytes at `addr`, held by the chain from `at` on: each page's place follows the
/// first's, and only the first can begin a parent run.
#[derive(Debug, Clone, Copy)]
struct Taken {
    addr: u64,
    len: u64,
    at: ParentPage,
}

impl Reuse {
    pub fn get(&self, addr: u64) -> Option<ParentPage> {
        page_in(&self.runs, addr)
    }

    /// How many pages.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| (r.len / PAGE) as usize).sum()
    }

    #[cfg(test)]
    pub fn of(pages: impl IntoIterator<Item = (u64, ParentPage)>) -> Reuse {
        let runs = pages.into_iter().map(|(addr, at)| Taken {
            addr,
            len: PAGE,
            at,
        });
        Reuse {
            runs: Reuse::sorted(runs.collect()),
            ..Reuse::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Reads the soft-dirty bits of frozen process `pid` (at the cut) for `maps`, and takes
    /// every unchanged page its parent record `parent` stored in the same mapping.
    /// PAGEMAP_SCAN rather than reading pagemap: it says which pages are the zero page to
    /// any caller (pagemap shows frames to root only), and it took 2-9 ms against 20 for
    /// 256 MiB in the test guest.
    pub fn read(pid: i32, maps: &[MapEntry], parent: &[Vma]) -> io::Result<Reuse> {
        let pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
        let mut reuse = Reuse::default();
        let any_of = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
        let report = any_of | PAGE_IS_SOFT_DIRTY | PAGE_IS_PFNZERO | PAGE_IS_FILE | PAGE_IS_GUARD;
        for m in maps {
            let Some(from) = parent_pages(m, parent) else {
                continue;
            };
            let regions = crate::sys::scan(&pagemap, (m.start, m.end), (any_of, report))?;
            reuse.take_unchanged(&regions, (&from, !m.is_file()));
            reuse.previous.extend(from);
        }
        Ok(Reuse {
            runs: Reuse::sorted(reuse.runs),
            previous: Reuse::sorted(reuse.previous),
            bases: Vec::new(),
        })
    }

    /// Gives the chain's files (`bases[k]`: the k-th ancestor's, None where its pages are
    /// not stored as they are) for changed pages to be stored as differences.
    pub fn with_bases(self, bases: Vec<Option<File>>) -> Reuse {
        Reuse { bases, ..self }
    }

    pub fn bases(&self) -> &[Option<File>] {
        &self.bases
    }

    /// The delta bases (`crate::image::delta`) of pages just dumped as `runs` into a section
    /// whose content starts at `start` of the file the runs point into: for each page whose
    /// previous version the chain holds in an image that can serve, `[page index in the
    /// section, count, image, offset]`, consecutive pages joined.
    pub fn delta_bases(&self, runs: &[ckpt_abi::CkptRestoreRun], start: u64) -> Vec<[u64; 4]> {
        let mut out: Vec<[u64; 4]> = Vec::new();
        for r in runs {
            for k in 0..r.len / PAGE {
                let (Some(base), Some(at)) = (
                    self.base_of(r.addr + k * PAGE),
                    r.image_offset.checked_sub(start),
                ) else {
                    continue;
                };
                let page = at / PAGE + k;
                let (image, offset) = (u64::from(base.image), base.offset);
                match out.last_mut() {
                    Some([first, count, i, o])
                        if *first + *count == page
                            && *i == image
                            && *o + *count * PAGE == offset =>
                    {
                        *count += 1
                    }
                    _ => out.push([page, 1, image, offset]),
                }
            }
        }
        out
    }

    /// Where the chain holds the previous version of page `addr`, if in an image that can
    /// serve as a base.
    fn base_of(&self, addr: u64) -> Option<ParentPage> {
        let p = page_in(&self.previous, addr)?;
        self.bases.get(p.image as usize)?.as_ref().map(|_| p)
    }

    /// Of the pages of `regions` (PAGEMAP_SCAN's), takes those unchanged (see [`unchanged`];
    /// `anon`: anonymous memory) and stored in the parent (`from`).
    fn take_unchanged(&mut self, regions: &[PageRegion], (from, anon): (&[Taken], bool)) {
        for r in regions.iter().filter(|r| unchanged(r.categories, anon)) {
            let first = from.partition_point(|f| f.addr + f.len <= r.start);
            for f in from[first..].iter().take_while(|f| f.addr < r.end) {
                let (start, end) = (f.addr.max(r.start), (f.addr + f.len).min(r.end));
                self.runs.push(Taken {
                    addr: start,
                    len: end - start,
                    at: ParentPage {
                        image: f.at.image,
                        offset: f.at.offset + (start - f.addr),
                        starts_run: f.at.starts_run && start == f.addr,
                    },
                });
            }
        }
    }

    /// `runs` sorted by address; a run overlapping the one before (two records of one page:
    /// not from a sound image) is dropped rather than trusted.
    fn sorted(mut runs: Vec<Taken>) -> Vec<Taken> {
        runs.sort_by_key(|r| r.addr);
        let mut out: Vec<Taken> = Vec::with_capacity(runs.len());
        for r in runs {
            if out.last().is_none_or(|l| l.addr + l.len <= r.addr) {
                out.push(r);
            }
        }
        out
    }
}

/// The pages the parent stored in the mapping at `m`'s place, one image further down the
/// chain, if the parent's mapping is the same (private anonymous memory, or the same file
/// at the same offset); None if nothing can be taken from it.
fn parent_pages(m: &MapEntry, parent: &[Vma]) -> Option<Vec<Taken>> {
    if m.shared || m.is_special() {
        return None;
    }
    let mut runs = Vec::new();
    for v in parent.iter().filter(|v| v.start < m.end && m.start < v.end) {
        if !same_mapping(m, v) {
            continue;
        }
        for r in &v.pages {
            let image = r.image.checked_add(1)?;
            let end = r.addr.checked_add(r.len)?.min(m.end) & !(PAGE - 1);
            let start = r.addr.max(m.start);
            if start >= end || start % PAGE != 0 {
                continue;
            }
            runs.push(Taken {
                addr: start,
                len: end - start,
                at: ParentPage {
                    image,
                    offset: r.offset + (start - r.addr),
                    starts_run: start == r.addr,
                },
            });
        }
    }
    Some(Reuse::sorted(runs)).filter(|o| !o.is_empty())
}

/// The page at `addr` in `runs` (sorted, disjoint).
fn page_in(runs: &[Taken], addr: u64) -> Option<ParentPage> {
    let i = runs.partition_point(|r| r.addr + r.len <= addr);
    let r = runs.get(i).filter(|r| r.addr <= addr)?;
    Some(ParentPage {
        image: r.at.image,
        offset: r.at.offset + (addr - r.addr),
        starts_run: r.at.starts_run && addr == r.addr,
    })
}

/// Whether the parent's mapping `v` maps what `m` maps, where they overlap.
fn same_mapping(m: &MapEntry, v: &Vma) -> bool {
    if v.shared {
        return false;
    }
    match &v.backing {
        Backing::Anonymous => !m.is_file(),
        Backing::File {
            offset, inode, dev, ..
        } => {
            // The same file offset at the same address.
            m.is_file()
                && *inode == m.inode
                && *dev == m.dev
                && offset.wrapping_sub(v.start) == m.offset.wrapping_sub(m.start)
        }
        _ => false,
    }
}

/// The file recording which image the dirty tracking of process `id` is relative to.
fn tracking_file(id: &Identity) -> PathBuf {
    crate::run::default_runtime_dir()
        .join("dirty")
        .join(format!("{}-{}", id.pid, id.start_time))
}

/// The id of the image whose checkpoint last cleared process `id`'s soft-dirty bits, if
/// ckpt knows of one.
pub fn cleared_for(id: &Identity) -> Option<String> {
    let s = std::fs::read_to_string(tracking_file(id)).ok()?;
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// At the cut, the tree still frozen: records that process `id`'s tracking is relative to
/// image `image_id` from now on, then clears its soft-dirty bits. Recorded first: should
/// the clear or the image fail, no older image is taken for the parent of the next one.
pub fn reset(id: &Identity, image_id: &str) -> io::Result<()> {
    let path = tracking_file(id);
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}-{}.tmp", id.pid, std::process::id()));
    std::fs::write(&tmp, format!("{image_id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    std::fs::write(format!("/proc/{}/clear_refs", id.pid), "4")
}

/// Drops the tracking files of processes that no longer exist (a pid and start time that
/// do not match a live process).
pub fn forget_gone() {
    let dir = crate::run::default_runtime_dir().join("dirty");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((pid, start)) = name.split_once('-') else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
            continue;
        };
        let live = crate::proc::stat(pid).is_ok_and(|st| st.start_time == start);
        if !live {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::PageRun;

    fn anon_map(start: u64, end: u64) -> MapEntry {
        MapEntry {
            start,
            end,
            read: true,
            write: true,
            exec: false,
            shared: false,
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            name: String::new(),
            vm_flags: vec![],
        }
    }

    fn vma(start: u64, end: u64, backing: Backing, pages: Vec<PageRun>) -> Vma {
        Vma {
            start,
            end,
            prot: 3,
            shared: false,
            growsdown: false,
            accounted: false,
            backing,
            pages,
        }
    }

    fn run(addr: u64, pages: u64, offset: u64, image: u32) -> PageRun {
        PageRun {
            addr,
            len: pages * PAGE,
            offset,
            image,
        }
    }

    const CLEAN: u64 = PAGE_IS_PRESENT;
    const DIRTY: u64 = PAGE_IS_PRESENT | PAGE_IS_SOFT_DIRTY;

    /// The chain resolution: a clean page points one image further than where the parent
    /// had it (its own pages at 1, its ancestors' at 2...); a dirty page, a page the parent
    /// did not store, an absent one and one in a mapping that changed are not taken.
    #[test]
    fn clean_pages_resolve_one_image_further_and_nothing_doubtful_is_taken() {
        let base = 0x10000u64;
        let parent = vec![vma(
            base,
            base + 8 * PAGE,
            Backing::Anonymous,
            // Pages 0-1 stored by the parent itself, 2-3 by its parent, 6 by the parent.
            vec![
                run(base, 2, 0x5000, 0),
                run(base + 2 * PAGE, 2, 0x9000, 1),
                run(base + 6 * PAGE, 1, 0x7000, 0),
            ],
        )];
        let m = anon_map(base, base + 8 * PAGE);
        let from = parent_pages(&m, &parent).expect("the same mapping");
        let mut reuse = Reuse::default();
        // 0 clean, 1 dirty, 2 clean, 3 swapped clean, 4 clean but not stored, 5 absent,
        // 6 clean, 7 absent: as PAGEMAP_SCAN gives them, runs of the same categories.
        let region = |first: u64, n: u64, categories| PageRegion {
            start: base + first * PAGE,
            end: base + (first + n) * PAGE,
            categories,
        };
        let regions = [
            region(0, 1, CLEAN),
            region(1, 1, DIRTY),
            region(2, 1, CLEAN),
            region(3, 1, PAGE_IS_SWAPPED),
            region(4, 1, CLEAN),
            region(6, 1, CLEAN),
        ];
        reuse.take_unchanged(&regions, (&from, true));
        reuse.runs = Reuse::sorted(reuse.runs);
        let at = |addr| reuse.get(addr).map(|p| (p.image, p.offset));
        assert_eq!(at(base), Some((1, 0x5000)));
        assert_eq!(at(base + PAGE), None, "dirty");
        assert_eq!(at(base + 2 * PAGE), Some((2, 0x9000)));
        assert_eq!(at(base + 3 * PAGE), Some((2, 0xa000)));
        assert_eq!(at(base + 4 * PAGE), None, "not stored in the parent");
        assert_eq!(at(base + 5 * PAGE), None, "absent");
        assert_eq!(at(base + 6 * PAGE), Some((1, 0x7000)));
        assert_eq!(reuse.len(), 4);
    }

    /// Two runs of the parent that follow each other in memory and in its file (the end of
    /// one pages section and the start of the next) stay apart: the second's first page says
    /// it starts a run, so the new image does not join them into one that no section holds.
    #[test]
    fn a_parent_run_boundary_is_kept_where_sections_meet() {
        let base = 0x10000u64;
        let parent = vec![vma(
            base,
            base + 4 * PAGE,
            Backing::Anonymous,
            vec![run(base, 2, 0x5000, 0), run(base + 2 * PAGE, 2, 0x7000, 0)],
        )];
        let from = parent_pages(&anon_map(base, base + 4 * PAGE), &parent).unwrap();
        let starts: Vec<bool> = (0..4)
            .map(|k| page_in(&from, base + k * PAGE).unwrap().starts_run)
            .collect();
        assert_eq!(starts, [true, false, true, false]);
        assert_eq!(page_in(&from, base + 2 * PAGE).unwrap().offset, 0x7000);
    }

    /// MADV_DONTNEED then a read: the zero page, clean. Never taken for unchanged.
    #[test]
    fn the_zero_page_is_never_unchanged() {
        assert!(unchanged(CLEAN, true));
        assert!(!unchanged(DIRTY, true));
        assert!(!unchanged(CLEAN | PAGE_IS_PFNZERO, true), "zero page");
        assert!(
            !unchanged(CLEAN | PAGE_IS_FILE, true),
            "a file page in anonymous memory"
        );
        assert!(
            unchanged(CLEAN | PAGE_IS_FILE, false),
            "a file mapping's page"
        );
        assert!(unchanged(PAGE_IS_SWAPPED, true));
        assert!(!unchanged(PAGE_IS_SWAPPED | PAGE_IS_SOFT_DIRTY, true));
        assert!(
            !unchanged(PAGE_IS_SWAPPED | PAGE_IS_GUARD, true),
            "guard region"
        );
        assert!(!unchanged(0, true), "absent");
    }

    #[test]
    fn a_mapping_that_changed_takes_nothing_from_the_parent() {
        let base = 0x10000u64;
        let file = |offset| Backing::File {
            path: "/lib/x.so".into(),
            offset,
            dev: "08:01".into(),
            inode: 77,
        };
        let stored = vec![run(base, 1, 0x5000, 0)];
        let mut m = anon_map(base, base + PAGE);
        // Anonymous now, a file's before.
        let was_file = vec![vma(base, base + PAGE, file(0), stored.clone())];
        assert!(parent_pages(&m, &was_file).is_none());
        // The same file at another offset.
        (m.inode, m.dev, m.name, m.offset) = (77, "08:01".into(), "/lib/x.so".into(), 0x1000);
        assert!(parent_pages(&m, &was_file).is_none());
        // The same file at the same offset: taken.
        m.offset = 0;
        assert!(parent_pages(&m, &was_file).is_some());
        // Shared now.
        m.shared = true;
        assert!(parent_pages(&m, &was_file).is_none());
        // A mapping the parent had shared.
        let mut shared = vma(base, base + PAGE, Backing::Anonymous, stored);
        shared.shared = true;
        assert!(parent_pages(&anon_map(base, base + PAGE), &[shared]).is_none());
    }
}
