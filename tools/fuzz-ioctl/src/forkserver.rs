//! RESTORE calls run in children of a fork server: the restore replaces the caller's address
//! space on success and kills it on a late failure, so it must never run in the fuzzer.
//!
//! Each fuzz thread has its own server, forked by the single-threaded main process before any
//! thread exists, so the server and its children may allocate freely. A thread sends a batch
//! of call indexes; the server forks a child that makes those calls one by one (a refused
//! call changes nothing, so one child serves many), noting its progress on the board. When
//! a call ends the child (killed, or restored), the server records how, and forks the next
//! child for the rest of the batch. A child that outlives its time is killed; one that then
//! does not die is an ioctl ignoring fatal signals, which the run reports as a failure.

use crate::board::{Board, RestoreStats};
use crate::fixture::Fixture;
use crate::gen::{self, Ctx, Kind};
use crate::rng::Rng;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Most calls in one batch.
pub const BATCH: usize = 32;
/// Exit status of a child whose restore returned 0 and left it running.
const RETURNED: i32 = 0x7e;
/// Exit status of a child whose generator panicked (a fuzzer bug).
const PANICKED: i32 = 0x7d;
/// Exit status of a child that finished its batch.
const DONE: i32 = 0;

pub struct Server {
    sock: OwnedFd,
    pub pid: Pid,
}

pub struct Limits {
    /// How long one child may run before it is killed.
    pub child_time: Duration,
    /// How long a killed child may take to die before the run fails.
    pub kill_grace: Duration,
    /// Print each call in the child before making it.
    pub verbose: bool,
}

impl Server {
    /// Forks thread `t`'s server. Must be called while the process is single-threaded.
    pub fn spawn(
        fx: &Fixture,
        board: &'static Board,
        t: u32,
        seed: u64,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        // SAFETY: the caller guarantees there is one thread; the child runs ordinary code.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(ours);
                let ctx = Ctx {
                    fx,
                    board,
                    thread: t,
                    describe: limits.verbose,
                };
                serve(&ctx, &theirs, seed, &limits);
                // SAFETY: leaving the server without running the parent's exit handlers.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                board.servers[t as usize].store(child.as_raw(), Relaxed);
                Ok(Self {
                    sock: ours,
                    pid: child,
                })
            }
        }
    }

    /// Runs the restore calls `indexes` and waits until they are done.
    pub fn run(&self, indexes: &[u64]) -> std::io::Result<()> {
        let bytes: Vec<u8> = indexes.iter().flat_map(|i| i.to_ne_bytes()).collect();
        send(self.sock.as_raw_fd(), &bytes, MsgFlags::empty())?;
        let mut ack = [0u8; 1];
        let n = recv(self.sock.as_raw_fd(), &mut ack, MsgFlags::empty())?;
        if n != 1 {
            return Err(std::io::Error::other("the fork server went away"));
        }
        Ok(())
    }

    /// Ends the server and reaps it. An empty message says so: the other servers and the
    /// memory target hold copies of this socket too, so it never reads as closed.
    pub fn stop(self) {
        let _ = send(self.sock.as_raw_fd(), &[], MsgFlags::empty());
        let _ = waitpid(self.pid, None);
    }
}

fn serve(c: &Ctx, sock: &OwnedFd, seed: u64, limits: &Limits) {
    let mut buf = [0u8; BATCH * 8];
    loop {
        let n = match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let indexes: Vec<u64> = buf[..n]
            .chunks_exact(8)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
            .collect();
        run_batch(c, seed, &indexes, limits);
        if send(sock.as_raw_fd(), b"k", MsgFlags::empty()).is_err() {
            return;
        }
    }
}

fn run_batch(c: &Ctx, seed: u64, indexes: &[u64], limits: &Limits) {
    let t = c.thread as usize;
    let stats = &c.board.restore[t];
    let mut from = 0;
    while from < indexes.len() {
        c.board.progress[t].store(0, Relaxed);
        // SAFETY: the server is single-threaded.
        let child = match unsafe { fork() } {
            Ok(ForkResult::Child) => restore_child(c, seed, &indexes[from..], limits.verbose),
            Ok(ForkResult::Parent { child }) => child,
            Err(e) => {
                eprintln!("fuzz-ioctl: fork server {t}: fork failed: {e}");
                stats.strange.fetch_add(1, Relaxed);
                return;
            }
        };
        c.board.restoring[t].store(child.as_raw(), Relaxed);
        let (status, timed_out) = wait_limited(child, limits, c, indexes, from);
        c.board.restoring[t].store(0, Relaxed);
        let done = c.board.progress[t].load(Relaxed) as usize;
        if timed_out {
            stats.timed_out.fetch_add(1, Relaxed);
        } else {
            classify(stats, status);
        }
        if matches!(status, WaitStatus::Exited(_, DONE)) {
            return;
        }
        from += done + 1;
    }
}

