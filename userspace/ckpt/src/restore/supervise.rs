//! Following a restorer to the exit of the restore ioctl: once it has forked its children and
//! reported, we trace it (PTRACE_SEIZE with exit-kill and syscall stops) and let it prepare;
//! at its stop (SIGSTOP), right before the ioctl, we follow its system calls to the ioctl's
//! exit.

use crate::errors::{restore_io, RestoreError};
use crate::sys;
use ckpt_abi::CKPT_IOC_RESTORE;
use nix::sys::ptrace;
use nix::unistd::Pid;

/// Traces restorer `pid` (waiting for ckpt's go; it does not stop for this).
pub fn attach(pid: i32) -> Result<(), RestoreError> {
    let tracee = Pid::from_raw(pid);
    let options = ptrace::Options::PTRACE_O_TRACESYSGOOD | ptrace::Options::PTRACE_O_EXITKILL;
    ptrace::seize(tracee, options).map_err(|e| restore_io("PTRACE_SEIZE")(e.into()))
}

/// Returns once restorer `pid` stands at the exit of a successful restore ioctl, its address
/// space the image's.
pub fn to_restore_exit(pid: i32) -> Result<(), RestoreError> {
    let tracee = Pid::from_raw(pid);
    loop {
        let status = wait(pid)?;
        ended(status)?;
        let signal_stop = status >> 16 == 0 && libc::WIFSTOPPED(status);
        if signal_stop && libc::WSTOPSIG(status) == libc::SIGSTOP {
            break;
        }
        // Any other stop: keep going without delivering it (all are blocked anyway).
        cont(tracee)?;
    }
    let regs = follow_ioctl(pid)?;
    if regs.rax != 0 {
        let errno = -(regs.rax as i64) as i32;
        return Err(RestoreError::Ioctl(std::io::Error::from_raw_os_error(
            errno,
        )));
    }
    Ok(())
}

fn wait(pid: i32) -> Result<i32, RestoreError> {
    sys::waitpid(pid, libc::__WALL).map_err(restore_io("waiting for the restorer"))
}

fn cont(tracee: Pid) -> Result<(), RestoreError> {
    ptrace::cont(tracee, None).map_err(|e| restore_io("PTRACE_CONT")(e.into()))
}

/// An error if `status` says the restorer is gone (it printed why). An exit status above 100
/// is the module's refusal (100 + errno).
fn ended(status: i32) -> Result<(), RestoreError> {
    if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        if code > 100 {
            let e = std::io::Error::from_raw_os_error(code - 100);
            return Err(RestoreError::Ioctl(e));
        }
        return Err(RestoreError::Child(code));
    }
    if libc::WIFSIGNALED(status) {
        return Err(RestoreError::Child(128 + libc::WTERMSIG(status)));
    }
    Ok(())
}

/// Follows the restorer from stop #2 to the exit of the restore ioctl. Returns its registers
/// there (rax is the ioctl's result).
fn follow_ioctl(pid: i32) -> Result<libc::user_regs_struct, RestoreError> {
    let tracee = Pid::from_raw(pid);
    let mut in_restore = false;
    for _ in 0..64 {
        ptrace::syscall(tracee, None).map_err(|e| restore_io("PTRACE_SYSCALL")(e.into()))?;
        let status = wait(pid)?;
        ended(status)?;
        if !(libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == (libc::SIGTRAP | 0x80)) {
            continue; // not a syscall stop
        }
        let regs = ptrace::getregs(tracee).map_err(|e| restore_io("PTRACE_GETREGS")(e.into()))?;
        if in_restore {
            return Ok(regs);
        }
        in_restore = regs.orig_rax == libc::SYS_ioctl as u64 && regs.rsi as u32 == CKPT_IOC_RESTORE;
    }
    Err(restore_io("the restorer never called the restore ioctl")(
        std::io::Error::other("lost"),
    ))
}
