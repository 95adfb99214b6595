//! Flushing the stdio buffers of a frozen single-threaded program, from outside.
//!
//! A single-threaded program runs in glibc's single-threaded mode, where stdio takes no locks,
//! so nothing may call fflush while the program could be inside stdio. Once ckpt has frozen
//! it, the program's thread is at a *safe point* if it is waiting in a system call stdio never
//! makes (nanosleep, poll, select, epoll, futex, accept, wait, pause, sigsuspend, recv...) or
//! runs code outside libc. Then ckpt makes that thread call the interceptor's
//! `ckpt_interceptor_flush` (fflush(NULL)), as a debugger calls a function: registers and FPU
//! state saved, the call run under ptrace until it ends with a system call ckpt recognizes,
//! everything put back so that the interrupted call restarts as it would have. Signals that
//! arrive meanwhile are held back and raised again afterwards.

use crate::{proc, sys};
use ckpt_abi::interceptor::FLUSH_DONE_SYSCALL;
use std::time::{Duration, Instant};

/// System calls stdio never makes and a program waits in.
const WAITING_CALLS: &[i64] = &[
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_futex,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_pause,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_msgrcv,
    libc::SYS_semtimedop,
];

/// Is the frozen thread with registers `r` at a safe point (see the module comment)?
pub fn at_safe_point(pid: i32, r: &libc::user_regs_struct) -> bool {
    if r.orig_rax as i64 >= 0 {
        return WAITING_CALLS.contains(&(r.orig_rax as i64));
    }
    // Running user code: safe unless it is libc's.
    let Ok(maps) = proc::maps(&pid.to_string()) else {
        return false;
    };
    !maps.iter().any(|m| {
        let base = m.name.rsplit('/').next().unwrap_or("");
        (base.starts_with("libc.so") || base.starts_with("libc-"))
            && m.start <= r.rip
            && r.rip < m.end
    })
}

/// The registers that make a thread stopped in an interrupted system call restart it when it
/// is let go from a syscall-exit stop (where the kernel does no restart processing itself).
fn restart_explicitly(r: &libc::user_regs_struct) -> libc::user_regs_struct {
    const RESTART: [i64; 4] = [-512, -513, -514, -516];
    let mut out = *r;
    if (r.orig_rax as i64) >= 0 && RESTART.contains(&(r.rax as i64)) {
        out.rax = r.orig_rax;
        out.rip = r.rip - 2;
    }
    out.orig_rax = u64::MAX;
    out
}

/// Makes the frozen thread `tid` call the function at `addr` (which ends with the
/// FLUSH_DONE system call). Returns fflush's result. The thread is left stopped with its own
/// state back. Signals that arrived meanwhile are returned, to be raised again once the
/// process runs.
pub fn call_flush(tid: i32, addr: u64, timeout: Duration) -> std::io::Result<(i64, Vec<i32>)> {
    let saved = sys::ptrace_getregs(tid)?;
    let xstate = sys::ptrace_get_xstate(tid)?;
    let mut held = Vec::new();
    let mut call = saved;
    // Below the red zone, 16-byte aligned, then a (never used) return address.
    let sp = (saved.rsp - 1024) & !15;
    call.rsp = sp - 8;
    call.rip = addr;
    call.rax = 0;
    call.orig_rax = u64::MAX; // not in a system call: no restart on the way out
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{tid}/mem"))?;
    std::os::unix::fs::FileExt::write_all_at(&mem, &0u64.to_le_bytes(), call.rsp)?;
    sys::ptrace_setregs(tid, &call)?;
    let deadline = Instant::now() + timeout;
    let mut result = None;
    sys::ptrace_setoptions(tid, libc::PTRACE_O_TRACESYSGOOD)?;
    loop {
        sys::ptrace_syscall(tid, 0)?;
        let status = loop {
            match sys::waitpid_nohang(tid)? {
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(200)),
                None => {
                    // Stuck (a write to a full pipe?): take the thread back as it is.
                    sys::ptrace_interrupt(tid)?;
                    sys::waitpid(tid, libc::__WALL)?;
                    sys::ptrace_setregs(tid, &saved)?;
                    sys::ptrace_set_xstate(tid, &xstate)?;
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "fflush did not finish in time",
                    ));
                }
                Some(s) => break s,
            }
        };
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Err(std::io::Error::other("the process died while flushing"));
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let stop = libc::WSTOPSIG(status);
        if stop == libc::SIGTRAP | 0x80 {
            let r = sys::ptrace_getregs(tid)?;
            if result.is_none() && r.orig_rax as i64 == FLUSH_DONE_SYSCALL {
                // At the entry of the marker call: skip it, and stop again at its exit.
                result = Some(r.rdi as i64);
                let mut skip = r;
                skip.orig_rax = u64::MAX;
                sys::ptrace_setregs(tid, &skip)?;
                continue;
            }
            if let Some(res) = result {
                // The marker's exit: put everything back.
                sys::ptrace_setregs(tid, &restart_explicitly(&saved))?;
                sys::ptrace_set_xstate(tid, &xstate)?;
                return Ok((res, held));
            }
            continue; // fflush's own write(2)s
        }
        if status >> 16 != 0 {
            continue; // a ptrace event stop
        }
        // A signal for the program: held back, raised again afterwards.
        if stop != libc::SIGSTOP && stop != libc::SIGTRAP {
            held.push(stop);
        }
    }
}