fn classify(stats: &RestoreStats, status: WaitStatus) {
    let counter = match status {
        WaitStatus::Signaled(_, Signal::SIGKILL, _) => &stats.killed,
        WaitStatus::Signaled(_, Signal::SIGABRT, _) => &stats.strange,
        WaitStatus::Signaled(..) => &stats.restored_crashed,
        WaitStatus::Exited(_, RETURNED) => &stats.restored_returned,
        WaitStatus::Exited(_, DONE) => return,
        _ => &stats.strange,
    };
    counter.fetch_add(1, Relaxed);
}

/// Waits for `child`; past the time limit kills it, and reports it if it will not die.
/// Returns its status and whether it was killed for taking too long.
fn wait_limited(
    child: Pid,
    limits: &Limits,
    c: &Ctx,
    indexes: &[u64],
    from: usize,
) -> (WaitStatus, bool) {
    let pidfd = pidfd_open(child);
    let mut timed_out = false;
    if let Some(fd) = &pidfd {
        if !wait_or_stop(fd, limits.child_time, c.board) {
            timed_out = true;
            let _ = kill(child, Signal::SIGKILL);
            if !wait_readable(fd, limits.kill_grace) {
                let t = c.thread as usize;
                let at = from + c.board.progress[t].load(Relaxed) as usize;
                eprintln!(
                    "fuzz-ioctl: FAILED: restore call {}:{} still runs {} s after SIGKILL: \
                     the ioctl ignores fatal signals",
                    c.thread,
                    indexes.get(at).copied().unwrap_or(u64::MAX),
                    limits.kill_grace.as_secs()
                );
                c.board.restore[t].unkillable.fetch_add(1, Relaxed);
            }
        }
    }
    let status = waitpid(child, None).unwrap_or(WaitStatus::StillAlive);
    (status, timed_out)
}

pub fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new fd that nothing else owns.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Waits for the child behind `fd` for up to `limit`, less if the run is stopping. Whether
/// it exited.
fn wait_or_stop(fd: &OwnedFd, limit: Duration, board: &Board) -> bool {
    let until = std::time::Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if wait_readable(fd, left.min(Duration::from_secs(1))) {
            return true;
        }
        if left.is_zero() || board.stopping() {
            return false;
        }
    }
}

/// Whether `fd` (a pidfd: readable once the process has exited) became readable in time.
pub fn wait_readable(fd: &OwnedFd, limit: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(limit.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    loop {
        match poll(&mut fds, ms) {
            Ok(n) => return n > 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// The child: makes the restore calls of its batch in turn until one ends it.
fn restore_child(c: &Ctx, seed: u64, indexes: &[u64], verbose: bool) -> ! {
    let t = c.thread as usize;
    for (k, &i) in indexes.iter().enumerate() {
        c.board.progress[t].store(k as u32, Relaxed);
        let mut rng = Rng::for_call(seed, c.thread, i);
        let kind = gen::choose(&mut rng);
        debug_assert_eq!(kind, Kind::Restore);
        let call = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gen::generate(kind, &mut rng, c)
        })) {
            Ok(call) => call,
            // A fuzzer bug: never unwind into the server's frames.
            // SAFETY: exiting at once.
            Err(_) => unsafe { libc::_exit(PANICKED) },
        };
        if verbose {
            println!("call {}:{i}: {}", c.thread, call.what);
        }
        match crate::raw_ioctl(call.fd, call.cmd, call.arg) {
            // Still here after a restore: its code was kept. Nothing can be trusted now.
            // SAFETY: exiting at once, without touching the replaced memory further.
            Ok(_) => unsafe { libc::_exit(RETURNED) },
            Err(e) => {
                let e = (e as i32).clamp(0, 255) as usize;
                c.board.restore[t].errno[e].fetch_add(1, Relaxed);
            }
        }
    }
    c.board.progress[t].store(indexes.len() as u32, Relaxed);
    // SAFETY: leaving without the parent's exit handlers.
    unsafe { libc::_exit(DONE) }
}
