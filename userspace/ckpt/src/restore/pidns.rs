//! Restoring a tree into a new pid namespace, when one of its pids is taken here (or with
//! `--pidns`): inside, every process has its original pid, so nothing the programs hold
//! (pids in files, in memory, in their parents' wait calls, the peer pids their sockets
//! report) goes stale. The namespace is made before anything of the tree: ckpt forks its
//! init, pid 1 there, and gives its own children that namespace (setns) while it makes what
//! must be born inside: the helpers that make the tree's socket pairs with their peers' pids
//! (`fds::peercred`), then a process that forks the roots' restorers with their pids and
//! exits, so that they are the init's children. The init waits until then; from then on it
//! reaps orphans, forwards the usual termination and user signals to the first root, and
//! exits with that root's status when it ends (so `ckpt restore --wait` passes it on).
//! Outside, the processes have other pids, which ckpt traces and reports.

use super::restorer::{self, Parent, Restorers};
use crate::errors::{restore_io, RestoreError};
use crate::groups::Plan;
use crate::manifest::Manifest;
use crate::sys;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
use nix::unistd::{getpid, Pid};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// Whether the tree must go into a new pid namespace: asked for, or a pid of a tree (more
/// than one process, zombies, or helpers for groups and sessions, whose pids count too) is
/// taken here. A lone process takes another pid instead.
pub fn needed(m: &Manifest, groups: &Plan, asked: bool) -> bool {
    let tree = m.processes.len() > 1 || !m.zombies.is_empty() || !groups.no_helpers();
    let taken = |pid: i32| Path::new(&format!("/proc/{pid}")).exists();
    let pids = m
        .processes
        .iter()
        .map(|p| p.pid)
        .chain(m.zombies.iter().map(|z| z.pid))
        .chain(groups.helper_pids());
    asked || (tree && pids.clone().any(taken))
}

/// A new pid namespace for the tree, its init waiting for the roots. Dropped before it is
/// released (a failed restore), the init is killed, and the namespace ends with it.
pub struct Namespace {
    init: i32,
    /// Its end of file lets the init go on.
    go: Option<OwnedFd>,
    /// Ours and the new one (/proc/PID/ns/pid), to give our children one or the other.
    ours: OwnedFd,
    theirs: OwnedFd,
}

impl Namespace {
    /// Forks the init of a new namespace for the tree of `m`.
    pub fn start(m: &Manifest) -> Result<Namespace, RestoreError> {
        let failed = || restore_io("making a new pid namespace");
        if m.processes.iter().any(|p| p.pid == 1) || m.zombies.iter().any(|z| z.pid == 1) {
            return Err(failed()(std::io::Error::other(
                "the image has a process 1, which the namespace's init is",
            )));
        }
        let ns_of = |pid: &str| -> Result<OwnedFd, RestoreError> {
            let f = std::fs::File::open(format!("/proc/{pid}/ns/pid")).map_err(failed())?;
            Ok(f.into())
        };
        let ours = ns_of("self")?;
        let (wait, go) = nix::unistd::pipe().map_err(|e| failed()(e.into()))?;
        let first = m.roots().first().map_or(0, |&i| m.processes[i].pid);
        let pid = sys::fork_into_new_pid_namespace().map_err(restore_io("clone3 CLONE_NEWPID"))?;
        if pid == 0 {
            drop(go);
            init(first, wait);
        }
        drop(wait);
        let mut ns = Namespace {
            init: pid,
            go: Some(go),
            theirs: ours.try_clone().map_err(failed())?,
            ours,
        };
        // Dropped on error: the init is killed.
        ns.theirs = ns_of(&pid.to_string())?;
        Ok(ns)
    }

    /// Our children are born in the namespace from now on (until `leave`).
    pub fn enter(&self) -> Result<(), RestoreError> {
        setns(&self.theirs, CloneFlags::CLONE_NEWPID)
            .map_err(|e| restore_io("entering the new pid namespace (setns)")(e.into()))
    }

