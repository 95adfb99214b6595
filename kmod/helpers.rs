// SPDX-License-Identifier: GPL-2.0
//! Every raw `bindings::` call and C helper the module uses, each wrapped once in a small safe
//! function. The rest of the module calls only these.

use crate::abi::{CkptMmLayout, CkptSigaction, CKPT_NSIG};
use core::ffi::c_void;
use core::ptr::NonNull;
use kernel::{
    alloc::KVVec,
    bindings,
    cred::Credential,
    error::to_result,
    mm::{virt::VmaRef, MmWithUser, MmapReadGuard},
    prelude::*,
    sync::aref::ARef,
    task::Task,
};

/// Mirror of `struct ckpt_c_layout` in `ckpt_helpers.h`.
#[repr(C)]
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct CLayout {
    pub(crate) task_flags: u64,
    pub(crate) task_signal: u64,
    pub(crate) task_cred: u64,
    pub(crate) signal_nr_threads: u64,
    pub(crate) signal_exec_update_lock: u64,
    pub(crate) cred_uid: u64,
    pub(crate) cred_gid: u64,
    pub(crate) cred_suid: u64,
    pub(crate) cred_sgid: u64,
    pub(crate) cred_euid: u64,
    pub(crate) cred_egid: u64,
    pub(crate) cred_user_ns: u64,
}

/// Mirror of `struct ckpt_task_misc` in `ckpt_helpers.h`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct TaskMisc {
    pub(crate) clear_child_tid: u64,
    pub(crate) sas_ss_sp: u64,
    pub(crate) sas_ss_size: u64,
    pub(crate) sas_ss_flags: u32,
    pub(crate) personality: u32,
}

// Kernel structs are passed as `c_void`: bindgen's versions contain empty structs that the FFI
// lint rejects, and the helpers only need the pointers.
extern "C" {
    fn ckpt_helper_c_layout(out: *mut CLayout);
    fn ckpt_helper_task_still_dumpable(task: *mut c_void) -> bool;
    fn ckpt_helper_mm_get_layout(mm: *mut c_void, out: *mut CkptMmLayout);
    fn ckpt_helper_mm_set_layout(mm: *mut c_void, input: *const CkptMmLayout);
    fn ckpt_helper_mm_sole_user(mm: *mut c_void) -> bool;
    fn ckpt_helper_task_misc(task: *mut c_void, out: *mut TaskMisc);
    fn ckpt_helper_get_sigactions(task: *mut c_void, out: *mut CkptSigaction, count: u32) -> i32;
    fn ckpt_helper_file_size(file: *mut c_void) -> i64;
    fn ckpt_helper_dump_page(
        page: *mut c_void,
        file: *mut c_void,
        pos: *mut i64,
        skip_zero: bool,
    ) -> i32;
    fn ckpt_helper_put_page(page: *mut c_void);
    fn ckpt_helper_file_can(file: *mut c_void, read: bool, write: bool) -> bool;
}

/// The field offsets as the C compiler laid them out.
pub(crate) fn c_layout() -> CLayout {
    let mut out = CLayout::default();
    // SAFETY: `out` is a valid, writable `struct ckpt_c_layout` (same `repr(C)` layout).
    unsafe { ckpt_helper_c_layout(&mut out) };
    out
}

/// The task with id `nr` in the caller's pid namespace, with a reference held.
pub(crate) fn task_by_vpid(nr: i32) -> Option<ARef<Task>> {
    // SAFETY: `find_get_pid` accepts any number and returns NULL or a counted `struct pid`.
    let pid = unsafe { bindings::find_get_pid(nr) };
    if pid.is_null() {
        return None;
    }
    // SAFETY: `pid` is a valid counted reference; `get_pid_task` takes its own reference.
    let task = unsafe { bindings::get_pid_task(pid, bindings::pid_type_PIDTYPE_PID) };
    // SAFETY: drops the reference `find_get_pid` gave us; `pid` is not used afterwards.
    unsafe { bindings::put_pid(pid) };
    let task = NonNull::new(task.cast::<Task>())?;
    // SAFETY: `get_pid_task` returned a counted reference, which the `ARef` now owns. `Task` is
    // `repr(transparent)` over `task_struct`.
    Some(unsafe { ARef::from_raw(task) })
}

