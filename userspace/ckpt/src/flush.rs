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
use ckpt_abi::interceptor::FLUSH_DONE_MAGIC;
use nix::sys::ptrace;
use nix::unistd::Pid;
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
    // Running user code: safe unless it is libc's, or the interceptor's (a flush left
    // running by an earlier checkpoint that gave up on it).
    let Ok(maps) = proc::maps(&pid.to_string()) else {
        return false;
    };
    !maps.iter().any(|m| {
        let base = m.name.rsplit('/').next().unwrap_or("");
        (base.starts_with("libc.so")
            || base.starts_with("libc-")
            || base.starts_with(crate::run::LIBRARY))
            && m.start <= r.rip
            && r.rip < m.end
    })
}

/// How a flush call ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// fflush returned (its result); the thread is back at an interrupt stop with its own
    /// registers and FPU state, exactly as before.
    Done(i64),
    /// fflush did not finish in time (a write blocked on a full pipe?): the thread was stopped
    /// where it was, inside the flush. That is a state the program can be saved in: when let
    /// go (or restored), it finishes the flush and returns to its own code by itself.
    Stuck,
}

/// Makes the frozen main thread of `pid` (at an interrupt stop) run the interceptor's trampoline at
/// `entry`, with `ctx` the address of its return context. Signals that arrive meanwhile are
/// queued again before returning (they stay pending in the stopped process). On an error
/// the thread may be anywhere in the trampoline; let go, it still returns to its own code.
pub fn call_flush(pid: i32, entry: u64, ctx: u64, timeout: Duration) -> std::io::Result<Flushed> {
    let tid = pid;
    let saved = ptrace::getregs(Pid::from_raw(tid))?;
    let xstate = sys::ptrace_get_xstate(tid)?;
    // The trampoline's way back, for when ckpt does not take the thread back itself.
    let block = crate::detour::block(&crate::detour::way_back(&saved));
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{tid}/mem"))?;
    use std::os::unix::fs::FileExt;
    mem.write_all_at(&block, ctx)?;
    let mut call = saved;
    // Below the red zone, 16-byte aligned, then a (never used) return address.
    call.rsp = ((saved.rsp - 1024) & !15) - 8;
    call.rip = entry;
    call.rax = 0;
    call.orig_rax = u64::MAX; // not in a system call: no restart on the way in
    mem.write_all_at(&0u64.to_le_bytes(), call.rsp)?;
    ptrace::setoptions(Pid::from_raw(tid), ptrace::Options::PTRACE_O_TRACESYSGOOD)?;
    ptrace::setregs(Pid::from_raw(tid), call)?;
    let deadline = Instant::now() + timeout;
    let mut held = Vec::new();
    let mut marker_result = None;
    let outcome = loop {
        ptrace::syscall(Pid::from_raw(tid), None)?;
        let status = loop {
            match sys::waitpid_nohang(tid)? {
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(200)),
                None => {
                    // Stop it where it is (in the middle of a write, most likely) at an
                    // interrupt stop, the state a freeze leaves: other stops on the way (a
                    // syscall entry or exit, a signal) are passed through.
                    ptrace::interrupt(Pid::from_raw(tid))?;
                    to_interrupt_stop(tid, &mut held)?;
                    requeue(tid, &held);
                    return Ok(Flushed::Stuck);
                }
                Some(s) => break s,
            }
        };
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Err(std::io::Error::other("the process died while flushing"));
        }
        let stop = libc::WSTOPSIG(status);
        if stop == libc::SIGTRAP | 0x80 {
            let r = ptrace::getregs(Pid::from_raw(tid))?;
            if r.orig_rax as i64 == libc::SYS_getpid && r.rsi == FLUSH_DONE_MAGIC {
                match marker_result {
                    // Entry of the marker: let it run (getpid), stop at its exit.
                    None => marker_result = Some(r.rdi as i64),
                    // Its exit: take the thread back.
                    Some(res) => break res,
                }
            }
            continue; // fflush's own write(2)s
        }
        if status >> 16 != 0 {
            continue; // a ptrace event stop
        }
        if [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE].contains(&stop) {
            // fflush itself faulted (a corrupt stream): give up and put everything back.
            put_back(tid, &saved, &xstate, &mut held)?;
            return Err(std::io::Error::other(format!(
                "fflush faulted (signal {stop}); nothing changed"
            )));
        }
        held.push(stop); // a signal for the program: suppressed now, queued again below
    };
    put_back(tid, &saved, &xstate, &mut held)?;
    Ok(Flushed::Done(outcome))
}

/// Puts the thread back as it was frozen: exactly the registers of the interrupt stop, the FPU
/// state, and a new interrupt stop to be in, so that the kernel's own restart handling applies
/// when it is let go, as if nothing had happened (a sleep restarts with its remaining time).
/// Held signals are queued again.
pub(crate) fn put_back(
    tid: i32,
    saved: &libc::user_regs_struct,
    xstate: &[u8],
    held: &mut Vec<i32>,
) -> std::io::Result<()> {
    ptrace::setregs(Pid::from_raw(tid), *saved)?;
    sys::ptrace_set_xstate(tid, xstate)?;
    ptrace::interrupt(Pid::from_raw(tid))?;
    ptrace::cont(Pid::from_raw(tid), None)?;
    to_interrupt_stop(tid, held)?;
    requeue(tid, held);
    Ok(())
}

/// Waits for the interrupt stop a PTRACE_INTERRUPT asked for, letting the thread through any
/// other stop first (syscall stops; signals, which are held back into `held`).
pub(crate) fn to_interrupt_stop(tid: i32, held: &mut Vec<i32>) -> std::io::Result<()> {
    loop {
        let status = sys::waitpid(tid, libc::__WALL)?;
        if !libc::WIFSTOPPED(status) {
            return Err(std::io::Error::other("the process died while flushing"));
        }
        if status >> 16 == libc::PTRACE_EVENT_STOP {
            return Ok(());
        }
        let stop = libc::WSTOPSIG(status);
        if stop != libc::SIGTRAP | 0x80 && status >> 16 == 0 {
            held.push(stop);
        }
        // An interrupt requested while the thread ran is used up by a syscall stop on the way
        // (seen: a blocked write's exit stop, then the write restarted and blocked again, no
        // interrupt stop): ask again while it is stopped, which sticks.
        ptrace::interrupt(Pid::from_raw(tid))?;
        ptrace::cont(Pid::from_raw(tid), None)?;
    }
}

/// Queues signals held back during the call again to thread `tid` (the process is stopped:
/// they stay pending, are saved with it, and are delivered when it runs). tgkill names the
/// thread group too: for a thread other than the leader, that is not its own id.
fn requeue(tid: i32, held: &[i32]) {
    if held.is_empty() {
        return;
    }
    let tgid = crate::proc::status_field(tid, "Tgid")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(tid);
    for &sig in held {
        let _ = sys::tgkill(tgid, tid, sig);
    }
}
