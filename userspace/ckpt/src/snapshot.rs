//! A copy-on-write snapshot of a frozen process's private memory, so that a checkpoint that
//! lets the tree run on (no `--kill`) stops it only while the snapshot is taken, not while
//! its pages are written.
//!
//! A frozen thread is lent (`inject::Borrowed`) to call clone3: the new process has the
//! target's memory as it is at the freeze, shared copy-on-write, and is traced from its
//! birth (it never runs). Once the tree is let go, the image's private pages are read from
//! it; then it is killed. Shared memory (anonymous shared, memfd, SysV) is not snapshotted
//! by a fork, so it is read while the tree is frozen, as are processes whose mappings a fork
//! leaves out or empties (MADV_DONTFORK, MADV_WIPEONFORK): they are not snapshotted.
//!
//! Nothing of the snapshot can reach the target or outlive ckpt:
//! - CLONE_AUTOREAP: when it dies, it is reaped at once and the target hears nothing (no
//!   SIGCHLD, no zombie to wait for).
//! - CLONE_PIDFD_AUTOKILL: it is killed when its pidfd closes. ckpt takes that pidfd from
//!   the target and closes the target's, so it dies with ckpt however ckpt ends.
//! - CLONE_FILES: it holds no file of its own (a file the target closes meanwhile is
//!   closed, a socket's peer sees its end).
//! - CLONE_CLEAR_SIGHAND and a stack pointer in the unmapped first pages: should it ever
//!   run (ckpt killed in the instant before it holds the pidfd), its first use of the stack
//!   kills it, no handler of the program's in the way.
//! - CLONE_NNP: it may not gain privileges (and unprivileged targets may use AUTOKILL).

use crate::freeze::Frozen;
use crate::inject::Borrowed;
use crate::proc::MapEntry;
use crate::sys;
use std::io;
use std::os::fd::OwnedFd;

const CLONE_FILES: u64 = 0x400;
const CLONE_PIDFD: u64 = 0x1000;
const CLONE_CLEAR_SIGHAND: u64 = 1 << 32;
const CLONE_AUTOREAP: u64 = 1 << 34;
const CLONE_NNP: u64 = 1 << 35;
const CLONE_PIDFD_AUTOKILL: u64 = 1 << 36;
/// `struct clone_args` up to `set_tid_size`... `cgroup` (CLONE_ARGS_SIZE_VER2).
const CLONE_ARGS_SIZE: usize = 88;
/// The snapshot's stack: an address in the first pages, which are never mapped
/// (vm.mmap_min_addr).
const NO_STACK: u64 = 0x1000;

/// A stopped copy-on-write copy of a frozen process; killed on drop.
pub struct Snapshot {
    pid: i32,
    /// Closing it kills the snapshot (CLONE_PIDFD_AUTOKILL). None only while it is taken.
    _pidfd: Option<OwnedFd>,
}

impl Snapshot {
    /// Whether a fork keeps every mapping of `maps` as it is: MADV_DONTFORK leaves a mapping
    /// out of the child, MADV_WIPEONFORK empties it.
    pub fn can_copy(maps: &[MapEntry]) -> bool {
        !maps.iter().any(|m| m.has_flag("dc") || m.has_flag("wf"))
    }

    /// Takes a snapshot of `frozen` through its first thread, which is put back as it was.
    pub fn take(frozen: &Frozen) -> io::Result<Snapshot> {
        let pid = frozen.pid;
        let tid = *frozen
            .tids
            .first()
            .ok_or_else(|| io::Error::other("no thread"))?;
        let mut lent = Borrowed::take(pid, tid)?;
        let args_at = lent.scratch();
        let pidfd_at = args_at + CLONE_ARGS_SIZE as u64;
        lent.poke(pidfd_at, &(-1i32).to_ne_bytes())?;
        lent.poke(args_at, &clone_args(pidfd_at))?;
        // From here the clone is killed on drop, whatever fails.
        let mut snapshot = Snapshot {
            pid: clone_once(&mut lent, args_at)?,
            _pidfd: None,
        };
        // Its pidfd is in the target's fd table (shared with the snapshot): take it, then
        // close the target's, so that only ckpt keeps the snapshot alive.
        let fd_bytes = lent.peek(pidfd_at, 4)?;
        let fd = i32::from_ne_bytes([fd_bytes[0], fd_bytes[1], fd_bytes[2], fd_bytes[3]]);
        let pidfd = sys::steal_fd(pid, fd);
        let closed = lent.syscall(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]);
        crate::worker::pause_for_test("CKPT_TEST_PAUSE_LENT");
        lent.give_back()?;
        snapshot._pidfd = Some(pidfd?);
        closed?;
        snapshot.wait_for_birth_stop()?;
        Ok(snapshot)
    }

    /// The snapshot's pid (in ckpt's pid namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A process traced from its birth starts in a ptrace stop.
    fn wait_for_birth_stop(&self) -> io::Result<()> {
        let status = sys::waitpid(self.pid, libc::__WALL)?;
        if !libc::WIFSTOPPED(status) {
            return Err(io::Error::other(format!(
                "the snapshot {} ended at birth (status {status:#x})",
                self.pid
            )));
        }
        Ok(())
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // Traced by us, it is reported to us first; then the kernel reaps it (AUTOREAP).
        let _ = sys::kill(self.pid, libc::SIGKILL);
        while let Ok(status) = sys::waitpid(self.pid, libc::__WALL) {
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                break;
            }
        }
    }
}

/// Kernel-internal errno of a fork that met a signal: the caller is to take it and retry.
const ERESTARTNOINTR: i64 = 513;

/// Makes the lent thread call clone3 with the arguments at `args_at`; returns the new pid. A
/// signal arriving for the program makes fork give up (ERESTARTNOINTR): the lent thread
/// takes it at its delivery stop (held, queued again when given back) and calls again.
fn clone_once(lent: &mut Borrowed, args_at: u64) -> io::Result<i32> {
    let args = [args_at, CLONE_ARGS_SIZE as u64, 0, 0, 0, 0];
    for _ in 0..64 {
        let (r, child) = lent.syscall_tracing_clone(libc::SYS_clone3, args)?;
        if r == -ERESTARTNOINTR {
            continue;
        }
        if r < 0 {
            return Err(io::Error::from_raw_os_error(-r as i32));
        }
        return child.ok_or_else(|| io::Error::other("clone3 reported no new process"));
    }
    Err(io::Error::other(
        "clone3 kept meeting signals (ERESTARTNOINTR 64 times)",
    ))
}

/// The clone3 arguments of a snapshot, with its pidfd stored at `pidfd_at`.
fn clone_args(pidfd_at: u64) -> [u8; CLONE_ARGS_SIZE] {
    let flags = CLONE_FILES
        | CLONE_PIDFD
        | CLONE_CLEAR_SIGHAND
        | CLONE_AUTOREAP
        | CLONE_NNP
        | CLONE_PIDFD_AUTOKILL;
    // flags, pidfd, child_tid, parent_tid, exit_signal (none: AUTOREAP), stack, stack_size,
    // tls, set_tid, set_tid_size, cgroup.
    let words: [u64; CLONE_ARGS_SIZE / 8] = [flags, pidfd_at, 0, 0, 0, NO_STACK, 8, 0, 0, 0, 0];
    let mut out = [0u8; CLONE_ARGS_SIZE];
    for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    out
}
