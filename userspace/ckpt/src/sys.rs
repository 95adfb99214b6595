//! Thin, checked wrappers over the system calls ckpt needs (ptrace, /proc files, signals).
//! Every `unsafe` libc call of the user-space side lives here.

use std::ffi::CString;
use std::io;
use std::path::Path;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_int(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub const NT_X86_XSTATE: libc::c_int = 0x202;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct RseqConfiguration {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

fn ptrace(req: libc::c_uint, pid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: every request used here takes integers or pointers to buffers the callers own
    // and size correctly; the kernel validates the rest.
    check(unsafe { libc::ptrace(req, pid, addr, data) })
}

pub fn ptrace_seize(pid: i32, options: libc::c_int) -> io::Result<()> {
    ptrace(libc::PTRACE_SEIZE, pid, 0, options as usize).map(drop)
}

pub fn ptrace_interrupt(pid: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0).map(drop)
}

pub fn ptrace_detach(pid: i32, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_DETACH, pid, 0, sig as usize).map(drop)
}

pub fn ptrace_syscall(pid: i32, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SYSCALL, pid, 0, sig as usize).map(drop)
}

pub fn ptrace_cont(pid: i32, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_CONT, pid, 0, sig as usize).map(drop)
}

pub fn ptrace_setoptions(pid: i32, options: libc::c_int) -> io::Result<()> {
    ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options as usize).map(drop)
}

pub fn ptrace_traceme() -> io::Result<()> {
    ptrace(libc::PTRACE_TRACEME, 0, 0, 0).map(drop)
}

pub fn ptrace_geteventmsg(pid: i32) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    ptrace(
        libc::PTRACE_GETEVENTMSG,
        pid,
        0,
        &mut msg as *mut _ as usize,
    )?;
    Ok(msg as u64)
}

pub fn ptrace_getregs(pid: i32) -> io::Result<libc::user_regs_struct> {
    // SAFETY: plain integers; all-zero is a valid value.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs as *mut _ as usize)?;
    Ok(regs)
}

pub fn ptrace_setregs(pid: i32, regs: &libc::user_regs_struct) -> io::Result<()> {
    ptrace(libc::PTRACE_SETREGS, pid, 0, regs as *const _ as usize).map(drop)
}

/// PTRACE_GETREGSET NT_X86_XSTATE: the thread's FPU/SSE/AVX/... state in the portable XSAVE
/// layout.
pub fn ptrace_get_xstate(pid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace(
        libc::PTRACE_GETREGSET,
        pid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut _ as usize,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn ptrace_set_xstate(pid: i32, xstate: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: xstate.as_ptr() as *mut _,
        iov_len: xstate.len(),
    };
    ptrace(
        libc::PTRACE_SETREGSET,
        pid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut _ as usize,
    )
    .map(drop)
}

pub fn ptrace_get_sigmask(pid: i32) -> io::Result<u64> {
    let mut mask = 0u64;
    ptrace(
        libc::PTRACE_GETSIGMASK,
        pid,
        8,
        &mut mask as *mut _ as usize,
    )?;
    Ok(mask)
}

pub fn ptrace_set_sigmask(pid: i32, mask: u64) -> io::Result<()> {
    ptrace(libc::PTRACE_SETSIGMASK, pid, 8, &mask as *const _ as usize).map(drop)
}

pub fn ptrace_get_rseq(pid: i32) -> io::Result<RseqConfiguration> {
    let mut conf = RseqConfiguration::default();
    ptrace(
        PTRACE_GET_RSEQ_CONFIGURATION,
        pid,
        std::mem::size_of::<RseqConfiguration>(),
        &mut conf as *mut _ as usize,
    )?;
    Ok(conf)
}

/// `waitpid(pid, &status, flags)`; returns the raw status.
/// waitpid(pid, __WALL | WNOHANG): None while nothing happened.
pub fn waitpid_nohang(pid: i32) -> io::Result<Option<libc::c_int>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r > 0 {
            return Ok(Some(status));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

pub fn waitpid(pid: i32, flags: libc::c_int) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::kill(pid, sig) }).map(drop)
}

pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) }).map(drop)
}

/// `get_robust_list(pid)`: (head, len).
pub fn get_robust_list(pid: i32) -> io::Result<(u64, u64)> {
    let mut head = 0u64;
    let mut len = 0usize;
    // SAFETY: out-pointers to our own variables.
    check(unsafe { libc::syscall(libc::SYS_get_robust_list, pid, &mut head, &mut len) })?;
    Ok((head, len as u64))
}

