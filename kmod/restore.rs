// SPDX-License-Identifier: GPL-2.0
//! `CKPT_IOC_RESTORE`: replaces the calling process's address space with an image's.
//!
//! Sequence (see docs/design.md, "Restore"):
//! 1. copy every argument into kernel memory and validate all of it (never trust the image);
//! 2. point of no return: unmap every mapping but the kept ranges (vDSO/vvar) and the memory
//!    the caller put in place (`CKPT_VMA_IN_PLACE`: private anonymous memory mapped before it
//!    forked, shared copy-on-write with its children as when checkpointed);
//! 3. map every other VMA (`vm_mmap`, files through the caller's fds);
//! 4. copy page runs from the image files into place (FOLL_FORCE writes, so read-only
//!    mappings need no mprotect dance): one file, or an incremental image's chain, each run
//!    read from the image of the chain that holds it;
//! 5. install the mm layout (brk, arg/env, auxv, ...).
//!
//! A failure in 2-5 kills the caller: it never returns into a half-built address space.
//!
//! Registers are not set here: the caller's ptrace supervisor sets them at the syscall-exit
//! stop, through the kernel's own validated PTRACE_SETREGS / PTRACE_SETREGSET paths.

use crate::abi::{
    CkptMmLayout, CkptRange, CkptRestore, CkptRestoreImage, CkptRestoreRun, CkptRestoreVma,
    CKPT_PROT_EXEC, CKPT_PROT_READ, CKPT_PROT_WRITE, CKPT_RESTORE_MAX_IMAGES,
    CKPT_RESTORE_MAX_KEEP, CKPT_RESTORE_MAX_RUNS, CKPT_RESTORE_MAX_VMAS, CKPT_VMA_FILE,
    CKPT_VMA_GROWSDOWN, CKPT_VMA_IN_PLACE, CKPT_VMA_KNOWN_FLAGS, CKPT_VMA_SHARED,
};
use crate::helpers::{self, FileRef};
use kernel::{alloc::KVVec, bindings, mm::MmWithUser, prelude::*};

pub(crate) const PAGE: u64 = 4096;
// mmap() flags: x86-64 UAPI values (asm-generic/mman-common.h, asm/mman.h), absent from the
// Rust bindings.
const MAP_SHARED: u32 = 0x01;
const MAP_PRIVATE: u32 = 0x02;
const MAP_FIXED: u32 = 0x10;
const MAP_ANONYMOUS: u32 = 0x20;
const MAP_GROWSDOWN: u32 = 0x0100;
/// The top of a 4-level x86-64 user address space; anything above is refused.
pub(crate) const USER_TOP: u64 = (1 << 47) - PAGE;
/// How much page data is copied per step.
const CHUNK: usize = 1 << 20;

/// An image file held, with the runs read from it (a range of the run list).
struct Source {
    file: FileRef,
    fd: u32,
    first: usize,
    count: usize,
}

/// A VMA to create, with its file held.
struct NewVma {
    vma: CkptRestoreVma,
    file: Option<FileRef>,
}

fn aligned(x: u64) -> bool {
    x % PAGE == 0
}

fn overlaps(a_start: u64, a_end: u64, b: &CkptRange) -> bool {
    a_start < b.end && b.start < a_end
}

fn validate_layout(mm: &CkptMmLayout) -> Result {
    let addrs = [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
    ];
    let ordered = mm.start_code <= mm.end_code
        && mm.start_data <= mm.end_data
        && mm.start_brk <= mm.brk
        && mm.arg_start <= mm.arg_end
        && mm.env_start <= mm.env_end;
    if !ordered || addrs.iter().any(|&a| a > USER_TOP) {
        return Err(EINVAL);
    }
    Ok(())
}

