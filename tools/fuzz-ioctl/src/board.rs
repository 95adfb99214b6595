//! The board: a page of shared memory every process of the run sees (mapped before the first
//! fork). It holds the pids calls may target, which the processes that own them keep up to
//! date, the stop flag, and the restore children's progress and outcomes.

use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

pub const MAX_THREADS: usize = 16;
pub const CHURN_SLOTS: usize = 16;
/// Threads of each memory target.
pub const TARGET_THREADS: usize = 4;
/// Processes each fuzzing thread forks and seizes (see `targets::Seized`).
pub const SEIZED_SLOTS: usize = 4;

/// What became of RESTORE calls (one set per fork server).
#[repr(C)]
pub struct RestoreStats {
    /// Refused with errno `e`: `errno[e]`.
    pub errno: [AtomicU64; 256],
    /// Killed by SIGKILL: a failure past the point of no return (the module kills the caller).
    pub killed: AtomicU64,
    /// Killed by another signal: the restore succeeded and the child returned into the new,
    /// code-less address space.
    pub restored_crashed: AtomicU64,
    /// The restore succeeded and the child went on (its code was in a kept range).
    pub restored_returned: AtomicU64,
    /// Still running at the time limit, and died of the SIGKILL sent then.
    pub timed_out: AtomicU64,
    /// Still alive long after that SIGKILL: the ioctl does not heed fatal signals (a failure).
    pub unkillable: AtomicU64,
    /// The child ended in a way the fuzzer never makes it (a fuzzer bug; a failure).
    pub strange: AtomicU64,
}

#[repr(C)]
pub struct Board {
    pub stop: AtomicU32,
    /// Set by a regression case's child just before its call.
    pub corpus_started: AtomicU32,
    /// Each fuzzing thread's memory target (a process with the fixture's layout, busy
    /// rewriting it): its threads, every one seized by that fuzzing thread, which alone may
    /// then read it (ptrace is per thread); the others' calls on it are refused.
    pub target: [[AtomicI32; TARGET_THREADS]; MAX_THREADS],
    pub servers: [AtomicI32; MAX_THREADS],
    /// The child each fork server is running restore calls in (0 when none).
    pub restoring: [AtomicI32; MAX_THREADS],
    /// Processes the churn thread forks: exiting, zombies, exec'ing, killed. Nobody traces
    /// them: calls on them are refused (EPERM), or fail earlier (ESRCH).
    pub churn: [AtomicI32; CHURN_SLOTS],
    /// The same kinds of processes, forked and seized by each fuzzing thread itself.
    pub seized: [[AtomicI32; SEIZED_SLOTS]; MAX_THREADS],
    pub kthreads: [AtomicI32; 8],
    pub fuzz_tids: [AtomicI32; MAX_THREADS],
    /// How many calls of its batch each restore child has finished.
    pub progress: [AtomicU32; MAX_THREADS],
    pub restore: [RestoreStats; MAX_THREADS],
}

impl Board {
    /// Maps a zeroed board shared with every process forked afterwards.
    pub fn new() -> std::io::Result<&'static Board> {
        let len = std::mem::size_of::<Board>();
        // SAFETY: a fresh anonymous mapping; all-zero bytes are a valid `Board` (atomics).
        let p = unsafe {
            mmap_anonymous(
                None,
                NonZeroUsize::new(len).unwrap_or(NonZeroUsize::MIN),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )?
        };
        // SAFETY: the mapping is never unmapped, so the reference is good for the whole run.
        Ok(unsafe { &*p.as_ptr().cast::<Board>() })
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed) != 0
    }
}