pub fn set_robust_list(head: u64, len: u64) -> io::Result<()> {
    // SAFETY: the kernel only stores the pointer.
    check(unsafe { libc::syscall(libc::SYS_set_robust_list, head, len) }).map(drop)
}

pub fn set_tid_address(addr: u64) {
    // SAFETY: the kernel only stores the pointer; the call cannot fail.
    unsafe { libc::syscall(libc::SYS_set_tid_address, addr) };
}

/// The kernel's `struct sigaction` for rt_sigaction(2).
#[repr(C)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

pub fn rt_sigaction(sig: u32, act: &KernelSigaction) -> io::Result<()> {
    // SAFETY: `act` is a valid kernel sigaction; the handler address is only stored.
    check(unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            act as *const KernelSigaction,
            0usize,
            8usize,
        )
    })
    .map(drop)
}

pub fn sigaltstack(sp: u64, size: u64, flags: u32) -> io::Result<()> {
    let ss = libc::stack_t {
        ss_sp: sp as *mut _,
        ss_flags: flags as i32,
        ss_size: size as usize,
    };
    // SAFETY: `ss` is valid; the kernel only stores it.
    check_int(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }).map(drop)
}

pub fn block_all_signals() -> io::Result<()> {
    // SAFETY: a full set built by sigfillset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        check_int(libc::sigprocmask(
            libc::SIG_SETMASK,
            &set,
            std::ptr::null_mut(),
        ))
        .map(drop)
    }
}

pub fn prlimit_get(pid: i32, resource: u32) -> io::Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is a valid out-pointer.
    check_int(unsafe { libc::prlimit64(pid, resource as _, std::ptr::null(), &mut old) })?;
    Ok((old.rlim_cur, old.rlim_max))
}

pub fn setrlimit(resource: u32, cur: u64, max: u64) -> io::Result<()> {
    let new = libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: `new` is valid.
    check_int(unsafe { libc::prlimit64(0, resource as _, &new, std::ptr::null_mut()) }).map(drop)
}

pub fn personality(p: u32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::personality(p as libc::c_ulong) }).map(drop)
}

pub fn umask(mask: u32) {
    // SAFETY: plain syscall.
    unsafe { libc::umask(mask as libc::mode_t) };
}

pub fn open(path: &Path, flags: i32) -> io::Result<i32> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: valid C string.
    check_int(unsafe { libc::open(c.as_ptr(), flags, 0) })
}

pub fn dup_at_least(fd: i32, min: i32) -> io::Result<i32> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::fcntl(fd, libc::F_DUPFD, min) })
}

/// The kernel's internal "restart this system call" results (ERESTARTSYS, ERESTARTNOINTR,
/// ERESTARTNOHAND, ERESTART_RESTARTBLOCK), as a stopped thread's rax shows them.
pub const RESTART_CODES: [i64; 4] = [-512, -513, -514, -516];

/// Moves fd `from` to number `to` (nothing to do if it is there already).
pub fn move_fd(from: i32, to: i32) -> io::Result<()> {
    if from != to {
        dup2(from, to)?;
        close(from);
    }
    Ok(())
}

pub fn dup2(from: i32, to: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check_int(unsafe { libc::dup2(from, to) }).map(drop)
}

pub fn close(fd: i32) {
    // SAFETY: plain syscall; closing an fd we own.
    unsafe { libc::close(fd) };
}

pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) }).map(drop)
}

pub fn lseek(fd: i32, pos: u64) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::lseek(fd, pos as i64, libc::SEEK_SET) }).map(drop)
}

pub fn chdir(path: &Path) -> io::Result<()> {
    std::env::set_current_dir(path)
}

pub fn mremap_fixed(old: u64, len: u64, new: u64) -> io::Result<()> {
    // SAFETY: moves a mapping of ours; the caller checked nothing else of ours is at `new`.
    let r = unsafe {
        libc::mremap(
            old as *mut _,
            len as usize,
            len as usize,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            new as *mut libc::c_void,
        )
    };
    if r == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reserves `len` bytes of address space nowhere in particular (PROT_NONE).
pub fn reserve(len: u64) -> io::Result<u64> {
    // SAFETY: a fresh anonymous mapping.
    let r = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if r == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u64)
}

const RSEQ_FLAG_UNREGISTER: i32 = 1;

pub fn rseq(addr: u64, len: u32, flags: i32, sig: u32) -> io::Result<()> {
    // SAFETY: registers/unregisters an rseq area; the kernel validates it.
    check(unsafe { libc::syscall(libc::SYS_rseq, addr, len, flags, sig) }).map(drop)
}

extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// Removes glibc's rseq registration of the calling (single) thread, so that the kernel stops
/// writing to an area that a restore is about to replace. Returns whether one was removed.
pub fn unregister_own_rseq() -> io::Result<bool> {
    // SAFETY: glibc's exported, read-only rseq ABI variables.
    let (offset, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return Ok(false);
    }
    let mut tp = 0u64;
    // SAFETY: ARCH_GET_FS stores the fs base in `tp`.
    check(unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut tp) })?;
    let area = (tp as i64 + offset as i64) as u64;
    const RSEQ_SIG: u32 = 0x5305_3053;
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for len in [size.max(32), 32, size] {
        match rseq(area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) {
            Ok(()) => return Ok(true),
            Err(e) => last = e,
        }
    }
    Err(last)
}

pub fn getpid() -> i32 {
    // SAFETY: plain syscall.
    unsafe { libc::getpid() }
}

/// clone3 with `set_tid = [pid]` (the restored process gets its old pid), or a plain fork when
/// `pid` is None. Returns 0 in the child.
pub fn fork_with_pid(pid: Option<i32>) -> io::Result<i32> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let tid = pid.unwrap_or(0);
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid.is_some() {
            &tid as *const i32 as u64
        } else {
            0
        },
        set_tid_size: u64::from(pid.is_some()),
        ..Default::default()
    };
    // SAFETY: like fork(): no CLONE_VM, so the child gets a copy of our memory and returns
    // here with 0. ckpt is single-threaded when it restores, so the child may do anything.
    check(unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    })
    .map(|r| r as i32)
}

pub fn exit_now(code: i32) -> ! {
    // SAFETY: ends the process without running destructors (a forked child).
    unsafe { libc::_exit(code) }
}

/// An ioctl whose argument is one `T`. The kernel validates any user pointers inside it.
pub fn ioctl_with<T>(fd: i32, cmd: u32, arg: &mut T) -> io::Result<i32> {
    // SAFETY: `arg` is a valid, exclusively borrowed `T` for the duration of the call.
    check_int(unsafe { libc::ioctl(fd, cmd as _, arg as *mut T) })
}

pub fn getppid() -> i32 {
    // SAFETY: plain syscall.
    unsafe { libc::getppid() }
}

/// A dup of fd `fd` of process `pid` (pidfd_open + pidfd_getfd; needs ptrace permission).
pub fn steal_fd(pid: i32, fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscalls; the returned fds are new and ours.
    unsafe {
        let pidfd = check(libc::syscall(libc::SYS_pidfd_open, pid, 0))? as i32;
        let pidfd = std::os::fd::OwnedFd::from_raw_fd(pidfd);
        let r = check(libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        ))?;
        Ok(std::os::fd::OwnedFd::from_raw_fd(r as i32))
    }
}

pub fn pipe() -> io::Result<(i32, i32)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two fds.
    check_int(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
    Ok((fds[0], fds[1]))
}

pub fn pipe_size(fd: i32) -> io::Result<u32> {
    // SAFETY: plain fcntl.
    check_int(unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) }).map(|n| n as u32)
}

pub fn set_pipe_size(fd: i32, size: u32) -> io::Result<()> {
    // SAFETY: plain fcntl.
    check_int(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size as i32) }).map(drop)
}

/// The bytes in the pipe whose read end is `read_fd`, without consuming them (tee(2)).
pub fn peek_pipe(read_fd: i32) -> io::Result<Vec<u8>> {
    let cap = pipe_size(read_fd)?;
    let (r, w) = pipe()?;
    let result = (|| {
        set_pipe_size(w, cap)?;
        // SAFETY: plain syscall between pipes we hold.
        let n = unsafe { libc::tee(read_fd, w, cap as usize, libc::SPLICE_F_NONBLOCK) };
        let n = if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                0
            } else {
                return Err(e);
            }
        } else {
            n as usize
        };
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            // SAFETY: reading into our buffer.
            let k = unsafe { libc::read(r, buf[got..].as_mut_ptr().cast(), n - got) };
            if k <= 0 {
                return Err(io::Error::last_os_error());
            }
            got += k as usize;
        }
        Ok(buf)
    })();
    close(r);
    close(w);
    result
}

pub fn write_all_fd(fd: i32, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: writing from our buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        data = &data[n as usize..];
    }
    Ok(())
}

