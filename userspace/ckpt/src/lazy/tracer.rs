//! The page server's hold on a lazily restored tree: every thread traced with
//! PTRACE_O_EXITKILL, so that the tree dies if the server dies with pages still to place
//! (the kernel would map zeros on those faults). The program must not notice otherwise:
//! each stop is passed on as it came (a signal delivered, a group stop kept with
//! PTRACE_LISTEN, a fork's or clone's event continued, the new task traced too).

use crate::sys;
use nix::sys::ptrace::{self, Event as PtraceEvent, Options};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd};

pub struct Tracer {
    tids: BTreeSet<i32>,
    /// SIGCHLD, which tells of every stop and exit of a tracee.
    signals: SignalFd,
}

const STOP_EVENT: i32 = libc::PTRACE_EVENT_STOP;

impl Tracer {
    /// Traces every thread of `pids` (those it cannot are said and left alone).
    pub fn seize(pids: &[i32]) -> Tracer {
        let mut chld = SigSet::empty();
        chld.add(Signal::SIGCHLD);
        let _ = chld.thread_block();
        let signals =
            match SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
                Ok(s) => s,
                Err(e) => super::server::fatal("a signalfd for SIGCHLD", e),
            };
        let options = Options::PTRACE_O_EXITKILL
            | Options::PTRACE_O_TRACECLONE
            | Options::PTRACE_O_TRACEFORK
            | Options::PTRACE_O_TRACEVFORK;
        let mut tids = BTreeSet::new();
        for &pid in pids {
            for tid in crate::proc::tids(pid).unwrap_or_default() {
                match ptrace::seize(Pid::from_raw(tid), options) {
                    Ok(()) => {
                        tids.insert(tid);
                    }
                    Err(e) => eprintln!("ckpt page server: tracing thread {tid}: {e}"),
                }
            }
        }
        Tracer { tids, signals }
    }

    /// Every traced task has exited: the tree is gone.
    pub fn tree_gone(&self) -> bool {
        self.tids.is_empty()
    }

    pub fn signals(&self) -> BorrowedFd<'_> {
        self.signals.as_fd()
    }

    /// Continues every tracee that stopped, as if it had not been traced.
    pub fn pass_on_stops(&mut self) {
        while let Ok(Some(_)) = self.signals.read_signal() {}
        loop {
            let st = match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(st) => st,
            };
            self.resume(st);
        }
    }

    fn resume(&mut self, st: WaitStatus) {
        match st {
            WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => {
                self.tids.remove(&pid.as_raw());
            }
            WaitStatus::PtraceEvent(pid, sig, STOP_EVENT) => {
                self.tids.insert(pid.as_raw());
                let group_stop = matches!(
                    sig,
                    Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
                );
                let _ = match group_stop {
                    true => sys::ptrace_listen(pid.as_raw()).map_err(drop),
                    false => ptrace::cont(pid, None).map_err(drop),
                };
            }
            WaitStatus::PtraceEvent(pid, _, event) => {
                self.follow_new_task(pid, event);
                let _ = ptrace::cont(pid, None);
            }
            // A signal about to be delivered: delivered.
            WaitStatus::Stopped(pid, sig) => {
                self.tids.insert(pid.as_raw());
                let _ = ptrace::cont(pid, Some(sig));
            }
            _ => {}
        }
    }

    /// A fork, vfork or clone event: the new task is traced already (and will report its
    /// first stop); it is ours to let go of too.
    fn follow_new_task(&mut self, pid: Pid, event: i32) {
        let new_task = [
            PtraceEvent::PTRACE_EVENT_FORK as i32,
            PtraceEvent::PTRACE_EVENT_VFORK as i32,
            PtraceEvent::PTRACE_EVENT_CLONE as i32,
        ];
        if new_task.contains(&event) {
            if let Ok(child) = ptrace::getevent(pid) {
                self.tids.insert(child as i32);
            }
        }
    }

    /// Lets go of every tracee: each is interrupted, loses the options (were the server to
    /// die now, nothing is killed) and is detached, a signal it stopped for delivered.
    pub fn detach_all(mut self) {
        while !self.tids.is_empty() {
            let tids = std::mem::take(&mut self.tids);
            for &tid in &tids {
                let _ = ptrace::interrupt(Pid::from_raw(tid));
            }
            for tid in tids {
                self.detach_one(tid);
            }
        }
    }

    fn detach_one(&mut self, tid: i32) {
        let pid = Pid::from_raw(tid);
        loop {
            let st = match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                Ok(st) => st,
                Err(_) => return,
            };
            let deliver = match st {
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => return,
                WaitStatus::Stopped(_, sig) => Some(sig),
                WaitStatus::PtraceEvent(_, _, event) => {
                    self.follow_new_task(pid, event);
                    None
                }
                _ => continue,
            };
            let _ = ptrace::setoptions(pid, Options::empty());
            let _ = ptrace::detach(pid, deliver);
            return;
        }
    }
}
