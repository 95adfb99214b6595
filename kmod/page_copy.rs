// SPDX-License-Identifier: GPL-2.0
//! The restore's page copy: every page run read from its image file into the caller's new
//! address space, split in chunks (the parts of the runs in each [`CHUNK`]-aligned window of
//! the address space) that the caller and one kernel worker claim in turn. On two CPUs the
//! copy and the faults that allocate (and zero) the memory run side by side; claiming chunks
//! one at a time balances the halves whatever the runs' sizes and however late the worker
//! starts.
//!
//! The worker adopts the caller's mm (`kthread_use_mm`), so the copy is the same code in both:
//! a chunk's pages pinned for writing (FOLL_FORCE, so read-only private mappings need no
//! mprotect dance) and read into through their kernel mapping, one copy from the page cache.
//!
//! # Invariants
//!
//! The caller never returns before the worker's function has returned ([`flush_work`] in
//! [`PageCopy::run`]): the mm and the files stay in use only while the ioctl is in progress,
//! and no code of the module runs once the ioctl is over (the module may unload then).
//!
//! [`flush_work`]: srctree/kernel/workqueue.c

use crate::abi::CkptRestoreRun;
use crate::helpers::{self, FileRef};
use kernel::{
    alloc::KVVec,
    bindings,
    mm::MmWithUser,
    prelude::*,
    sync::{
        aref::ARef,
        atomic::{Atomic, Relaxed},
        Arc,
    },
    task::Task,
    workqueue::{self, impl_has_work, new_work, Work, WorkItem},
};

const PAGE: u64 = 4096;
/// How much page data is copied per step (and per check for a kill), at most: chunks end at
/// the multiples of this size in the address space. It is the size of a transparent huge
/// page: two copiers claiming the halves of one huge page would both fault it, and the one
/// that loses the race throws away a huge page it has just zeroed.
const CHUNK: u64 = 2 << 20;
/// Below this much page data, a worker costs more than it saves.
const WORKER_MIN: u64 = 16 << 20;

/// How many [`CHUNK`]-aligned windows of the address space `run` (validated: not empty)
/// touches.
fn chunks_of(run: &CkptRestoreRun) -> Result<u64> {
    let last = run
        .addr
        .checked_add(run.len)
        .ok_or(EINVAL)?
        .checked_sub(1)
        .ok_or(EINVAL)?;
    Ok(last / CHUNK - run.addr / CHUNK + 1)
}

/// The part of one run inside one [`CHUNK`]-aligned window of the address space, read from
/// `files[file]` at `image_offset`.
#[derive(Clone, Copy)]
struct Chunk {
    addr: u64,
    image_offset: u64,
    len: u64,
    file: usize,
}

/// Scratch room for one copier: a chunk's pinned pages and their bvecs.
struct Scratch {
    pages: KVec<*mut bindings::page>,
    bvecs: KVec<bindings::bio_vec>,
}

impl Scratch {
    fn new() -> Result<Self> {
        let n = (CHUNK / PAGE) as usize;
        Ok(Scratch {
            pages: KVec::with_capacity(n, GFP_KERNEL)?,
            bvecs: KVec::with_capacity(n, GFP_KERNEL)?,
        })
    }
}

/// The chunks of a restore's page runs, numbered in run order.
struct ChunkMap {
    /// Each file's runs: the first's index in `runs`, and how many.
    spans: KVVec<(usize, usize)>,
    runs: KVVec<CkptRestoreRun>,
    /// For each run, how many chunks come before it.
    starts: KVVec<u64>,
    chunks: u64,
    bytes: u64,
}

impl ChunkMap {
    /// The chunks of `runs`, those of file `i` being the `spans[i]` = (first, count) range of
    /// them (validated already: page-aligned, not empty).
    fn new(spans: KVVec<(usize, usize)>, runs: KVVec<CkptRestoreRun>) -> Result<Self> {
        let mut starts = KVVec::with_capacity(runs.len(), GFP_KERNEL)?;
        let (mut chunks, mut bytes) = (0u64, 0u64);
        for run in runs.iter() {
            starts.push(chunks, GFP_KERNEL)?;
            chunks = chunks.checked_add(chunks_of(run)?).ok_or(EINVAL)?;
            bytes = bytes.checked_add(run.len).ok_or(EINVAL)?;
        }
        Ok(ChunkMap {
            spans,
            runs,
            starts,
            chunks,
            bytes,
        })
    }

