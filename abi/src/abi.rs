// SPDX-License-Identifier: GPL-2.0
//! ckpt's ioctl ABI: ioctl numbers and `#[repr(C)]` argument structs.
//!
//! This one file is compiled twice: into the `ckpt-abi` crate for user space, and into the kernel
//! module (via `#[path]`). It must therefore use nothing but `core`.
//!
//! Rules for extending it (see docs/design.md, "ioctl ABI"):
//! - never change an existing struct's layout; add a new ioctl number or use a reserved field,
//! - every struct has explicit padding (`_reserved`) so that no byte is uninitialised,
//! - every input flag field must be zero unless a flag is defined, and the module rejects
//!   unknown flags with EINVAL, so old modules refuse what they do not understand,
//! - bump [`CKPT_ABI_VERSION`] on any change.

/// Version of this ABI. User space refuses to talk to a module that reports another one.
pub const CKPT_ABI_VERSION: u32 = 7;

/// The ioctl "type" byte. 0xCC is not listed in Documentation/userspace-api/ioctl/ioctl-number.rst.
pub const CKPT_IOC_MAGIC: u32 = 0xCC;

/// Largest number of bytes one `CKPT_IOC_QUERY` may read from the target.
pub const CKPT_QUERY_MAX_READ: u64 = 1 << 20;

/// Reported by `CKPT_IOC_VERSION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptVersionInfo {
    /// The module's [`CKPT_ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<CkptVersionInfo>()` as the module was built.
    pub version_info_size: u32,
    /// `size_of::<CkptQuery>()` as the module was built.
    pub query_size: u32,
    /// `size_of::<CkptTaskState>()` as the module was built.
    pub task_state_size: u32,
    /// `size_of::<CkptRestore>()` as the module was built.
    pub restore_size: u32,
    /// `size_of::<CkptRestoreVma>()` as the module was built.
    pub restore_vma_size: u32,
    /// `size_of::<CkptRestoreRun>()` as the module was built.
    pub restore_run_size: u32,
    /// `size_of::<CkptDumpPages>()` as the module was built.
    pub dump_pages_size: u32,
}

/// Argument of `CKPT_IOC_QUERY`: facts about a target process, plus a read of its memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptQuery {
    /// In: the target's pid, in the caller's pid namespace. Any thread id of the process works.
    pub pid: i32,
    /// In: must be zero (no flags are defined yet).
    pub flags: u32,
    /// In: address in the target to read from (ignored when `read_len` is zero).
    pub read_addr: u64,
    /// In: how many bytes to read, at most [`CKPT_QUERY_MAX_READ`].
    pub read_len: u64,
    /// In: user pointer receiving the bytes read.
    pub read_buf: u64,
    /// Out: the number of threads in the target's thread group.
    pub thread_count: u32,
    /// Out: the number of VMAs in the target's address space.
    pub vma_count: u32,
    /// Out: the sum of the sizes of those VMAs, in bytes.
    pub mapped_bytes: u64,
    /// Out: how many bytes were read into `read_buf` (may be short at the end of a mapping).
    pub bytes_read: u64,
}

/// Number of `u64` words of the saved ELF auxiliary vector carried in [`CkptMmLayout`]
/// (the kernel's `AT_VECTOR_SIZE` is smaller; the rest is zero).
pub const CKPT_AUXV_WORDS: usize = 64;

/// The address-space layout the kernel keeps in `mm_struct` (what `prctl(PR_SET_MM_MAP)` sets).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CkptMmLayout {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// `mm->saved_auxv`, as shown by /proc/PID/auxv.
    pub auxv: [u64; CKPT_AUXV_WORDS],
}

impl Default for CkptMmLayout {
    fn default() -> Self {
        Self {
            start_code: 0,
            end_code: 0,
            start_data: 0,
            end_data: 0,
            start_brk: 0,
            brk: 0,
            start_stack: 0,
            arg_start: 0,
            arg_end: 0,
            env_start: 0,
            env_end: 0,
            auxv: [0; CKPT_AUXV_WORDS],
        }
    }
}