/// Checks the VMA list: page-aligned, in the user range, sorted, disjoint, not over a kept
/// range, known prot and flag bits, files only where flagged. Takes the file references.
fn validate_vmas(raw: KVVec<CkptRestoreVma>, keep: &[CkptRange]) -> Result<KVVec<NewVma>> {
    let mut out = KVVec::with_capacity(raw.len(), GFP_KERNEL)?;
    let mut prev_end = 0u64;
    for vma in raw.iter().copied() {
        let prot_ok = vma.prot & !(CKPT_PROT_READ | CKPT_PROT_WRITE | CKPT_PROT_EXEC) == 0;
        let sane = aligned(vma.start)
            && aligned(vma.end)
            && vma.start < vma.end
            && vma.end <= USER_TOP
            && vma.start >= prev_end
            && prot_ok
            && vma.flags & !CKPT_VMA_KNOWN_FLAGS == 0
            && vma._reserved == 0
            && !keep.iter().any(|k| overlaps(vma.start, vma.end, k));
        if !sane {
            return Err(EINVAL);
        }
        prev_end = vma.end;
        let in_place = vma.flags & CKPT_VMA_IN_PLACE != 0;
        if in_place && vma.flags & (CKPT_VMA_FILE | CKPT_VMA_SHARED) != 0 {
            return Err(EINVAL);
        }
        let file = if vma.flags & CKPT_VMA_FILE != 0 {
            if !aligned(vma.file_offset) {
                return Err(EINVAL);
            }
            Some(FileRef::from_fd(vma.fd)?)
        } else {
            if vma.fd != -1 || vma.file_offset != 0 {
                return Err(EINVAL);
            }
            None
        };
        out.push(NewVma { vma, file }, GFP_KERNEL)?;
    }
    Ok(out)
}

/// The files the runs are read from: `image_fd` for all of them, or the image table (each
/// entry a regular file open for reading; their run counts cover the run list exactly).
fn image_sources(req: &CkptRestore) -> Result<KVVec<Source>> {
    let mut out = KVVec::new();
    if req.image_count == 0 {
        out.push(Source::open(req.image_fd, 0, req.run_count)?, GFP_KERNEL)?;
        return Ok(out);
    }
    let table = helpers::read_user_array::<CkptRestoreImage>(req.images, req.image_count)?;
    let mut first = 0usize;
    for img in table.iter() {
        let source = Source::open(img.fd, first, img.run_count)?;
        first = first.checked_add(source.count).ok_or(EINVAL)?;
        out.push(source, GFP_KERNEL)?;
    }
    if first != req.run_count as usize {
        return Err(EINVAL);
    }
    Ok(out)
}

impl Source {
    /// The regular file open for reading at `fd`, holding `count` runs from run `first`.
    fn open(fd: i32, first: usize, count: u32) -> Result<Source> {
        Ok(Source {
            file: FileRef::regular_from_fd(fd, true, false)?,
            fd: u32::try_from(fd).map_err(|_| EBADF)?,
            first,
            count: count as usize,
        })
    }
}

/// Checks every source's runs (see [`validate_runs`]) against its own file's size.
fn validate_sources(sources: &[Source], runs: &[CkptRestoreRun], vmas: &[NewVma]) -> Result {
    for s in sources {
        let end = s.first.checked_add(s.count).ok_or(EINVAL)?;
        validate_runs(runs.get(s.first..end).ok_or(EINVAL)?, vmas, s.file.size())?;
    }
    Ok(())
}

/// Checks that each run is page-aligned, inside one VMA and inside the image file.
fn validate_runs(runs: &[CkptRestoreRun], vmas: &[NewVma], image_size: u64) -> Result {
    for run in runs {
        let end = run.addr.checked_add(run.len).ok_or(EINVAL)?;
        let image_end = run.image_offset.checked_add(run.len).ok_or(EINVAL)?;
        if !aligned(run.addr) || !aligned(run.len) || !aligned(run.image_offset) || run.len == 0 {
            return Err(EINVAL);
        }
        if image_end > image_size {
            return Err(EINVAL);
        }
        // The VMA list is sorted: find the last VMA starting at or below the run.
        let idx = vmas.partition_point(|v| v.vma.start <= run.addr);
        let vma = idx.checked_sub(1).and_then(|i| vmas.get(i)).ok_or(EINVAL)?;
        if end > vma.vma.end {
            return Err(EINVAL);
        }
        // Page data goes into private or anonymous memory only: never through a shared file
        // mapping into the file itself.
        if vma.vma.flags & CKPT_VMA_FILE != 0 && vma.vma.flags & CKPT_VMA_SHARED != 0 {
            return Err(EINVAL);
        }
        // Memory in place keeps what the caller put there.
        if vma.vma.flags & CKPT_VMA_IN_PLACE != 0 {
            return Err(EINVAL);
        }
    }
    Ok(())
}

