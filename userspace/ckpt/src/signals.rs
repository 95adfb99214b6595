//! Signals: the process's handlers (dispositions that are not the default) and the signals
//! pending for it and for each thread. Handlers come from the module and are set by the
//! restorer on itself with the raw rt_sigaction (glibc's would replace the restorer
//! address). Pending signals are raised again once the process runs: blocked ones stay
//! pending as they were; others are delivered then, as they would have been. Their siginfo
//! is not carried.

use crate::errors::{restore_io, RestoreError};
use crate::inject::Injector;
use crate::sys;
use ckpt_abi::CkptTaskState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigAction {
    pub signo: u32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// The dispositions that are not the default, from the module's task state.
pub fn dump(ts: &CkptTaskState) -> Vec<SigAction> {
    ts.sigactions
        .iter()
        .enumerate()
        .filter(|(_, a)| a.handler != 0 || a.flags != 0 || a.mask != 0 || a.restorer != 0)
        .map(|(i, a)| SigAction {
            signo: i as u32 + 1,
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        })
        .collect()
}

/// In the restorer: the handlers (SIGKILL and SIGSTOP have none to set); every other signal
/// back to its default (ckpt's runtime ignores SIGPIPE, and a fork keeps that).
pub fn restore(actions: &[SigAction]) -> Result<(), (String, std::io::Error)> {
    let default = sys::KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64u32 {
        let listed = actions.iter().any(|a| a.signo == sig);
        if !listed && sig != libc::SIGKILL as u32 && sig != libc::SIGSTOP as u32 {
            let _ = sys::rt_sigaction(sig, &default);
        }
    }
    for a in actions {
        if a.signo == libc::SIGKILL as u32 || a.signo == libc::SIGSTOP as u32 {
            continue;
        }
        let act = sys::KernelSigaction {
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        };
        sys::rt_sigaction(a.signo, &act).map_err(|e| (format!("sigaction {}", a.signo), e))?;
    }
    Ok(())
}

/// After the restored process is let go: raises again what was pending for the process
/// (`shared`) and for each thread (`per_thread[i]` for kernel tid `tids[i]`).
pub fn raise_pending(
    pid: i32,
    shared: u64,
    per_thread: &[u64],
    tids: &[i32],
) -> std::io::Result<()> {
    for sig in 1..=64u32 {
        let bit = 1u64 << (sig - 1);
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        if shared & bit != 0 {
            sys::kill(pid, sig as i32)?;
        }
        for (&pending, &tid) in per_thread.iter().zip(tids) {
            if pending & bit != 0 {
                sys::tgkill(pid, tid, sig as i32)?;
            }
        }
    }
    Ok(())
}

/// In a restored process at a ptrace stop, every signal blocked: dequeues every pending
/// signal (process-wide and its main thread's), by injected rt_sigtimedwait with a zero
/// timeout until none is left. `scratch` is memory of the process free for the arguments.
pub fn discard_pending(inj: &Injector, tid: i32, scratch: u64) -> Result<(), RestoreError> {
    // The set (all 64 signals), then a zero timespec.
    let mut args = u64::MAX.to_le_bytes().to_vec();
    args.extend_from_slice(&[0u8; 16]);
    inj.poke(scratch, &args)
        .map_err(restore_io("writing rt_sigtimedwait arguments"))?;
    // Real-time signals queue: bounded, in case something keeps sending.
    for _ in 0..4096 {
        let call = [scratch, 0, scratch + 8, 8, 0, 0];
        let (r, _) = inj
            .syscall(tid, libc::SYS_rt_sigtimedwait, call)
            .map_err(restore_io("rt_sigtimedwait"))?;
        if r < 0 {
            return Ok(()); // EAGAIN: nothing left
        }
    }
    Ok(())
}