/// One signal's disposition (the kernel's `struct sigaction`, 64-bit mask).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// Number of signals (`_NSIG` on x86-64).
pub const CKPT_NSIG: usize = 64;

/// Argument of `CKPT_IOC_DUMP_TASK`: kernel state of a process that neither /proc nor ptrace
/// shows completely. The caller should have the target stopped (ptrace) for a consistent view.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CkptTaskState {
    /// In: the thread to dump (its process's mm and signal handlers are shared).
    pub pid: i32,
    /// In: must be zero.
    pub flags: u32,
    /// Out: the mm layout.
    pub mm: CkptMmLayout,
    /// Out: `set_tid_address()` pointer of the thread.
    pub clear_child_tid: u64,
    /// Out: the thread's alternate signal stack.
    pub sas_ss_sp: u64,
    pub sas_ss_size: u64,
    pub sas_ss_flags: u32,
    /// Out: `personality()`.
    pub personality: u32,
    /// Out: the process's signal dispositions; index `n - 1` for signal `n`.
    pub sigactions: [CkptSigaction; CKPT_NSIG],
}

impl Default for CkptTaskState {
    fn default() -> Self {
        Self {
            pid: 0,
            flags: 0,
            mm: CkptMmLayout::default(),
            clear_child_tid: 0,
            sas_ss_sp: 0,
            sas_ss_size: 0,
            sas_ss_flags: 0,
            personality: 0,
            sigactions: [CkptSigaction::default(); CKPT_NSIG],
        }
    }
}

/// [`CkptRestoreVma::flags`]: the mapping is `MAP_SHARED` (else private).
pub const CKPT_VMA_SHARED: u32 = 1 << 0;
/// [`CkptRestoreVma::flags`]: the mapping grows down (a stack: `MAP_GROWSDOWN`).
pub const CKPT_VMA_GROWSDOWN: u32 = 1 << 1;
/// [`CkptRestoreVma::flags`]: the mapping is backed by the file `fd` (else anonymous).
pub const CKPT_VMA_FILE: u32 = 1 << 2;
/// [`CkptRestoreVma::flags`]: private anonymous memory the caller already has in place, with
/// its content: mapped before it forked its children, who inherit it and share its pages
/// copy-on-write, as they did when checkpointed. The restore leaves it as it is (neither
/// unmapped nor mapped again); no page run may write into it.
pub const CKPT_VMA_IN_PLACE: u32 = 1 << 3;
pub const CKPT_VMA_KNOWN_FLAGS: u32 =
    CKPT_VMA_SHARED | CKPT_VMA_GROWSDOWN | CKPT_VMA_FILE | CKPT_VMA_IN_PLACE;

/// [`CkptRestoreVma::prot`] bits (the `PROT_*` values).
pub const CKPT_PROT_READ: u32 = 1;
pub const CKPT_PROT_WRITE: u32 = 2;
pub const CKPT_PROT_EXEC: u32 = 4;

/// One mapping to create on restore.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptRestoreVma {
    /// Page-aligned start and end (exclusive).
    pub start: u64,
    pub end: u64,
    /// `CKPT_PROT_*`.
    pub prot: u32,
    /// `CKPT_VMA_*`.
    pub flags: u32,
    /// With `CKPT_VMA_FILE`: an fd of the caller open on the file; else -1.
    pub fd: i32,
    pub _reserved: u32,
    /// With `CKPT_VMA_FILE`: the page-aligned file offset mapped at `start`.
    pub file_offset: u64,
}

/// Page contents to copy from the image file into the new address space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptRestoreRun {
    /// Page-aligned destination address; the run lies inside one VMA.
    pub addr: u64,
    /// Page-aligned length in bytes.
    pub len: u64,
    /// Page-aligned offset of the bytes in the image file.
    pub image_offset: u64,
}

