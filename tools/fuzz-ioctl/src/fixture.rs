//! What the calls point at: memory at fixed addresses (so that a seed gives the same pointers
//! on every run) and a fixed set of file descriptors of every kind an ioctl may be handed.
//!
//! Set up once by the main process before it forks anything, so the fork servers, the
//! memory target and every restore child share the layout.

use ckpt_abi::{CkptRange, CkptRestoreRun, CkptRestoreVma};
use nix::fcntl::{open, OFlag};
use nix::sys::mman::{mmap, mmap_anonymous, mprotect, MapFlags, ProtFlags};
use nix::sys::stat::Mode;
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;

pub const PAGE: u64 = 4096;
/// Per-thread scratch: arguments and output buffers live here, and nowhere else writable.
pub const SCRATCH_BASE: u64 = 0x3e00_0000_0000;
pub const SLOT: u64 = 8 << 20;
pub const SCRATCH_LEN: u64 = 2 << 20;
/// Pages with known contents, holes and protections, mapped in every process of the run.
pub const DATA_BASE: u64 = 0x3d00_0000_0000;
pub const DATA_PAGES: u64 = 64;
/// The big shared area holding argument arrays at the ABI's count limits.
pub const BIG_BASE: u64 = 0x3c00_0000_0000;
pub const BIG_LEN: u64 = 128 << 20;
pub const BIG_RUNS: u64 = BIG_BASE;
pub const BIG_RANGES: u64 = BIG_BASE + (96 << 20);
pub const BIG_VMAS: u64 = BIG_BASE + (112 << 20);
/// Where restore requests put their new mappings: nothing of the child is there.
pub const ARENA: u64 = 0x2000_0000_0000;
/// Size of the image files a restore reads.
pub const IMAGE_LEN: u64 = 256 << 10;

/// A kind of region in the data area, for ranges that hit each on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Private anonymous, every third page zero.
    Anon,
    ReadOnly,
    ProtNone,
    /// A shared mapping of a memfd truncated to nothing: touching it is SIGBUS.
    Sigbus,
    /// A private mapping of the image file.
    File,
    /// Nothing mapped.
    Hole,
}

#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub start: u64,
    pub pages: u64,
    pub kind: RegionKind,
}

/// The kinds of file descriptor an fd argument may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    /// A regular file of `IMAGE_LEN` bytes (0xCC, int3: a restored process that runs it
    /// traps), read-only.
    Image,
    /// A regular file open read-write (the thread's own dump file, for DUMP_PAGES).
    Dump,
    WriteOnly,
    Append,
    Empty,
    /// A sparse regular file of 1 TiB.
    Sparse,
    Dir,
    PipeRead,
    PipeWrite,
    Socket,
    /// A memfd of 64 KiB sealed against growing.
    SealedMemfd,
    Eventfd,
    DevNull,
    DevCkpt,
    OPath,
    /// A number that was open once and is closed now.
    Closed,
    /// A number never opened.
    NeverOpened,
    Negative,
    Huge,
}

pub const FD_KINDS: &[FdKind] = &[
    FdKind::Image,
    FdKind::Dump,
    FdKind::WriteOnly,
    FdKind::Append,
    FdKind::Empty,
    FdKind::Sparse,
    FdKind::Dir,
    FdKind::PipeRead,
    FdKind::PipeWrite,
    FdKind::Socket,
    FdKind::SealedMemfd,
    FdKind::Eventfd,
    FdKind::DevNull,
    FdKind::DevCkpt,
    FdKind::OPath,
    FdKind::Closed,
    FdKind::NeverOpened,
    FdKind::Negative,
    FdKind::Huge,
];

pub struct Fixture {
    pub threads: u32,
    pub regions: Vec<Region>,
    /// `(kind, fd)`; `Dump` has one fd per thread, in thread order.
    fds: Vec<(FdKind, RawFd)>,
    /// The device, open read-write.
    pub dev: RawFd,
    /// The vDSO's address (a kept range a real restore passes).
    pub vdso: u64,
    /// Whether the big arrays at the count limits hold valid entries (else zeros).
    pub limit_arrays: bool,
}

fn map_fixed(addr: u64, len: u64, prot: ProtFlags, extra: MapFlags) -> std::io::Result<()> {
    let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED_NOREPLACE | extra;
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let got = unsafe {
        mmap_anonymous(NonZeroUsize::new(addr as usize), nz(len), prot, flags)
            .map_err(std::io::Error::from)?
    };
    check_at(got, addr)
}

