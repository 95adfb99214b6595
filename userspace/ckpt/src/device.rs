//! The `/dev/ckpt` device: opening it, checking the module's ABI, and its ioctls.

use ckpt_abi::{
    CkptDumpPages, CkptItimers, CkptQuery, CkptRange, CkptRestoreRun, CkptTaskState,
    CkptVersionInfo, CKPT_ABI_VERSION, CKPT_DUMP_NO_HASH, CKPT_DUMP_SKIP_ZERO, CKPT_IOC_DUMP_PAGES,
    CKPT_IOC_DUMP_TASK, CKPT_IOC_ITIMERS, CKPT_IOC_QUERY, CKPT_IOC_VERSION, CKPT_QUERY_MAX_READ,
};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

/// Where the module registers its device.
pub const DEFAULT_DEVICE: &str = "/dev/ckpt";

/// What the user must do to get a working `/dev/ckpt`; part of every "not loaded" error.
pub const MODULE_HINT: &str = "load the ckpt kernel module first: `insmod ckpt.ko` (built by \
`make kmod`), on a Linux 7.2 kernel built with CONFIG_RUST by tools/kernel.sh (or run the \
command inside the test guest: tools/guest.sh)";

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path} does not exist: the ckpt module is not loaded; {MODULE_HINT}")]
    NotLoaded { path: PathBuf },
    #[error(
        "permission denied opening {path}: the ckpt module admits root only, or with its \
         group=GID parameter root and the members of that group"
    )]
    NoPermission { path: PathBuf },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a ckpt device (the ABI version ioctl failed: {source})")]
    NotCkpt { path: PathBuf, source: io::Error },
    #[error(
        "the loaded ckpt module speaks ABI version {module} but this ckpt speaks version \
         {ours}: rebuild and reload the module from the same checkout (`make kmod`)"
    )]
    AbiVersion { module: u32, ours: u32 },
    #[error(
        "the loaded ckpt module and this ckpt disagree on struct sizes (module: {module:?}, \
         ours: {ours:?}) although both say ABI version {CKPT_ABI_VERSION}"
    )]
    AbiLayout {
        module: CkptVersionInfo,
        ours: CkptVersionInfo,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no such process: {pid}")]
    NoSuchProcess { pid: i32 },
    #[error(
        "not permitted to inspect process {pid}: the module reads only a process its caller \
         traces, that runs as the caller's user and is dumpable (or with CAP_SYS_PTRACE)"
    )]
    NotPermitted { pid: i32 },
    #[error("cannot attach to process {pid}: {why}")]
    NotTraceable { pid: i32, why: String },
    #[error("process {pid} cannot be inspected: it is a kernel thread (or the pid is invalid)")]
    Invalid { pid: i32 },
    #[error("nothing readable at {addr:#x} in process {pid}")]
    Unreadable { pid: i32, addr: u64 },
    #[error("a read is limited to {CKPT_QUERY_MAX_READ} bytes, {len} were asked for")]
    TooLong { len: usize },
    #[error("query of process {pid} failed: {source}")]
    Other { pid: i32, source: io::Error },
}

/// What `CKPT_IOC_DUMP_PAGES` did.
#[derive(Debug)]
pub struct DumpedPages {
    pub runs: Vec<CkptRestoreRun>,
    pub bytes_written: u64,
    pub pages_zero: u64,
    /// The XXH64 of the bytes written (the module computed it while copying), unless it was
    /// asked not to.
    pub xxh64: Option<u64>,
}

/// How `Device::dump_pages` treats the pages it copies.
#[derive(Clone, Copy, Debug)]
pub struct DumpHow {
    /// All-zero pages are left out (anonymous memory).
    pub skip_zero: bool,
    /// The module checksums what it writes (else the caller does).
    pub checksum: bool,
}

/// An open, ABI-checked `/dev/ckpt`.
#[derive(Debug)]
pub struct Device {
    file: File,
}

/// What `CKPT_IOC_QUERY` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueryResult {
    pub threads: u32,
    pub vmas: u32,
    pub mapped_bytes: u64,
    /// How many bytes of the requested read arrived in the caller's buffer.
    pub bytes_read: usize,
}

