//! Signals: the process's handlers (dispositions that are not the default) and the signals
//! pending for it and for each thread. Handlers come from the module and are set by the
//! restorer on itself with the raw rt_sigaction (glibc's would replace the restorer
//! address). Pending signals are raised again once the process runs: blocked ones stay
//! pending as they were; others are delivered then, as they would have been. Their siginfo
//! is not carried.

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

/// In the restorer: the handlers (SIGKILL and SIGSTOP have none to set).
pub fn restore(actions: &[SigAction]) -> Result<(), (String, std::io::Error)> {
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