/// An address range the restore leaves in place (the caller's vDSO and vvar, already moved to
/// where the image had them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptRange {
    pub start: u64,
    pub end: u64,
}

/// Largest number of VMAs / runs / kept ranges one `CKPT_IOC_RESTORE` accepts.
pub const CKPT_RESTORE_MAX_VMAS: u32 = 65536;
pub const CKPT_RESTORE_MAX_RUNS: u32 = 1 << 22;
pub const CKPT_RESTORE_MAX_KEEP: usize = 4;
/// Largest number of image files one `CKPT_IOC_RESTORE` reads page runs from (an
/// incremental image and its ancestors).
pub const CKPT_RESTORE_MAX_IMAGES: u32 = 64;

/// One image file a restore reads page runs from, and how many of the runs come from it: the
/// runs are grouped by image, in the order of the image table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptRestoreImage {
    /// A regular file open for reading.
    pub fd: i32,
    /// The next `run_count` runs of the run list are read from it.
    pub run_count: u32,
}

/// Argument of `CKPT_IOC_RESTORE`: replace the calling process's address space.
///
/// The caller must be single-threaded and hold CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN).
/// Everything is validated before anything is changed; on a failure after that point the
/// caller is killed (SIGKILL), never left half-restored. On success the ioctl returns 0 into an
/// address space that no longer holds the caller's code: a ptrace supervisor must set the
/// registers at the syscall-exit stop (that is how `ckpt restore` uses it).
/// The fds `image_fd` (or those of the image table), the VMA fds and
/// `cleanup_fd_first..+cleanup_fd_count` (the caller's own working fds, /dev/ckpt included)
/// are closed before the caller returns to user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptRestore {
    /// The image file, open for reading; page runs are read from it. -1 when `image_count`
    /// is not zero (the runs' files are in the image table).
    pub image_fd: i32,
    /// Must be zero.
    pub flags: u32,
    /// User pointer to `vma_count` [`CkptRestoreVma`], sorted by address, not overlapping.
    pub vmas: u64,
    pub vma_count: u32,
    pub run_count: u32,
    /// User pointer to `run_count` [`CkptRestoreRun`].
    pub runs: u64,
    /// Ranges to keep, `keep_count` of them.
    pub keep: [CkptRange; CKPT_RESTORE_MAX_KEEP],
    pub keep_count: u32,
    /// First fd of the caller's working fds, closed after the restore.
    pub cleanup_fd_first: u32,
    pub cleanup_fd_count: u32,
    pub _reserved: u32,
    /// The mm layout to install.
    pub mm: CkptMmLayout,
    /// User pointer to `image_count` [`CkptRestoreImage`] (ABI 5): the files the page runs
    /// are read from, an incremental image's chain, each image's runs together. Their
    /// `run_count`s add up to `run_count`. Zero: every run is read from `image_fd`.
    pub images: u64,
    /// At most [`CKPT_RESTORE_MAX_IMAGES`].
    pub image_count: u32,
    /// Must be zero.
    pub _reserved2: u32,
}

/// [`CkptDumpPages::flags`]: do not store pages that are all zero (anonymous memory reads
/// back as zero-fill on restore).
pub const CKPT_DUMP_SKIP_ZERO: u32 = 1 << 0;
/// [`CKPT_DUMP_SKIP_ZERO`]'s sibling: do not checksum what is written ([`CkptDumpPages::xxh64`]
/// is then 0): user space checksums the section itself, on another CPU while the next call
/// copies.
pub const CKPT_DUMP_NO_HASH: u32 = 1 << 1;
/// Largest number of ranges one `CKPT_IOC_DUMP_PAGES` accepts.
pub const CKPT_DUMP_MAX_RANGES: u32 = 1 << 20;

