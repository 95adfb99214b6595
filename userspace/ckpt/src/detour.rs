//! The way back for a lent thread whose tracer is gone.
//!
//! At checkpoint, ckpt lends a frozen thread of the live program (`inject::Borrowed`) to
//! make calls only the program can make (clone3 for a snapshot, its timers). While lent, the
//! thread holds the call's registers. Were ckpt's worker killed outright then (SIGKILL, the
//! OOM killer), the kernel would let the thread go as it is: on from the `syscall`
//! instruction ckpt pointed it at, every register wrong. So the calls go through a page of
//! code mapped into the program for the time of the lending ([`CODE`]): the `syscall`
//! instruction, then the way back, which a thread reaches only when no tracer took it at
//! the call's exit: it restores the registers of the thread's interrupt stop (with an
//! interrupted system call rewound to be made again, [`way_back`]) and jumps to where the
//! thread was. A new process a lent clone3 made (a snapshot, if ckpt died before taking
//! it) is not the thread (another tid) and exits there instead of running the program's
//! code. The FPU state needs nothing: the calls do not touch it.
//!
//! The page is mapped and unmapped by calls through a `syscall` instruction of the
//! program's own (`Injector`'s); for those two calls, and for the whole lending where the
//! page cannot be mapped (a policy against executable memory), the thread is traced with
//! PTRACE_O_EXITKILL: the program dies with ckpt rather than run on with wrong registers.
//! A page the way back was taken through stays mapped (4 KiB).

use crate::inject::Injector;
use crate::sys;
use std::io;

/// `syscall`; the way back: `gettid` compared with the block's tid (another: `exit_group`);
/// `rflags` then the general registers from the block, `rsp`, and a jump to the block's
/// `rip`. The block ([`block`]) is at [`BLOCK`], addressed relative to the code.
const CODE: [u8; 155] = [
    0x0f, 0x05, 0xb8, 0xba, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x3b, 0x05, 0x40, 0x01, 0x00, 0x00,
    0x75, 0x7e, 0x48, 0x8d, 0x25, 0x1f, 0x01, 0x00, 0x00, 0x9d, 0x48, 0x8b, 0x1d, 0xa7, 0x00, 0x00,
    0x00, 0x48, 0x8b, 0x0d, 0xa8, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x15, 0xa9, 0x00, 0x00, 0x00, 0x48,
    0x8b, 0x35, 0xaa, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x3d, 0xab, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x2d,
    0xac, 0x00, 0x00, 0x00, 0x4c, 0x8b, 0x05, 0xad, 0x00, 0x00, 0x00, 0x4c, 0x8b, 0x0d, 0xae, 0x00,
    0x00, 0x00, 0x4c, 0x8b, 0x15, 0xaf, 0x00, 0x00, 0x00, 0x4c, 0x8b, 0x1d, 0xb0, 0x00, 0x00, 0x00,
    0x4c, 0x8b, 0x25, 0xb1, 0x00, 0x00, 0x00, 0x4c, 0x8b, 0x2d, 0xb2, 0x00, 0x00, 0x00, 0x4c, 0x8b,
    0x35, 0xb3, 0x00, 0x00, 0x00, 0x4c, 0x8b, 0x3d, 0xb4, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x25, 0xbd,
    0x00, 0x00, 0x00, 0x48, 0x8b, 0x05, 0x36, 0x00, 0x00, 0x00, 0xff, 0x25, 0xb8, 0x00, 0x00, 0x00,
    0xb8, 0xe7, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05, 0x0f, 0x0b,
];

/// The block's offset in the page: rax rbx rcx rdx rsi rdi rbp r8-r15 rflags rsp rip, then
/// the thread's tid as it sees it.
const BLOCK: u64 = 192;
const PAGE_LEN: u64 = 4096;

/// The registers a thread stopped at an interrupt stop inside an interrupted system call
/// resumes with when nobody else handles the restart: the call rewound to be made again
/// (ERESTART_RESTARTBLOCK through restart_syscall, which the thread's restart block serves,
/// so that a sleep goes on with its remaining time).
pub fn way_back(r: &libc::user_regs_struct) -> libc::user_regs_struct {
    let mut out = *r;
    if (r.orig_rax as i64) >= 0 && sys::RESTART_CODES.contains(&(r.rax as i64)) {
        out.rax = match r.rax as i64 {
            -516 => libc::SYS_restart_syscall as u64,
            _ => r.orig_rax,
        };
        out.rip = r.rip - 2;
    }
    out
}

