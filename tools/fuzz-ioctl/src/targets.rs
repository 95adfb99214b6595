//! The processes calls target besides the fuzzer itself: memory targets rewriting their pages
//! and changing their mappings, and churns of children that exit at once (zombies until
//! reaped), sleep and get killed, or exec a chain of multi-threaded execs; the kernel
//! threads. Their pids are published on the board.
//!
//! The module reads only a process its caller traces (docs/design.md, "Permission"), and
//! ptrace is per thread: each fuzzing thread seizes its own memory target's threads and forks
//! and seizes its own churn (`Seized`), so its calls on them get past the permission check,
//! while its calls on the other threads' targets, the untraced churn, init or the fork servers
//! are refused.

use crate::board::{Board, CHURN_SLOTS, SEIZED_SLOTS};
use crate::fixture::{DATA_BASE, DATA_PAGES, PAGE};
use crate::rng::Rng;
use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::ffi::CString;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Forks fuzzing thread `t`'s memory target: `TARGET_THREADS` threads rewriting the
/// fixture's anonymous pages, dropping them (MADV_DONTNEED) and splitting their mapping
/// (mprotect) while calls read it. Must be called while the process is single-threaded.
pub fn spawn_memory_target(board: &'static Board, t: usize) -> std::io::Result<Pid> {
    let tids = &board.target[t];
    // SAFETY: single-threaded (the caller's contract); the child runs ordinary code.
    match unsafe { fork() }? {
        ForkResult::Child => {
            tids[0].store(nix::unistd::gettid().as_raw(), Relaxed);
            for (k, tid) in tids.iter().enumerate().skip(1) {
                std::thread::spawn(move || {
                    tid.store(nix::unistd::gettid().as_raw(), Relaxed);
                    churn_memory(k as u64)
                });
            }
            churn_memory(0)
        }
        ForkResult::Parent { child } => {
            tids[0].store(child.as_raw(), Relaxed);
            Ok(child)
        }
    }
}

/// Kills fuzzing thread `t`'s memory target (`pid`) and reaps it. Its threads may still be
/// traced by a thread of this process (the main thread in a replay): then each is a zombie
/// until its tracer reaps it (`__WALL`), and the leader cannot be reaped before them.
pub fn stop_memory_target(board: &Board, t: usize, pid: Pid) {
    let _ = kill(pid, Signal::SIGKILL);
    for slot in board.target[t].iter().skip(1) {
        let tid = Pid::from_raw(slot.load(Relaxed));
        // ECHILD when nobody here traces it (its tracer thread has exited): nothing to reap.
        let _ = waitpid(tid, Some(nix::sys::wait::WaitPidFlag::__WALL));
    }
    let _ = waitpid(pid, None);
}

/// Seizes every thread of fuzzing thread `t`'s memory target, from the calling thread, which
/// becomes their tracer. Waits (up to 30 s) for the target to publish its threads.
pub fn seize_memory_target(board: &Board, t: usize) -> std::io::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    for slot in &board.target[t] {
        let tid = loop {
            let tid = slot.load(Relaxed);
            if tid > 0 {
                break tid;
            }
            if Instant::now() > until {
                return Err(std::io::Error::other(format!(
                    "memory target {t} did not start its threads in 30 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty()).map_err(|e| {
            std::io::Error::other(format!(
                "PTRACE_SEIZE of memory target {t}'s thread {tid}: {e}"
            ))
        })?;
    }
    Ok(())
}

fn churn_memory(k: u64) -> ! {
    let mut rng = Rng::new(k);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    loop {
        // Thread k works on the pages whose number is k modulo 3 (thread 3 shares thread
        // 0's): writers never meet a page another thread made read-only.
        let page = DATA_BASE + (rng.below(DATA_PAGES / 3) * 3 + k % 3) * PAGE;
        // SAFETY: the fixture's anonymous pages, private to this process since the fork.
        unsafe {
            match k {
                0 | 1 => std::ptr::write_volatile(page as *mut u64, rng.next()),
                2 => {
                    // Split the VMA and merge it back: a VMA walk sees it change.
                    libc::mprotect(page as *mut _, PAGE as usize, libc::PROT_READ);
                    libc::mprotect(page as *mut _, PAGE as usize, rw);
                }
                _ => {
                    libc::madvise(page as *mut _, PAGE as usize, libc::MADV_DONTNEED);
                }
            }
        }
        // Under emulation every wakeup is costly: a few hundred changes a second suffice.
        std::thread::sleep(Duration::from_millis(2 + rng.below(8)));
    }
}

/// Kernel threads: kthreadd (pid 2) and some of its children.
pub fn find_kthreads(board: &Board) {
    let mut found = vec![2];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The ppid is the second field after the parenthesised name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<i32>().ok());
            if ppid == Some(2) && found.len() < board.kthreads.len() {
                found.push(pid);
            }
        }
    }
    for (slot, pid) in board.kthreads.iter().zip(found.iter().cycle()) {
        slot.store(*pid, Relaxed);
    }
}

