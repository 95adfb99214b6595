//! System calls without libc.
//!
//! The interposed functions must not call the libc functions they replace, and the hot ones
//! (getpid, gettid) must cost no more than libc's own inline syscall. The control thread
//! (`ctl_thread/`) is not a glibc thread at all: it has no thread descriptor of glibc's, so
//! it must not touch errno or anything else thread-local. Everything here returns the kernel's
//! result (-errno on failure) and touches no thread-local state.

use core::arch::asm;

/// A system call that takes no arguments and cannot fail (getpid, gettid, getppid).
#[inline(always)]
pub fn syscall0(nr: i64) -> i64 {
    let ret: i64;
    // SAFETY: the argument-less id syscalls touch no memory; rcx and r11 are clobbered by
    // the `syscall` instruction and declared so.
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, lateout("rcx") _, lateout("r11") _,
             options(nostack, preserves_flags));
    }
    ret
}

/// A system call with up to six arguments.
///
/// # Safety
/// The arguments must be valid for system call `nr` (pointers to memory the kernel may read
/// or write as that call does).
#[inline(always)]
pub unsafe fn syscall6(nr: i64, a: [u64; 6]) -> i64 {
    let ret: i64;
    asm!("syscall", inlateout("rax") nr => ret,
         in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3], in("r8") a[4],
         in("r9") a[5], lateout("rcx") _, lateout("r11") _, options(nostack));
    ret
}

pub fn getpid() -> i32 {
    syscall0(libc::SYS_getpid) as i32
}

pub fn gettid() -> i32 {
    syscall0(libc::SYS_gettid) as i32
}

pub fn getppid() -> i32 {
    syscall0(libc::SYS_getppid) as i32
}

pub fn geteuid() -> u32 {
    syscall0(libc::SYS_geteuid) as u32
}

macro_rules! sys {
    ($nr:expr $(, $a:expr)*) => {{
        let mut args = [0u64; 6];
        let vals: &[u64] = &[$($a as u64),*];
        args[..vals.len()].copy_from_slice(vals);
        // SAFETY: callers pass valid arguments for the call (see each wrapper).
        unsafe { syscall6($nr, args) }
    }};
}

/// The wrappers below take only integers and pointers to live buffers of the stated length.
pub fn close(fd: i32) -> i64 {
    sys!(libc::SYS_close, fd)
}
pub fn read(fd: i32, buf: &mut [u8]) -> i64 {
    sys!(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len())
}
pub fn send(fd: i32, buf: &[u8]) -> i64 {
    sys!(
        libc::SYS_sendto,
        fd,
        buf.as_ptr(),
        buf.len(),
        libc::MSG_NOSIGNAL,
        0,
        0
    )
}
pub fn fcntl(fd: i32, cmd: i32, arg: i64) -> i64 {
    sys!(libc::SYS_fcntl, fd, cmd, arg)
}
pub fn fstat(fd: i32, st: &mut libc::stat) -> i64 {
    sys!(libc::SYS_fstat, fd, st as *mut libc::stat)
}
pub fn fdatasync(fd: i32) -> i64 {
    sys!(libc::SYS_fdatasync, fd)
}
/// `path` must be NUL-terminated.
pub fn open(path: &[u8], flags: i32, mode: u32) -> i64 {
    debug_assert!(path.last() == Some(&0));
    sys!(libc::SYS_open, path.as_ptr(), flags, mode)
}
/// `path` must be NUL-terminated.
pub fn mkdir(path: &[u8], mode: u32) -> i64 {
    sys!(libc::SYS_mkdir, path.as_ptr(), mode)
}
/// `path` must be NUL-terminated.
pub fn unlink(path: &[u8]) -> i64 {
    sys!(libc::SYS_unlink, path.as_ptr())
}
pub fn write(fd: i32, buf: &[u8]) -> i64 {
    sys!(libc::SYS_write, fd, buf.as_ptr(), buf.len())
}
pub fn getdents64(fd: i32, buf: &mut [u8]) -> i64 {
    sys!(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len())
}
pub fn socket(domain: i32, ty: i32) -> i64 {
    sys!(libc::SYS_socket, domain, ty, 0)
}
pub fn bind_unix(fd: i32, addr: &libc::sockaddr_un) -> i64 {
    sys!(
        libc::SYS_bind,
        fd,
        addr as *const libc::sockaddr_un,
        core::mem::size_of::<libc::sockaddr_un>()
    )
}
pub fn connect_unix(fd: i32, addr: &libc::sockaddr_un) -> i64 {
    sys!(
        libc::SYS_connect,
        fd,
        addr as *const libc::sockaddr_un,
        core::mem::size_of::<libc::sockaddr_un>()
    )
}
pub fn listen(fd: i32, backlog: i32) -> i64 {
    sys!(libc::SYS_listen, fd, backlog)
}
pub fn accept4(fd: i32, flags: i32) -> i64 {
    sys!(libc::SYS_accept4, fd, 0, 0, flags)
}
pub fn peer_cred(fd: i32) -> Option<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as u32;
    let r = sys!(
        libc::SYS_getsockopt,
        fd,
        libc::SOL_SOCKET,
        libc::SO_PEERCRED,
        &mut cred as *mut libc::ucred,
        &mut len as *mut u32
    );
    (r == 0).then_some(cred)
}
pub fn set_rcv_timeout(fd: i32, secs: i64) -> i64 {
    let tv = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    sys!(
        libc::SYS_setsockopt,
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        &tv as *const libc::timeval,
        core::mem::size_of::<libc::timeval>()
    )
}
pub fn nanosleep_ms(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: ((ms % 1000) * 1_000_000) as i64,
    };
    sys!(libc::SYS_nanosleep, &ts as *const libc::timespec, 0);
}
/// FUTEX_WAIT_PRIVATE on `word` while it holds `val`, for at most `ms` (0: forever).
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, val: u32, ms: u64) -> i64 {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: ((ms % 1000) * 1_000_000) as i64,
    };
    let tsp = if ms == 0 {
        core::ptr::null()
    } else {
        &ts as *const libc::timespec
    };
    sys!(
        libc::SYS_futex,
        word.as_ptr(),
        libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
        val,
        tsp
    )
}
pub fn futex_wake(word: &core::sync::atomic::AtomicU32) -> i64 {
    sys!(
        libc::SYS_futex,
        word.as_ptr(),
        libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
        i32::MAX
    )
}
/// Ends the calling thread only.
pub fn exit_thread(code: i32) -> ! {
    loop {
        sys!(libc::SYS_exit, code);
    }
}