/// Whether `task` is a kernel thread (it has no user address space to inspect).
pub(crate) fn is_kernel_thread(task: &Task) -> bool {
    // SAFETY: `task` is valid; `flags` is only read (a racy read of PF_KTHREAD is fine: it is
    // set at creation and never cleared). The offset is checked at load time (layout.rs).
    let flags = unsafe { core::ptr::read_volatile(&raw const (*task.as_ptr()).flags) };
    flags & bindings::PF_KTHREAD != 0
}

/// Whether `a` and `b` belong to the same thread group (process).
pub(crate) fn same_thread_group(a: &Task, b: &Task) -> bool {
    // SAFETY: both tasks are valid; `signal` is set at creation and stays until the task
    // struct is freed, which our references prevent.
    unsafe { (*a.as_ptr()).signal == (*b.as_ptr()).signal }
}

/// Number of threads in `task`'s thread group (the kernel's `get_nr_threads()`).
pub(crate) fn nr_threads(task: &Task) -> u32 {
    // SAFETY: `signal` is valid while we hold the task (see `same_thread_group`); the count
    // changes concurrently, so it is read once, like `get_nr_threads()` does.
    let n = unsafe { core::ptr::read_volatile(&raw const (*(*task.as_ptr()).signal).nr_threads) };
    u32::try_from(n).unwrap_or(0)
}

/// The ids a ptrace-style permission check compares.
#[derive(Clone, Copy)]
pub(crate) struct Ids {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) euid: u32,
    pub(crate) egid: u32,
    pub(crate) suid: u32,
    pub(crate) sgid: u32,
    user_ns: *mut bindings::user_namespace,
}

fn ids_of(cred: &Credential) -> Ids {
    let c = cred.as_ptr();
    // SAFETY: `cred` is a valid credential; credentials are immutable once published.
    unsafe {
        Ids {
            uid: (*c).uid.val,
            gid: (*c).gid.val,
            euid: (*c).euid.val,
            egid: (*c).egid.val,
            suid: (*c).suid.val,
            sgid: (*c).sgid.val,
            user_ns: (*c).user_ns,
        }
    }
}

/// The calling task's subjective credentials (`current_cred()`).
pub(crate) fn current_ids() -> Ids {
    let cur = kernel::current!();
    // SAFETY: `current->cred` is valid while current runs, and only current replaces it.
    let cred = unsafe { Credential::from_ptr((*cur.as_ptr()).cred) };
    ids_of(cred)
}

/// `task`'s objective credentials (`__task_cred()`), read through a counted reference.
pub(crate) fn task_ids(task: &Task) -> Ids {
    // SAFETY: `task` is valid; `get_task_cred` returns a counted, non-NULL credential.
    let cred = unsafe { bindings::get_task_cred(task.as_ptr()) };
    // SAFETY: non-NULL and counted (above); the `ARef` drops that count with `put_cred`.
    let cred: ARef<Credential> =
        unsafe { ARef::from_raw(NonNull::new_unchecked(cred.cast_mut().cast::<Credential>())) };
    ids_of(&cred)
}

/// `ns_capable(ids.user_ns, CAP_SYS_PTRACE)`: may the caller ptrace tasks owned by that user
/// namespace whatever their ids? (May audit, like ptrace's own check.)
pub(crate) fn caller_has_ptrace_cap_over(ids: &Ids) -> bool {
    // SAFETY: `user_ns` came from a credential we held; user namespaces live at least as long as
    // the tasks and credentials in them, and the target is pinned by our task reference.
    unsafe { bindings::ns_capable(ids.user_ns, bindings::CAP_SYS_PTRACE as i32) }
}

/// The dumpability step of the ptrace check: the task is owner-dumpable, or the caller has
/// CAP_SYS_PTRACE over the namespace it was exec'd in.
pub(crate) fn task_still_dumpable(task: &Task) -> bool {
    // SAFETY: `task` is valid; the helper reads `exec_state` under RCU.
    unsafe { ckpt_helper_task_still_dumpable(task.as_ptr().cast()) }
}

/// Read guard on `task->signal->exec_update_lock`: while held, the task cannot exec, so its
/// credentials and mm stay the ones a permission check saw (like `mm_access()`).
pub(crate) struct ExecUpdateReadGuard<'a> {
    task: &'a Task,
}

impl<'a> ExecUpdateReadGuard<'a> {
    pub(crate) fn lock_killable(task: &'a Task) -> Result<Self> {
        // SAFETY: `signal` is valid while we hold the task; the semaphore is initialised.
        let ret = unsafe {
            bindings::down_read_killable(&raw mut (*(*task.as_ptr()).signal).exec_update_lock)
        };
        to_result(ret)?;
        Ok(Self { task })
    }
}