/// What a churn child does. Everything it runs after the fork is async-signal-safe (the
/// fuzzer is multi-threaded by then).
#[derive(Clone, Copy)]
enum Churn {
    ExitNow,
    SleepThenExit,
    ExecChain,
    SleepUntilKilled,
}

impl Churn {
    fn draw(rng: &mut Rng) -> Churn {
        [
            Churn::ExitNow,
            Churn::SleepThenExit,
            Churn::ExecChain,
            Churn::SleepUntilKilled,
        ][rng.weighted(&[4, 3, 2, 2])]
    }
}

/// The exec chain's path and arguments, made before any fork: a child of the multi-threaded
/// fuzzer may not allocate.
struct ExecArgs {
    exe: CString,
    args: [CString; 3],
}

impl ExecArgs {
    fn new() -> ExecArgs {
        let c = |s: &str| CString::new(s).unwrap_or_default();
        ExecArgs {
            exe: c("/proc/self/exe"),
            args: [c("ckpt-fuzz-ioctl"), c("--exec-chain"), c("2")],
        }
    }

    /// Forks a child doing `what` (sleeping `nap_ms` where it sleeps).
    fn fork_churn(&self, what: Churn, nap_ms: i64) -> Option<Pid> {
        let argv = [
            self.args[0].as_ptr(),
            self.args[1].as_ptr(),
            self.args[2].as_ptr(),
            std::ptr::null(),
        ];
        // SAFETY: the child only calls async-signal-safe functions (_exit, nanosleep, execv
        // with arguments prepared before the fork).
        match unsafe { fork() } {
            Ok(ForkResult::Child) => unsafe {
                churn_child(what, nap_ms, self.exe.as_ptr(), argv.as_ptr())
            },
            Ok(ForkResult::Parent { child }) => Some(child),
            Err(_) => None,
        }
    }
}