    /// Chunk `k`: its run (the last starting at or before it), its place in the run, and the
    /// file the run is read from; `None` past the last.
    fn chunk(&self, k: u64) -> Option<Chunk> {
        if k >= self.chunks {
            return None;
        }
        let i = self.starts.partition_point(|&s| s <= k).checked_sub(1)?;
        let run = self.runs.get(i)?;
        // The run's n-th window of the address space, its first being the one it starts in.
        let n = k.checked_sub(*self.starts.get(i)?)?;
        let window = (run.addr / CHUNK).checked_add(n)?.checked_mul(CHUNK)?;
        let start = core::cmp::max(run.addr, window);
        let end = core::cmp::min(run.addr.checked_add(run.len)?, window.checked_add(CHUNK)?);
        let file = self
            .spans
            .partition_point(|&(first, _)| first <= i)
            .checked_sub(1)?;
        Some(Chunk {
            addr: start,
            image_offset: run.image_offset.checked_add(start.checked_sub(run.addr)?)?,
            len: end.checked_sub(start)?,
            file,
        })
    }
}

/// The copy of one restore's page runs, shared by the caller and its worker.
#[pin_data]
pub(crate) struct PageCopy {
    files: KVVec<FileRef>,
    map: ChunkMap,
    /// The next chunk to claim.
    next: Atomic<u64>,
    /// The first error either copier met (a negative errno), 0 while none.
    failed: Atomic<i32>,
    /// The ioctl's caller: the worker stops once it is killed.
    caller: ARef<Task>,
    mm: ARef<MmWithUser>,
    #[pin]
    work: Work<PageCopy>,
}

impl_has_work! {
    impl HasWork<Self> for PageCopy { self.work }
}

impl PageCopy {
    /// The copy of `runs` (those of `files[i]` being the `spans[i]` = (first, count) range
    /// of them, validated already) into `mm`, the caller's. Allocates everything the copy
    /// needs, so it is called before the point of no return.
    pub(crate) fn new(
        files: KVVec<FileRef>,
        spans: KVVec<(usize, usize)>,
        runs: KVVec<CkptRestoreRun>,
        mm: ARef<MmWithUser>,
    ) -> Result<Arc<Self>> {
        let map = ChunkMap::new(spans, runs)?;
        let caller = ARef::from(&**kernel::current!());
        Arc::pin_init(
            pin_init!(PageCopy {
                files,
                map,
                next: Atomic::new(0),
                failed: Atomic::new(0),
                caller,
                mm,
                work <- new_work!("PageCopy::work"),
            }),
            GFP_KERNEL,
        )
    }

    /// Copies every chunk, with a worker when there is enough to share. Returns the first
    /// error met (EINTR once the caller is killed).
    pub(crate) fn run(self: Arc<Self>) -> Result {
        let shared = self.map.bytes >= WORKER_MIN
            && workqueue::system_unbound().enqueue(self.clone()).is_ok();
        let mine = Scratch::new()
            .and_then(|mut s| self.copy_chunks(&mut s, helpers::fatal_signal_pending));
        if let Err(e) = mine {
            self.fail(e);
        }
        if shared {
            // SAFETY: `self.work` is the initialised work item queued above, alive as long as
            // `self`; flush_work returns once its function has returned (see # Invariants).
            unsafe { bindings::flush_work(Work::raw_get(&self.work)) };
        }
        match self.failed.load(Relaxed) {
            0 => Ok(()),
            e => Err(Error::from_errno(e)),
        }
    }

    /// Claims and copies chunks until none is left, either copier has failed, or `killed`.
    fn copy_chunks(&self, scratch: &mut Scratch, killed: impl Fn() -> bool) -> Result {
        loop {
            if self.failed.load(Relaxed) != 0 {
                return Ok(()); // the other copier's error is the one reported
            }
            if killed() {
                return Err(EINTR);
            }
            let Some(chunk) = self.map.chunk(self.next.fetch_add(1, Relaxed)) else {
                return Ok(());
            };
            let file = self.files.get(chunk.file).ok_or(EINVAL)?;
            helpers::with_own_pages_pinned(
                chunk.addr as usize,
                (chunk.len / PAGE) as usize,
                &mut scratch.pages,
                |pages| file.read_into_pages(pages, chunk.image_offset, &mut scratch.bvecs),
            )?;
        }
    }