/// Serves `CKPT_IOC_RESTORE`. See the module documentation above for the sequence.
pub(crate) fn restore(req: &CkptRestore) -> Result {
    check_request(req)?;
    let current = kernel::current!();
    if helpers::nr_threads(current) != 1 {
        return Err(EBUSY);
    }
    let mm = current.mm().ok_or(EINVAL)?;
    if !helpers::mm_sole_user(mm) {
        return Err(EBUSY);
    }

    // 1. Copy in and validate everything.
    let keep = req.keep.get(..req.keep_count as usize).ok_or(EINVAL)?;
    if keep
        .iter()
        .any(|k| !aligned(k.start) || !aligned(k.end) || k.start >= k.end || k.end > USER_TOP)
    {
        return Err(EINVAL);
    }
    validate_layout(&req.mm)?;
    let sources = image_sources(req)?;
    let vmas = validate_vmas(
        helpers::read_user_array::<CkptRestoreVma>(req.vmas, req.vma_count)?,
        keep,
    )?;
    let runs = helpers::read_user_array::<CkptRestoreRun>(req.runs, req.run_count)?;
    validate_sources(&sources, &runs, &vmas)?;
    let mut buf = KVVec::from_elem(0u8, CHUNK, GFP_KERNEL)?;
    let fds = fds_to_close(req, &vmas, &sources)?;
    // Collected before touching anything: allocation can still fail cleanly.
    let in_place = in_place_ranges(&vmas)?;
    let old = mappings_to_drop(mm, keep, &in_place)?;
    helpers::close_fds_on_return(fds)?;

    // 2-5. Past this point, failure kills the caller.
    let result = replace_address_space(&old, &vmas, (&runs, &sources), &mut buf).map(|()| {
        helpers::set_mm_layout(mm, &req.mm);
    });
    if result.is_err() {
        helpers::force_sigkill_current();
    }
    result
}

/// The request's counts and flags are in bounds, and the caller may restore.
fn check_request(req: &CkptRestore) -> Result {
    if req.flags != 0
        || req._reserved != 0
        || req._reserved2 != 0
        || req.keep_count as usize > CKPT_RESTORE_MAX_KEEP
        || req.vma_count > CKPT_RESTORE_MAX_VMAS
        || req.run_count > CKPT_RESTORE_MAX_RUNS
        || req.cleanup_fd_count > 4096
        || req.image_count > CKPT_RESTORE_MAX_IMAGES
        || (req.image_count != 0 && req.image_fd != -1)
    {
        return Err(EINVAL);
    }
    if !helpers::capable(bindings::CAP_CHECKPOINT_RESTORE)
        && !helpers::capable(bindings::CAP_SYS_ADMIN)
    {
        return Err(EPERM);
    }
    Ok(())
}

/// The fds to close on the way out: the images, the VMA files and the caller's own range.
fn fds_to_close(req: &CkptRestore, vmas: &[NewVma], sources: &[Source]) -> Result<KVec<u32>> {
    let mut fds = KVec::new();
    let first = req.cleanup_fd_first;
    for fd in first..first.saturating_add(req.cleanup_fd_count) {
        fds.push(fd, GFP_KERNEL)?;
    }
    for s in sources {
        fds.push(s.fd, GFP_KERNEL)?;
    }
    for v in vmas.iter().filter(|v| v.file.is_some()) {
        fds.push(u32::try_from(v.vma.fd).map_err(|_| EBADF)?, GFP_KERNEL)?;
    }
    Ok(fds)
}

/// The memory the caller put in place, sorted (the VMA list is).
fn in_place_ranges(vmas: &[NewVma]) -> Result<KVVec<(usize, usize)>> {
    let mut out = KVVec::new();
    for v in vmas.iter().filter(|v| v.vma.flags & CKPT_VMA_IN_PLACE != 0) {
        out.push((v.vma.start as usize, v.vma.end as usize), GFP_KERNEL)?;
    }
    Ok(out)
}

