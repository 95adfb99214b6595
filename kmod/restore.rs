// SPDX-License-Identifier: GPL-2.0
//! `CKPT_IOC_RESTORE`: replaces the calling process's address space with an image's.
//!
//! Sequence (see docs/design.md, "Restore"):
//! 1. copy every argument into kernel memory and validate all of it (never trust the image);
//! 2. point of no return: unmap every mapping but the kept ranges (vDSO/vvar) and the memory
//!    the caller put in place (`CKPT_VMA_IN_PLACE`: private anonymous memory mapped before it
//!    forked, shared copy-on-write with its children as when checkpointed);
//! 3. map every other VMA (`vm_mmap`, files through the caller's fds);
//! 4. copy page runs from the image files into place: each chunk's pages pinned for writing
//!    (FOLL_FORCE, so read-only mappings need no mprotect dance) and read into through their
//!    kernel mapping, one copy from the page cache; one file, or an incremental image's
//!    chain, each run read from the image of the chain that holds it;
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
use crate::page_copy::PageCopy;
use kernel::{
    alloc::KVVec,
    bindings,
    mm::MmWithUser,
    prelude::*,
    sync::{aref::ARef, Arc},
};

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

/// The VMA of the (sorted) list that holds `addr`, if any: the last starting at or below it.
fn vma_at(vmas: &[NewVma], addr: u64) -> Option<&NewVma> {
    let idx = vmas.partition_point(|v| v.vma.start <= addr);
    idx.checked_sub(1)
        .and_then(|i| vmas.get(i))
        .filter(|v| addr < v.vma.end)
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
        let vma = vma_at(vmas, run.addr).ok_or(EINVAL)?;
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
    validate_keep(keep)?;
    validate_layout(&req.mm)?;
    let sources = image_sources(req)?;
    let vmas = validate_vmas(
        helpers::read_user_array::<CkptRestoreVma>(req.vmas, req.vma_count)?,
        keep,
    )?;
    let runs = helpers::read_user_array::<CkptRestoreRun>(req.runs, req.run_count)?;
    validate_sources(&sources, &runs, &vmas)?;
    let fds = fds_to_close(req, &vmas, &sources)?;
    // Collected before touching anything: allocation can still fail cleanly.
    let in_place = in_place_ranges(&vmas)?;
    let old = mappings_to_drop(mm, keep, &in_place)?;
    let copy = page_copy_of(sources, runs, mm)?;
    helpers::close_fds_on_return(fds)?;

    // 2-5. Past this point, failure kills the caller.
    let result = replace_address_space(&old, &vmas, copy).map(|()| {
        helpers::set_mm_layout(mm, &req.mm);
    });
    if result.is_err() {
        helpers::force_sigkill_current();
    }
    result
}

/// The request's counts and flags are in bounds, and the caller may restore.
fn check_request(req: &CkptRestore) -> Result {
    check_counts(req)?;
    if !helpers::capable(bindings::CAP_CHECKPOINT_RESTORE)
        && !helpers::capable(bindings::CAP_SYS_ADMIN)
    {
        return Err(EPERM);
    }
    Ok(())
}

/// The request's counts are in bounds and its flags and reserved fields zero (EINVAL).
fn check_counts(req: &CkptRestore) -> Result {
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
    Ok(())
}