pub fn set_fl(fd: i32, flags: i32) -> io::Result<()> {
    // SAFETY: plain fcntl.
    check_int(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

/// An unnamed file: O_TMPFILE in `dir`, or a memfd where that is impossible.
pub fn anonymous_file(dir: &Path, mode: u32) -> io::Result<i32> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: valid C strings.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, mode & 0o7777);
        if fd >= 0 {
            return Ok(fd);
        }
        check_int(libc::memfd_create(c"ckpt-deleted".as_ptr(), 0))
    }
}

/// While alive, the calling thread opens, creates and binds files as `uid`/`gid` with
/// `groups` (its filesystem ids and supplementary groups; it keeps its other privileges, and
/// they come back on drop). Raw system calls: per thread, unlike glibc's setgroups.
pub struct AsFsUser {
    old_groups: Vec<libc::gid_t>,
    old_fsuid: u32,
    old_fsgid: u32,
}

pub fn as_fs_user(uid: u32, gid: u32, groups: &[u32]) -> io::Result<AsFsUser> {
    // SAFETY: getgroups with a null list returns the count; then fills a list of that size.
    let old_groups = unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        let mut v = vec![0 as libc::gid_t; n.max(0) as usize];
        let n = libc::getgroups(n, v.as_mut_ptr());
        v.truncate(n.max(0) as usize);
        v
    };
    // SAFETY: setfs*id(-1) only reports the current value.
    let (old_fsuid, old_fsgid) = unsafe {
        (
            libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
            libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
        )
    };
    let guard = AsFsUser {
        old_groups,
        old_fsuid,
        old_fsgid,
    };
    // SAFETY: per-thread credential calls with a list of the stated length.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        // setfs*id report the old value, not errors: check the new one took.
        if libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32 != uid
            || libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32 != gid
        {
            drop(guard);
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    Ok(guard)
}

impl Drop for AsFsUser {
    fn drop(&mut self) {
        // SAFETY: as above; back to the previous filesystem ids and groups.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, self.old_fsuid);
            libc::syscall(libc::SYS_setfsgid, self.old_fsgid);
            libc::syscall(
                libc::SYS_setgroups,
                self.old_groups.len(),
                self.old_groups.as_ptr(),
            );
        }
    }
}

/// A new epoll instance watching `watches` (fds of this process). Returns its fd.
pub fn epoll_with(watches: &[crate::image::EpollWatch]) -> io::Result<i32> {
    // SAFETY: epoll_create1 makes a new fd; epoll_ctl reads one epoll_event per call.
    unsafe {
        let ep = libc::epoll_create1(0);
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        for w in watches {
            let mut ev = libc::epoll_event {
                events: w.events,
                u64: w.data,
            };
            if libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, w.fd, &mut ev) != 0 {
                let e = io::Error::last_os_error();
                libc::close(ep);
                return Err(e);
            }
        }
        Ok(ep)
    }
}

/// A new eventfd holding `count` (any 64-bit value: written after creation).
pub fn eventfd_with(count: u64, semaphore: bool) -> io::Result<i32> {
    // SAFETY: eventfd makes a new fd; the write reads 8 bytes from `count`.
    unsafe {
        let fd = libc::eventfd(0, if semaphore { libc::EFD_SEMAPHORE } else { 0 });
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        if count > 0 && libc::write(fd, (&count as *const u64).cast(), 8) != 8 {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}

/// A new signalfd for the signals in `mask` (bit n-1 for signal n).
pub fn signalfd_with(mask: u64) -> io::Result<i32> {
    // SAFETY: sigset_t is plain data; signalfd reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in 1..=64 {
            if mask & (1u64 << (sig - 1)) != 0 {
                libc::sigaddset(&mut set, sig);
            }
        }
        let fd = libc::signalfd(-1, &set, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

pub fn set_cloexec(fd: i32, on: bool) -> io::Result<()> {
    // SAFETY: F_SETFD on an fd number.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new timerfd on `clockid` that fires in `value_ns` (0: disarmed) and then every
/// `interval_ns`. Unread expirations cannot be set back as a count: if there were any, it
/// fires at once (one expiration to read) and goes on from there.
pub fn timerfd_with(clockid: i32, value_ns: u64, interval_ns: u64, ticks: u64) -> io::Result<i32> {
    let ts = |ns: u64| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    let first = if ticks > 0 { 1 } else { value_ns };
    let spec = libc::itimerspec {
        it_interval: ts(interval_ns),
        it_value: ts(first),
    };
    // SAFETY: timerfd_create makes a new fd; timerfd_settime reads `spec`.
    unsafe {
        let fd = libc::timerfd_create(clockid, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) != 0 {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(fd)
    }
}