/// Every mapping of `mm` but the kept ranges, less the memory `in_place` (sorted): what the
/// restore unmaps. Checks that the memory in place is there: private anonymous mappings
/// cover each of its ranges.
fn mappings_to_drop(
    mm: &MmWithUser,
    keep: &[CkptRange],
    in_place: &[(usize, usize)],
) -> Result<KVVec<(usize, usize)>> {
    let mut old = KVVec::<(usize, usize)>::new();
    let lock = mm.mmap_read_lock();
    let mut addr = 0usize;
    while let Some(vma) = helpers::find_vma(mm, &lock, addr) {
        let (start, end) = (vma.start(), vma.end());
        if end <= addr {
            return Err(EIO);
        }
        addr = end;
        if keep
            .iter()
            .any(|k| k.start as usize <= start && end <= k.end as usize)
        {
            continue;
        }
        let mut cursor = start;
        let first = in_place.partition_point(|p| p.1 <= start);
        for &(p_start, p_end) in in_place.iter().skip(first) {
            if p_start >= end {
                break;
            }
            if p_start > cursor {
                old.push((cursor, p_start), GFP_KERNEL)?;
            }
            cursor = cursor.max(p_end);
        }
        if cursor < end {
            old.push((cursor, end), GFP_KERNEL)?;
        }
    }
    for &(start, end) in in_place {
        let mut at = start;
        while at < end {
            match helpers::find_vma(mm, &lock, at) {
                Some(m) if m.start() <= at && helpers::vma_is_private_anon(m) => at = m.end(),
                _ => return Err(EINVAL),
            }
        }
    }
    Ok(old)
}

/// Unmaps `old`, maps every VMA of the image, copies the page runs in. The caller is killed
/// if this fails part-way.
fn replace_address_space(
    old: &[(usize, usize)],
    vmas: &[NewVma],
    (runs, sources): (&[CkptRestoreRun], &[Source]),
    buf: &mut KVVec<u8>,
) -> Result {
    for &(start, end) in old.iter() {
        helpers::vm_munmap(start, end - start)?;
    }
    // The caller is killed if this fails, so a fatal signal may end it at any step: without
    // these checks, 4M runs of the same 1 MiB (a 4 TiB copy) could not be killed.
    for v in vmas.iter().filter(|v| v.vma.flags & CKPT_VMA_IN_PLACE == 0) {
        stop_if_killed()?;
        map_vma(v)?;
    }
    for s in sources {
        let end = s.first.checked_add(s.count).ok_or(EINVAL)?;
        for run in runs.get(s.first..end).ok_or(EINVAL)? {
            copy_run(run, &s.file, buf)?;
        }
    }
    Ok(())
}

/// Copies one run from `image` into place, a chunk at a time (stopping once the caller is
/// killed).
fn copy_run(run: &CkptRestoreRun, image: &FileRef, buf: &mut KVVec<u8>) -> Result {
    let mut done = 0u64;
    while done < run.len {
        stop_if_killed()?;
        let n = core::cmp::min(run.len - done, CHUNK as u64) as usize;
        let chunk = buf.get_mut(..n).ok_or(EINVAL)?;
        image.read_exact_at(chunk, run.image_offset + done)?;
        helpers::poke_current((run.addr + done) as usize, chunk)?;
        done += n as u64;
    }
    Ok(())
}

/// EINTR once the caller has been killed. Only a fatal signal: an ordinary one must not make
/// a restore fail (and kill the caller) past the point of no return.
fn stop_if_killed() -> Result {
    if helpers::fatal_signal_pending() {
        return Err(EINTR);
    }
    Ok(())
}

/// Maps one VMA of the image at its address.
fn map_vma(v: &NewVma) -> Result {
    let mut flags = MAP_FIXED;
    flags |= if v.vma.flags & CKPT_VMA_SHARED != 0 {
        MAP_SHARED
    } else {
        MAP_PRIVATE
    };
    if v.file.is_none() {
        flags |= MAP_ANONYMOUS;
    }
    if v.vma.flags & CKPT_VMA_GROWSDOWN != 0 {
        flags |= MAP_GROWSDOWN;
    }
    let start = v.vma.start as usize;
    let len = (v.vma.end - v.vma.start) as usize;
    let got = helpers::vm_mmap(
        v.file.as_ref(),
        start,
        len,
        v.vma.prot,
        flags,
        v.vma.file_offset,
    )?;
    if got != start {
        return Err(EFAULT);
    }
    Ok(())
}
