//! The barrier: every thread of the target stopped with PTRACE_SEIZE + PTRACE_INTERRUPT, which
//! its parent cannot see (no SIGSTOP, no waitpid report) and which leaves each thread's FPU
//! state in memory. Whatever happens, dropping a [`Frozen`] detaches and the target runs on.

use crate::errors::{checkpoint_io, CheckpointError};
use crate::{proc, sys};
use nix::sys::ptrace;
use nix::unistd::Pid;

/// The threads of a frozen process (the main thread first). Dropped while active, it lets
/// them all go.
pub struct Frozen {
    pub pid: i32,
    pub tids: Vec<i32>,
    active: bool,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if self.active {
            self.release_quietly();
        }
    }
}

impl Frozen {
    /// Stops every thread of `pid`.
    pub fn freeze(pid: i32) -> Result<Frozen, CheckpointError> {
        let mut f = Frozen {
            pid,
            tids: Vec::new(),
            active: true,
        };
        f.stop_all()?;
        Ok(f)
    }

    /// Seizes and interrupts each thread not stopped yet, listing them again until no new
    /// thread appears (one may be created while we stop the others).
    pub fn stop_all(&mut self) -> Result<(), CheckpointError> {
        let pid = self.pid;
        for _round in 0..100 {
            let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map_err(|_| CheckpointError::NoSuchProcess(pid))?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            tids.sort_by_key(|&t| (t != pid, t));
            tids.retain(|t| !self.tids.contains(t));
            if tids.is_empty() {
                return Ok(());
            }
            for tid in tids {
                self.stop_one(tid)?;
            }
        }
        Err(checkpoint_io(pid, "stopping its threads")(
            std::io::Error::other("threads keep appearing"),
        ))
    }

    fn stop_one(&mut self, tid: i32) -> Result<(), CheckpointError> {
        let pid = self.pid;
        match ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty()) {
            Ok(()) => {}
            // Exited between the listing and now.
            Err(nix::Error::ESRCH) if tid != pid => return Ok(()),
            Err(e) => {
                // Traced by another ckpt: a checkpoint of it is under way.
                let tracer = proc::status_field(tid, "TracerPid")
                    .ok()
                    .and_then(|v| v.trim().parse::<i32>().ok())
                    .filter(|&t| t > 0);
                let by_ckpt = |t: i32| {
                    std::fs::read_to_string(format!("/proc/{t}/comm")).is_ok_and(|c| {
                        c.as_bytes().trim_ascii_end() == crate::worker::WORKER_NAME.to_bytes()
                    })
                };
                return Err(match tracer {
                    Some(by) if by_ckpt(by) => CheckpointError::Busy { pid, by },
                    _ => CheckpointError::Attach {
                        pid,
                        source: e.into(),
                        why: crate::attach::why_refused(tid, e),
                    },
                });
            }
        }
        self.tids.push(tid);
        let status = interrupt(tid).map_err(checkpoint_io(pid, "stopping a thread"))?;
        if !libc::WIFSTOPPED(status) {
            self.tids.pop();
            if tid == pid {
                return Err(CheckpointError::NoSuchProcess(pid));
            }
        }
        Ok(())
    }

    /// Lets every thread go and forgets them (they may be frozen again with `stop_all`).
    pub fn release_quietly(&mut self) {
        for tid in self.tids.drain(..) {
            let _ = ptrace::detach(Pid::from_raw(tid), None);
        }
    }

    /// Lets every thread go; the process runs on.
    pub fn release(mut self) -> Result<(), CheckpointError> {
        self.active = false;
        for &tid in &self.tids {
            ptrace::detach(Pid::from_raw(tid), None)
                .map_err(|e| checkpoint_io(self.pid, "PTRACE_DETACH")(e.into()))?;
        }
        Ok(())
    }

    /// Kills the process while it is still stopped, so it never runs past the checkpoint.
    pub fn kill(mut self) -> Result<(), CheckpointError> {
        sys::kill(self.pid, libc::SIGKILL).map_err(checkpoint_io(self.pid, "kill"))?;
        self.active = false;
        // Collect the other threads first: the main thread is reported only after them.
        for &tid in self.tids.iter().rev() {
            let _ = sys::waitpid(tid, libc::__WALL);
        }
        Ok(())
    }

    /// A thread the freeze took out of a call the kernel never restarts (epoll_wait...) holds
    /// EINTR for the program: make it redo the call instead, as the kernel does for others.
    pub fn redo_interrupted_calls(&self) -> Result<(), CheckpointError> {
        for &tid in &self.tids {
            redo_interrupted_call(tid)
                .map_err(checkpoint_io(self.pid, "redoing an interrupted call"))?;
        }
        Ok(())
    }
}