fn check_at(got: NonNull<c_void>, addr: u64) -> std::io::Result<()> {
    if got.as_ptr() as u64 != addr {
        return Err(std::io::Error::other(format!(
            "the kernel mapped {:#x} instead of {addr:#x} (no MAP_FIXED_NOREPLACE?)",
            got.as_ptr() as u64
        )));
    }
    Ok(())
}

fn map_file(addr: u64, len: u64, fd: &OwnedFd, shared: bool) -> std::io::Result<()> {
    let share = if shared {
        MapFlags::MAP_SHARED
    } else {
        MapFlags::MAP_PRIVATE
    };
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let got = unsafe {
        mmap(
            NonZeroUsize::new(addr as usize),
            nz(len),
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            share | MapFlags::MAP_FIXED_NOREPLACE,
            fd,
            0,
        )
        .map_err(std::io::Error::from)?
    };
    check_at(got, addr)
}

fn nz(len: u64) -> NonZeroUsize {
    NonZeroUsize::new(len as usize).unwrap_or(NonZeroUsize::MIN)
}

/// `addr..addr+len` as a mutable byte slice.
///
/// # Safety
///
/// The range must be mapped writable by this process and used by no one else meanwhile.
pub unsafe fn bytes_at<'a>(addr: u64, len: u64) -> &'a mut [u8] {
    // SAFETY: per the function's contract.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len as usize) }
}

fn set_prot(addr: u64, len: u64, prot: ProtFlags) -> std::io::Result<()> {
    let ptr = NonNull::new(addr as *mut c_void).ok_or_else(|| std::io::Error::other("null"))?;
    // SAFETY: only changes the protection of fixture memory, which nothing borrows.
    unsafe { mprotect(ptr, len as usize, prot) }.map_err(std::io::Error::from)
}

fn memfd(name: &std::ffi::CStr, len: u64, flags: libc::c_uint) -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create with a valid name; the result is a new fd we own.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    nix::unistd::ftruncate(&fd, len as i64)?;
    Ok(fd)
}

impl Fixture {
    /// Maps the memory and opens the fds. `dir` is a private scratch directory (a small
    /// tmpfs: the dump files fill it and then see ENOSPC, as a full disk would).
    pub fn new(dir: &Path, dev: &Path, threads: u32, limit_arrays: bool) -> std::io::Result<Self> {
        let devfd = open(dev, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| std::io::Error::other(format!("cannot open {}: {e}", dev.display())))?;
        let image_path = dir.join("image");
        std::fs::write(&image_path, vec![0xccu8; IMAGE_LEN as usize])?;
        let mut fx = Self {
            threads,
            regions: Vec::new(),
            fds: Vec::new(),
            dev: devfd.into_raw_fd(),
            vdso: auxv_vdso(),
            limit_arrays,
        };
        fx.open_fds(dir, &image_path)?;
        for t in 0..threads {
            fx.map_thread_slot(t)?;
        }
        fx.map_data(&image_path)?;
        fx.map_big()?;
        Ok(fx)
    }

    fn add(&mut self, kind: FdKind, fd: impl IntoRawFd) {
        self.fds.push((kind, fd.into_raw_fd()));
    }

