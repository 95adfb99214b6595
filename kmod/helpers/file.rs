// SPDX-License-Identifier: GPL-2.0
//! Files: counted references taken from the caller's fds (with the mode checks kernel_read and
//! kernel_write need), reading the image into pinned pages, closing the caller's fds once the ioctl has returned,
//! and writing pinned pages into the image.

use super::mm::PinnedPage;
use crate::xxh64::Xxh64;
use core::ffi::c_void;
use core::ptr::NonNull;
use kernel::{bindings, prelude::*};

// Kernel structs are passed as `c_void`: bindgen's versions contain empty structs that the FFI
// lint rejects, and the helpers only need the pointers.
extern "C" {
    fn ckpt_helper_file_size(file: *mut c_void) -> i64;
    fn ckpt_helper_hash_page(page: *mut c_void, skip_zero: bool, hash: *mut c_void) -> bool;
    fn ckpt_helper_file_can(file: *mut c_void, read: bool, write: bool) -> bool;
}

/// A counted reference to an open file, taken from one of the caller's fds.
pub(crate) struct FileRef(NonNull<bindings::file>);

// SAFETY: a counted `struct file` reference may be used (read through) and dropped (fput) from
// any thread: the restore's page-copy worker reads the image through one.
unsafe impl Send for FileRef {}
// SAFETY: as above; reading a file through a shared reference needs no exclusive access (each
// reader passes its own position).
unsafe impl Sync for FileRef {}

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
    /// otherwise (kernel_read/kernel_write would WARN on the wrong mode). A file to write must
    /// not be O_APPEND (its pages would not land where the dump records them).
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

    /// Writes `pages` whole, in order, at `*pos` (advancing it) in one `vfs_iter_write` over a
    /// bvec of them: a call per batch, not per page. EBADF if they did not land at `*pos` (the
    /// file was made O_APPEND meanwhile), EIO on a short write. `bvecs` is scratch room.
    pub(crate) fn write_pages(
        &self,
        pages: &[PinnedPage],
        pos: &mut i64,
        bvecs: &mut KVec<bindings::bio_vec>,
    ) -> Result {
        let expected = (pages.len() * kernel::page::PAGE_SIZE) as i64;
        let expected = pos.checked_add(expected).ok_or(EINVAL)?;
        let raw = pages.iter().map(PinnedPage::as_raw);
        self.pages_io(raw, pos, bvecs, Direction::Write)?;
        if *pos != expected {
            return Err(EBADF);
        }
        Ok(())
    }

    /// Reads `pages.len()` whole pages at `pos` into `pages` through their kernel mapping
    /// (one `vfs_iter_read` over a bvec of them: one kernel-to-kernel copy from the page
    /// cache). `bvecs` is scratch room. EIO on a short read (the file shrank).
    pub(crate) fn read_into_pages(
        &self,
        pages: &[*mut bindings::page],
        pos: u64,
        bvecs: &mut KVec<bindings::bio_vec>,
    ) -> Result {
        let mut pos = i64::try_from(pos).map_err(|_| EINVAL)?;
        self.pages_io(pages.iter().copied(), &mut pos, bvecs, Direction::Read)
    }

    /// Reads into or writes from whole `pages` at `*pos` (advancing it), through one iov_iter
    /// over a bvec of them (built in `bvecs`), until all of them are done. EIO when the file
    /// gives no more.
    fn pages_io(
        &self,
        pages: impl Iterator<Item = *mut bindings::page>,
        pos: &mut i64,
        bvecs: &mut KVec<bindings::bio_vec>,
        dir: Direction,
    ) -> Result {
        let page_size = kernel::page::PAGE_SIZE;
        bvecs.clear();
        for page in pages {
            let bv = bindings::bio_vec {
                bv_page: page,
                bv_len: page_size as u32,
                bv_offset: 0,
            };
            bvecs.push(bv, GFP_KERNEL)?;
        }
        let total = bvecs.len() * page_size;
        let direction = match dir {
            Direction::Read => bindings::ITER_DEST,
            Direction::Write => bindings::ITER_SOURCE,
        };
        let mut iter = core::mem::MaybeUninit::<bindings::iov_iter>::zeroed();
        // SAFETY: `iter` is ours to initialise; `bvecs` holds entries of whole pages the
        // caller holds, and outlives the iterator's use below.
        unsafe {
            bindings::iov_iter_bvec(
                iter.as_mut_ptr(),
                direction,
                bvecs.as_ptr(),
                bvecs.len(),
                total,
            )
        };
        let mut done = 0usize;
        while done < total {
            let (file, it) = (self.0.as_ptr(), iter.as_mut_ptr());
            // SAFETY: we hold the file (opened for this direction, checked at fget); `iter`
            // was initialised above and advances past what each call did.
            let n = unsafe {
                match dir {
                    Direction::Read => bindings::vfs_iter_read(file, it, pos, 0),
                    Direction::Write => bindings::vfs_iter_write(file, it, pos, 0),
                }
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

/// Which way [`FileRef::pages_io`] moves the bytes.
enum Direction {
    Read,
    Write,
}

impl Drop for FileRef {
    fn drop(&mut self) {
        // SAFETY: drops the reference `fget` took.
        unsafe { bindings::fput(self.0.as_ptr()) };
    }
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

/// Feeds `page` to `hash` (if any) unless `skip_zero` and it is all zero. Returns whether it
/// is to be written (see [`FileRef::write_pages`]).
pub(crate) fn hash_page(page: &PinnedPage, skip_zero: bool, hash: Option<&mut Xxh64>) -> bool {
    let hash: *mut Xxh64 = hash.map_or(core::ptr::null_mut(), |h| h);
    // SAFETY: `page` stays pinned for the call; `hash` is null or a live, exclusively
    // borrowed `Xxh64`, which the helper only passes back to `ckpt_rust_hash_page` during
    // the call.
    unsafe { ckpt_helper_hash_page(page.as_raw().cast(), skip_zero, hash.cast()) }
}

/// Called by `ckpt_helper_hash_page` with the page it is about to keep, mapped.
///
/// # Safety
///
/// `hash` is the `Xxh64` `hash_page` passed down (valid, not otherwise borrowed during the
/// call) and `page` is the kernel address of a mapped page of `PAGE_SIZE` bytes.
#[no_mangle]
pub(super) unsafe extern "C" fn ckpt_rust_hash_page(hash: *mut c_void, page: *const c_void) {
    // SAFETY: see the function's contract.
    let (hash, bytes) = unsafe {
        (
            &mut *hash.cast::<Xxh64>(),
            core::slice::from_raw_parts(page.cast::<u8>(), kernel::page::PAGE_SIZE),
        )
    };
    hash.update(bytes);
}