/// Stops seized thread `tid` at an interrupt stop (or a group stop); its wait status. A thread
/// that met a signal between the seize and the interrupt is reported first at that signal's
/// delivery stop: the signal is dequeued then (pending nowhere, so in no image), and resuming
/// with no signal, as a lent thread's first injected call or a detach does, would drop it (a
/// raise() whose handler never ran). It is passed on instead, as if ckpt had not been there:
/// the interrupt, asked again while stopped so that it sticks, stops the thread right after
/// (at its handler's first instruction, in a group stop, or its default action taken).
fn interrupt(tid: i32) -> std::io::Result<libc::c_int> {
    ptrace::interrupt(Pid::from_raw(tid))?;
    loop {
        let status = sys::waitpid(tid, libc::__WALL)?;
        if !libc::WIFSTOPPED(status) || status >> 16 != 0 {
            return Ok(status);
        }
        ptrace::interrupt(Pid::from_raw(tid))?;
        sys::ptrace_cont_signal(tid, libc::WSTOPSIG(status))?;
    }
}

/// System calls that fail with EINTR when a stop interrupts them, even with no signal handler
/// run (signal(7)): the kernel does not restart them after a freeze as it does the others.
const NEVER_RESTARTED: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_io_getevents,
    333, // io_pgetevents (not in the libc crate)
];

/// If frozen thread `tid` is about to return EINTR from one of `NEVER_RESTARTED` only because
/// of the freeze (no signal of its own deliverable), points it back at the call so that it is
/// made again (its timeout starts over), in the live process and in the image.
fn redo_interrupted_call(tid: i32) -> std::io::Result<()> {
    let mut r = ptrace::getregs(Pid::from_raw(tid))?;
    if !(NEVER_RESTARTED.contains(&(r.orig_rax as i64)) && r.rax as i64 == -(libc::EINTR as i64)) {
        return Ok(());
    }
    let (own, shared) = proc::pending_signals(tid)?;
    let blocked = sys::ptrace_get_sigmask(tid)?;
    if (own | shared) & !blocked != 0 {
        return Ok(()); // a real signal interrupts it: EINTR is the program's to see
    }
    r.rax = r.orig_rax;
    r.rip -= 2;
    Ok(ptrace::setregs(Pid::from_raw(tid), r)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicI32, Ordering};

    static HANDLED: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_usr2(_: libc::c_int) {
        // SAFETY: write is async-signal-safe; the fd is the child's pipe end.
        unsafe { libc::write(HANDLED.load(Ordering::Relaxed), b"h".as_ptr().cast(), 1) };
    }

    /// A thread that meets a signal between the seize and the interrupt (ckpt preempted
    /// there) is reported at its delivery stop first: the freeze passes the signal on, so
    /// that once let go, the program's handler has run exactly once (it was dropped).
    #[test]
    fn a_signal_met_between_seize_and_interrupt_is_delivered_once() {
        let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
        let (handled_r, handled_w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child makes only async-signal-safe calls.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            HANDLED.store(handled_w.as_raw_fd(), Ordering::Relaxed);
            // SAFETY: as above; the handler is async-signal-safe.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_usr2 as *const () as usize;
                libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
                libc::write(ready_w.as_raw_fd(), b"r".as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            }
        }
        let mut b = [0u8; 8];
        assert_eq!(nix::unistd::read(&ready_r, &mut b).unwrap(), 1);
        ptrace::seize(Pid::from_raw(pid), ptrace::Options::empty()).unwrap();
        sys::kill(pid, libc::SIGUSR2).unwrap();
        // Traced, the child stops for the signal before its handler: wait for that stop
        // without taking its report, which is the freeze's to see.
        // SAFETY: a zeroed siginfo is a valid out-buffer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WSTOPPED | libc::WNOWAIT | libc::__WALL;
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::waitid(libc::P_PID, pid as u32, &mut info, flags) },
            0
        );
        let status = interrupt(pid);
        let _ = ptrace::detach(Pid::from_raw(pid), None);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::waitpid(pid, 0);
        drop(handled_w);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(handled_r), &mut got).unwrap();
        assert_eq!(got, b"h", "the handler ran {} times", got.len());
        let status = status.unwrap();
        assert_eq!(status >> 16, libc::PTRACE_EVENT_STOP, "status {status:#x}");
    }
}