/// The ranges to keep are page-aligned, non-empty and in the user range (EINVAL otherwise).
fn validate_keep(keep: &[CkptRange]) -> Result {
    if keep
        .iter()
        .any(|k| !aligned(k.start) || !aligned(k.end) || k.start >= k.end || k.end > USER_TOP)
    {
        return Err(EINVAL);
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
        push_uncovered(&mut old, (start, end), in_place)?;
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

/// Appends to `out` the parts of `[start, end)` that no range of `in_place` (sorted, disjoint)
/// covers, in address order.
fn push_uncovered(
    out: &mut KVVec<(usize, usize)>,
    (start, end): (usize, usize),
    in_place: &[(usize, usize)],
) -> Result {
    let mut cursor = start;
    let first = in_place.partition_point(|p| p.1 <= start);
    for &(p_start, p_end) in in_place.iter().skip(first) {
        if p_start >= end {
            break;
        }
        if p_start > cursor {
            out.push((cursor, p_start), GFP_KERNEL)?;
        }
        cursor = cursor.max(p_end);
    }
    if cursor < end {
        out.push((cursor, end), GFP_KERNEL)?;
    }
    Ok(())
}

/// Unmaps `old`, maps every VMA of the image, copies the page runs in. The caller is killed
/// if this fails part-way.
fn replace_address_space(old: &[(usize, usize)], vmas: &[NewVma], copy: Arc<PageCopy>) -> Result {
    for &(start, end) in old.iter() {
        helpers::vm_munmap(start, end - start)?;
    }
    // The caller is killed if this fails, so a fatal signal may end it at any step: without
    // these checks, 4M runs of the same 1 MiB (a 4 TiB copy) could not be killed.
    for v in vmas.iter().filter(|v| v.vma.flags & CKPT_VMA_IN_PLACE == 0) {
        stop_if_killed()?;
        map_vma(v)?;
    }
    copy.run()
}

/// The page copy of `runs` from the sources' files into `mm`, the caller's.
fn page_copy_of(
    sources: KVVec<Source>,
    runs: KVVec<CkptRestoreRun>,
    mm: &MmWithUser,
) -> Result<Arc<PageCopy>> {
    let mut files = KVVec::with_capacity(sources.len(), GFP_KERNEL)?;
    let mut spans = KVVec::with_capacity(sources.len(), GFP_KERNEL)?;
    for s in sources.into_iter() {
        spans.push((s.first, s.count), GFP_KERNEL)?;
        files.push(s.file, GFP_KERNEL)?;
    }
    PageCopy::new(files, spans, runs, ARef::from(mm))
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

#[kunit_tests(ckpt_restore)]
mod tests {
    use super::*;

    const P: u64 = PAGE;

    fn range(start: u64, end: u64) -> CkptRange {
        CkptRange { start, end }
    }

    /// A private anonymous read-write VMA.
    fn anon(start: u64, end: u64) -> CkptRestoreVma {
        CkptRestoreVma {
            start,
            end,
            prot: CKPT_PROT_READ | CKPT_PROT_WRITE,
            flags: 0,
            fd: -1,
            _reserved: 0,
            file_offset: 0,
        }
    }

    fn run(addr: u64, len: u64, image_offset: u64) -> CkptRestoreRun {
        CkptRestoreRun {
            addr,
            len,
            image_offset,
        }
    }

    fn new_vma(vma: CkptRestoreVma) -> NewVma {
        NewVma { vma, file: None }
    }

    fn vma_list(vmas: &[CkptRestoreVma]) -> Result<KVVec<CkptRestoreVma>> {
        let mut raw = KVVec::new();
        for v in vmas {
            raw.push(*v, GFP_KERNEL)?;
        }
        Ok(raw)
    }

    #[test]
    fn request_counts_flags_and_reserved_fields_are_checked() {
        let ok = CkptRestore::default();
        assert_eq!(check_counts(&ok), Ok(()));
        let at_limits = CkptRestore {
            image_fd: -1,
            keep_count: CKPT_RESTORE_MAX_KEEP as u32,
            vma_count: CKPT_RESTORE_MAX_VMAS,
            run_count: CKPT_RESTORE_MAX_RUNS,
            cleanup_fd_count: 4096,
            image_count: CKPT_RESTORE_MAX_IMAGES,
            ..ok
        };
        assert_eq!(check_counts(&at_limits), Ok(()));
        let bad = [
            CkptRestore { flags: 1, ..ok },
            CkptRestore { _reserved: 1, ..ok },
            CkptRestore {
                _reserved2: 1,
                ..ok
            },
            CkptRestore {
                keep_count: CKPT_RESTORE_MAX_KEEP as u32 + 1,
                ..ok
            },
            CkptRestore {
                vma_count: CKPT_RESTORE_MAX_VMAS + 1,
                ..ok
            },
            CkptRestore {
                run_count: CKPT_RESTORE_MAX_RUNS + 1,
                ..ok
            },
            CkptRestore {
                cleanup_fd_count: 4097,
                ..ok
            },
            CkptRestore {
                image_fd: -1,
                image_count: CKPT_RESTORE_MAX_IMAGES + 1,
                ..ok
            },
            // An image table and an image fd at once.
            CkptRestore {
                image_fd: 3,
                image_count: 1,
                ..ok
            },
        ];
        for req in bad.iter() {
            assert_eq!(check_counts(req), Err(EINVAL));
        }
    }

    #[test]
    fn kept_ranges_must_be_aligned_non_empty_and_in_user_space() {
        assert_eq!(validate_keep(&[]), Ok(()));
        assert_eq!(
            validate_keep(&[range(P, 3 * P), range(USER_TOP - P, USER_TOP)]),
            Ok(())
        );
        for k in [
            range(P + 8, 3 * P),
            range(P, 3 * P - 8),
            range(P, P),
            range(3 * P, P),
            range(USER_TOP, USER_TOP + P),
        ] {
            assert_eq!(validate_keep(&[range(0, P), k]), Err(EINVAL));
        }
    }

    #[test]
    fn mm_layout_must_be_ordered_and_in_user_space() {
        let ok = CkptMmLayout {
            start_code: 0x40_0000,
            end_code: 0x40_1000,
            start_data: 0x60_0000,
            end_data: 0x60_1000,
            start_brk: 0x70_0000,
            brk: 0x72_0000,
            start_stack: USER_TOP - P,
            arg_start: USER_TOP - 2 * P,
            arg_end: USER_TOP - 2 * P + 100,
            env_start: USER_TOP - 2 * P + 100,
            env_end: USER_TOP - P,
            ..CkptMmLayout::default()
        };
        assert_eq!(validate_layout(&ok), Ok(()));
        let bad = [
            CkptMmLayout {
                end_code: ok.start_code - 1,
                ..ok
            },
            CkptMmLayout {
                end_data: ok.start_data - 1,
                ..ok
            },
            CkptMmLayout {
                brk: ok.start_brk - P,
                ..ok
            },
            CkptMmLayout {
                arg_end: ok.arg_start - 1,
                ..ok
            },
            CkptMmLayout {
                env_end: ok.env_start - 1,
                ..ok
            },
            CkptMmLayout {
                start_stack: USER_TOP + 1,
                ..ok
            },
            CkptMmLayout {
                env_end: u64::MAX,
                ..ok
            },
        ];
        for mm in bad.iter() {
            assert_eq!(validate_layout(mm), Err(EINVAL));
        }
    }

    #[test]
    fn anonymous_vma_lists_that_are_sane_pass() -> Result {
        let stack = CkptRestoreVma {
            flags: CKPT_VMA_GROWSDOWN,
            ..anon(USER_TOP - 32 * P, USER_TOP)
        };
        let shared = CkptRestoreVma {
            flags: CKPT_VMA_SHARED,
            ..anon(0x20_0000, 0x20_2000)
        };
        let in_place = CkptRestoreVma {
            flags: CKPT_VMA_IN_PLACE,
            ..anon(0x30_0000, 0x30_1000)
        };
        let list = [
            anon(0x10_0000, 0x10_1000),
            anon(0x10_1000, 0x10_3000),
            shared,
            in_place,
            stack,
        ];
        let keep = [range(0x40_0000, 0x40_2000)];
        let out = validate_vmas(vma_list(&list)?, &keep)?;
        assert_eq!(out.len(), list.len());
        assert!(out
            .iter()
            .zip(list.iter())
            .all(|(n, v)| n.vma == *v && n.file.is_none()));
        Ok(())
    }

    #[test]
    fn insane_vmas_are_refused() -> Result {
        let good = anon(0x10_0000, 0x10_2000);
        let bad = [
            anon(0x10_0008, 0x10_2000),
            anon(0x10_0000, 0x10_2008),
            anon(0x10_2000, 0x10_2000),
            anon(USER_TOP - P, USER_TOP + P),
            CkptRestoreVma { prot: 8, ..good },
            CkptRestoreVma {
                flags: 1 << 7,
                ..good
            },
            CkptRestoreVma {
                _reserved: 1,
                ..good
            },
            // Memory in place is private anonymous memory.
            CkptRestoreVma {
                flags: CKPT_VMA_IN_PLACE | CKPT_VMA_SHARED,
                ..good
            },
            // An anonymous VMA names no file.
            CkptRestoreVma { fd: 3, ..good },
            CkptRestoreVma {
                file_offset: P,
                ..good
            },
            // Over the kept range.
            anon(0x3f_f000, 0x40_1000),
        ];
        let keep = [range(0x40_0000, 0x40_2000)];
        for v in bad.iter() {
            assert_eq!(validate_vmas(vma_list(&[*v])?, &keep).err(), Some(EINVAL));
        }
        // Overlapping, and out of order.
        let overlapping = [good, anon(0x10_1000, 0x10_3000)];
        assert_eq!(
            validate_vmas(vma_list(&overlapping)?, &keep).err(),
            Some(EINVAL)
        );
        let unsorted = [anon(0x20_0000, 0x20_1000), good];
        assert_eq!(
            validate_vmas(vma_list(&unsorted)?, &keep).err(),
            Some(EINVAL)
        );
        Ok(())
    }

    #[test]
    fn runs_must_fall_inside_one_writable_private_vma_and_the_image() -> Result {
        let mut vmas = KVVec::new();
        vmas.push(new_vma(anon(0x10_0000, 0x10_4000)), GFP_KERNEL)?;
        vmas.push(new_vma(anon(0x10_4000, 0x10_6000)), GFP_KERNEL)?;
        let in_place = CkptRestoreVma {
            flags: CKPT_VMA_IN_PLACE,
            ..anon(0x20_0000, 0x20_1000)
        };
        vmas.push(new_vma(in_place), GFP_KERNEL)?;
        let shared_file = CkptRestoreVma {
            flags: CKPT_VMA_FILE | CKPT_VMA_SHARED,
            ..anon(0x30_0000, 0x30_2000)
        };
        vmas.push(new_vma(shared_file), GFP_KERNEL)?;
        let shared_anon = CkptRestoreVma {
            flags: CKPT_VMA_SHARED,
            ..anon(0x40_0000, 0x40_2000)
        };
        vmas.push(new_vma(shared_anon), GFP_KERNEL)?;
        let size = 16 * P;

        let fine = [
            run(0x10_0000, 4 * P, 0),
            run(0x10_4000, 2 * P, 4 * P),
            run(0x40_0000, 2 * P, 14 * P),
        ];
        assert_eq!(validate_runs(&fine, &vmas, size), Ok(()));
        let bad = [
            // Across the boundary of two VMAs, even adjacent ones.
            run(0x10_3000, 2 * P, 0),
            // Below the first VMA, in a gap, past the last.
            run(0x0f_f000, P, 0),
            run(0x10_6000, P, 0),
            run(0x50_0000, P, 0),
            run(0x10_0800, P, 0),
            run(0x10_0000, P + 8, 0),
            run(0x10_0000, P, 8),
            run(0x10_0000, 0, 0),
            // Past the image's end, and wrapping around.
            run(0x10_0000, 2 * P, 15 * P),
            run(0x10_0000, P, u64::MAX - P + 1),
            run(u64::MAX - P + 1, P, 0),
            // Into memory in place, through a shared file mapping.
            run(0x20_0000, P, 0),
            run(0x30_0000, P, 0),
        ];
        for r in bad.iter() {
            assert_eq!(validate_runs(&[fine[0], *r], &vmas, size), Err(EINVAL));
        }
        Ok(())
    }

    #[test]
    fn uncovered_parts_of_a_mapping_are_what_is_unmapped() -> Result {
        let p = PAGE as usize;
        let in_place = [(2 * p, 3 * p), (5 * p, 7 * p), (9 * p, 10 * p)];
        let mut out = KVVec::new();
        // Whole mappings: around and between the ranges in place.
        push_uncovered(&mut out, (0, 12 * p), &in_place)?;
        assert_eq!(
            &out[..],
            &[(0, 2 * p), (3 * p, 5 * p), (7 * p, 9 * p), (10 * p, 12 * p)]
        );
        // A mapping that starts and ends inside ranges in place.
        out.clear();
        push_uncovered(&mut out, (6 * p, 9 * p + p / 2), &in_place)?;
        assert_eq!(&out[..], &[(7 * p, 9 * p)]);
        // Entirely in place, and entirely outside.
        out.clear();
        push_uncovered(&mut out, (5 * p, 7 * p), &in_place)?;
        assert!(out.is_empty());
        push_uncovered(&mut out, (20 * p, 21 * p), &in_place)?;
        push_uncovered(&mut out, (3 * p, 4 * p), &[])?;
        assert_eq!(&out[..], &[(20 * p, 21 * p), (3 * p, 4 * p)]);
        Ok(())
    }

    #[test]
    fn touching_ranges_do_not_overlap() {
        let r = range(2 * P, 4 * P);
        assert!(overlaps(3 * P, 5 * P, &r));
        assert!(overlaps(P, 3 * P, &r));
        assert!(overlaps(0, 8 * P, &r));
        assert!(!overlaps(4 * P, 5 * P, &r));
        assert!(!overlaps(P, 2 * P, &r));
    }
}