/// Kills and reaps a child (the caller's, traced or not).
fn reap(pid: Pid) {
    let _ = kill(pid, Signal::SIGKILL);
    loop {
        match waitpid(pid, None) {
            // A traced child may report a stop first; SIGKILL ends it all the same.
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The churn thread: replaces a random slot's process every few milliseconds until the stop
/// flag, then kills and reaps them all. Nobody traces these.
pub fn churn(board: &'static Board, seed: u64) {
    let exec = ExecArgs::new();
    let mut rng = Rng::new(seed ^ 0xc4u64);
    let mut slots: [Option<Pid>; CHURN_SLOTS] = [None; CHURN_SLOTS];
    while !board.stopping() {
        let i = rng.below(CHURN_SLOTS as u64) as usize;
        if let Some(old) = slots[i].take() {
            reap(old);
        }
        let what = Churn::draw(&mut rng);
        let nap = 1 + rng.below(30) as i64;
        if let Some(child) = exec.fork_churn(what, nap) {
            board.churn[i].store(child.as_raw(), Relaxed);
            slots[i] = Some(child);
        }
        // A fork and an exit cost milliseconds of guest CPU, an exec tens (on the debug
        // kernel several times that): a dozen a second keep the pids changing without
        // starving the calls.
        std::thread::sleep(Duration::from_millis(40 + rng.below(120)));
    }
    slots.iter().flatten().for_each(|&pid| reap(pid));
}

/// A fuzzing thread's own churn: the same kinds of children, forked and seized by that
/// thread, so that its calls reach their deep paths while they exit, exec and linger as
/// zombies. Owned by the thread; its children are killed and reaped on drop.
pub struct Seized<'a> {
    board: &'a Board,
    t: usize,
    rng: Rng,
    slots: [Option<Pid>; SEIZED_SLOTS],
    exec: ExecArgs,
    next: Instant,
}

impl<'a> Seized<'a> {
    pub fn new(board: &'a Board, t: usize, seed: u64) -> Seized<'a> {
        Seized {
            board,
            t,
            rng: Rng::new(seed ^ 0x5e12e ^ ((t as u64) << 32)),
            slots: [None; SEIZED_SLOTS],
            exec: ExecArgs::new(),
            next: Instant::now(),
        }
    }

    /// Between two calls: replaces one slot's process if its time has come (a few times a
    /// second; each fork costs the guest milliseconds).
    pub fn tick(&mut self) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + Duration::from_millis(100 + self.rng.below(200));
        let i = self.rng.below(SEIZED_SLOTS as u64) as usize;
        if let Some(old) = self.slots[i].take() {
            self.board.seized[self.t][i].store(0, Relaxed);
            reap(old);
        }
        let what = Churn::draw(&mut self.rng);
        let nap = 1 + self.rng.below(30) as i64;
        let Some(child) = self.exec.fork_churn(what, nap) else {
            return;
        };
        // It may have exited already (an exiting task refuses ptrace: EPERM) or be in its
        // exec: then calls on it are refused, which is fine now and then.
        match ptrace::seize(child, ptrace::Options::empty()) {
            Ok(()) | Err(Errno::EPERM | Errno::ESRCH) => {}
            Err(e) => eprintln!("fuzz-ioctl: PTRACE_SEIZE of churn child {child}: {e}"),
        }
        self.board.seized[self.t][i].store(child.as_raw(), Relaxed);
        self.slots[i] = Some(child);
    }
}

impl Drop for Seized<'_> {
    fn drop(&mut self) {
        for (i, pid) in self.slots.iter().enumerate() {
            if let Some(pid) = pid {
                self.board.seized[self.t][i].store(0, Relaxed);
                reap(*pid);
            }
        }
    }
}

/// # Safety
///
/// Called in a child just forked from a multi-threaded process: `exe` and `argv` must be
/// valid, NULL-terminated, prepared before the fork.
unsafe fn churn_child(
    what: Churn,
    nap_ms: i64,
    exe: *const libc::c_char,
    argv: *const *const libc::c_char,
) -> ! {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: nap_ms * 1_000_000,
    };
    // SAFETY: async-signal-safe calls with valid arguments (see the function's contract).
    unsafe {
        match what {
            Churn::ExitNow => {}
            Churn::SleepThenExit => {
                libc::nanosleep(&ts, std::ptr::null_mut());
            }
            Churn::ExecChain => {
                libc::execv(exe, argv);
            }
            Churn::SleepUntilKilled => loop {
                libc::nanosleep(&ts, std::ptr::null_mut());
            },
        }
        libc::_exit(0)
    }
}

/// `--exec-chain N`: a process in exec, again and again: starts a thread (so each exec must
/// first kill it), then execs itself with N - 1, until 0.
pub fn exec_chain(n: u32) -> ! {
    if n == 0 {
        std::process::exit(0);
    }
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(1));
    });
    let exe = CString::new("/proc/self/exe").unwrap_or_default();
    let args = [
        CString::new("ckpt-fuzz-ioctl").unwrap_or_default(),
        CString::new("--exec-chain").unwrap_or_default(),
        CString::new((n - 1).to_string()).unwrap_or_default(),
    ];
    let _ = nix::unistd::execv(&exe, &args);
    std::process::exit(1)
}