    fn open_fds(&mut self, dir: &Path, image: &Path) -> std::io::Result<()> {
        use std::fs::OpenOptions;
        let o = |p: &Path, f: &dyn Fn(&mut OpenOptions) -> &mut OpenOptions| {
            f(&mut OpenOptions::new()).open(p)
        };
        self.add(FdKind::Image, o(image, &|x| x.read(true))?);
        for t in 0..self.threads {
            let p = dir.join(format!("dump.{t}"));
            self.add(
                FdKind::Dump,
                o(&p, &|x| x.read(true).write(true).create(true))?,
            );
        }
        let wo = dir.join("write-only");
        self.add(FdKind::WriteOnly, o(&wo, &|x| x.write(true).create(true))?);
        self.add(FdKind::Append, o(&wo, &|x| x.append(true))?);
        let empty = dir.join("empty");
        std::fs::write(&empty, b"")?;
        self.add(FdKind::Empty, o(&empty, &|x| x.read(true))?);
        let sparse = o(&dir.join("sparse"), &|x| {
            x.read(true).write(true).create(true)
        })?;
        sparse.set_len(1 << 40)?;
        self.add(FdKind::Sparse, sparse);
        self.add(FdKind::Dir, std::fs::File::open(dir)?);
        let (r, w) = nix::unistd::pipe()?;
        self.add(FdKind::PipeRead, r);
        self.add(FdKind::PipeWrite, w);
        let (a, _b) = std::os::unix::net::UnixStream::pair()?;
        self.add(FdKind::Socket, a);
        let mfd = memfd(c"fuzz-sealed", 64 << 10, libc::MFD_ALLOW_SEALING)?;
        nix::fcntl::fcntl(
            &mfd,
            nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::F_SEAL_GROW),
        )?;
        self.add(FdKind::SealedMemfd, mfd);
        let efd = nix::sys::eventfd::EventFd::new()?;
        self.add(FdKind::Eventfd, OwnedFd::from(efd));
        self.add(
            FdKind::DevNull,
            o(Path::new("/dev/null"), &|x| x.read(true).write(true))?,
        );
        let ckpt = o(Path::new("/dev/ckpt"), &|x| x.read(true).write(true))?;
        self.add(FdKind::DevCkpt, ckpt);
        let opath = open(image, OFlag::O_PATH, Mode::empty())?;
        self.add(FdKind::OPath, opath);
        // A slot that was in use and is free now, and one never used.
        let tmp = std::fs::File::open(image)?;
        // SAFETY: dup2 onto a number this process does not use (the fixture is opened first).
        if unsafe { libc::dup2(tmp.as_raw_fd(), 900) } != 900 {
            return Err(std::io::Error::last_os_error());
        }
        nix::unistd::close(900)?;
        self.fds.push((FdKind::Closed, 900));
        self.fds.push((FdKind::NeverOpened, 1000));
        self.fds.push((FdKind::Negative, -1));
        self.fds.push((FdKind::Huge, i32::MAX));
        Ok(())
    }

    /// An fd of `kind` (the thread's own for `Dump`).
    pub fn fd(&self, kind: FdKind, thread: u32) -> RawFd {
        let mut of_kind = self.fds.iter().filter(|(k, _)| *k == kind);
        let n = if kind == FdKind::Dump {
            thread as usize
        } else {
            0
        };
        of_kind.nth(n).map_or(-1, |&(_, fd)| fd)
    }

    /// Empties thread `t`'s dump file.
    pub fn empty_dump_file(&self, t: u32) {
        // SAFETY: ftruncate takes any number; the fixture's fds stay open all run long.
        unsafe { libc::ftruncate(self.fd(FdKind::Dump, t), 0) };
    }

    /// Thread `t`'s slot: 2 MiB of scratch, then unmapped space, a read-only page and a
    /// PROT_NONE page.
    fn map_thread_slot(&mut self, t: u32) -> std::io::Result<()> {
        let slot = slot(t);
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        map_fixed(slot, SCRATCH_LEN, rw, MapFlags::empty())?;
        map_fixed(
            readonly_page(t),
            PAGE,
            ProtFlags::PROT_READ,
            MapFlags::empty(),
        )?;
        map_fixed(
            protnone_page(t),
            PAGE,
            ProtFlags::PROT_NONE,
            MapFlags::empty(),
        )
    }

    fn map_data(&mut self, image: &Path) -> std::io::Result<()> {
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let mut at = DATA_BASE;
        map_fixed(at, DATA_PAGES * PAGE, rw, MapFlags::empty())?;
        for p in 0..DATA_PAGES {
            if p % 3 != 0 {
                // SAFETY: the page was just mapped writable and nothing else uses it yet.
                unsafe { bytes_at(at + p * PAGE, PAGE) }.fill(p as u8);
            }
        }
        self.region(&mut at, DATA_PAGES, RegionKind::Anon);
        self.region(&mut at, 1, RegionKind::Hole);
        map_fixed(at, 4 * PAGE, rw, MapFlags::empty())?;
        // SAFETY: as above.
        unsafe { bytes_at(at, 4 * PAGE) }.fill(0x5a);
        set_prot(at, 4 * PAGE, ProtFlags::PROT_READ)?;
        self.region(&mut at, 4, RegionKind::ReadOnly);
        self.region(&mut at, 1, RegionKind::Hole);
        map_fixed(at, 4 * PAGE, ProtFlags::PROT_NONE, MapFlags::empty())?;
        self.region(&mut at, 4, RegionKind::ProtNone);
        self.region(&mut at, 1, RegionKind::Hole);
        let gone = memfd(c"fuzz-sigbus", 4 * PAGE, 0)?;
        map_file(at, 4 * PAGE, &gone, true)?;
        nix::unistd::ftruncate(&gone, 0)?;
        self.region(&mut at, 4, RegionKind::Sigbus);
        self.region(&mut at, 1, RegionKind::Hole);
        let file = std::fs::File::open(image)?;
        // Private file mappings must not ask for write access the fd lacks: map read-only.
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let got = unsafe {
            mmap(
                NonZeroUsize::new(at as usize),
                nz(16 * PAGE),
                ProtFlags::PROT_READ,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED_NOREPLACE,
                &file,
                0,
            )?
        };
        check_at(got, at)?;
        self.region(&mut at, 16, RegionKind::File);
        self.region(&mut at, 16, RegionKind::Hole);
        Ok(())
    }

    fn region(&mut self, at: &mut u64, pages: u64, kind: RegionKind) {
        self.regions.push(Region {
            start: *at,
            pages,
            kind,
        });
        *at += pages * PAGE;
    }

    /// The big shared area, with arrays at the limits written in if asked (a shared memfd:
    /// forks do not copy its page tables).
    fn map_big(&mut self) -> std::io::Result<()> {
        let fd = memfd(c"fuzz-big", BIG_LEN, 0)?;
        map_file(BIG_BASE, BIG_LEN, &fd, true)?;
        if !self.limit_arrays {
            return Ok(());
        }
        let run = CkptRestoreRun {
            addr: ARENA,
            len: PAGE,
            image_offset: 0,
        };
        fill_array(BIG_RUNS, ckpt_abi::CKPT_RESTORE_MAX_RUNS as u64, |_| run);
        fill_array(BIG_RANGES, ckpt_abi::CKPT_DUMP_MAX_RANGES as u64, |i| {
            CkptRange {
                start: DATA_BASE + 2 * i * PAGE,
                end: DATA_BASE + (2 * i + 1) * PAGE,
            }
        });
        fill_array(BIG_VMAS, ckpt_abi::CKPT_RESTORE_MAX_VMAS as u64, |i| {
            CkptRestoreVma {
                start: ARENA + 2 * i * PAGE,
                end: ARENA + (2 * i + 1) * PAGE,
                prot: 3,
                fd: -1,
                ..Default::default()
            }
        });
        Ok(())
    }
}