/// Argument of `CKPT_IOC_DUMP_PAGES`: copy pages of a (stopped) target straight into the image
/// file, without passing through user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptDumpPages {
    /// In: the target.
    pub pid: i32,
    /// In: the image file, open for writing.
    pub image_fd: i32,
    /// In: `CKPT_DUMP_*`.
    pub flags: u32,
    /// In: number of [`CkptRange`]s at `ranges` (page-aligned, sorted, disjoint).
    pub range_count: u32,
    /// In: user pointer to the ranges to save (typically the present pages, from pagemap).
    pub ranges: u64,
    /// In: page-aligned file offset to write the first page at; pages follow contiguously.
    pub file_offset: u64,
    /// In: user pointer to room for `max_runs` [`CkptRestoreRun`]s describing what was stored.
    pub runs: u64,
    pub max_runs: u32,
    /// Out: how many runs were stored at `runs` (ENOSPC if `max_runs` was too small).
    pub run_count: u32,
    /// Out: bytes written to the image.
    pub bytes_written: u64,
    /// Out: pages skipped because they were all zero.
    pub pages_zero: u64,
    /// Out: XXH64 (seed 0, `crate::xxh64`) of the `bytes_written` bytes written, computed
    /// while copying: the image's checksum of that page section (0 with
    /// [`CKPT_DUMP_NO_HASH`]).
    pub xxh64: u64,
}

/// Argument of `CKPT_IOC_ITIMERS`: which of a process's itimers (setitimer, alarm) are armed.
/// Nothing outside a process shows their time left; ckpt lends one of its threads to read it
/// (getitimer), which costs tens of milliseconds of ptrace stops under emulation: this tells
/// ckpt when there is nothing to read. A disarmed itimer stays so while the process is
/// stopped (only the process arms it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CkptItimers {
    /// In: the target's pid, in the caller's pid namespace. Any thread id of the process works.
    pub pid: i32,
    /// In: must be zero (no flags are defined yet).
    pub flags: u32,
    /// Out: `CKPT_ITIMER_*` bits of the armed ones.
    pub armed: u32,
    /// Out: zero.
    pub _reserved: u32,
}

/// `CkptItimers::armed`: ITIMER_REAL (which alarm() sets too) is armed, or periodic and
/// waiting for its SIGALRM to be taken (the kernel arms it again then).
pub const CKPT_ITIMER_REAL: u32 = 1 << 0;
/// `CkptItimers::armed`: ITIMER_VIRTUAL is armed.
pub const CKPT_ITIMER_VIRTUAL: u32 = 1 << 1;
/// `CkptItimers::armed`: ITIMER_PROF is armed.
pub const CKPT_ITIMER_PROF: u32 = 1 << 2;

/// What `CKPT_IOC_VERSION` reports for this build of the ABI (the module and user space both
/// compute it, from the same source, and user space compares the two).
pub const fn ckpt_version_info() -> CkptVersionInfo {
    use core::mem::size_of;
    CkptVersionInfo {
        abi_version: CKPT_ABI_VERSION,
        version_info_size: size_of::<CkptVersionInfo>() as u32,
        query_size: size_of::<CkptQuery>() as u32,
        task_state_size: size_of::<CkptTaskState>() as u32,
        restore_size: size_of::<CkptRestore>() as u32,
        restore_vma_size: size_of::<CkptRestoreVma>() as u32,
        restore_run_size: size_of::<CkptRestoreRun>() as u32,
        dump_pages_size: size_of::<CkptDumpPages>() as u32,
    }
}