impl Drop for ExecUpdateReadGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: we took the read lock in `lock_killable` and release it exactly once.
        unsafe { bindings::up_read(&raw mut (*(*self.task.as_ptr()).signal).exec_update_lock) };
    }
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

/// clear_child_tid, the alternate signal stack and the personality of `task`.
pub(crate) fn task_misc(task: &Task) -> TaskMisc {
    let mut out = TaskMisc::default();
    // SAFETY: `task` is valid; `out` is a valid `struct ckpt_task_misc`.
    unsafe { ckpt_helper_task_misc(task.as_ptr().cast(), &mut out) };
    out
}

/// The signal dispositions of `task`'s process.
pub(crate) fn sigactions(task: &Task, out: &mut [CkptSigaction; CKPT_NSIG]) -> Result {
    // SAFETY: `task` is valid; `out` has room for `CKPT_NSIG` entries.
    let ret = unsafe {
        ckpt_helper_get_sigactions(task.as_ptr().cast(), out.as_mut_ptr(), CKPT_NSIG as u32)
    };
    to_result(ret)
}

/// `capable(cap)`: does the caller have `cap` in the initial user namespace?
pub(crate) fn capable(cap: u32) -> bool {
    // SAFETY: `capable` accepts any capability number and only inspects the caller.
    unsafe { bindings::capable(cap as i32) }
}

/// A counted reference to an open file, taken from one of the caller's fds.
pub(crate) struct FileRef(NonNull<bindings::file>);

impl FileRef {
    /// `fget(fd)`: EBADF if the caller has no such fd.
    pub(crate) fn from_fd(fd: i32) -> Result<Self> {
        let fd = u32::try_from(fd).map_err(|_| EBADF)?;
        // SAFETY: `fget` accepts any number and returns NULL or a counted file.
        let file = unsafe { bindings::fget(fd) };
        NonNull::new(file).map(Self).ok_or(EBADF)
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::file {
        self.0.as_ptr()
    }

    /// `fget(fd)` of a regular file open for reading and/or writing as asked; EBADF
    /// otherwise (kernel_read/kernel_write would WARN on the wrong mode).
    pub(crate) fn regular_from_fd(fd: i32, read: bool, write: bool) -> Result<Self> {
        let file = Self::from_fd(fd)?;
        // SAFETY: we hold the file; the helper only reads its mode and inode type.
        if !unsafe { ckpt_helper_file_can(file.0.as_ptr().cast(), read, write) } {
            return Err(EBADF);
        }
        Ok(file)
    }

    /// The size of the file's inode.
    pub(crate) fn size(&self) -> u64 {
        // SAFETY: we hold a reference to the file.
        let size = unsafe { ckpt_helper_file_size(self.0.as_ptr().cast()) };
        u64::try_from(size).unwrap_or(0)
    }

    /// `kernel_read()` at `pos`, filling all of `buf`; EIO on a short read.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> Result {
        let mut pos = i64::try_from(pos).map_err(|_| EINVAL)?;
        let mut done = 0usize;
        while done < buf.len() {
            let rest = buf.get_mut(done..).ok_or(EINVAL)?;
            // SAFETY: we hold the file; `rest` is a writable kernel buffer of that length.
            let n = unsafe {
                bindings::kernel_read(
                    self.0.as_ptr(),
                    rest.as_mut_ptr().cast(),
                    rest.len(),
                    &mut pos,
                )
            };
            if n <= 0 {
                return Err(if n < 0 {
                    Error::from_errno(n as i32)
                } else {
                    EIO
                });
            }
            done += n as usize;
        }
        Ok(())
    }
}

