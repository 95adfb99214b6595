// SPDX-License-Identifier: GPL-2.0
//! Address spaces: a task's mm, VMA lookup, another task's memory (access_process_vm, pinned
//! pages to dump), the caller's own (vm_mmap/vm_munmap, pages pinned for writing, an ioctl's user arrays),
//! and the mm layout (code/data/brk/stack/args/env, auxv).

use super::file::FileRef;
use crate::abi::CkptMmLayout;
use core::ffi::c_void;
use core::ptr::NonNull;
use kernel::{
    alloc::KVVec,
    bindings,
    error::to_result,
    mm::{virt::VmaRef, MmWithUser, MmapReadGuard},
    prelude::*,
    sync::aref::ARef,
    task::Task,
};

// Kernel structs are passed as `c_void`: bindgen's versions contain empty structs that the FFI
// lint rejects, and the helpers only need the pointers.
extern "C" {
    fn ckpt_helper_mm_get_layout(mm: *mut c_void, out: *mut CkptMmLayout);
    fn ckpt_helper_mm_set_layout(mm: *mut c_void, input: *const CkptMmLayout);
    fn ckpt_helper_mm_sole_user(mm: *mut c_void) -> bool;
    fn ckpt_helper_put_page(page: *mut c_void);
}

/// The task's address space with `mm_users` raised, or `None` for exited or kernel tasks.
pub(crate) fn task_mm(task: &Task) -> Option<ARef<MmWithUser>> {
    // SAFETY: `task` is valid; `get_task_mm` returns NULL or an mm with `mm_users` raised.
    let mm = unsafe { bindings::get_task_mm(task.as_ptr()) };
    let mm = NonNull::new(mm.cast::<MmWithUser>())?;
    // SAFETY: the `ARef` owns the `mm_users` count and drops it with `mmput`. `MmWithUser` is
    // `repr(transparent)` over `mm_struct`.
    Some(unsafe { ARef::from_raw(mm) })
}

/// The first VMA ending above `addr`, like `find_vma()`. The guard proves the lock is held.
pub(crate) fn find_vma<'a>(
    mm: &MmWithUser,
    _lock: &'a MmapReadGuard<'_>,
    addr: usize,
) -> Option<&'a VmaRef> {
    // SAFETY: the mmap read lock is held for `'a`, so the tree is stable for the walk.
    let vma = unsafe { bindings::find_vma(mm.as_raw(), addr) };
    if vma.is_null() {
        return None;
    }
    // SAFETY: `vma` is a VMA of `mm`, valid while the read lock is held (`'a`).
    Some(unsafe { VmaRef::from_raw(vma) })
}

/// Whether `vma` is private anonymous memory (no file, not shared).
pub(crate) fn vma_is_private_anon(vma: &VmaRef) -> bool {
    // SAFETY: `vma` is valid while the caller holds the mmap lock (the `VmaRef` borrow);
    // `vm_file` is only read.
    let file = unsafe { (*vma.as_ptr()).vm_file };
    file.is_null() && vma.flags() & kernel::mm::virt::flags::SHARED == 0
}

/// Reads `buf.len()` bytes at `addr` of `task`'s memory, as ptrace's PEEKDATA would
/// (FOLL_FORCE: read-protected pages of a task we may ptrace are readable). Returns how many
/// bytes were read; short at the end of a readable range, 0 if none.
pub(crate) fn access_process_vm(task: &Task, addr: u64, buf: &mut [u8]) -> Result<usize> {
    let len = i32::try_from(buf.len()).map_err(|_| EINVAL)?;
    let addr = usize::try_from(addr).map_err(|_| EINVAL)?;
    // SAFETY: `task` is valid; `buf` is a writable kernel buffer of `len` bytes.
    let n = unsafe {
        bindings::access_process_vm(
            task.as_ptr(),
            addr,
            buf.as_mut_ptr().cast(),
            len,
            bindings::FOLL_FORCE,
        )
    };
    usize::try_from(n).map_err(|_| EIO)
}

/// The mm layout of `mm` (under its mmap read lock).
pub(crate) fn mm_layout(mm: &MmWithUser) -> CkptMmLayout {
    let mut out = CkptMmLayout::default();
    // SAFETY: `mm` has `mm_users` raised; `out` is a valid `struct ckpt_mm_layout`.
    unsafe { ckpt_helper_mm_get_layout(mm.as_raw().cast(), &mut out) };
    out
}

/// Stores `layout` in `mm` (under its mmap write lock). The caller has validated it.
pub(crate) fn set_mm_layout(mm: &MmWithUser, layout: &CkptMmLayout) {
    // SAFETY: `mm` has `mm_users` raised; `layout` is a valid `struct ckpt_mm_layout`.
    unsafe { ckpt_helper_mm_set_layout(mm.as_raw().cast(), layout) };
}

/// Whether nobody but its owner uses `mm` (no other thread, no /proc or ptrace reader).
pub(crate) fn mm_sole_user(mm: &MmWithUser) -> bool {
    // SAFETY: `mm` is valid; the helper only reads `mm_users`.
    unsafe { ckpt_helper_mm_sole_user(mm.as_raw().cast()) }
}

/// `vm_munmap(start, len)` on the caller's address space.
pub(crate) fn vm_munmap(start: usize, len: usize) -> Result {
    // SAFETY: acts on current's mm only; any range is accepted (validated by the kernel).
    to_result(unsafe { bindings::vm_munmap(start, len) })
}