/// `_IOC` encoding for x86-64 (asm-generic/ioctl.h): nr 8 bits, type 8, size 14, dir 2.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// Query the module's ABI version: `_IOR(0xCC, 0x01, CkptVersionInfo)`.
pub const CKPT_IOC_VERSION: u32 = ioc(
    IOC_READ,
    CKPT_IOC_MAGIC,
    0x01,
    core::mem::size_of::<CkptVersionInfo>(),
);
/// Query a target process: `_IOWR(0xCC, 0x02, CkptQuery)`.
pub const CKPT_IOC_QUERY: u32 = ioc(
    IOC_READ | IOC_WRITE,
    CKPT_IOC_MAGIC,
    0x02,
    core::mem::size_of::<CkptQuery>(),
);
/// Dump a task's kernel state: `_IOWR(0xCC, 0x03, CkptTaskState)`.
pub const CKPT_IOC_DUMP_TASK: u32 = ioc(
    IOC_READ | IOC_WRITE,
    CKPT_IOC_MAGIC,
    0x03,
    core::mem::size_of::<CkptTaskState>(),
);
/// Copy a target's pages into an image file: `_IOWR(0xCC, 0x05, CkptDumpPages)`.
pub const CKPT_IOC_DUMP_PAGES: u32 = ioc(
    IOC_READ | IOC_WRITE,
    CKPT_IOC_MAGIC,
    0x05,
    core::mem::size_of::<CkptDumpPages>(),
);
/// Which itimers of a process are armed: `_IOWR(0xCC, 0x06, CkptItimers)`.
pub const CKPT_IOC_ITIMERS: u32 = ioc(
    IOC_READ | IOC_WRITE,
    CKPT_IOC_MAGIC,
    0x06,
    core::mem::size_of::<CkptItimers>(),
);
/// Replace the caller's address space: `_IOW(0xCC, 0x04, CkptRestore)`.
pub const CKPT_IOC_RESTORE: u32 = ioc(
    IOC_WRITE,
    CKPT_IOC_MAGIC,
    0x04,
    core::mem::size_of::<CkptRestore>(),
);

// The layout is part of the ABI: these fail the build, on either side, if it ever changes.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<CkptVersionInfo>() == 32);
    assert!(size_of::<CkptMmLayout>() == 11 * 8 + CKPT_AUXV_WORDS * 8);
    assert!(size_of::<CkptSigaction>() == 32);
    assert!(size_of::<CkptTaskState>() == 8 + 600 + 8 * 3 + 8 + 32 * CKPT_NSIG);
    assert!(offset_of!(CkptTaskState, sigactions) == 8 + 600 + 32);
    assert!(size_of::<CkptRestoreVma>() == 40);
    assert!(size_of::<CkptRestoreRun>() == 24);
    assert!(size_of::<CkptRestore>() == 32 + 16 * CKPT_RESTORE_MAX_KEEP + 16 + 600 + 16);
    assert!(offset_of!(CkptRestore, mm) == 112);
    assert!(offset_of!(CkptRestore, images) == 712);
    assert!(size_of::<CkptRestoreImage>() == 8);
    assert!(size_of::<CkptDumpPages>() == 72);
    assert!(offset_of!(CkptDumpPages, bytes_written) == 48);
    assert!(offset_of!(CkptVersionInfo, query_size) == 8);
    assert!(size_of::<CkptQuery>() == 56);
    assert!(offset_of!(CkptQuery, flags) == 4);
    assert!(offset_of!(CkptQuery, read_addr) == 8);
    assert!(offset_of!(CkptQuery, read_len) == 16);
    assert!(offset_of!(CkptQuery, read_buf) == 24);
    assert!(offset_of!(CkptQuery, thread_count) == 32);
    assert!(offset_of!(CkptQuery, vma_count) == 36);
    assert!(offset_of!(CkptQuery, mapped_bytes) == 40);
    assert!(offset_of!(CkptQuery, bytes_read) == 48);
    assert!(size_of::<CkptItimers>() == 16);
    assert!(offset_of!(CkptItimers, armed) == 8);
    // The ioctl numbers as the C macros compute them (checked against <linux/ioctl.h> by a test).
    assert!(CKPT_IOC_VERSION == 0x8020_CC01);
    assert!(CKPT_IOC_QUERY == 0xC038_CC02);
    assert!(CKPT_IOC_ITIMERS == 0xC010_CC06);
};