impl Drop for FileRef {
    fn drop(&mut self) {
        // SAFETY: drops the reference `fget` took.
        unsafe { bindings::fput(self.0.as_ptr()) };
    }
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

/// Writes `buf` at `addr` of the caller's memory like a debugger would (FOLL_FORCE: also into
/// read-only private mappings, breaking COW). EFAULT unless all of it was written.
pub(crate) fn poke_current(addr: usize, buf: &[u8]) -> Result {
    let len = i32::try_from(buf.len()).map_err(|_| EINVAL)?;
    let current = kernel::current!();
    // SAFETY: `current` is valid; `buf` is a readable kernel buffer of `len` bytes (the kernel
    // only reads from it for a FOLL_WRITE access).
    let n = unsafe {
        bindings::access_process_vm(
            current.as_ptr(),
            addr,
            buf.as_ptr().cast_mut().cast(),
            len,
            bindings::FOLL_FORCE | bindings::FOLL_WRITE,
        )
    };
    if n != len {
        return Err(EFAULT);
    }
    Ok(())
}

/// Kills the caller: after a failed restore its memory is gone and it must never run again.
pub(crate) fn force_sigkill_current() {
    // SAFETY: `force_sig` acts on current with any signal number.
    unsafe { bindings::force_sig(bindings::SIGKILL as i32) };
}

/// Closes `fds` of the caller once it is about to return to user space (task work), i.e.
/// after the current syscall, which may be using one of them, has released it.
pub(crate) fn close_fds_on_return(fds: KVec<u32>) -> Result {
    #[repr(C)]
    struct CloseFds {
        head: bindings::callback_head,
        fds: KVec<u32>,
    }

    /// # Safety
    ///
    /// `head` must be the `head` of a `CloseFds` leaked by `KBox::into_raw`, passed once.
    unsafe extern "C" fn run(head: *mut bindings::callback_head) {
        // SAFETY: `head` is the first field of a `CloseFds` leaked by `KBox::into_raw` below,
        // handed to us exactly once by the task-work machinery.
        let work = unsafe { KBox::from_raw(head.cast::<CloseFds>()) };
        let current = kernel::current!();
        // SAFETY: reading current's own flags.
        let flags = unsafe { core::ptr::read_volatile(&raw const (*current.as_ptr()).flags) };
        if flags & bindings::PF_EXITING != 0 {
            return; // exit closes every fd anyway, and the file table may already be gone
        }
        for &fd in work.fds.iter() {
            // SAFETY: closing one of current's fds; a number that is not open is ignored.
            unsafe { bindings::close_fd(fd) };
        }
    }

    let work = KBox::new(
        CloseFds {
            // SAFETY: an all-zero `callback_head` is a valid, unqueued one.
            head: unsafe { core::mem::zeroed() },
            fds,
        },
        GFP_KERNEL,
    )?;
    let raw = KBox::into_raw(work);
    // SAFETY: `raw` is valid and exclusively ours until queued.
    unsafe { (*raw).head.func = Some(run) };
    let current = kernel::current!();
    // SAFETY: queues `head` on current; on success `run` takes ownership of the allocation.
    let ret = unsafe {
        bindings::task_work_add(
            current.as_ptr(),
            &raw mut (*raw).head,
            bindings::task_work_notify_mode_TWA_RESUME,
        )
    };
    if ret != 0 {
        // SAFETY: not queued, so still ours: free it.
        drop(unsafe { KBox::from_raw(raw) });
        return Err(Error::from_errno(ret));
    }
    Ok(())
}

/// A page of another process pinned by `get_user_pages_remote()`; unpinned on drop.
pub(crate) struct PinnedPage(NonNull<bindings::page>);

impl PinnedPage {
    /// Gives up the page without unpinning it: the caller hands the reference to C code that
    /// drops it.
    fn into_raw(self) -> NonNull<bindings::page> {
        let page = self.0;
        core::mem::forget(self);
        page
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

/// Writes `page` to `file` at `*pos` (advancing it) unless `skip_zero` and it is all zero.
/// Returns whether it was written.
pub(crate) fn dump_page(
    page: PinnedPage,
    file: &FileRef,
    pos: &mut i64,
    skip_zero: bool,
) -> Result<bool> {
    // The helper drops the page's reference.
    let raw = page.into_raw().as_ptr();
    // SAFETY: `raw` is a pinned page whose reference the helper consumes; `file` is held.
    let ret = unsafe { ckpt_helper_dump_page(raw.cast(), file.as_ptr().cast(), pos, skip_zero) };
    if ret < 0 {
        return Err(Error::from_errno(ret));
    }
    Ok(ret == 1)
}

/// Reads `count` records of `T` from user memory at `ptr`.
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
    for _ in 0..count {
        out.push(reader.read::<T>()?, GFP_KERNEL)?;
    }
    Ok(out)
}

/// Whether the caller has a fatal signal pending (long loops must stop then).
pub(crate) fn fatal_signal_pending() -> bool {
    kernel::current!().signal_pending()
}
