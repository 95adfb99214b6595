// SPDX-License-Identifier: GPL-2.0
//! `CKPT_IOC_DUMP_PAGES`: copies pages of a stopped target straight from its memory into the
//! image file (one copy, no trip through user space; one write call per 64 pages, from their
//! pinned pages through a bvec), leaving out all-zero pages if asked.
//! User space chooses which ranges (the present ones, from /proc/PID/pagemap); the module
//! checksums what it writes as it goes (XXH64, the section's checksum in the image).

use crate::abi::{
    CkptDumpPages, CkptRange, CkptRestoreRun, CKPT_DUMP_MAX_RANGES, CKPT_DUMP_NO_HASH,
    CKPT_DUMP_SKIP_ZERO,
};
use crate::helpers::{self, FileRef, PinnedPage};
use crate::restore::{PAGE, USER_TOP};
use crate::target::Target;
use crate::xxh64::Xxh64;
use kernel::{
    alloc::KVVec,
    prelude::*,
    uaccess::{UserPtr, UserSlice},
};

/// Most runs one call may report.
const MAX_RUNS: u32 = 1 << 22;
/// Pages pinned, then written, at a time (one write call each).
const BATCH: usize = 64;

pub(crate) fn dump_pages(req: &mut CkptDumpPages) -> Result {
    check_request(req)?;
    let skip_zero = req.flags & CKPT_DUMP_SKIP_ZERO != 0;
    let hashing = req.flags & CKPT_DUMP_NO_HASH == 0;
    let ranges = helpers::read_user_array::<CkptRange>(req.ranges, req.range_count)?;
    check_ranges(&ranges)?;
    let target = Target::lookup(req.pid)?;
    let mm = target.access_mm()?;
    let image = FileRef::regular_from_fd(req.image_fd, false, true)?;

    let mut runs = KVVec::<CkptRestoreRun>::new();
    let start_pos = req.file_offset as i64;
    let mut pos = start_pos;
    let mut zero = 0u64;
    let mut hash = Xxh64::new();
    let mut batch = KVec::<PinnedPage>::with_capacity(BATCH, GFP_KERNEL)?;
    let mut keep = KVec::<PinnedPage>::with_capacity(BATCH, GFP_KERNEL)?;
    let mut bvecs = KVec::with_capacity(BATCH, GFP_KERNEL)?;
    for r in ranges.iter() {
        let mut addr = r.start;
        while addr < r.end {
            let want = core::cmp::min(((r.end - addr) / PAGE) as usize, BATCH);
            let got = {
                let lock = mm.mmap_read_lock();
                helpers::pin_remote_pages(&mm, &lock, addr as usize, want, &mut batch)?
            };
            if got == 0 {
                return Err(EFAULT);
            }
            // The pages stay pinned without the lock: hashed (or skipped as zero) one by one,
            // then the kept ones written in one call.
            for (i, page) in batch.drain_all().enumerate() {
                if !helpers::hash_page(&page, skip_zero, hashing.then_some(&mut hash)) {
                    zero += 1;
                    continue;
                }
                let at = pos as u64 + keep.len() as u64 * PAGE;
                add_page(&mut runs, addr + i as u64 * PAGE, at)?;
                keep.push(page, GFP_KERNEL)?;
            }
            image.write_pages(&keep, &mut pos, &mut bvecs)?;
            keep.clear();
            addr += got as u64 * PAGE;
            if helpers::signal_pending() {
                return Err(EINTR);
            }
        }
    }
    if runs.len() > req.max_runs as usize {
        return Err(ENOSPC);
    }
    let out = usize::try_from(req.runs).map_err(|_| EFAULT)?;
    let mut writer = UserSlice::new(
        UserPtr::from_addr(out),
        runs.len() * core::mem::size_of::<CkptRestoreRun>(),
    )
    .writer();
    for run in runs.iter() {
        writer.write(run)?;
    }
    req.run_count = runs.len() as u32;
    req.bytes_written = (pos - start_pos) as u64;
    req.pages_zero = zero;
    req.xxh64 = if hashing { hash.digest() } else { 0 };
    Ok(())
}

/// The request's flags, counts and file offset are in bounds (EINVAL otherwise).
fn check_request(req: &CkptDumpPages) -> Result {
    if req.flags & !(CKPT_DUMP_SKIP_ZERO | CKPT_DUMP_NO_HASH) != 0
        || req.range_count > CKPT_DUMP_MAX_RANGES
        || req.max_runs > MAX_RUNS
        || req.file_offset % PAGE != 0
        || i64::try_from(req.file_offset).is_err()
    {
        return Err(EINVAL);
    }
    Ok(())
}

/// The ranges are page-aligned, non-empty, below `USER_TOP`, sorted and disjoint (EINVAL
/// otherwise).
fn check_ranges(ranges: &[CkptRange]) -> Result {
    let mut prev_end = 0;
    for r in ranges {
        if r.start % PAGE != 0
            || r.end % PAGE != 0
            || r.start >= r.end
            || r.end > USER_TOP
            || r.start < prev_end
        {
            return Err(EINVAL);
        }
        prev_end = r.end;
    }
    Ok(())
}