    /// Our children are born in our own namespace again.
    pub fn leave(&self) -> Result<(), RestoreError> {
        setns(&self.ours, CloneFlags::CLONE_NEWPID)
            .map_err(|e| restore_io("leaving the new pid namespace (setns)")(e.into()))
    }

    /// Forks the roots' restorers inside, as the init's children (see the module's
    /// description). Then the init goes on; returns its pid.
    pub fn fork_roots(mut self, r: &mut Restorers, roots: &[usize]) -> Result<i32, RestoreError> {
        self.enter()?;
        let forked = sys::fork_with_pid(None);
        let left = self.leave();
        let pid = forked.map_err(restore_io("forking the roots' parent in the namespace"))?;
        if pid == 0 {
            fork_roots_inside(r, roots);
        }
        let status = sys::waitpid(pid, 0).map_err(restore_io("waiting for the roots' parent"))?;
        left?;
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            return Err(RestoreError::Child(1));
        }
        self.go = None;
        Ok(self.init)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if self.go.is_some() {
            let _ = sys::kill(self.init, libc::SIGKILL);
            let _ = sys::waitpid(self.init, 0);
        }
    }
}

/// In the namespace, a child of ckpt: forks each root's restorer with its pid (and the
/// helpers of sessions whose leader is gone, which fork theirs), waits for those helpers and
/// exits: every root is then the init's child. Never returns.
fn fork_roots_inside(r: &mut Restorers, roots: &[usize]) -> ! {
    let init = Pid::from_raw(1);
    let parent = Parent {
        pid: init,
        helper: Some(getpid()),
    };
    for &i in roots {
        let want = r.manifest.processes[i].pid;
        if r.groups.session_helper_of(want).is_some() {
            continue; // forked by its session's helper, below
        }
        if restorer::fork_as(want, false) == 0 {
            restorer::run(r, i, parent);
        }
    }
    let sessions: Vec<i32> = r.groups.sessions.keys().copied().collect();
    for sid in sessions {
        let helper = restorer::fork_session_helper(r, sid, init);
        let status = helper.and_then(|h| sys::waitpid(h, 0));
        match status {
            Ok(s) if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0 => {}
            Ok(s) => {
                eprintln!("ckpt restore: the helper of session {sid} ended with status {s:#x}");
                sys::exit_now(1);
            }
            Err(e) => {
                eprintln!("ckpt restore: forking the helper of session {sid}: {e}");
                sys::exit_now(1);
            }
        }
    }
    sys::exit_now(0)
}

/// The first root, inside: where forwarded signals go.
static FIRST_ROOT: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let _ = sys::kill(FIRST_ROOT.load(Ordering::Relaxed), sig);
}

/// Pid 1 of the new namespace: waits for the end of `wait` (the roots are its children by
/// then, or ckpt gave up), then reaps. Never returns.
fn init(first: i32, wait: OwnedFd) -> ! {
    FIRST_ROOT.store(first, Ordering::Relaxed);
    // Nothing of ckpt's may stay open here (its pipes would never see their end of file;
    // whoever reads ckpt restore's output would wait for the whole namespace).
    let w = wait.as_raw_fd() as u32;
    let _ = sys::close_range(3, w - 1);
    let _ = sys::close_range(w + 1, u32::MAX);
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    );
    if let Ok(null) = null {
        for fd in 0..3 {
            let _ = sys::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
        }
    }
    let act = SigAction::new(
        SigHandler::Handler(forward),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2] {
        // SAFETY: `forward` only reads an atomic and calls kill(2), async-signal-safe.
        let _ = unsafe { sigaction(sig, &act) };
    }
    let mut byte = [0u8; 1];
    while matches!(nix::unistd::read(&wait, &mut byte), Err(nix::Error::EINTR)) {}
    drop(wait);
    // Forked from ckpt's restore, which blocks nothing: signals reach the handlers.
    loop {
        let mut status = 0;
        // SAFETY: waits for any child of ours; `status` is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            sys::exit_now(0); // no child left
        }
        if pid == first {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            sys::exit_now(code);
        }
    }
}
