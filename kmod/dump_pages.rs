// SPDX-License-Identifier: GPL-2.0
//! `CKPT_IOC_DUMP_PAGES`: copies pages of a stopped target straight from its memory into the
//! image file (one copy, no trip through user space), leaving out all-zero pages if asked.
//! User space chooses which ranges (the present ones, from /proc/PID/pagemap); the module
//! checksums what it writes as it goes (XXH64, the section's checksum in the image).

use crate::abi::{
    CkptDumpPages, CkptRange, CkptRestoreRun, CKPT_DUMP_MAX_RANGES, CKPT_DUMP_SKIP_ZERO,
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

pub(crate) fn dump_pages(req: &mut CkptDumpPages) -> Result {
    if req.flags & !CKPT_DUMP_SKIP_ZERO != 0
        || req.range_count > CKPT_DUMP_MAX_RANGES
        || req.max_runs > MAX_RUNS
        || req.file_offset % PAGE != 0
        || i64::try_from(req.file_offset).is_err()
    {
        return Err(EINVAL);
    }
    let skip_zero = req.flags & CKPT_DUMP_SKIP_ZERO != 0;
    let ranges = helpers::read_user_array::<CkptRange>(req.ranges, req.range_count)?;
    let mut prev_end = 0;
    for r in ranges.iter() {
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
    let target = Target::lookup(req.pid)?;
    let mm = target.access_mm()?;
    let image = FileRef::regular_from_fd(req.image_fd, false, true)?;

    let mut runs = KVVec::<CkptRestoreRun>::new();
    let start_pos = req.file_offset as i64;
    let mut pos = start_pos;
    let mut zero = 0u64;
    let mut hash = Xxh64::new();
    let mut batch = KVec::<PinnedPage>::with_capacity(64, GFP_KERNEL)?;
    for r in ranges.iter() {
        let mut addr = r.start;
        while addr < r.end {
            let want = ((r.end - addr) / PAGE) as usize;
            let got = {
                let lock = mm.mmap_read_lock();
                helpers::pin_remote_pages(&mm, &lock, addr as usize, want, &mut batch)?
            };
            if got == 0 {
                return Err(EFAULT);
            }
            // The pages stay pinned without the lock; write them out.
            for (i, page) in batch.drain_all().enumerate() {
                let page_addr = addr + i as u64 * PAGE;
                let at = pos as u64;
                if !helpers::dump_page(page, &image, &mut pos, skip_zero, &mut hash)? {
                    zero += 1;
                    continue;
                }
                match runs.last_mut() {
                    Some(run)
                        if run.addr + run.len == page_addr && run.image_offset + run.len == at =>
                    {
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
            }
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
    req.xxh64 = hash.digest();
    Ok(())
}