fn fill_array<T: Copy>(at: u64, n: u64, f: impl Fn(u64) -> T) {
    let p = at as *mut T;
    for i in 0..n {
        // SAFETY: the big area is mapped writable and sized for these arrays (BIG_* layout);
        // the ABI structs are 8-byte aligned, as are the offsets.
        unsafe { p.add(i as usize).write(f(i)) };
    }
}

pub fn slot(t: u32) -> u64 {
    SCRATCH_BASE + t as u64 * SLOT
}
pub fn scratch_end(t: u32) -> u64 {
    slot(t) + SCRATCH_LEN
}
/// Known to be unmapped (the gap after the scratch).
pub fn unmapped(t: u32) -> u64 {
    slot(t) + (3 << 20)
}
pub fn readonly_page(t: u32) -> u64 {
    slot(t) + (4 << 20)
}
pub fn protnone_page(t: u32) -> u64 {
    slot(t) + (4 << 20) + 2 * PAGE
}

/// Writes `bytes` into the thread's read-only page (made writable for a moment).
pub fn fill_readonly(t: u32, bytes: &[u8]) {
    let page = readonly_page(t);
    let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    if set_prot(page, PAGE, rw).is_ok() {
        let n = bytes.len().min(PAGE as usize);
        // SAFETY: the thread's own page, writable now.
        let dst = unsafe { bytes_at(page, PAGE) };
        dst[..n].copy_from_slice(&bytes[..n]);
        let _ = set_prot(page, PAGE, ProtFlags::PROT_READ);
    }
}

fn auxv_vdso() -> u64 {
    // SAFETY: getauxval only reads the auxiliary vector.
    unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) }
}