    /// Records `e` unless an error is recorded already.
    fn fail(&self, e: Error) {
        let _ = self.failed.cmpxchg(0, e.to_errno(), Relaxed);
    }
}

impl WorkItem for PageCopy {
    type Pointer = Arc<PageCopy>;

    fn run(this: Arc<PageCopy>) {
        let mm = this.mm.as_raw();
        // SAFETY: a workqueue worker is a kthread with no mm of its own; `mm` is held by
        // `this` (mm_users) and, the caller waiting in flush_work, stays the caller's live
        // address space until we unuse it below.
        unsafe { bindings::kthread_use_mm(mm) };
        let caller = this.caller.clone();
        let result = Scratch::new()
            .and_then(|mut s| this.copy_chunks(&mut s, || helpers::task_killed(&caller)));
        // SAFETY: paired with the kthread_use_mm above, on the same worker.
        unsafe { bindings::kthread_unuse_mm(mm) };
        if let Err(e) = result {
            this.fail(e);
        }
    }
}

#[kunit_tests(ckpt_page_copy)]
mod tests {
    use super::*;

    fn run(addr: u64, len: u64, image_offset: u64) -> CkptRestoreRun {
        CkptRestoreRun {
            addr,
            len,
            image_offset,
        }
    }

    fn map(spans: &[(usize, usize)], runs: &[CkptRestoreRun]) -> Result<ChunkMap> {
        let mut s = KVVec::new();
        for &x in spans {
            s.push(x, GFP_KERNEL)?;
        }
        let mut r = KVVec::new();
        for &x in runs {
            r.push(x, GFP_KERNEL)?;
        }
        ChunkMap::new(s, r)
    }

    #[test]
    fn runs_are_cut_at_the_windows_of_the_address_space_in_order() -> Result {
        const MIB: u64 = 1 << 20;
        // File 0: an aligned run of 2.5 windows and one of a page; file 1 (after an empty
        // file): a run of 3 MiB starting 1 MiB into a window and ending 1 MiB into another.
        let runs = [
            run(0x10000000, 5 * CHUNK / 2, 0x1000),
            run(0x20000000, PAGE, 0x300000),
            run(0x30000000 + MIB, 3 * MIB, 0x5000),
        ];
        let m = map(&[(0, 2), (2, 0), (2, 1)], &runs)?;
        assert_eq!((m.chunks, m.bytes), (6, 5 * CHUNK / 2 + PAGE + 3 * MIB));
        let want = [
            (0x10000000, 0x1000, CHUNK, 0),
            (0x10000000 + CHUNK, 0x1000 + CHUNK, CHUNK, 0),
            (0x10000000 + 2 * CHUNK, 0x1000 + 2 * CHUNK, CHUNK / 2, 0),
            (0x20000000, 0x300000, PAGE, 0),
            // Only to the end of the window the run starts in: a huge page is one chunk.
            (0x30000000 + MIB, 0x5000, CHUNK - MIB, 2),
            (
                0x30000000 + CHUNK,
                0x5000 + CHUNK - MIB,
                3 * MIB - (CHUNK - MIB),
                2,
            ),
        ];
        for (k, &(addr, at, len, file)) in want.iter().enumerate() {
            let c = m.chunk(k as u64).ok_or(EINVAL)?;
            assert_eq!(
                (c.addr, c.image_offset, c.len, c.file),
                (addr, at, len, file)
            );
        }
        assert!(m.chunk(6).is_none());
        assert!(m.chunk(u64::MAX).is_none());
        Ok(())
    }

    #[test]
    fn a_run_ending_on_a_window_boundary_has_no_empty_chunk() -> Result {
        let m = map(&[(0, 1)], &[run(0x40000000 - PAGE, PAGE + CHUNK, 0)])?;
        assert_eq!(m.chunks, 2);
        let c = m.chunk(1).ok_or(EINVAL)?;
        assert_eq!((c.addr, c.image_offset, c.len), (0x40000000, PAGE, CHUNK));
        assert!(m.chunk(2).is_none());
        Ok(())
    }

    #[test]
    fn no_runs_make_no_chunks() -> Result {
        let m = map(&[(0, 0)], &[])?;
        assert_eq!((m.chunks, m.bytes), (0, 0));
        assert!(m.chunk(0).is_none());
        Ok(())
    }
}
