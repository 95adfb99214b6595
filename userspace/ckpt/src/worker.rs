//! `ckpt checkpoint` does its work in a child process, the worker, so that killing `ckpt`
//! (even with SIGKILL) never leaves a process frozen, traced, half way through a call ckpt
//! made it run, or cloned. The worker is told by PR_SET_PDEATHSIG (SIGTERM; SIGINT and
//! SIGHUP count the same) and stops at its next safe point ([`check`]) with an error, whose
//! path undoes everything: the lent thread is put back, the tree let go, the snapshots
//! killed, the network lock lifted, the temporary image removed. The worker is the tracer;
//! a worker killed outright (SIGKILL to it, or the OOM killer) is not covered.

use crate::errors::CheckpointError;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

static ABORTED: AtomicBool = AtomicBool::new(false);

/// In the worker: the `ckpt` process it works for (0 elsewhere).
static PARENT: AtomicI32 = AtomicI32::new(0);

/// The worker's process name (comm).
pub const WORKER_NAME: &std::ffi::CStr = c"ckpt-worker";

extern "C" fn on_stop_signal(_: libc::c_int) {
    ABORTED.store(true, Ordering::SeqCst);
}

/// Runs `work` in a worker process and returns its exit code (128 + N if a signal N ended
/// it). The parent does nothing else: stdio is shared, the worker prints.
pub fn run_in_worker(work: impl FnOnce() -> u8) -> u8 {
    let parent = nix::unistd::getpid();
    // SAFETY: ckpt is single-threaded here (nothing has started a thread before the command
    // runs), so the child may do anything.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            eprintln!("ckpt: cannot start the checkpoint's worker process: {e}");
            1
        }
        Ok(nix::unistd::ForkResult::Child) => {
            become_worker(parent);
            let code = work();
            let _ = std::io::Write::flush(&mut std::io::stdout());
            std::process::exit(code.into())
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => wait_worker(child),
    }
}

/// In the worker: hear of the parent's death and of stop signals as a request to stop.
fn become_worker(parent: nix::unistd::Pid) {
    PARENT.store(parent.as_raw(), Ordering::SeqCst);
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(sig, &act) };
    }
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    // What ps shows, and how another ckpt knows who holds a process it finds traced.
    let _ = nix::sys::prctl::set_name(WORKER_NAME);
    // Died before the line above: nobody would tell us.
    if nix::unistd::getppid() != parent {
        ABORTED.store(true, Ordering::SeqCst);
    }
}

/// In the parent: the worker's exit code.
fn wait_worker(child: nix::unistd::Pid) -> u8 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code.clamp(0, 255) as u8,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as u8,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => {
                eprintln!("ckpt: lost the checkpoint's worker process: {e}");
                return 1;
            }
        }
    }
}

/// Whether `pid` is this ckpt: the process itself, or the `ckpt` its worker works for.
pub fn is_ckpt(pid: i32) -> bool {
    pid == std::process::id() as i32 || pid == PARENT.load(Ordering::SeqCst)
}

/// A safe point: fails if ckpt was asked to stop (its parent gone, or a stop signal).
pub fn check() -> Result<(), CheckpointError> {
    match ABORTED.load(Ordering::SeqCst) {
        true => Err(CheckpointError::Stopped),
        false => Ok(()),
    }
}

/// For tests of a ckpt killed at a given step: waits the seconds in environment variable
/// `var` (if set), or until ckpt is asked to stop.
pub fn pause_for_test(var: &str) {
    let Some(secs) = std::env::var(var).ok().and_then(|v| v.parse::<f64>().ok()) else {
        return;
    };
    let until = std::time::Instant::now() + Duration::from_secs_f64(secs);
    while std::time::Instant::now() < until && !ABORTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}