/// `vm_mmap()` into the caller's address space. Returns the mapped address.
pub(crate) fn vm_mmap(
    file: Option<&FileRef>,
    addr: usize,
    len: usize,
    prot: u32,
    flags: u32,
    offset: u64,
) -> Result<usize> {
    let file = file.map_or(core::ptr::null_mut(), |f| f.as_ptr());
    let offset = usize::try_from(offset).map_err(|_| EINVAL)?;
    // SAFETY: `file` is NULL or a file we hold; acts on current's mm only.
    let ret = unsafe { bindings::vm_mmap(file, addr, len, prot as usize, flags as usize, offset) };
    // Like IS_ERR_VALUE(): the top 4095 values are errnos.
    if ret > usize::MAX - 4095 {
        return Err(Error::from_errno(ret as isize as i32));
    }
    Ok(ret)
}

/// A page of another process pinned by `get_user_pages_remote()`; unpinned on drop.
pub(crate) struct PinnedPage(NonNull<bindings::page>);

impl PinnedPage {
    /// The page, for C code that uses it while we hold the reference.
    pub(super) fn as_raw(&self) -> *mut bindings::page {
        self.0.as_ptr()
    }
}

impl Drop for PinnedPage {
    fn drop(&mut self) {
        // SAFETY: we hold the reference GUP took, and drop it once.
        unsafe { ckpt_helper_put_page(self.0.as_ptr().cast()) };
    }
}

/// Pins up to `max` pages of `mm` from `addr` (FOLL_FORCE: as a debugger reads them) and
/// appends them to `out`. Returns how many were pinned; fewer than asked at a hole.
pub(crate) fn pin_remote_pages(
    mm: &MmWithUser,
    _lock: &MmapReadGuard<'_>,
    addr: usize,
    max: usize,
    out: &mut KVec<PinnedPage>,
) -> Result<usize> {
    let mut raw = [core::ptr::null_mut::<bindings::page>(); 64];
    let n = core::cmp::min(max, raw.len());
    // SAFETY: the mmap read lock is held (`_lock`), `raw` has room for `n` pointers, and
    // `locked` is NULL because the caller keeps the lock.
    let got = unsafe {
        bindings::get_user_pages_remote(
            mm.as_raw(),
            addr,
            n,
            bindings::FOLL_FORCE,
            raw.as_mut_ptr(),
            core::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(Error::from_errno(got as i32));
    }
    let got = got as usize;
    for &p in raw.iter().take(got) {
        // Every returned slot holds a pinned page; NULL would be a GUP bug.
        let page = NonNull::new(p).ok_or(EFAULT)?;
        out.push(PinnedPage(page), GFP_KERNEL)?;
    }
    Ok(got)
}

/// Pins the `count` pages of the caller's own memory from `addr` for writing (FOLL_PIN, as
/// direct I/O does; FOLL_FORCE: read-only private mappings too, breaking COW, as a debugger
/// writes), lets `fill` write them through their kernel mapping, then unpins them marked
/// dirty. `slots` is scratch room for the page pointers. EFAULT at a hole.
pub(crate) fn with_own_pages_pinned(
    addr: usize,
    count: usize,
    slots: &mut KVec<*mut bindings::page>,
    fill: impl FnOnce(&[*mut bindings::page]) -> Result,
) -> Result {
    slots.clear();
    slots.reserve(count, GFP_KERNEL)?;
    let mut result = Ok(());
    while slots.len() < count {
        let done = slots.len();
        let want = i32::try_from(count - done).map_err(|_| EINVAL)?;
        let at = addr + done * kernel::page::PAGE_SIZE;
        // SAFETY: `slots` has room for `count` pointers (reserved above), of which `done` are
        // used; the kernel writes at most `want` more, and we account for what it wrote.
        let got = unsafe {
            let free = slots.as_mut_ptr().add(done);
            let got = bindings::pin_user_pages_fast(
                at,
                want,
                bindings::FOLL_WRITE | bindings::FOLL_FORCE,
                free,
            );
            if got > 0 {
                slots.inc_len(got as usize);
            }
            got
        };
        if got <= 0 {
            result = Err(if got < 0 {
                Error::from_errno(got)
            } else {
                EFAULT
            });
            break;
        }
    }
    if result.is_ok() {
        result = fill(slots);
    }
    // SAFETY: every pointer in `slots` was pinned by pin_user_pages_fast above, once.
    unsafe { bindings::unpin_user_pages_dirty_lock(slots.as_mut_ptr(), slots.len(), true) };
    slots.clear();
    result
}

/// Reads `count` records of `T` from user memory at `ptr`. EINTR if the caller is killed
/// meanwhile (millions of records take seconds).
pub(crate) fn read_user_array<T: kernel::transmute::FromBytes>(
    ptr: u64,
    count: u32,
) -> Result<KVVec<T>> {
    let size = core::mem::size_of::<T>();
    let bytes = (count as usize).checked_mul(size).ok_or(EINVAL)?;
    let ptr = usize::try_from(ptr).map_err(|_| EFAULT)?;
    let mut reader =
        kernel::uaccess::UserSlice::new(kernel::uaccess::UserPtr::from_addr(ptr), bytes).reader();
    let mut out = KVVec::with_capacity(count as usize, GFP_KERNEL)?;
    for i in 0..count {
        if i % 4096 == 0 && super::task::fatal_signal_pending() {
            return Err(EINTR);
        }
        out.push(reader.read::<T>()?, GFP_KERNEL)?;
    }
    Ok(out)
}