/// This build's view of the ABI, as `CKPT_IOC_VERSION` would report it.
pub fn our_version_info() -> CkptVersionInfo {
    ckpt_abi::ckpt_version_info()
}

impl Device {
    /// Opens the device and refuses a module of another ABI version or layout.
    pub fn open(path: &Path) -> Result<Self, DeviceError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => DeviceError::NotLoaded { path: path.into() },
                io::ErrorKind::PermissionDenied => DeviceError::NoPermission { path: path.into() },
                _ => DeviceError::Open {
                    path: path.into(),
                    source,
                },
            })?;
        let dev = Self { file };
        let module = dev.version().map_err(|source| DeviceError::NotCkpt {
            path: path.into(),
            source,
        })?;
        let ours = our_version_info();
        if module.abi_version != ours.abi_version {
            return Err(DeviceError::AbiVersion {
                module: module.abi_version,
                ours: ours.abi_version,
            });
        }
        if module != ours {
            return Err(DeviceError::AbiLayout { module, ours });
        }
        Ok(dev)
    }

    /// `CKPT_IOC_VERSION`.
    pub fn version(&self) -> io::Result<CkptVersionInfo> {
        let mut info = CkptVersionInfo::default();
        // SAFETY: CKPT_IOC_VERSION writes exactly one CkptVersionInfo to the pointer.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), CKPT_IOC_VERSION as _, &mut info) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info)
    }

    /// `CKPT_IOC_QUERY` on `pid`, reading `buf.len()` bytes at `addr` of its memory into `buf`.
    pub fn query(&self, pid: i32, addr: u64, buf: &mut [u8]) -> Result<QueryResult, QueryError> {
        if buf.len() as u64 > CKPT_QUERY_MAX_READ {
            return Err(QueryError::TooLong { len: buf.len() });
        }
        let mut q = CkptQuery {
            pid,
            read_addr: addr,
            read_len: buf.len() as u64,
            read_buf: buf.as_mut_ptr() as u64,
            ..Default::default()
        };
        self.raw_query(&mut q).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => QueryError::NoSuchProcess { pid },
            Some(libc::EPERM) => QueryError::NotPermitted { pid },
            Some(libc::EINVAL) => QueryError::Invalid { pid },
            Some(libc::EIO) if !buf.is_empty() => QueryError::Unreadable { pid, addr },
            _ => QueryError::Other { pid, source: e },
        })?;
        Ok(QueryResult {
            threads: q.thread_count,
            vmas: q.vma_count,
            mapped_bytes: q.mapped_bytes,
            bytes_read: q.bytes_read.min(buf.len() as u64) as usize,
        })
    }

    /// `CKPT_IOC_DUMP_TASK` on `pid`.
    pub fn dump_task(&self, pid: i32) -> Result<Box<CkptTaskState>, QueryError> {
        let mut st = Box::new(CkptTaskState {
            pid,
            ..Default::default()
        });
        // SAFETY: CKPT_IOC_DUMP_TASK reads and writes one CkptTaskState.
        unsafe { self.pid_ioctl(pid, CKPT_IOC_DUMP_TASK, &mut *st) }?;
        Ok(st)
    }

    /// `CKPT_IOC_ITIMERS`: the `CKPT_ITIMER_*` bits of the itimers `pid`'s process has armed.
    pub fn itimers_armed(&self, pid: i32) -> Result<u32, QueryError> {
        let mut req = CkptItimers {
            pid,
            ..Default::default()
        };
        // SAFETY: CKPT_IOC_ITIMERS reads and writes one CkptItimers.
        unsafe { self.pid_ioctl(pid, CKPT_IOC_ITIMERS, &mut req) }?;
        Ok(req.armed)
    }

    /// ioctl `cmd` with `arg`, a request naming `pid`; its error in words.
    ///
    /// # Safety
    ///
    /// `cmd` must be an ioctl of the module that reads and writes one `T`.
    unsafe fn pid_ioctl<T>(&self, pid: i32, cmd: u32, arg: &mut T) -> Result<(), QueryError> {
        // SAFETY: the module reads and writes one `T` at the pointer (the caller's promise),
        // which is valid and writable for the call.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), cmd as _, arg as *mut T) };
        if ret < 0 {
            return Err(query_error(pid, io::Error::last_os_error()));
        }
        Ok(())
    }

    /// `CKPT_IOC_DUMP_PAGES`: copies the pages of `pid` in `ranges` into `image` at `offset`.
    pub fn dump_pages(
        &self,
        pid: i32,
        image: &File,
        ranges: &[CkptRange],
        offset: u64,
        how: DumpHow,
    ) -> io::Result<DumpedPages> {
        let pages: u64 = ranges.iter().map(|r| (r.end - r.start) / 4096).sum();
        let mut runs = vec![CkptRestoreRun::default(); pages as usize];
        let too_many = || io::Error::from_raw_os_error(libc::E2BIG);
        let mut req = CkptDumpPages {
            pid,
            image_fd: image.as_raw_fd(),
            flags: (if how.skip_zero {
                CKPT_DUMP_SKIP_ZERO
            } else {
                0
            }) | (if how.checksum { 0 } else { CKPT_DUMP_NO_HASH }),
            range_count: u32::try_from(ranges.len()).map_err(|_| too_many())?,
            ranges: ranges.as_ptr() as u64,
            file_offset: offset,
            runs: runs.as_mut_ptr() as u64,
            max_runs: u32::try_from(runs.len()).map_err(|_| too_many())?,
            ..Default::default()
        };
        // SAFETY: the kernel reads `ranges`, writes at most `max_runs` runs to `runs`, and
        // reads/writes one CkptDumpPages at `req`.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                CKPT_IOC_DUMP_PAGES as _,
                &mut req as *mut CkptDumpPages,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        runs.truncate(req.run_count as usize);
        Ok(DumpedPages {
            runs,
            bytes_written: req.bytes_written,
            pages_zero: req.pages_zero,
            xxh64: how.checksum.then_some(req.xxh64),
        })
    }

    /// The bare ioctl, for tests that need to send malformed arguments.
    ///
    /// `q.read_buf` is written by the kernel; the caller must make it point to `q.read_len`
    /// writable bytes (or deliberately not, to test that the module rejects it).
    pub fn raw_query(&self, q: &mut CkptQuery) -> io::Result<()> {
        // SAFETY: the kernel reads and writes one CkptQuery at `q`; it writes at most
        // `read_len` bytes to `read_buf` and validates that pointer itself.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), CKPT_IOC_QUERY as _, q as *mut _) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A raw ioctl with any command and argument, for tests of the module's argument checks.
    pub fn raw_ioctl(&self, cmd: u32, arg: usize) -> io::Result<i32> {
        // SAFETY: the module validates `cmd` and treats `arg` as an untrusted user pointer; a
        // bad one makes the ioctl fail with EFAULT, never touches our memory beyond what `cmd`
        // says.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), cmd as _, arg) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret)
    }
}

impl AsFd for Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Device {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The error of an ioctl naming `pid`, in words.
fn query_error(pid: i32, e: io::Error) -> QueryError {
    match e.raw_os_error() {
        Some(libc::ESRCH) => QueryError::NoSuchProcess { pid },
        Some(libc::EPERM) => QueryError::NotPermitted { pid },
        Some(libc::EINVAL) => QueryError::Invalid { pid },
        _ => QueryError::Other { pid, source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_says_how_to_load_the_module() {
        let err = Device::open(Path::new("/nonexistent/ckpt")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DeviceError::NotLoaded { .. }), "{err:?}");
        assert!(
            msg.contains("insmod ckpt.ko") && msg.contains("7.2"),
            "{msg}"
        );
    }

    #[test]
    fn a_file_that_is_not_the_device_is_refused() {
        let err = Device::open(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, DeviceError::NotCkpt { .. }), "{err:?}");
    }
}