/// Records the page at `page_addr`, written at image offset `at`: it extends the last run when
/// it follows that run both in memory and in the file, else it starts a new run.
fn add_page(runs: &mut KVVec<CkptRestoreRun>, page_addr: u64, at: u64) -> Result {
    match runs.last_mut() {
        Some(run) if run.addr + run.len == page_addr && run.image_offset + run.len == at => {
            run.len += PAGE;
        }
        _ => runs.push(
            CkptRestoreRun {
                addr: page_addr,
                len: PAGE,
                image_offset: at,
            },
            GFP_KERNEL,
        )?,
    }
    Ok(())
}

#[kunit_tests(ckpt_dump_pages)]
mod tests {
    use super::*;
    use crate::xxh64::STRIPE;

    fn range(start: u64, end: u64) -> CkptRange {
        CkptRange { start, end }
    }

    #[test]
    fn request_flags_counts_and_offset_are_checked() {
        let ok = CkptDumpPages::default();
        assert_eq!(check_request(&ok), Ok(()));
        let skip = CkptDumpPages {
            flags: CKPT_DUMP_SKIP_ZERO,
            range_count: CKPT_DUMP_MAX_RANGES,
            max_runs: MAX_RUNS,
            file_offset: 3 * PAGE,
            ..ok
        };
        assert_eq!(check_request(&skip), Ok(()));
        let unhashed = CkptDumpPages {
            flags: CKPT_DUMP_SKIP_ZERO | CKPT_DUMP_NO_HASH,
            ..ok
        };
        assert_eq!(check_request(&unhashed), Ok(()));
        let bad = [
            CkptDumpPages { flags: 4, ..ok },
            CkptDumpPages {
                flags: CKPT_DUMP_SKIP_ZERO | 1 << 31,
                ..ok
            },
            CkptDumpPages {
                range_count: CKPT_DUMP_MAX_RANGES + 1,
                ..ok
            },
            CkptDumpPages {
                max_runs: MAX_RUNS + 1,
                ..ok
            },
            CkptDumpPages {
                file_offset: PAGE + 512,
                ..ok
            },
            // Page-aligned but past what a file position (loff_t) can hold.
            CkptDumpPages {
                file_offset: 1 << 63,
                ..ok
            },
        ];
        for req in bad.iter() {
            assert_eq!(check_request(req), Err(EINVAL));
        }
    }

    #[test]
    fn ranges_must_be_aligned_sorted_disjoint_and_in_user_space() {
        assert_eq!(check_ranges(&[]), Ok(()));
        let adjacent = [range(PAGE, 2 * PAGE), range(2 * PAGE, 5 * PAGE)];
        assert_eq!(check_ranges(&adjacent), Ok(()));
        assert_eq!(check_ranges(&[range(0, USER_TOP)]), Ok(()));
        let bad: [&[CkptRange]; 7] = [
            &[range(PAGE + 1, 2 * PAGE)],
            &[range(PAGE, 2 * PAGE - 1)],
            &[range(PAGE, PAGE)],
            &[range(2 * PAGE, PAGE)],
            &[range(PAGE, USER_TOP + PAGE)],
            // Overlapping, then out of order.
            &[range(PAGE, 3 * PAGE), range(2 * PAGE, 4 * PAGE)],
            &[range(4 * PAGE, 5 * PAGE), range(PAGE, 2 * PAGE)],
        ];
        for ranges in bad.iter() {
            assert_eq!(check_ranges(ranges), Err(EINVAL));
        }
    }

    #[test]
    fn pages_following_in_memory_and_file_share_a_run() -> Result {
        let mut runs = KVVec::new();
        add_page(&mut runs, 0x10000, 0)?;
        add_page(&mut runs, 0x11000, PAGE)?;
        add_page(&mut runs, 0x12000, 2 * PAGE)?;
        // Next in memory but not in the file (as after a skipped zero page: it is not written,
        // so the file does not advance while the address does).
        add_page(&mut runs, 0x13000, 4 * PAGE)?;
        // Next in the file but not in memory.
        add_page(&mut runs, 0x20000, 5 * PAGE)?;
        add_page(&mut runs, 0x21000, 6 * PAGE)?;
        let want = [
            CkptRestoreRun {
                addr: 0x10000,
                len: 3 * PAGE,
                image_offset: 0,
            },
            CkptRestoreRun {
                addr: 0x13000,
                len: PAGE,
                image_offset: 4 * PAGE,
            },
            CkptRestoreRun {
                addr: 0x20000,
                len: 2 * PAGE,
                image_offset: 5 * PAGE,
            },
        ];
        assert_eq!(&runs[..], &want[..]);
        Ok(())
    }

    #[test]
    fn xxh64_in_the_kernel_matches_the_reference() -> Result {
        // Reference values from the XXH64 specification's algorithm (seed 0), computed outside
        // the kernel: a zero page, and a page of the pattern (i * 7 + 3) & 0xff.
        let zero = KVVec::from_elem(0u8, PAGE as usize, GFP_KERNEL)?;
        let mut h = Xxh64::new();
        h.update(&zero);
        assert_eq!(h.digest(), 0xac86_9b6f_32d8_bbdb);
        let mut page = KVVec::with_capacity(PAGE as usize, GFP_KERNEL)?;
        for i in 0..PAGE as usize {
            page.push((i * 7 + 3) as u8, GFP_KERNEL)?;
        }
        let mut h = Xxh64::new();
        // Fed in two pieces: the running state must carry over between calls.
        let (a, b) = page.split_at(5 * STRIPE);
        h.update(a);
        h.update(b);
        assert_eq!(h.digest(), 0x7963_98cd_4327_97cc);
        Ok(())
    }
}