/// The registers of `back` (see [`way_back`]) in the order a way back loads them: rax rbx
/// rcx rdx rsi rdi rbp r8-r15 rflags rsp rip (also the interceptor's flush trampoline's).
pub fn block(back: &libc::user_regs_struct) -> Vec<u8> {
    let b = back;
    let words = [
        b.rax, b.rbx, b.rcx, b.rdx, b.rsi, b.rdi, b.rbp, b.r8, b.r9, b.r10, b.r11, b.r12, b.r13,
        b.r14, b.r15, b.eflags, b.rsp, b.rip,
    ];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The page, mapped into a live process while one of its threads is lent.
#[derive(Debug)]
pub struct Detour {
    addr: u64,
}

impl Detour {
    /// Maps the page into the process of lent thread `tid` (of `pid`, stopped), through
    /// `inj`, with the way back to `saved` (the registers of its interrupt stop). None
    /// where the process may not map executable memory or the thread's own tid cannot be
    /// read. The thread must be traced with PTRACE_O_EXITKILL (see the module comment).
    /// Signals the thread takes meanwhile go to `held`.
    pub fn map(
        inj: &Injector,
        (pid, tid): (i32, i32),
        saved: &libc::user_regs_struct,
        held: &mut Vec<libc::siginfo_t>,
    ) -> io::Result<Option<Detour>> {
        // Guessed wrong, the way back would end the program itself: none without it.
        let Some(own_tid) = crate::proc::tid_inside(pid, tid) else {
            return Ok(None);
        };
        let prot = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let args = [0, PAGE_LEN, prot, flags, u64::MAX, 0];
        let addr = inj.syscall_holding(tid, libc::SYS_mmap, args, held)?;
        if (-4095..0).contains(&addr) {
            return Ok(None);
        }
        let detour = Detour { addr: addr as u64 };
        // Read-only to the program: written through /proc/PID/mem (FOLL_FORCE).
        let mut back = block(&way_back(saved));
        back.extend((own_tid as u64).to_le_bytes());
        let written = inj
            .poke(detour.addr, &CODE)
            .and_then(|_| inj.poke(detour.addr + BLOCK, &back));
        if let Err(e) = written {
            detour.unmap(inj, tid, held)?;
            return Err(e);
        }
        Ok(Some(detour))
    }

    /// Where the thread's calls go: the `syscall` instruction.
    pub fn entry(&self) -> u64 {
        self.addr
    }

    /// Unmaps the page, through `inj`'s own `syscall` instruction in thread `tid`; signals
    /// go to `held`.
    pub fn unmap(
        self,
        inj: &Injector,
        tid: i32,
        held: &mut Vec<libc::siginfo_t>,
    ) -> io::Result<()> {
        let args = [self.addr, PAGE_LEN, 0, 0, 0, 0];
        let r = inj.syscall_holding(tid, libc::SYS_munmap, args, held)?;
        match r {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(-e as i32)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::Borrowed;
    use nix::sys::ptrace;
    use nix::unistd::Pid;
    use std::os::fd::AsRawFd;

    #[test]
    fn an_interrupted_call_is_rewound_and_a_sleep_goes_on_through_restart_syscall() {
        // SAFETY: plain old data.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        (r.orig_rax, r.rax, r.rip) = (libc::SYS_read as u64, -512i64 as u64, 0x1002);
        let b = way_back(&r);
        assert_eq!((b.rax, b.rip), (libc::SYS_read as u64, 0x1000));
        (r.orig_rax, r.rax) = (libc::SYS_nanosleep as u64, -516i64 as u64);
        let b = way_back(&r);
        assert_eq!((b.rax, b.rip), (libc::SYS_restart_syscall as u64, 0x1000));
        // Not in a call, or a call that returned: as it is.
        (r.orig_rax, r.rax) = (u64::MAX, -516i64 as u64);
        assert_eq!(way_back(&r).rip, 0x1002);
        (r.orig_rax, r.rax) = (libc::SYS_read as u64, 5);
        assert_eq!((way_back(&r).rax, way_back(&r).rip), (5, 0x1002));
    }

    fn state(pid: i32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    /// A lent thread whose tracer lets go of it in the middle of the lending (as the kernel
    /// does when ckpt's worker is killed) goes back to its own code by itself: the child
    /// sleeps on in its loop and ends as it would have. A process a lent fork made exits at
    /// once instead of running the program's code.
    #[test]
    fn a_thread_let_go_while_lent_goes_back_and_a_child_it_made_exits() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(
            &r,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        // SAFETY: the child makes only async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let nap = libc::timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            loop {
                let mut b = 0u8;
                // SAFETY: as above.
                unsafe {
                    libc::nanosleep(&nap, std::ptr::null_mut());
                    if libc::read(r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) == 1 {
                        libc::_exit(7);
                    }
                }
            }
        }
        let child = Pid::from_raw(pid);
        ptrace::seize(child, ptrace::Options::empty()).unwrap();
        ptrace::interrupt(child).unwrap();
        assert!(libc::WIFSTOPPED(sys::waitpid(pid, libc::__WALL).unwrap()));
        let mut lent = Borrowed::take(pid, pid).unwrap();
        assert_eq!(lent.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
        let grandchild = lent.syscall(libc::SYS_fork, [0; 6]).unwrap() as i32;
        assert!(grandchild > 0, "fork: {grandchild}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while state(grandchild).is_some_and(|s| s != 'Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "the fork child runs on"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The tracer goes away without putting anything back.
        std::mem::forget(lent);
        ptrace::detach(child, None).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            state(pid).is_some_and(|s| s == 'S' || s == 'R'),
            "{:?}",
            state(pid)
        );
        nix::unistd::write(&w, b"x").unwrap();
        let status = sys::waitpid(pid, 0).unwrap();
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
            "the child ended with status {status:#x}"
        );
    }
}