/// A fixed-capacity byte buffer for building paths and protocol lines without allocating.
pub struct Buf<const N: usize> {
    pub bytes: [u8; N],
    pub len: usize,
}

impl<const N: usize> Buf<N> {
    pub const fn new() -> Self {
        Buf {
            bytes: [0; N],
            len: 0,
        }
    }
    pub fn push(&mut self, s: &[u8]) -> &mut Self {
        let n = s.len().min(N - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }
    pub fn num(&mut self, v: i64) -> &mut Self {
        if v < 0 {
            self.push(b"-");
        }
        let mut u = v.unsigned_abs();
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (u % 10) as u8;
            u /= 10;
            if u == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }
    pub fn hex(&mut self, v: u64) -> &mut Self {
        self.push(b"0x");
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        let mut u = v;
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(u & 15) as usize];
            u >>= 4;
            if u == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
    /// Whether the contents fit (nothing was cut off).
    pub fn fits(&self) -> bool {
        self.len < N
    }
    /// The contents with a NUL after them (cut to fit).
    pub fn c_str(&mut self) -> &[u8] {
        if self.len >= N {
            self.len = N - 1;
        }
        self.bytes[self.len] = 0;
        &self.bytes[..=self.len]
    }
}

impl<const N: usize> core::ops::Deref for Buf<N> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// PR_SET_NAME for the calling thread; `name` NUL-terminated.
pub fn prctl_set_name(name: &[u8]) {
    sys!(libc::SYS_prctl, libc::PR_SET_NAME, name.as_ptr());
}

/// PR_SET_PTRACER: `tracer` (0: nobody) may ptrace this process as if it were an ancestor,
/// under Yama's ptrace_scope 1. Declared for the whole process (Yama keys it on the thread
/// group leader). EINVAL without Yama.
pub fn prctl_set_ptracer(tracer: i32) -> i64 {
    sys!(
        libc::SYS_prctl,
        libc::PR_SET_PTRACER,
        tracer as libc::c_ulong,
        0,
        0,
        0
    )
}

/// Closes every fd of the calling thread's table.
pub fn close_range_all() {
    sys!(libc::SYS_close_range, 0, u32::MAX, 0);
}
pub fn pidfd_open(pid: i32) -> i64 {
    sys!(libc::SYS_pidfd_open, pid, 0)
}
pub fn pidfd_getfd(pidfd: i32, target: i32) -> i64 {
    sys!(libc::SYS_pidfd_getfd, pidfd, target, 0)
}

pub fn umask(mask: u32) {
    sys!(libc::SYS_umask, mask);
}

/// `path` must be NUL-terminated.
pub fn chown(path: &[u8], uid: u32, gid: u32) -> i64 {
    sys!(libc::SYS_chown, path.as_ptr(), uid, gid)
}
