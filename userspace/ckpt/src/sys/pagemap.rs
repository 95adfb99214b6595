//! PAGEMAP_SCAN (Linux 6.7): the pages of a range that have some properties, as runs, from
//! an ioctl on /proc/PID/pagemap. Neither nix nor libc has it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `PAGE_IS_*` categories (include/uapi/linux/fs.h).
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;
pub const PAGE_IS_GUARD: u64 = 1 << 8;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// A run of pages with the same categories (`struct page_region`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | (0x66 << 8) | 16;

/// The runs of pages in `start..end` that have any of the categories `any_of`, each with
/// those of `report` it has, in order (`pagemap`: /proc/PID/pagemap, open).
pub fn scan(
    pagemap: &File,
    (start, end): (u64, u64),
    (any_of, report): (u64, u64),
) -> io::Result<Vec<PageRegion>> {
    let mut out = Vec::new();
    let mut vec = vec![PageRegion::default(); 1024];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: at,
            end,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            category_anyof_mask: any_of,
            return_mask: report,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `vec_len` regions we
        // own; the kernel writes only there and into `arg.walk_end`.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        out.extend_from_slice(vec.get(..n).unwrap_or_default());
        if arg.walk_end <= at {
            return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
        }
        at = arg.walk_end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_number_is_the_kernels() {
        // _IOWR('f', 16, struct pm_scan_arg), 96 bytes: 0xc0606610 in <linux/fs.h>.
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
    }

    /// Our own memory: a page written is present and not the zero page; a page only read is
    /// the zero page.
    #[test]
    fn scans_our_own_pages() {
        use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};
        let len = std::num::NonZeroUsize::new(2 * 4096).unwrap();
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a new private mapping of ours, unmapped below.
        let at = unsafe { mmap_anonymous(None, len, prot, MapFlags::MAP_PRIVATE).unwrap() };
        let base = at.as_ptr() as u64;
        // SAFETY: both pages are ours and mapped.
        unsafe {
            std::ptr::write_volatile(at.as_ptr().cast::<u8>(), 1);
            std::ptr::read_volatile((base + 4096) as *const u8);
        }
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let all = PAGE_IS_PRESENT | PAGE_IS_PFNZERO;
        let r = scan(&pagemap, (base, base + 8192), (PAGE_IS_PRESENT, all));
        // SAFETY: ours, unused from here.
        unsafe { munmap(at, 8192).unwrap() };
        let want = vec![
            PageRegion {
                start: base,
                end: base + 4096,
                categories: PAGE_IS_PRESENT,
            },
            PageRegion {
                start: base + 4096,
                end: base + 8192,
                categories: PAGE_IS_PRESENT | PAGE_IS_PFNZERO,
            },
        ];
        match r {
            Ok(r) => assert_eq!(r, want),
            // A kernel before 6.7 (the host running the native tests may be one).
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}"),
        }
    }
}
